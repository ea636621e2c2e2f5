"""Style and satisfaction judges: marking, heuristic rules, LLM prompts and JSON fallbacks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from envs.judges import (
    HeuristicSatisfactionJudge,
    HeuristicStyleJudge,
    JudgeDialogue,
    LLMSatisfactionJudge,
    LLMStyleJudge,
    SatisfactionJudge,
    StyleJudge,
    TurnJudgement,
    format_dialogue,
    parse_labels,
    satisfaction_label,
)
from envs.tutoring import TutoringBatch, TutoringEnv

TURNS = [json.loads(line) for line in (Path(__file__).parent / "data" / "teacher_turns.jsonl").read_text().splitlines()]
QUALITY = [json.loads(line) for line in (Path(__file__).parent / "data" / "teacher_turn_quality.jsonl").read_text().splitlines()]


def _dialogue(*pairs, topic="Photosynthesis", marked_from=0):
    messages = [{"role": "system", "content": f"Topic: {topic}"}]
    for teacher, student in pairs:
        messages.append({"role": "teacher", "content": teacher})
        if student is not None:
            messages.append({"role": "student", "content": student})
    return JudgeDialogue(topic, messages, marked_from)


@dataclass
class Reply:  # same fields as envs.chat.JsonReply
    data: Any
    raw: str
    ok: bool
    error: str | None = None


class FakeChatClient:
    """Stands in for envs.chat.ChatClient: returns scripted raw strings, parsed and validated like the real one."""

    def __init__(self, raws):
        self.raws = list(raws)
        self.calls = []
        self.validators = []

    def chat_json_batch(self, conversations, *, default, validate=None, max_tokens=None, temperature=None):
        self.calls.append([list(c) for c in conversations])
        checks = list(validate) if isinstance(validate, (list, tuple)) else [validate] * len(conversations)
        self.validators.append(checks)
        out = []
        for check in checks:
            raw = self.raws.pop(0)
            try:
                data = json.loads(raw)
            except json.JSONDecodeError:
                out.append(Reply(dict(default), raw, False, "reply is not JSON"))
                continue
            problem = check(data) if check is not None else None
            out.append(Reply(dict(default), raw, False, problem) if problem else Reply(data, raw, True))
        return out


# --- dialogue marking ------------------------------------------------------------------------


def test_marked_turns_and_last_turn():
    d = _dialogue(("Seed turn.", "ok"), ("T1", "hmm"), ("T2", None), marked_from=1)
    assert d.marked_turns() == [3, 5]
    assert d.marked_turns(need_reply=True) == [3]
    last = JudgeDialogue.last_turn("P", d.messages[:5])
    assert last.marked_turns() == [3]
    text = format_dialogue(d, d.marked_turns())
    assert "Teacher: Seed turn." in text and "Teacher [T1]: T1" in text and "Teacher [T2]: T2" in text
    assert "Topic:" not in text


def test_turn_judgement_scores():
    j = TurnJudgement(["good", "neutral", "bad", "good"])
    assert j.scores == [1.0, 0.0, -1.0, 1.0] and j.good_rate == 0.5
    assert TurnJudgement([]).good_rate == 0.0


# --- heuristic style judge -------------------------------------------------------------------


def test_heuristic_style_judge_labels_turns_per_style():
    """The ask/explain reading alone (every turn under one topic, so the degenerate-turn rule is off)."""
    judge = HeuristicStyleJudge(quality_check=False)
    assert isinstance(judge, StyleJudge)
    dialogues = [_dialogue((t["text"], "ok")) for t in TURNS]
    direct = judge.judge_batch(dialogues, "direct")
    interactive = judge.judge_batch(dialogues, "interactive")
    agree = 0
    for t, d, i in zip(TURNS, direct, interactive):
        assert {d.labels[0], i.labels[0]} == {"good", "bad"}
        agree += d.labels[0] == ("good" if t["label"] == "explain" else "bad")
    assert agree / len(TURNS) >= 0.95
    assert judge.judge_batch(dialogues[:2], "direct_instruction")[0].labels == direct[0].labels
    with pytest.raises(ValueError, match="style"):
        judge.judge_batch(dialogues, "visual")


def test_heuristic_style_judge_with_the_quality_check_on_turns_under_their_own_topic():
    judge = HeuristicStyleJudge()
    assert isinstance(judge, StyleJudge) and judge.quality_check
    dialogues = [_dialogue((t["text"], "ok"), topic=t["topic"]) for t in TURNS]
    direct, interactive = judge.judge_batch(dialogues, "direct"), judge.judge_batch(dialogues, "interactive")
    agree, both_bad = 0, 0
    for t, d, i in zip(TURNS, direct, interactive):
        both_bad += d.labels == i.labels == ["bad"]
        agree += d.labels[0] == ("good" if t["label"] == "explain" else "bad") and i.labels[0] != d.labels[0]
    assert both_bad <= 1 and agree / len(TURNS) >= 0.95  # one sound explanation never uses a word of its topic
    # the same turns filed under an unrelated topic: the long explanations have lost the thread
    elsewhere = judge.judge_batch([_dialogue((t["text"], "ok"), topic="Photosynthesis") for t in TURNS], "direct")
    assert sum(j.labels == ["bad"] for j in elsewhere) > sum(j.labels == ["bad"] for j in direct) + 10


def test_heuristic_style_judge_calls_degenerate_turns_bad_for_both_styles():
    judge = HeuristicStyleJudge()
    flagged = 0
    for row in QUALITY:
        messages = [{"role": "system", "content": f"Topic: {row['topic']}"}] + row.get("context", [])
        messages = messages + [{"role": "teacher", "content": row["text"]}, {"role": "student", "content": "ok"}]
        dialogue = JudgeDialogue(row["topic"], messages, marked_from=len(row.get("context", [])) // 2)
        labels = [judge.judge_batch([dialogue], style)[0].labels for style in ("direct", "interactive")]
        legacy = [HeuristicStyleJudge(quality_check=False).judge_batch([dialogue], s)[0].labels for s in ("direct", "interactive")]
        if row["kind"] in ("repetition", "cut_off", "filler"):  # every one of these is caught
            flagged += 1
            assert labels == [["bad"], ["bad"]], row["text"]
            assert legacy != [["bad"], ["bad"]]  # the shape-only judge found each of them good for one style or neutral
        if row["label"] == "coherent":  # and no coherent turn of the labelled set is, bar the one documented false alarm
            assert labels != [["bad"], ["bad"]] or row["text"].startswith("Force equals mass"), row["text"]
    assert flagged == 48
    d = _dialogue(("I'm ready to continue.", "ok"), ("Plants make sugar from light in their leaves.", "ok"))
    result = judge.judge_batch([d], "interactive")[0]
    assert result.labels == ["bad", "bad"] and "1 degenerate" in result.rationale


def test_heuristic_style_judge_neutral_for_bare_turns():
    judge = HeuristicStyleJudge()
    d = _dialogue(("Great job!", "thanks"), ("Exactly, well done.", "yay"), ("Why?", "dunno"))
    assert judge.judge_batch([d], "direct")[0].labels == ["neutral", "neutral", "bad"]
    assert judge.judge_batch([d], "interactive")[0].labels == ["neutral", "neutral", "good"]


# --- heuristic satisfaction judge ------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, label",
    [
        ("Ohh, wait, that makes sense now! So the chlorophyll is what catches the light?", "good"),
        ("Hmm, let me think... I'd guess the roots, because that's where the water is. Is that close?", "good"),
        ("Oh that's so cool, I never knew plants breathe out oxygen!", "good"),
        ("ok", "bad"),
        ("idk", "bad"),
        ("Sure, I guess.", "bad"),
        ("Ugh, I don't know. Can't you just say it?", "bad"),
        ("Um... sorry, I'm kind of lost.", "bad"),
        ("Ooh this is fun, but can we do a role-play instead?", "bad"),
        ("That's interesting! Can we look at real examples?", "bad"),
        ("Okay, go on.", "neutral"),
        ("Alright, so the leaves make sugar.", "neutral"),
        # lost because the turn itself was broken
        ("You keep repeating yourself. This is going nowhere.", "bad"),
        ("Hello? That wasn't even a full sentence.", "bad"),
        ("What does that have to do with anything?", "bad"),
        ("Are we doing anything today or not?", "bad"),
        ("Um, was there more? Sorry, I lost you there.", "bad"),
        # ... but not when those words come with real understanding
        ("Oh nice, so basically the parts connect. I like how that fits together!", "good"),
    ],
)
def test_satisfaction_label_rules(reply, label):
    assert satisfaction_label(reply)[0] == label


def test_heuristic_satisfaction_judge_reads_the_very_next_reply():
    judge = HeuristicSatisfactionJudge()
    assert isinstance(judge, SatisfactionJudge)
    d = _dialogue(
        ("Seed.", "Whatever."),
        ("Plants make sugar from light.", "Ohh, I see! That's neat, so light is the fuel."),
        ("What else might they need?", "k."),
        ("Good.", None),
        marked_from=1,
    )
    result = judge.judge_batch([d])[0]
    assert result.labels == ["good", "bad"] and result.scores == [1.0, -1.0]
    assert judge.judge_batch([_dialogue(("Only a turn.", None))])[0].labels == []


# --- LLM judges ------------------------------------------------------------------------------


def test_llm_style_judge_prompt_and_parsing():
    client = FakeChatClient(
        [
            '{"critique": "Mostly explains.", "labels": ["good", "bad"]}',
            '{"critique": "x", "labels": ["Good"]}',
        ]
    )
    judge = LLMStyleJudge(client=client)
    d1 = _dialogue(("Seed.", "ok"), ("Plants make sugar.", "ok"), ("Why green?", "hmm"), marked_from=1)
    d2 = _dialogue(("Zeus ruled Olympus.", "cool"), topic="Zeus")
    results = judge.judge_batch([d1, d2], "direct")
    assert [r.labels for r in results] == [["good", "bad"], ["good"]]
    assert results[0].rationale == "Mostly explains." and not results[0].fallback
    assert len(client.calls) == 1  # one batched request
    system, user = client.calls[0][0]
    assert system["role"] == "system" and "JSON" in system["content"]
    assert "Photosynthesis" in user["content"] and "DIRECT INSTRUCTION" in user["content"]
    assert "[T1]" in user["content"] and "[T2]" in user["content"] and "[T3]" not in user["content"]
    assert "Teacher: Seed." in user["content"]  # context turn shown but not marked
    assert "Zeus" in client.calls[0][1][1]["content"]

    client = FakeChatClient(['{"labels": ["good"]}'])
    LLMStyleJudge(client=client).judge_batch([d2], "interactive")
    assert "INTERACTIVE" in client.calls[0][0][1]["content"]


def test_llm_judges_fall_back_to_neutral_and_count_it():
    client = FakeChatClient(
        [
            "Sure! Here are my labels: good, bad",  # not JSON at all
            '{"critique": "c", "labels": ["good"]}',  # too short for 2 marked turns
            '{"critique": "c", "labels": ["great", "bad"]}',  # unknown label
            '["good", "bad"]',  # JSON but not an object
            '{"critique": "fine", "labels": ["bad", "neutral"]}',
        ]
    )
    judge = LLMSatisfactionJudge(client=client)
    d = _dialogue(("A", "ok"), ("B", "ohh cool"))
    results = judge.judge_batch([d] * 5)
    for r in results[:4]:
        assert r.labels == ["neutral", "neutral"] and r.fallback and r.rationale.startswith("fallback")
    assert results[4].labels == ["bad", "neutral"] and not results[4].fallback
    assert judge.counter.calls == 5 and judge.counter.fallbacks == 4
    assert "expected 2 labels, got 1" in judge.counter.reasons
    # the label check went to the client as one validate hook per conversation
    checks = client.validators[0]
    assert len(checks) == 5 and all(callable(c) for c in checks)
    assert checks[0]({"labels": ["good", "bad"]}) is None
    assert checks[0]({"labels": ["good"]}) == "expected 2 labels, got 1"


def test_llm_satisfaction_prompt_marks_only_replied_turns():
    client = FakeChatClient(['{"critique": "", "labels": ["bad"]}'])
    judge = LLMSatisfactionJudge(client=client)
    d = _dialogue(("Cells are tiny.", "ok"), ("Next turn.", None), topic="Cells")
    assert judge.judge_batch([d])[0].labels == ["bad"]
    user = client.calls[0][0][1]["content"]
    assert "Cells" in user and "[T1]" in user and "[T2]" not in user and "different" in user
    # nothing to judge: no request at all
    assert judge.judge_batch([_dialogue(("Only a turn.", None))])[0].labels == []
    assert len(client.calls) == 1


def test_parse_labels_directly():
    assert parse_labels({"critique": "c", "labels": [" GOOD ", "bad"]}, 2) == (["good", "bad"], "c", None)
    assert parse_labels({"labels": "good"}, 1)[0] is None
    assert parse_labels(None, 1)[2].startswith("reply is NoneType")


def test_llm_satisfaction_judge_drives_env_reward_in_one_call_per_step():
    raws = ['{"critique": "", "labels": ["good"]}', '{"critique": "", "labels": ["bad"]}', "garbage"]
    client = FakeChatClient(raws)
    batch = TutoringBatch(3, satisfaction_judge=LLMSatisfactionJudge(client=client))
    batch.reset(seed=0)
    _, rewards, _, _, infos = batch.step(["Explain it to me.", "Atoms are small.", "Why?"])
    assert rewards.tolist() == [1.0, -1.0, 0.0]
    assert [i["satisfaction"] for i in infos] == ["good", "bad", "neutral"]
    assert len(client.calls) == 1 and len(client.calls[0]) == 3
    # the env marks only the newest teacher turn; the seed turn is context
    user = client.calls[0][0][1]["content"]
    assert user.count("[T1]") >= 1 and "[T2]" not in user

    env = TutoringEnv(satisfaction_judge=LLMSatisfactionJudge(client=FakeChatClient(["{}"])))
    env.reset(seed=1)
    assert env.step("Hello there.")[1] == 0.0


def _scripted_backend(chat):
    """A ChatClient subclass that answers from a list of raw replies (or errors to yield)."""

    class ScriptedBackend(chat.ChatClient):
        backend = "scripted"
        model = "scripted"

        def __init__(self, raws, cache_path=None):
            super().__init__(cache_path=cache_path, temperature=0.0, max_tokens=64)
            self.raws = list(raws)
            self.sent = 0

        def _cache_fields(self):
            return {}

        def _generate(self, requests):
            for i, _ in enumerate(requests):
                self.sent += 1
                yield i, self.raws.pop(0)

        def check(self):
            return None

    return ScriptedBackend


def test_works_with_a_real_chat_client_subclass():
    """The same judges and student on top of envs.chat.ChatClient's own batching and JSON parsing."""
    chat = pytest.importorskip("envs.chat")
    from envs.students import ChatModelStudent

    ScriptedBackend = _scripted_backend(chat)

    judge = LLMSatisfactionJudge(client=ScriptedBackend(['```json\n{"critique": "", "labels": ["good"]}\n```', "no json here"]))
    d = _dialogue(("A", "ok"))
    assert [r.labels for r in judge.judge_batch([d, d])] == [["good"], ["neutral"]]
    assert judge.counter.fallbacks == 1

    student = ChatModelStudent(client=ScriptedBackend(["Oh wow, okay!"]))
    env = TutoringEnv(student=student)
    obs, _ = env.reset(seed=0)
    assert obs[-1] == {"role": "student", "content": "Oh wow, okay!"}


def test_real_client_does_not_cache_replies_the_judge_rejects(tmp_path):
    """A reply with the wrong number of labels is a counted fallback, and a rerun asks again."""
    chat = pytest.importorskip("envs.chat")
    ScriptedBackend = _scripted_backend(chat)
    path = tmp_path / "judge.sqlite"
    d = _dialogue(("A", "ok"), ("B", "ohh cool"))

    first = ScriptedBackend(['{"critique": "c", "labels": ["good"]}'], cache_path=path)
    judge = LLMSatisfactionJudge(client=first)
    result = judge.judge_batch([d])[0]
    assert result.fallback and result.labels == ["neutral", "neutral"]
    assert judge.counter.reasons == ["expected 2 labels, got 1"]
    assert first.stats.fallbacks == 1 and first.stats.failures == 0

    second = ScriptedBackend(['{"critique": "c", "labels": ["good", "bad"]}'], cache_path=path)
    assert LLMSatisfactionJudge(client=second).judge_batch([d])[0].labels == ["good", "bad"]
    assert second.sent == 1 and second.stats.cache_hits == 0

    third = ScriptedBackend([], cache_path=path)  # the accepted reply was cached
    assert LLMSatisfactionJudge(client=third).judge_batch([d])[0].labels == ["good", "bad"]
    assert third.sent == 0 and third.stats.cache_hits == 1


def test_failed_request_becomes_neutral_labels_not_a_crash():
    chat = pytest.importorskip("envs.chat")
    ScriptedBackend = _scripted_backend(chat)
    client = ScriptedBackend([chat.TransientChatError("Chat request failed after 3 attempts; last status: HTTP 503"),
                              '{"critique": "", "labels": ["good"]}'])
    judge = LLMStyleJudge(client=client)
    results = judge.judge_batch([_dialogue(("A", "ok")), _dialogue(("B", "ok"))], "direct")
    assert results[0].fallback and results[0].labels == ["neutral"] and "HTTP 503" in results[0].rationale
    assert results[1].labels == ["good"] and not results[1].fallback
    assert client.stats.failures == 1 and client.stats.fallbacks == 1
    assert judge.counter.fallbacks == 1 and "HTTP 503" in judge.counter.reasons[0]
