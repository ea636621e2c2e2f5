"""Router: an MLP from a frozen backbone's prompt representation to weights over the heads.

The router sees only the prompt (or dialogue prefix): its input is the frozen backbone's final
hidden state at the prefix's last token, ``e(x)``, and its output is ``softmax(g(e(x)))`` over the
K heads, used as per-sample mixture weights when generating. :class:`RouterFeatures` computes those
features in batches and caches them (in memory, and on disk when given a folder), since router
training revisits the same prefixes for many epochs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from agents.generation import Messages, encode_prompts, render_prompts
from agents.multihead import MultiHeadPolicy, padded_positions
from agents.prefix_cache import cache_of, with_cache

ROUTER_CONFIG = "router.json"
POOLINGS = ("last_token", "last_message")
DEFAULT_POOLING = POOLINGS[0]  # the paper's: the last token's hidden state
SHARED_ROWS = 64  # prompts per pass after their shared start (each row is only its own few tokens)
ROUTER_WEIGHTS = "router.safetensors"


@dataclass
class RouterOutput:
    """Output of :meth:`Router.forward`.

    Attributes:
        logits: ``(B, K)`` unnormalised scores.
        weights: ``(B, K)`` softmax weights over heads (each row sums to 1).
    """

    logits: torch.Tensor
    weights: torch.Tensor

    @property
    def entropy(self) -> torch.Tensor:
        """``(B,)`` entropy of each row of weights, in nats."""
        return -(self.weights * torch.log_softmax(self.logits, dim=-1)).sum(-1)


class Router(nn.Module):
    """MLP router over the heads.

    Args:
        input_dim: Size of the feature vector (the backbone's hidden size).
        num_heads: Number of heads K.
        hidden_dim: Width of the hidden layers.
        num_layers: Number of linear layers (>= 1); all but the last are followed by ReLU and dropout.
        dropout: Dropout probability after each hidden layer.
        pooling: Which :class:`RouterFeatures` pooling the router reads (kept with the router so
            the features it is served at inference are the ones it learned from).
    """

    def __init__(self, input_dim: int, num_heads: int, hidden_dim: int, num_layers: int, dropout: float,
                 pooling: str = DEFAULT_POOLING):
        super().__init__()
        if num_layers < 1 or num_heads < 1:
            raise ValueError(f"Router needs num_layers >= 1 and num_heads >= 1, got {num_layers} and {num_heads}.")
        self.hparams = dict(input_dim=input_dim, num_heads=num_heads, hidden_dim=hidden_dim,
                            num_layers=num_layers, dropout=dropout, pooling=pooling)
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [num_heads]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers += [nn.ReLU(), nn.Dropout(dropout)]
        self.mlp = nn.Sequential(*layers)

    @property
    def num_heads(self) -> int:
        """Number of heads K the router weighs."""
        return self.hparams["num_heads"]

    def forward(self, features: torch.Tensor) -> RouterOutput:
        """Maps ``(B, input_dim)`` features to a :class:`RouterOutput` with ``(B, K)`` weights."""
        if features.dim() != 2 or features.shape[-1] != self.hparams["input_dim"]:
            raise ValueError(f"Router expects (B, {self.hparams['input_dim']}) features, got {tuple(features.shape)}.")
        logits = self.mlp(features.to(self.mlp[0].weight.dtype))  # (B, K)
        return RouterOutput(logits=logits, weights=torch.softmax(logits, dim=-1))

    def save_pretrained(self, path: str | Path) -> Path:
        """Writes ``router.safetensors`` and ``router.json`` into ``path``; returns the folder."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, path / ROUTER_WEIGHTS)
        (path / ROUTER_CONFIG).write_text(json.dumps(self.hparams, indent=1))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> Router:
        """Loads a router written by :meth:`save_pretrained`."""
        path = Path(path)
        if not (path / ROUTER_CONFIG).is_file():
            raise FileNotFoundError(f"{path} is not a saved Router (no {ROUTER_CONFIG}).")
        router = cls(**json.loads((path / ROUTER_CONFIG).read_text()))
        router.load_state_dict(load_file(path / ROUTER_WEIGHTS))
        return router.to(device)


def _key(prompt: str | Messages) -> str:
    text = prompt if isinstance(prompt, str) else json.dumps(list(prompt), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _length(prompt: str | Messages) -> int:
    """A prompt's length in characters (its messages' contents): sorts prompts by their token counts."""
    return len(prompt) if isinstance(prompt, str) else sum(len(m["content"]) for m in prompt)


def shared_prefix_groups(token_ids: Sequence[Sequence[int]], *, min_shared: int = 8,
                         share: float = 0.5) -> list[tuple[int, list[int]]]:
    """Groups prompts whose tokens start alike, so their common start is run through the model once.

    Prompts are sorted by their tokens; neighbours join one group while they share at least
    ``min_shared`` tokens and at least ``share`` of the shorter one's length (tutoring openings of
    one topic share the system prompt and the seed turn; two topics share a few template tokens,
    which is not worth a group). A group's prefix is what all its members share, less one token, so
    every member keeps a token of its own whose final state is computed in the second pass.

    Args:
        token_ids: Each prompt's token ids.
        min_shared: Fewest shared tokens that make a group.
        share: Smallest shared fraction of the shorter prompt that makes a group.

    Returns:
        ``(prefix_length, member indices)`` per group, covering every prompt once; a prompt that
        shares nothing is a group of one with prefix length 0.
    """

    def common(a: Sequence[int], b: Sequence[int]) -> int:
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        return n

    order = sorted(range(len(token_ids)), key=lambda i: list(token_ids[i]))
    groups: list[tuple[int, list[int]]] = []
    for i in order:
        if groups:
            prefix, members = groups[-1]
            last = token_ids[members[-1]]
            shared = common(last, token_ids[i])
            shared = min(shared, prefix) if len(members) > 1 else shared
            shorter = min(len(last), len(token_ids[i]))
            if shared >= min_shared and shared >= share * shorter:
                groups[-1] = (shared, members + [i])
                continue
        groups.append((len(token_ids[i]), [i]))
    return [(min(prefix, min(len(token_ids[i]) for i in members) - 1) if len(members) > 1 else 0, members)
            for prefix, members in groups]


class RouterFeatures:
    """Computes and caches the frozen backbone's representation of prompts, the router's input.

    Two poolings of the final hidden states:

    - ``last_token`` (the paper's): the state at the prompt's last position;
    - ``last_message``: the mean state over the tokens of the prompt's last message (the student's
      latest reply in tutoring, the request in the persona critic). A small model's last-token
      state mostly encodes "an assistant turn starts here"; the mean over the reply keeps what the
      reply says.

    Args:
        policy: The (frozen) multi-head policy whose backbone provides the features.
        tokenizer: Its tokenizer.
        pooling: ``last_token`` or ``last_message``.
        batch_size: Prompts per forward pass.
        cache_dir: Optional folder for an on-disk cache (one file per backbone fingerprint).
        show_progress: Show a progress bar while computing new features.
        share_prefixes: With ``last_token`` pooling, run the start that several prompts share once
            and only their own tokens per prompt (:func:`shared_prefix_groups`): the router's
            tutoring openings differ only in the student's reaction after a long common start.
    """

    def __init__(
        self,
        policy: MultiHeadPolicy,
        tokenizer: PreTrainedTokenizerBase,
        *,
        pooling: str = DEFAULT_POOLING,
        batch_size: int = 8,
        cache_dir: str | Path | None = None,
        show_progress: bool = False,
        share_prefixes: bool = True,
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        self.policy = policy
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.share_prefixes = share_prefixes
        self._memory: dict[str, torch.Tensor] = {}
        self._file = None
        if cache_dir is not None:
            self._file = Path(cache_dir) / f"features-{self._fingerprint()}.safetensors"
            if self._file.is_file():
                self._memory.update(load_file(self._file))

    def _fingerprint(self) -> str:
        """Identifies the backbone weights (so a cache is never reused for another model)."""
        h = hashlib.sha256()
        for name, p in sorted(self.policy.model.get_decoder().state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().float().flatten()[:: max(1, p.numel() // 64)].cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def dim(self) -> int:
        """Size of one feature vector (the backbone's hidden size)."""
        return self.policy.config.hidden_size

    def __len__(self) -> int:
        return len(self._memory)

    def _last_message_tokens(self, prompt: str | Messages) -> tuple[int, int]:
        """``(start, stop)`` token indices of the prompt's last message within its own tokens."""
        if isinstance(prompt, str):
            text, content = prompt, prompt
        else:
            text = self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
            content = prompt[-1]["content"]
        begin = text.rfind(content)
        end = begin + len(content)
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        inside = [j for j, (a, b) in enumerate(offsets) if b > begin and a < end]
        if begin < 0 or not inside:
            return len(offsets) - 1, len(offsets)  # nothing to find: fall back on the last token
        return inside[0], inside[-1] + 1

    def _compute(self, prompts: Sequence[str] | Sequence[Messages]) -> torch.Tensor:
        """``(b, H)`` features of a chunk of prompts."""
        ids, mask = encode_prompts(self.tokenizer, prompts, self.policy.device)
        if self.pooling == "last_token":
            return self.policy.last_token_hidden(ids, mask).float().cpu()
        with torch.no_grad():
            hidden = self.policy.model.get_decoder()(input_ids=ids, attention_mask=mask,
                                                     position_ids=padded_positions(mask, ids),
                                                     use_cache=False).last_hidden_state.float()  # (b, P, H)
        lengths = mask.sum(1).tolist()
        pooled = []
        for i, prompt in enumerate(prompts):
            start, stop = self._last_message_tokens(prompt)
            shift = ids.shape[1] - int(lengths[i])  # left padding
            pooled.append(hidden[i, shift + start:shift + stop].mean(0))
        return torch.stack(pooled).cpu()

    def remember(self, prompts: Sequence[str] | Sequence[Messages], features: torch.Tensor) -> None:
        """Keeps ``(N, H)`` ``last_token`` features computed elsewhere, e.g. kept from a rollout's prefill.

        ``generate(..., prompt_features=True)`` returns the same states this class computes (the
        same tokens through the same backbone, up to float rounding from other padding), so prompts
        a rollout has already read need no second forward pass. A feature already held is kept.
        """
        if self.pooling != "last_token":
            raise ValueError(f"Only last_token features can come from a prefill; these are {self.pooling!r}.")
        if len(prompts) != features.shape[0] or features.shape[-1] != self.dim:
            raise ValueError(f"Got {features.shape[0]} features of size {features.shape[-1]} for {len(prompts)} "
                             f"prompts; expected one of size {self.dim} per prompt.")
        for prompt, feature in zip(prompts, features.float().cpu()):
            self._memory.setdefault(f"{self.pooling}:{_key(prompt)}", feature.clone())

    def _compute_shared(self, prefix: list[int], suffixes: list[list[int]]) -> torch.Tensor:
        """``(n, H)`` last-token states of the prompts ``prefix + suffix``, with the prefix run once."""
        device, decoder = self.policy.device, self.policy.model.get_decoder()
        n, width = len(suffixes), max(len(s) for s in suffixes)
        with torch.no_grad():
            cache = cache_of(decoder(input_ids=torch.tensor([prefix], device=device), use_cache=True))
            cache.batch_repeat_interleave(n)
            pad = self.tokenizer.pad_token_id or 0
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in suffixes], device=device)  # right padding
            lengths = torch.tensor([len(s) for s in suffixes], device=device)
            own = (torch.arange(width, device=device) < lengths[:, None]).long()
            mask = torch.cat([own.new_ones((n, len(prefix))), own], dim=1)
            positions = (len(prefix) + torch.arange(width, device=device)).expand(n, width)
            hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, **with_cache(decoder, cache),
                             use_cache=True).last_hidden_state  # (n, width, H)
        return hidden[torch.arange(n, device=device), lengths - 1].float().cpu()

    def _features(self, prompts: Sequence[str] | Sequence[Messages]) -> torch.Tensor:
        """``(n, H)`` features of prompts that are not cached, in their order."""
        out: list[torch.Tensor | None] = [None] * len(prompts)
        work = []  # (rows, how to compute them)
        alone = list(range(len(prompts)))
        if self.pooling == "last_token" and self.share_prefixes:
            ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"]
                   for t in render_prompts(self.tokenizer, prompts)]
            alone = []
            for prefix, members in shared_prefix_groups(ids):
                if prefix == 0:
                    alone += members
                    continue
                for start in range(0, len(members), SHARED_ROWS):
                    rows = members[start:start + SHARED_ROWS]
                    work.append((rows, lambda rows=rows, prefix=prefix: self._compute_shared(
                        ids[rows[0]][:prefix], [ids[i][prefix:] for i in rows])))
        # Longest first, so a batch holds prompts of like length: its padding (compute spent on
        # nothing) stays small, and a slow batch shows at once rather than at the end.
        alone.sort(key=lambda i: _length(prompts[i]), reverse=True)
        for start in range(0, len(alone), self.batch_size):
            rows = alone[start:start + self.batch_size]
            work.append((rows, lambda rows=rows: self._compute([prompts[i] for i in rows])))
        for rows, compute in tqdm(work, desc="router features", disable=not self.show_progress):
            for i, h in zip(rows, compute()):  # (b, H)
                out[i] = h
        return torch.stack(out)

    def __call__(self, prompts: Sequence[str] | Sequence[Messages]) -> torch.Tensor:
        """Returns ``(N, H)`` features for the prompts, computing only those not cached yet."""
        keys = [f"{self.pooling}:{_key(p)}" for p in prompts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._memory))
        if missing:
            by_key = {k: p for k, p in zip(keys, prompts)}
            for k, h in zip(missing, self._features([by_key[k] for k in missing])):
                self._memory[k] = h.clone()
            if self._file is not None:
                self._file.parent.mkdir(parents=True, exist_ok=True)
                tmp = self._file.with_suffix(".tmp")
                save_file(self._memory, tmp)
                tmp.replace(self._file)
        return torch.stack([self._memory[k] for k in keys])
