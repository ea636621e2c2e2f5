"""The on-disk response cache: a sqlite table from request digest to reply text.

Only a sha256 digest of the request and the reply are stored, so API keys never reach the disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

AUTO = "auto"  # ``cache_path`` value meaning "the default file under the cache directory"
CACHE_FILE = "chat_cache.sqlite"


def default_cache_dir() -> Path:
    """The project's cache directory: ``$PLURALGYM_CACHE``, else ``~/.cache/pluralgym``.

    Defers to :func:`agents.models.cache_dir` so that both packages agree; the local fallback only
    matters when ``agents`` cannot be imported.
    """
    try:
        from agents.models import (
            cache_dir,  # lazy: agents imports torch and transformers
        )
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
