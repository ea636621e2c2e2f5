"""The LLM plug-ins and a training run against a real OpenAI-compatible server: ``transformers serve``.

One server on the embedded SmolLM2-135M runs for the whole module, on a free loopback port, started
and stopped by :class:`envs.chat.server.LocalServer` (which waits for ``/health`` and signals its own
pid). Two tests kill it mid-run, as a crash would. Replies are kept short so the module takes
about two minutes; what a 135M model writes is often not valid JSON, so the tests check that every
reply was either parsed or fell back and was counted, not that the model judged well.
"""

from __future__ import annotations

import json
import threading
import time

import gymnasium
import pytest
from transformers import AutoTokenizer

import algorithms.opsd as opsd
from algorithms.checkpoint import load_checkpoint
from algorithms.trainer import CHECKPOINT
from envs.chat import ChatClientError, OpenAIChatClient
from envs.chat.server import LocalServer, free_port, serving_folder
from envs.judges import LLMPairwiseJudge, LLMPersonaCritic, LLMPersonaEvalJudge, LLMRubricExtractor, RubricQuery
from envs.judges.pairwise import PREFERENCE_LEVELS, PairwiseComparison
from envs.students import ChatModelStudent
from envs.tasks.tutoring import EMPTY_TURN
from tests.envs.test_persona_judges import ANSWERS, PROMPT, RECORD, _query

pytestmark = [pytest.mark.real_server, pytest.mark.xdist_group("real_server")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "serve.log"
    srv = LocalServer(serving_folder(), threads=1, log_path=log)
    srv.start()
    yield srv
    srv.stop()


def client(server, **overrides) -> OpenAIChatClient:
    settings = dict(model="auto", base_url=server.base_url, api_key_env=None, cache_path=None, timeout=120,
                    max_retries=2)
    return OpenAIChatClient(**{**settings, **overrides})


def student_run(server, opsd_config, *extra):
    """A tiny policy taught by the LLM student behind the server (the ``server`` chat preset, its port changed)."""
    return opsd_config("student=chat_model", "chat@student.client=server", f"student.client.base_url={server.base_url}",
                       "student.client.cache_path=null", "student.client.timeout=120", "student.max_tokens=16",
                       "algorithm.steps=3", "algorithm.eval.enabled=false", "algorithm.eval.every=0", *extra)


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def kill_after_first_step(server, run_dir, *, restart: bool) -> threading.Thread:
    """Kills the server (SIGKILL to its pid) once the run has logged step 1, then starts it again if asked."""
    def watch():
        history = run_dir / "history.jsonl"
        while not (history.is_file() and history.read_text().count("\n") >= 1):
            time.sleep(0.05)
        server.kill()
        if restart:
            server.start()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_the_served_model_is_found_and_each_startup_fault_has_one_clear_message(server, opsd_config, tmp_path):
    found = client(server)
    found.check()
    assert found.model == server.model  # model=auto: the one model the server lists (its folder's path)

    with pytest.raises(ChatClientError, match=r"'no-such-model' is not served by .*it offers: .*-checkpoint"):
        client(server, model="no-such-model").check()
    with pytest.raises(ChatClientError, match="HTTP 404.*usually ends in /v1"):
        client(server, model=server.model, base_url=server.base_url.removesuffix("/v1") + "/api").check()
    with pytest.raises(ChatClientError, match="Cannot reach the chat server.*python -m envs.chat.server"):
        client(server, base_url=f"http://127.0.0.1:{free_port()}/v1").check()

    cfg = student_run(server, opsd_config, "student.client.model=no-such-model")
    with pytest.raises(ChatClientError, match="not served by"):
        opsd.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()  # stopped while building, before any step


def test_an_llm_student_plays_a_tutoring_episode(server):
    chat = client(server)
    env = gymnasium.make("pluralgym/Tutoring-v0", student=ChatModelStudent(client=chat, max_tokens=24),
                         max_episode_steps=2)
    obs, info = env.reset(seed=0)  # the student already answers the opening turn
    topic = info["topic"]
    for turn in (f"Let me tell you one thing about {topic}.", f"What do you already know about {topic}?"):
        obs, reward, terminated, truncated, info = env.step(turn)
        assert info["feedback"].strip() and info["feedback"] != "..."  # a real reply, not the empty-reply stand-in
        assert obs[-1] == {"role": "student", "content": info["feedback"]}
    assert terminated or truncated
    assert chat.stats.failures == 0 and chat.stats.requests >= 3


def test_rubric_extractor_critic_and_span_judge_parse_or_count_every_reply(server):
    chat = client(server)
    rubric = LLMRubricExtractor(client=chat, cache_path=None, max_tokens=120).extract_batch([RubricQuery(RECORD, PROMPT)])
    query = _query("culinary", ANSWERS["culinary"], rubric[0].criteria["culinary"])
    critic, judge = LLMPersonaCritic(client=chat, max_tokens=48), LLMPersonaEvalJudge(client=chat, max_tokens=96)
    critique, judged = critic.critique_batch([query])[0], judge.judge_batch([query])[0]

    assert [p.counter.calls for p in (critic, judge)] == [1, 1]
    assert critic.counter.fallbacks == critique.fallback and judge.counter.fallbacks == judged.fallback
    assert chat.stats.fallbacks == rubric[0].fallback + critique.fallback + judged.fallback  # each one counted
    assert chat.stats.failures == 0 and critique.text.strip()
    assert all(span in ANSWERS["culinary"] for span in judged.good_spans + judged.bad_spans)  # verbatim or dropped
    assert all(1 <= len(c) <= 4 for c in rubric[0].criteria.values())


def test_the_pairwise_judge_compares_one_pair(server):
    chat = client(server)
    judge = LLMPairwiseJudge(client=chat, max_tokens=48, seed=0)
    comparison = PairwiseComparison("volcanoes", [], "Magma rises through cracks in the crust and erupts.",
                                    "Volcanoes are nice.")
    [score] = judge.compare_batch([comparison])
    assert score in PREFERENCE_LEVELS and judge.counter.calls == 1 and chat.stats.failures == 0
    # a reply that is not JSON falls back in the client; JSON without a verdict falls back in the judge
    assert chat.stats.fallbacks <= judge.counter.fallbacks <= 1 and (score == 0 or not judge.counter.fallbacks)


def test_a_server_killed_mid_run_and_restarted_costs_retries_not_the_run(server, opsd_config, tmp_path, monkeypatch):
    """Also: only the policy's own sampled tokens carry loss; the student's replies are prompt context."""
    seen, distilled = [], []
    learn, distill = opsd.OPSDTrainer.learn, opsd.distill_step
    monkeypatch.setattr(opsd.OPSDTrainer, "learn", lambda self, result: seen.append(result) or learn(self, result))
    monkeypatch.setattr(opsd, "distill_step", lambda policy, teacher, optimizer, batch, **kw:
                        distilled.append(batch) or distill(policy, teacher, optimizer, batch, **kw))
    pid = server.pid
    run_dir = tmp_path / "run"
    watcher = kill_after_first_step(server, run_dir, restart=True)
    opsd.train(student_run(server, opsd_config, "student.client.max_retries=20"), run_dir)  # ~2 min of backoff
    watcher.join(timeout=5)

    history = rows(run_dir)
    assert [r["step"] for r in history] == [1, 2, 3] and server.pid != pid
    assert sum(r["chat/retries"] for r in history[1:]) >= 1 and all(r["chat/failures"] == 0 for r in history)

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "policy")
    for step, (result, batch) in enumerate(zip(seen, distilled)):
        gen = result.generation
        assert batch.completion_ids.tolist() == gen.completion_ids.tolist()  # the loss sees the sampled turn only
        assert batch.completion_mask.tolist() == gen.completion_mask.tolist()
        for i, text in enumerate(result.actions):
            sampled = tokenizer.decode(gen.completion_ids[i][gen.completion_mask[i].bool()],
                                       skip_special_tokens=True)
            assert text == EMPTY_TURN or sampled.strip().startswith(text)  # trimmed for the student, never added to
            assert len(result.feedback[i]) < 12 or result.feedback[i] not in sampled  # no student words are trained
        # a continuing episode's prompt holds the student's last reply: context, never loss
        previous = dict(zip(seen[step - 1].uids, seen[step - 1].feedback)) if step else {}
        prompts = tokenizer.batch_decode(gen.prompt_ids, skip_special_tokens=True)
        continuing = [(previous[uid], prompt) for uid, turn, prompt in zip(result.uids, result.turn_index, prompts)
                      if turn > 1]
        assert all(reply in prompt for reply, prompt in continuing)
        assert len(continuing) == (len(result.uids) if step == 1 else 0)  # turns_per_episode=2 in the quick preset


def test_a_server_that_never_comes_back_stops_the_run_with_a_checkpoint_to_resume(server, opsd_config, tmp_path,
                                                                                 capsys):
    run_dir = tmp_path / "run"
    cfg = student_run(server, opsd_config, "student.client.max_retries=1")
    watcher = kill_after_first_step(server, run_dir, restart=False)
    with pytest.raises(ChatClientError, match="connection error"):
        opsd.train(cfg, run_dir)
    watcher.join(timeout=5)
    out = capsys.readouterr().out
    assert "stopped in step 2" in out and f"resume={run_dir}" in out
    assert load_checkpoint(run_dir / CHECKPOINT)["step"] == 1 and len(rows(run_dir)) == 1

    server.start()
    opsd.train(cfg, run_dir, resume=True)
    assert [r["step"] for r in rows(run_dir)] == [1, 2, 3]
