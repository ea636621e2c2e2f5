"""Student simulators: the ask/explain classifier, the scripted student, the chat-model student."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from envs.judges import HeuristicSatisfactionJudge, JudgeDialogue
from envs.students import (
    REACTIONS,
    STUDENT_TYPES,
    ChatModelStudent,
    ScriptedStudent,
    StudentContext,
    StudentSimulator,
    analyze_teacher_turn,
    classify_teacher_turn,
    student_system_prompt,
)
from envs.tutoring import TutoringBatch, TutoringEnv

TURNS = [json.loads(line) for line in (Path(__file__).parent / "data" / "teacher_turns.jsonl").read_text().splitlines()]
NAMES_PREFERENCE = re.compile(
    r"\b(direct|interactive|frustrated|rude|anxious)\b|learning style|prefer|teaching style", re.IGNORECASE
)


def _ctx(text, student_type="direct", reaction="rude", seed=0, topic="Photosynthesis"):
    return StudentContext(topic, student_type, reaction, [{"role": "teacher", "content": text}], np.random.default_rng(seed))


# --- classifier ------------------------------------------------------------------------------


def test_labelled_set_is_large_varied_and_balanced():
    assert len(TURNS) >= 60
    labels = [t["label"] for t in TURNS]
    assert set(labels) == {"ask", "explain"}
    assert 0.4 <= labels.count("ask") / len(labels) <= 0.6
    assert len({t["topic"] for t in TURNS}) >= 40


def test_classifier_accuracy_on_labelled_turns():
    wrong = [t for t in TURNS if classify_teacher_turn(t["text"]) != t["label"]]
    accuracy = 1 - len(wrong) / len(TURNS)
    assert accuracy >= 0.95, [(t["label"], t["kind"], t["text"][:60]) for t in wrong]
    heldout = [t for t in TURNS if t["split"] == "heldout"]  # written after the rules were fixed
    assert sum(classify_teacher_turn(t["text"]) == t["label"] for t in heldout) / len(heldout) >= 0.9


@pytest.mark.parametrize(
    "text, kind",
    [
        ("Mitochondria make ATP from glucose and oxygen, which powers the cell. Got it?", "explain"),
        ("Why is the sky blue? Sunlight scatters off air molecules, and blue scatters the most.", "explain"),
        ("Good. So what do you think happens to the light that isn't scattered?", "ask"),
        ("Try explaining the water cycle to me as if I were five.", "ask"),
        ("Guess which planet has the longest day.", "ask"),
        ("The treaty ended the war in 1648, and it set up the idea of sovereign states, right?", "explain"),
        ("", "explain"),
    ],
)
def test_classifier_tricky_cases(text, kind):
    assert classify_teacher_turn(text) == kind


def test_bare_acknowledgements_are_flagged():
    assert analyze_teacher_turn("Great job!").is_bare
    assert analyze_teacher_turn("Okay, nice.").is_bare
    assert not analyze_teacher_turn("Why?").is_bare
    assert not analyze_teacher_turn("Atoms are made of protons, neutrons and electrons.").is_bare


# --- scripted student ------------------------------------------------------------------------


def test_scripted_student_follows_the_protocol_and_is_deterministic():
    student = ScriptedStudent()
    assert isinstance(student, StudentSimulator)
    ctxs = [_ctx(t["text"], st, r, seed=i) for i, (t, st, r) in enumerate(zip(TURNS, STUDENT_TYPES * 60, REACTIONS * 40))]
    again = [_ctx(c.messages[0]["content"], c.student_type, c.reaction, seed=i) for i, c in enumerate(ctxs)]
    assert student.reply_batch(ctxs) == student.reply_batch(again)
    assert student.reply(_ctx("What is DNA made of?", seed=3)) == student.reply(_ctx("What is DNA made of?", seed=3))
    with pytest.raises(ValueError):
        student.reply(_ctx("Hi", student_type="visual"))
    with pytest.raises(ValueError):
        ScriptedStudent(noise=2.0)


def test_scripted_replies_vary_and_never_name_the_preference():
    student = ScriptedStudent()
    replies = []
    for i, turn in enumerate(TURNS):
        for student_type in STUDENT_TYPES:
            for reaction in REACTIONS:
                replies.append(student.reply(_ctx(turn["text"], student_type, reaction, seed=i, topic=turn["topic"])))
    assert len(set(replies)) > 200
    for reply in replies:
        assert reply.strip() and not NAMES_PREFERENCE.search(reply), reply


def test_scripted_student_engages_on_fit_and_goes_flat_otherwise():
    student = ScriptedStudent(noise=0.0)
    ask = "Why do you think leaves change colour in autumn?"
    explain = "Leaves change colour because chlorophyll breaks down in autumn, revealing yellow pigments underneath."
    for reaction in REACTIONS:
        for seed in range(10):
            engaged = [student.reply(_ctx(explain, "direct", reaction, seed)), student.reply(_ctx(ask, "interactive", reaction, seed))]
            flat = [student.reply(_ctx(ask, "direct", reaction, seed)), student.reply(_ctx(explain, "interactive", reaction, seed))]
            assert min(map(len, engaged)) > 40
            assert np.mean([len(r) for r in engaged]) > 1.5 * np.mean([len(r) for r in flat])


def test_matched_turns_satisfy_more_than_mismatched_turns():
    """200 seeded dialogues, mixed ask/explain turns, scored by the heuristic satisfaction judge."""
    env = TutoringEnv(student=ScriptedStudent(), satisfaction_judge=HeuristicSatisfactionJudge())
    scores = {(t, m): [] for t in STUDENT_TYPES for m in (True, False)}
    for seed in range(200):
        rng = np.random.default_rng(10_000 + seed)
        _, info = env.reset(seed=seed)
        student_type = info["label"]["student_type"]
        for _ in range(3):
            turn = TURNS[int(rng.integers(len(TURNS)))]
            _, reward, _, _, _ = env.step(turn["text"])
            matched = (turn["label"] == "explain") == (student_type == "direct")
            scores[(student_type, matched)].append(reward)
    means = {k: float(np.mean(v)) for k, v in scores.items()}
    assert all(len(v) >= 50 for v in scores.values())
    for student_type in STUDENT_TYPES:
        assert means[(student_type, True)] - means[(student_type, False)] >= 1.0, means
        assert means[(student_type, True)] > 0.5 > -0.5 > means[(student_type, False)], means


def test_first_reaction_betrays_the_type():
    judge = HeuristicSatisfactionJudge()
    env = TutoringEnv()
    agree = 0
    for seed in range(100):
        obs, info = env.reset(seed=seed)
        label = judge.judge_batch([JudgeDialogue("t", obs[1:])])[0].labels[0]
        fits = (classify_teacher_turn(obs[1]["content"]) == "explain") == (info["label"]["student_type"] == "direct")
        agree += (label == "good") == fits
    assert agree >= 80


# --- chat-model student ----------------------------------------------------------------------


class FakeChatClient:
    """Stands in for envs.chat.ChatClient: records conversations, returns scripted replies."""

    def __init__(self, replies=None):
        self.replies = list(replies or [])
        self.calls = []

    def chat_batch(self, conversations, *, max_tokens=None, temperature=None):
        self.calls.append([list(c) for c in conversations])
        out = []
        for k, _ in enumerate(conversations):
            out.append(self.replies.pop(0) if self.replies else f"Student: reply {len(self.calls)}.{k}")
        return out


def test_system_prompt_carries_topic_preference_and_reaction():
    for student_type in STUDENT_TYPES:
        for reaction in REACTIONS:
            prompt = student_system_prompt("The Cold War", student_type, reaction)
            assert "The Cold War" in prompt and reaction in prompt
    assert student_system_prompt("X", "direct", "rude") != student_system_prompt("X", "interactive", "rude")
    assert "asks you" in student_system_prompt("X", "interactive", "rude")
    with pytest.raises(ValueError):
        student_system_prompt("X", "visual", "rude")


def test_chat_model_student_batches_and_maps_roles():
    client = FakeChatClient(['"Oh, cool!"', "  ", "Student: hmm, maybe?"])
    student = ChatModelStudent(client=client, max_tokens=50)
    ctxs = [
        StudentContext("DNA", "direct", "anxious", [{"role": "teacher", "content": "DNA is a double helix."}]),
        StudentContext(
            "Zeus",
            "interactive",
            "rude",
            [
                {"role": "system", "content": "Tutoring session. Topic: Zeus."},
                {"role": "teacher", "content": "Who was Zeus?"},
                {"role": "student", "content": "A god?"},
                {"role": "teacher", "content": "Why lightning, do you think?"},
            ],
        ),
        StudentContext("Irony", "direct", "frustrated", [{"role": "teacher", "content": "Irony is..."}]),
    ]
    assert student.reply_batch(ctxs) == ["Oh, cool!", "...", "hmm, maybe?"]
    assert len(client.calls) == 1 and len(client.calls[0]) == 3
    conv = client.calls[0][1]
    assert conv[0]["role"] == "system" and "Zeus" in conv[0]["content"] and "rude" in conv[0]["content"]
    assert [m["role"] for m in conv[1:]] == ["user", "assistant", "user"]
    assert conv[-1]["content"] == "Why lightning, do you think?"
    assert "DNA" in client.calls[0][0][0]["content"]


def test_chat_model_student_in_env_never_leaks_its_prompt():
    client = FakeChatClient()
    env = TutoringEnv(student=ChatModelStudent(client=client))
    secret_bits = ["Play the part of a student", "Never say out loud", "You take things in best"]
    for seed in range(5):
        obs, info = env.reset(seed=seed)
        for _ in range(3):
            obs, _, _, _, info = env.step("What do you think happens next?")
        text = json.dumps(obs)
        assert not any(bit in text for bit in secret_bits)
        assert not NAMES_PREFERENCE.search(text)
        assert info["feedback"].startswith("reply")
        assert env.topic in client.calls[-1][0][0]["content"]


def test_chat_model_student_answers_a_whole_batch_in_one_call():
    client = FakeChatClient()
    batch = TutoringBatch(4, student=ChatModelStudent(client=client))
    batch.reset(seed=0)
    batch.step(["Tell me what you know."] * 4)
    assert [len(call) for call in client.calls] == [4, 4]
    topics = [env.topic for env in batch.envs]
    assert all(topic in conv[0]["content"] for topic, conv in zip(topics, client.calls[-1]))
