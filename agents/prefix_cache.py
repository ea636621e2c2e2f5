"""Keys and values kept from one turn of a dialogue to the next, so a turn's prompt is not run twice.

In a multi-turn episode, the prompt of turn ``t + 1`` begins with the prompt of turn ``t`` and the
turn sampled from it. Running that whole dialogue through the model again at every turn is about
half of a rollout's time on a CPU (measured on the router's tutoring episodes: 29 s of prefill
against 20 s of decoding for 32 episodes of 3 turns). A :class:`PrefixCache` keeps, for every row
of a batch, the tokens the model has read and their keys and values; the next
:func:`agents.generate` call with the cache feeds each row only the tokens after its longest
common prefix with them, so nothing depends on how the task renders its dialogues.

The logits equal a full prefill's up to float rounding (keys computed in another batch shape), so
under a fixed seed a rare near-tie can sample another token than a run without the cache: the
distribution is the same, the exact tokens are not. That is why it is an option
(``play_episodes(reuse_kv=True)``), not a change to :func:`agents.generate`'s default.

Only caches whose layers all keep every position (``transformers``' ``DynamicLayer``) are reused;
for sliding-window or linear-attention layers, rows are simply not kept and every turn is prefilled.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache as memoize

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@dataclass
class RowState:
    """What the model has read of one row: its tokens and, per layer, their keys and values.

    Attributes:
        tokens: ``(L,)`` token ids, without padding.
        keys: One ``(kv_heads, L, head_dim)`` tensor per layer.
        values: Same shapes as ``keys``.
    """

    tokens: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


class PrefixCache:
    """One :class:`RowState` (or None) per row of a batch that is decoded turn after turn.

    Args:
        size: Number of rows (the batch's episodes, in the order of the prompts passed to ``generate``).

    Attributes:
        rows: Each row's state after its latest turn; None before its first.
        reused_tokens: Prompt tokens taken from the cache so far.
        prompt_tokens: Prompt tokens seen so far (reused or fed).
    """

    def __init__(self, size: int):
        self.rows: list[RowState | None] = [None] * size
        self.reused_tokens = 0
        self.prompt_tokens = 0

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def reused_fraction(self) -> float:
        """Share of prompt tokens that were not run through the model again."""
        return self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def continue_chunk(self, start: int, ids: torch.Tensor, mask: torch.Tensor, pad_id: int
                       ) -> tuple[torch.Tensor, torch.Tensor, Past | None]:
        """What rows ``start:start + B`` still have to feed of their left-padded prompts ``(B, P)``.

        Returns:
            ``(ids, mask, past)``: the tokens after each row's cached start, left-padded, and the
            cached start itself (None, with the prompts unchanged, when no row has one).
        """
        prompts = [row[m.bool()] for row, m in zip(ids, mask)]
        past = continue_rows(self.rows[start:start + len(prompts)], prompts)
        self.prompt_tokens += int(mask.sum())
        if past is None:
            return ids, mask, None
        self.reused_tokens += sum(past.matched)
        rest = [p[m:] for p, m in zip(prompts, past.matched)]
        fed = pad_sequence(rest, batch_first=True, padding_value=pad_id, padding_side="left")
        fed_mask = pad_sequence([torch.ones_like(r) for r in rest], batch_first=True, padding_side="left")
        return fed, fed_mask, past

    def keep(self, start: int, ids: torch.Tensor, mask: torch.Tensor, completions: torch.Tensor,
             kept: Sequence[tuple[list[torch.Tensor], list[torch.Tensor]] | None]) -> None:
        """Stores what rows ``start:start + B`` read: their prompts, the completion tokens they fed, and ``kept``.

        Args:
            start: Index of the chunk's first row.
            ids: ``(B, P)`` the rows' whole prompts, left-padded.
            mask: ``(B, P)`` their mask.
            completions: ``(B, T)`` the sampled tokens.
            kept: Per row, the keys and values the decoding loop copied out (:func:`take_rows`), or
                None where the model's cache cannot be reused (the row is then prefilled next time).
        """
        for i, state in enumerate(kept):
            if state is None:
                self.rows[start + i] = None
                continue
            length = state[0][0].shape[1]
            tokens = torch.cat([ids[i][mask[i].bool()], completions[i]])[:length]
            self.rows[start + i] = RowState(tokens, *state)


@dataclass
class Past:
    """A batch's cached start, ready to be continued: left-padded to a common width ``M``.

    Attributes:
        cache: The keys and values of the ``M`` columns, as a ``DynamicCache``.
        mask: ``(B, M)`` 1 where a column holds one of the row's cached tokens.
        matched: Tokens each row takes from the cache.
    """

    cache: DynamicCache
    mask: torch.Tensor
    matched: list[int]


@memoize
def _declared_cache_name(module_type: type) -> str | None:
    parameters = inspect.signature(module_type.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def with_cache(module, cache) -> dict:
    """The keyword that hands ``cache`` to a ``transformers`` module's forward, under this version's name.

    ``transformers`` renamed ``past_key_values`` to ``cache`` (5.2x warns on the old name and will
    drop it). A wrapper that passes ``**kwargs`` on (a peft model) is asked for its base model's
    name; modules that name neither keep the old one.
    """
    while (name := _declared_cache_name(type(module))) is None and hasattr(module, "get_base_model"):
        base = module.get_base_model()
        if base is module:
            break
        module = base
    return {name or "past_key_values": cache}


def cache_of(output):
    """The cache a forward returned: ``output.cache``, or ``output.past_key_values`` before the rename."""
    found = getattr(output, "cache", None)
    return found if found is not None else getattr(output, "past_key_values", None)


def reusable(cache) -> bool:
    """Whether every layer of a ``transformers`` cache keeps all positions, so rows can be copied out and back."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def common_prefix(a: torch.Tensor, b: torch.Tensor, limit: int) -> int:
    """Length of the longest common start of two 1-D token tensors, at most ``limit``."""
    n = min(len(a), len(b), limit)
    if n <= 0:
        return 0
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if len(differ) else n


def continue_rows(states: Sequence[RowState | None], prompts: Sequence[torch.Tensor]) -> Past | None:
    """The cached starts of ``prompts`` (one 1-D token tensor per row), or None when no row has one.

    Each row reuses its longest common prefix with its state's tokens, leaving at least its last
    prompt token to feed, whose logits start the completion.
    """
    matched = [0 if s is None else common_prefix(s.tokens, p.to(s.tokens.device), len(p) - 1)
               for s, p in zip(states, prompts)]
    width = max(matched, default=0)
    if width == 0:
        return None
    template = next(s for s, m in zip(states, matched) if m)
    rows, device = len(prompts), template.keys[0].device
    mask = torch.zeros((rows, width), dtype=torch.long, device=device)
    for i, m in enumerate(matched):
        mask[i, width - m:] = 1
    cache = DynamicCache()
    for layer in range(len(template.keys)):
        kv = []
        for part in (template.keys[layer], template.values[layer]):
            kv.append(part.new_zeros((rows, part.shape[0], width, part.shape[2])))
        for i, (state, m) in enumerate(zip(states, matched)):
            if m:
                kv[0][i, :, width - m:] = state.keys[layer][:, :m]
                kv[1][i, :, width - m:] = state.values[layer][:, :m]
        cache.update(kv[0], kv[1], layer)
    return Past(cache, mask, matched)


def take_rows(cache, mask: torch.Tensor, rows: Sequence[int]) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Copies the keys and values of batch rows out of a cache, without their padding columns.

    Args:
        cache: A reusable ``transformers`` cache (:func:`reusable`) of ``L`` columns.
        mask: ``(B, >= L)`` attention mask whose first ``L`` columns describe the cache.
        rows: Batch indices to copy.

    Returns:
        Per row: one ``(kv_heads, L_row, head_dim)`` tensor per layer for the keys, and for the values.
    """
    length = cache.get_seq_length()
    out = []
    for r in rows:
        real = mask[r, :length].bool()
        out.append(([layer.keys[r][:, real] for layer in cache.layers],
                    [layer.values[r][:, real] for layer in cache.layers]))
    return out
