"""OPSD trainer on tiny-random: configs, pinned losses, variants, and what a run folder guarantees."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

import algorithms.opsd as opsd
import configs
from agents import MultiHeadPolicy
from agents.models import load_backbone
from algorithms.components import build_task
from algorithms.opsd import DistillBatch, distill_step
from algorithms.rollout import RolloutWorker
from algorithms.trainer import CHECKPOINT
from configs.validation import ConfigError
from envs.tasks import TutoringTask
from tests.conftest import compose_config, group_options, trained_parameters

OPSD_PRESETS = ("opsd", "opsd_quick")
RLVR_PRESETS = ("rlvr", "permix", "rlvr_quick", "permix_quick")


def test_every_algorithm_preset_belongs_to_a_trainer():
    assert set(group_options("algorithm")) == {*OPSD_PRESETS, *RLVR_PRESETS}


@pytest.mark.parametrize("env", ["tutoring", "persona"])
def test_the_quick_preset_is_as_small_on_every_env(env):
    quick = opsd.algorithm_config(compose_config("opsd", f"env={env}", "algorithm=opsd_quick"))
    full = opsd.algorithm_config(compose_config("opsd", f"env={env}"))
    assert (quick.steps, quick.episodes_per_persona, quick.max_new_tokens) == (4, 2, 24)  # the env's sizes lose
    assert (quick.eval.contexts, quick.eval.max_new_tokens) == (2, 24)
    assert quick.turns_per_episode <= 2 and quick.temperature == full.temperature  # the env's own choices stay
    assert quick.lr == full.lr and quick.contrast == full.contrast
    tuned = opsd.algorithm_config(compose_config("opsd", f"env={env}", "algorithm=opsd_quick", "algorithm.steps=7"))
    assert tuned.steps == 7  # the command line still wins


@pytest.mark.parametrize("algorithm", OPSD_PRESETS)
@pytest.mark.parametrize("agent", group_options("agent"))
def test_every_agent_and_algorithm_config_composes_and_validates(agent, algorithm):
    cfg = compose_config("opsd", f"agent={agent}", f"algorithm={algorithm}")
    assert opsd.algorithm_config(cfg).steps >= 1
    assert cfg.agent.model


@pytest.mark.parametrize("algorithm", RLVR_PRESETS)
def test_another_trainers_algorithm_preset_is_refused_by_name(algorithm):
    with pytest.raises(ConfigError, match="Unknown key algorithm.clip_eps"):  # an env without OPSD settings
        opsd.algorithm_config(compose_config("opsd", "env=persona_math", f"algorithm={algorithm}"))
    # an env with its own OPSD settings (configs/env_opsd/) cannot even put them into the other trainer's preset
    with pytest.raises(ConfigCompositionException, match="RLVRConfig"):
        compose_config("opsd", "env=tutoring", f"algorithm={algorithm}")


@pytest.mark.parametrize("judge", group_options("judge"))
@pytest.mark.parametrize("student", [s for s in group_options("student") if s != "custom"])
def test_every_student_and_judge_config_instantiates_into_a_task(student, judge):
    cfg = compose_config("opsd", "env=tutoring", f"student={student}", f"judge={judge}")
    task = build_task(cfg)  # model-backed clients load lazily: nothing heavy happens here
    assert isinstance(task, TutoringTask) and task.persona_names == ["direct", "interactive"]
    assert hasattr(task.student, "reply_batch") and hasattr(task.satisfaction_judge, "judge_batch")
    assert hasattr(task.style_judge, "judge_batch")
    assert set(task.topics("train")).isdisjoint(task.topics("eval")) and len(task.topics("eval")) >= 10


@pytest.mark.parametrize("chat", group_options("chat"))
def test_every_chat_config_instantiates(chat, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cfg = compose_config("opsd", "student=chat_model", f"chat@student.client={chat}")
    assert hasattr(instantiate(cfg.student.client), "chat_batch")


def test_defaults_are_written_once_and_reach_the_config():
    cfg = compose_config("opsd")  # env=tutoring, whose own OPSD settings are in configs/env_opsd/tutoring.yaml
    own = OmegaConf.to_container(OmegaConf.load(Path(configs.__file__).parent / "env_opsd" / "tutoring.yaml"))
    assert opsd.algorithm_config(cfg) == opsd.OPSDConfig(**own["algorithm"])  # the YAML adds nothing else
    quick = opsd.algorithm_config(compose_config("opsd", "algorithm=opsd_quick"))
    assert quick.steps == 4 and quick.lr == opsd.OPSDConfig().lr  # a preset overrides, the rest is inherited
    assert compose_config("opsd", "student.noise=0.3").student.noise == 0.3  # plug-in arguments without '+'


def losses(run_dir):
    return [json.loads(line)["loss/total"] for line in (Path(run_dir) / "history.jsonl").read_text().splitlines()]


# Pinned on the tiny-random model (seed 0): a change here means the training step changed (re-pinned when the
# test split took topics, requests and records out of train, and persona rollouts moved to T=0.7). PINNED is the
# default (the tutoring env's contrastive teacher), PINNED_PLAIN the plain teacher (algorithm.contrast=null).
PINNED = {
    "mah": [0.00289399508619681, 0.0027254869346506894],
    "mt": [0.002702652825973928, 0.002581981068942696],
}
PINNED_PLAIN = {
    "mah": [0.0028358222916722298, 0.002689536544494331],
    "mt": [0.002621066407300532, 0.0025309755001217127],
}


@pytest.mark.parametrize("variant", ["mah", "mt"])
def test_seeded_two_step_run_reproduces_pinned_losses(variant, tmp_path, opsd_config):
    summary = opsd.train(opsd_config(f"algorithm.variant={variant}"), tmp_path / "a")
    assert summary["step"] == 2 and summary["finished"] and Path(summary["policy_dir"]).is_dir()
    got = losses(tmp_path / "a")
    assert len(got) == 2 and all(x > 0 for x in got)
    opsd.train(opsd_config(f"algorithm.variant={variant}"), tmp_path / "b")
    assert got == losses(tmp_path / "b")  # bit for bit
    assert got == pytest.approx(PINNED[variant], rel=1e-4)
    meta = json.loads((Path(summary["policy_dir"]) / "pluralgym_policy.json").read_text())
    assert meta["head_names"] == (["direct", "interactive"] if variant == "mah" else ["shared"])
    for name in ("eval.json", "eval.md", "eval.png", "summary.json", "config.yaml"):
        assert (tmp_path / "a" / name).is_file(), name
    assert list((tmp_path / "a" / "tb").glob("events.*"))
    assert not (tmp_path / "a" / CHECKPOINT).exists()  # deleted once policy/ is saved (keep_checkpoint=false)


def test_the_stricter_student_changes_losses_only_where_its_replies_change(tmp_path, opsd_config):
    def run(name, *overrides):  # the paper's privileged block, which carries the student's reply
        opsd.train(opsd_config("algorithm.eval.enabled=false", "env.teacher_feedback=true", *overrides),
                   tmp_path / name)
        rows = [json.loads(line) for line in (tmp_path / name / "history.jsonl").read_text().splitlines()]
        return [row["loss/total"] for row in rows]

    # Six-token turns of the tiny model are too short to be judged degenerate: the same replies, the same
    # losses as the legacy student.
    assert run("new") == run("legacy", "student.quality_check=false")
    # Longer turns of the tiny model are gibberish: the stricter student reacts to them, so the teacher's
    # privileged prompt, and with it the loss, changes.
    assert run("new_long", "algorithm.max_new_tokens=24") != run("legacy_long", "algorithm.max_new_tokens=24",
                                                                  "student.quality_check=false")


def test_the_feedback_contrastive_teacher_acts_only_where_the_teacher_sees_feedback(tmp_path, opsd_config):
    def run(name, *overrides):
        opsd.train(opsd_config("algorithm.eval.enabled=false", "algorithm.contrast=null", *overrides), tmp_path / name)
        return losses(tmp_path / name)

    plain = run("plain")
    assert plain == pytest.approx(PINNED_PLAIN["mah"], rel=1e-4)
    # without feedback in the privileged prompt, both prompts agree: the contrast changes nothing
    assert run("no_feedback", "algorithm.feedback_contrast=2") == pytest.approx(plain, rel=1e-4)
    # with the student's reply in the prompt, the contrast against the prompt without it is a new teacher
    seen = run("feedback", "env.teacher_feedback=true")
    contrasted = run("contrasted", "env.teacher_feedback=true", "algorithm.feedback_contrast=2")
    assert seen != pytest.approx(plain, rel=1e-3) and contrasted != pytest.approx(seen, rel=1e-3)
    assert run("zero", "env.teacher_feedback=true", "algorithm.feedback_contrast=0") == pytest.approx(seen, rel=1e-4)


def test_the_feedback_advantage_distils_without_the_feedback_and_judges_with_it(tmp_path, opsd_config):
    def run(name, *overrides):
        opsd.train(opsd_config("algorithm.eval.enabled=false", "algorithm.contrast=null",
                               "algorithm.episodes_per_persona=3", *overrides), tmp_path / name)  # some rows match
        return [json.loads(line) for line in (tmp_path / name / "history.jsonl").read_text().splitlines()]

    plain = [row["loss/total"] for row in run("plain")]
    # weight 0 with the feedback shown is ordinary OPSD from the feedback (the paper's teacher)
    zero = run("zero", "env.teacher_feedback=true", "algorithm.feedback_advantage=0")
    assert "feedback/shift_rewarded" not in zero[0] and [r["loss/total"] for r in zero] != pytest.approx(plain)
    # a tiny weight: the distillation term is the feedback-free teacher's, the advantage adds almost nothing
    tiny = run("tiny", "env.teacher_feedback=true", "algorithm.feedback_advantage=1e-9")
    assert [r["loss/total"] for r in tiny][:1] == pytest.approx(plain[:1], rel=1e-4)
    shifts = [r[key] for r in tiny for key in ("feedback/shift_rewarded", "feedback/shift_unrewarded")]
    assert any(x is not None for x in shifts) and all(x is None or math.isfinite(x) for x in shifts)  # NaN: no row
    strong = run("strong", "env.teacher_feedback=true", "algorithm.feedback_advantage=1")
    assert [r["loss/total"] for r in strong] != pytest.approx(plain, rel=1e-3)


def test_the_feedback_advantage_refuses_a_teacher_that_cannot_see_the_feedback(tmp_path, opsd_config):
    with pytest.raises(ConfigError, match="env.teacher_feedback=true"):
        opsd.train(opsd_config("algorithm.eval.enabled=false", "algorithm.feedback_advantage=1"), tmp_path / "run")


def test_the_learning_curve_is_logged_and_never_changes_training(tmp_path, opsd_config):
    summary = opsd.train(opsd_config("algorithm.eval.every=1", "algorithm.eval.curve_contexts=1"), tmp_path)
    assert losses(tmp_path) == pytest.approx(PINNED["mah"], rel=1e-4)  # same as with the curve off
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    for row in rows:
        assert {"curve/questions_per_turn/head_direct", "curve/satisfaction/head_interactive/direct",
                "curve/style/head_direct/direct_judge"} <= set(row)
    assert (tmp_path / "curve.png").is_file() and summary["finished"]


@pytest.mark.parametrize("variant", ["mah", "mt"])
def test_the_default_contrast_changes_the_step_and_zero_weights_are_the_plain_teacher(variant, tmp_path,
                                                                                       opsd_config):
    def run(name, contrast, *extra):
        opsd.train(opsd_config(f"algorithm.variant={variant}", "algorithm.eval.enabled=false",
                               f"algorithm.contrast={contrast}", *extra), tmp_path / name)
        return losses(tmp_path / name)

    plain = run("plain", "null")
    assert plain == pytest.approx(PINNED_PLAIN[variant], rel=1e-4)
    assert run("zeros", "[0,0]") == pytest.approx(plain, rel=1e-4)
    # the default, [0,2], is pinned above: a different teacher from the plain one
    assert all(0 < x < 10 for x in PINNED[variant]) and PINNED[variant] != pytest.approx(plain, rel=1e-3)
    # the plausibility constraint leaves unlikely tokens uncontrasted: a third, different teacher
    constrained = run("plausible", "[0,2]", "algorithm.contrast_plausibility=0.5")
    assert constrained != pytest.approx(PINNED[variant], rel=1e-3) and constrained != pytest.approx(plain, rel=1e-3)


def test_distill_step_contrasted_with_its_own_prompt_is_the_plain_teacher(tiny, batch):
    ids, mask = batch
    policy = MultiHeadPolicy(tiny.model, num_heads=2, head_names=["a", "b"], seed=0)
    teacher = load_backbone("tiny-random", seed=1).model
    comp = torch.randint(10, 200, (2, 5))

    def step_losses(weight, slots):
        distill = DistillBatch(ids, mask, ids, mask, comp, torch.ones_like(comp),
                               groups=[(0, [0], 0.5), (1, [1], 0.5)], contrast=slots,
                               contrast_weights=torch.full((2,), weight))
        frozen = torch.optim.SGD(policy.parameters(), lr=0.0)
        return distill_step(policy, teacher, frozen, distill, topk=None, micro_batch=1, max_grad_norm=1.0).group_loss

    plain = step_losses(0.0, [])
    assert step_losses(2.0, [(ids, mask)]) == pytest.approx(plain, rel=1e-4)  # nothing sets the prompt apart
    assert step_losses(0.0, [(ids.flip(0), mask.flip(0))]) == plain  # no weight: the slots are not even scored
    contrasted = step_losses(2.0, [(ids.flip(0), mask.flip(0))])  # each row against the other row's prompt
    assert all(x >= 0 for x in contrasted) and contrasted != pytest.approx(plain, rel=1e-3)


def test_distill_step_feedback_advantage_scores_the_turns_and_only_the_given_rows(tiny, batch):
    ids, mask = batch
    policy = MultiHeadPolicy(tiny.model, num_heads=2, head_names=["a", "b"], seed=0)
    teacher = load_backbone("tiny-random", seed=1).model
    comp = torch.randint(10, 200, (2, 5))
    frozen = torch.optim.SGD(policy.parameters(), lr=0.0)

    def step(with_feedback, groups):
        distill = DistillBatch(ids, mask, ids, mask, comp, torch.ones_like(comp), groups=[(0, [0, 1], 1.0)],
                               with_feedback=with_feedback, feedback_advantage=1.0, advantage_groups=groups)
        return distill_step(policy, teacher, frozen, distill, topk=None, micro_batch=1, max_grad_norm=1.0)

    plain = step(None, None)
    assert plain.shift is None and plain.advantages is None
    same = step((ids, mask), None)  # the "feedback" prompt is the prompt itself: no shift, no advantage
    assert same.shift.tolist() == pytest.approx([0.0, 0.0], abs=1e-6) and same.group_loss == pytest.approx(
        plain.group_loss, rel=1e-5)
    swapped = step((ids.flip(0), mask.flip(0)), None)  # each turn scored under the other row's prompt too
    assert swapped.shift.abs().min() > 0 and swapped.advantages.tolist() == pytest.approx(
        (-swapped.advantages.flip(0)).tolist())  # two rows centred together: opposite advantages
    alone = step((ids.flip(0), mask.flip(0)), [[0]])  # one row in its group, the other in none: both get 0
    assert alone.advantages.tolist() == [0.0, 0.0] and alone.group_loss == pytest.approx(plain.group_loss, rel=1e-5)


PINNED_PERSONA = {  # 2 steps on env=persona: 5 heads, the critic's critique in the privileged prompt
    ("mah", "true"): [0.003382069943472743, 0.003031744551844895],
    ("mah", "false"): [0.0033860174473375085, 0.0030394435394555334],
    ("mt", "true"): [0.00332597300875932, 0.0028083360055461528],
}


@pytest.mark.parametrize(("variant", "rubric"), list(PINNED_PERSONA))
def test_persona_runs_reproduce_pinned_losses(variant, rubric, tmp_path, opsd_config):
    cfg = opsd_config("env=persona", f"algorithm.variant={variant}", f"env.rubric={rubric}",
                      "algorithm.eval.contexts=5")
    summary = opsd.train(cfg, tmp_path)
    assert losses(tmp_path) == pytest.approx(PINNED_PERSONA[(variant, rubric)], rel=1e-4)
    assert cfg.algorithm.head_lr_mult == 5.0 and cfg.algorithm.turns_per_episode == 1  # the env's own settings
    report = json.loads((tmp_path / "eval.json").read_text())["report"]
    heads = ["head_shared"] if variant == "mt" else [f"head_{f}" for f in ("professional", "sports", "arts",
                                                                             "travel", "culinary")]
    assert list(report["rows"]) == heads + (["blend"] if variant == "mah" else []) + ["base"]
    assert bool(report["aggregates"]) == (variant == "mah") and summary["finished"]
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert all("env/reward_matched" not in row for row in rows)  # every episode is its head's own facet


def test_persona_kill_and_resume_matches_an_uninterrupted_run(tmp_path, opsd_config):
    full = opsd_config("env=persona", "algorithm.steps=3", "algorithm.keep_checkpoint=true",
                       "algorithm.eval.enabled=false")
    opsd.train(full, tmp_path / "straight")
    opsd.train(opsd_config("env=persona", "algorithm.steps=3", "algorithm.stop_after=1",
                           "algorithm.eval.enabled=false"), tmp_path / "resumed")
    opsd.train(full, tmp_path / "resumed", resume=True)
    a, b = trained_parameters(tmp_path / "straight"), trained_parameters(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")


def test_kill_after_two_steps_and_resume_matches_an_uninterrupted_run(tmp_path, opsd_config):
    full = opsd_config("algorithm.steps=4", "algorithm.keep_checkpoint=true")
    opsd.train(full, tmp_path / "straight")
    interrupted = opsd.train(opsd_config("algorithm.steps=4", "algorithm.stop_after=2"), tmp_path / "resumed")
    assert interrupted["step"] == 2 and "policy_dir" not in interrupted
    resumed = opsd.train(full, tmp_path / "resumed", resume=True)
    assert resumed["step"] == 4
    a, b = trained_parameters(tmp_path / "straight"), trained_parameters(tmp_path / "resumed")
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")


def test_one_step_moves_heads_and_last_layers_only_and_never_the_teacher(tmp_path, opsd_config):
    trainer = opsd.OPSDTrainer(opsd_config("algorithm.trainable=last_layers", "algorithm.last_n_layers=1",
                                           "algorithm.warmup_steps=0"), tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    teacher_before = {n: p.detach().clone() for n, p in trainer.teacher.named_parameters()}
    metrics = trainer.train_step()
    assert metrics["loss/total"] > 0 and {"loss/direct", "loss/interactive"} <= set(metrics)
    changed = {n for n, p in trainer.policy.named_parameters() if not torch.equal(p, before[n])}
    assert any("lm_head.weights.0" in n for n in changed) and any("lm_head.weights.1" in n for n in changed)
    assert any("layers.1." in n for n in changed)
    assert not any("layers.0." in n or "embed_tokens" in n for n in changed)
    assert all(torch.equal(p, teacher_before[n]) for n, p in trainer.teacher.named_parameters())
    trainer.close()


def test_lora_variant_trains_adapters_and_heads_with_adapter_disabled_teacher(tmp_path, opsd_config):
    summary = opsd.train(opsd_config("algorithm.trainable=lora", "algorithm.lora.r=4",
                                     "algorithm.keep_checkpoint=true"), tmp_path)
    assert summary["step"] == 2
    state = trained_parameters(tmp_path)
    assert any("lora_A" in k for k in state) and any("lm_head.weights" in k for k in state)
    assert not any("embed_tokens" in k for k in state)


# ---- bad settings: rejected before anything is loaded or rolled out -----------------------------

BAD_AT_COMPOSE = ["algorithm.lr=abc", "algorithm.steps=1.5", "algorithm.learning_rate=1", "student.nosie=0.2",
                  "algorithm.eval.contxts=1"]
BAD_AT_START = ["algorithm.topk=0", "algorithm.topk=-5", "algorithm.lr=-1", "algorithm.max_grad_norm=-1",
                "algorithm.save_every=0", "algorithm.save_every=-1", "algorithm.variant=both",
                "algorithm.trainable=everything", "algorithm.eval.contexts=0", "algorithm.turns_per_episode=7",
                "algorithm.alphas=[1,2,3]", "algorithm.contrast=[1,2,3]", "algorithm.contrast=[-1,0]",
                "algorithm.contrast_plausibility=1", "algorithm.contrast_plausibility=-0.5", "algorithm.feedback_advantage=-1",
                "ray.max_staleness=2", "agent.dtype=int8", "student.noise=2", "device=tpu"]


def test_an_envs_contrast_that_does_not_fit_other_personas_says_where_it_comes_from(opsd_config, tmp_path):
    three = ("env.personas=[{name:direct,label:DIRECT,description:x},{name:interactive,label:INTERACTIVE,"
             "description:y},{name:socratic,label:SOCRATIC,description:z}]")
    with pytest.raises(ConfigError, match=r"one weight per persona \(3: direct, interactive, socratic\)") as info:
        opsd.train(opsd_config(three), tmp_path / "run")
    assert "configs/env_opsd/<env>.yaml" in str(info.value) and "algorithm.contrast=[0,0,0]" in str(info.value)
    assert not (tmp_path / "run" / "history.jsonl").exists()


@pytest.mark.parametrize("override", BAD_AT_COMPOSE)
def test_a_mistyped_key_or_value_fails_when_the_config_is_composed(override, opsd_config):
    with pytest.raises(ConfigCompositionException) as info:
        opsd_config(override)
    assert override.split("=")[0].split(".")[-1] in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize("override", BAD_AT_START)
def test_a_bad_setting_stops_the_run_before_any_rollout(override, opsd_config, tmp_path, monkeypatch):
    def no_rollouts(*args, **kwargs):
        raise AssertionError("a rollout ran despite a bad setting")

    monkeypatch.setattr(RolloutWorker, "collect", no_rollouts)
    key, value = override.split("=", 1)
    with pytest.raises(Exception) as info:
        opsd.train(opsd_config(override), tmp_path / "run")
    assert not isinstance(info.value, AssertionError)
    assert key.split(".")[-1] in str(info.value) and value.strip("[]").split(",")[0] in str(info.value)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_unknown_top_level_keys_are_refused_with_a_hint_for_chat():
    from configs import check_top_level

    own = ("seed", "device", "resume", "evaluate", "overwrite", "env", "agent", "algorithm", "ray")
    check_top_level(compose_config("opsd"), own)
    with pytest.raises(ConfigError, match="chat@student.client=openai"):
        check_top_level(compose_config("opsd", "+chat=openai"), own)
    with pytest.raises(ConfigError, match="learning_rate"):
        check_top_level(compose_config("opsd", "+learning_rate=1"), own)


def test_compare_puts_persona_runs_side_by_side(tmp_path, opsd_config):
    from algorithms.compare import compare

    for name, overrides in {"rubric": [], "mt": ["algorithm.variant=mt"]}.items():
        opsd.train(opsd_config("env=persona", "algorithm.steps=1", "algorithm.eval.contexts=5", *overrides),
                   tmp_path / name)
    table = compare([tmp_path / "rubric", tmp_path / "mt"], ["rubric", "MT-OPSD"])
    assert "| Run | Q_own | Delta_base | Delta_diag |" in table and "| MT-OPSD |" in table
    assert "Own-facet Q of each head" in table


def load_benchmark(name: str):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_teacher_contrast_benchmark_samples_the_contrastive_teacher(tiny, tmp_path):
    script = load_benchmark("teacher_contrast")
    prompts = [[{"role": "user", "content": "Tell me about tides."}], [{"role": "user", "content": "Hi"}]]

    def sample(weight, others):
        return script.sample_teacher(tiny.model, tiny.tokenizer, prompts, others, weight, new_tokens=5,
                                     generator=torch.Generator().manual_seed(0))

    plain = sample(0.0, [])
    assert sample(2.0, [prompts]) == plain  # contrasted with its own prompt: the plain teacher's draws
    assert sample(50.0, [prompts[::-1]]) != plain  # the random tiny model barely tells the prompts apart
    result = script.main(["agent=tiny", "--model", "tiny-random", "--prefixes", "2", "--new-tokens", "3",
                          "--weights", "0", "1", "--out", str(tmp_path / "contrast.json")])
    assert [(r["contrast"], r["persona"]) for r in result["rows"]] == [
        (0.0, "direct"), (0.0, "interactive"), (1.0, "direct"), (1.0, "interactive")]
    assert all(0 <= r["ask_share"] <= 1 for r in result["rows"])
    assert json.loads((tmp_path / "contrast.json").read_text())["rows"] == result["rows"]
    with pytest.raises(SystemExit):
        script.main(["--weights", "-1"])
