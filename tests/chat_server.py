"""A scripted OpenAI-compatible chat server on 127.0.0.1 (a real ``http.server``; the ``openai`` package is not mocked).

Used by the chat client tests and by the trainer tests that run LLM judges against a faulty server.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "test-model"


@dataclass
class Reply:
    """One scripted answer: HTTP status, assistant text (or a function of the request), delay.

    ``trickle`` sends the body one byte every that many seconds, ``truncate`` cuts the JSON body
    in half (with a matching Content-Length), ``choices=False`` answers ``"choices": []``.
    """

    content: object = "hello"
    status: int = 200
    delay: float = 0.0
    headers: dict = field(default_factory=dict)
    trickle: float = 0.0
    truncate: bool = False
    choices: bool = True


class ScriptedServer:
    """Serves POST /v1/chat/completions from a queue of replies (then ``fallback``) and GET /v1/models.

    ``route``, when set, maps a request body to a Reply (or None to use the queue).
    """

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.fallback = Reply()
        self.route = None
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
            routed = self.route(body) if self.route is not None else None
            if routed is not None:
                return routed
            return self.script.popleft() if self.script else self.fallback

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None, reply: Reply | None = None) -> None:
                data = json.dumps(payload).encode()
                if reply is not None and reply.truncate:
                    data = data[: len(data) // 2]
                headers = dict(headers or {})
                if status != 200 and not any(h.lower().startswith("retry-after") for h in headers):
                    headers["retry-after-ms"] = "10"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    if reply is not None and reply.trickle:
                        for i in range(len(data)):
                            self.wfile.write(data[i : i + 1])
                            self.wfile.flush()
                            time.sleep(reply.trickle)
                    else:
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

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
                answered = False

                def answering() -> None:  # a request stops counting as in flight once its answer starts:
                    nonlocal answered      # the client may send its next one as soon as it has read it
                    if not answered:
                        answered = True
                        with server.lock:
                            server.in_flight -= 1

                try:
                    time.sleep(reply.delay)
                    if reply.status != 200:
                        answering()
                        self._send(reply.status, {"error": {"message": f"scripted {reply.status}"}}, reply.headers)
                        return
                    content = reply.content(body) if callable(reply.content) else reply.content
                    message = {"role": "assistant", "content": content}
                    choices = [{"index": 0, "message": message, "finish_reason": "stop"}] if reply.choices else []
                    payload = {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": choices,
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                    answering()
                    self._send(200, payload, reply.headers, reply)
                finally:
                    answering()

        return Handler
