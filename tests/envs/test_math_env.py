"""PersonaMathEnv: answer parsing, generated problems, personas, Gymnasium compliance, seeding, batching, the benchmark script."""

from __future__ import annotations

import importlib.util
import json
import pickle
import re
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the ids)
from envs.data.math import (
    LEVELS,
    MathProblem,
    _side,
    accuracy,
    clean_solution,
    load_gsm8k,
    make_problems,
)
from envs.data.problems import problems_for_split
from envs.math import (
    INSTRUCTION,
    LOTTERY,
    NO_PERSONA,
    PersonaMathBatch,
    PersonaMathEnv,
    PromptPersona,
    math_messages,
    persona_pools,
    personas_for_split,
)
from envs.math_reward import answer_reward, has_final_marker, is_correct, parse_final_number

ENV_ID = "pluralgym/PersonaMath-v0"
ROOT = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def evaluate_expression(expression: str) -> float:
    """Evaluates a generated problem's arithmetic (digits, spaces, brackets and + - * / only)."""
    assert re.fullmatch(r"[\d\s()+\-*/]+", expression), expression
    return eval(expression, {"__builtins__": {}})  # noqa: S307  (checked above: plain arithmetic)


def load_script():
    spec = importlib.util.spec_from_file_location("math_accuracy", ROOT / "benchmarks" / "math_accuracy.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script

# --- answer parsing ------------------------------------------------------------------------------

PARSE_CASES = [
    ("#### 42", 42.0),
    ("####42", 42.0),
    ("**#### 42**", 42.0),
    ("The answer is 42.", 42.0),
    ("First 3 apples, then 5 more: 8 apples in total.", 8.0),
    ("So she still has 12 km to go.", 12.0),
    ("He is 3rd in line", 3.0),
    ("42.00", 42.0),
    ("She had 5, then 7.\n#### 12", 12.0),                       # the marker wins over the last number
    ("#### 72\nI hope this helps! Ask me 2 more questions.", 72.0),  # ... and over numbers after it
    ("#### 5\nOn second thought:\n#### 7", 7.0),                 # the last marker counts
    ("#### Step 2: add them\n3 + 4 = 7", 7.0),                   # a markdown heading is not an answer
    ("#### The final answer is 18", 18.0),
    ("#### Answer: $1,234.50", 1234.5),
    ("It costs $1,234.", 1234.0),
    ("Total: 1,234,567 grains", 1234567.0),
    ("The numbers are 1,2,3", 3.0),                              # commas only group three digits
    ("1,2345", 2345.0),
    ("It was €15, and now it is £20.", 20.0),
    ("The temperature fell to -5 degrees.", -5.0),
    ("x = \u22124", -4.0),                                       # unicode minus
    ("#### -12", -12.0),
    ("-$3.50 overall", -3.5),
    ("10-3=7", 7.0),                                             # a hyphen between digits is no sign
    ("10-3", 3.0),
    ("It is .50 of the whole", 0.5),
    ("#### 3/4", 0.75),                                          # fractions right after ####
    ("She ate 3/4 of the pie", 4.0),                             # ... but not elsewhere
    ("The discount is 25%.", 25.0),                              # percentages keep their number
    ("#### 25%", 25.0),
    ("I don't know.", None),
    ("", None),
    ("#### none", None),
    ("#### none, but maybe 6", 6.0),                             # no number after the marker: last number
]


@pytest.mark.parametrize("text, expected", PARSE_CASES)
def test_parse_final_number(text, expected):
    assert parse_final_number(text) == expected


@pytest.mark.parametrize("text, reference, expected", [
    ("#### .50", "0.5", True),
    ("#### 0.5", 0.5, True),
    ("#### 1/2", "0.5", True),
    ("#### 0.33", 1 / 3, False),
    ("#### 1,000", "1000", True),
    ("The total is $1000.00.", 1000, True),
    ("#### 71", "72", False),
    ("no number here", "3", False),
    ("#### 0.30000000000000004", 0.3, True),                     # float noise is absorbed
])
def test_is_correct(text, reference, expected):
    assert is_correct(text, reference) is expected


def test_reward_is_binary_and_the_format_bonus_is_opt_in():
    assert answer_reward("#### 7", "7") == 1.0 and answer_reward("#### 8", "7") == 0.0
    assert answer_reward("it is 7", "7") == 1.0  # no format bonus by default
    assert answer_reward("#### 8", "7", format_bonus=0.1) == pytest.approx(0.1)
    assert answer_reward("#### 7", "7", format_bonus=0.1) == pytest.approx(1.1)
    assert answer_reward("it is 7", "7", format_bonus=0.1) == 1.0
    assert has_final_marker("#### 3") and not has_final_marker("#### Step 3") and not has_final_marker("3")


def test_accuracy_and_wilson_interval():
    problems = [MathProblem("a", "q", 3), MathProblem("b", "q", "4.0")]
    assert problems[1].answer == "4"
    assert accuracy(["#### 3", "it is 5"], problems) == 0.5
    with pytest.raises(ValueError):
        accuracy(["#### 3"], problems)
    wilson_interval = load_script().wilson_interval
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-3) and high == pytest.approx(0.7634, abs=1e-3)
    assert wilson_interval(0, 2)[0] == 0.0 and wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        MathProblem("c", "q", "no number")


# --- problems ------------------------------------------------------------------------------------


def test_gsm8k_loaders_and_easy_slices():
    assert len(load_gsm8k("train")) == 7473 and len(load_gsm8k("test")) == 1319
    assert len(load_gsm8k("train", max_steps=1)) == 499 and len(load_gsm8k("train", max_steps=2)) == 2674
    assert len(load_gsm8k("test", max_steps=1)) == 83 and len(load_gsm8k("test", max_steps=2)) == 440
    first = load_gsm8k("train")[0]
    assert first.id == "gsm8k-train-0" and first.answer == "72" and first.difficulty == 2
    assert first.source == "gsm8k-train" and "<<" not in clean_solution(first.solution)
    for p in load_gsm8k("test")[:200]:  # the reference solution's #### line agrees with the answer field
        assert is_correct(p.solution, p.answer)


def test_generated_problems_are_deterministic_and_prefix_stable():
    a = make_problems(30, 3, seed=5)
    assert a == make_problems(30, 3, seed=5)
    assert a[:10] == make_problems(10, 3, seed=5)
    assert a != make_problems(30, 3, seed=6)
    assert len({p.id for p in a}) == 30 and len({p.question for p in a}) == 30


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_generated_answers_recompute_and_follow_the_level(level):
    spec = LEVELS[level]
    for p in make_problems(150, level, seed=1) + make_problems(50, level, seed=1, split="eval"):
        value = evaluate_expression(p.expression)
        assert value == p.value and value == int(value) and value >= 2  # exact, positive integers
        assert p.solution.endswith(f"#### {p.answer}") and p.difficulty == level and p.source == "generated"
        ops = re.findall(r"[-+*/]", p.expression)
        assert len(ops) == spec.steps and set(ops) <= set(spec.ops)
        operands = [int(x) for x in NUMBER.findall(p.expression)]
        question_numbers = [int(x) for x in NUMBER.findall(p.question)]
        assert sorted(operands) == sorted(question_numbers)  # every number in the text is used, none invented
        assert all(2 <= x <= max(spec.max_number, spec.max_factor) for x in operands)
        assert p.value not in question_numbers  # copying a number from the question never scores
        lines = p.solution.splitlines()[1:-1]  # every intermediate step is a correct, positive integer step
        for line in lines:
            lhs, rhs = line.split(" = ")
            assert evaluate_expression(lhs) == int(rhs) >= 2


def test_level_one_is_a_single_small_addition_and_levels_grow():
    for p in make_problems(100, 1):
        x, y = (int(v) for v in p.expression.split(" + "))
        assert 2 <= x <= 9 and 2 <= y <= 9
    levels = [LEVELS[k] for k in sorted(LEVELS)]
    for easy, hard in zip(levels, levels[1:]):
        assert hard.steps >= easy.steps and hard.max_number >= easy.max_number and set(easy.ops) <= set(hard.ops)
        assert (hard.steps, hard.max_number, len(hard.ops)) != (easy.steps, easy.max_number, len(easy.ops))
    means = [np.mean([p.value for p in make_problems(200, k, seed=2)]) for k in sorted(LEVELS)]
    assert means == sorted(means) and len(set(means)) == len(means)
    assert LEVELS[max(LEVELS)].steps >= 3 and "/" in LEVELS[max(LEVELS)].ops


@pytest.mark.parametrize("level", [1, 2, 4])
def test_train_and_eval_streams_are_disjoint(level):
    train = make_problems(600, level, seed=0, split="train")
    router = make_problems(200, level, seed=0, split="router_train")
    evals = make_problems(200, level, seed=0, split="eval")
    questions = {p.question for p in train + router}
    assert not questions & {p.question for p in evals}
    key = lambda p: re.sub(r"\b[A-Z][a-z]+\b", "", p.question)  # noqa: E731  (the question without names)
    assert not {key(p) for p in train} & {key(p) for p in evals}
    assert train[:50] != router[:50]
    sides = [_side(str(i)) for i in range(2000)]
    assert 0.1 < sides.count("eval") / 2000 < 0.3 and 0.1 < sides.count("test") / 2000 < 0.3
    tests = make_problems(200, level, seed=0, split="test")
    assert not {key(p) for p in tests} & ({key(p) for p in train} | {key(p) for p in evals})
    with pytest.raises(ValueError, match="split"):
        make_problems(1, level, split="holdout")


def test_problems_for_split():
    assert problems_for_split("eval", num=5) == make_problems(5, split="eval")
    gsm = problems_for_split("eval", task="gsm8k", num=10, gsm8k_max_steps=1)
    assert len(gsm) == 10 and all(p.source == "gsm8k-test" and p.difficulty <= 1 for p in gsm)
    assert problems_for_split("router_val", task="gsm8k", num=3)[0].source == "gsm8k-train"
    with pytest.raises(ValueError, match="task"):
        problems_for_split("train", task="math500")


# --- personas ------------------------------------------------------------------------------------


def test_persona_split_is_deterministic_and_disjoint():
    pools, again = persona_pools(), persona_pools()
    assert pools == again
    train, held, test = {p.id for p in pools.train}, {p.id for p in pools.held_out}, {p.id for p in pools.test}
    assert len(train) == 125 and len(held) == 50 and len(test) == 25
    assert not train & held and not train & test and not held & test
    assert len(train | held | test) == 200 and all(p.description for p in pools.train + pools.held_out + pools.test)
    assert [p.id for p in personas_for_split("train")][-1] == "none" and len(personas_for_split("train")) == 126
    assert len(personas_for_split("eval")) == 57 and not {p.id for p in personas_for_split("eval")} & train
    roles = {p.id for p in personas_for_split("test")} - {"none"}
    assert len(personas_for_split("test")) == 32 and not roles & ({p.id for p in personas_for_split("eval")} | train)


def test_lottery_set_has_seven_roles_and_none_has_no_system_message():
    ids = [p.id for p in LOTTERY]
    assert len(ids) == 7 and len(set(ids)) == 7 and "none" in ids
    assert {"kindergartener", "carpenter"} <= set(ids)
    experts = set(ids) - {"kindergartener", "carpenter", "none"}
    assert len(experts) == 4
    problem = make_problems(1)[0]
    for persona in LOTTERY:
        messages = math_messages(problem, persona)
        if persona.id == "none":
            assert [m["role"] for m in messages] == ["user"]
        else:
            assert [m["role"] for m in messages] == ["system", "user"]
            assert re.fullmatch(r"You are an? [a-z][^.]*\.", messages[0]["content"]), messages[0]["content"]
    assert PromptPersona("pg-x", "A 30-year-old baker.").system_prompt == "You are a 30-year-old baker."
    with pytest.raises(ValueError):
        PromptPersona("x", "")
    with pytest.raises(ValueError):
        PromptPersona("none", "someone")


# --- gymnasium compliance and seeding ---------------------------------------------------------


def test_registered_and_check_env_passes():
    assert gymnasium.spec(ENV_ID).max_episode_steps == 1
    env = gymnasium.make(ENV_ID)
    check_env(env.unwrapped)
    env.close()
    check_env(PersonaMathEnv(problems=load_gsm8k("test")[:20], personas=LOTTERY))


def _rollout(seed, answer="#### 7", **kwargs):
    env = gymnasium.make(ENV_ID, **kwargs)
    obs, info = env.reset(seed=seed)
    return (obs, info), env.step(answer)


def test_seeded_determinism_and_episode_structure():
    assert _rollout(11) == _rollout(11)
    (obs, info), (obs2, reward, terminated, truncated, info2) = _rollout(11)
    assert obs2 == obs and terminated is True and reward in (0.0, 1.0)  # (the TimeLimit also sets truncated)
    assert info["label"]["correct"] is None and info2["label"]["correct"] is (reward == 1.0)
    assert info2["label"]["persona"] == info["label"]["persona"] and info2["parsed"] == 7.0
    assert obs[-1]["role"] == "user" and obs[-1]["content"].endswith(INSTRUCTION)
    starts = {json.dumps(_rollout(s)[0][0]) for s in range(30)}
    assert len(starts) > 25


def test_correct_answer_feedback_and_label():
    env = PersonaMathEnv()
    _, info = env.reset(seed=4)
    problem = env.problem
    _, reward, _, _, info = env.step(f"Let me think.\n#### {problem.answer}")
    assert reward == 1.0 and info["label"] == {"persona": env.persona.id, "problem": problem.id, "correct": True}
    assert f"The correct final answer is {problem.answer}." in info["feedback"] and info["answer"] == problem.answer
    assert problem.solution.splitlines()[-1] in info["feedback"]
    gsm = PersonaMathEnv(problems=load_gsm8k("train")[:3])
    gsm.reset(seed=0, options={"problem": "gsm8k-train-0"})
    _, reward, _, _, info = gsm.step("I am not sure.")
    assert reward == 0.0 and info["parsed"] is None and info["label"]["correct"] is False
    assert "Natalia sold 48/2 = 24 clips in May." in info["feedback"] and "<<" not in info["feedback"]
    bonus = PersonaMathEnv(format_bonus=0.25)
    bonus.reset(seed=4)
    assert bonus.step("#### -1")[1] == 0.25


def test_options_override_draws_and_leave_the_rest():
    env = PersonaMathEnv()
    _, base = env.reset(seed=3, options={"persona": "pg-0"})
    _, info = env.reset(seed=3, options={"persona": "none"})
    assert info["label"]["problem"] == base["label"]["problem"] and info["label"]["persona"] == "none"
    obs, info = env.reset(seed=3, options={"problem": 5, "persona": "pg-0"})
    assert info["label"] == {"persona": "pg-0", "problem": env.problems[5].id, "correct": None}
    obs, info = env.reset(seed=3, options={"problem": env.problems[9].id,
                                           "persona": {"id": "pirate", "description": "a retired pirate"}})
    assert obs[0]["content"] == "You are a retired pirate." and info["label"]["persona"] == "pirate"
    assert obs in env.observation_space
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(seed=3, options={"level": 2})
    with pytest.raises(ValueError, match="persona"):
        env.reset(seed=3, options={"persona": "pg-3"})  # held out: not in the training pool
    with pytest.raises(ValueError, match="problem"):
        env.reset(seed=3, options={"problem": 10**6})


def test_persona_none_probability():
    env = PersonaMathEnv()
    share = np.mean([env.reset(seed=s)[1]["label"]["persona"] == "none" for s in range(400)])
    assert 0.15 < share < 0.35
    always = PersonaMathEnv(persona_none_prob=1.0)
    never = PersonaMathEnv(persona_none_prob=0.0)
    for s in range(30):
        obs, info = always.reset(seed=s)
        assert info["label"]["persona"] == "none" and [m["role"] for m in obs] == ["user"]
        assert never.reset(seed=s)[1]["label"]["persona"] != "none"
    only_none = PersonaMathEnv(personas=[NO_PERSONA], persona_none_prob=0.0)
    assert only_none.reset(seed=0)[1]["label"]["persona"] == "none"


@pytest.mark.parametrize("problems", ["generated", "gsm8k"])
def test_reference_answer_and_solution_never_appear_in_observations(problems):
    pool = load_gsm8k("test")[:300] if problems == "gsm8k" else None
    env = PersonaMathEnv(problems=pool, personas=[*persona_pools().train, *LOTTERY])
    for seed in range(300):
        obs, _ = env.reset(seed=seed)
        problem = env.problem
        assert obs == math_messages(problem, env.persona)  # built from the question and persona only
        obs_after = env.step("#### 1")[0]
        for o in (obs, obs_after):
            text = "\n".join(m["content"] for m in o)
            assert not re.search(r"####\s*\d", text)
            assert clean_solution(problem.solution) not in text
            if problems == "generated":
                assert problem.answer not in NUMBER.findall(o[-1]["content"]), (seed, problem.question)
            else:
                assert all(line not in text for line in clean_solution(problem.solution).splitlines() if len(line) > 20)


# --- action validation ---------------------------------------------------------------------------


def test_long_action_is_cut_surrogates_replaced_and_misuse_raises():
    env = PersonaMathEnv(max_action_chars=50)
    env.reset(seed=0)
    _, _, _, _, info = env.step("#### 3 " + "and more " * 20)
    assert info["truncated_action"] is True and info["parsed"] == 3.0
    env.reset(seed=0)
    _, _, _, _, info = env.step("#### 3 \ud83d")
    assert info["truncated_action"] is False and "?" in env.render()
    with pytest.raises(RuntimeError, match="ended"):
        env.step("#### 3")
    with pytest.raises(RuntimeError, match="reset"):
        PersonaMathEnv().step("#### 3")


# --- batched path --------------------------------------------------------------------------------


def test_batch_satisfies_the_contract_and_checks_its_input():
    """(That a batch plays like single envs is tests/envs/test_batches.py.)"""
    from envs.tasks.base import EpisodeBatch

    n = 6
    batch = PersonaMathBatch(n)
    assert isinstance(batch, EpisodeBatch) and batch.num_envs == n
    batch.reset(seed=70)
    actions = [f"#### {i}" for i in range(n)]
    _, _, term_b, trunc_b, _ = batch.step(actions)
    assert term_b.all() and not trunc_b.any()
    with pytest.raises(RuntimeError, match="ended"):
        batch.step(actions)
    options = [{"persona": "none"}] * n
    _, infos = batch.reset(seed=[5] * n, options_list=options)
    assert len({json.dumps(i) for i in infos}) == 1 and infos[0]["label"]["persona"] == "none"
    batch.reset(seed=0)
    with pytest.raises(ValueError, match="episode 2"):
        batch.step(["#### 1", "#### 2", "", "#### 4", "#### 5", "#### 6"])
    with pytest.raises(ValueError):
        batch.step("#### 1")
    batch.close()


def test_states_round_trip_through_json_and_pickle_and_continue_identically():
    kwargs = dict(problems=make_problems(40, 3), personas=LOTTERY)
    batch = PersonaMathBatch(4, **kwargs)
    obs, _ = batch.reset(seed=9)
    states = batch.get_states()
    actions = ["#### 12", "#### 3", "no idea", "#### 40"]
    stepped = batch.step(actions)
    done_states = batch.get_states()
    following = batch.reset()  # no new seed: each episode's random stream goes on
    for restored in (json.loads(json.dumps(states)), pickle.loads(pickle.dumps(states))):
        other = PersonaMathBatch(4, **kwargs)
        assert other.set_states(restored) == obs
        assert _same(other.step(actions), stepped)
        assert other.reset() == following
    ended = PersonaMathBatch(4, **kwargs)
    ended.set_states(json.loads(json.dumps(done_states)))
    assert [env.label for env in ended.envs] == [i["label"] for i in stepped[4]]
    with pytest.raises(RuntimeError, match="ended"):
        ended.step(["#### 1"] * 4)


def _same(a, b):
    return (a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2]) and np.array_equal(a[3], b[3])
            and a[4] == b[4])


def test_for_split_builds_disjoint_train_and_eval_batches():
    train = PersonaMathBatch.for_split(2, "train", num_problems=50)
    evals = PersonaMathBatch.for_split(2, "eval", num_problems=50)
    assert not {p.id for p in train.envs[0].problems} & {p.id for p in evals.envs[0].problems}
    assert not {p.question for p in train.envs[0].problems} & {p.question for p in evals.envs[0].problems}
    assert {p.id for p in evals.envs[0].personas} == {p.id for p in persona_pools().held_out} | {p.id for p in LOTTERY}
    gsm = PersonaMathBatch.for_split(3, "eval", task="gsm8k", gsm8k_max_steps=1, persona_none_prob=1.0)
    _, infos = gsm.reset(seed=0)
    assert all(i["source"] == "gsm8k-test" and i["label"]["persona"] == "none" for i in infos)


# --- the measuring script -------------------------------------------------------------------------


def test_math_accuracy_script_runs_end_to_end_on_the_tiny_model(tmp_path, capsys):
    script = load_script()
    out = tmp_path / "acc.json"
    result = script.main(["--model", "tiny-random", "--levels", "1", "2", "--num", "2", "--max-new-tokens", "3",
                          "--gsm8k-max-steps", "1", "--gsm8k-num", "1", "--personas", "none", "carpenter",
                          "--out", str(out)])
    assert [(r["task"], r["persona"], r["n"]) for r in result["rows"]] == [
        ("level 1", "none", 2), ("level 1", "carpenter", 2), ("level 2", "none", 2), ("level 2", "carpenter", 2),
        ("gsm8k-test <= 1 steps", "none", 1), ("gsm8k-test <= 1 steps", "carpenter", 1)]
    assert all(0.0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1.0 for r in result["rows"])
    assert len(json.loads(out.read_text())["answers"]) == 10
    assert "| level 1 | carpenter | 2 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.main(["--model", "tiny-random", "--personas", "nobody"])
