"""A trainer with LLM judges behind a faulty OpenAI-compatible server: failures are counted, logged and acted on."""

import json

import pytest

import algorithms.opsd as opsd
from algorithms.trainer import ChatHealthError
from envs.chat import ChatClientError
from tests.chat_server import MODEL, Reply

GOOD = '{"critique": "fine", "labels": ["good"]}'


def llm_judges(server, tmp_path, *extra):
    return ["judge=llm", "chat@judge.client=openai", f"judge.client.base_url={server.url}",
            "judge.client.api_key_env=null", f"judge.client.model={MODEL}", "judge.client.max_retries=1",
            f"judge.client.cache_path={tmp_path / 'chat.sqlite'}", "algorithm.eval.enabled=false", *extra]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_unusable_judge_replies_are_counted_warned_about_and_never_replayed(server, tmp_path, opsd_config):
    server.fallback = Reply("I would rather not grade this.")
    with pytest.warns(UserWarning, match="chat-model replies were unusable"):
        opsd.train(opsd_config(*llm_judges(server, tmp_path)), tmp_path / "bad")
    history = rows(tmp_path / "bad")
    assert [r["chat/fallbacks"] for r in history] == [4, 4]  # every judged turn fell back to "neutral"
    assert all(r["chat/fallback_rate"] == 1.0 and r["chat/requests"] == 4 for r in history)
    assert all(r[f"env/reward_{p}"] == 0.0 for r in history for p in ("direct", "interactive"))
    summary = json.loads((tmp_path / "bad" / "summary.json").read_text())
    assert summary["chat"]["fallbacks"] == 8 and summary["chat"]["requests"] == 8

    server.fallback = Reply(GOOD)  # the server is healthy again: nothing unusable was cached
    opsd.train(opsd_config(*llm_judges(server, tmp_path)), tmp_path / "good")
    history = rows(tmp_path / "good")
    assert [r["chat/requests"] for r in history] == [4, 4] and all(r["chat/fallbacks"] == 0 for r in history)
    assert all(r["env/reward_direct"] == 1.0 for r in history)


def test_failed_requests_are_counted_and_can_stop_the_run(server, tmp_path, opsd_config):
    server.fallback = Reply(status=500)
    cfg = opsd_config(*llm_judges(server, tmp_path, "algorithm.chat_fallback_stop=0.5"))
    with pytest.raises(ChatHealthError, match="chat_fallback_stop=0.5") as info:
        opsd.train(cfg, tmp_path / "run")
    assert "4 requests failed after 4 retries" in str(info.value)
    assert not (tmp_path / "run" / "history.jsonl").read_text()  # stopped before learning on the step
    assert server.count == 8  # two attempts per judged turn (max_retries=1), then it stopped


def test_a_step_the_server_answered_none_of_stops_the_run_at_the_last_step_ready_to_resume(server, tmp_path,
                                                                                         opsd_config, capsys):
    cfg = opsd_config(*llm_judges(server, tmp_path), "algorithm.steps=3", "judge.client.cache_path=null")
    server.fallback = Reply(GOOD)
    opsd.train(cfg, tmp_path / "whole")

    start = server.count
    server.route = lambda body: Reply(status=503) if server.count - start > 4 else None  # down after step 1
    with pytest.raises(ChatHealthError, match="answered none of the step's 4 requests"):
        opsd.train(cfg, tmp_path / "run")  # chat_fallback_stop is off: a silent server still stops the run
    assert "stopped in step 2" in capsys.readouterr().out and len(rows(tmp_path / "run")) == 1

    server.route = None
    opsd.train(cfg, tmp_path / "run", resume=True)
    assert [r["loss/total"] for r in rows(tmp_path / "run")] == [r["loss/total"] for r in rows(tmp_path / "whole")]


def test_a_chat_server_without_the_model_stops_the_run_before_anything_is_written(server, tmp_path, opsd_config):
    with pytest.raises(ChatClientError, match="'other-model' is not served by .*it offers: test-model"):
        opsd.train(opsd_config(*llm_judges(server, tmp_path), "judge.client.model=other-model"), tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists() and server.count == 0


def test_router_and_benchmark_check_their_judges_server_before_any_episode(server, tmp_path):
    from algorithms import benchmark, router
    from tests.conftest import compose_config, make_tiny_run

    run = make_tiny_run(tmp_path / "run")
    judge = ["pairwise_judge=llm", "chat@pairwise_judge.client=openai", f"pairwise_judge.client.base_url={server.url}",
             "pairwise_judge.client.api_key_env=null", "pairwise_judge.client.model=other-model", "device=cpu"]
    with pytest.raises(ChatClientError, match="'other-model' is not served"):
        router.train(compose_config("router", f"policy={run}", "router.method=pairwise", *judge), tmp_path / "router")
    with pytest.raises(ChatClientError, match="'other-model' is not served"):
        benchmark.run_benchmark(compose_config("benchmark", f"policy={run}", *judge), tmp_path / "bench")
    assert server.count == 0 and not list((tmp_path / "router").glob("journal*"))
