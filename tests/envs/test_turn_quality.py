"""The degenerate-turn detector (envs.turns.quality) on labelled turns, hard cases, and the report figures."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from envs.data import load_tutoring_topics
from envs.turns import QualityFigures, Thresholds, assess_turn, is_degenerate, quality_figures
from envs.turns.quality import REASONS, distinct_n, last_full_sentence, topic_overlap
from envs.tutoring import SEED_TURNS, SEED_TURNS_HELDOUT

DATA = Path(__file__).parent / "data"
ROWS = [json.loads(line) for line in (DATA / "teacher_turn_quality.jsonl").read_text().splitlines()]
OTHER_TURNS = [json.loads(line) for line in (DATA / "teacher_turns.jsonl").read_text().splitlines()]


def T(text):
    return {"role": "teacher", "content": text}


def S(text):
    return {"role": "student", "content": text}


def verdict(row, thresholds=Thresholds()):
    return assess_turn(row["text"], row["topic"], row.get("context", []), thresholds)


def scores(rows):
    """Accuracy, precision and recall of the ``degenerate`` label."""
    tp = fp = fn = tn = 0
    for row in rows:
        flagged, gold = verdict(row).degenerate, row["label"] == "degenerate"
        tp += flagged and gold
        fp += flagged and not gold
        fn += gold and not flagged
        tn += not flagged and not gold
    return (tp + tn) / len(rows), tp / (tp + fp), tp / (tp + fn)


# --- the labelled set ------------------------------------------------------------------------


def test_labelled_set_covers_both_labels_both_styles_and_every_kind():
    assert len(ROWS) >= 120
    labels = Counter(r["label"] for r in ROWS)
    assert set(labels) == {"coherent", "degenerate"} and min(labels.values()) >= 0.4 * len(ROWS)
    kinds = {label: Counter(r["kind"] for r in ROWS if r["label"] == label) for label in labels}
    assert set(kinds["coherent"]) == {"explain", "ask", "key_term_repeat", "short_question", "framing"}
    assert set(kinds["degenerate"]) == {"repetition", "off_topic", "drift", "filler", "cut_off"}
    assert kinds["coherent"]["explain"] >= 30 and kinds["coherent"]["ask"] >= 30
    for kind in kinds["degenerate"]:  # every kind of bad turn comes both as an explanation and as a question
        assert {r["style"] for r in ROWS if r["kind"] == kind} == {"ask", "explain"}, kind
    assert len({r["topic"] for r in ROWS}) >= 50
    assert all(r["reason"] and r["split"] in ("tune", "heldout") for r in ROWS)
    assert Counter(r["split"] for r in ROWS) == {"tune": 90, "heldout": 60}
    for split in ("tune", "heldout"):  # both splits hold every kind
        assert {r["kind"] for r in ROWS if r["split"] == split} == set(kinds["coherent"]) | set(kinds["degenerate"])
    real = [r["text"] for r in ROWS if r["source"] == "issue"]
    assert any("back-and-forth presentation" in t for t in real)
    assert any("The Lion, the Witch, and the King" in t for t in real)
    assert "I'm ready to continue." in real


@pytest.mark.parametrize("split, accuracy, precision, recall", [("tune", 0.911, 1.0, 0.818), ("heldout", 0.916, 0.96, 0.857)])
def test_detector_meets_its_documented_figures(split, accuracy, precision, recall):
    """The floors are the figures measured when the thresholds were fixed (module docstring)."""
    acc, prec, rec = scores([r for r in ROWS if r["split"] == split])
    assert acc >= accuracy and prec >= precision and rec >= recall, (acc, prec, rec)


def test_every_repetitive_cut_off_and_filler_turn_is_caught_for_the_right_reason():
    for row in ROWS:
        if row["kind"] in ("repetition", "cut_off", "filler"):
            assert row["kind"] in verdict(row).reasons, (row["kind"], row["text"])


def test_the_real_degenerate_turns_are_caught_but_the_novel_drift():
    """The looped sentence and the empty turn are caught; the 9/11 lesson that drifts into a novel is a known miss.

    It names the attacks and then tells a story without any marker of a change of subject, which lexical overlap
    cannot tell from a related example (documented in the module docstring).
    """
    real = {r["kind"]: verdict(r) for r in ROWS if r["source"] == "issue"}
    assert real["repetition"].reasons == ["repetition"] and real["filler"].reasons == ["filler"]
    assert not real["drift"].degenerate


def test_few_false_alarms_on_turns_written_for_another_purpose():
    """teacher_turns.jsonl: 121 coherent ask/explain turns, each with its own topic."""
    flagged = [t["text"][:60] for t in OTHER_TURNS if is_degenerate(t["text"], t["topic"])]
    assert len(flagged) <= 1, flagged


def test_seed_turns_are_never_flagged():
    for topic in load_tutoring_topics():
        for template in SEED_TURNS + SEED_TURNS_HELDOUT:
            assert not is_degenerate(template.format(topic=topic), topic), (topic, template)


# --- hard cases ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, topic, context, reasons",
    [
        # a key term used on purpose, a short real question, praise, a short framing turn
        ("The mitochondria are the power plants of the cell. The mitochondria take sugar and oxygen and turn them "
         "into ATP, and ATP is what the cell spends as energy. No mitochondria, no energy.", "Cells", [], []),
        ("Lighter how?", "Archimedes’ Principle", [T("Why does wood float?"), S("Because it's lighter.")], []),
        ("Why?", "Irony", [], []),
        ("What do you think?", "Irony", [], []),
        ("Great job!", "Photosynthesis", [], []),
        ("Nice work. Now let's move on to Newton's third law.", "Newton’s Third Law of Motion", [], []),
        ("Let's continue with photosynthesis.", "Photosynthesis", [], []),
        # filler, procedural questions, nothing at all
        ("I'm ready to continue.", "Photosynthesis", [], ["filler"]),
        ("Shall we move on?", "Photosynthesis", [], ["filler"]),
        ("Sure thing! I'm happy to help with that. Let me know whenever you're ready.", "Cells", [], ["filler"]),
        ("", "Cells", [], ["filler"]),
        # repetition
        ("Plants use sunlight. Plants use sunlight. Plants use sunlight.", "Photosynthesis", [], ["repetition"]),
        ("Lincoln was the president. He was the president, the president of the United States, the president, "
         "and he was the president for a long time as the president.", "Abraham Lincoln", [], ["repetition"]),
        # cut off: no end mark on a long turn, or a dangling word
        ("The light reactions happen in the thylakoid membranes, where chlorophyll splits water into oxygen and",
         "Photosynthesis", [], ["cut_off"]),
        ("Energy is stored in the", "Conservation of Energy", [], ["cut_off"]),
        ("Zeus was king of the gods and ruled from Mount Olympus with his thunderbolt", "Zeus", [], ["cut_off"]),
        # names the topic once, then drifts (a marker gives it away)
        ("Photosynthesis is important. Speaking of green things, my cousin painted his kitchen green last summer, "
         "and the paint took three weeks to dry, so he ordered pizza every night.", "Photosynthesis", [], ["off_topic"]),
        # several reasons at once, in the documented order
        ("Click here to subscribe, click here to subscribe, click here to subscribe and", "DNA", [],
         ["repetition", "cut_off", "off_topic"]),
        # short turns: small talk with nothing of the lesson in it; a short question on the lesson is fine
        ("How was your weekend?", "Cells", [], ["off_topic"]),
        ("What's your favourite football team?", "Photosynthesis", [], ["off_topic"]),
        ("What's your favourite part of photosynthesis?", "Photosynthesis", [], []),
        ("What do you think plants need to grow?", "Photosynthesis", [T("Plants make food from light.")], []),
        # talk about the lesson instead of to the student (a leaked instruction), on the topic or not
        ("How about asking the student what they know about cells?", "Cells", [], ["off_topic", "meta_talk"]),
        ("Use the INTERACTIVE style. What is a cell?", "Cells", [], ["off_topic"]),
        ("Imagine the students at the barricades. What would they want?", "The French Revolution", [], []),
        # an invitation to ask "a question" with nothing of the lesson in it is procedure, like "Shall we move on?"
        ("How about asking a question?", "Photosynthesis", [], ["filler", "meta_talk"]),
        ("What would you like to ask?", "Photosynthesis", [], ["filler", "meta_talk"]),
        # an invitation to ask is talk about asking, not a question about the lesson
        ("Can you ask me one question about photosynthesis?", "Photosynthesis", [], ["meta_talk"]),
        ("How about asking your friend a question?", "Photosynthesis", [], ["off_topic", "meta_talk"]),
    ],
)
def test_hard_cases(text, topic, context, reasons):
    assert assess_turn(text, topic, context).reasons == reasons


COLD_WAR_TURN = (
    "Never head-on. Both superpowers feared a nuclear exchange, so their soldiers, tanks and money went to allies "
    "instead, in Korea, in Vietnam and in Afghanistan. Each side armed, trained and financed local forces, hoping "
    "to weaken its rival without risking a direct clash between Washington and Moscow."
)


def test_the_dialogue_so_far_counts_as_connection():
    """A long turn that never names the topic is fine when it picks up the recent turns."""
    context = [T("It was a long standoff between the United States and the Soviet Union."),
               S("So did the superpowers ever send soldiers and tanks against each other?")]
    with_context = assess_turn(COLD_WAR_TURN, "The Cold War", context)
    assert not with_context.degenerate and with_context.topic_checked and with_context.connected_share > 0.1
    alone = assess_turn(COLD_WAR_TURN, "The Cold War")
    assert alone.reasons == ["off_topic"] and alone.connected_share == 0.0 and alone.n_content >= 25
    # older messages than the last ``context_messages`` do not count
    padded = context + [T("Okay."), S("Okay."), T("Right."), S("Sure.")]
    assert assess_turn(COLD_WAR_TURN, "The Cold War", padded).reasons == ["off_topic"]
    assert not assess_turn(COLD_WAR_TURN, "The Cold War", padded, Thresholds(context_messages=6)).degenerate
    # plain strings work as context too, and system messages are ignored
    assert not assess_turn(COLD_WAR_TURN, "The Cold War", [m["content"] for m in context]).degenerate
    assert assess_turn(COLD_WAR_TURN, "The Cold War", [{"role": "system", "content": context[1]["content"]}]).degenerate


def test_saying_the_previous_turn_again_is_repetition():
    turn = "What would a fox stand for in an allegory?"
    before = [T(turn), S("Um, I don't know.")]
    assert assess_turn(turn, "Allegory", before).reasons == ["repetition"]
    assert not assess_turn(turn, "Allegory", [S(turn)]).degenerate  # the student's words do not count
    assert not assess_turn(turn, "Allegory", [T("What is an allegory?"), S("A story?")]).degenerate
    assert not assess_turn(turn, "Allegory", before, Thresholds(max_turn_overlap=1.0)).degenerate
    # older than the last ``context_messages`` messages: forgotten
    assert not assess_turn(turn, "Allegory", before + [T("Fine."), S("Ok."), T("Sure."), S("Yes.")]).degenerate


def test_third_person_talk_is_fine_when_the_lesson_is_about_it():
    """"The student" is a leaked instruction only when neither the topic nor the dialogue speaks of students."""
    turn = "How would the student in that story react to the teacher?"
    assert assess_turn(turn, "Cells").reasons == ["off_topic"]
    assert not assess_turn(turn, "Cells", [T("A student in the story keeps a diary about his cells.")]).degenerate


def test_no_topic_check_without_anything_to_compare_with():
    result = assess_turn(COLD_WAR_TURN, "t", [T("Hello."), S("hi")])
    assert not result.degenerate and not result.topic_checked


def test_figures_behind_the_verdict():
    q = assess_turn("The war started early. The war started early. It ended late.", "World War 1")
    assert q.reasons == ["repetition"] and q.repeated_clause == "The war started early"
    assert q.n_words == 11 and q.repeated_ngram_share == pytest.approx(2 / 9) and q.ends_cleanly
    assert q.reason == "repetition" and assess_turn("Atoms are tiny.", "Atoms").reason == ""
    assert set(REASONS) == {"repetition", "cut_off", "off_topic", "filler", "meta_talk"}


# --- quality figures -------------------------------------------------------------------------


def test_quality_figures_on_a_hand_computed_case():
    turns = ["The cat sat.", "The cat ran.", "Okay, let's go on."]
    figures = quality_figures(turns, "Cats", token_counts=[10, 32, 5], max_new_tokens=32)
    assert isinstance(figures, QualityFigures) and figures.n_turns == 3
    # words: [the cat sat] [the cat ran] [okay let's go on]: 10 words, 8 distinct
    assert figures.distinct_1 == pytest.approx(8 / 10)
    # bigrams within turns: (the cat) x2, (cat sat), (cat ran), (okay let's), (let's go), (go on): 7, 6 distinct
    assert figures.distinct_2 == pytest.approx(6 / 7)
    assert figures.mean_words == pytest.approx(10 / 3)
    assert figures.cut_at_limit_share == pytest.approx(1 / 3)  # 32 >= 32
    assert figures.topic_overlap == pytest.approx(2 / 3)  # "cat" in the first two turns, not the third
    assert figures.degenerate_share == pytest.approx(1 / 3)  # the filler turn
    assert figures.reason_shares == {"repetition": 0.0, "cut_off": 0.0, "off_topic": 0.0, "filler": pytest.approx(1 / 3),
                                     "meta_talk": 0.0}
    logged = figures.as_dict("quality/")
    assert logged["quality/distinct_2"] == figures.distinct_2 and logged["quality/filler_share"] == pytest.approx(1 / 3)
    assert all(key.startswith("quality/") for key in logged)


def test_quality_figures_per_turn_topics_and_edge_cases():
    figures = quality_figures(["Cells divide by mitosis.", "Zeus ruled Olympus."], ["Cell Division", "Zeus"])
    # topic 1 has two content words (cell, division), one of them in the turn; topic 2 has one, found
    assert figures.topic_overlap == pytest.approx((1 / 2 + 1) / 2)
    assert figures.cut_at_limit_share is None  # no token counts
    assert topic_overlap("Anything at all.", "The") is None  # a topic without content words is left out
    assert quality_figures(["Anything at all."], "The").topic_overlap == 0.0
    empty = quality_figures([], "Cells", token_counts=[], max_new_tokens=8)
    assert (empty.n_turns, empty.degenerate_share, empty.distinct_1, empty.mean_words, empty.cut_at_limit_share) == (0, 0.0, 0.0, 0.0, 0.0)
    assert distinct_n(["a"], 2) == 0.0 and distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="topics"):
        quality_figures(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="token_counts"):
        quality_figures(["a", "b"], "x", token_counts=[1])


def test_quality_figures_see_a_degenerate_batch():
    rows = [r for r in ROWS if r["split"] == "heldout"]
    figures = quality_figures([r["text"] for r in rows], [r["topic"] for r in rows],
                              contexts=[r.get("context", []) for r in rows])
    n_flagged = sum(verdict(r).degenerate for r in rows)
    assert figures.degenerate_share == pytest.approx(n_flagged / len(rows))
    looped = quality_figures(["Plants use sunlight to make food. " * 4] * 3, "Photosynthesis")
    varied = quality_figures([r["text"] for r in rows if r["label"] == "coherent"], "Photosynthesis")
    assert looped.degenerate_share == 1.0 and looped.distinct_2 < 0.1 < 0.8 < varied.distinct_2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Force is mass times acceleration. So if you push twice as", "Force is mass times acceleration."),
        ("What pushes back? Think of a wall and", "What pushes back?"),
        ('He said "stop." Then the car', 'He said "stop."'),
        ("  A clean turn ends here.  ", "A clean turn ends here."),
        ("It costs 3.5 dollars and", "It costs 3.5 dollars and"),  # no complete sentence: left for the detector
        ("", ""),
    ],
)
def test_last_full_sentence(text, expected):
    assert last_full_sentence(text) == expected


def test_a_trimmed_turn_is_no_longer_cut_off():
    text = "Newton's second law says force equals mass times acceleration, so a heavier cart needs more force. If you"
    assert "cut_off" in assess_turn(text, "Newton's Second Law of Motion").reasons
    assert assess_turn(last_full_sentence(text), "Newton's Second Law of Motion").reasons == []
