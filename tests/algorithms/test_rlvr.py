"""RLVR / PerMix-RLVR on the tiny model: persona mixing, pinned losses, resume, and the math report."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import algorithms.rlvr as rlvr
from envs.tasks.base import EpisodeRecord
from tests.conftest import compose_config, trained_parameters

TINY_RLVR = ("agent=tiny", "algorithm.steps=2", "algorithm.prompts_per_step=2", "algorithm.group_size=4",
             "algorithm.max_new_tokens=6", "algorithm.micro_batch=2", "algorithm.warmup_steps=0",
             "algorithm.eval.contexts=2", "algorithm.eval.max_new_tokens=4", "env.eval_heldout_personas=1",
             "env.fidelity.model=tiny-random", "device=cpu")


def config(*overrides):
    return compose_config("rlvr", *TINY_RLVR, *overrides)


@pytest.fixture
def varied_reward(monkeypatch):
    """The tiny random model never answers a word problem right, so every group would tie at reward 0 and
    teach nothing; rewarding answers of even character length instead gives real advantages to learn from."""
    import envs.math

    monkeypatch.setattr(envs.math, "answer_reward", lambda text, answer, format_bonus=0.0: float(len(text) % 2 == 0))


def history(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "history.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("none_prob", "mixing"), [(1.0, "group"), (0.25, "group"), (0.25, "rollout"), (0.0, "group")])
def test_persona_mixing_draws_the_configured_proportions(none_prob, mixing):
    pool = [f"pg-{i}" for i in range(20)] + ["none"]
    draws = rlvr.draw_personas(pool, 2000, 4, none_prob=none_prob, mixing=mixing, rng=np.random.default_rng(0))
    groups = [draws[i:i + 4] for i in range(0, len(draws), 4)]
    share_none = np.mean([d == "none" for d in draws])
    assert share_none == pytest.approx(none_prob, abs=0.03)
    if mixing == "group":
        assert all(len(set(g)) == 1 for g in groups)  # one condition per group: advantages compare like with like
    elif none_prob < 1:
        assert any(len(set(g)) > 1 for g in groups)
    personas = [d for d in draws if d != "none"]
    if personas:  # uniform over the pool
        counts = np.bincount([int(p.split("-")[1]) for p in personas], minlength=20) / len(personas)
        assert counts.max() - counts.min() < 0.05
    again = rlvr.draw_personas(pool, 2000, 4, none_prob=none_prob, mixing=mixing, rng=np.random.default_rng(0))
    assert again == draws


# Gradient norms of the two updates: GRPO's loss is ~0 at the first inner step by construction (ratio 1,
# advantages centred within each group), so the gradient is what shows the update really happened.
# Re-pinned when log-probs moved to the rollout temperature (0.5): the gradient of log softmax(l / T) is 1/T times
# larger, and these are the norms before clipping. They were taken on the word problems (env.source=generated), the
# default before the drills, at the lr of that time: they pin the update, not the data or the defaults.
PINNED = {"rlvr": [2.4998228549957275, 2.47524094581604], "permix": [1.7181265354156494, 2.4889936447143555]}


@pytest.mark.parametrize("algorithm", ["rlvr", "permix"])
def test_two_step_runs_reproduce_pinned_losses(algorithm, tmp_path, varied_reward):
    pinned = config(f"algorithm={algorithm}", "env.source=generated", "algorithm.lr=2e-5")
    summary = rlvr.train(pinned, tmp_path / "a")
    rows = history(tmp_path / "a")
    rlvr.train(pinned, tmp_path / "b")
    assert [r["loss/total"] for r in rows] == [r["loss/total"] for r in history(tmp_path / "b")]
    assert [r["train/grad_norm"] for r in rows] == pytest.approx(PINNED[algorithm], rel=1e-4)
    assert [r["loss/total"] for r in rows] == pytest.approx([0, 0], abs=1e-6)
    assert all({"rl/reward", "rl/zero_variance_groups", "rl/kl", "env/format"} <= set(r) for r in rows)
    report = json.loads((tmp_path / "a" / "eval.json").read_text())["report"]
    assert set(report["rows"]) == {"head_solver", "base"}
    row = report["rows"]["head_solver"]
    assert len(row["accuracy_by_persona"]) == 8  # seven lottery roles and one held-out persona
    for name in ("head_solver", "base"):  # one layout: {value, low, high} for the trained policy and the base
        acc = report["rows"][name]["accuracy"]
        assert 0 <= acc["low"] <= acc["value"] <= acc["high"] <= 1
    assert {"attribution", "margin"} <= set(row["fidelity"]) and 0 <= row["pss"]["value"] <= 1
    assert (tmp_path / "a" / "eval.png").is_file() and summary["finished"]
    from algorithms.compare import compare

    table = compare([tmp_path / "a", tmp_path / "b"], ["run-a", "run-b"], plot=tmp_path / "lottery.png")
    assert (tmp_path / "lottery.png").is_file()
    assert "| run-a head_solver |" in table and "| run-b base |" in table and "PSS" in table
    turns = [t for r in rows for t in r["turns"]]
    assert len(set(turns)) == 2 * 2 * 4  # steps x groups x answers, each trained once


def test_rlvr_kill_and_resume_matches_an_uninterrupted_run(tmp_path, varied_reward):
    full = config("algorithm.steps=3", "algorithm.keep_checkpoint=true", "algorithm.eval.enabled=false",
                  "algorithm=permix")
    rlvr.train(full, tmp_path / "straight")
    rlvr.train(config("algorithm.steps=3", "algorithm.stop_after=1", "algorithm.eval.enabled=false",
                      "algorithm=permix"), tmp_path / "resumed")
    rlvr.train(full, tmp_path / "resumed", resume=True)
    a, b = trained_parameters(tmp_path / "straight"), trained_parameters(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss/total"] for r in history(tmp_path / "resumed")] == \
        [r["loss/total"] for r in history(tmp_path / "straight")]


def test_bad_rlvr_settings_are_refused_before_any_rollout(tmp_path):
    from configs.validation import ConfigError

    for override in ("algorithm.group_size=1", "algorithm.persona_none_prob=1.5", "algorithm.clip_eps=0",
                     "algorithm.persona_mixing=answer"):
        with pytest.raises(ConfigError, match=override.split("=")[0]):
            rlvr.train(config(override), tmp_path / "run")
    with pytest.raises(ConfigError, match="single-turn"):
        rlvr.train(compose_config("rlvr", *TINY_RLVR[:-3], "env=tutoring", "device=cpu"), tmp_path / "tutoring")


# ---- the math report on known records ------------------------------------------------------------


def _record(problem, persona, correct, answer="so #### 4"):
    return EpisodeRecord(driver="x", options={"problem": problem, "persona": persona},
                         label={"persona": persona, "correct": correct}, observations=[[{"role": "user",
                                                                                         "content": "Q"}]],
                         actions=[answer])


def test_fidelity_reads_only_the_first_questions_it_is_told_to():
    from envs.judges.fidelity import FidelityScore
    from envs.tasks.math import MathTask

    class Recorder:
        def __init__(self):
            self.problems = []

        def score_batch(self, items):
            self.problems += [item.messages[0]["content"] for item in items]
            return [FidelityScore() if item.persona_id == "none" else FidelityScore(attributed=True, margin=0.5)
                    for item in items]  # as PersonaAttribution: a no-persona answer has nothing to attribute

    scorer = Recorder()
    task = MathTask(eval_heldout_personas=0, fidelity=scorer, fidelity_questions=2)
    records = [_record(q, p, True) for q in (5, 1, 3) for p in ("none", "carpenter", "kindergartener")]
    for r in records:
        r.observations = [[{"role": "user", "content": f"Q{r.options['problem']}"}]]
    fidelity = task.evaluate({"x": records}, heads=["x"], bootstrap=20).metrics["rows"]["x"]["fidelity"]
    assert sorted(set(scorer.problems)) == ["Q1", "Q3"] and len(scorer.problems) == 6  # question 5 is left out
    assert fidelity["answers"] == 4 and fidelity["attribution"] == 1.0
    assert fidelity["attribution_interval"]["low"] == fidelity["attribution_interval"]["high"] == 1.0
    with pytest.raises(ValueError, match="fidelity_questions"):
        MathTask(fidelity_questions=0)


def test_pss_and_the_persona_lottery_on_known_records():
    from envs.tasks.math import MathTask

    task = MathTask(eval_heldout_personas=0)
    # two questions x three personas: q0 right under every persona, q1 only without a persona
    records = [_record(0, p, True) for p in ("none", "carpenter", "kindergartener")]
    records += [_record(1, "none", True), _record(1, "carpenter", False), _record(1, "kindergartener", False)]
    report = task.evaluate({"x": records}, heads=["x"], bootstrap=200, seed=0)
    row = report.metrics["rows"]["x"]
    assert row["accuracy_by_persona"]["none"]["value"] == 1.0 and row["accuracy_by_persona"]["carpenter"]["value"] == 0.5
    assert row["mean"] == pytest.approx(2 / 3) and row["min"] == 0.5 and row["max"] == 1.0
    assert row["pss"]["value"] == 0.5  # one of two questions right under every persona
    assert row["stability"] == pytest.approx(1 - np.std([1, 0.5, 0.5]) / (2 / 3))
    assert row["best"] == "none" and row["format"] == 1.0
    assert "| Persona |" in report.markdown and "PSS" in report.markdown
    lenient = MathTask(eval_heldout_personas=0, pss_share=0.3).evaluate({"x": records}, heads=["x"], bootstrap=200)
    assert lenient.metrics["rows"]["x"]["pss"]["value"] == 1.0  # q1 is right under one of three personas
    with pytest.raises(ValueError, match="pss_share"):
        MathTask(pss_share=0)


def test_offline_fidelity_attribution_runs_on_a_tiny_model():
    from envs.judges.fidelity import FidelityItem, PersonaAttribution

    scorer = PersonaAttribution(model="tiny-random")
    q = [{"role": "system", "content": "You are a carpenter."}, {"role": "user", "content": "What is 2 + 2?"}]
    items = [FidelityItem("You are a carpenter.", "carpenter", q, "Measure twice: 2 + 2 = 4. #### 4",
                          ("You are a chef.", "You are a pilot.")),
             FidelityItem("", "none", q[1:], "#### 4")]
    scores = scorer.score_batch(items)
    assert isinstance(scores[0].attributed, bool) and np.isfinite(scores[0].margin)
    assert scores[1].attributed is None  # no persona, nothing to attribute
    # rows are batched longest first; every score lands back on its own answer and candidate
    one_by_one = PersonaAttribution(model="tiny-random", batch_size=1).candidate_scores(items)
    for batched, alone in zip(scorer.candidate_scores(items), one_by_one):
        np.testing.assert_allclose(batched, alone, atol=1e-4)


def test_played_records_carry_the_label_as_of_their_last_turn(tiny, monkeypatch):
    """The math report reads ``label["correct"]``, which the env sets only once the question is answered."""
    import envs.math
    from algorithms.episodes import play_episodes
    from envs.tasks.math import MathTask

    monkeypatch.setattr(envs.math, "is_correct", lambda *args, **kwargs: True)
    task = MathTask(eval_heldout_personas=0)
    records = play_episodes(tiny.model, tiny.tokenizer, task, {}, task.eval_options(1), driver="x", turns=1,
                            max_new_tokens=3, temperature=1.0, seed=0)
    assert len(records) == 7 and all(r.label["correct"] is True for r in records)
    report = task.evaluate({"x": records}, heads=["x"], bootstrap=50)
    assert report.metrics["rows"]["x"]["mean"] == 1.0


def test_the_frozen_reference_is_loaded_only_for_the_kl_term(tmp_path):
    assert rlvr.RLVRTrainer(config(), tmp_path / "a").reference is None
    assert rlvr.RLVRTrainer(config("algorithm.kl_coef=0.05"), tmp_path / "b").reference is not None


def test_a_second_inner_step_moves_the_ratio_and_the_clipping_binds(tmp_path, varied_reward):
    rlvr.train(config("algorithm.inner_iterations=3", "algorithm.lr=0.05", "algorithm.head_lr_mult=1",
                      "algorithm.steps=1", "algorithm.eval.enabled=false"), tmp_path)
    row = history(tmp_path)[0]
    assert row["rl/trained_answers"] > 0
    assert row["rl/clip_fraction"] == 0  # the first step: the sampling policy itself, ratio 1
    assert row["rl/ratio_deviation_last"] > 0.05 and row["rl/clip_fraction_last"] > 0


def test_no_reference_model_is_built_without_a_kl_term(tmp_path):
    trainer = rlvr.RLVRTrainer(config(), tmp_path / "a")
    assert trainer.settings.kl_coef == 0 and trainer.reference is None
    with_kl = rlvr.RLVRTrainer(config("algorithm.kl_coef=0.05"), tmp_path / "b")
    assert with_kl.reference is not None and not any(p.requires_grad for p in with_kl.reference.parameters())


def test_the_quick_presets_keep_the_full_runs_persona_settings_and_shrink_the_rest():
    full = {a: compose_config("rlvr", f"algorithm={a}").algorithm for a in ("rlvr", "permix")}
    quick = {a: compose_config("rlvr", f"algorithm={a}_quick").algorithm for a in ("rlvr", "permix")}
    for name in full:
        assert quick[name].persona_none_prob == full[name].persona_none_prob
        assert quick[name].persona_mixing == full[name].persona_mixing
        assert quick[name].steps < full[name].steps and quick[name].eval.contexts < full[name].eval.contexts
    assert full["permix"].persona_none_prob < 1 == full["rlvr"].persona_none_prob


def test_evaluation_samples_in_batches_of_eval_batch_size(tiny, monkeypatch):
    """``algorithm.eval.batch_size`` bounds each generate call; greedy answers do not depend on it."""
    import agents.generation
    from agents import MultiHeadPolicy
    from algorithms.evaluation import play_rows
    from algorithms.trainer import EvalSettings
    from envs.tasks.math import MathTask

    task = MathTask(eval_heldout_personas=0)
    policy = MultiHeadPolicy(tiny.model, num_heads=1)
    sizes = []
    chunk = agents.generation._generate_chunk
    monkeypatch.setattr(agents.generation, "_generate_chunk",
                        lambda policy, tok, ids, *a, **k: sizes.append(ids.shape[0]) or chunk(policy, tok, ids, *a, **k))
    rows = {}
    for batch_size in (None, 3):
        settings = EvalSettings(contexts=1, turns=1, max_new_tokens=4, temperature=0, baselines=False,
                                batch_size=batch_size)
        (rows[batch_size],) = play_rows(policy, tiny.tokenizer, task, settings, head_for_persona=[0]).values()
    assert sizes == [7, 3, 3, 1]
    assert [r.actions for r in rows[None]] == [r.actions for r in rows[3]]
    with pytest.raises(ValueError, match="algorithm.eval.batch_size"):
        EvalSettings(batch_size=0)
