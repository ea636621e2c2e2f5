"""Student simulators: the ask/explain classifier, the scripted student, the chat-model student."""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from envs.judges import HeuristicSatisfactionJudge, JudgeDialogue, satisfaction_label
from envs.students import (
    REACTIONS,
    STUDENT_TYPES,
    ChatModelStudent,
    ScriptedStudent,
    StudentContext,
    StudentSimulator,
    scripted,
    student_system_prompt,
)
from envs.turns import analyze_teacher_turn, assess_turn, classify_teacher_turn
from envs.tutoring import TutoringBatch, TutoringEnv

TURNS = [json.loads(line) for line in (Path(__file__).parent / "data" / "teacher_turns.jsonl").read_text().splitlines()]
QUALITY = [json.loads(line) for line in (Path(__file__).parent / "data" / "teacher_turn_quality.jsonl").read_text().splitlines()]
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


@pytest.mark.parametrize("quality_check", [False, True])
def test_matched_turns_satisfy_more_than_mismatched_turns(quality_check):
    """200 seeded dialogues, mixed ask/explain turns, scored by the heuristic satisfaction judge.

    The turns come from any topic, whatever the session's topic: with the quality check the direct
    student finds some long explanations about another subject off the topic (matched mean 0.62
    instead of 0.90), which still leaves the matched/mismatched gap wide.
    """
    env = TutoringEnv(student=ScriptedStudent(quality_check=quality_check), satisfaction_judge=HeuristicSatisfactionJudge())
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


def _on_topic_rewards(quality_check):
    """200 seeded dialogues whose three teacher turns are all about the session's topic."""
    by_topic = defaultdict(list)
    for turn in TURNS:
        by_topic[turn["topic"]].append(turn)
    topics = sorted(by_topic)
    env = TutoringEnv(student=ScriptedStudent(quality_check=quality_check), satisfaction_judge=HeuristicSatisfactionJudge())
    scores = {(t, m): [] for t in STUDENT_TYPES for m in (True, False)}
    for seed in range(200):
        rng = np.random.default_rng(20_000 + seed)
        topic = topics[int(rng.integers(len(topics)))]
        _, info = env.reset(seed=seed, options={"topic": topic})
        for i in rng.permutation(len(by_topic[topic]))[:3]:  # no turn twice: saying a turn again is repetition
            turn = by_topic[topic][int(i)]
            _, reward, _, _, _ = env.step(turn["text"])
            matched = (turn["label"] == "explain") == (info["label"]["student_type"] == "direct")
            scores[(info["label"]["student_type"], matched)].append(reward)
    return {k: float(np.mean(v)) for k, v in scores.items()}


def test_on_topic_turns_get_the_same_figures_with_and_without_the_quality_check():
    """Sound, on-topic teaching is rewarded as before: the check only bites on degenerate turns.

    Measured (mean reward, matched / mismatched), the same with and without the check: direct
    0.86 / -0.93, interactive 0.87 / -0.90 (each dialogue's three turns are distinct: saying the
    previous turn again is repetition).
    """
    new, old = _on_topic_rewards(True), _on_topic_rewards(False)
    for student_type in STUDENT_TYPES:
        assert new[(student_type, True)] >= 0.85 and new[(student_type, False)] <= -0.8, new
        assert new[(student_type, True)] >= old[(student_type, True)] - 0.03, (new, old)


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


# --- scripted student: degenerate turns -------------------------------------------------------

LEGACY_DIGESTS = {  # sha256 of the replies below, recorded from the student before the quality check existed
    0.1: "4a3d69825385349a550167ac2249a34bfa4d343cd4e3f500b0bfba4364b63145",
    0.0: "b475ffbedda32bf4caae2fbb272bf8ebb22bb9334ac7d37d6135177871fee9ae",
}
LEGACY_SAMPLES = {  # a few of them in full (noise 0.1), so a failure shows what changed
    0: "Ahh, that makes so much sense. I always wondered about Photosynthesis and now it clicks.",
    7: "I don't know, you tell me.",
    100: "Okay wait, I think I've got something. How fast it accelerates? I'd say it depends on what changes first, "
    "and then everything else follows. Oh, and maybe that's why people still care about Newton's Second Law of Motion!",
    500: "I... Maybe? Sorry, my mind just went blank.",
    725: "Right, okay. I'm kind of lost but that's fine.",
}


def _labelled_replies(student):
    replies = []
    for i, turn in enumerate(TURNS):
        for j, student_type in enumerate(STUDENT_TYPES):
            for k, reaction in enumerate(REACTIONS):
                rng = np.random.default_rng(1000 * i + 10 * j + k)
                replies.append(student.reply(StudentContext(turn["topic"], student_type, reaction, [{"role": "teacher", "content": turn["text"]}], rng)))
    return replies


@pytest.mark.parametrize("noise", [0.1, 0.0])
def test_legacy_mode_gives_the_earlier_replies_exactly(noise):
    replies = _labelled_replies(ScriptedStudent(noise=noise, quality_check=False))
    assert len(replies) == 726
    if noise == 0.1:
        assert {i: replies[i] for i in LEGACY_SAMPLES} == LEGACY_SAMPLES
    assert hashlib.sha256("\n".join(replies).encode()).hexdigest() == LEGACY_DIGESTS[noise]


def _quality_ctx(row, student_type, reaction, rng):
    messages = [dict(m) for m in row.get("context", [])] + [{"role": "teacher", "content": row["text"]}]
    return StudentContext(row["topic"], student_type, reaction, messages, rng)


def _reaction_rates(student, seeds=3):
    """Share of degenerate turns with a non-positive reaction, of matched coherent turns with a good one."""
    degenerate, matched = [], []
    for i, row in enumerate(QUALITY):
        for seed in range(seeds):
            for j, student_type in enumerate(STUDENT_TYPES):
                for k, reaction in enumerate(REACTIONS):
                    label = satisfaction_label(student.reply(_quality_ctx(row, student_type, reaction, np.random.default_rng([i, seed, j, k]))))[0]
                    if row["label"] == "degenerate":
                        degenerate.append(label != "good")
                    elif (row["style"], student_type) in (("explain", "direct"), ("ask", "interactive")):
                        matched.append(label == "good")
    return float(np.mean(degenerate)), float(np.mean(matched))


def test_labelled_turns_degenerate_ones_disappoint_both_students_and_sound_matched_ones_please():
    """Floors are the measured rates, 0.910 and 0.973 (noise 0; with the default noise 0.1: 0.921 and 0.890).

    The degenerate turns that still please the matched student are the detector's misses (off-topic turns
    without a marker); every turn it flags gets a "bad" reaction. The legacy student: 0.501 and 0.986.
    """
    degenerate, matched = _reaction_rates(ScriptedStudent(noise=0.0))
    assert degenerate >= 0.90 and matched >= 0.97, (degenerate, matched)
    legacy_degenerate, legacy_matched = _reaction_rates(ScriptedStudent(noise=0.0, quality_check=False))
    assert legacy_degenerate <= 0.55 and legacy_matched >= 0.98, (legacy_degenerate, legacy_matched)


def test_every_flagged_turn_gets_a_bad_reaction_whatever_the_student_and_the_noise():
    student = ScriptedStudent(noise=0.5)
    for i, row in enumerate(QUALITY):
        if not assess_turn(row["text"], row["topic"], row.get("context", [])).degenerate:
            continue
        for seed in range(4):
            for student_type in STUDENT_TYPES:
                for reaction in REACTIONS:
                    reply = student.reply(_quality_ctx(row, student_type, reaction, np.random.default_rng([i, seed])))
                    assert satisfaction_label(reply)[0] == "bad", (row["text"][:50], reply)


STYLE_WORDS = re.compile(
    r"\b(?:explain\w*|question\w*|quiz\w*|lectur\w*|interactiv\w*|direct\w*|style\w*|teach\w*|learn\w*|prefer\w*|"
    r"ask\w*|told|tell\w*|guess\w*|examples?|format\w*|method\w*|hands[- ]on|step[- ]by[- ]step|show me|"
    r"frustrat\w*|rude\w*|anxious\w*|way to)\b",
    re.IGNORECASE,
)


def test_reactions_to_degenerate_turns_never_name_a_way_of_being_taught():
    templates = [t for by_reaction in scripted._DEGENERATE.values() for pool in by_reaction.values() for t in pool]
    assert len(templates) == 60 and len(set(templates)) == 60
    assert set(scripted._DEGENERATE) == {"repetition", "cut_off", "off_topic", "filler", "meta_talk"}
    for template in templates:
        assert not STYLE_WORDS.search(template) and not NAMES_PREFERENCE.search(template), template
        assert set(re.findall(r"{(\w+)}", template)) <= {"topic"}, template  # nothing of the teacher's turn
    student = ScriptedStudent()
    seen = set()
    for i, row in enumerate(QUALITY):
        if not assess_turn(row["text"], row["topic"], row.get("context", [])).degenerate:
            continue
        for seed in range(20):
            for student_type in STUDENT_TYPES:
                reaction = REACTIONS[(i + seed) % 3]
                reply = student.reply(_quality_ctx(row, student_type, reaction, np.random.default_rng([i, seed])))
                seen.add(reply)
                assert not STYLE_WORDS.search(reply) and not NAMES_PREFERENCE.search(reply), reply
    assert len(seen) > 100


def _grams(text, topic, n=4):
    topic_words = set(re.findall(r"[a-z0-9']+", topic.lower().replace("’", "'")))
    words = [w for w in re.findall(r"[a-z0-9']+", text.lower().replace("’", "'")) if w not in topic_words]
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_no_phrase_of_a_degenerate_turn_is_repeated_back():
    student = ScriptedStudent()
    for i, row in enumerate(QUALITY):
        if not assess_turn(row["text"], row["topic"], row.get("context", [])).degenerate:
            continue
        turn = _grams(row["text"], row["topic"])
        for seed in range(10):
            for student_type in STUDENT_TYPES:
                for reaction in REACTIONS:
                    reply = student.reply(_quality_ctx(row, student_type, reaction, np.random.default_rng([i, seed])))
                    assert not turn & _grams(reply, row["topic"]), (row["text"][:60], reply)


def test_the_issue_example_is_no_longer_parroted():
    """The looped Newton turn from the training run: the old student echoed it as understanding."""
    row = next(r for r in QUALITY if r["source"] == "issue" and r["kind"] == "repetition")
    old, new = ScriptedStudent(quality_check=False), ScriptedStudent()
    old_replies = [old.reply(_quality_ctx(row, "direct", "rude", np.random.default_rng(s))) for s in range(40)]
    new_replies = [new.reply(_quality_ctx(row, "direct", "rude", np.random.default_rng(s))) for s in range(40)]
    assert any("back-and-forth presentation" in r for r in old_replies)
    assert sum(satisfaction_label(r)[0] == "good" for r in old_replies) >= 20
    assert not any("back-and-forth" in r or "final result" in r for r in new_replies)
    assert all(satisfaction_label(r)[0] == "bad" for r in new_replies)


def test_coherent_turns_echo_only_phrases_with_content():
    assert scripted._echo_ok("chloroplasts capture sunlight", _ctx("x"))
    assert not scripted._echo_ok("that was it", _ctx("x"))  # no content word
    assert not scripted._echo_ok("tiny tiny particles tiny tiny particles tiny tiny", _ctx("x", topic="Atoms"))  # repeats itself
    assert not scripted._echo_ok(None, _ctx("x"))
    # a sound turn whose first candidate phrase is empty talk: the student falls back on the topic
    turn = "Photosynthesis is how it all goes, basically. Plants make sugar from light."
    assert not assess_turn(turn, "Photosynthesis").degenerate
    assert scripted._echoes(_ctx(turn), checked=False)[0] == "how it all goes"  # what the old student echoed
    assert scripted._echoes(_ctx(turn), checked=True)[0] == "the main idea behind Photosynthesis"


def test_the_quality_check_takes_the_same_draws():
    """Two draws per reply in every branch, so later draws in a dialogue do not depend on the mode."""
    for text in ["Plants use light. Plants use light. Plants use light.", "Leaves are green because of chlorophyll.",
                 "Why do you think leaves are green?", "I'm ready to continue."]:
        states = []
        for quality_check in (True, False):
            ctx = _ctx(text, seed=5)
            ScriptedStudent(quality_check=quality_check).reply(ctx)
            states.append(ctx.rng.bit_generator.state)
        assert states[0] == states[1], text


def test_degenerate_turns_cost_reward_with_either_student_in_the_env():
    env = TutoringEnv()
    looped = "Plants use sunlight to make food. " * 4
    for seed in range(30):
        _, info = env.reset(seed=seed, options={"topic": "Photosynthesis"})
        for action in (looped, "I'm ready to continue.", "Okay, let's go on."):
            _, reward, _, _, info = env.step(action)
            assert reward == -1.0, (info["label"], info["feedback"])


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


# Turns a trained INTERACTIVE head wrote (default run before the meta-talk rule), plus the crafted ones of
# tests/envs/test_checks.py: they talk about asking and ask nothing about the lesson.
META_TALK = [
    ("What would you like to ask about Newton’s Second Law of Motion?", "Newton’s Second Law of Motion"),
    ("Was there a question about Newton’s Second Law of Motion?", "Newton’s Second Law of Motion"),
    ("Hey there, how about asking, what would you like to ask about The Palace of Versailles?",
     "The Palace of Versailles"),
    ("How about asking about Confucius and how he overcame his own errors and became a great leader?", "Confucius"),
    ("What would you like to ask me about The Hagia Sophia?", "The Hagia Sophia"),
    ("What about the question about the infinite?", "Allegory"),
]


def _first_reward(turn, topic, student_type, reaction, seed):
    env = TutoringEnv(student=ScriptedStudent(noise=0.0), student_type=student_type, reaction=reaction)
    env.reset(seed=seed, options={"topic": topic})
    return env.step(turn)[1]


def test_meta_talk_gets_no_positive_reward_from_either_student_type():
    from tests.envs.test_checks import GAMED

    for i, (turn, topic) in enumerate(META_TALK + GAMED):
        for student_type in STUDENT_TYPES:
            for reaction in REACTIONS:
                assert _first_reward(turn, topic, student_type, reaction, seed=i) <= 0, (turn, student_type)
    assert assess_turn(META_TALK[0][0], META_TALK[0][1]).reasons == ["meta_talk"]


def test_real_questions_and_explanations_keep_their_reward():
    from tests.envs.test_checks import EXPLANATIONS, LESSON_QUESTIONS

    for i, (turn, topic, n) in enumerate(LESSON_QUESTIONS):
        if n and analyze_teacher_turn(turn).kind == "ask":
            assert _first_reward(turn, topic, "interactive", REACTIONS[i % 3], seed=i) == 1.0, turn
    for i, (turn, topic) in enumerate(EXPLANATIONS):
        if analyze_teacher_turn(turn).kind == "explain":
            assert _first_reward(turn, topic, "direct", REACTIONS[i % 3], seed=i) == 1.0, turn
