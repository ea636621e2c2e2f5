"""Run folders and checkpoints: nothing executes from a checkpoint, nothing is lost or logged twice."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import algorithms.opsd as opsd
import algorithms.trainer as trainer_module
from algorithms.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from algorithms.cli import run_dir
from algorithms.runs import RunFolderError, write_json
from algorithms.trainer import CHECKPOINT, LEGACY_CHECKPOINT

ROOT = Path(opsd.__file__).resolve().parents[1]


def history_steps(run_dir):
    return [json.loads(line)["step"] for line in (Path(run_dir) / "history.jsonl").read_text().splitlines()]


def tb_steps(run_dir, tag="loss/total"):
    acc = EventAccumulator(str(Path(run_dir) / "tb"))
    acc.Reload()
    return [event.step for event in acc.Scalars(tag)]


class _Payload:
    """Unpickling this creates a marker file: proof that a loader ran code from the checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_in_a_checkpoint_never_runs(tmp_path, opsd_config):
    run = tmp_path / "run"
    opsd.train(opsd_config("algorithm.steps=4", "algorithm.stop_after=1"), run)
    marker = tmp_path / "owned"
    blob = pickle.dumps({"step": 1, "x": _Payload(marker)})
    # Old-format file: refused by name, never unpickled.
    (run / CHECKPOINT).unlink()
    (run / LEGACY_CHECKPOINT).write_bytes(blob)
    with pytest.raises(CheckpointError, match="checkpoint.pt is a pickle"):
        opsd.train(opsd_config("algorithm.steps=4"), run, resume=True)
    # The same bytes under the new name: not a checkpoint, a clear error, still nothing runs.
    (run / CHECKPOINT).write_bytes(blob)
    with pytest.raises(CheckpointError, match=f"{CHECKPOINT} is damaged or is not a pluralgym checkpoint"):
        opsd.train(opsd_config("algorithm.steps=4"), run, resume=True)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_a_damaged_checkpoint_gives_one_clear_message(damage, tmp_path):
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, {"step": 3, "weights": __import__("torch").ones(1000)})
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "random": os.urandom(len(data)), "empty": b""}[damage])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "Delete it" in str(info.value)
    assert "older version" not in str(info.value)


def test_a_new_run_never_merges_into_an_existing_one(tmp_path, opsd_config):
    run = tmp_path / "run"
    opsd.train(opsd_config(), run)
    config_before = (run / "config.yaml").read_text()
    with pytest.raises(RunFolderError, match="already holds a run.*resume=.*overwrite=true"):
        opsd.train(opsd_config("algorithm.variant=mt"), run)
    assert (run / "config.yaml").read_text() == config_before and len(history_steps(run)) == 2
    opsd.train(opsd_config("algorithm.variant=mt", "overwrite=true"), run)
    assert "variant: mt" in (run / "config.yaml").read_text() and history_steps(run) == [1, 2]


def test_a_kill_during_a_checkpoint_write_leaves_no_duplicate_rows(tmp_path, opsd_config, monkeypatch):
    cfg = opsd_config("algorithm.steps=4", "algorithm.save_every=2")
    opsd.train(cfg, tmp_path / "straight")
    real_save = trainer_module.save_checkpoint

    def dies_on_second_save(path, state):
        if state["step"] == 4:  # the process dies half-way through writing the step-4 checkpoint
            Path(str(path) + ".tmp").write_bytes(b"partial")
            raise KeyboardInterrupt
        return real_save(path, state)

    monkeypatch.setattr(trainer_module, "save_checkpoint", dies_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        opsd.train(cfg, tmp_path / "killed")
    assert history_steps(tmp_path / "killed") == [1, 2, 3]  # step 3 was logged, the last checkpoint is step 2
    monkeypatch.setattr(trainer_module, "save_checkpoint", real_save)
    opsd.train(cfg, tmp_path / "killed", resume=True)
    assert history_steps(tmp_path / "killed") == [1, 2, 3, 4]
    assert tb_steps(tmp_path / "killed") == [1, 2, 3, 4]
    assert not list((tmp_path / "killed").glob("*.tmp"))
    straight = [json.loads(x)["loss/total"] for x in (tmp_path / "straight" / "history.jsonl").open()]
    resumed = [json.loads(x)["loss/total"] for x in (tmp_path / "killed" / "history.jsonl").open()]
    assert resumed == straight


def test_a_kill_during_the_first_write_restarts_cleanly(tmp_path, opsd_config, monkeypatch):
    cfg = opsd_config("algorithm.steps=2", "algorithm.save_every=1")

    def dies(path, state):
        Path(str(path) + ".tmp").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "save_checkpoint", dies)
    with pytest.raises(KeyboardInterrupt):
        opsd.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / CHECKPOINT).exists() and (tmp_path / "run" / f"{CHECKPOINT}.tmp").exists()
    monkeypatch.undo()
    summary = opsd.train(cfg, tmp_path / "run", resume=True)
    assert summary["finished"] and history_steps(tmp_path / "run") == [1, 2]
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_resuming_a_finished_run_changes_nothing(tmp_path, opsd_config):
    run = tmp_path / "run"
    opsd.train(opsd_config(), run)
    before = (run / "summary.json").read_text()
    again = opsd.train(opsd_config(), run, resume=True)
    assert again["finished"] and (run / "summary.json").read_text() == before


def test_json_files_never_hold_nan(tmp_path, opsd_config):
    run = tmp_path / "run"
    opsd.train(opsd_config(), run)  # this seed gives a step with no matched episode: a NaN mean
    for name in ("history.jsonl", "summary.json", "eval.json"):
        text = (run / name).read_text()
        assert "NaN" not in text and "Infinity" not in text, name
    assert any(json.loads(line)["env/reward_matched"] is None for line in (run / "history.jsonl").open())
    write_json(tmp_path / "x.json", {"a": float("nan"), "b": [float("inf"), 1.0]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.0]}


def test_resume_and_evaluate_paths_are_checked_before_any_folder_is_made(tmp_path):
    with pytest.raises(ValueError, match="is not a run folder"):
        run_dir(str(tmp_path / "typo"), None, "fresh")
    with pytest.raises(ValueError, match="not both"):
        run_dir("a", "b", "fresh")
    assert not (tmp_path / "typo").exists()
    assert run_dir(None, None, "runs/opsd/x") == "runs/opsd/x"


def _cli(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "algorithms.opsd", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_command_line_resume_keeps_the_record_of_how_the_run_started(tmp_path):
    from tests.conftest import TINY_OPSD

    run = tmp_path / "run"
    first = _cli(*TINY_OPSD, "algorithm.steps=3", "algorithm.stop_after=1", f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    overrides = list((run / ".hydra").glob("*/overrides.yaml"))
    assert len(overrides) == 1 and "algorithm.stop_after=1" in overrides[0].read_text()
    original = overrides[0].read_text()
    second = _cli(f"resume={run}", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert overrides[0].read_text() == original and len(list((run / ".hydra").glob("*/overrides.yaml"))) >= 1
    assert history_steps(run) == [1, 2, 3] and json.loads((run / "summary.json").read_text())["finished"]
    typo = _cli(f"resume={tmp_path / 'no_such_run'}", cwd=tmp_path)
    assert typo.returncode != 0 and "is not a run folder" in typo.stderr
    assert not (tmp_path / "no_such_run").exists()


def test_an_api_key_given_as_a_variable_name_is_refused_before_anything_is_written(tmp_path):
    secret = "sk-proj-abcdefSECRET1234567890"
    out = _cli("agent=tiny", "student=chat_model", "chat@student.client=openai",
               f"student.client.api_key_env={secret}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode != 0 and "api_key_env must be the NAME" in out.stderr
    assert secret not in out.stdout + out.stderr and not (tmp_path / "run").exists()
    assert not any(secret.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_a_saved_config_keeps_the_envs_links_so_an_override_reaches_the_plug_in_it_builds(tmp_path):
    from omegaconf import OmegaConf

    from algorithms.components import build_task
    from algorithms.runs import write_config
    from configs.trust import load_saved_config
    from tests.conftest import compose_config

    cfg = compose_config("opsd", "agent=tiny", "student.noise=0.1")
    saved = OmegaConf.load(write_config(cfg, tmp_path / "config.yaml"))
    assert saved.env._content["student"]._value() == "${student}"  # one student in the file, linked
    run_cfg = load_saved_config(tmp_path / "config.yaml")
    OmegaConf.update(run_cfg, "student.quality_check", False)  # what resume=/evaluate= do with an override
    OmegaConf.update(run_cfg, "judge.style.quality_check", False)
    task = build_task(run_cfg)
    assert task.student.quality_check is False and task.student.noise == 0.1
    assert task.style_judge.quality_check is False
