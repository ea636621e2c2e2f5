"""PersonaCriticEnv: Gymnasium compliance, seeding, hidden information, teacher prompts, states, batching."""

from __future__ import annotations

import json
import pickle

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the ids)
from envs.chat import OpenAIChatClient
from envs.data.persona import FACET_LABELS, FACETS, compose_records, load_split
from envs.judges import (
    HeuristicPersonaCritic,
    HeuristicPersonaEvalJudge,
    HeuristicRubricExtractor,
    LLMPersonaCritic,
    LLMPersonaEvalJudge,
    LLMRubricExtractor,
)
from envs.judges.persona_llm import CRITIC_SYSTEM, JUDGE_SYSTEM, RUBRIC_SYSTEM
from envs.persona import (
    PersonaCriticBatch,
    PersonaCriticEnv,
    parse_scaffold,
    student_messages,
    teacher_messages,
)
from tests.chat_server import MODEL, Reply

ENV_ID = "pluralgym/PersonaCritic-v0"
RESPONSES = [
    "I'd start with the basics and build from there, one small step at a time.",
    "As someone who loves to cook, I treat this like a recipe: gather everything first, then follow the steps.",
    "Think of it like training for a marathon: steady miles, rest days, and a clear race plan.",
    "Honestly? Put on some jazz, grab a sketchbook and take it slowly.",
]


class Counting:
    """Wraps a plug-in and records the size of every batched call."""

    def __init__(self, inner):
        self.inner, self.sizes, self.seen = inner, [], []

    def _record(self, items):
        self.sizes.append(len(items))
        self.seen.extend(items)

    def extract_batch(self, queries):
        self._record(queries)
        return self.inner.extract_batch(queries)

    def critique_batch(self, queries):
        self._record(queries)
        return self.inner.critique_batch(queries)

    def judge_batch(self, queries):
        self._record(queries)
        return self.inner.judge_batch(queries)


def _texts(obs):
    return [m["content"] for m in obs]


# --- gymnasium compliance --------------------------------------------------------------------------


def test_registered_with_one_step():
    assert gymnasium.spec(ENV_ID).max_episode_steps == 1


def test_check_env_passes(capsys):
    env = gymnasium.make(ENV_ID)
    check_env(env.unwrapped)
    env.close()


def test_spaces_and_observation_shape():
    env = PersonaCriticEnv()
    obs, info = env.reset(seed=0)
    assert obs in env.observation_space and [m["role"] for m in obs] == ["system", "user"]
    assert all(f"## {FACET_LABELS[f]}\n" in obs[0]["content"] for f in FACETS)
    record = next(r for r in env.records if r.id == info["label"]["record"])
    request = next(r for r in env.requests if r.uid == info["label"]["request"])
    assert obs == student_messages(record, request) and obs[1]["content"] == request.prompt
    assert parse_scaffold(obs) == record.facets
    assert "Hello" in env.action_space and "" not in env.action_space and env.action_space.sample().strip()


def test_rollout_through_make_is_seeded_and_ends_after_one_response():
    def rollout(seed):
        env = gymnasium.make(ENV_ID)
        first = env.reset(seed=seed)
        return first, env.step(RESPONSES[seed % len(RESPONSES)])

    a, b = rollout(5), rollout(5)
    assert a == b
    (obs, info), (obs2, reward, terminated, truncated, info2) = a
    assert terminated is True and truncated is True  # the env's end plus the registered one-step limit
    assert obs2 == obs and reward == info2["q"] and -1 < reward < 1
    assert info2["label"] == info["label"] and set(info2["label"]) == {"persona", "record", "request"}
    assert isinstance(info2["feedback"], str) and info2["feedback"] and not info2["critique_fallback"]
    labels = {json.dumps(PersonaCriticEnv().reset(seed=s)[1]["label"]) for s in range(30)}
    assert len(labels) > 25


# --- hidden information ------------------------------------------------------------------------------


def test_hidden_facet_rubric_and_critique_never_reach_an_observation():
    env, batch = PersonaCriticEnv(), PersonaCriticBatch(3)
    hidden, observations, facets = set(), [], set()
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        facets.add(info["label"]["persona"])
        observations.append(obs)
        for facet in FACETS:  # the observation does not depend on the focal facet or the rubric flag
            for rubric in (True, False):
                assert env.reset(seed=seed, options={"facet": facet, "rubric": rubric})[0] == obs
        obs, info = env.reset(seed=seed)
        hidden.update(info["criteria"])
        quoting = " ".join([RESPONSES[seed % 4], *info["criteria"], *sorted(hidden)[:3], info["label"]["persona"]])
        step_obs, _, _, _, step_info = env.step(quoting)
        hidden.add(step_info["feedback"])
        observations.append(step_obs)
        assert step_obs == obs
        batch.reset(seed=seed)
        moved = json.loads(json.dumps(batch.get_states()))
        observations += PersonaCriticBatch(3).set_states(moved)
        _, _, _, _, infos = batch.step([quoting] * 3)
        hidden.update(i["feedback"] for i in infos)
        observations += PersonaCriticBatch(3).set_states(batch.get_states())
    assert facets == set(FACETS) and len(hidden) > 40
    for obs in observations:
        for text in _texts(obs):
            leaked = [h for h in hidden if h in text]
            assert not leaked, f"hidden text in an observation: {leaked[:2]}"


def test_teacher_messages_swap_only_the_system_message():
    env = PersonaCriticEnv()
    obs, info = env.reset(seed=2)
    critique = env.step(RESPONSES[1])[4]["feedback"]
    facets = parse_scaffold(obs)
    for facet in FACETS:
        msgs = teacher_messages(obs, facet, critique)
        assert msgs[1:-1] == obs[1:] and msgs[0]["role"] == msgs[-1]["role"] == "system"
        system = msgs[0]["content"] + "\n" + msgs[-1]["content"]
        assert system.count("## ") == 1 and f"## {FACET_LABELS[facet]}\n{facets[facet]}" in msgs[0]["content"]
        assert critique in msgs[-1]["content"]  # right before the answer
        assert all(facets[f] not in system for f in FACETS if facets[f] != facets[facet])
        assert not any(c in system for c in info["criteria"])
    assert teacher_messages(obs, "Culinary", "x") == teacher_messages(obs, "culinary", "x")
    # without feedback: the same prompt less the critique message (the with/without-feedback ablation)
    assert teacher_messages(obs, "arts", None) == teacher_messages(obs, "arts", critique)[:-1]
    from envs.tasks.persona import PersonaTask

    off = PersonaTask(None, None, None, teacher_feedback=False)
    on = PersonaTask(None, None, None)
    persona = on.personas[2]
    assert off.teacher_messages(obs, persona, critique) == on.teacher_messages(obs, persona, None)
    assert on.teacher_messages(obs, persona, critique)[-1]["content"].count(critique) == 1
    with pytest.raises(ValueError, match="persona scaffold"):
        parse_scaffold(teacher_messages(obs, "arts", "x"))
    with pytest.raises(ValueError, match="facet"):
        teacher_messages(obs, "music", "x")


# --- states ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", [pickle, json])
def test_states_round_trip_and_continue_identically(codec):
    here = PersonaCriticBatch(4)
    obs_here, _ = here.reset(seed=11, options_list=[None, {"rubric": False}, None, {"facet": "travel"}])
    states = codec.loads(codec.dumps(here.get_states()))
    assert [s["rubric"] for s in states] == [True, False, True, True] and states[1]["criteria"] == []
    assert all(s["criteria"] for i, s in enumerate(states) if i != 1) and not any(s["done"] for s in states)
    # a worker with other records and requests still continues: states carry the record and the request
    there = PersonaCriticBatch(4, records=compose_records(2, seed=9), requests=load_split("eval").requests[:2])
    assert there.set_states(states) == obs_here and there.labels == here.labels
    ours, theirs = here.step(RESPONSES), there.step(RESPONSES)
    assert ours[0] == theirs[0] and ours[1].tolist() == theirs[1].tolist() and ours[4] == theirs[4]
    done = here.get_states()
    assert all(s["done"] for s in done)
    assert json.loads(json.dumps(done)) == done
    there.set_states(done)
    with pytest.raises(RuntimeError, match="call reset"):
        there.step(RESPONSES)
    with pytest.raises(ValueError, match="expected 4 episode states"):
        there.set_states(done[:2])


def test_state_carries_the_random_generator():
    a, b = PersonaCriticEnv(), PersonaCriticEnv()
    a.reset(seed=21)
    b.set_state(json.loads(json.dumps(a.get_state())))
    assert a.reset()[1] == b.reset()[1]  # unseeded resets continue the same stream
    with pytest.raises(RuntimeError, match="reset"):
        PersonaCriticEnv().get_state()


# --- batching ----------------------------------------------------------------------------------------


def test_batch_makes_one_call_per_plugin_and_the_reward_judge_never_sees_the_rubric():
    """(That a batch plays like single envs is tests/envs/test_batches.py.)"""
    n = 5
    extractor, critic, judge = (Counting(HeuristicRubricExtractor()), Counting(HeuristicPersonaCritic()),
                                Counting(HeuristicPersonaEvalJudge()))
    batch = PersonaCriticBatch(n, critic=critic, rubric_extractor=extractor, reward_judge=judge)
    options = [None, {"rubric": False}, None, None, {"facet": "arts"}]
    batch.reset(seed=40, options_list=options)
    assert extractor.sizes == [n - 1]  # no rubric for the episode without one
    actions = [RESPONSES[i % len(RESPONSES)] for i in range(n)]
    _, _, _, _, infos = batch.step(actions)
    assert critic.sizes == [n] and judge.sizes == [n]
    assert critic.seen[1].criteria is None and critic.seen[0].criteria == tuple(infos[0]["criteria"])
    assert all(q.criteria is None for q in judge.seen)  # the reward judge never sees the rubric
    with pytest.raises(RuntimeError, match="reset"):
        batch.step(actions)


def test_batch_validates_every_action_before_stepping_any():
    batch = PersonaCriticBatch(3)
    batch.reset(seed=0)
    with pytest.raises(ValueError, match="episode 1"):
        batch.step(["Fine.", "   ", "Also fine."])
    with pytest.raises(ValueError, match="list of 3"):
        batch.step("one string")
    assert batch.step(["a b", "c d", "e f"])[2].all()


# --- options and actions -------------------------------------------------------------------------------


def test_options_pick_request_record_facet_and_rubric():
    env = PersonaCriticEnv()
    _, base = env.reset(seed=3)
    label = base["label"]
    request, record = env.requests[7], env.records[9]
    assert env.reset(seed=3, options={"request": request.uid})[1]["label"] == {**label, "request": request.uid}
    assert env.reset(seed=3, options={"request": 7})[1]["label"] == {**label, "request": request.uid}
    assert env.reset(seed=3, options={"record": record.id})[1]["label"] == {**label, "record": record.id}
    assert env.reset(seed=3, options={"record": np.int64(9)})[1]["label"] == {**label, "record": record.id}
    assert env.reset(seed=3, options={"facet": "Culinary"})[1]["label"] == {**label, "persona": "culinary"}
    _, info = env.reset(seed=3, options={"rubric": False})
    assert info["label"] == label and info["rubric"] is False and info["criteria"] == []
    assert env.step(RESPONSES[0])[4]["criteria"] == []
    assert PersonaCriticEnv(rubric=False).reset(seed=3)[1]["criteria"] == []
    for bad, match in [({"style": 1}, "unknown reset option"), ({"facet": "music"}, "facet"),
                       ({"request": 10_000}, "out of range"), ({"record": "nope"}, "record"),
                       ({"rubric": "yes"}, "rubric"), ({"request": True}, "request")]:
        with pytest.raises(ValueError, match=match):
            env.reset(seed=3, options=bad)


def test_long_and_broken_actions():
    env = PersonaCriticEnv(max_action_chars=50)
    env.reset(seed=0)
    assert env.step("word " * 40)[4]["truncated_action"] is True
    env.reset(seed=0)
    info = env.step("Cooking \ud83c with friends")[4]  # a lone surrogate
    json.dumps(info).encode("utf-8")
    assert info["truncated_action"] is False
    with pytest.raises(RuntimeError, match="one response per episode"):
        env.step("again")
    with pytest.raises(RuntimeError, match="reset"):
        PersonaCriticEnv().step("Hello")


def test_records_and_requests_from_plain_dicts_and_bad_lists():
    record = compose_records(1, seed=5)[0]
    request = {"uid": "u1", "cluster": "c", "prompt": "What should I cook tonight?"}
    env = PersonaCriticEnv(records=[record.to_dict()], requests=[request], render_mode="ansi")
    obs, info = env.reset(seed=0)
    assert info["label"]["record"] == record.id and obs[1]["content"] == request["prompt"]
    assert "What should I cook" in env.render() and "Critique" not in env.render()
    env.step("Something with sourdough.")
    assert "Critique" in env.render()
    with pytest.raises(ValueError, match="unique"):
        PersonaCriticEnv(records=[record, record])
    with pytest.raises(ValueError, match="at least one"):
        PersonaCriticEnv(requests=[])


# --- chat-model plug-ins against the loopback server ------------------------------------------------------


def _llm_batch(server, n):
    client = OpenAIChatClient(model=MODEL, base_url=server.url, api_key_env=None, timeout=2.0, max_retries=1,
                              max_workers=2, cache_path=None)
    return PersonaCriticBatch(n, critic=LLMPersonaCritic(client=client), reward_judge=LLMPersonaEvalJudge(client=client),
                              rubric_extractor=LLMRubricExtractor(client=client, cache_path=None)), client


def test_llm_plugins_drive_a_batch(server):
    rubric = json.dumps({f: [f"Mentions something only a {f} side would", "Uses its details"] for f in FACETS})
    answers = {RUBRIC_SYSTEM: rubric, CRITIC_SYSTEM: '{"critique": "Bring in more of the persona."}',
               JUDGE_SYSTEM: '{"critique": "ok", "good_spans": ["I treat this like a recipe"], "bad_spans": []}'}
    server.route = lambda body: Reply(answers[body["messages"][0]["content"]])
    batch, _ = _llm_batch(server, 3)
    _, infos = batch.reset(seed=0, options_list=[None, None, {"rubric": False}])
    assert server.count == 2 and infos[0]["criteria"] == ["Mentions something only a " + infos[0]["label"]["persona"]
                                                          + " side would", "Uses its details"]
    _, rewards, _, _, infos = batch.step(RESPONSES[1:])
    assert server.count == 2 + 3 + 3
    assert [i["feedback"] for i in infos] == ["Bring in more of the persona."] * 3
    assert rewards.tolist()[0] == pytest.approx(6 / 7) and rewards.tolist()[1:] == [0.0, 0.0]  # span only in answer 0
    critic_bodies = [b for b in server.chat_requests if b["messages"][0]["content"] == CRITIC_SYSTEM]
    assert sum("Mentions something only" in b["messages"][1]["content"] for b in critic_bodies) == 2


def test_llm_plugins_fall_back_on_malformed_json_inside_the_env(server):
    server.fallback = Reply('{"critique": ')
    batch, client = _llm_batch(server, 2)
    _, infos = batch.reset(seed=1)
    assert all(i["criteria"] for i in infos)  # the heuristic rubric stands in
    _, rewards, terminated, _, infos = batch.step(RESPONSES[:2])
    assert rewards.tolist() == [0.0, 0.0] and terminated.all()
    assert all(i["critique_fallback"] and i["judge_fallback"] for i in infos)
    assert batch.critic.counter.fallbacks == 2 and batch.reward_judge.counter.fallbacks == 2
    assert batch.rubric_extractor.counter.fallbacks == 2 and client.stats.fallbacks == 6
