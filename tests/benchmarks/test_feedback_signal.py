"""benchmarks/feedback_signal.py: the AUC of the teacher's feedback shift, on known cases and as a smoke run."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import feedback_signal as fs  # noqa: E402


def test_auc_on_known_cases():
    assert fs.auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert fs.auc(np.array([0.0]), np.array([1.0])) == 0.0
    assert fs.auc(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0.5  # ties count half
    assert np.isnan(fs.auc(np.array([]), np.array([1.0])))
    deltas = np.array([3.0, 2.0, 1.0, 0.0, 5.0, -1.0])
    labels = np.array([1, 1, -1, -1, 0, -1])  # the neutral turn is left out
    stat = fs.auc_interval(deltas, labels, np.array(["a", "a", "b", "b", "c", "c"]), samples=200)
    assert stat["auc"] == 1.0 and stat["good"] == 2 and stat["bad"] == 3 and 0 <= stat["low"] <= stat["high"] <= 1
    rewards = np.array([0.5, 0.0, -0.25])
    assert fs.LABELS["sign"](rewards).tolist() == [1, 0, -1]  # a zero-rated turn is left out
    assert fs.LABELS["nonnegative"](rewards).tolist() == [1, 1, -1]  # unpenalised vs penalised


@pytest.mark.parametrize("env", ["tutoring", "persona"])
def test_a_tiny_random_run_writes_an_auc_for_each_env(env, tmp_path, monkeypatch):
    sample = fs.sample_turns

    def rated(*args, **kwargs):  # a random model's text is mostly rated 0 by the persona judge: alternate ratings
        turns = sample(*args, **kwargs)
        for i, t in enumerate(turns):
            t["reward"] = t["reward"] or (1.0 if i % 2 else -1.0)
        return turns

    monkeypatch.setattr(fs, "sample_turns", rated)
    compose, composed = fs.compose_env, []
    monkeypatch.setattr(fs, "compose_env", lambda *a: composed.append(a[2]) or compose(*a))
    setting = {"persona": "critic.quote_off_facet=false", "tutoring": "env.max_turns=2"}[env]
    out = tmp_path / f"{env}.json"
    result = fs.main(["--env", env, "--model", "tiny-random", "--num", "6", "--turns", "2", "--max-new-tokens", "6",
                      "--contrast", "1", "--bootstrap", "50", "--set", setting, "--out", str(out)])
    assert len(composed) == 3 and all(setting in overrides for overrides in composed)  # every env gets --set
    saved = json.loads(out.read_text())
    assert saved["set"] == [setting]
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert {(r["variant"], r["source"], r["contrast"]) for r in saved["rows"]} == {("plain", "base", 0.0),
                                                                                 ("plain", "base", 1.0)}
    rated = [r for r in saved["rows"] if r["good"] and r["bad"]]
    assert rated, "the smoke run needs good and bad turns to compute an AUC"
    assert all(0 <= r["auc"] <= 1 for r in rated)
    assert all(isinstance(t["delta"], float) for t in saved["turns"])


def test_teacher_samples_are_written_under_the_teacher_prompt_about_their_own_facet():
    from agents import load_backbone

    _, task = fs.compose_env("persona", "tiny-random", [])
    backbone = load_backbone("tiny-random")
    backbone.tokenizer.padding_side = "left"
    persona = task.personas[2]
    teacher = fs.TeacherPrompts(task, persona)
    turns = fs.sample_turns(teacher, backbone.model.eval(), backbone.tokenizer, contexts=5, turns=1, max_new_tokens=4,
                            temperature=1.0, seed=0, selector={}, driver="t", persona=persona.name)
    assert len(turns) == 5 and {t["label"] for t in turns} == {persona.name}  # every episode's focal facet is its own
    obs = turns[0]["observation"]
    assert teacher.policy_messages(obs) == task.teacher_messages(obs, persona, None) != task.policy_messages(obs)
    assert teacher.personas is task.personas  # everything else is the task's own
