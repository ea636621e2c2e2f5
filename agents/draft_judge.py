"""Persona-judge decoding (seed 004) over the heads of one multi-head policy.

Two heads take turns: within a block one head *drafts* up to ``block`` tokens and the other
*judges* them; the next block swaps the roles (with more than two heads, the pair moves round the
list: block ``j`` drafts with head ``j mod K`` and judges with head ``j + 1 mod K``). Both heads
read the same backbone hidden state, so one backbone pass per token gives the draft distribution
``q`` and the judge distribution ``p`` at once, and the decoding costs about as much as sampling
from a single head.

Two variants (SPECS D2):

- ``exact=True`` (speculative sampling): the draft token ``t ~ q`` is kept with probability
  ``min(1, p(t) / q(t))``; the first rejected position is filled from the residual
  ``max(0, p - q)`` (normalised) and the block ends; a block whose ``block`` drafts all pass ends
  with a bonus token drawn from ``p``. Every emitted token then follows the judge of its block
  exactly (tested), so the decoding is a block-wise alternation of the heads' distributions, not
  their product: the draft changes the speed of a two-model setting, never the text's law.
- ``exact=False`` (the paper's "greedy decoding with top-k candidates"): ``q`` and ``p`` are
  renormalised over their own ``topk`` most likely tokens, the draft is the argmax of ``q``, the same
  acceptance test is applied, and the residual and the bonus token are argmaxes.

:class:`DraftJudge` is passed to :func:`agents.generate` as ``decoder=`` and counts the tokens its
judges accepted per block (the paper's speed-up figure) in :attr:`DraftJudge.stats`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from agents.multihead import padded_positions
from agents.prefix_cache import cache_of, with_cache
from agents.projection import project
from agents.sampling import drop_ended, multinomial_one, tempered_logprobs


@dataclass
class DraftJudgeStats:
    """What the judges did over the finished blocks of every call so far.

    Attributes:
        blocks: Finished blocks (ended by a rejection or a bonus token; a block cut short by the end
            of a completion is not counted).
        accepted: Draft tokens accepted in those blocks.
        emitted: Tokens emitted in those blocks (accepted drafts plus the residual or bonus token).
    """

    blocks: int = 0
    accepted: int = 0
    emitted: int = 0

    @property
    def accepted_per_block(self) -> float:
        """Mean number of draft tokens the judge accepted per block (``nan`` before any block)."""
        return self.accepted / self.blocks if self.blocks else float("nan")

    @property
    def tokens_per_block(self) -> float:
        """Mean number of tokens emitted per block, between 1 and ``block + 1``."""
        return self.emitted / self.blocks if self.blocks else float("nan")

    def as_dict(self) -> dict[str, float]:
        """The counts and the two means, for reports."""
        return {"blocks": self.blocks, "accepted": self.accepted, "emitted": self.emitted,
                "accepted_per_block": self.accepted_per_block, "tokens_per_block": self.tokens_per_block}


def _top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    """``probs`` restricted to each row's ``k`` most likely tokens and renormalised."""
    values, index = probs.topk(min(k, probs.shape[-1]), dim=-1)
    out = torch.zeros_like(probs).scatter_(-1, index, values)
    return out / out.sum(-1, keepdim=True)


def judge_tokens(q: torch.Tensor, p: torch.Tensor, bonus: torch.Tensor, *, exact: bool = True,
                 topk: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """One position of draft/judge decoding for every row (random draws from torch's global generator).

    Args:
        q: ``(B, V)`` draft probabilities.
        p: ``(B, V)`` judge probabilities.
        bonus: ``(B,)`` rows whose block has already accepted every draft: they take a token from ``p``.
        exact: Speculative sampling (True) or the greedy top-k variant (False).
        topk: Candidates kept by the greedy variant.

    Returns:
        ``(tokens, accepted)``: the emitted token of each row, and whether it is an accepted draft
        (False for residual and bonus tokens).
    """
    if not exact:
        q, p = _top_k(q, topk), _top_k(p, topk)
    draft = multinomial_one(q) if exact else q.argmax(-1)
    rows = torch.arange(q.shape[0], device=q.device)
    ratio = p[rows, draft] / q[rows, draft].clamp_min(torch.finfo(q.dtype).tiny)
    accepted = (torch.rand(q.shape[0], device=q.device) <= ratio) & ~bonus
    residual = (p - q).clamp_min(0)
    empty = residual.sum(-1) <= 0  # p == q: nothing to correct (only reachable for a bonus row)
    residual = torch.where(empty[:, None] | bonus[:, None], p, residual)
    if exact:
        fallback = multinomial_one(residual / residual.sum(-1, keepdim=True))
    else:
        fallback = residual.argmax(-1)
    return torch.where(accepted, draft, fallback), accepted


class DraftJudge:
    """Persona-judge decoding between heads of a :class:`agents.MultiHeadPolicy`.

    Args:
        heads: The heads that take turns (names or indices, at least two; empty: every head).
        block: Draft tokens per block (the paper's lambda; 4 was its best).
        exact: Speculative sampling (every token follows the judge); False for the greedy top-k variant.
        topk: Candidates of the greedy variant.
        swap: Move the roles on after every block; False keeps the first head drafting and the second
            judging throughout ("Persona-judge-Base").
    """

    def __init__(self, heads: Sequence[str | int] = (), block: int = 4, exact: bool = True, topk: int = 20,
                 swap: bool = True):
        if block < 1 or topk < 1:
            raise ValueError(f"DraftJudge needs block >= 1 and topk >= 1, got block={block}, topk={topk}.")
        if heads and len(heads) < 2:
            raise ValueError(f"DraftJudge needs at least two heads to take turns, got {list(heads)}.")
        self.heads, self.block, self.exact, self.topk, self.swap = list(heads), int(block), bool(exact), int(topk), swap
        self.stats = DraftJudgeStats()

    def head_order(self, policy) -> list[int]:
        """The head indices in their turn order."""
        order = [policy.head_index(h) for h in self.heads] if self.heads else list(range(policy.num_heads))
        if len(order) < 2:
            raise ValueError(f"Persona-judge decoding needs two heads or more; the policy has {policy.num_heads}.")
        return order

    @torch.no_grad()
    def decode(self, policy, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
               min_new_tokens: int, temperature: float, eos_ids: Sequence[int],
               pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Decodes completions of left-padded prompts, removing each row once it has ended.

        Returns:
            ``(completion_ids, logprobs)`` as :func:`agents.sampling.sample_dropping_finished`:
            ``(B, T)`` tokens (``pad_id`` after a row's end) and each token's log-probability under
            its block's judge head at the decoding temperature.
        """
        order = torch.tensor(self.head_order(policy), device=input_ids.device)
        heads = policy.heads
        weight = torch.stack([heads.weights[int(d)] for d in order])  # (K', V, H)
        bias = None if heads.biases is None else torch.stack([heads.biases[int(d)] for d in order])
        decoder = policy.model.get_decoder()
        batch = input_ids.shape[0]
        device = input_ids.device
        eos = torch.as_tensor(list(eos_ids), device=device)
        tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros((batch, max_new_tokens), device=device)
        active = torch.arange(batch, device=device)
        block_index = torch.zeros(batch, dtype=torch.long, device=device)  # which pair of heads is on
        in_block = torch.zeros(batch, dtype=torch.long, device=device)  # drafts accepted in the current block
        mask = attention_mask
        positions = padded_positions(mask, input_ids)
        out = decoder(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache, steps = cache_of(out), 0
        for t in range(max_new_tokens):
            hidden = out.last_hidden_state[:, -1]  # (b, H)
            shift = block_index[active] if self.swap else torch.zeros_like(active)
            draft = shift % len(order)
            judge = (shift + 1) % len(order)
            q_logits, p_logits = self._project(hidden, weight, bias, draft, judge)
            if t < min_new_tokens:
                q_logits[:, eos] = float("-inf")
                p_logits[:, eos] = float("-inf")
            q, p = self._probs(q_logits, temperature), self._probs(p_logits, temperature)
            bonus = in_block[active] >= self.block
            chosen, accepted = judge_tokens(q, p, bonus, exact=self.exact, topk=self.topk)
            tokens[active, t] = chosen
            logprobs[active, t] = tempered_logprobs(p_logits, chosen[:, None], temperature).squeeze(-1)
            ended = ~accepted  # a rejection or a bonus token closes the block
            self.stats.blocks += int(ended.sum())
            self.stats.accepted += int(in_block[active][ended].sum())
            self.stats.emitted += int((in_block[active][ended] + 1).sum())
            in_block[active] = torch.where(ended, 0, in_block[active] + 1)
            block_index[active] += ended.long()
            steps = t + 1
            kept = drop_ended(cache, chosen, eos, (active, mask, chosen))
            if kept is None:
                break
            (active, mask, chosen), _ = kept
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            if t + 1 < max_new_tokens:
                out = decoder(input_ids=chosen[:, None], attention_mask=mask,
                              position_ids=mask.sum(-1, keepdim=True) - 1, use_cache=True,
                              **with_cache(decoder, cache))
        return tokens[:, :steps], logprobs[:, :steps]

    @staticmethod
    def _project(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, draft: torch.Tensor,
                 judge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's logits under its draft head and under its judge head, ``(b, V)`` each, in float32.

        Every head in use projects the rows that need it once, whether they need it as draft or as
        judge: with two heads that is two products of the whole batch, where one product per head and
        role would read each head twice.
        """
        q = hidden.new_empty(hidden.shape[0], weight.shape[1])
        p = torch.empty_like(q)
        for d in torch.cat([draft, judge]).unique().tolist():
            drafts, judges = draft == d, judge == d
            rows = (drafts | judges).nonzero(as_tuple=True)[0]
            logits = project(hidden if len(rows) == len(hidden) else hidden[rows], weight[d],
                             None if bias is None else bias[d])
            as_draft, as_judge = drafts[rows], judges[rows]  # which of the projected rows play each role
            q[rows[as_draft]] = logits[as_draft]
            p[rows[as_judge]] = logits[as_judge]
        return q.float(), p.float()

    @staticmethod
    def _probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """Sampling probabilities at ``temperature``; one-hot on the argmax at 0."""
        if temperature <= 0:
            return nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
        return torch.softmax(logits / temperature, dim=-1)
