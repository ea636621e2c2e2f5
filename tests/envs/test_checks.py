"""Tests for envs.checks: the figures the reward never calls."""

import ast
import json
import math
from pathlib import Path

import pytest

from envs.checks import TurnCheck, asks_about_lesson, check_turn, check_turns, count_questions, is_meta_talk
from envs.turns.classifier import analyze_teacher_turn
from envs.turns.quality import assess_turn, is_degenerate

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"

# Turns that talk about asking instead of asking; (turn, topic). The first three were written by a trained head.
GAMED = [
    ("How about asking about The Silk Road and how it relates to The Human Development Index?", "The Silk Road"),
    ("How about asking an interesting question about Inflation about Inflation?", "Inflation"),
    ("What would you like to ask about Probability and how it exists?", "Probability"),
    ("Do you have any questions about the French Revolution?", "The French Revolution"),
    ("What would you like to know about Volcanoes?", "Volcanoes"),
    ("Can you ask me a question about Evolution?", "Evolution"),
    ("I will explain Inflation to you. What do you want to learn first?", "Inflation"),
    ("How about we ask a good question about Democracy and how it relates to Capitalism?", "Democracy"),
    ("What question should we ask about The Cold War next?", "The Cold War"),
    ("Why not ask something about Gravity and why it matters?", "Gravity"),
    ("Shall we ask about Photosynthesis and how it works?", "Photosynthesis"),
    ("What do you want to ask about DNA and where it comes from?", "DNA"),
    ("How about a question on Supply and Demand and how it connects to Inflation?", "Supply and Demand"),
    ("Would you like me to explain Volcanoes or ask you about Volcanoes?", "Volcanoes"),
    ("Let me ask you a question about The Roman Empire. What do you think about The Roman Empire?", "The Roman Empire"),
    ("How about asking a question about Zeus, and how it relates to Poseidon?", "Zeus"),
    ("Let's talk about Democracy. What would you like to discuss first?", "Democracy"),
]

# Real questions about the lesson: (turn, topic, real questions in the turn)
LESSON_QUESTIONS = [
    ("Why do you think the Silk Road mattered for trade between China and Rome?", "The Silk Road", 1),
    ("If you doubled the mass of the cart but pushed just as hard, what would happen to its acceleration?",
     "Newton's Second Law of Motion", 1),
    ("A plant sits in a dark cupboard for two weeks. What do you expect its leaves to look like, and why?",
     "Photosynthesis", 1),
    ("Imagine prices rise 10% a year. Can you work out what a 100-dollar basket costs after two years?",
     "Inflation", 1),
    ("Which planet would you expect to be coldest: Mercury, Venus or Neptune?", "The Solar System", 1),
    ("Romeo says he fears a consequence hanging in the stars. What might that line hint about the ending?",
     "Foreshadowing", 1),
    ("You roll two dice. How many outcomes give a total of seven?", "Probability", 1),
    ("In The Persistence of Memory the clocks are melting. Why clocks? And why would they melt?", "Salvador Dali", 2),
    ("Do you think a king who taxed bread could keep the loyalty of Paris? Take a guess.", "The French Revolution", 1),
    ("Whales breathe air and feed their young milk. What kind of animal were their ancestors?", "Evolution", 1),
    ("Here's one for you: what happens to the pressure on a diver as she swims deeper?", "Archimedes' Principle", 1),
    ("Why would an emperor who loved conquest sell Louisiana so cheaply?", "Napoleon Bonaparte", 1),
    ("What do neurons use to pass a signal across the synapse", "Neurons", 0),  # no "?" and not put to "you"
]

EXPLANATIONS = [
    ("Inflation is a general rise in prices; when money grows faster than goods, each unit buys less.", "Inflation"),
    ("Chloroplasts capture sunlight and use it to turn water and carbon dioxide into glucose, "
     "releasing oxygen.", "Photosynthesis"),
    ("Why do giraffes have long necks? Darwin's answer was natural selection: longer necks reached more "
     "leaves, so those giraffes left more offspring.", "Evolution"),
    ("The Silk Road carried silk, spices and ideas between China and the Mediterranean for centuries.",
     "The Silk Road"),
    ("A neuron fires when sodium ions rush into the axon, and the signal jumps the synapse as chemicals.",
     "Neurons"),
    ("Two dice give 36 equally likely outcomes, and six of them sum to seven, so the chance is one in six.",
     "Probability"),
    ("Athens let adult male citizens vote directly on laws, while women and slaves had no vote.", "Democracy"),
    ("Force equals mass times acceleration, so a cart twice as heavy speeds up half as fast. Pretty neat, right?",
     "Newton's Second Law of Motion"),
    ("The Colosseum held about 50,000 spectators and had eighty entrances so crowds left in minutes.",
     "The Colosseum"),
    ("Mendeleev arranged elements by atomic mass and left gaps for metals nobody had found yet.",
     "The Periodic Table"),
    ("Zeus ruled Olympus and threw thunderbolts forged by the Cyclopes.", "Zeus"),
    ("Great question, and the answer is that ice is less dense than liquid water, so it floats.",
     "Archimedes' Principle"),
]


def _rows(name):
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------- reward gaming


# Turns the reward still accepts as good asking turns (the student's meta-talk rule covers talk about
# asking and questions, not lesson planning or empty prompts); the checks read them otherwise.
STILL_FOOLS_THE_REWARD = [
    ("What part of Gravity should we cover next?", "Gravity", True),
    ("Which part of the lesson on DNA do you want next?", "DNA", True),
    ("Do you want me to go over Inflation again?", "Inflation", True),
    ("Where would you like to start with Evolution?", "Evolution", True),
    ("Tell me what you want to learn about Atoms.", "Atoms", True),
    ("What about Allegory?", "Allegory", False),  # written by a trained head: a question with no lesson in it
    ("How about The Hagia Sophia?", "The Hagia Sophia", False),
]


@pytest.mark.parametrize("turn,topic", GAMED)
def test_talk_about_asking_is_caught(turn, topic):
    assert analyze_teacher_turn(turn).kind == "ask"  # the ask/explain reader takes it for an asking turn
    check = check_turn(turn, topic)
    assert check.meta_talk and check.meta_cues
    assert not check.asks_about_lesson and check.n_lesson_questions == 0
    assert check.lesson_content == 0


@pytest.mark.parametrize("turn,topic,meta", STILL_FOOLS_THE_REWARD)
def test_the_checks_disagree_with_the_reward_on_turns_that_still_fool_it(turn, topic, meta):
    # the reward's analysers take these for sound asking turns ...
    assert analyze_teacher_turn(turn).kind == "ask"
    assert not is_degenerate(turn, topic) and not assess_turn(turn, topic, ()).degenerate
    # ... the checks see lesson planning or an empty prompt: no question about the lesson
    check = check_turn(turn, topic)
    assert check.meta_talk == meta
    assert not check.asks_about_lesson and check.lesson_content == 0


def test_leaked_instructions_are_meta_talk():
    turn = "How about asking the student what they know?"
    assert analyze_teacher_turn(turn).kind == "ask"  # the ask/explain reader falls for it; quality.py catches it
    assert "student" in check_turn(turn, "Photosynthesis").meta_cues
    assert is_meta_talk(turn, "Photosynthesis") and not asks_about_lesson(turn, "Photosynthesis")
    assert count_questions(turn) == 0  # a proposal, not a question
    style = check_turn("Use the INTERACTIVE style.", "Inflation")
    assert style.meta_talk and style.meta_cues == ("style",)
    assert is_meta_talk("Should I use the direct style or the interactive style for Neurons?", "Neurons")


def test_a_gamed_batch_reads_very_differently_from_a_real_one():
    turns, topics = zip(*GAMED)
    analyser_ask_share = sum(analyze_teacher_turn(t).kind == "ask" for t in turns) / len(turns)
    gamed = check_turns(turns, topics)
    real = check_turns([t for t, _, _ in LESSON_QUESTIONS[:-1]], [tp for _, tp, _ in LESSON_QUESTIONS[:-1]])
    assert analyser_ask_share == 1.0
    assert gamed["meta_talk_share"] == 1.0 and gamed["lesson_question_share"] == 0.0
    assert gamed["lesson_content"] == 0.0 and gamed["lesson_questions_per_turn"] == 0.0
    assert real["meta_talk_share"] == 0.0 and real["lesson_question_share"] == 1.0 and real["lesson_content"] > 2


# --------------------------------------------------------------------------------------------- real teaching


@pytest.mark.parametrize("turn,topic,n", LESSON_QUESTIONS)
def test_real_lesson_questions_pass(turn, topic, n):
    check = check_turn(turn, topic)
    assert not check.meta_talk and check.meta_cues == ()
    assert check.n_questions == n and count_questions(turn) == n
    assert check.lesson_content > 0
    assert check.asks_about_lesson == (n > 0)


@pytest.mark.parametrize("turn,topic", EXPLANATIONS)
def test_real_explanations_pass(turn, topic):
    check = check_turn(turn, topic)
    assert not check.meta_talk
    assert check.n_questions == 0 and not check.asks_about_lesson  # rhetorical and tag questions do not count
    assert check.lesson_content >= 3


def test_comprehension_checks_count_as_questions_but_not_lesson_questions():
    explanation = "Arteries carry blood away from the heart and veins bring it back."
    for check_question in ("Does that make sense?", "Any questions?", "Got it?", "With me so far?"):
        check = check_turn(f"{explanation} {check_question}", "The Circulatory System")
        assert check.n_questions == 1 and not check.asks_about_lesson
        assert not check.meta_talk and check.lesson_content > 3
    alone = check_turn("Do you have any questions?", "Cells")
    assert alone.meta_talk and alone.real_question and not alone.asks_about_lesson


def test_question_forms():
    assert count_questions("Can you work out how fast the cart accelerates") == 1  # no mark, put to "you"
    assert count_questions("The Calvin cycle is where carbon dioxide gets fixed, which is why it matters.") == 0
    assert count_questions("Right?") == 0 and count_questions("Why or why not?") == 1
    assert count_questions("Do you agree with him, or not?") == 1
    assert count_questions("How did one shot start a war? And why did so many join? The answer is alliances.") == 0
    assert count_questions("What is at the top of the swing? Hint: think about speed.") == 1
    assert count_questions("Shall we move on?") == 0 and count_questions("How about a heavier ball?") == 0


def test_topic_words_and_lesson_uses_of_cue_words_are_not_meta():
    assert not is_meta_talk("What lesson of the fable do you think the hare learned about pride?", "Allegory")
    assert not is_meta_talk("If you could ask Napoleon one thing about Waterloo, what would it be?", "Napoleon")
    assert not is_meta_talk("Archimedes was asked to check whether the crown was pure gold.", "Archimedes")
    check = check_turn("Which questioning style did Socrates use with Meno's slave boy?", "Socratic Questioning")
    assert "question" not in check.meta_cues


def test_lesson_content_ignores_topic_generic_and_function_words():
    check = check_turn("Photosynthetic plants are interesting and important.", "Photosynthesis")
    assert check.lesson_content == 1 and check.lesson_words == ("plant",)
    assert check_turn("What do you think about Probability?", "Probability").lesson_content == 0
    assert check_turn("It took 20 years and 1631 stones.", "Taj Mahal").lesson_content == 4


def test_check_turns_figures_and_edges():
    figures = check_turns(
        ["Why does ice float on water?", "Let's ask a question about ice.", "Ice is less dense than water."],
        "Ice",
    )
    assert figures == pytest.approx({
        "n_turns": 3.0, "real_question_share": 1 / 3, "meta_talk_share": 1 / 3, "lesson_question_share": 1 / 3,
        "lesson_content": (2 + 0 + 3) / 3, "questions_per_turn": 1 / 3, "lesson_questions_per_turn": 1 / 3,
    })
    json.dumps(figures)
    empty = check_turns([], [])
    assert empty["n_turns"] == 0.0 and all(math.isnan(v) for k, v in empty.items() if k != "n_turns")
    with pytest.raises(ValueError):
        check_turns(["a", "b"], ["x"])
    assert isinstance(check_turn(None), TurnCheck) and check_turn("").n_sentences == 0  # type: ignore[arg-type]


def test_odd_text_never_crashes():
    for text in ("", "?", "n't", "'", "What would you like to?", "Would you like to", "A - b - ?", ", ,?", "ask",
                 "Let's", "How about?", "word " * 3000, "é ü ß?"):
        for topic in ("", "Ask", "Ice"):
            check = check_turn(text, topic)
            assert check.n_lesson_questions <= check.n_questions <= max(1, check.n_sentences)


# --------------------------------------------------------------------------------------------- labelled data


def test_figures_on_the_labelled_turns_match_the_docstring():
    turns, quality = _rows("teacher_turns.jsonl"), _rows("teacher_turn_quality.jsonl")
    coherent = turns + [r for r in quality if r["label"] == "coherent"]
    checks = [check_turn(r["text"], r["topic"]) for r in coherent]
    assert len(coherent) == 199
    assert sum(c.meta_talk for c in checks) == 1 and sum(c.lesson_content > 0 for c in checks) == 197
    ask = [check_turn(r["text"], r["topic"]) for r in turns if r["label"] == "ask"]
    explain = [check_turn(r["text"], r["topic"]) for r in turns if r["label"] == "explain"]
    assert (len(ask), sum(c.real_question for c in ask), sum(c.asks_about_lesson for c in ask)) == (61, 49, 49)
    assert (len(explain), sum(c.real_question for c in explain), sum(c.asks_about_lesson for c in explain)) == (
        60, 14, 1)
    filler = [r for r in quality if r["kind"] == "filler"]
    assert len(filler) == 16 and all(is_meta_talk(r["text"], r["topic"]) for r in filler)


def test_figures_on_the_env_openings_match_the_docstring():
    from envs.data import load_tutoring_topics
    from envs.tutoring import SEED_TURNS, SEED_TURNS_HELDOUT

    topics = load_tutoring_topics()
    seeds = SEED_TURNS + SEED_TURNS_HELDOUT
    meta = {sum(is_meta_talk(s.format(topic=t), t) for s in seeds) for t in topics}
    lesson = {sum(asks_about_lesson(s.format(topic=t), t) for s in seeds) for t in topics}
    assert (len(seeds), len(topics), meta, lesson) == (24, 78, {15}, {3})


# --------------------------------------------------------------------------------------------- independence


FORBIDDEN = ("envs.students", "envs.judges", "envs.tutoring", "envs.chat", "algorithms")


def _imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def _hits(names, prefixes):
    return [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)]


def test_checks_import_nothing_from_the_reward():
    modules = sorted((ROOT / "envs" / "checks").glob("*.py"))
    assert {m.name for m in modules} >= {"__init__.py", "tutoring.py", "math.py"}
    for module in modules:
        names = _imports(module)
        assert not _hits(names, FORBIDDEN), module
        assert not [n for n in names if n.startswith(".")], module  # no relative escapes either
        assert all(n.split(".")[0] in {"__future__", "math", "re", "dataclasses", "typing", "collections", "numpy",
                                       "envs"} for n in names), (module, names)


def test_the_reward_never_imports_the_checks():
    reward = [*(ROOT / "envs" / "students").glob("*.py"), *(ROOT / "envs" / "judges").glob("*.py"),
              ROOT / "envs" / "tutoring.py", ROOT / "envs" / "persona.py", ROOT / "envs" / "math.py",
              ROOT / "envs" / "data" / "math.py"]
    assert len(reward) > 8
    for module in reward:
        names = _imports(module)
        assert not _hits(names, ("envs.checks",)), module
        assert not [n for n in names if n.startswith(".") and "checks" in n], module
