"""Named seed derivation: every random stream of a run gets its own seed from the run's seed and a name.

``seed_for(cfg.seed, "router/train")`` replaces arithmetic such as ``seed * 1_000_003 + 1``: streams
with different names never collide, adding a stream never moves another, and the name says what the
stream is for.
"""

from __future__ import annotations

import hashlib


def seed_for(seed: int, name: str) -> int:
    """A seed in ``[0, 2**31)`` for the stream ``name`` of a run seeded with ``seed`` (deterministic)."""
    digest = hashlib.blake2b(f"{int(seed)}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 2**31
