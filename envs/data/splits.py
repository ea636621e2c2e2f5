"""The data splits every task shares, and the one place a split is read.

``train`` feeds the trainers; ``router_train`` / ``router_val`` the router learner and its choice
of checkpoint; ``eval`` every tuning decision, learning curve and sweep; ``test`` the headline
numbers only. No default, curve or tuning tool reads ``test``.

Every loader and task reads a split through :func:`read_split`, which checks the name and tells
any watcher (:func:`watch_splits`) which split was read. The tests watch a whole training run this
way and fail on a read of ``test``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

SPLITS = ("train", "router_train", "router_val", "eval", "test")
HEADLINE_SPLIT = "test"

_watchers: list[Callable[[str], None]] = []


def read_split(split: str, where: str = "the task") -> str:
    """Checks ``split`` and reports the read to the watchers; returns ``split``.

    Args:
        split: The split about to be read.
        where: Who reads it (for the error message).

    Raises:
        ValueError: For an unknown split name.
    """
    if split not in SPLITS:
        raise ValueError(f"{where}: unknown split {split!r}; the splits are {', '.join(SPLITS)}.")
    for watcher in list(_watchers):
        watcher(split)
    return split


@contextmanager
def watch_splits(watcher: Callable[[str], None]) -> Iterator[None]:
    """Calls ``watcher(split)`` on every :func:`read_split` inside the block (it may raise to stop a read)."""
    _watchers.append(watcher)
    try:
        yield
    finally:
        _watchers.remove(watcher)


def check_contexts(contexts: int | None, available: int, split: str, unit: str) -> int:
    """How many ``unit``s to draw: ``contexts``, or all of the split when it is None.

    More than the split holds is refused, never repeated silently.

    Raises:
        ValueError: Naming the split, what it holds and how to ask for less.
    """
    if contexts is None:
        return available
    if int(contexts) < 1:
        raise ValueError(f"Asked for {contexts} {unit}s of split {split!r}; ask for at least 1.")
    if int(contexts) > available:
        raise ValueError(f"Asked for {contexts} {unit}s of split {split!r}, which holds {available}; ask for at "
                         f"most {available} (e.g. algorithm.eval.contexts={available} or benchmark.contexts="
                         f"{available}), since repeating a {unit} would count it twice.")
    return int(contexts)


def personagym_part(persona_id: str) -> str:
    """Which part a shipped PersonaGym persona (``pg-<n>``) belongs to: ``eval``, ``test`` or ``train``.

    ``n`` = 3 mod 4 is held out for ``eval`` (50 of 200) and ``n`` = 1 mod 8 for ``test`` (25); the
    rest train. The persona env's professional cores and the math env's prompt personas share the rule.
    """
    tail = persona_id.rsplit("-", 1)[-1]
    if not tail.isdigit():
        return "train"
    n = int(tail)
    return "eval" if n % 4 == 3 else "test" if n % 8 == 1 else "train"
