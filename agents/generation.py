"""Batched sampling and teacher-forced scoring for multi-head policies.

:func:`generate` runs ``transformers``' own ``generate`` (KV cache, temperature, top-p, EOS
stopping, left padding) with the policy's output layer set to one head, per-sample head weights or
the equal blend, and returns the sampled tokens with their log-probabilities under that head or
mixture. :func:`score_completions` recomputes the same log-probabilities by teacher forcing,
with gradients when needed (what the trainers use).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from agents.draft_judge import DraftJudge
from agents.multihead import HeadRef, HeadSelection, MultiHeadPolicy, Weights, is_per_row, padded_positions
from agents.prefix_cache import PrefixCache
from agents.sampling import sample_dropping_finished, tempered_logprobs

Messages = list[dict[str, str]]


@dataclass
class GenerationOutput:
    """Sampled completions for a batch of prompts.

    Attributes:
        prompt_ids: ``(B, P)`` prompt tokens, left-padded.
        prompt_mask: ``(B, P)`` 1 for real prompt tokens.
        completion_ids: ``(B, T)`` sampled tokens, right-padded after the first EOS.
        completion_mask: ``(B, T)`` 1 up to and including the first EOS.
        logprobs: ``(B, T)`` log-probability of each sampled token under the sampling head or
            mixture at the sampling temperature (``softmax(logits / T)``, top-p aside: the
            convention of TRL and verl, so :func:`score_completions` with the same ``temperature``
            recomputes them); 0 where ``completion_mask`` is 0.
        texts: The decoded completions, special tokens removed.
        prompt_features: ``(B, H)`` float32 final hidden state of the backbone at each prompt's last
            token, kept from the prompt's prefill when asked for (``generate(prompt_features=True)``):
            the router's ``last_token`` feature, at no extra forward pass. None otherwise.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logprobs: torch.Tensor
    texts: list[str]
    prompt_features: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        """Number of generated tokens that count (EOS included)."""
        return int(self.completion_mask.sum())

    def cpu(self) -> GenerationOutput:
        """The same output with every tensor on the CPU (what crosses a process boundary)."""
        return GenerationOutput(self.prompt_ids.cpu(), self.prompt_mask.cpu(), self.completion_ids.cpu(),
                                self.completion_mask.cpu(), self.logprobs.cpu(), list(self.texts),
                                None if self.prompt_features is None else self.prompt_features.cpu())

    @classmethod
    def concat(cls, outputs: Sequence[GenerationOutput], pad_id: int) -> GenerationOutput:
        """The rows of several outputs in order, re-padded: prompts on the left, completions on the right."""
        return cls(prompt_ids=_pad_left([o.prompt_ids for o in outputs], pad_id),
                   prompt_mask=_pad_left([o.prompt_mask for o in outputs], 0),
                   completion_ids=_pad_right([o.completion_ids for o in outputs], pad_id),
                   completion_mask=_pad_right([o.completion_mask for o in outputs], 0),
                   logprobs=_pad_right([o.logprobs for o in outputs], 0.0),
                   texts=[t for o in outputs for t in o.texts],
                   prompt_features=None if any(o.prompt_features is None for o in outputs)
                   else torch.cat([o.prompt_features for o in outputs]))


def render_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str] | Sequence[Messages]) -> list[str]:
    """The prompts' text as the model reads it.

    Raw strings stay as they are; conversations go through the tokenizer's chat template with a
    generation prompt for the assistant.
    """
    return [p if isinstance(p, str) else
            tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str] | Sequence[Messages], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenises prompts with left padding.

    Args:
        tokenizer: The model's tokenizer.
        prompts: Raw strings (used as they are) or chat conversations (rendered with the
            tokenizer's chat template and a generation prompt for the assistant).
        device: Where the tensors go.

    Returns:
        ``(input_ids, attention_mask)``, both ``(B, P)``.
    """
    if len(prompts) == 0:
        raise ValueError("No prompts given.")
    prompts = render_prompts(tokenizer, prompts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def completion_mask(completion_ids: torch.Tensor, eos_token_ids: Sequence[int]) -> torch.Tensor:
    """``(B, T)`` mask that is 1 up to and including each row's first EOS token, 0 after it."""
    is_eos = torch.isin(completion_ids, torch.as_tensor(list(eos_token_ids), device=completion_ids.device))
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after_eos).long()


def _selection_context(policy, head: HeadRef, weights: Weights):
    if isinstance(policy, MultiHeadPolicy):
        return policy.use(head, weights)
    if head is not None or weights is not None:
        raise ValueError(f"head=/weights= need a MultiHeadPolicy, got a plain {type(policy).__name__}.")
    return nullcontext()


def _hf_model(policy):
    return policy.model if isinstance(policy, MultiHeadPolicy) else policy


def _eos_ids(tokenizer: PreTrainedTokenizerBase, model) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _rows(weights: Weights, start: int, stop: int):
    """The rows ``start:stop`` of per-row weights ``(B, K)``; anything else applies to every row as it is."""
    if weights is None:
        return None
    w = torch.as_tensor(weights) if not torch.is_tensor(weights) else weights
    return w[start:stop] if w.dim() == 2 else w


def _head_rows(head: HeadRef, start: int, stop: int) -> HeadRef:
    """The rows ``start:stop`` of per-row head indices; a single head applies to every row."""
    if is_per_row(head):
        return torch.as_tensor(head, dtype=torch.long)[start:stop]
    return head


@torch.no_grad()
def _generate_chunk(
    policy, tokenizer, input_ids, attention_mask, head, weights, *, max_new_tokens, min_new_tokens, temperature, top_p,
    drop_finished, decoder, past=None, kept=None,
):
    model = _hf_model(policy)
    eos = _eos_ids(tokenizer, model)
    with _selection_context(policy, head, weights) as selection:
        if decoder is not None:
            completion, logprobs = decoder.decode(
                policy, input_ids, attention_mask, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                temperature=temperature, eos_ids=eos, pad_id=tokenizer.pad_token_id)
        elif drop_finished:
            per_row_weights = selection is not None and selection.weights is not None and selection.weights.dim() == 2
            per_row = per_row_weights or (selection is not None and selection.heads is not None)

            def narrow(rows: torch.Tensor) -> None:  # finished rows left the batch: so do their heads or weights
                if per_row_weights:
                    policy.heads.select(HeadSelection(weights=selection.weights[rows.to(selection.weights.device)]))
                else:
                    policy.heads.select(HeadSelection(heads=selection.heads[rows.to(selection.heads.device)]))

            completion, logprobs = sample_dropping_finished(
                model, input_ids, attention_mask, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                temperature=temperature, top_p=top_p, eos_ids=eos, pad_id=tokenizer.pad_token_id,
                on_rows=narrow if per_row else None, past=past, kept=kept)
        else:
            sampling = temperature > 0
            kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p) if sampling else dict(do_sample=False)
            out = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                return_dict_in_generate=True, output_logits=True, top_k=None, **kwargs,
            )
            completion = out.sequences[:, input_ids.shape[1]:]  # (B, T)
            logits = torch.stack(out.logits, dim=1).float()  # (B, T, V), raw head logits
            logprobs = tempered_logprobs(logits, completion.unsqueeze(-1), temperature).squeeze(-1)
    mask = completion_mask(completion, eos)
    return completion, mask, logprobs * mask


@contextmanager
def _prefill_states(policy, keep: bool):
    """Yields a list that receives ``(b, H)``: the decoder's final state at the last position, first call only.

    The first decoder call of a chunk is the prompt's prefill (left-padded, so the last position is
    every prompt's last token); its final hidden state is what ``RouterFeatures`` computes with a
    separate forward pass. Later calls (one token each) are ignored.
    """
    kept: list[torch.Tensor] = []
    if not keep:
        yield kept
        return

    def hook(module, args, output) -> None:
        if not kept:
            kept.append(output[0][:, -1].detach().float().cpu())

    handle = _hf_model(policy).get_decoder().register_forward_hook(hook)
    try:
        yield kept
    finally:
        handle.remove()


def _pad_right(tensors: list[torch.Tensor], value: int | float) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in tensors])


def _pad_left(tensors: list[torch.Tensor], value: int) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value) for t in tensors])


def generate(
    policy,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str] | Sequence[Messages],
    *,
    head: HeadRef = None,
    weights: Weights = None,
    max_new_tokens: int = 128,
    min_new_tokens: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int | None = None,
    drop_finished: bool = True,
    decoder: DraftJudge | None = None,
    prompt_features: bool = False,
    prefix_cache: PrefixCache | None = None,
) -> GenerationOutput:
    """Samples one completion per prompt from a head, a mixture or the equal blend.

    Args:
        policy: A :class:`MultiHeadPolicy` (or a plain Hugging Face causal LM, then without head/weights).
        tokenizer: Its tokenizer.
        prompts: Raw strings or chat conversations (see :func:`encode_prompts`).
        head: Sample from this head (index or name), or each row from its own head (``(B,)`` indices).
        weights: ``(K,)`` or ``(B, K)`` head weights: sample from the logit-space mixture.
            With neither head nor weights, a MultiHeadPolicy samples from the equal blend.
        max_new_tokens: Length limit of each completion.
        min_new_tokens: EOS is suppressed before this many tokens (benchmarks use it for fixed lengths).
        temperature: Sampling temperature; 0 means greedy decoding.
        top_p: Nucleus sampling threshold (1 keeps the whole distribution).
        seed: Makes sampling reproducible without touching the global random state.
        batch_size: Generate in chunks of this many prompts (default: all at once).
        drop_finished: Remove each row from the batch once it has ended
            (:func:`agents.sampling.sample_dropping_finished`: the same tokens as
            ``transformers.generate``, with finished rows costing nothing); False runs ``generate``.
        decoder: Decode with Persona-judge draft/judge blocks between heads
            (:class:`agents.draft_judge.DraftJudge`) instead of one head or mixture; ``top_p`` is
            not used then.
        prompt_features: Also return each prompt's last-token backbone state, taken from the
            prefill (:attr:`GenerationOutput.prompt_features`); not with ``decoder=``.
        prefix_cache: One entry per prompt, the same rows turn after turn: feed each prompt only
            after what the row's previous call left in the cache, and keep what this call reads
            (:mod:`agents.prefix_cache`; the logits equal a full prefill's up to rounding). Only
            with ``drop_finished``, without ``decoder=``.

    Returns:
        A :class:`GenerationOutput`.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}.")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}.")
    if isinstance(policy, MultiHeadPolicy):
        policy.selection(head, weights)  # validate once, before any work
    if decoder is not None and (not isinstance(policy, MultiHeadPolicy) or head is not None or weights is not None):
        raise ValueError("decoder= decodes between the heads of a MultiHeadPolicy; pass it without head= or weights=.")
    if prefix_cache is not None and (decoder is not None or not drop_finished):
        raise ValueError("prefix_cache= continues the decoding loop of drop_finished=True; it works with neither "
                         "decoder= nor drop_finished=False.")
    if decoder is not None and prompt_features:
        raise ValueError("prompt_features=True reads the prompt's prefill, which decoder= runs its own way; "
                         "compute the features with agents.RouterFeatures instead.")
    device = _hf_model(policy).device
    input_ids, attention_mask = encode_prompts(tokenizer, prompts, device)
    n = input_ids.shape[0]
    if weights is not None:
        w = torch.as_tensor(weights) if not torch.is_tensor(weights) else weights
        if w.dim() == 2 and w.shape[0] != n:
            raise ValueError(f"Got {w.shape[0]} rows of head weights for {n} prompts.")
    if is_per_row(head) and len(head) != n:
        raise ValueError(f"Got {len(head)} per-row heads for {n} prompts.")
    if prefix_cache is not None and len(prefix_cache) != n:
        raise ValueError(f"The prefix cache holds {len(prefix_cache)} rows for {n} prompts; make one "
                         "PrefixCache(len(prompts)) per batch and pass the same prompts' rows every call.")
    step = batch_size or n
    devices = [device] if device.type == "cuda" else []
    chunks = []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, n, step):
            stop = min(start + step, n)
            ids, mask = input_ids[start:stop], attention_mask[start:stop]
            keep = int(mask.sum(dim=1).max())  # drop padding columns this chunk does not need
            ids, mask = ids[:, -keep:], mask[:, -keep:]
            fed, fed_mask, past, kept = ids, mask, None, None
            if prefix_cache is not None:
                fed, fed_mask, past = prefix_cache.continue_chunk(start, ids, mask, tokenizer.pad_token_id)
                kept = [None] * (stop - start)
            with _prefill_states(policy, prompt_features) as states:
                comp, comp_mask, logprobs = _generate_chunk(
                    policy, tokenizer, fed, fed_mask, _head_rows(head, start, stop), _rows(weights, start, stop),
                    max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, temperature=temperature,
                    top_p=top_p, drop_finished=drop_finished, decoder=decoder, past=past, kept=kept,
                )
            if prefix_cache is not None:
                prefix_cache.keep(start, ids, mask, comp, kept)
            chunks.append((ids, mask, comp, comp_mask, logprobs, states[0] if states else None))
    pad = tokenizer.pad_token_id
    completion_ids = _pad_right([c[2] for c in chunks], pad)
    comp_mask = _pad_right([c[3] for c in chunks], 0)
    texts = tokenizer.batch_decode(completion_ids * comp_mask + pad * (1 - comp_mask), skip_special_tokens=True)
    return GenerationOutput(
        prompt_ids=_pad_left([c[0] for c in chunks], pad),
        prompt_mask=_pad_left([c[1] for c in chunks], 0),
        completion_ids=completion_ids,
        completion_mask=comp_mask,
        logprobs=_pad_right([c[4] for c in chunks], 0.0),
        texts=texts,
        prompt_features=torch.cat([c[5] for c in chunks]) if prompt_features else None,
    )


def completion_logits(
    policy,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    head: HeadRef = None,
    weights: Weights = None,
) -> torch.Tensor:
    """Teacher-forced next-token logits at each completion position.

    Args:
        policy: A :class:`MultiHeadPolicy` or plain causal LM.
        prompt_ids: ``(B, P)`` left-padded prompts.
        prompt_mask: ``(B, P)``.
        completion_ids: ``(B, T)`` completion tokens.
        completion_mask: ``(B, T)``.
        head: Head to use (index or name), or one head index per row.
        weights: Or ``(K,)`` / ``(B, K)`` mixture weights; with neither, the equal blend.

    Returns:
        ``(B, T, V)`` logits; row ``t`` is the distribution that produced completion token ``t``.
        Differentiable when gradients are enabled; only the completion positions are projected.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (B, P+T)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    position_ids = padded_positions(mask, input_ids)
    num = completion_ids.shape[1]
    with _selection_context(policy, head, weights):
        logits = _hf_model(policy)(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False,
            logits_to_keep=num + 1,
        ).logits
    return logits[:, :-1]  # (B, T, V)


def score_completions(
    policy,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    head: HeadRef = None,
    weights: Weights = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Teacher-forced log-probabilities of given completions.

    Args:
        policy: A :class:`MultiHeadPolicy` or plain causal LM.
        prompt_ids: ``(B, P)`` left-padded prompts.
        prompt_mask: ``(B, P)``.
        completion_ids: ``(B, T)`` completion tokens.
        completion_mask: ``(B, T)``.
        head: Head to use (index or name), or one head index per row.
        weights: Or ``(K,)`` / ``(B, K)`` mixture weights; with neither, the equal blend.
        temperature: Read the log-probabilities of ``softmax(logits / temperature)``: pass the
            temperature the completions were sampled at to score the sampling policy (what RLVR's
            ratios need); 1 (and 0) gives the raw distribution.

    Returns:
        ``(B, T)`` log-probabilities (0 where ``completion_mask`` is 0); differentiable when
        gradients are enabled.
    """
    logits = completion_logits(policy, prompt_ids, prompt_mask, completion_ids, completion_mask,
                               head=head, weights=weights)
    logprobs = tempered_logprobs(logits, completion_ids.unsqueeze(-1), temperature).squeeze(-1)
    return logprobs * completion_mask
