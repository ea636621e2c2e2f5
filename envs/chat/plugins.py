"""Plug-ins that talk through a chat client, and what the trainers ask of them.

:class:`ChatBacked` is the base of the LLM students, judges and critics; :func:`chat_clients`,
:func:`chat_counters` and :func:`check_servers` find the clients behind a task's plug-ins (its
``chat_plugins()``), sum their traffic, and check their servers before a run's first step.
"""

from __future__ import annotations

from typing import Any

from envs.chat.base import ChatClient, ChatStats


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
        """The chat client, a ``LocalChatClient`` on the embedded model when none was given."""
        if self._client is None:
            from envs.chat.local import (
                LocalChatClient,  # lazy: the local backend imports torch
            )

            self._client = LocalChatClient()
        return self._client


def chat_clients(*plugins: Any) -> list[ChatClient]:
    """The distinct chat clients behind ``plugins``, in order.

    A plug-in counts when it is a client itself or holds one as ``client`` (every
    :class:`ChatBacked`); plug-ins without a chat backend (rule-based judges) add nothing, and a
    :class:`ChatBacked` whose default local client was never built adds nothing either (none is
    built here).
    """
    clients: dict[int, Any] = {}
    for plugin in plugins:
        if isinstance(plugin, ChatBacked):
            client = plugin._client
        else:
            client = plugin if hasattr(plugin, "stats") else getattr(plugin, "client", None)
        if isinstance(getattr(client, "stats", None), ChatStats):
            clients.setdefault(id(client), client)
    return list(clients.values())


def chat_counters(*plugins: Any) -> dict[str, int]:
    """Summed :class:`ChatStats` of the chat clients behind ``plugins`` (each client counted once).

    Returns:
        ``{counter: total}``; empty when no plug-in talks to a chat model.
    """
    totals: dict[str, int] = {}
    for client in chat_clients(*plugins):
        for key, value in client.stats.as_dict().items():
            totals[key] = totals.get(key, 0) + value
    return totals


def check_servers(*plugins: Any) -> None:
    """Confirms that every chat server behind ``plugins`` answers and serves its model (one attempt each).

    Meant to run before a trainer's first step, so a server that is not up, a wrong URL or an unknown
    model stops the run with one message instead of failing a step after many retries. In-process
    clients are skipped: they load their model on first use.

    Raises:
        ChatClientError: The first client's message: a server that is not up, a wrong URL, a rejected
            key or a model the server does not serve.
    """
    for client in chat_clients(*plugins):
        if client.backend != "local":
            client.check()
