"""A run folder's config.yaml is data: no entry point calls a ``_target_`` that is not a registered plug-in."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from algorithms import benchmark, compare, micro, router
from configs.trust import UntrustedConfigError, load_saved_config, registered_targets
from tests.conftest import compose_config, make_tiny_run

ROOT = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny tutoring run folder (policy/ and config.yaml), never edited by a test."""
    return make_tiny_run(tmp_path_factory.mktemp("clean") / "run")


def poisoned(finished_run: Path, folder: Path, key: str, node: dict) -> Path:
    """A copy of ``finished_run`` whose config.yaml has ``node`` at ``key``."""
    run = folder / "run"
    run.mkdir(parents=True)
    (run / "policy").symlink_to(finished_run / "policy")
    cfg = OmegaConf.load(finished_run / "config.yaml")
    OmegaConf.update(cfg, key, node, force_add=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return run


def torch_load_payload(finished_run: Path, folder: Path) -> tuple[Path, Path]:
    """The attack of issue #34: env.student = torch.load of a pickle that touches a marker file."""
    marker = folder / "owned"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "extra.pt").write_bytes(pickle.dumps({"x": _Payload(marker)}))
    node = {"_target_": "torch.load", "_args_": [str(folder / "extra.pt")], "weights_only": False}
    return poisoned(finished_run, folder, "env.student", node), marker


def _entry(module: str, *args: str, cwd: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_registered_plug_ins_are_known_and_nothing_else():
    targets = registered_targets()
    assert {"envs.students.scripted.ScriptedStudent", "envs.chat.openai_client.OpenAIChatClient",
            "envs.tasks.tutoring.TutoringTask", "envs.judges.persona.HeuristicPersonaCritic",
            "algorithms.benchmark.OfflineRouter"} <= targets
    assert not {"torch.load", "os.system", "???"} & targets


@pytest.mark.parametrize("mode", ["evaluate", "resume"])
def test_opsd_resume_and_evaluate_refuse_the_torch_load_payload(finished_run, tmp_path, mode):
    run, marker = torch_load_payload(finished_run, tmp_path / "attack")
    out = _entry("algorithms.opsd", f"{mode}={run}", "device=cpu", cwd=tmp_path)
    assert out.returncode != 0
    assert "env.student._target_ = 'torch.load' is not a registered plug-in" in out.stderr
    assert "allow_targets=[torch.load]" in out.stderr
    assert not marker.exists()


def test_router_benchmark_micro_and_compare_refuse_it_too(finished_run, tmp_path):
    run, marker = torch_load_payload(finished_run, tmp_path / "attack")
    common = ("device=cpu", f"policy={run}")
    calls = {
        "router": lambda: router.train(compose_config("router", *common), tmp_path / "router"),
        "benchmark": lambda: benchmark.run_benchmark(compose_config("benchmark", *common), tmp_path / "bench"),
        "micro": lambda: micro.train(compose_config("micro", *common, f"candidates={run}"), tmp_path / "micro"),
        "compare": lambda: compare.compare([run]),
    }
    for name, call in calls.items():
        with pytest.raises(UntrustedConfigError, match="'torch.load' is not a registered plug-in"):
            call()
        assert not marker.exists(), name


@pytest.mark.parametrize("key", ["env", "env.student", "env.satisfaction_judge", "env.style_judge",
                                 "student", "judge.style", "pairwise_judge", "critic", "rubric_extractor",
                                 "persona_judge", "env.student.client", "agent.extra"])
def test_an_unregistered_target_in_any_plug_in_slot_is_refused_uncalled(finished_run, tmp_path, key):
    marker = tmp_path / "called"
    run = poisoned(finished_run, tmp_path / "f", key,
                   {"_target_": "tests.marker_target.touch", "marker": str(marker)})
    with pytest.raises(UntrustedConfigError, match=f"{key}._target_ = 'tests.marker_target.touch'"):
        router.load_run(run, "cpu", current=compose_config("router", f"policy={run}"))
    assert not marker.exists()


def test_a_target_cannot_hide_in_a_list_or_an_interpolation(finished_run, tmp_path):
    cfg = OmegaConf.load(finished_run / "config.yaml")
    cfg.env.extra = [{"nested": {"_target_": "builtins.exec", "_args_": ["1"]}}]
    (tmp_path / "a.yaml").write_text(OmegaConf.to_yaml(cfg))
    with pytest.raises(UntrustedConfigError, match=r"env.extra.0.nested._target_ = 'builtins.exec'"):
        load_saved_config(tmp_path / "a.yaml")
    cfg = OmegaConf.load(finished_run / "config.yaml")
    cfg.name = "os.system"
    cfg.env.student._target_ = "${name}"
    (tmp_path / "b.yaml").write_text(OmegaConf.to_yaml(cfg))
    with pytest.raises(UntrustedConfigError, match="'os.system' is not a registered plug-in"):
        load_saved_config(tmp_path / "b.yaml")


def test_the_command_line_allows_a_custom_plug_in_and_the_folder_cannot(finished_run, tmp_path):
    node = {"_target_": "tests.crashing_student.CrashingStudent", "marker": str(tmp_path / "m")}
    run = poisoned(finished_run, tmp_path / "f", "env.student", node)
    saved = OmegaConf.load(run / "config.yaml")
    saved.allow_targets = ["tests.crashing_student.CrashingStudent"]  # a folder cannot vouch for itself
    (run / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    with pytest.raises(UntrustedConfigError):
        load_saved_config(run / "config.yaml", compose_config("router", f"policy={run}"))
    # Named on this invocation's command line as a custom plug-in, or allowed explicitly: accepted.
    named = compose_config("router", f"policy={run}", "student=custom",
                           "student._target_=tests.crashing_student.CrashingStudent")
    allowed = compose_config("router", f"policy={run}", "allow_targets=[tests.crashing_student.CrashingStudent]")
    for current in (named, allowed):
        cfg = load_saved_config(run / "config.yaml", current)
        assert cfg.env.student._target_ == node["_target_"] and "allow_targets" not in cfg


def test_an_unmodified_run_folder_loads(finished_run):
    policy, _, cfg = router.load_run(finished_run, "cpu", current=compose_config("router", f"policy={finished_run}"))
    assert cfg.env._target_.endswith("TutoringTask") and policy.head_names == ["direct", "interactive"]


def test_a_folder_saved_before_the_tasks_moved_loads_under_the_new_path(finished_run, tmp_path):
    """Run folders written when the tasks lived in ``algorithms.tasks`` still resume and evaluate."""
    cfg = OmegaConf.load(finished_run / "config.yaml")
    assert cfg.env._target_ == "envs.tasks.tutoring.TutoringTask"
    run = poisoned(finished_run, tmp_path, "env._target_", "algorithms.tasks.tutoring.TutoringTask")
    loaded = load_saved_config(run / "config.yaml")
    assert loaded.env._target_ == "envs.tasks.tutoring.TutoringTask"
    outside = poisoned(finished_run, tmp_path / "other", "env._target_", "algorithms.opsd.main")
    with pytest.raises(UntrustedConfigError, match="algorithms.opsd.main"):
        load_saved_config(outside / "config.yaml")
