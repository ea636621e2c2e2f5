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

from agents.generation import Messages, encode_prompts
from agents.multihead import MultiHeadPolicy, padded_positions

ROUTER_CONFIG = "router.json"
POOLINGS = ("last_token", "last_message")
DEFAULT_POOLING = POOLINGS[0]  # the paper's: the last token's hidden state
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
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        self.policy = policy
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.batch_size = batch_size
        self.show_progress = show_progress
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

    def __call__(self, prompts: Sequence[str] | Sequence[Messages]) -> torch.Tensor:
        """Returns ``(N, H)`` features for the prompts, computing only those not cached yet."""
        keys = [f"{self.pooling}:{_key(p)}" for p in prompts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._memory))
        if missing:
            by_key = {k: p for k, p in zip(keys, prompts)}
            # Longest first, so a batch holds prompts of like length: its padding (compute spent on
            # nothing) stays small, and a slow batch shows at once rather than at the end.
            missing.sort(key=lambda k: _length(by_key[k]), reverse=True)
            todo = [by_key[k] for k in missing]
            starts = range(0, len(todo), self.batch_size)
            for start in tqdm(starts, desc="router features", disable=not self.show_progress):
                hidden = self._compute(todo[start:start + self.batch_size])  # (b, H)
                for k, h in zip(missing[start:start + self.batch_size], hidden):
                    self._memory[k] = h.clone()
            if self._file is not None:
                self._file.parent.mkdir(parents=True, exist_ok=True)
                tmp = self._file.with_suffix(".tmp")
                save_file(self._memory, tmp)
                tmp.replace(self._file)
        return torch.stack([self._memory[k] for k in keys])
