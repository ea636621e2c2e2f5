"""Tests of envs.chat against a scripted OpenAI-compatible server on 127.0.0.1, plus JSON parsing.

The server is a real ``http.server`` in a background thread; the ``openai`` package is not mocked,
so retries and their backoff are the SDK's own. Error replies carry ``retry-after-ms: 10`` unless a
test sets its own header, which keeps the SDK's waits short.
"""

from __future__ import annotations

import pickle
import socket
import threading
import time
from collections import Counter

import pytest

from envs.chat import (
    ChatClientError,
    ChatStats,
    JsonReply,
    LocalChatClient,
    OpenAIChatClient,
    TransientChatError,
    check_api_key_env,
    parse_json_reply,
    resolve_cache_path,
)
from tests.chat_server import MODEL, Reply

KEY_ENV = "PLURALGYM_TEST_CHAT_KEY"
SECRET = "sk-test-SECRET-4f9c2e71"


@pytest.fixture()
def make_client(server, monkeypatch):
    """Builds OpenAIChatClients for the scripted server with fast timeouts."""
    monkeypatch.setenv(KEY_ENV, SECRET)

    def make(**overrides) -> OpenAIChatClient:
        kwargs = {
            "model": MODEL,
            "base_url": server.url,
            "api_key_env": KEY_ENV,
            "timeout": 2.0,
            "max_retries": 3,
            "cache_path": None,
        }
        kwargs.update(overrides)
        return OpenAIChatClient(**kwargs)

    return make


USER = [{"role": "user", "content": "Hi there"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# OpenAIChatClient
# --------------------------------------------------------------------------------------------


def test_success_sends_request_and_key(server, make_client):
    server.script.append(Reply("Hello, learner!"))
    client = make_client(temperature=0.3, max_tokens=17, seed=5)
    assert client.chat(USER) == "Hello, learner!"
    body = server.chat_requests[0]
    assert body["model"] == MODEL and body["messages"] == USER
    assert body["temperature"] == 0.3 and body["max_tokens"] == 17 and body["seed"] == 5
    assert server.auth_headers[0] == f"Bearer {SECRET}"
    counts = {"requests": 1, "cache_hits": 0, "retries": 0, "failures": 0, "fallbacks": 0, "json_repairs": 0}
    assert client.stats.as_dict() == counts


def test_per_call_overrides(server, make_client):
    client = make_client()
    client.chat(USER, max_tokens=3, temperature=0.0)
    assert server.chat_requests[0]["max_tokens"] == 3
    assert server.chat_requests[0]["temperature"] == 0.0


def test_timeout_is_retried(server, make_client):
    server.script.extend([Reply("too late", delay=0.6), Reply("in time")])
    client = make_client(timeout=0.2)
    t0 = time.monotonic()
    assert client.chat(USER) == "in time"
    assert time.monotonic() - t0 < 2.0
    assert client.stats.retries == 1 and client.stats.requests == 2


def test_rate_limit_then_success_honours_retry_after(server, make_client):
    server.script.extend([Reply(status=429, headers={"Retry-After": "0.05"}), Reply("ok now")])
    client = make_client()
    assert client.chat(USER) == "ok now"
    assert client.stats.retries == 1 and server.count == 2


def test_retry_after_is_honoured_by_the_sdk(server, make_client):
    server.script.extend([Reply(status=503, headers={"Retry-After": "1"}), Reply("done")])
    client = make_client()
    t0 = time.monotonic()
    assert client.chat(USER) == "done"
    assert 0.9 < time.monotonic() - t0 < 5.0
    assert client.stats.retries == 1 and client.stats.requests == 2


def test_retry_after_beyond_the_sdk_limit_ends_at_once(server, make_client):
    # The SDK waits at most two minutes for a Retry-After; a longer one stops the retries.
    server.fallback = Reply(status=503, headers={"Retry-After": "600"})
    client = make_client(max_retries=3)
    t0 = time.monotonic()
    with pytest.raises(TransientChatError, match="1 attempt; last status: HTTP 503"):
        client.chat(USER)
    assert time.monotonic() - t0 < 2.0 and server.count == 1


def test_server_error_forever_gives_clear_error(server, make_client):
    server.fallback = Reply(status=500)
    client = make_client(max_retries=2)
    with pytest.raises(ChatClientError) as info:
        client.chat(USER)
    message = str(info.value)
    assert server.url in message and MODEL in message and "HTTP 500" in message and "3 attempts" in message
    assert SECRET not in message
    assert server.count == 3 and client.stats.retries == 2


def test_other_client_errors_are_not_retried(server, make_client):
    server.fallback = Reply(status=400)
    client = make_client(max_retries=4)
    with pytest.raises(ChatClientError, match="HTTP 400"):
        client.chat(USER)
    assert server.count == 1 and client.stats.retries == 0


def test_rejected_key_names_the_variable(server, make_client):
    server.fallback = Reply(status=401)
    with pytest.raises(ChatClientError, match=KEY_ENV):
        make_client().chat(USER)


def test_batch_preserves_order_with_bounded_workers(server, make_client):
    # Later prompts answer sooner, so completion order is the reverse of the input order.
    n = 8

    def echo(body):
        return "re: " + body["messages"][-1]["content"]

    server.fallback = Reply(echo)
    server.script.extend(Reply(echo, delay=0.02 * (n - i)) for i in range(n))
    client = make_client(max_workers=3)
    prompts = [[{"role": "user", "content": f"prompt {i}"}] for i in range(n)]
    assert client.chat_batch(prompts) == [f"re: prompt {i}" for i in range(n)]
    assert 1 < server.max_in_flight <= 3
    assert client.chat_batch([]) == []


def test_cache_hit_sends_nothing_and_survives_restart(server, make_client, tmp_path):
    path = tmp_path / "cache.sqlite"
    server.fallback = Reply(lambda body: f"reply at t={body['temperature']}")
    first = make_client(cache_path=str(path))
    assert first.chat(USER) == "reply at t=0.7"
    assert first.chat(USER) == "reply at t=0.7"
    assert server.count == 1 and first.stats.cache_hits == 1 and first.stats.requests == 1

    second = make_client(cache_path=str(path))
    assert second.chat(USER) == "reply at t=0.7"
    assert server.count == 1 and second.stats.requests == 0 and second.stats.cache_hits == 1

    # The key covers the whole request: another temperature, model or message is a miss.
    assert second.chat(USER, temperature=0.1) == "reply at t=0.1"
    second.chat([{"role": "user", "content": "Hi there!"}])
    make_client(cache_path=str(path), model="other-model").chat(USER)
    assert server.count == 4

    # Mixed batch: cached entries are answered locally, in order.
    replies = second.chat_batch([USER, [{"role": "user", "content": "new"}], USER])
    assert replies[0] == replies[2] == "reply at t=0.7" and server.count == 5


def test_api_key_never_reaches_the_cache(server, make_client, tmp_path):
    path = tmp_path / "cache.sqlite"
    client = make_client(cache_path=str(path))
    client.chat_batch([USER, [{"role": "user", "content": "another"}]])
    client.cache.close()
    files = list(tmp_path.iterdir())
    assert files and all(SECRET.encode() not in f.read_bytes() for f in files)
    assert all(b"sk-test" not in f.read_bytes() for f in files)


def test_missing_key_names_the_variable(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ChatClientError, match=KEY_ENV):
        OpenAIChatClient(model=MODEL, base_url=server.url, api_key_env=KEY_ENV, cache_path=None)


def test_keyless_local_server(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    client = OpenAIChatClient(model=MODEL, base_url=server.url, api_key_env=None, cache_path=None)
    client.check()
    assert client.chat(USER) == "hello"


def test_check_passes_and_detects_unknown_model(server, make_client):
    make_client().check()
    with pytest.raises(ChatClientError, match="not served") as info:
        make_client(model="no-such-model").check()
    assert MODEL in str(info.value)  # lists what the server offers
    assert server.count == 0


def test_check_without_models_route_sends_one_token_request(server, make_client):
    server.models_route = False
    make_client().check()
    assert server.count == 1 and server.chat_requests[0]["max_tokens"] == 1


def test_check_unreachable_server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    url = f"http://127.0.0.1:{free_port()}/v1"
    client = OpenAIChatClient(model=MODEL, base_url=url, api_key_env=KEY_ENV, timeout=1.0, cache_path=None)
    t0 = time.monotonic()
    with pytest.raises(ChatClientError, match="Cannot reach the chat server") as info:
        client.check()
    assert url in str(info.value) and time.monotonic() - t0 < 3.0


def test_chat_json_repairs_and_falls_back(server, make_client):
    server.script.extend(
        [
            Reply('```json\n{"score": 4, "reason": "clear"}\n```'),
            Reply("{'score': 3, 'ok': True,}"),
            Reply("I would rather not answer in JSON."),
        ]
    )
    client = make_client()
    default = {"score": 0}
    good = client.chat_json(USER, default=default)
    assert good == JsonReply({"score": 4, "reason": "clear"}, '```json\n{"score": 4, "reason": "clear"}\n```', True)
    repaired = client.chat_json([{"role": "user", "content": "2"}], default=default)
    assert repaired.ok and repaired.data == {"score": 3, "ok": True}
    bad = client.chat_json([{"role": "user", "content": "3"}], default=default)
    assert not bad.ok and bad.data == default and bad.raw.startswith("I would rather")
    bad.data["score"] = 99
    assert default == {"score": 0}  # the caller's default is copied, never shared
    assert client.stats.json_repairs == 1 and client.stats.fallbacks == 1 and client.stats.failures == 0
    assert bad.error == "reply is not JSON" and good.error is None


def test_chat_json_batch_keeps_order(server, make_client):
    server.fallback = Reply(lambda body: f'{{"n": {body["messages"][0]["content"]}}}')
    client = make_client(max_workers=4)
    replies = client.chat_json_batch([[{"role": "user", "content": str(i)}] for i in range(6)], default=None)
    assert [r.data["n"] for r in replies] == list(range(6))


def test_client_pickles_without_key_or_threads(server, make_client, tmp_path):
    client = make_client(cache_path=str(tmp_path / "c.sqlite"), max_workers=2)
    client.chat_batch([USER, [{"role": "user", "content": "x"}]])  # starts the pool and the client
    blob = pickle.dumps(client)
    assert SECRET.encode() not in blob
    copy = pickle.loads(blob)  # reads the key from the environment again
    assert copy.chat(USER) == "hello" and server.count == 2  # answered by the shared cache
    assert server.auth_headers[-1] == f"Bearer {SECRET}"


def test_stats_are_thread_safe():
    stats = ChatStats()

    def bump():
        for _ in range(2000):
            stats.add(requests=1, retries=2)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.requests == 8000 and stats.retries == 16000
    assert pickle.loads(pickle.dumps(stats)).as_dict() == stats.as_dict()


def test_default_cache_path_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PLURALGYM_CACHE", str(tmp_path))
    assert resolve_cache_path("auto") == tmp_path / "chat_cache.sqlite"
    assert resolve_cache_path(None) is None


# --------------------------------------------------------------------------------------------
# Faults: SDK retries, attempt deadlines, unusable replies, counted failures, cache hygiene
# --------------------------------------------------------------------------------------------


def test_retries_belong_to_the_sdk(make_client):
    client = make_client(max_retries=4)
    assert client.client.max_retries == 4
    with pytest.raises(TypeError):
        make_client(backoff_base=0.5)  # the SDK's backoff replaced the project's


@pytest.mark.parametrize("status", [408, 409, 429, 500, 503])
def test_transient_statuses_are_retried(server, make_client, status):
    server.script.extend([Reply(status=status), Reply("recovered")])
    client = make_client()
    assert client.chat(USER) == "recovered"
    assert server.count == 2 and client.stats.requests == 2 and client.stats.retries == 1


def test_attempts_are_counted_per_request_across_threads(server, make_client):
    seen, lock = Counter(), threading.Lock()

    def fail_first_try(body):
        key = body["messages"][0]["content"]
        with lock:
            seen[key] += 1
            first = seen[key] == 1
        return Reply(status=500) if first else Reply(f"ok {key}")

    server.route = fail_first_try
    client = make_client(max_workers=4, max_retries=2)
    replies = client.chat_batch([[{"role": "user", "content": str(i)}] for i in range(6)])
    assert replies == [f"ok {i}" for i in range(6)]
    assert client.stats.requests == 12 and client.stats.retries == 6 and client.stats.failures == 0


def test_trickling_reply_is_cut_at_the_attempt_deadline(server, make_client):
    # Every byte arrives well within the read timeout; the whole body would take about 15 s.
    server.fallback = Reply("x" * 100, trickle=0.05)
    client = make_client(timeout=0.5, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(TransientChatError, match="2 attempts; last status: timeout") as info:
        client.chat(USER)
    elapsed = time.monotonic() - t0
    assert elapsed < 0.5 * 2 + 0.5 + 2.0  # two deadlines, one SDK backoff, generous slack
    assert server.count == 2 and client.stats.retries == 1 and client.stats.failures == 1
    assert SECRET not in str(info.value)

    t0 = time.monotonic()
    reply = client.chat_json([{"role": "user", "content": "json please"}], default={"score": 0})
    assert time.monotonic() - t0 < 3.5
    assert not reply.ok and reply.data == {"score": 0} and "timeout" in reply.error
    assert client.stats.failures == 2 and client.stats.fallbacks == 1


def test_truncated_body_is_retried_then_fails_clearly(server, make_client):
    server.script.extend([Reply("cut", truncate=True), Reply("whole")])
    client = make_client(max_retries=2)
    assert client.chat(USER) == "whole"
    assert client.stats.retries == 1 and client.stats.failures == 0

    server.fallback = Reply("cut", truncate=True)
    with pytest.raises(ChatClientError, match="unusable reply") as info:
        client.chat([{"role": "user", "content": "again"}])
    assert "3 attempts" in str(info.value) and "not valid JSON" in str(info.value)
    assert info.value.transient and server.count == 5
    reply = client.chat_json([{"role": "user", "content": "json"}], default={"a": 1})
    assert not reply.ok and reply.data == {"a": 1} and reply.raw == "" and "unusable reply" in reply.error


@pytest.mark.parametrize(
    "unusable", [Reply(choices=False), Reply(None), Reply("   ")], ids=["no-choices", "null", "blank"]
)
def test_unusable_200_is_a_counted_failure_and_never_cached(server, make_client, tmp_path, unusable):
    server.fallback = unusable
    client = make_client(max_retries=1, cache_path=str(tmp_path / "c.sqlite"))
    with pytest.raises(TransientChatError, match="unusable reply"):
        client.chat(USER)
    reply = client.chat_json(USER, default={"d": 0})
    assert not reply.ok and reply.data == {"d": 0} and "unusable reply" in reply.error
    assert client.stats.failures == 2 and client.stats.fallbacks == 1 and server.count == 4

    server.fallback = Reply('{"d": 1}')
    assert client.chat_json(USER, default={"d": 0}).data == {"d": 1}  # nothing had been cached
    assert server.count == 5


def test_json_batch_degrades_on_transient_failures(server, make_client):
    def reply_for(body):
        n = body["messages"][0]["content"]
        return Reply(status=503) if n == "2" else Reply(f'{{"n": {n}}}')

    server.route = reply_for
    client = make_client(max_retries=1, max_workers=3)
    replies = client.chat_json_batch([[{"role": "user", "content": str(i)}] for i in range(5)], default={"n": -1})
    assert [r.data["n"] for r in replies] == [0, 1, -1, 3, 4]
    assert [r.ok for r in replies] == [True, True, False, True, True]
    assert "HTTP 503" in replies[2].error and "2 attempts" in replies[2].error and replies[2].raw == ""
    assert client.stats.failures == 1 and client.stats.fallbacks == 1 and client.stats.retries == 1
    with pytest.raises(TransientChatError, match="HTTP 503"):  # free text still raises
        client.chat_batch([[{"role": "user", "content": "2"}]])
    assert client.stats.failures == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_json_batch_raises_for_configuration_errors(server, make_client, status):
    server.fallback = Reply(status=status)
    client = make_client(max_retries=3)
    with pytest.raises(ChatClientError, match=f"HTTP {status}") as info:
        client.chat_json(USER, default={})
    assert not info.value.transient and server.count == 1
    assert SECRET not in str(info.value) and "1 attempt;" in str(info.value)


def test_unusable_json_reply_is_never_cached(server, make_client, tmp_path):
    path = str(tmp_path / "cache.sqlite")
    server.fallback = Reply("Sorry, I cannot grade this.")
    first = make_client(cache_path=path)
    assert not first.chat_json(USER, default={"score": 0}).ok
    assert first.stats.fallbacks == 1 and first.stats.failures == 0

    server.fallback = Reply('{"score": 4}')  # the server is healthy again
    second = make_client(cache_path=path)
    reply = second.chat_json(USER, default={"score": 0})
    assert reply.ok and reply.data == {"score": 4}
    assert server.count == 2 and second.stats.requests == 1 and second.stats.cache_hits == 0

    third = make_client(cache_path=path)  # the usable reply was cached
    assert third.chat_json(USER, default={"score": 0}).data == {"score": 4}
    assert server.count == 2 and third.stats.cache_hits == 1


def test_validate_hook_rejects_counts_and_skips_the_cache(server, make_client, tmp_path):
    def two_labels(data):
        labels = data.get("labels") if isinstance(data, dict) else None
        return None if isinstance(labels, list) and len(labels) == 2 else "expected 2 labels"

    other = [{"role": "user", "content": "other"}]
    server.fallback = Reply('{"labels": ["good"]}')
    client = make_client(cache_path=str(tmp_path / "c.sqlite"))
    reply = client.chat_json(USER, default={"labels": []}, validate=two_labels)
    assert reply == JsonReply({"labels": []}, '{"labels": ["good"]}', False, "expected 2 labels")
    assert client.stats.fallbacks == 1 and client.stats.failures == 0

    # One validator per conversation; the rejected reply was not cached, the accepted one is.
    replies = client.chat_json_batch([USER, other], default={}, validate=[two_labels, None])
    assert [r.ok for r in replies] == [False, True] and server.count == 3
    assert client.chat_json(other, default={}).ok and server.count == 3
    with pytest.raises(ValueError, match="validate"):
        client.chat_json_batch([USER], default={}, validate=[None, None])


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "my_key", "_X1", "PLURALGYM_TEST_CHAT_KEY", None, ""])
def test_api_key_env_accepts_variable_names(name):
    check_api_key_env(name)


@pytest.mark.parametrize(
    "value",
    ["sk-proj-abc123DEF456ghi", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "a1b2c3d4e5f6g7h8i9j0k1l2m3n4",
     "my api token", "1ABC", "OPENAI-API-KEY", "Bearer abc"],
)
def test_api_key_env_rejects_values_without_echoing_them(value):
    with pytest.raises(ChatClientError) as info:
        check_api_key_env(value)
    message = str(info.value)
    assert "OPENAI_API_KEY" in message and "NAME" in message and value not in message


def test_client_refuses_a_key_given_as_api_key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with pytest.raises(ChatClientError, match="looks like a key") as info:
        OpenAIChatClient(model=MODEL, base_url="http://127.0.0.1:9/v1", api_key_env=SECRET, cache_path=None)
    assert SECRET not in str(info.value) and "sk-test" not in str(info.value)


# --------------------------------------------------------------------------------------------
# parse_json_reply
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "repaired"),
    [
        ('{"a": 1}', {"a": 1}, False),
        ("[1, 2, 3]", [1, 2, 3], False),
        ('Sure:\n```json\n{"a": [1, 2]}\n```\nDone.', {"a": [1, 2]}, False),
        ('The verdict is {"winner": "A"} as requested.', {"winner": "A"}, False),
        ('Step [see below]: {"a": 1}', {"a": 1}, False),
        ("I can't say [why] but {\"a\": 1}", {"a": 1}, False),
        ('{"a": "brace } and [ inside", "b": 2}', {"a": "brace } and [ inside", "b": 2}, False),
        ('{"x": 1} and later {"y": 2}', {"x": 1}, False),
        ('{"a": [1, 2,], "b": 3,}', {"a": [1, 2], "b": 3}, True),
        ("{'a': 'single', 'b': 'it\\'s'}", {"a": "single", "b": "it's"}, True),
        ("{'q': 'say \"hi\"'}", {"q": 'say "hi"'}, True),
        ('{"t": True, "f": False, "n": None}', {"t": True, "f": False, "n": None}, True),
        ('{"text": "line one\nline two\tend"}', {"text": "line one\nline two\tend"}, True),
        ('{score: 3, reason: "fine"}', {"score": 3, "reason": "fine"}, True),
        ('{"a": {"b": [1, 2', {"a": {"b": [1, 2]}}, True),
        ('```\n{"a": "cut off', {"a": "cut off"}, True),
    ],
)
def test_parse_json_reply_known_cases(text, expected, repaired):
    assert parse_json_reply(text) == (expected, repaired)


@pytest.mark.parametrize("text", ["", "no json here", '"just a string"', "42", '{"a": 1 "b": 2}', "{oops}"])
def test_parse_json_reply_hopeless(text):
    with pytest.raises(ValueError):
        parse_json_reply(text)


def test_broken_outer_object_does_not_yield_inner_fragment():
    with pytest.raises(ValueError):
        parse_json_reply('{"scores": {"a": 1}, "x": ???}')


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "b"',  # cut inside a key: the repair would invent a value
        '{"a": "x" "y"}',  # a stray string: the repair would invent a key or drop it
        "[1 2]",  # a missing comma between values
        '{"labels": ["good"], "note": maybe}',  # a bare word that is neither a key nor a literal
    ],
)
def test_repairs_that_invent_or_drop_content_are_refused(text):
    with pytest.raises(ValueError):
        parse_json_reply(text)


# --------------------------------------------------------------------------------------------
# LocalChatClient (tiny random model: gibberish replies, real plumbing)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_client():
    pytest.importorskip("agents.models", reason="agents.models is not available")
    client = LocalChatClient(model="tiny-random", batch_size=2, max_new_tokens=6, temperature=0.9, seed=1)
    client.check()
    return client


CONVS = [
    [{"role": "user", "content": "Explain fractions."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "user", "content": "Hello"}],
]


def test_local_batch_is_reproducible_per_request(local_client):
    replies = local_client.chat_batch(CONVS)
    assert len(replies) == 3 and all(isinstance(r, str) for r in replies)
    assert local_client.chat_batch(CONVS) == replies  # no cache: regenerated, same seeds
    # A request's reply does not depend on its batch companions or position.
    assert local_client.chat(CONVS[2]) == replies[2]
    assert local_client.chat_batch([CONVS[1], CONVS[0]]) == [replies[1], replies[0]]


def test_local_seed_and_greedy(local_client):
    other_seed = LocalChatClient(model="tiny-random", max_new_tokens=6, temperature=0.9, seed=2)
    assert other_seed.chat_batch(CONVS) != local_client.chat_batch(CONVS)
    greedy = [local_client.chat(c, temperature=0.0) for c in CONVS]
    assert local_client.chat_batch(CONVS, temperature=0.0) == greedy


def test_local_max_tokens_and_json_fallback(local_client):
    tokenizer = local_client.backbone.tokenizer
    reply = local_client.chat(CONVS[0], max_tokens=2)
    assert len(tokenizer(reply, add_special_tokens=False)["input_ids"]) <= 3
    before = local_client.stats.fallbacks
    result = local_client.chat_json(CONVS[0], default={"fallback": True}, max_tokens=2)
    assert isinstance(result, JsonReply)
    assert result.ok or (result.data == {"fallback": True} and local_client.stats.fallbacks == before + 1)


def test_local_cache(local_client, tmp_path):
    path = tmp_path / "local.sqlite"
    cached = LocalChatClient(model="tiny-random", max_new_tokens=6, temperature=0.9, seed=1, cache_path=path)
    first = cached.chat_batch(CONVS)
    assert cached.stats.requests == 3
    assert cached.chat_batch(CONVS) == first and cached.stats.requests == 3 and cached.stats.cache_hits == 3
    assert first == local_client.chat_batch(CONVS)  # same settings, same replies


def test_local_unknown_model_raises_clear_error(tmp_path):
    pytest.importorskip("agents.models", reason="agents.models is not available")
    client = LocalChatClient(model=str(tmp_path / "missing-model"))
    with pytest.raises(ChatClientError, match="missing-model"):
        client.check()


def test_chat_configs_instantiate_from_the_constructor_defaults(monkeypatch, tmp_path):
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("PLURALGYM_CACHE", str(tmp_path))
    cfg = compose_config("opsd", "student=chat_model", "chat@student.client=openai")
    remote = instantiate(cfg.student.client)
    assert isinstance(remote, OpenAIChatClient) and remote.model == "gpt-4o-mini"
    assert remote.cache.path == tmp_path / "chat_cache.sqlite"
    assert "backoff_base" not in cfg.student.client and cfg.student.client.timeout == 60.0
    local = instantiate(compose_config("opsd", "student=chat_model", "student.client.model=tiny-random").student.client)
    assert isinstance(local, LocalChatClient) and local.cache is None and local._backbone is None

def test_local_clients_of_one_process_share_one_model(local_client):
    twin = LocalChatClient(model="tiny-random", max_new_tokens=6, temperature=0.9, seed=1)
    assert twin.backbone is local_client.backbone  # the student, judges and critic load it once
    assert twin.chat_batch(CONVS) == local_client.chat_batch(CONVS)


# --- model=auto and the local server's command line (the live server: tests/test_real_server.py) ----------


def test_model_auto_becomes_the_one_model_the_server_lists_before_the_first_request(make_client, server, tmp_path):
    client = make_client(model="auto", cache_path=tmp_path / "cache.sqlite")
    assert client.chat([{"role": "user", "content": "hi"}]) == "hello"
    assert client.model == MODEL and server.chat_requests[0]["model"] == MODEL
    again = make_client(model=MODEL, cache_path=tmp_path / "cache.sqlite")  # the cache key names the real model
    assert again.chat([{"role": "user", "content": "hi"}]) == "hello" and server.count == 1


def test_model_auto_without_a_model_listing_says_so(make_client, server):
    server.models_route = False
    with pytest.raises(ChatClientError, match=r"HTTP 404.*model=auto lists the served models"):
        make_client(model="auto").check()
    assert server.count == 0


def test_check_servers_checks_each_remote_client_once_and_never_loads_a_local_model(make_client, server):
    from envs.chat import check_servers
    from envs.students import ChatModelStudent

    client = make_client(model="not-served")
    with pytest.raises(ChatClientError, match="'not-served' is not served"):
        check_servers(ChatModelStudent(client=client), ChatModelStudent(client=client), ChatModelStudent())
    local = LocalChatClient(model="tiny-random")
    check_servers(ChatModelStudent(client=local))
    assert local._backbone is None and server.count == 0


def test_the_local_server_command_bounds_the_kv_cache_and_needs_a_whole_checkpoint(tmp_path):
    from envs.chat.server import LocalServer, serving_folder

    cmd = LocalServer(tmp_path, port=8123).command()
    assert cmd[cmd.index("serve") + 1] == str(tmp_path) and cmd[cmd.index("--port") + 1] == "8123"
    assert "--continuous-batching" in cmd and cmd[cmd.index("--cb-num-blocks") + 1] == "512"
    assert "--no-continuous-batching" in LocalServer(tmp_path, continuous_batching=False).command()
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ChatClientError, match="no tokenizer.json or tokenizer_config.json"):
        serving_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    assert serving_folder(tmp_path) == tmp_path.resolve()
