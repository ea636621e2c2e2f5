"""Arithmetic drills: right answers, deterministic streams, splits that share no drill, and the env's reward on them."""

import pytest

from envs.data.drills import DRILL_KINDS, make_drills
from envs.data.problems import problems_for_split
from envs.data.splits import SPLITS
from envs.math_reward import answer_reward


def _check(problem):
    question = problem.question
    if question.startswith("What is"):
        a, op, b = question[len("What is "):-1].split()
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b)}[op]
    elif question.startswith("Which is larger"):
        a, b = question[len("Which is larger, "):-1].split(" or ")
        value = max(int(a), int(b))
    else:
        terms = [int(t) for t in question.split(": ")[1].split(", ...")[0].split(", ")]
        value = terms[-1] + (terms[1] - terms[0])
    return value


@pytest.mark.parametrize("level", [1, 2, 3])
def test_drills_have_right_answers_and_cycle_their_kinds(level):
    drills = make_drills(60, level, seed=0, split="train", kinds=DRILL_KINDS)
    assert [p.id.split("-")[2] for p in drills[:5]] == list(DRILL_KINDS)
    assert len({p.question for p in drills}) == 60
    for p in drills:
        assert int(p.answer) == _check(p) >= 0, p.question
        assert p.solution.endswith(f"#### {p.answer}") and answer_reward(p.solution, p.answer) == 1.0
    assert make_drills(60, level, seed=0, split="train", kinds=DRILL_KINDS) == drills
    assert make_drills(60, level, seed=1, split="train", kinds=DRILL_KINDS) != drills


def test_drill_splits_share_nothing():
    streams = {s: {(p.id.split("-")[2], p.expression) for p in make_drills(100, 2, split=s)} for s in SPLITS}
    for held in ("eval", "test"):
        for other in SPLITS:
            if other != held:
                assert not streams[held] & streams[other], (held, other)
    assert problems_for_split("test", task="drill", num=5, difficulty=2) == make_drills(5, 2, split="test")


def test_bad_drill_arguments_are_refused():
    with pytest.raises(ValueError, match="level"):
        make_drills(3, level=7)
    with pytest.raises(ValueError, match="split"):
        make_drills(3, split="holdout")
    with pytest.raises(ValueError, match="ask for fewer"):
        make_drills(500, 1, split="eval")  # level 1 has too few distinct drills on the eval side
    with pytest.raises(ValueError, match="drill kinds must be a non-empty list"):
        make_drills(3, kinds=("add", "divide"))
    with pytest.raises(ValueError, match="drill kinds"):
        make_drills(3, kinds=())
    from envs.tasks.math import MathTask

    with pytest.raises(ValueError, match="env.drill_kinds must be a non-empty list.*divide"):
        MathTask(drill_kinds=["divide"])  # refused when the task is built, before any model is loaded


def test_a_default_drill_stream_serves_its_whole_side():
    sizes = {split: len(problems_for_split(split, task="drill")) for split in ("train", "eval", "test")}
    assert sizes == {"train": 258, "eval": 130, "test": 102}  # level 2, four kinds: the multiplications run out
    assert len({p.question for p in problems_for_split("test", task="drill")}) == 102


def test_the_math_env_serves_drills_and_passes_check_env():
    import gymnasium
    from gymnasium.utils.env_checker import check_env

    import envs  # noqa: F401  (registers the ids)
    from envs.math import LOTTERY, PersonaMathEnv

    drills = make_drills(20, 2, split="eval")
    check_env(PersonaMathEnv(problems=drills, personas=LOTTERY))
    env = gymnasium.make("pluralgym/PersonaMath-v0", problems=drills)
    _, info = env.reset(seed=0, options={"problem": 3})
    assert drills[3].question in env.unwrapped.render() or info["problem_id"] == drills[3].id
    _, reward, *_ = env.step(f"Easy. #### {drills[3].answer}")
    assert reward == 1.0
