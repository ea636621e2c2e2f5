"""The data splits: ``test`` shares nothing with any other split, is never read by training, curves or
tuning, and an evaluation never repeats a context; intervals resample whole topics."""

import numpy as np
import pytest

import algorithms.opsd as opsd
import algorithms.rlvr as rlvr
from envs.data.persona import load_split
from envs.data.splits import SPLITS, watch_splits
from envs.math import personas_for_split
from envs.tasks.reporting import ClusterDraw, clustered_ratio, ratio_estimate
from tests.conftest import compose_config

HELD_OUT = ("eval", "test")


def _tutoring_task(*overrides):
    from algorithms.components import build_task

    return build_task(compose_config("opsd", "env=tutoring", *overrides))


def test_tutoring_test_topics_and_openings_are_disjoint_from_every_other_split():
    task = _tutoring_task()
    topics = {s: set(task.topics(s)) for s in SPLITS}
    for held in HELD_OUT:
        for other in SPLITS:
            if other != held:
                assert not topics[held] & topics[other], (held, other)
    assert len(topics["test"]) == 16 and len(topics["eval"]) == 15
    assert set().union(*topics.values()) == set(task._topics["train"]) | topics["eval"] | topics["test"]
    openings = {}
    for split in ("train", "test"):
        infos = [task.make_batch(1, split=split).reset(seed=i)[1][0] for i in range(40)]
        openings[split] = {info["seed_turn"].replace(info["topic"], "{topic}") for info in infos}
    assert not openings["train"] & openings["test"] and len(openings["test"]) > 4


def test_persona_test_requests_and_records_are_disjoint_from_every_other_split():
    data = {s: load_split(s, max_request_chars=500) for s in SPLITS}
    for held in HELD_OUT:
        for other in SPLITS:
            if other == held:
                continue
            assert not {r.uid for r in data[held].requests} & {r.uid for r in data[other].requests}, (held, other)
            assert not {r.cluster for r in data[held].requests} & {r.cluster for r in data[other].requests}
            cores = {r.sources["professional"][0] for r in data[held].records}
            assert not cores & {r.sources["professional"][0] for r in data[other].records}, (held, other)
    assert len(data["test"].requests) >= 30 and len(data["test"].records) == 25


def test_math_test_questions_and_personas_are_disjoint_from_every_other_split():
    from envs.data.problems import problems_for_split

    arithmetic = {s: {p.question for p in problems_for_split(s, num=150)} for s in SPLITS}
    gsm = {s: {p.id for p in problems_for_split(s, task="gsm8k")} for s in SPLITS}
    personas = {s: {p.id for p in personas_for_split(s)} - {"none"} for s in SPLITS}
    for held in HELD_OUT:
        for other in SPLITS:
            if other != held:
                assert not arithmetic[held] & arithmetic[other], (held, other)
                assert not gsm[held] & gsm[other], (held, other)
                assert not personas[held] & personas[other], (held, other)
    assert len(personas["test"]) >= 10


@pytest.mark.parametrize("env, unit", [("tutoring", "topic"), ("persona", "request")])
def test_asking_for_more_contexts_than_a_split_holds_is_refused(env, unit):
    task = _tutoring_task() if env == "tutoring" else _persona_task()
    held = len(task.topics("test")) if env == "tutoring" else len(task.data("test").requests)
    assert len(task.eval_options(None, split="test")) == held * (2 if env == "tutoring" else 1)
    with pytest.raises(ValueError, match=f"Asked for {held + 1} {unit}s of split 'test', which holds {held}"):
        task.eval_options(held + 1, split="test")
    assert len(task.eval_options(held + 1, split="test", repeat=True)) >= held + 1  # training data may cycle


def _persona_task():
    from algorithms.components import build_task

    return build_task(compose_config("opsd", "env=persona"))


def _refuse_test(split):
    if split == "test":
        raise AssertionError("a training run read the test split")


@pytest.mark.parametrize("env", ["tutoring", "persona"])
def test_a_training_run_with_its_curve_never_reads_test(env, tmp_path, opsd_config):
    reads = []
    with watch_splits(reads.append), watch_splits(_refuse_test):
        opsd.train(opsd_config(f"env={env}", "algorithm.eval.every=1", "algorithm.eval.curve_contexts=1",
                               "algorithm.eval.contexts=1", "algorithm.max_new_tokens=4"), tmp_path / "run")
    assert "train" in reads and "eval" in reads and "test" not in reads


def test_an_rlvr_run_never_reads_test(tmp_path):
    from tests.algorithms.test_rlvr import config

    reads = []
    with watch_splits(reads.append), watch_splits(_refuse_test):
        rlvr.train(config(), tmp_path / "run")
    assert "train" in reads and "eval" in reads and "test" not in reads


def test_headline_evaluation_reads_test_and_writes_its_own_report(tmp_path, opsd_config):
    reads = []
    with watch_splits(reads.append):
        summary = opsd.train(opsd_config("algorithm.eval.split=test", "algorithm.eval.contexts=2"), tmp_path)
    assert "test" in reads and summary["eval_split"] == "test"
    assert (tmp_path / "test.json").is_file() and (tmp_path / "test.md").is_file()
    assert not (tmp_path / "eval.json").exists()


def test_topic_bootstrap_is_wider_than_dialogue_bootstrap_when_a_topics_dialogues_agree():
    # 6 topics x 5 dialogues; every dialogue of a topic has the same outcome, topics differ.
    outcomes = [1, 0, 1, 1, 0, 0]
    topics = [t for t in range(6) for _ in range(5)]
    good = [outcomes[t] * 3 for t in topics]  # 3 turns each
    turns = [3] * len(topics)
    dialogue, _ = ratio_estimate(good, turns, samples=4000, confidence=0.95, rng=np.random.default_rng(0))
    draw = ClusterDraw.draw(topics, samples=4000, rng=np.random.default_rng(0))
    clustered, reps = clustered_ratio(good, turns, topics, draw, confidence=0.95)
    assert clustered.value == dialogue.value == 0.5 and clustered.n == 6
    assert clustered.high - clustered.low > 1.5 * (dialogue.high - dialogue.low)
    # with one dialogue per topic the two coincide in distribution
    one = list(range(30))
    single, _ = clustered_ratio(good, turns, one, ClusterDraw.draw(one, samples=4000, rng=np.random.default_rng(1)),
                                confidence=0.95)
    assert single.high - single.low == pytest.approx(dialogue.high - dialogue.low, abs=0.08)


def test_router_learning_never_reads_test(tmp_path):
    from algorithms import router
    from tests.algorithms.test_router_learning import router_cfg
    from tests.conftest import make_tiny_run

    run = make_tiny_run(tmp_path / "policy")
    reads = []
    with watch_splits(reads.append), watch_splits(_refuse_test):
        router.train(router_cfg(run), tmp_path / "router")
    assert {"router_train", "router_val"} <= set(reads) and "test" not in reads
