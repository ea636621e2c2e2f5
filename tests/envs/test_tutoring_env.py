"""TutoringEnv: Gymnasium compliance, seeding, hidden labels, action validation, batching, configs."""

from __future__ import annotations

import json
import pickle
import re

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the ids)
from envs.judges import HeuristicSatisfactionJudge
from envs.students import ScriptedStudent
from envs.turns import classify_teacher_turn
from envs.tutoring import SEED_TURNS_ASK, SEED_TURNS_EXPLAIN, SEED_TURNS_HELDOUT, TutoringBatch, TutoringEnv

ENV_ID = "pluralgym/Tutoring-v0"
HIDDEN = re.compile(r"\b(direct|interactive|frustrated|rude|anxious)\b|learning style|prefer", re.IGNORECASE)

ACTIONS = [
    "Photosynthesis happens in the chloroplasts, where light energy is turned into sugar. Make sense?",
    "What do you think would happen to a plant left in a dark cupboard for a month?",
    "Great.",
    "Try explaining to me why the leaves of most plants are green.",
    "The Calvin cycle uses ATP and NADPH to fix carbon dioxide into sugar, and it runs in the stroma.",
    "Which part of the plant do you think takes in water, and how could we test that?",
]


def _pluralgym_ids() -> list[str]:
    return sorted(env_id for env_id in gymnasium.registry if env_id.startswith("pluralgym/"))


def _rollout(seed: int, actions=ACTIONS, **make_kwargs):
    env = gymnasium.make(ENV_ID, **make_kwargs)
    obs, info = env.reset(seed=seed)
    steps = [(obs, info)]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        steps.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            break
    return steps


# --- gymnasium compliance --------------------------------------------------------------------


def test_tutoring_is_registered():
    assert ENV_ID in _pluralgym_ids()
    assert gymnasium.spec(ENV_ID).max_episode_steps == 6


@pytest.mark.parametrize("env_id", _pluralgym_ids())
def test_check_env_passes_for_every_registered_id(env_id, capsys):
    env = gymnasium.make(env_id)
    check_env(env.unwrapped)
    env.close()


def test_spaces_accept_observations_and_reject_non_messages():
    env = TutoringEnv()
    obs, _ = env.reset(seed=0)
    assert obs in env.observation_space
    assert [m["role"] for m in obs] == ["system", "teacher", "student"]
    assert "not a list" not in env.observation_space
    assert [{"role": "teacher"}] not in env.observation_space
    assert "Hello there" in env.action_space
    assert "" not in env.action_space
    assert env.action_space.sample().strip()


# --- seeding ---------------------------------------------------------------------------------


def test_same_seed_same_opening_and_different_seeds_differ():
    env = TutoringEnv()
    first, info1 = env.reset(seed=7)
    env.reset(seed=8)
    again, info2 = env.reset(seed=7)
    assert first == again and info1 == info2
    openings = {json.dumps(TutoringEnv().reset(seed=s)[0]) for s in range(20)}
    assert len(openings) > 15


def test_full_seeded_rollout_is_identical():
    a, b = _rollout(123), _rollout(123)
    assert a == b
    assert len(a) == 1 + 6
    assert a[-1][3] is True  # truncated by the TimeLimit after six teacher turns
    assert all(step[2] is False for step in a[1:])  # never a natural end


def test_dialogue_structure_and_info():
    steps = _rollout(5)
    obs, reward, terminated, truncated, info = steps[2]
    assert [m["role"] for m in obs] == ["system"] + ["teacher", "student"] * 3
    assert obs[-2]["content"] == ACTIONS[1]
    assert info["feedback"] == obs[-1]["content"]
    assert set(info["label"]) == {"persona", "student_type", "reaction"}
    assert info["label"]["persona"] == info["label"]["student_type"]
    assert reward in (-1.0, 0.0, 1.0)
    assert info["satisfaction"] in ("good", "neutral", "bad")
    assert info["truncated_action"] is False and info["turn"] == 2
    assert steps[0][0][0]["role"] == "system" and steps[0][1]["topic"] in steps[0][0][0]["content"]


def test_hidden_label_never_appears_in_observations():
    env = TutoringEnv()
    seen = set()
    for seed in range(150):
        obs, info = env.reset(seed=seed)
        seen.add((info["label"]["student_type"], info["label"]["reaction"]))
        texts = [m["content"] for m in obs]
        for k in range(3):
            obs, _, _, _, info = env.step(ACTIONS[(seed + k) % len(ACTIONS)])
            texts += [m["content"] for m in obs]
        for text in texts:
            if text in ACTIONS:
                continue
            assert not HIDDEN.search(text), f"hidden label leaked (seed {seed}): {text!r}"
    assert len(seen) == 6  # every (type, reaction) pair gets drawn


def test_options_override_draws_and_leave_the_rest():
    env = TutoringEnv()
    _, base = env.reset(seed=3)
    obs, info = env.reset(
        seed=3, options={"topic": "Volcanoes", "student_type": "interactive", "reaction": "anxious", "seed_turn": "Hi!"}
    )
    assert info["label"] == {"persona": "interactive", "student_type": "interactive", "reaction": "anxious"}
    assert obs[1] == {"role": "teacher", "content": "Hi!"}
    assert "Volcanoes" in obs[0]["content"]
    _, info = env.reset(seed=3, options={"reaction": "rude"})
    assert info["topic"] == base["topic"] and info["label"]["student_type"] == base["label"]["student_type"]
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(seed=3, options={"style": "x"})
    with pytest.raises(ValueError, match="student_type"):
        env.reset(seed=3, options={"student_type": "visual"})


def test_fixed_type_and_topics_kwargs():
    env = TutoringEnv(student_type="direct", reaction="rude", topics=["Tides"])
    for seed in range(10):
        _, info = env.reset(seed=seed)
        assert info["label"] == {"persona": "direct", "student_type": "direct", "reaction": "rude"} and info["topic"] == "Tides"
    with pytest.raises(ValueError):
        TutoringEnv(student_type="visual")


def test_seed_turn_templates_cover_both_moves_and_never_leak():
    for template in SEED_TURNS_EXPLAIN:
        assert classify_teacher_turn(template.format(topic="Magnetism")) == "explain", template
    for template in SEED_TURNS_ASK:
        assert classify_teacher_turn(template.format(topic="Magnetism")) == "ask", template
    for template in SEED_TURNS_HELDOUT[:4]:
        assert classify_teacher_turn(template.format(topic="Magnetism")) == "explain", template
    for template in SEED_TURNS_HELDOUT[4:]:
        assert classify_teacher_turn(template.format(topic="Magnetism")) == "ask", template
    for template in SEED_TURNS_EXPLAIN + SEED_TURNS_ASK + SEED_TURNS_HELDOUT:
        assert not HIDDEN.search(template)
    assert not set(SEED_TURNS_HELDOUT) & set(SEED_TURNS_EXPLAIN + SEED_TURNS_ASK)
    env = TutoringEnv(seed_turns=SEED_TURNS_HELDOUT)
    openings = {env.reset(seed=s, options={"topic": "Tides"})[1]["seed_turn"] for s in range(40)}
    assert openings <= {t.format(topic="Tides") for t in SEED_TURNS_HELDOUT} and len(openings) > 4
    with pytest.raises(ValueError, match="topic"):
        TutoringEnv(seed_turns=["no slot here"])


def test_contexts_from_education_dialogue_files(tmp_path):
    from envs.data import load_education_dialogue, load_tutoring_topics

    records = [
        {"background_info": {"topic": "Tides"}, "conversation": [{"role": "Teacher", "text": "The Moon pulls on the oceans."}]},
        {"background_info": {"topic": "Volcanoes"}, "conversation": [{"role": "Student", "text": "hi"}]},
    ]
    path = tmp_path / "ed.json"
    path.write_text(json.dumps(records))
    contexts = load_education_dialogue(path)
    assert contexts == [{"topic": "Tides", "seed_turn": "The Moon pulls on the oceans."}]
    obs, info = TutoringEnv(contexts=contexts).reset(seed=0)
    assert obs[1]["content"] == "The Moon pulls on the oceans." and info["topic"] == "Tides"
    assert len(load_tutoring_topics()) == 78


# --- action validation -----------------------------------------------------------------------


def test_long_action_is_truncated_and_flagged():
    env = TutoringEnv(max_action_chars=100)
    env.reset(seed=0)
    obs, _, _, _, info = env.step("Atoms are small. " * 50)
    assert info["truncated_action"] is True
    assert len(obs[-2]["content"]) == 100
    assert obs in env.observation_space
    _, _, _, _, info = env.step("Short turn about atoms.")
    assert info["truncated_action"] is False


def test_step_before_reset_raises():
    with pytest.raises(RuntimeError, match="reset"):
        TutoringEnv().step("Hello")


# --- batched path ----------------------------------------------------------------------------


class CountingStudent(ScriptedStudent):
    def __init__(self):
        super().__init__()
        self.batch_sizes = []

    def reply_batch(self, dialogues):
        self.batch_sizes.append(len(dialogues))
        return super().reply_batch(dialogues)


class CountingJudge(HeuristicSatisfactionJudge):
    def __init__(self):
        self.batch_sizes = []

    def judge_batch(self, dialogues):
        self.batch_sizes.append(len(dialogues))
        return super().judge_batch(dialogues)


def test_batch_calls_the_student_and_judge_once_per_turn():
    """(That a batch plays like single envs is tests/envs/test_batches.py.)"""
    n = 5
    student, judge = CountingStudent(), CountingJudge()
    batch = TutoringBatch(n, student=student, satisfaction_judge=judge)
    batch.reset(seed=40)
    assert student.batch_sizes == [n]
    for t in range(6):
        batch.step([ACTIONS[(t + i) % len(ACTIONS)] for i in range(n)])
    assert student.batch_sizes == [n] * 7 and judge.batch_sizes == [n] * 6
    with pytest.raises(RuntimeError, match="reset"):
        batch.step(["x"] * n)


def test_dialogue_state_continues_elsewhere_exactly_as_here():
    """A state carried to another batch (as a rollout worker does) yields the same future dialogue."""
    here = TutoringBatch(3)
    here.reset(seed=7)
    here.step(ACTIONS[:3])
    states = pickle.loads(pickle.dumps(here.get_states()))  # as it crosses a process boundary
    there = TutoringBatch(3)
    there.set_states(states)
    for t in range(5):
        actions = [ACTIONS[(t + i) % len(ACTIONS)] for i in range(3)]
        ours, theirs = here.step(actions), there.step(actions)
        assert ours[0] == theirs[0] and ours[1].tolist() == theirs[1].tolist() and ours[4] == theirs[4]
    assert there.get_states() == here.get_states() and all(s["done"] for s in there.get_states())
    with pytest.raises(ValueError, match="expected 3 dialogue states"):
        there.set_states(states[:2])
    with pytest.raises(RuntimeError, match="call reset"):
        TutoringEnv().get_state()


def test_batch_validates_every_action_before_stepping_any():
    batch = TutoringBatch(3)
    obs, _ = batch.reset(seed=0, options_list=[None, {"student_type": "direct"}, None])
    with pytest.raises(ValueError, match="dialogue 1"):
        batch.step(["Fine turn.", "  ", "Another turn."])
    assert [len(o) for o in batch.step(["a b c", "d e f", "g h i"])[0]] == [len(o) + 2 for o in obs]
    with pytest.raises(ValueError, match="list of 3"):
        batch.step(["only one"])


# --- configs ---------------------------------------------------------------------------------


def test_hydra_configs_compose_and_build_the_env():
    from hydra.utils import instantiate

    from algorithms.components import build_task
    from tests.conftest import compose_config

    cfg = compose_config("opsd", "env=tutoring")
    task = build_task(cfg)
    assert task.max_turns == gymnasium.spec(ENV_ID).max_episode_steps and isinstance(task.student, ScriptedStudent)
    obs, _ = task.make_batch(2).reset(seed=0)
    assert [len(o) for o in obs] == [3, 3]
    assert instantiate(cfg.judge.style).judge_batch([], "direct") == []

    cfg = compose_config("opsd", "student=chat_model", "judge=llm")
    assert cfg.student._target_.endswith("ChatModelStudent") and cfg.student.client._target_.endswith("LocalChatClient")
    assert cfg.judge.style._target_.endswith("LLMStyleJudge")
    assert cfg.judge.satisfaction.client._target_.endswith("LocalChatClient")
    cfg = compose_config("opsd", "student=chat_model", "chat@student.client=openai")
    assert cfg.student.client._target_.endswith("OpenAIChatClient")


def test_user_student_class_selected_from_the_command_line(tmp_path, monkeypatch):
    """What a user does: a StudentSimulator in their own module, picked with a Hydra override."""
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "students.py").write_text(
        "class EchoStudent:\n"
        "    def __init__(self, prefix='You said'):\n"
        "        self.prefix = prefix\n"
        "    def reply_batch(self, dialogues):\n"
        "        return [f'{self.prefix}: {d.last_teacher_turn[:40]}' for d in dialogues]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_config("opsd", "student=custom", "student._target_=mypkg.students.EchoStudent", "+student.prefix=Echo")
    env = gymnasium.make(ENV_ID, student=instantiate(cfg.student))
    env.reset(seed=0)
    obs, _, _, _, info = env.step("Tell me what you know about tides.")
    assert info["feedback"] == obs[-1]["content"] == "Echo: Tell me what you know about tides."


def test_lone_surrogates_in_an_action_never_make_the_observation_unencodable():
    env = gymnasium.make(ENV_ID)
    env.reset(seed=0)
    obs, _, _, _, _ = env.step("Half an emoji \ud83d here, and \udc00 there.")
    assert obs[-2]["content"] == "Half an emoji ? here, and ? there."
    json.dumps(obs, ensure_ascii=False).encode("utf-8")  # would raise on a lone surrogate
