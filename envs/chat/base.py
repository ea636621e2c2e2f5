"""The backend-independent half of the chat clients: outputs, counters, caching and JSON replies."""

from __future__ import annotations

import abc
import copy
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

from envs.chat.cache import ResponseCache, request_digest, resolve_cache_path
from envs.chat.parsing import parse_json_reply

logger = logging.getLogger(__name__)

Messages = list[dict]
Validator = Callable[[Any], "str | None"]  # parsed reply -> why the caller cannot use it, or None


class ChatClientError(RuntimeError):
    """A chat backend cannot serve requests; the message says which server, model and what to fix.

    Attributes:
        transient: True when retrying later could succeed (timeouts, dropped connections, 5xx,
            429, unusable bodies); False for faults only a person can fix (a rejected key, an
            unknown model or endpoint, any other 4xx).
    """

    transient = False


class TransientChatError(ChatClientError):
    """A request that failed after all retries for a reason that may go away by itself."""

    transient = True


# --------------------------------------------------------------------------------------------
# Outputs and counters
# --------------------------------------------------------------------------------------------


@dataclass
class ChatStats:
    """Counters of a client's traffic, safe to update from several threads.

    Attributes:
        requests: HTTP attempts (or local generations) actually made, retries included; a cache
            hit makes none.
        cache_hits: Requests answered from the response cache.
        retries: Attempts repeated after a timeout, a connection error, an unusable body, a 408,
            409, 429 or a 5xx.
        failures: Logical requests that ended without a usable reply after all retries.
        fallbacks: JSON replies replaced by the caller's default, for any reason: not JSON,
            rejected by the caller's validator, or a failed request.
        json_repairs: JSON replies that only parsed after repair (they are not fallbacks).
    """

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    fallbacks: int = 0
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
        data: The parsed object, or a copy of the caller's default when the reply was unusable.
        raw: The reply text exactly as the model produced it ("" when the request failed).
        ok: False when ``data`` is the fallback default.
        error: Why the reply was replaced by the default; None when ``ok``.
    """

    data: Any
    raw: str
    ok: bool
    error: str | None = None


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
# The interface
# --------------------------------------------------------------------------------------------


class ChatClient(abc.ABC):
    """Sends chat conversations to a language model and returns its replies.

    Subclasses describe a backend with :meth:`_cache_fields` (everything besides the messages that
    determines a reply), :meth:`_generate` (replies for requests the cache could not answer) and
    :meth:`check`. Caching, batching, ordering, failure counting and JSON handling live here.
    Only usable replies are cached: non-empty text for :meth:`chat_batch`, parsed and validated
    JSON for :meth:`chat_json_batch`.

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
    def _generate(self, requests: list[ChatRequest]) -> Iterator[tuple[int, str | TransientChatError]]:
        """Produces replies for ``requests``, yielding ``(index, reply)`` as each one is ready.

        A request that failed for a transient reason yields its :class:`TransientChatError`
        instead of a reply, so the other requests of the batch still count.

        Raises:
            ChatClientError: If the backend cannot answer at all (bad key, unknown model, ...).
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
        non-empty reply is cached as soon as it arrives, so an error part-way loses no finished work.

        Raises:
            ChatClientError: If the backend cannot answer one of them.
        """
        requests = [self._request(m, max_tokens, temperature) for m in conversations]
        replies: list[str | None] = [self._cached(r) for r in requests]
        self.stats.add(cache_hits=sum(r is not None for r in replies))
        for i, outcome in self._fill(requests, replies):
            if isinstance(outcome, ChatClientError):
                raise outcome
            replies[i] = outcome
            if outcome.strip():
                self._store(requests[i], outcome)
        return replies

    def chat_json(
        self,
        messages: Messages,
        *,
        default: Any,
        validate: Validator | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> JsonReply:
        """The reply to one conversation, parsed as JSON (see :meth:`chat_json_batch`)."""
        return self.chat_json_batch(
            [messages], default=default, validate=validate, max_tokens=max_tokens, temperature=temperature
        )[0]

    def chat_json_batch(
        self,
        conversations: Sequence[Messages],
        *,
        default: Any,
        validate: Validator | Sequence[Validator | None] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> list[JsonReply]:
        """Replies to many conversations, each parsed as JSON, in the order given.

        Never raises for one bad reply. A malformed reply is repaired when possible (counted in
        ``stats.json_repairs``). A reply that cannot be parsed, that ``validate`` rejects, or whose
        request failed for a transient reason after all retries (counted in ``stats.failures``)
        becomes ``JsonReply(data=<deep copy of default>, ok=False, error=<why>)``, counted in
        ``stats.fallbacks``. Only parsed and validated replies are cached; a cached reply that
        fails them is requested again.

        Args:
            conversations: The conversations.
            default: What ``data`` holds when a reply is unusable.
            validate: ``validate(data) -> str | None`` returns why a parsed reply is unusable, or
                None to accept it; or one such function (or None) per conversation.
            max_tokens: Reply length bound; the client's default when None.
            temperature: Sampling temperature; the client's default when None.

        Raises:
            ChatClientError: For faults that retrying cannot fix (a rejected key, an unknown model
                or endpoint, another 4xx); ``error.transient`` is False.
        """
        requests = [self._request(m, max_tokens, temperature) for m in conversations]
        checks = list(validate) if isinstance(validate, Sequence) else [validate] * len(requests)
        if len(checks) != len(requests):
            raise ValueError(f"validate has {len(checks)} entries for {len(requests)} conversations")
        results: list[JsonReply | None] = [None] * len(requests)
        for i, request in enumerate(requests):
            raw = self._cached(request)
            if raw is not None and (reply := self._to_json(raw, default, checks[i], cached=True)).ok:
                results[i] = reply
        self.stats.add(cache_hits=sum(r is not None for r in results))
        for i, outcome in self._fill(requests, results):
            if isinstance(outcome, ChatClientError):
                if not outcome.transient:
                    raise outcome
                results[i] = self._fallback(default, "", f"request failed: {outcome}")
                logger.warning("chat request failed, using the default: %s", outcome)
                continue
            results[i] = self._to_json(outcome, default, checks[i])
            if results[i].ok:
                self._store(requests[i], outcome)
        return results

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

    def _cached(self, request: ChatRequest) -> str | None:
        return self.cache.get(request.key) if self.cache is not None else None

    def _store(self, request: ChatRequest, reply: str) -> None:
        if self.cache is not None:
            self.cache.put(request.key, reply, backend=self.backend, model=self.model)

    def _fill(self, requests: list[ChatRequest], done: list) -> Iterator[tuple[int, str | TransientChatError]]:
        """Runs ``_generate`` on the requests whose ``done`` entry is None; yields by batch index."""
        pending = [i for i, d in enumerate(done) if d is None]
        if not pending:
            return
        try:
            for j, outcome in self._generate([requests[i] for i in pending]):
                if isinstance(outcome, ChatClientError):
                    self.stats.add(failures=1)
                yield pending[j], outcome
        except ChatClientError:
            self.stats.add(failures=1)
            raise

    def _to_json(self, raw: str, default: Any, check: Validator | None, *, cached: bool = False) -> JsonReply:
        """Parses and validates ``raw``; counts repairs and (unless ``cached``) fallbacks."""
        try:
            data, repaired = parse_json_reply(raw)
        except ValueError:
            logger.debug("chat reply is not JSON, using the default: %r", raw[:200])
            return self._fallback(default, raw, "reply is not JSON", count=not cached)
        problem = check(data) if check is not None else None
        if problem:
            logger.debug("chat reply rejected by the caller (%s): %r", problem, raw[:200])
            return self._fallback(default, raw, problem, count=not cached)
        if repaired:
            self.stats.add(json_repairs=1)
        return JsonReply(data=data, raw=raw, ok=True)

    def _fallback(self, default: Any, raw: str, error: str, *, count: bool = True) -> JsonReply:
        if count:
            self.stats.add(fallbacks=1)
        return JsonReply(data=copy.deepcopy(default), raw=raw, ok=False, error=error)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"
