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


# The training streams below predate seed_for and keep their original arithmetic, so that pinned
# losses and half-finished runs (which resume by recomputing their requests) stay bit-identical.
# They are named here, once; new streams use seed_for.


def rollout_seed(seed: int, step: int, shard: int) -> int:
    """Sampling seed of one rollout request (shard ``shard`` of training step ``step``)."""
    return int(seed) * 1_000_003 + int(step) + int(shard) * 1_000_000_007


def episode_seed(seed: int, episode: int) -> int:
    """Reset seed of training episode number ``episode`` (counted over the whole run)."""
    return int(seed) * 10_000_019 + int(episode)


def turn_seed(seed: int, turn: int) -> int:
    """Sampling seed of turn ``turn`` of held-out episodes played with seed ``seed``."""
    return int(seed) * 7919 + int(turn)
