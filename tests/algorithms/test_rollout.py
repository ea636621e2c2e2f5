"""Rollout workers: the plain worker without Ray, and the Ray pool (weight versions, staleness, faults)."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import open_dict

import algorithms.opsd as opsd
from algorithms.checkpoint import load_checkpoint
from algorithms.ray_pool import RolloutWorkerError, ray_config
from algorithms.rollout import (
    RolloutRequest,
    RolloutWorker,
    merge_results,
    publishable_weights,
)
from algorithms.trainer import CHECKPOINT
from configs.validation import ConfigError
from tests.conftest import compose_config

pytestmark = pytest.mark.xdist_group("ray")  # one xdist worker runs every Ray test: clusters never meet

ROOT = str(Path(__file__).resolve().parents[2])  # Ray workers import tests.crashing_student from here
FAST = [
    "agent=tiny",
    "algorithm=opsd_quick",
    "algorithm.steps=3",
    "algorithm.episodes_per_persona=2",
    "algorithm.turns_per_episode=2",
    "algorithm.micro_batch=2",
    "algorithm.max_new_tokens=6",
    "algorithm.eval.enabled=false",
    "algorithm.keep_checkpoint=true",
    "device=cpu",
]


def config(*overrides):
    return compose_config("opsd", *FAST, *overrides)


def ray_overrides(*extra):
    """Two local workers that can import this folder's plug-ins."""
    return ["ray.enabled=true", "ray.num_workers=2", "ray.log_to_driver=false",
            f"+ray.runtime_env.env_vars.PYTHONPATH={ROOT}", *extra]


def history(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "history.jsonl").read_text().splitlines()]


def trainable(run_dir):
    return load_checkpoint(Path(run_dir) / CHECKPOINT)["trainable"]


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


# ---- the plain worker, without Ray ------------------------------------------------------------


@pytest.mark.parametrize("trainable", ["last_layers", "lora"])
def test_standalone_worker_reproduces_in_process_collection(tmp_path, trainable):
    cfg = config(f"algorithm.trainable={trainable}")
    trainer = opsd.OPSDTrainer(cfg, tmp_path)
    trainer.start_pool()
    settings = trainer.worker_settings()
    assert pickle.loads(pickle.dumps(settings)) == settings  # a plain value: what Ray ships, never the run config
    worker = RolloutWorker(settings, name="copy")  # its own task and its own policy copy
    trainer.train_step()  # move the weights away from the initial ones: the copy must mirror the update
    worker.set_weights(1, publishable_weights(trainer.policy))
    trainer.episodes = None
    states = None
    for step in range(2):  # a fresh turn, then a continued one
        request = trainer.requests(step)[0]
        if states is not None:
            assert request.reset_seeds is None and request.states == states
        ours = trainer.pool.worker.collect(request)
        theirs = worker.collect(request)
        assert theirs.actions == ours.actions and theirs.feedback == ours.feedback
        assert theirs.rewards == ours.rewards and theirs.labels == ours.labels
        assert torch.equal(theirs.generation.completion_ids, ours.generation.completion_ids)
        torch.testing.assert_close(theirs.generation.logprobs, ours.generation.logprobs, atol=1e-5, rtol=0)
        assert theirs.states == ours.states and theirs.turn_index == [step + 1] * 4
        states = ours.states
        trainer.episodes = states  # continue the same dialogues at the next step
    trainer.close()


def test_worker_refuses_a_request_for_other_weights(tmp_path):
    cfg = config()
    trainer = opsd.OPSDTrainer(cfg, tmp_path)
    worker = RolloutWorker(trainer.worker_settings())
    request = trainer.requests(0)[0]
    with pytest.raises(RuntimeError, match="holds weights version -1"):
        worker.collect(request)
    with pytest.raises(KeyError, match="lacks"):
        worker.set_weights(0, {"no.such.weight": torch.zeros(1)})


def test_shards_split_rows_and_merge_back_in_order(tmp_path):
    cfg = config("ray.num_shards=3")
    trainer = opsd.OPSDTrainer(cfg, tmp_path)
    requests = trainer.requests(0)
    assert [len(r.uids) for r in requests] == [2, 1, 1]
    assert len({r.gen_seed for r in requests}) == 3
    trainer.start_pool()
    results = [trainer.pool.worker.collect(r) for r in reversed(requests)]
    merged = merge_results(results, trainer.tokenizer.pad_token_id)
    assert merged.uids == [u for r in requests for u in r.uids]
    assert merged.personas == trainer.row_persona
    width = max(r.generation.prompt_ids.shape[1] for r in results)
    assert merged.generation.prompt_ids.shape == (4, width)
    for r in results:  # each shard's prompts sit right-aligned (left padding) in the merged batch
        rows, gen = [merged.uids.index(u) for u in r.uids], r.generation
        assert torch.equal(merged.generation.prompt_ids[rows, -gen.prompt_ids.shape[1]:], gen.prompt_ids)
        assert torch.equal(merged.generation.completion_ids[rows, :gen.completion_ids.shape[1]], gen.completion_ids)
        assert [merged.generation.texts[i] for i in rows] == gen.texts
    trainer.close()


def test_request_and_ray_config_validation():
    with pytest.raises(ValueError, match="either episode states or reset seeds"):
        RolloutRequest(step=0, shard=0, uids=["a"], personas=[0], heads=[0], version=0, gen_seed=0)
    with pytest.raises(ConfigError, match="ray.max_staleness=2 is not allowed: must be 0 or 1"):
        ray_config(config("ray.max_staleness=2"))
    with pytest.raises(ConfigCompositionException, match="ray.workers"):
        config("ray.workers=2")
    old = config()
    with open_dict(old):
        del old["ray"]  # a run saved before the ray group existed
    assert ray_config(old).enabled is False


# ---- Ray ---------------------------------------------------------------------------------------


def test_two_ray_workers_train_and_log_versions_and_staleness(tmp_path):
    ray = pytest.importorskip("ray")
    run = tmp_path / "ray"
    summary = opsd.train(config(*ray_overrides("ray.max_staleness=1")), run)
    assert summary["step"] == 3 and summary["rollout"]["workers"] == "ray x 2"
    records = history(run)
    assert [r["rollout/weights_version"] for r in records] == [0, 0, 1]  # steps 2 and 3 were sampled one update behind
    assert [r["rollout/staleness"] for r in records] == [0, 1, 1]
    turns = [t for r in records for t in r["turns"]]
    assert len(turns) == 3 * 4 == len(set(turns))
    assert not ray.is_initialized()  # the local cluster this run started is gone


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    yield ray
    ray.shutdown()


def crashing(marker, **kwargs):
    args = [f"+student.{k}={v}" for k, v in kwargs.items()]
    return ["student=custom", "student._target_=tests.crashing_student.CrashingStudent", f"+student.marker={marker}", *args]


def test_a_killed_worker_is_restarted_and_reruns_exactly_its_dialogues(tmp_path, ray_cluster):
    reference = tmp_path / "in_process"
    opsd.train(config("ray.num_shards=2"), reference)  # same shards and seeds, no Ray, nothing killed
    run = tmp_path / "killed"
    marker = tmp_path / "killed.marker"
    opsd.train(config(*ray_overrides(), *crashing(marker)), run)
    assert marker.exists()  # one worker really died mid-collection
    records = history(run)
    assert sum(r["rollout/retries"] for r in records) == 1
    turns = [t for r in records for t in r["turns"]]
    assert len(turns) == 3 * 4 == len(set(turns))  # nothing lost, nothing counted twice
    assert [r["turns"] for r in records] == [r["turns"] for r in history(reference)]
    assert_same_params(trainable(run), trainable(reference))  # the re-run gave exactly the lost dialogues


def test_a_worker_that_keeps_dying_stops_the_run_naming_it(tmp_path, ray_cluster):
    cfg = config(*ray_overrides("ray.max_failures=1"), *crashing(tmp_path / "m", always=True))
    with pytest.raises(RolloutWorkerError, match=r"Rollout worker rollout-\d died 2 times in a row"):
        opsd.train(cfg, tmp_path / "run")
