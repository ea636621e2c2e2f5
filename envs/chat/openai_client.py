"""A chat client for any server that speaks the OpenAI chat-completions protocol."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from envs.chat.base import ChatClient, ChatClientError, ChatRequest, TransientChatError
from envs.chat.cache import AUTO
from envs.chat.transport import AttemptTransport, UnusableReply

logger = logging.getLogger(__name__)

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
DUMMY_API_KEY = "not-needed"  # sent to key-less local servers; the openai package insists on one
AUTO_MODEL = "auto"  # model=auto: whatever single model the server serves
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_api_key_env(name: str | None) -> None:
    """Raises unless ``name`` looks like the NAME of an environment variable (or is None / "").

    A common slip is to paste the key itself where its variable's name belongs. The error then
    says so without ever repeating the value, so the key does not end up in logs.

    Args:
        name: The value given for ``api_key_env``.

    Raises:
        ChatClientError: If ``name`` is not a valid variable name, or looks like a secret (starts
            with ``sk-`` / ``sk_``, or is 24+ characters mixing lowercase letters and digits).
    """
    if not name:
        return
    text = str(name)
    secret_like = text.startswith(("sk-", "sk_")) or (
        len(text) >= 24 and any(c.islower() for c in text) and any(c.isdigit() for c in text)
    )
    if secret_like:
        raise ChatClientError(
            "api_key_env must be the NAME of the environment variable that holds the API key, such as "
            "OPENAI_API_KEY, but the value given looks like a key itself (it is not repeated here). "
            "Put the key in a variable and pass that variable's name."
        )
    if not _ENV_NAME.fullmatch(text):
        raise ChatClientError(
            "api_key_env must be the NAME of the environment variable that holds the API key, such as "
            "OPENAI_API_KEY (letters, digits and underscores, not starting with a digit); the value "
            "given is not such a name (it is not repeated here, in case it is a key)."
        )


def chat_reply_problem(payload: Any) -> str | None:
    """Why a parsed chat-completions body holds no usable answer, or None when it does."""
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not choices or not isinstance(choices, list):
        return "the reply has no choices"
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str) or not content.strip():
        return "the reply's message content is empty"
    return None


@dataclass
class _Failure:
    """What ended a request."""

    status: str  # e.g. "HTTP 429", "timeout", "connection error", "unusable reply"
    transient: bool
    detail: str = ""


class OpenAIChatClient(ChatClient):
    """A client for any server that speaks the OpenAI chat-completions protocol.

    Retries belong to the ``openai`` SDK (``max_retries``): it retries timeouts, connection
    errors, HTTP 408/409/429 and 5xx with jittered exponential backoff (0.5 s doubling, at most
    8 s), and honours a ``Retry-After`` of up to two minutes (a longer one stops the retries).
    Through its transport (:class:`~envs.chat.transport.AttemptTransport`) each attempt also has
    a wall-clock deadline of ``timeout`` seconds, and a 200 whose body is not JSON, has no choices
    or has empty content counts as a failed attempt. Other 4xx fail at once.

    Args:
        model: Model name as the server knows it, or ``"auto"`` for the one model a local server
            serves (``transformers serve``, vLLM and llama.cpp serve one): it is looked up before the
            first request, and a server offering several is an error that lists them.
        base_url: Server URL ending in ``/v1``; ``None`` means ``$OPENAI_BASE_URL`` or OpenAI's API.
        api_key_env: Name of the environment variable holding the API key. ``None`` or ``""`` for a
            server that needs no key. The key is read from the environment, never stored on disk,
            logged, or pickled (a copy sent to another process reads it again there).
        timeout: Seconds one attempt may take, from connecting to the last byte of the reply.
        max_retries: Attempts after the first before giving up.
        max_workers: Threads that send one batch's requests concurrently.
        cache_path: Response cache file; ``"auto"`` for the default, ``None`` for none.
        temperature: Default sampling temperature.
        max_tokens: Default reply length bound.
        seed: Sampling seed forwarded to the server (best effort on most servers).

    Raises:
        ChatClientError: If ``api_key_env`` is not a variable name (see :func:`check_api_key_env`)
            or names a variable that is unset or empty.
    """

    backend = "openai"

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 5,
        max_workers: int = 8,
        cache_path: str | os.PathLike | None = AUTO,
        temperature: float = 0.7,
        max_tokens: int = 256,
        seed: int | None = None,
    ) -> None:
        check_api_key_env(api_key_env)
        super().__init__(cache_path=cache_path, temperature=temperature, max_tokens=max_tokens)
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_URL).rstrip("/")
        self.api_key_env = api_key_env or None
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.max_workers = max(1, int(max_workers))
        self.seed = seed
        self._setup_runtime()

    def _setup_runtime(self) -> None:
        """Reads the key and prepares the unpicklable parts (client, transport, pool, lock)."""
        self._api_key = self._read_api_key()
        self._client = None
        self._transport: AttemptTransport | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._runtime_lock = threading.Lock()

    def _read_api_key(self) -> str:
        if self.api_key_env is None:
            return DUMMY_API_KEY
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise ChatClientError(
                f"No API key for {self.base_url}: set the environment variable {self.api_key_env}, "
                "or pass api_key_env=null (chat.api_key_env=null) for a server that needs no key."
            )
        return key

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in ("_api_key", "_client", "_transport", "_pool", "_runtime_lock"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._setup_runtime()

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    def _cache_fields(self) -> dict:
        self._resolve_model()  # the cache key names the served model, never "auto"
        return {"model": self.model, "base_url": self.base_url, "seed": self.seed, "top_p": None}

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def client(self):
        """The underlying ``openai.OpenAI`` client (retrying per ``max_retries``), made on first use."""
        if self._client is None:
            with self._runtime_lock:
                if self._client is None:
                    import httpx2
                    import openai  # lazy: importing it takes most of a second

                    self._transport = AttemptTransport(
                        self.base_url, timeout=self.timeout, on_attempt=self._count_attempt,
                        max_keepalive=self.max_workers,
                    )
                    self._client = openai.OpenAI(
                        base_url=self.base_url,
                        api_key=self._api_key,
                        timeout=self.timeout,
                        max_retries=self.max_retries,
                        http_client=httpx2.Client(
                            transport=self._transport, timeout=self.timeout, follow_redirects=True
                        ),
                    )
        return self._client

    def _count_attempt(self, attempt: int) -> None:
        self.stats.add(requests=1, retries=int(attempt > 1))
        if attempt > 1:
            logger.info("chat %s (%s): retry %d of %d", self.base_url, self.model, attempt - 1, self.max_retries)

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            with self._runtime_lock:
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(self.max_workers, thread_name_prefix="chat")
        return self._pool

    def _redact(self, text: str) -> str:
        if self._api_key != DUMMY_API_KEY:
            text = text.replace(self._api_key, "***")
        return text

    def _generate(self, requests: list[ChatRequest]) -> Iterator[tuple[int, str | TransientChatError]]:
        if len(requests) == 1:
            yield 0, self._send(requests[0])
            return
        futures = {self._executor().submit(self._send, r): i for i, r in enumerate(requests)}
        try:
            for future in concurrent.futures.as_completed(futures):
                yield futures[future], future.result()
        finally:
            for future in futures:
                future.cancel()  # after a failure, drop what has not started

    # -- one logical request (the SDK retries inside it) -----------------------------------------

    def _send(self, request: ChatRequest) -> str | TransientChatError:
        """The reply text, or the transient error that ended the request after all retries.

        Raises:
            ChatClientError: For a failure that retrying cannot fix.
        """
        client = self.client
        with self._transport.tracking(check=chat_reply_problem) as log:
            try:
                return self._attempt(client, request)
            except Exception as err:  # classified below; unknown errors propagate
                failure = self._classify(err)
                if failure is None:
                    raise
        message = self._failure_message(failure, attempts=max(log.attempts, 1))
        if failure.transient:
            return TransientChatError(message)
        raise ChatClientError(message)

    def _attempt(self, client, request: ChatRequest) -> str:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if self.seed is not None:
            kwargs["seed"] = self.seed
        response = client.chat.completions.create(**kwargs)
        return (response.choices[0].message.content or "") if response.choices else ""

    def _classify(self, err: Exception) -> _Failure | None:
        """Describes an exception from the openai package, or None if it is not one of its errors."""
        import openai

        if isinstance(err, openai.APITimeoutError):
            return _Failure("timeout", True, f"no complete reply within {self.timeout:g}s")
        if isinstance(err, openai.APIConnectionError):
            cause = err.__cause__ or err
            if isinstance(cause, UnusableReply):
                return _Failure("unusable reply", True, str(cause)[:300])
            return _Failure("connection error", True, f"{type(cause).__name__}: {cause}")
        if isinstance(err, openai.APIStatusError):
            code = err.status_code
            return _Failure(f"HTTP {code}", code in (408, 409, 429) or code >= 500, _error_detail(err))
        if isinstance(err, openai.APIError):
            return _Failure("unusable reply", True, str(err)[:300])
        return None

    def _failure_message(self, failure: _Failure, *, attempts: int) -> str:
        hint = _status_hint(failure.status, self.api_key_env)
        text = (
            f"Chat request to {self.base_url} (model {self.model!r}) failed after {attempts} "
            f"attempt{'s' if attempts > 1 else ''}; last status: {failure.status}"
        )
        text += f" ({failure.detail})" if failure.detail else ""
        text += f". {hint}" if hint else "."
        return self._redact(text)

    def _served_models(self, client) -> list[str] | _Failure:
        """The model ids the server lists, or why asking failed (errors that are not the SDK's propagate)."""
        try:
            return [m.id for m in client.models.list().data]
        except Exception as err:
            failure = self._classify(err)
            if failure is None:
                raise
            return failure

    def _resolve_model(self, client=None) -> None:
        """Replaces ``model="auto"`` by the id of the only model the server lists (asked through ``client``)."""
        if self.model != AUTO_MODEL:
            return
        client = client or self.client
        with self._runtime_lock:
            if self.model != AUTO_MODEL:
                return
            available = self._served_models(client)
            if isinstance(available, _Failure):
                raise ChatClientError(self._check_message(available) + " (model=auto lists the served models.)")
            if len(available) != 1:
                listed = ", ".join(sorted(available)) or "none"
                raise ChatClientError(f"chat.model=auto needs a server that serves exactly one model; {self.base_url} "
                                      f"offers {listed}. Set chat.model to the one to use.")
            self.model = available[0]
            logger.info("chat %s: model=auto is %s", self.base_url, self.model)

    # -- start-up check ------------------------------------------------------------------------

    def check(self) -> None:
        """Confirms the server answers and offers ``model``, with one attempt and no retries.

        Lists the server's models; servers that do not implement the listing get a one-token chat
        request instead.

        Raises:
            ChatClientError: For a missing or rejected key, an unreachable server or an unknown model.
        """
        if self.api_key_env is not None:
            self._api_key = self._read_api_key()
        once = self.client.with_options(max_retries=0)
        if self.model == AUTO_MODEL:
            self._resolve_model(once)
            return
        available = self._served_models(once)
        if isinstance(available, _Failure):
            if available.status == "HTTP 404":
                return self._check_with_chat(once)
            raise ChatClientError(self._check_message(available))
        if available and self.model not in available:
            shown = ", ".join(sorted(available)[:20]) + (", ..." if len(available) > 20 else "")
            raise ChatClientError(
                f"Model {self.model!r} is not served by {self.base_url}; it offers: {shown}. "
                "Set chat.model to one of them."
            )

    def _check_with_chat(self, once) -> None:
        request = self._request([{"role": "user", "content": "Say OK."}], max_tokens=1, temperature=0.0)
        with self._transport.tracking():  # counted; a one-token reply may well be empty
            try:
                self._attempt(once, request)
            except Exception as err:
                failure = self._classify(err)
                if failure is None:
                    raise
                raise ChatClientError(self._check_message(failure)) from None

    def _check_message(self, failure: _Failure) -> str:
        if failure.status in ("timeout", "connection error"):
            text = (
                f"Cannot reach the chat server at {self.base_url} ({failure.status}: {failure.detail}). "
                "Is it running, and is chat.base_url right?"
            )
            if "://127.0.0.1:" in self.base_url or "://localhost:" in self.base_url:
                text += " (python -m envs.chat.server starts one on the embedded model.)"
        else:
            hint = _status_hint(failure.status, self.api_key_env)
            text = f"The chat server at {self.base_url} refused model {self.model!r}: {failure.status}"
            text += f" ({failure.detail})" if failure.detail else ""
            text += f". {hint}" if hint else "."
        return self._redact(text)


def _error_detail(err: Exception) -> str:
    """The server's own error message, when its body carries one."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message:
            return str(message)[:300]
    return str(getattr(err, "message", "") or "")[:300]


def _status_hint(status: str, api_key_env: str | None) -> str:
    if status in ("HTTP 401", "HTTP 403"):
        source = f"${api_key_env}" if api_key_env else "the (absent) API key"
        return f"The server rejected {source}; check the key and its permissions."
    if status == "HTTP 404":
        return "The model or endpoint was not found; check chat.model and chat.base_url (it usually ends in /v1)."
    if status == "HTTP 429":
        return "The server kept rate-limiting; lower chat.max_workers or raise chat.max_retries."
    return ""
