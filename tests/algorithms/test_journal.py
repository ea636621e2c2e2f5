"""The journal of finished units, and the long entry points that resume from it after a kill."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from algorithms import router
from algorithms.checkpoint import CheckpointError
from algorithms.journal import JOURNAL, KILL_AT, Journal
from algorithms.runs import RunFolderError
from tests.conftest import compose_config, make_tiny_run

ROOT = Path(__file__).resolve().parents[2]


class Killed(Exception):
    """Stands in for a kill at a chosen unit (what is on disk is what a kill -9 leaves)."""


def stop_at(key):
    def hook(done):
        if done == key:
            raise Killed(done)
    return hook


# ---- the journal --------------------------------------------------------------------------------


def test_units_are_kept_in_order_and_read_back(tmp_path):
    journal = Journal(tmp_path, {"seed": 0})
    assert journal.unit("a", lambda: [1, 2]) == [1, 2]
    assert journal.unit("a", lambda: pytest.fail("a finished unit is never computed again")) == [1, 2]
    journal.record("t", {"x": torch.arange(3.0)}, tensors=True)
    again = Journal(tmp_path, {"seed": 0})
    assert len(again) == 2 and again.get("a") == [1, 2]
    torch.testing.assert_close(again.get("t")["x"], torch.arange(3.0))
    with pytest.raises(ValueError, match="already recorded"):
        again.record("a", 3)


def test_a_journal_of_another_run_is_refused(tmp_path):
    Journal(tmp_path, {"seed": 0}).record("a", 1)
    with pytest.raises(RunFolderError, match="holds another run"):
        Journal(tmp_path, {"seed": 1})


def test_a_cut_short_last_line_loses_that_unit_only_and_never_duplicates(tmp_path):
    journal = Journal(tmp_path, {"seed": 0})
    journal.record("a", 1)
    journal.record("b", 2)
    path = tmp_path / JOURNAL
    path.write_bytes(path.read_bytes()[:-5])  # a kill in the middle of writing unit b
    again = Journal(tmp_path, {"seed": 0})
    assert "a" in again and "b" not in again
    again.record("b", 2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r.get("unit") for r in rows] == [None, "a", "b"]


def test_damage_before_the_last_line_is_reported(tmp_path):
    journal = Journal(tmp_path, {"seed": 0})
    journal.record("a", 1)
    journal.record("b", 2)
    path = tmp_path / JOURNAL
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{not json", lines[2]]) + "\n")
    with pytest.raises(CheckpointError, match="damaged at line 2"):
        Journal(tmp_path, {"seed": 0})


# ---- router learning ----------------------------------------------------------------------------

TINY = ["router.hidden_dim=16", "router.num_layers=2", "router.epochs=3", "router.batch_size=4",
        "data.episodes=6", "data.val_episodes=2", "data.turns=2", "data.max_new_tokens=4", "data.openings=4",
        "data.unit_episodes=2", "device=cpu"]


@pytest.fixture(scope="module")
def policy_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("policy") / "run")


def _outputs(folder):
    return {"router": (folder / "router" / "router.safetensors").read_bytes(),
            "data": (folder / "data.jsonl").read_text(), "history": (folder / "history.jsonl").read_text()}


@pytest.mark.parametrize("method", ["matched", "pairwise"])
def test_a_router_run_killed_at_a_unit_resumes_to_the_same_router(policy_run, tmp_path, method):
    cfg = compose_config("router", f"policy={policy_run}", f"router.method={method}", *TINY)
    router.train(cfg, tmp_path / "whole")
    units = [json.loads(line).get("unit") for line in (tmp_path / "whole" / JOURNAL).read_text().splitlines()][1:]
    assert "prefixes/router_train/2" in units and "features/train" in units
    if method == "pairwise":
        assert "candidates/router_train/0" in units
    for kill in (units[1], units[-2]):
        folder = tmp_path / f"killed_{kill.replace('/', '_')}"
        with pytest.raises(Killed):
            router.train(cfg, folder, on_record=stop_at(kill))
        done = []
        router.train(cfg, folder, resume=True, on_record=done.append)
        assert done == units[units.index(kill) + 1:]  # nothing that had finished is done again
        assert _outputs(folder) == _outputs(tmp_path / "whole")
    with pytest.raises(RunFolderError, match="already holds a run"):
        router.train(cfg, tmp_path / "whole")


def test_router_resume_after_kill_9_from_the_command_line(policy_run, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "algorithms.router", f"policy={policy_run}", *TINY]
    whole = subprocess.run([*args, f"hydra.run.dir={tmp_path / 'whole'}"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = subprocess.run([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                            env=dict(env, **{KILL_AT: "prefixes/router_train/2"}), capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -9 and not (tmp_path / "run" / "router").exists()
    resumed = subprocess.run([sys.executable, "-m", "algorithms.router", f"resume={tmp_path / 'run'}"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _outputs(tmp_path / "run") == _outputs(tmp_path / "whole")


# ---- the benchmark and MiCRo --------------------------------------------------------------------


def test_a_benchmark_killed_mid_row_resumes_to_the_same_reports(tmp_path):
    from algorithms import benchmark
    from tests.algorithms.test_benchmark import TINY_BENCH

    run = make_tiny_run(tmp_path / "policy")
    cfg = compose_config("benchmark", *TINY_BENCH, f"policy={run}", "benchmark.unit_episodes=3",
                         "benchmark.win_rates=false")
    whole = benchmark.run_benchmark(cfg, tmp_path / "whole")
    units = [json.loads(line).get("unit") for line in (tmp_path / "whole" / JOURNAL).read_text().splitlines()][1:]
    assert "row/head_direct/3" in units and "row/persona_judge/0" in units  # 8 episodes: 3 + 3 + 2 per row
    kill = "row/head_direct/3"
    with pytest.raises(Killed):
        benchmark.run_benchmark(cfg, tmp_path / "killed", on_record=stop_at(kill))
    done = []
    resumed = benchmark.run_benchmark(cfg, tmp_path / "killed", resume=True, on_record=done.append)
    assert done == units[units.index(kill) + 1:]
    for name in ("benchmark.json", "benchmark.md", "episodes.jsonl"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    assert resumed["markdown"] == whole["markdown"]
    episodes = (tmp_path / "killed" / "episodes.jsonl").read_text().splitlines()
    assert len(episodes) == len(set(episodes)) == 8 * len(json.loads((tmp_path / "whole" / "benchmark.json")
                                                                         .read_text())["rows"])


def test_a_kill_while_a_unit_is_written_leaves_no_duplicate_rows(tmp_path, monkeypatch):
    from algorithms import benchmark
    from algorithms.journal import Journal as J
    from tests.algorithms.test_benchmark import TINY_BENCH

    run = make_tiny_run(tmp_path / "policy")
    cfg = compose_config("benchmark", *TINY_BENCH, f"policy={run}", "benchmark.unit_episodes=4",
                         "benchmark.win_rates=false", "benchmark.entries.persona_judge=null")
    benchmark.run_benchmark(cfg, tmp_path / "whole")
    append = J._append

    def torn(self, row):  # the second row unit reaches the disk half-written, then the process dies
        if row.get("unit") == "row/head_direct/4":
            data = json.dumps(row).encode()
            with self.path.open("ab") as f:
                f.write(data[: len(data) // 2])
            raise Killed("mid-write")
        append(self, row)

    monkeypatch.setattr(J, "_append", torn)
    with pytest.raises(Killed):
        benchmark.run_benchmark(cfg, tmp_path / "killed")
    monkeypatch.setattr(J, "_append", append)
    benchmark.run_benchmark(cfg, tmp_path / "killed", resume=True)
    rows = [json.loads(line) for line in (tmp_path / "killed" / JOURNAL).read_text().splitlines()]
    keys = [r["unit"] for r in rows[1:]]
    assert len(keys) == len(set(keys)) and "row/head_direct/4" in keys
    for name in ("benchmark.json", "episodes.jsonl"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "whole" / name).read_text(), name


def test_a_micro_run_killed_between_stages_resumes_to_the_same_models(tmp_path):
    from algorithms import micro
    from tests.conftest import make_candidates_run

    folder = make_candidates_run(tmp_path / "inputs")
    cfg = compose_config("micro", f"policy={folder / 'run'}", f"candidates={folder / 'router'}", "device=cpu",
                         "micro.epochs=3", "micro.stage2_epochs=2", "micro.router_hidden=8", "micro.num_heads=2")
    whole = micro.train(cfg, tmp_path / "whole")
    with pytest.raises(Killed):
        micro.train(cfg, tmp_path / "killed", on_record=stop_at("fit/static"))
    done = []
    resumed = micro.train(cfg, tmp_path / "killed", resume=True, on_record=done.append)
    assert done == ["fit/stage1", "fit/stage2"]
    assert resumed["accuracy"] == whole["accuracy"]
    for name in (micro.MODEL_FILE, micro.MODEL_CONFIG):
        assert (tmp_path / "killed" / "reward" / name).read_bytes() == (tmp_path / "whole" / "reward" / name).read_bytes()
