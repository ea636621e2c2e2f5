"""One contract suite for every task, and the Gymnasium checks for every registered env id."""

import copy
import json
import pickle
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the ids)
from algorithms.components import build_task
from envs.chat import chat_counters
from envs.checks import check_turn
from envs.tasks import SPLITS, EpisodeBatch, Task
from tests.conftest import compose_config

TASKS = ["tutoring", "persona", "toy"]  # toy: a user's env from outside the package (tests/toy_task.py)
TOY_CONFIGS = Path(__file__).resolve().parents[1] / "toy_configs"
TOY_SEARCHPATH = f"hydra.searchpath=[file://{TOY_CONFIGS}]"
IDS = sorted(i for i in gymnasium.registry if i.startswith("pluralgym/"))


@pytest.fixture(scope="module", params=TASKS)
def task(request):
    return build_task(compose_config("opsd", f"env={request.param}", TOY_SEARCHPATH))


def actions_for(task, n, salt=""):
    return task.actions([f"Here is an answer {salt}{i}, with a detail or two about it." for i in range(n)])


def test_tutoring_turns_reach_the_student_up_to_their_last_full_sentence():
    cut = "Force is mass times acceleration. So if you push twice as"
    assert build_task(compose_config("opsd")).actions([cut, "  "]) == ["Force is mass times acceleration.", "Okay."]
    legacy = build_task(compose_config("opsd", "env.trim_cut_turns=false"))
    assert legacy.actions([cut]) == [cut]


def test_the_task_satisfies_the_contract(task):
    assert isinstance(task, Task)
    assert task.max_turns >= 1 and len(task.personas) >= 2
    assert len({p.name for p in task.personas}) == len(task.personas)


@pytest.mark.parametrize("split", SPLITS)
def test_every_split_gives_live_episodes_labelled_with_a_persona(task, split):
    batch = task.make_batch(3, split=split)
    assert isinstance(batch, EpisodeBatch) and batch.num_envs == 3
    obs, infos = batch.reset(seed=0)
    names = {p.name for p in task.personas}
    assert len(obs) == 3 and all(info["label"]["persona"] in names for info in infos)
    obs, rewards, terminated, truncated, infos = batch.step(actions_for(task, 3))
    assert rewards.shape == terminated.shape == truncated.shape == (3,)
    assert all(isinstance(info["feedback"], str) and info["feedback"] for info in infos)
    batch.close()


def test_eval_options_cover_every_persona_and_are_paired_across_calls(task):
    options = task.eval_options(len(task.personas))
    assert options == task.eval_options(len(task.personas))
    batch = task.make_batch(len(options), split="eval")
    _, infos = batch.reset(seed=1, options_list=options)
    assert {info["label"]["persona"] for info in infos} == {p.name for p in task.personas}


def test_states_round_trip_through_pickle_and_json_and_continue_identically(task):
    here = task.make_batch(4, split="train")
    obs, _ = here.reset(seed=7)
    if task.max_turns > 1:
        obs, *_ = here.step(actions_for(task, 4, "a"))
    states = here.get_states()
    restored = json.loads(json.dumps(states))
    assert pickle.loads(pickle.dumps(states)) == states == restored
    there = task.make_batch(4, split="train")
    assert there.set_states(restored) == obs
    if task.max_turns > 1:
        a = here.step(actions_for(task, 4, "b"))
        b = there.step(actions_for(task, 4, "b"))
        assert a[0] == b[0] and np.array_equal(a[1], b[1]) and [i["feedback"] for i in a[4]] == \
            [i["feedback"] for i in b[4]]


@pytest.mark.parametrize("overrides", [["env=tutoring", "env.teacher_feedback=true"], ["env=persona"]])
def test_the_teacher_prompt_differs_from_the_policys_only_in_system_text(overrides):
    task = build_task(compose_config("opsd", *overrides))  # with the feedback in the privileged block
    batch = task.make_batch(2, split="train")
    obs, _ = batch.reset(seed=3)
    _, _, _, _, infos = batch.step(actions_for(task, 2))
    for o, info in zip(obs, infos):
        policy = task.policy_messages(o)
        for persona in task.personas:
            teacher = task.teacher_messages(o, persona, info["feedback"])
            assert [m for m in teacher if m["role"] != "system"] == [m for m in policy if m["role"] != "system"]
            privileged = " ".join(m["content"] for m in teacher if m["role"] == "system")
            assert info["feedback"] in privileged and persona.label in privileged
            assert info["feedback"] not in " ".join(m["content"] for m in policy)


def test_the_default_teacher_prompt_leaves_the_reply_out_and_the_papers_adds_it():
    task = build_task(compose_config("opsd"))  # the default: the style cue, naming the episode's topic
    batch = task.make_batch(1)
    observations, _ = batch.reset(seed=0)
    obs = [*observations[0], {"role": "teacher", "content": "Hi."}, {"role": "student", "content": "Hello."}]
    persona = task.personas[1]
    block = task.teacher_messages(obs, persona, "Please just tell me!")[-1]["content"]
    described = persona.description.replace("{topic}", batch.envs[0].topic)
    assert persona.label in block and "just tell me" not in block and "{topic}" not in block
    assert described in block and described != persona.description
    paper = build_task(compose_config("opsd", "env.teacher_feedback=true"))
    full = paper.teacher_messages(obs, persona, "Please just tell me!")[-1]["content"]
    assert full.startswith(block[:-1]) and "Please just tell me!" in full  # the same block, plus the reply
    assert paper.teacher_messages(obs, persona, None)[-1]["content"] == block  # feedback=None: without it


def test_the_reaction_can_sit_before_the_style_cue_so_the_cue_stays_last():
    obs = [{"role": "system", "content": "x"}, {"role": "teacher", "content": "Hi."},
           {"role": "student", "content": "Hello."}]
    after = build_task(compose_config("opsd", "env.teacher_feedback=true"))
    before = build_task(compose_config("opsd", "env.teacher_feedback=true", "env.feedback_position=before_style"))
    persona = after.personas[0]
    late = after.teacher_messages(obs, persona, "Too long!")[-1]["content"]
    early = before.teacher_messages(obs, persona, "Too long!")[-1]["content"]
    assert sorted(late) == sorted(early) and late != early  # the same words, moved
    assert early.index("Too long!") < early.index(persona.label) and late.index("Too long!") > late.index(persona.label)
    assert early.endswith(persona.description.replace("{topic}", "") + ")")  # no topic in this observation
    # without feedback both orders give the same prompt
    assert before.teacher_messages(obs, persona, None) == after.teacher_messages(obs, persona, None)
    with pytest.raises(Exception, match="env.feedback_position='middle' is not one of"):
        build_task(compose_config("opsd", "env.feedback_position=middle"))


def test_the_reaction_can_be_framed_as_the_reply_to_an_earlier_try():
    obs = [{"role": "system", "content": "x"}, {"role": "teacher", "content": "Hi."},
           {"role": "student", "content": "Hello."}]
    hindsight = build_task(compose_config("opsd", "env.teacher_feedback=true"))
    retry = build_task(compose_config("opsd", "env.teacher_feedback=true", "env.feedback_framing=retry"))
    persona = hindsight.personas[1]
    plain = hindsight.teacher_messages(obs, persona, None)[-1]["content"]
    late = hindsight.teacher_messages(obs, persona, "Boring.")[-1]["content"]
    again = retry.teacher_messages(obs, persona, "Boring.")[-1]["content"]
    assert late == plain[:-1] + ' The student\'s actual reaction to that turn was: "Boring.")'
    assert again == plain[:-1] + ' An earlier try at this turn drew this reaction from the student: "Boring." ' \
                                 'Write a better turn.)'
    assert retry.teacher_messages(obs, persona, None)[-1]["content"] == plain  # no feedback: the same block
    before = build_task(compose_config("opsd", "env.teacher_feedback=true", "env.feedback_framing=retry",
                                       "env.feedback_position=before_style"))
    assert before.teacher_messages(obs, persona, "Boring.")[-1]["content"].index("earlier try") < plain.index("Ask")
    with pytest.raises(Exception, match="env.feedback_framing='later' is not one of"):
        build_task(compose_config("opsd", "env.feedback_framing=later"))


def test_a_topic_placeholder_in_a_tutoring_persona_becomes_the_episodes_topic():
    task = build_task(compose_config("opsd", "env.personas.1.description='Ask a question about {topic}.'"))
    batch = task.make_batch(2)
    observations, _ = batch.reset(seed=0)
    for obs, env in zip(observations, batch.envs):
        block = task.teacher_messages(obs, task.personas[1], "")[-1]["content"]
        assert f"Ask a question about {env.topic}." in block and "{topic}" not in block
    # an observation without the env's system message leaves the placeholder empty rather than failing
    bare = task.teacher_messages([{"role": "student", "content": "Hi."}], task.personas[1], "")[-1]["content"]
    assert "Ask a question about ." in bare


def test_step_metrics_and_chat_counters(task):
    texts = ["What do you think? Why?", "It is so."]
    metrics = task.step_metrics(texts, [{}, {}])
    assert all(len(values) == 2 for values in metrics.values())
    if "ask_share" in metrics:  # tutoring: the first turn asks, the second explains
        assert metrics["ask_share"] == [1.0, 0.0] and metrics["questions_per_turn"] == [2.0, 0.0]
    assert chat_counters(*task.chat_plugins()) == {}  # the offline plug-ins talk to no chat model


# ---- every registered env id ---------------------------------------------------------------------


@pytest.mark.parametrize("env_id", IDS)
def test_check_env_passes(env_id):
    env = gymnasium.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", IDS)
def test_seeded_rollouts_are_deterministic(env_id):
    def rollout(seed):
        env = gymnasium.make(env_id)
        obs, info = env.reset(seed=seed)
        trace = [copy.deepcopy(obs), info["label"]]
        for k in range(3):
            obs, reward, terminated, truncated, info = env.step(f"Turn {k}: let me tell you about it.")
            trace += [copy.deepcopy(obs), float(reward), info["feedback"]]
            if terminated or truncated:
                break
        return trace

    assert rollout(11) == rollout(11)
    assert rollout(11) != rollout(12)


@pytest.mark.parametrize("overrides", [["env=tutoring", "env.teacher_feedback=true"], ["env=persona"]])
def test_feedback_never_reaches_the_policy_prompt_it_answers_fuzzed(overrides):
    """Random turns over several seeds: the feedback to a turn is never in the prompt that wrote the turn."""
    task = build_task(compose_config("opsd", *overrides))
    rng = np.random.default_rng(0)
    words = "the a why cells stars money vote energy is are because what do you think ? . , maybe so".split()
    for seed in range(4):
        batch = task.make_batch(3, split="train")
        obs, _ = batch.reset(seed=seed)
        for _ in range(task.max_turns):
            texts = [" ".join(rng.choice(words, size=int(rng.integers(3, 25)))) for _ in range(3)]
            prompts = [task.policy_messages(o) for o in obs]
            obs, _, terminated, truncated, infos = batch.step(task.actions(texts))
            for prompt, after, info in zip(prompts, obs, infos):
                if task.max_turns == 1:  # single turn: the critique is never shown to the policy at all
                    assert info["feedback"] not in " ".join(m["content"] for m in prompt)
                else:  # the reply joins the dialogue only after the turn it answers
                    later = task.policy_messages(after)
                    assert later[-1]["content"] == info["feedback"] and later[:-2] == prompt
            if (terminated | truncated).all():
                break


def test_the_persona_pool_is_an_optional_capability_checked_by_type():
    from envs.tasks import PersonaPool, PersonaTask, TutoringTask
    from envs.tasks.math import MathTask

    assert issubclass(MathTask, PersonaPool)  # RLVR mixes its personas into the prompts
    assert not issubclass(TutoringTask, PersonaPool) and not issubclass(PersonaTask, PersonaPool)


def test_a_toy_task_from_the_tests_folder_trains_with_no_trainer_change(tmp_path):
    """One task file and one YAML outside the package are a new env: OPSD trains and evaluates it."""
    import algorithms.opsd as opsd
    from tests.conftest import TINY_OPSD, compose_config
    from tests.toy_task import ToyBatch, ToyTask

    task = ToyTask()
    assert isinstance(task, Task) and isinstance(task.make_batch(2), EpisodeBatch)
    cfg = compose_config("opsd", *TINY_OPSD, "env=toy", TOY_SEARCHPATH, "algorithm.contrast=null",
                         "algorithm.turns_per_episode=1", "algorithm.eval.turns=1")
    summary = opsd.train(cfg, tmp_path / "run")
    assert summary["step"] == 2 and summary["finished"]
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert set(report["report"]["rows"]) == {"head_loud", "head_quiet", "blend", "base"}
    assert {r["driver"] for r in report["records"]} == set(report["report"]["rows"])
    assert ToyBatch.__module__ == "tests.toy_task"  # nothing of it lives in the package


def test_tutoring_turn_checks_read_each_turn_against_its_own_topic():
    task = build_task(compose_config("opsd"))
    batch = task.make_batch(2, split="eval")
    options = task.eval_options(2, split="eval")[::2]  # two different topics
    obs, _ = batch.reset(seed=0, options_list=options)
    topics = [o["topic"] for o in options]
    turns = ["How about asking the student what they know?", f"What do you already know about {topics[1]}?"]
    checks = task.turn_checks(obs, turns, [{}, {}])
    assert checks["meta_talk"] == [1.0, 0.0] and checks["asks_about_lesson"][0] == 0.0
    for k, (o, turn, topic) in enumerate(zip(obs, turns, topics)):  # the same rules as the report's checks
        expected = check_turn(turn, topic)
        assert checks["asks_about_lesson"][k] == float(expected.asks_about_lesson)
        assert checks["lesson_content"][k] == float(expected.lesson_content)


def test_persona_turn_checks_put_the_focal_facet_against_the_others():
    from envs.data.persona import FACETS

    class Scores:  # each facet's score, then none: the lifts over no persona are 1, 2, 3, 4, 5 in FACETS order
        def candidate_scores(self, items):
            self.items = list(items)
            return [np.array([1.0, 2.0, 3.0, 4.0, 5.0, 0.0]) for _ in items]

    task = build_task(compose_config("opsd", "env=persona"))
    task.attribution = Scores()
    batch = task.make_batch(2, split="eval")
    options = [{**o, **task.persona_options(f)} for o, f in zip(task.eval_options(2, split="eval"),
                                                                  (FACETS[0], FACETS[-1]))]
    obs, infos = batch.reset(seed=0, options_list=options)
    labels = [info["label"] for info in infos]
    checks = task.turn_checks(obs, ["an answer", "another answer"], labels)
    assert checks["own_facet_first"] == [0.0, 1.0]  # the last facet has the largest lift
    assert checks["own_lift"] == [1.0, 5.0]
    assert checks["own_lift_gap"] == [1.0 - 3.5, 5.0 - 2.5]
    item = task.attribution.items[0]  # the request without the persona scaffold, and every facet's text
    assert item.answer == "an answer" and all(m["role"] != "system" for m in item.messages)
    assert len(item.candidates) == len(FACETS) - 1
    task.attribution = None
    assert task.turn_checks(obs, ["an answer", "another answer"], labels) == {}
