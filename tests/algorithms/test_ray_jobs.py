"""The router's and the benchmark's episodes on Ray workers: the same outputs as in-process, a killed worker included."""

import json
from pathlib import Path

import pytest

from algorithms import benchmark, router
from algorithms.journal import JOURNAL
from tests.algorithms.test_benchmark import TINY_BENCH
from tests.algorithms.test_journal import TINY, _outputs
from tests.algorithms.test_rollout import crashing, ray_overrides
from tests.conftest import compose_config, make_tiny_run

pytestmark = pytest.mark.xdist_group("ray")  # one xdist worker runs every Ray test: clusters never meet


@pytest.fixture(scope="module")
def policy_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("policy") / "run")


def _units(folder: Path) -> list[str]:
    return [json.loads(line).get("unit") for line in (folder / JOURNAL).read_text().splitlines()][1:]


def test_router_episodes_on_ray_workers_match_in_process_ones_after_a_worker_dies(policy_run, tmp_path):
    pytest.importorskip("ray")
    local = tmp_path / "local"
    router.train(compose_config("router", f"policy={policy_run}", *TINY), local)
    marker = tmp_path / "killed.marker"
    # the first worker process to reach the student's 2nd call dies; Ray restarts it and the unit is sent again
    cfg = compose_config("router", f"policy={policy_run}", *TINY, *ray_overrides(), *crashing(marker))
    summary = router.train(cfg, tmp_path / "ray")
    assert marker.exists()  # a worker really died mid-unit
    assert _outputs(tmp_path / "ray") == _outputs(local)
    assert sorted(_units(tmp_path / "ray")) == sorted(_units(local))  # each unit kept once, in finishing order
    assert summary["train_prefixes"] == json.loads((local / "summary.json").read_text())["train_prefixes"]


def test_benchmark_rows_on_ray_workers_match_in_process_ones(policy_run, tmp_path):
    pytest.importorskip("ray")
    common = [*TINY_BENCH, f"policy={policy_run}", "benchmark.unit_episodes=3", "benchmark.win_rates=false"]
    local = benchmark.run_benchmark(compose_config("benchmark", *common), tmp_path / "local")
    on_ray = benchmark.run_benchmark(compose_config("benchmark", *common, *ray_overrides()), tmp_path / "ray")
    for name in ("benchmark.json", "benchmark.md", "episodes.jsonl"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text(), name
    assert on_ray["markdown"] == local["markdown"]
    assert sorted(_units(tmp_path / "ray")) == sorted(_units(tmp_path / "local"))

