"""One chat interface for every LLM-backed piece: student simulators, judges and critics.

Two backends share the :class:`ChatClient` interface:

- :class:`OpenAIChatClient` (``openai_client.py``) talks to any server that speaks the OpenAI
  chat-completions protocol (OpenAI, vLLM, llama.cpp's server, Ollama, a LiteLLM proxy, ...).
  The ``openai`` SDK does the retrying; the project's transport (``transport.py``) gives every
  attempt a wall-clock deadline, turns unusable 200 replies into retryable failures and counts
  attempts. Batches go through a bounded thread pool.
- :class:`LocalChatClient` (``local.py``) runs a Hugging Face causal LM in-process, generating in
  left-padded batches with per-request seeded sampling.

Both keep an optional sqlite response cache (``cache.py``) keyed by a sha256 digest of the whole
request; API keys never enter it, and only usable replies are stored. Replies that should be JSON
go through :meth:`ChatClient.chat_json_batch`, which repairs them with :func:`parse_json_reply`
(``parsing.py``, on top of ``json-repair``), checks them with the caller's validator and falls
back to the caller's default instead of raising; :class:`ChatStats` counts all of it.

Example:
    >>> client = OpenAIChatClient(model="gpt-4o-mini")                      # doctest: +SKIP
    >>> client.check()                                                      # doctest: +SKIP
    >>> client.chat_json([{"role": "user", "content": 'Answer {"ok": true}'}], default={})  # doctest: +SKIP
    JsonReply(data={'ok': True}, raw='{"ok": true}', ok=True, error=None)
"""

from envs.chat.base import (
    ChatClient,
    ChatClientError,
    ChatRequest,
    ChatStats,
    JsonReply,
    Messages,
    TransientChatError,
    Validator,
)
from envs.chat.cache import (
    AUTO,
    CACHE_FILE,
    ResponseCache,
    default_cache_dir,
    request_digest,
    resolve_cache_path,
)
from envs.chat.local import LocalChatClient
from envs.chat.openai_client import (
    DUMMY_API_KEY,
    OPENAI_DEFAULT_URL,
    OpenAIChatClient,
    chat_reply_problem,
    check_api_key_env,
)
from envs.chat.parsing import parse_json_reply
from envs.chat.plugins import ChatBacked, chat_clients, chat_counters, check_servers

__all__ = [
    "AUTO",
    "CACHE_FILE",
    "DUMMY_API_KEY",
    "OPENAI_DEFAULT_URL",
    "ChatBacked",
    "ChatClient",
    "ChatClientError",
    "ChatRequest",
    "ChatStats",
    "JsonReply",
    "LocalChatClient",
    "Messages",
    "OpenAIChatClient",
    "ResponseCache",
    "TransientChatError",
    "Validator",
    "chat_clients",
    "chat_counters",
    "check_servers",
    "chat_reply_problem",
    "check_api_key_env",
    "default_cache_dir",
    "parse_json_reply",
    "request_digest",
    "resolve_cache_path",
]
