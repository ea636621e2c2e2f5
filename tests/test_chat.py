"""Tests of envs.chat against a scripted OpenAI-compatible server on 127.0.0.1, plus JSON parsing.

The server is a real ``http.server`` in a background thread; the ``openai`` package is not mocked.
"""

from __future__ import annotations

import json
import pickle
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from envs.chat import (
    ChatClientError,
    ChatStats,
    JsonReply,
    LocalChatClient,
    OpenAIChatClient,
    parse_json_reply,
    resolve_cache_path,
)

KEY_ENV = "PLURALGYM_TEST_CHAT_KEY"
SECRET = "sk-test-SECRET-4f9c2e71"
MODEL = "test-model"


# --------------------------------------------------------------------------------------------
# A scripted chat-completions server
# --------------------------------------------------------------------------------------------


@dataclass
class Reply:
    """One scripted answer: HTTP status, assistant text (or a function of the request), delay."""

    content: object = "hello"
    status: int = 200
    delay: float = 0.0
    headers: dict = field(default_factory=dict)


class ScriptedServer:
    """Serves POST /v1/chat/completions from a queue of replies (then ``fallback``) and GET /v1/models."""

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.fallback = Reply()
        self.models_route = True
        self.chat_requests: list[dict] = []
        self.auth_headers: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def count(self) -> int:
        return len(self.chat_requests)

    def _next(self, body: dict) -> Reply:
        with self.lock:
            self.chat_requests.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.script.popleft() if self.script else self.fallback

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models" and server.models_route:
                    models = [{"id": MODEL, "object": "model", "created": 0, "owned_by": "tests"}]
                    self._send(200, {"object": "list", "data": models})
                else:
                    self._send(404, {"error": {"message": "no such route"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.auth_headers.append(self.headers.get("Authorization", ""))
                reply = server._next(body)
                try:
                    time.sleep(reply.delay)
                    if reply.status != 200:
                        self._send(reply.status, {"error": {"message": f"scripted {reply.status}"}}, reply.headers)
                        return
                    content = reply.content(body) if callable(reply.content) else reply.content
                    message = {"role": "assistant", "content": content}
                    payload = {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                    self._send(200, payload, reply.headers)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        return Handler


@pytest.fixture()
def server():
    srv = ScriptedServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture()
def make_client(server, monkeypatch):
    """Builds OpenAIChatClients for the scripted server with fast timeouts and backoff."""
    monkeypatch.setenv(KEY_ENV, SECRET)

    def make(**overrides) -> OpenAIChatClient:
        kwargs = dict(
            model=MODEL,
            base_url=server.url,
            api_key_env=KEY_ENV,
            timeout=2.0,
            max_retries=3,
            backoff_base=0.01,
            backoff_max=0.05,
            cache_path=None,
        )
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
    assert client.stats.as_dict() == dict(requests=1, cache_hits=0, retries=0, json_fallbacks=0, json_repairs=0)


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


def test_retry_after_is_capped_by_backoff_max(server, make_client):
    server.script.extend([Reply(status=503, headers={"Retry-After": "120"}), Reply("done")])
    client = make_client(backoff_max=0.05)
    t0 = time.monotonic()
    assert client.chat(USER) == "done"
    assert time.monotonic() - t0 < 1.0


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
    assert client.stats.json_repairs == 1 and client.stats.json_fallbacks == 1


def test_chat_json_batch_keeps_order(server, make_client):
    server.fallback = Reply(lambda body: '{"n": %s}' % body["messages"][0]["content"])
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
    other_seed._backbone = local_client.backbone
    assert other_seed.chat_batch(CONVS) != local_client.chat_batch(CONVS)
    greedy = [local_client.chat(c, temperature=0.0) for c in CONVS]
    assert local_client.chat_batch(CONVS, temperature=0.0) == greedy


def test_local_max_tokens_and_json_fallback(local_client):
    tokenizer = local_client.backbone.tokenizer
    reply = local_client.chat(CONVS[0], max_tokens=2)
    assert len(tokenizer(reply, add_special_tokens=False)["input_ids"]) <= 3
    before = local_client.stats.json_fallbacks
    result = local_client.chat_json(CONVS[0], default={"fallback": True}, max_tokens=2)
    assert isinstance(result, JsonReply)
    assert result.ok or (result.data == {"fallback": True} and local_client.stats.json_fallbacks == before + 1)


def test_local_cache(local_client, tmp_path):
    path = tmp_path / "local.sqlite"
    cached = LocalChatClient(model="tiny-random", max_new_tokens=6, temperature=0.9, seed=1, cache_path=path)
    cached._backbone = local_client.backbone
    first = cached.chat_batch(CONVS)
    assert cached.stats.requests == 3
    assert cached.chat_batch(CONVS) == first and cached.stats.requests == 3 and cached.stats.cache_hits == 3
    assert first == local_client.chat_batch(CONVS)  # same settings, same replies


def test_local_unknown_model_raises_clear_error(tmp_path):
    pytest.importorskip("agents.models", reason="agents.models is not available")
    client = LocalChatClient(model=str(tmp_path / "missing-model"))
    with pytest.raises(ChatClientError, match="missing-model"):
        client.check()


def test_hydra_configs_instantiate(monkeypatch, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[1] / "configs" / "chat"
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("PLURALGYM_CACHE", str(tmp_path))
    remote = instantiate(OmegaConf.load(root / "openai.yaml"))
    assert isinstance(remote, OpenAIChatClient) and remote.model == "gpt-4o-mini"
    assert remote.cache.path == tmp_path / "chat_cache.sqlite"
    local_cfg = OmegaConf.merge(OmegaConf.load(root / "local.yaml"), {"model": "tiny-random"})
    local = instantiate(local_cfg)
    assert isinstance(local, LocalChatClient) and local.cache is None and local._backbone is None
