"""benchmarks/feedback_target.py: the teacher's own turns with and without the feedback, rated in restored episodes."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import feedback_target as ft  # noqa: E402


def test_paired_interval_resamples_whole_episodes():
    diff = np.array([1.0, 1.0, -1.0, 0.0])
    stat = ft.paired_interval(diff, np.array(["a", "a", "b", "b"]), samples=500)
    assert stat["mean"] == 0.25 and stat["n"] == 4
    # only two episodes: a resample holds a twice (mean 1), b twice (-0.5) or both (0.25)
    assert stat["low"] == -0.5 and stat["high"] == 1.0
    constant = ft.paired_interval(np.full(6, 0.5), np.arange(6), samples=100)
    assert constant["low"] == constant["high"] == 0.5
    assert np.isnan(ft.paired_interval(np.array([]), np.array([]))["mean"])


@pytest.mark.parametrize("env", ["tutoring", "persona"])
def test_a_tiny_random_run_rates_the_teachers_turns_in_the_policys_states(env, tmp_path):
    out = tmp_path / f"{env}.json"
    result = ft.main(["--env", env, "--model", "tiny-random", "--num", "3", "--max-new-tokens", "5", "--samples", "2",
                      "--bootstrap", "50", "--variant", "again", "env.teacher_feedback=true", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert {r["variant"] for r in saved["rows"]} == {"plain", "again"}
    everything = [r for r in saved["rows"] if r["turns"] == "all"]
    assert all(r["n"] == len(saved["states"]) > 0 for r in everything)
    for r in everything:  # the gain is the paired difference of the two teachers' mean rewards
        assert r["mean"] == pytest.approx(r["with"] - r["without"])
        assert r["low"] <= r["mean"] <= r["high"]
    checks = {"tutoring": "check/meta_talk", "persona": "check/own_facet_first"}[env]  # never the reward's figures
    assert all(checks in values for values in saved["metrics"].values()) and "policy" in saved["metrics"]
    state = saved["states"][0]
    assert len(state["plain/with"]) == len(state["plain/without"]) == 2  # --samples turns per state and teacher
    assert all(isinstance(t["reward"], float) for t in state["plain/with"])


def test_the_teacher_with_feedback_sees_it_and_the_one_without_does_not():
    from feedback_signal import compose_env, sample_turns

    from agents import load_backbone

    backbone = load_backbone("tiny-random")
    backbone.tokenizer.padding_side = "left"
    _, task = compose_env("tutoring", "tiny-random", [])
    turns = sample_turns(task, backbone.model.eval(), backbone.tokenizer, contexts=1, turns=1, max_new_tokens=4,
                         temperature=1.0, seed=0, selector={}, driver="base", keep_states=True)
    t = turns[0]
    persona = next(p for p in task.personas if p.name == t["label"])
    with_fb = compose_env("tutoring", "tiny-random", ["env.teacher_feedback=true"])[1]
    without = compose_env("tutoring", "tiny-random", ["env.teacher_feedback=false"])[1]
    assert t["feedback"] in with_fb.teacher_messages(t["observation"], persona, t["feedback"])[-1]["content"]
    assert t["feedback"] not in json.dumps(without.teacher_messages(t["observation"], persona, t["feedback"]))
    # the kept state restores the episode just before the turn: replaying the policy's turn gives its reward
    batch = task.make_batch(1, split="eval")
    batch.set_states([t["state"]])
    _, rewards, _, _, infos = batch.step([t["turn"]])
    assert float(rewards[0]) == t["reward"] and infos[0]["feedback"] == t["feedback"]
