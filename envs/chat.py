"""One chat interface for every LLM-backed piece: student simulators, judges and critics.

Two backends share the :class:`ChatClient` interface:

- :class:`OpenAIChatClient` talks to any server that speaks the OpenAI chat-completions protocol
  (OpenAI itself, vLLM, llama.cpp's server, Ollama, a LiteLLM proxy, ...). It runs its own
  retries (exponential backoff with jitter; ``Retry-After`` honoured) and sends batches through a
  bounded thread pool.
- :class:`LocalChatClient` runs a Hugging Face causal LM in-process through
  :func:`agents.models.load_backbone`, generating in left-padded batches. Sampling draws from one
  random generator per request, seeded from the request itself, so a request gets the same reply
  whichever batch it lands in, and the global torch random state is never touched.

Both keep an optional on-disk response cache (sqlite) keyed by a sha256 digest of the whole request
(backend, model, server, messages and every sampling setting), so a repeated request costs nothing.
Only the digest and the reply are stored; API keys never enter the cache.

Replies that should be JSON go through :meth:`ChatClient.chat_json`, which extracts and repairs the
JSON with :func:`parse_json_reply` and falls back to a caller-given default instead of raising;
:class:`ChatStats` counts every repair and fallback.

Example:
    >>> client = OpenAIChatClient(model="gpt-4o-mini")                      # doctest: +SKIP
    >>> client.check()                                                      # doctest: +SKIP
    >>> client.chat_json([{"role": "user", "content": 'Answer {"ok": true}'}], default={})  # doctest: +SKIP
    JsonReply(data={'ok': True}, raw='{"ok": true}', ok=True)
"""

from __future__ import annotations

import abc
import concurrent.futures
import copy
import email.utils
import hashlib
import json
import logging
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Messages = list[dict]

AUTO = "auto"  # ``cache_path`` value meaning "the default file under the cache directory"
CACHE_FILE = "chat_cache.sqlite"
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
DUMMY_API_KEY = "not-needed"  # sent to key-less local servers; the openai package insists on one


class ChatClientError(RuntimeError):
    """A chat backend cannot serve requests; the message says which server, model and what to fix."""


# --------------------------------------------------------------------------------------------
# Outputs and counters
# --------------------------------------------------------------------------------------------


@dataclass
class ChatStats:
    """Counters of a client's traffic, safe to update from several threads.

    Attributes:
        requests: Requests actually sent to a backend (every attempt, retries included; a cache
            hit sends none).
        cache_hits: Requests answered from the response cache.
        retries: Attempts repeated after a timeout, a connection error, a 429 or a 5xx.
        json_fallbacks: JSON replies so malformed that the caller's default was returned instead.
        json_repairs: JSON replies that only parsed after repair (they are not fallbacks).
    """

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    json_fallbacks: int = 0
    json_repairs: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # not a field, so asdict() and repr() ignore it

    def add(self, **counts: int) -> None:
        """Adds to one or more counters atomically, e.g. ``stats.add(requests=1)``."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        """A consistent snapshot of all counters."""
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self)}

    def __getstate__(self) -> dict:
        return self.as_dict()

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()


@dataclass
class JsonReply:
    """A reply that was asked to be JSON.

    Attributes:
        data: The parsed object, or a copy of the caller's default when parsing failed.
        raw: The reply text exactly as the model produced it.
        ok: False when ``data`` is the fallback default.
    """

    data: Any
    raw: str
    ok: bool


@dataclass(frozen=True)
class ChatRequest:
    """One fully resolved request: what is sent, plus its cache key.

    Attributes:
        messages: The conversation, as a list of ``{"role", "content"}`` dicts.
        max_tokens: Upper bound on the reply's length in tokens.
        temperature: Sampling temperature (0 means greedy).
        key: sha256 hex digest of everything that determines the reply.
    """

    messages: Messages
    max_tokens: int
    temperature: float
    key: str


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """The project's cache directory: ``$PLURALGYM_CACHE``, else ``~/.cache/pluralgym``.

    Defers to :func:`agents.models.cache_dir` so that both packages agree; the local fallback only
    matters when ``agents`` cannot be imported.
    """
    try:
        from agents.models import cache_dir  # lazy: agents imports torch and transformers
    except ImportError:
        root = os.environ.get("PLURALGYM_CACHE") or Path.home() / ".cache" / "pluralgym"
        return Path(root).expanduser()
    return cache_dir()


def resolve_cache_path(cache_path: str | os.PathLike | None) -> Path | None:
    """Maps ``"auto"`` to the default cache file, ``None`` to no cache, anything else to a Path."""
    if cache_path is None:
        return None
    if str(cache_path) == AUTO:
        return default_cache_dir() / CACHE_FILE
    return Path(cache_path).expanduser()


def request_digest(payload: dict) -> str:
    """sha256 hex digest of a JSON-serialisable request description (key order does not matter)."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResponseCache:
    """A sqlite table from request digest to reply text, shared by threads and processes.

    One connection guarded by a lock serves all threads of a process; sqlite's own file locking
    (with a generous busy timeout) covers several processes writing the same file.

    Args:
        path: The sqlite file; its folder is created when missing.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False)
            conn.execute(
                "CREATE TABLE IF NOT EXISTS replies "
                "(key TEXT PRIMARY KEY, backend TEXT, model TEXT, reply TEXT NOT NULL, created REAL)"
            )
            conn.commit()
            self._conn = conn
        return self._conn

    def get(self, key: str) -> str | None:
        """The stored reply for ``key``, or None."""
        with self._lock:
            row = self._connection().execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, reply: str, *, backend: str = "", model: str = "") -> None:
        """Stores (or overwrites) the reply for ``key``."""
        with self._lock:
            conn = self._connection()
            conn.execute(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?)", (key, backend, model, reply, time.time())
            )
            conn.commit()

    def close(self) -> None:
        """Closes the connection; a later call reopens it."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])


# --------------------------------------------------------------------------------------------
# JSON extraction and repair
# --------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_+-]*[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)
_CLOSER = {"{": "}", "[": "]"}
_BARE_WORDS = {"True": "true", "False": "false", "None": "null", "true": "true", "false": "false", "null": "null"}
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_MAX_CANDIDATES = 32


def parse_json_reply(text: str) -> tuple[Any, bool]:
    """Finds the JSON object or array in a model's reply, repairing common faults.

    Code fences and prose around the JSON are ignored. When the JSON itself does not parse, these
    faults are repaired: trailing commas, single-quoted strings, Python's ``True``/``False``/``None``,
    raw newlines or tabs inside strings, unquoted keys, and brackets left open by a reply that was
    cut short.

    Args:
        text: The raw reply.

    Returns:
        ``(obj, repaired)``: the parsed dict or list, and whether a repair was needed.

    Raises:
        ValueError: If no JSON object or array can be recovered.
    """
    for source in _sources(text):
        try:
            obj = json.loads(source)
        except ValueError:
            pass
        else:
            if isinstance(obj, (dict, list)):
                return obj, False
        found = _parse_first_candidate(source)
        if found is not None:
            return found
    raise ValueError(f"no JSON object or array found in reply: {text[:200]!r}")


def _sources(text: str) -> list[str]:
    """The texts to search, best first: each fenced block, then the whole reply."""
    blocks = [m.group(1).strip() for m in _FENCE.finditer(text)]
    return [b for b in blocks if b] + [text.strip()]


def _parse_first_candidate(text: str) -> tuple[Any, bool] | None:
    """Tries each ``{`` or ``[`` in turn as the start of the JSON; skips those inside a failed span."""
    start, tried = 0, 0
    while tried < _MAX_CANDIDATES:
        start = _next_opening(text, start)
        if start < 0:
            return None
        tried += 1
        end = _balanced_end(text, start)
        span = text[start:end]  # end None: the rest of the reply
        try:
            return json.loads(span), False
        except ValueError:
            pass
        try:
            return json.loads(repair_json(span)), True
        except ValueError:
            # Text nested in a closed but broken span is a fragment, never the answer; a span
            # that never closed may have swallowed the real JSON, so look inside it too.
            start = end if end is not None else start + 1
    return None


def _next_opening(text: str, start: int) -> int:
    positions = [p for p in (text.find("{", start), text.find("[", start)) if p >= 0]
    return min(positions, default=-1)


def _balanced_end(text: str, start: int) -> int | None:
    """Index just past the bracket that closes ``text[start]``, or None if none does.

    Strings in either quote style are skipped, so brackets inside them do not count.
    """
    depth, quote, i = 0, None, start
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def repair_json(span: str) -> str:
    """Rewrites almost-JSON (Python literals, sloppy quoting, a cut-off tail) into strict JSON.

    Args:
        span: Text starting with ``{`` or ``[``.

    Returns:
        The rewritten text. It is not guaranteed to parse; the caller checks.
    """
    out: list[str] = []
    stack: list[str] = []
    i = 0
    while i < len(span):
        ch = span[i]
        if ch in "\"'":
            i = _copy_string(span, i, out)
            continue
        if ch in "{[":
            stack.append(_CLOSER[ch])
        elif ch in "}]":
            _drop_trailing_comma(out)
            if stack:
                stack.pop()
        elif ch.isalpha() or ch == "_":
            i = _copy_word(span, i, out)
            continue
        out.append(ch)
        i += 1
        if not stack:
            break
    _drop_trailing_comma(out)
    out.extend(reversed(stack))
    return "".join(out)


def _copy_string(span: str, i: int, out: list[str]) -> int:
    """Copies the string starting at ``span[i]`` as a double-quoted JSON string; returns the index after it."""
    quote = span[i]
    out.append('"')
    i += 1
    while i < len(span):
        ch = span[i]
        if ch == "\\" and i + 1 < len(span):
            nxt = span[i + 1]
            out.append(nxt if nxt == "'" else ch + nxt)  # \' is not a JSON escape
            i += 2
            continue
        if ch == quote:
            out.append('"')
            return i + 1
        if ch == '"':
            out.append('\\"')
        elif ch < " ":
            out.append(_ESCAPES.get(ch) or f"\\u{ord(ch):04x}")  # raw control characters are not allowed
        else:
            out.append(ch)
        i += 1
    out.append('"')  # the reply ended inside this string
    return i


def _copy_word(span: str, i: int, out: list[str]) -> int:
    """Copies a bare word: a Python/JSON literal, or an unquoted key (quoted when a colon follows)."""
    j = i
    while j < len(span) and (span[j].isalnum() or span[j] in "_-"):
        j += 1
    word = span[i:j]
    if word in _BARE_WORDS:
        out.append(_BARE_WORDS[word])
    elif span[j:].lstrip().startswith(":"):
        out.append(json.dumps(word))
    else:
        out.append(word)  # unknown bare word: leave it, the parse will fail
    return j


def _drop_trailing_comma(out: list[str]) -> None:
    k = len(out) - 1
    while k >= 0 and out[k].isspace():
        k -= 1
    if k >= 0 and out[k] == ",":
        del out[k]


# --------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------


class ChatClient(abc.ABC):
    """Sends chat conversations to a language model and returns its replies.

    Subclasses describe a backend with :meth:`_cache_fields` (everything besides the messages that
    determines a reply), :meth:`_generate` (replies for requests the cache could not answer) and
    :meth:`check`. Caching, batching, ordering and JSON handling live here.

    Args:
        cache_path: sqlite file for the response cache; ``"auto"`` for the default file under the
            cache directory, ``None`` for no on-disk cache.
        temperature: Default sampling temperature.
        max_tokens: Default reply length bound, in tokens.

    Attributes:
        stats: Traffic counters (:class:`ChatStats`).
        model: The model name the backend is asked for.
    """

    backend: str = "base"
    model: str

    def __init__(self, *, cache_path: str | os.PathLike | None, temperature: float, max_tokens: int) -> None:
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.stats = ChatStats()
        path = resolve_cache_path(cache_path)
        self.cache = ResponseCache(path) if path is not None else None

    # -- to implement --------------------------------------------------------------------------

    @abc.abstractmethod
    def _cache_fields(self) -> dict:
        """Backend settings that change replies (model, server, seed, top_p, ...)."""

    @abc.abstractmethod
    def _generate(self, requests: list[ChatRequest]) -> Iterator[tuple[int, str]]:
        """Produces replies for ``requests``, yielding ``(index, reply)`` as each one is ready.

        Raises:
            ChatClientError: If the backend cannot answer.
        """

    @abc.abstractmethod
    def check(self) -> None:
        """Verifies that the backend can serve this client's model.

        Raises:
            ChatClientError: With one message saying what is wrong and how to fix it.
        """

    # -- public API ----------------------------------------------------------------------------

    def chat(self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = None) -> str:
        """The model's reply to one conversation.

        Args:
            messages: ``[{"role": "system" | "user" | "assistant", "content": str}, ...]``.
            max_tokens: Reply length bound; the client's default when None.
            temperature: Sampling temperature; the client's default when None.

        Raises:
            ChatClientError: If the backend cannot answer (after retries, where they apply).
        """
        return self.chat_batch([messages], max_tokens=max_tokens, temperature=temperature)[0]

    def chat_batch(
        self,
        conversations: Sequence[Messages],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> list[str]:
        """Replies to many conversations, in the order given.

        Cached requests are answered from the cache; the rest go to the backend together, and each
        reply is cached as soon as it arrives, so an error part-way loses no finished work.

        Raises:
            ChatClientError: If the backend cannot answer one of them.
        """
        requests = [self._request(m, max_tokens, temperature) for m in conversations]
        replies = [self.cache.get(r.key) if self.cache is not None else None for r in requests]
        pending = [i for i, reply in enumerate(replies) if reply is None]
        self.stats.add(cache_hits=len(requests) - len(pending))
        if pending:
            for j, reply in self._generate([requests[i] for i in pending]):
                replies[pending[j]] = reply
                if self.cache is not None:
                    self.cache.put(requests[pending[j]].key, reply, backend=self.backend, model=self.model)
        return replies

    def chat_json(
        self,
        messages: Messages,
        *,
        default: Any,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> JsonReply:
        """The reply to one conversation, parsed as JSON (see :meth:`chat_json_batch`)."""
        return self.chat_json_batch([messages], default=default, max_tokens=max_tokens, temperature=temperature)[0]

    def chat_json_batch(
        self,
        conversations: Sequence[Messages],
        *,
        default: Any,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> list[JsonReply]:
        """Replies to many conversations, each parsed as JSON, in the order given.

        A malformed reply never raises: it is repaired when possible (counted in
        ``stats.json_repairs``), else replaced by a deep copy of ``default`` with ``ok=False``
        (counted in ``stats.json_fallbacks``). Backend failures still raise.

        Args:
            conversations: The conversations.
            default: What ``data`` holds when a reply cannot be parsed.
            max_tokens: Reply length bound; the client's default when None.
            temperature: Sampling temperature; the client's default when None.

        Raises:
            ChatClientError: If the backend cannot answer.
        """
        raws = self.chat_batch(conversations, max_tokens=max_tokens, temperature=temperature)
        return [self._to_json(raw, default) for raw in raws]

    # -- helpers -------------------------------------------------------------------------------

    def _request(self, messages: Messages, max_tokens: int | None, temperature: float | None) -> ChatRequest:
        messages = [dict(m) for m in messages]
        max_tokens = self.max_tokens if max_tokens is None else int(max_tokens)
        temperature = self.temperature if temperature is None else float(temperature)
        payload = {
            "backend": self.backend,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            **self._cache_fields(),
        }
        return ChatRequest(messages, max_tokens, temperature, request_digest(payload))

    def _to_json(self, raw: str, default: Any) -> JsonReply:
        try:
            data, repaired = parse_json_reply(raw)
        except ValueError:
            self.stats.add(json_fallbacks=1)
            logger.debug("chat reply is not JSON, using the default: %r", raw[:200])
            return JsonReply(data=copy.deepcopy(default), raw=raw, ok=False)
        if repaired:
            self.stats.add(json_repairs=1)
        return JsonReply(data=data, raw=raw, ok=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


# --------------------------------------------------------------------------------------------
# OpenAI-compatible servers
# --------------------------------------------------------------------------------------------


@dataclass
class _Failure:
    """What went wrong with one attempt."""

    status: str  # e.g. "HTTP 429", "timeout", "connection error"
    retryable: bool
    wait: float | None = None  # the server's Retry-After, in seconds
    detail: str = ""


class OpenAIChatClient(ChatClient):
    """A client for any server that speaks the OpenAI chat-completions protocol.

    Timeouts, connection errors, HTTP 408/429 and 5xx are retried with exponential backoff and
    jitter (a ``Retry-After`` header is honoured, capped at ``backoff_max``); other 4xx fail at once.

    Args:
        model: Model name as the server knows it.
        base_url: Server URL ending in ``/v1``; ``None`` means ``$OPENAI_BASE_URL`` or OpenAI's API.
        api_key_env: Name of the environment variable holding the API key. ``None`` or ``""`` for a
            server that needs no key. The key is read from the environment, never stored on disk,
            logged, or pickled (a copy sent to another process reads it again there).
        timeout: Seconds one attempt may take.
        max_retries: Attempts after the first before giving up.
        backoff_base: First backoff delay in seconds; it doubles with each retry.
        backoff_max: Longest single wait in seconds.
        max_workers: Threads that send one batch's requests concurrently.
        cache_path: Response cache file; ``"auto"`` for the default, ``None`` for none.
        temperature: Default sampling temperature.
        max_tokens: Default reply length bound.
        seed: Sampling seed forwarded to the server (best effort on most servers).

    Raises:
        ChatClientError: If ``api_key_env`` names a variable that is unset or empty.
    """

    backend = "openai"

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
        max_workers: int = 8,
        cache_path: str | os.PathLike | None = AUTO,
        temperature: float = 0.7,
        max_tokens: int = 256,
        seed: int | None = None,
    ) -> None:
        super().__init__(cache_path=cache_path, temperature=temperature, max_tokens=max_tokens)
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_URL).rstrip("/")
        self.api_key_env = api_key_env or None
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.max_workers = max(1, int(max_workers))
        self.seed = seed
        self._setup_runtime()

    def _setup_runtime(self) -> None:
        """Reads the key and prepares the unpicklable parts (client, pool, lock)."""
        self._api_key = self._read_api_key()
        self._client = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._runtime_lock = threading.Lock()
        self._rng = random.Random()

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
        for name in ("_api_key", "_client", "_pool", "_runtime_lock", "_rng"):
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
        return {"model": self.model, "base_url": self.base_url, "seed": self.seed, "top_p": None}

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def client(self):
        """The underlying ``openai.OpenAI`` client, created on first use (its own retries off)."""
        if self._client is None:
            with self._runtime_lock:
                if self._client is None:
                    import openai  # lazy: importing it takes most of a second

                    self._client = openai.OpenAI(
                        base_url=self.base_url, api_key=self._api_key, timeout=self.timeout, max_retries=0
                    )
        return self._client

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

    def _generate(self, requests: list[ChatRequest]) -> Iterator[tuple[int, str]]:
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

    # -- one request with retries --------------------------------------------------------------

    def _send(self, request: ChatRequest) -> str:
        """Sends one request, retrying transient failures; returns the reply text."""
        failure = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats.add(retries=1)
                delay = self._backoff(attempt, failure.wait)
                logger.info(
                    "chat %s (%s): %s, retry %d/%d in %.2fs",
                    self.base_url, self.model, failure.status, attempt, self.max_retries, delay,
                )
                time.sleep(delay)
            self.stats.add(requests=1)
            try:
                return self._attempt(request)
            except Exception as err:  # classified below; unknown errors propagate
                failure = self._classify(err)
                if failure is None:
                    raise
            if not failure.retryable:
                raise ChatClientError(self._failure_message(failure, attempts=attempt + 1))
        raise ChatClientError(self._failure_message(failure, attempts=self.max_retries + 1))

    def _attempt(self, request: ChatRequest) -> str:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if self.seed is not None:
            kwargs["seed"] = self.seed
        response = self.client.chat.completions.create(**kwargs)
        if not response.choices:
            return ""
        return response.choices[0].message.content or ""

    def _backoff(self, attempt: int, server_wait: float | None) -> float:
        """Seconds to wait before retry ``attempt`` (1-based): Retry-After, else jittered doubling."""
        if server_wait is not None:
            return min(max(server_wait, 0.0), self.backoff_max)
        delay = min(self.backoff_base * 2 ** (attempt - 1), self.backoff_max)
        return delay * (0.5 + 0.5 * self._rng.random())

    def _classify(self, err: Exception) -> _Failure | None:
        """Describes an exception from the openai package, or None if it is not one of its errors."""
        import openai

        if isinstance(err, openai.APITimeoutError):
            return _Failure("timeout", retryable=True, detail=f"no answer within {self.timeout:g}s")
        if isinstance(err, openai.APIConnectionError):
            cause = err.__cause__ or err
            return _Failure("connection error", retryable=True, detail=f"{type(cause).__name__}: {cause}")
        if isinstance(err, openai.APIStatusError):
            code = err.status_code
            retryable = code in (408, 429) or code >= 500
            wait = _retry_after(err.response.headers) if retryable else None
            return _Failure(f"HTTP {code}", retryable, wait, detail=_error_detail(err))
        if isinstance(err, openai.APIError):
            return _Failure("invalid response", retryable=False, detail=str(err))
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
        try:
            available = [m.id for m in self.client.models.list().data]
        except Exception as err:
            failure = self._classify(err)
            if failure is None:
                raise
            if failure.status == "HTTP 404":
                return self._check_with_chat()
            raise ChatClientError(self._check_message(failure)) from None
        if available and self.model not in available:
            shown = ", ".join(sorted(available)[:20]) + (", ..." if len(available) > 20 else "")
            raise ChatClientError(
                f"Model {self.model!r} is not served by {self.base_url}; it offers: {shown}. "
                "Set chat.model to one of them."
            )

    def _check_with_chat(self) -> None:
        request = self._request([{"role": "user", "content": "Say OK."}], max_tokens=1, temperature=0.0)
        self.stats.add(requests=1)
        try:
            self._attempt(request)
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
        else:
            hint = _status_hint(failure.status, self.api_key_env)
            text = f"The chat server at {self.base_url} refused model {self.model!r}: {failure.status}"
            text += f" ({failure.detail})" if failure.detail else ""
            text += f". {hint}" if hint else "."
        return self._redact(text)


def _retry_after(headers) -> float | None:
    """Seconds the server asks to wait (``retry-after-ms`` or ``retry-after``), or None."""
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


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


# --------------------------------------------------------------------------------------------
# Local transformers models
# --------------------------------------------------------------------------------------------


class ChatBacked:
    """Base of the plug-ins that talk through a ``ChatClient`` (LLM students and judges).

    Args:
        client: Anything with ``chat_batch`` / ``chat_json_batch``; default a ``LocalChatClient()``
            on the embedded model, built on first use (so configuring one loads nothing).
        max_tokens: Reply length bound.
        temperature: Sampling temperature (``None`` keeps the client's default).
    """

    def __init__(self, client: Any = None, max_tokens: int | None = None, temperature: float | None = None) -> None:
        self._client = client
        self.max_tokens = max_tokens
        self.temperature = temperature

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = LocalChatClient()
        return self._client


class LocalChatClient(ChatClient):
    """A client that generates with a local Hugging Face causal LM.

    The model is loaded on first use through :func:`agents.models.load_backbone`. Requests are
    generated in left-padded batches of ``batch_size``; requests that share length and temperature
    settings share a batch. Sampling uses one random generator per request seeded by ``seed`` and
    the request's digest, so a request's reply does not depend on its batch companions.

    Args:
        model: Any name :func:`agents.models.load_backbone` understands (``"tiny-random"`` for tests).
        device: Torch device, or ``"auto"``.
        batch_size: Most conversations per ``generate`` call.
        max_new_tokens: Default reply length bound, in tokens.
        temperature: Default sampling temperature; 0 means greedy.
        top_p: Nucleus-sampling mass.
        cache_path: Response cache file; ``"auto"`` for the default, ``None`` for none.
        seed: Base seed of the per-request generators.
    """

    backend = "local"

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        device: str = "cpu",
        batch_size: int = 8,
        max_new_tokens: int = 128,
        temperature: float = 0.7,
        top_p: float = 0.95,
        cache_path: str | os.PathLike | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(cache_path=cache_path, temperature=temperature, max_tokens=max_new_tokens)
        self.model = model
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.top_p = float(top_p)
        self.seed = int(seed)
        self._backbone = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_backbone=None, _lock=None)  # the copy loads its own model
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _cache_fields(self) -> dict:
        return {"model": self.model, "seed": self.seed, "top_p": self.top_p, "base_url": None}

    @property
    def backbone(self):
        """The loaded :class:`agents.models.Backbone`, loaded on first access."""
        if self._backbone is None:
            with self._lock:
                if self._backbone is None:
                    self._backbone = self._load()
        return self._backbone

    def _load(self):
        import torch

        try:
            from agents.models import load_backbone

            backbone = load_backbone(self.model, device=self.device, dtype=torch.float32)
        except ImportError as err:
            raise ChatClientError(f"LocalChatClient needs the agents package ({err}).") from err
        except (RuntimeError, OSError, ValueError) as err:
            raise ChatClientError(f"Cannot load local chat model {self.model!r}: {err}") from err
        if not getattr(backbone.tokenizer, "chat_template", None):
            raise ChatClientError(
                f"Local model {self.model!r} has no chat template; use an instruction-tuned model."
            )
        backbone.tokenizer.padding_side = "left"
        return backbone

    def check(self) -> None:
        """Loads the model (if not yet loaded) and confirms it has a chat template.

        Raises:
            ChatClientError: If the model cannot be loaded or cannot format conversations.
        """
        _ = self.backbone

    def _generate(self, requests: list[ChatRequest]) -> Iterator[tuple[int, str]]:
        for chunk in _chunks(requests, self.batch_size):
            replies = self._generate_chunk([requests[i] for i in chunk])
            for i, reply in zip(chunk, replies):
                yield i, reply

    def _generate_chunk(self, requests: list[ChatRequest]) -> list[str]:
        """Replies for requests sharing ``max_tokens`` and ``temperature``, in one ``generate`` call."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        model, tokenizer = self.backbone.model, self.backbone.tokenizer
        texts = [
            tokenizer.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False) for r in requests
        ]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        temperature = requests[0].temperature
        processors = LogitsProcessorList()
        if temperature > 0:
            seeds = [(self.seed + int(r.key[:15], 16)) % 2**63 for r in requests]
            processors.append(_PerRowSampler(seeds, temperature, self.top_p, model.device))
        config = GenerationConfig(  # greedy over the sampler's one-hot scores == per-row sampling
            max_new_tokens=requests[0].max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
            bos_token_id=model.generation_config.bos_token_id,
        )
        self.stats.add(requests=len(requests))
        with self._lock, torch.inference_mode():
            output = model.generate(**inputs, generation_config=config, logits_processor=processors)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]  # (B, T_new)
        return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _chunks(requests: list[ChatRequest], size: int) -> list[list[int]]:
    """Indices grouped by (max_tokens, temperature), in order, then cut into pieces of ``size``."""
    groups: dict[tuple[int, float], list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault((r.max_tokens, r.temperature), []).append(i)
    return [idx[k : k + size] for idx in groups.values() for k in range(0, len(idx), size)]


class _PerRowSampler:
    """A logits processor that samples each row with its own generator and returns one-hot scores.

    Temperature and top-p are applied here; the caller then decodes greedily, which picks exactly
    the sampled token. Separate generators make each row's draw independent of the other rows.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device) -> None:
        import torch
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.warpers = [TemperatureLogitsWarper(temperature)]
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids, scores):
        import torch

        for warp in self.warpers:
            scores = warp(input_ids, scores)
        probs = torch.softmax(scores.float(), dim=-1)  # (B, V)
        picks = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)])  # (B,)
        onehot = torch.full_like(scores, float("-inf"))
        return onehot.scatter_(1, picks[:, None], 0.0)
