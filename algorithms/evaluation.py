"""Held-out evaluation of a trained multi-head policy, through the task contract.

Every head of the policy, and by default the equal blend of the heads and the untrained base model,
play the task's held-out episodes (:meth:`Task.eval_options`) with the same openings and sampling
seeds; the task's own report (:meth:`Task.evaluate`) turns the records into figures. The results go
into the run folder as ``<split>.json`` (figures and every episode), ``<split>.md`` (tables) and
``<split>.png``, and under ``<split>/`` in TensorBoard: ``eval`` by default (the tuning split),
``test`` for headline numbers (``algorithm.eval.split=test``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from algorithms.episodes import play_episodes
from algorithms.runs import write_json
from envs.tasks.base import EpisodeRecord, Task


def head_rows(policy, head_for_persona: Sequence[int]) -> dict[str, dict[str, int]]:
    """``head_<name> -> {"head": index}`` for every head that serves a persona, in persona order."""
    indices = list(dict.fromkeys(head_for_persona))
    return {f"head_{policy.head_names[i]}": {"head": i} for i in indices}


def play_rows(policy, tokenizer, task: Task, settings: Any, *, head_for_persona: Sequence[int],
              base: tuple[Any, Any] | None = None, contexts: int | None = None,
              split: str | None = None) -> dict[str, list[EpisodeRecord]]:
    """Every evaluation row plays the same held-out episodes.

    Args:
        policy: The trained MultiHeadPolicy.
        tokenizer: Its tokenizer.
        task: The task.
        settings: ``split``, ``contexts``, ``turns``, ``max_new_tokens``, ``temperature``, ``seed``,
            ``baselines``, ``batch_size``, ``reuse_kv``.
        head_for_persona: The head that serves each persona (identity for MAH, all 0 for MT).
        base: ``(model, tokenizer)`` of the untrained base model (None: no base row).
        contexts: Held-out contexts (default ``settings.contexts``; None there: the whole split).
        split: The split played (default ``settings.split``).

    Returns:
        Row name (``head_<name>``, ``blend``, ``base``) -> its records.
    """
    was_training = policy.training
    policy.eval()
    drivers: dict[str, tuple[Any, Any, dict]] = {
        name: (policy, tokenizer, sel) for name, sel in head_rows(policy, head_for_persona).items()}
    if settings.baselines:
        if policy.num_heads > 1:
            drivers["blend"] = (policy, tokenizer, {})
        if base is not None:
            drivers["base"] = (base[0], base[1], {})
    split = split or settings.split
    options = task.eval_options(contexts or settings.contexts, split=split)
    rows = {}
    for name in (bar := tqdm(drivers, desc="evaluation", unit="row", leave=False)):
        bar.set_postfix_str(f"{name}: {len(options)} episodes")
        model, tok, selection = drivers[name]
        rows[name] = play_episodes(model, tok, task, selection, options, driver=name, turns=settings.turns,
                                   max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                   seed=settings.seed, split=split, batch_size=settings.batch_size,
                                   reuse_kv=settings.reuse_kv)
    policy.train(was_training)
    return rows


def evaluate_policy(policy, tokenizer, task: Task, settings: Any, out_dir: str | Path, *,
                    head_for_persona: Sequence[int], base: tuple[Any, Any] | None = None, writer=None,
                    step: int | None = None) -> dict[str, Any]:
    """Plays the held-out episodes with every head (and the blend and base model) and writes the report.

    The report of split ``settings.split`` goes to ``<split>.json``, ``<split>.md`` and ``<split>.png``
    (``eval.*`` for tuning, ``test.*`` for headline numbers), and to TensorBoard under ``<split>/``.

    Args:
        policy: The trained MultiHeadPolicy.
        tokenizer: Its tokenizer.
        task: The task.
        settings: ``contexts``, ``turns``, ``max_new_tokens``, ``temperature``, ``seed``,
            ``baselines`` (also the equal blend and the base model), ``bootstrap``, ``confidence``.
        out_dir: Where the report's files go.
        head_for_persona: The head that serves each persona (identity for MAH, all 0 for MT).
        base: ``(model, tokenizer)`` of the untrained base model, for its row (None: no such row).
        writer: Optional TensorBoard writer for ``eval/`` scalars.
        step: The step those scalars are logged at.

    Returns:
        ``{"summary": the report's figures, "markdown": its tables}``.
    """
    out_dir = Path(out_dir)
    rows = play_rows(policy, tokenizer, task, settings, head_for_persona=head_for_persona, base=base)
    heads = list(head_rows(policy, head_for_persona))
    report = task.evaluate(rows, heads=heads, base="base" if "base" in rows else None,
                           bootstrap=settings.bootstrap, confidence=settings.confidence, seed=settings.seed)
    split = settings.split
    report.metrics["split"] = split
    write_json(out_dir / f"{split}.json", {"report": report.metrics,
                                          "records": [r.to_json() for records in rows.values() for r in records]})
    (out_dir / f"{split}.md").write_text(report.markdown)
    if report.plot is not None:
        report.plot(out_dir / f"{split}.png")
    if writer is not None:
        for key, value in report.scalars.items():
            if value == value:  # NaN-free
                writer.add_scalar(f"{split}/{key}", value, step)
    return {"summary": report.metrics, "markdown": report.markdown, "split": split}
