"""Multi-action-head policy: one shared transformer backbone, K language-model heads.

Head ``d`` maps the backbone's hidden state ``h`` to logits ``W_d h`` (plus ``b_d`` when the
wrapped model's head has a bias). A forward pass selects one of:

- a single head (``head=d``, an index or a head name),
- a weight vector over heads, shared (``(K,)``) or per sample (``(B, K)``): the logit-space mixture
  ``sum_d w_d W_d h``, computed through the mixed projection ``W_mix = sum_d w_d W_d`` (one per
  distinct weight row; a one-hot row simply uses its head) or by mixing the heads' logits,
  whichever reads fewer matrices,
- the equal blend (neither given): ``W_eq = mean_d W_d``.

The heads replace the wrapped model's output layer (``model.lm_head``), so everything built on
the Hugging Face model (its forward, ``generate``, KV caches, peft adapters) runs through the
selected head. Heads are separate parameters: an update through head ``d`` gives every other head
no gradient at all, so the optimiser leaves them untouched.

A saved policy folder is itself a plain Hugging Face checkpoint whose output layer is the equal
blend, plus ``heads.safetensors`` and ``pluralgym_policy.json``; :meth:`MultiHeadPolicy.export`
writes any single head or fixed mixture as a plain checkpoint that needs nothing from this project.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from agents.prefix_cache import cache_of
from agents.projection import project, project_mixture, use_skinny_linears

POLICY_CONFIG = "pluralgym_policy.json"
HEADS_FILE = "heads.safetensors"
_FORMAT = 1

HeadRef = int | str | Sequence[int] | torch.Tensor | None  # one head, or one head index per row
Weights = torch.Tensor | Sequence[float] | Sequence[Sequence[float]] | None

def is_per_row(head: HeadRef) -> bool:
    """Whether ``head`` gives one head index per row (a sequence or tensor) rather than one head for all."""
    return torch.is_tensor(head) or isinstance(head, (list, tuple))


@dataclass(frozen=True)
class HeadSelection:
    """Which output projection a forward pass uses.

    Attributes:
        head: Index of a single head for every row, or None.
        heads: ``(B,)`` head index of each row (long), or None: each row through its own head.
        weights: Mixture weights, ``(K,)`` or ``(B, K)``; None with neither head set means the equal blend.
    """

    head: int | None = None
    heads: torch.Tensor | None = None
    weights: torch.Tensor | None = None


@dataclass
class PolicyOutput:
    """Output of :meth:`MultiHeadPolicy.forward`.

    Attributes:
        logits: ``(B, T', V)`` next-token logits of the selected head or mixture
            (``T' = T`` unless ``logits_to_keep`` trims it).
        past_key_values: The KV cache when ``use_cache=True``.
        hidden_states: ``(B, T, H)`` final hidden states when ``return_hidden=True``.
    """

    logits: torch.Tensor
    past_key_values: object | None = None
    hidden_states: torch.Tensor | None = None


class MultiHeadLMHead(nn.Module):
    """K output projections that stand in for a causal LM's ``lm_head``.

    The projection used by :meth:`forward` is set by :meth:`MultiHeadPolicy.use` (module state,
    so that the unchanged Hugging Face forward and ``generate`` route through it).

    Args:
        weight: ``(V, H)`` pretrained output projection every head starts from.
        bias: ``(V,)`` pretrained bias, or None.
        num_heads: K.
        init_noise_std: Std of the Gaussian noise added to each head's copy.
        generator: Random generator for the noise (reproducible initialisation).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        num_heads: int,
        init_noise_std: float = 0.01,
        generator: torch.Generator | None = None,
    ):
        super().__init__()

        def perturbed(t: torch.Tensor) -> nn.Parameter:
            t = t.detach().clone()
            if init_noise_std > 0 and t.device.type != "meta":
                noise = torch.randn(t.shape, generator=generator, dtype=torch.float32)
                t += (init_noise_std * noise).to(t)
            return nn.Parameter(t)

        self.weights = nn.ParameterList([perturbed(weight) for _ in range(num_heads)])
        self.biases = None if bias is None else nn.ParameterList([perturbed(bias) for _ in range(num_heads)])
        self.selection = HeadSelection()
        self._mix_cache: tuple[str, object] | None = None

    @property
    def num_heads(self) -> int:
        """Number of heads K."""
        return len(self.weights)

    def select(self, selection: HeadSelection) -> None:
        """Makes every later forward use ``selection`` (drops the cached mixed projections)."""
        self.selection = selection
        self._mix_cache = None

    def mixed_weight(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``W_mix = sum_d w_d W_d`` (``(V, H)``) and the matching bias for one weight vector ``(K,)``."""
        weight = sum(w[d] * self.weights[d] for d in range(self.num_heads))
        bias = None if self.biases is None else sum(w[d] * self.biases[d] for d in range(self.num_heads))
        return weight, bias

    def _plan(self, weights: torch.Tensor):
        """Chooses the cheaper way to apply ``(B, K)`` per-sample weights.

        Rows that select a single head (one-hot) use that head's own projection, so only the
        active head's logits are computed. Otherwise, with fewer distinct weight rows U than heads,
        each distinct mixture gets one projection ``W_mix`` (U matrices read per token); with more,
        every head projects the whole batch once and the logits are mixed (K matrices read).
        Returns ``(kind, payload)``.
        """
        rows, inverse = torch.unique(weights, dim=0, return_inverse=True)  # (U, K), (B,)
        one_hot = ((rows == 0) | (rows == 1)).all(dim=1) & (rows.sum(dim=1) == 1)
        if one_hot.all() or rows.shape[0] < self.num_heads or weights.shape[0] == 1:
            projections = []
            for row, single in zip(rows, one_hot):
                if single:
                    d = int(row.argmax())
                    projections.append(self._projection(d))
                else:
                    projections.append(self.mixed_weight(row))
            return "grouped", (projections, inverse)
        return "per_head", weights

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Projects ``(B, T, H)`` hidden states to ``(B, T, V)`` logits under the current selection."""
        sel = self.selection
        if sel.head is not None:
            return project(hidden, *self._projection(sel.head))
        if sel.heads is not None:
            return self._per_row_head_logits(hidden, sel.heads)
        weights = sel.weights
        if weights is None:
            weights = hidden.new_full((self.num_heads,), 1.0 / self.num_heads)
        if weights.dim() == 1:
            weights = weights.unsqueeze(0)  # (1, K): one mixture for the whole batch
        weights = weights.to(device=hidden.device, dtype=hidden.dtype)
        if weights.shape[0] not in (1, hidden.shape[0]):
            raise ValueError(
                f"Per-sample head weights have {weights.shape[0]} rows but the batch has {hidden.shape[0]} "
                "sequences; pass one row per sequence or a single (K,) vector."
            )
        # Generation calls this once per new token with unchanged weights: reuse the plan and its
        # mixed projections (only outside autograd, where nothing needs a fresh graph).
        if self._mix_cache is not None and not torch.is_grad_enabled():
            kind, payload = self._mix_cache
        else:
            kind, payload = self._plan(weights)
            if not torch.is_grad_enabled():
                self._mix_cache = (kind, payload)
        if kind == "per_head":
            return self._mix_head_logits(hidden, payload)
        projections, inverse = payload
        if len(projections) == 1:
            return project(hidden, *projections[0])
        if inverse.shape[0] != hidden.shape[0]:
            raise ValueError(f"Head weights were set for {inverse.shape[0]} sequences, got {hidden.shape[0]}.")
        out = hidden.new_empty(*hidden.shape[:-1], projections[0][0].shape[0])  # (B, T, V)
        for u, (weight, bias) in enumerate(projections):
            rows = (inverse == u).nonzero(as_tuple=True)[0]
            out[rows] = project(hidden[rows], weight, bias)
        return out

    def _projection(self, d: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Head ``d``'s weight and bias."""
        return self.weights[d], None if self.biases is None else self.biases[d]

    def _per_row_head_logits(self, hidden: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """Each row through its own head (only that head's logits are computed); ``(B, T, V)``."""
        if heads.shape[0] != hidden.shape[0]:
            raise ValueError(f"Head indices were set for {heads.shape[0]} sequences, got {hidden.shape[0]}.")
        used = torch.unique(heads).tolist()
        if len(used) == 1:
            return project(hidden, *self._projection(used[0]))
        out = hidden.new_empty(*hidden.shape[:-1], self.weights[0].shape[0])  # (B, T, V)
        for d in used:
            rows = (heads == d).nonzero(as_tuple=True)[0]
            out[rows] = project(hidden[rows], *self._projection(d))
        return out

    def _mix_head_logits(self, hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_d w[:, d] * (W_d h + b_d)`` over the heads with any non-zero weight; ``(B, T, V)``."""
        if weights.shape[0] != hidden.shape[0]:
            raise ValueError(f"Head weights were set for {weights.shape[0]} sequences, got {hidden.shape[0]}.")
        used = [d for d in range(self.num_heads) if torch.any(weights[:, d])]
        if not used:  # all weights zero
            return hidden.new_zeros(*hidden.shape[:-1], self.weights[0].shape[0])
        coefficients = weights[:, used]
        if hidden.dim() > 2:  # one coefficient row per position of each sequence
            coefficients = coefficients.repeat_interleave(hidden[0].numel() // hidden.shape[-1], dim=0)
        flat = hidden.reshape(-1, hidden.shape[-1])
        out = project_mixture(flat, [self.weights[d] for d in used], coefficients)
        if self.biases is not None:
            out = out + coefficients @ torch.stack([self.biases[d] for d in used])
        return out.reshape(*hidden.shape[:-1], out.shape[-1])


def padded_positions(attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` position ids that skip left padding (0 for every padding position)."""
    if attention_mask is None:
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class MultiHeadPolicy(nn.Module):
    """A Hugging Face causal LM with K language-model heads over one shared backbone.

    Args:
        model: Any Hugging Face causal LM. Its output layer is replaced in place by a
            :class:`MultiHeadLMHead` (untied from the input embeddings).
        num_heads: Number of heads K (>= 1).
        head_names: Optional names, one per head (e.g. ``["direct", "interactive"]``).
        init_noise_std: Std of the Gaussian noise added to each head's copy of the pretrained head.
        seed: Seed of that noise.

    Example:
        >>> backbone = load_backbone("tiny-random")
        >>> policy = MultiHeadPolicy(backbone.model, num_heads=2, head_names=["direct", "interactive"])
        >>> logits = policy(input_ids, head="interactive").logits          # one head
        >>> logits = policy(input_ids, weights=[[0.3, 0.7]] * B).logits      # per-sample mixture
    """

    def __init__(
        self,
        model: PreTrainedModel,
        num_heads: int = 2,
        head_names: Sequence[str] | None = None,
        init_noise_std: float = 0.01,
        seed: int = 0,
    ):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be at least 1, got {num_heads}.")
        head_names = list(head_names) if head_names is not None else [f"head{d}" for d in range(num_heads)]
        if len(head_names) != num_heads or len(set(head_names)) != num_heads:
            raise ValueError(f"head_names must be {num_heads} distinct names, got {head_names}.")
        old = model.get_output_embeddings()
        if old is None or not isinstance(old, nn.Linear):
            raise TypeError(f"{type(model).__name__} has no linear output layer to turn into heads.")
        generator = torch.Generator().manual_seed(seed)
        heads = MultiHeadLMHead(old.weight, old.bias, num_heads, init_noise_std, generator)
        model.set_output_embeddings(heads)
        model.config.tie_word_embeddings = False
        use_skinny_linears(model)  # a no-op for a model from load_backbone; see agents.projection
        self.model = model
        self.head_names = head_names
        self.init_noise_std = init_noise_std

    # ---- selection -----------------------------------------------------------------------

    @property
    def heads(self) -> MultiHeadLMHead:
        """The :class:`MultiHeadLMHead` standing in for the wrapped model's output layer."""
        return self.model.get_output_embeddings()

    @property
    def num_heads(self) -> int:
        """Number of heads K."""
        return self.heads.num_heads

    @property
    def config(self):
        """The wrapped model's Hugging Face config."""
        return self.model.config

    @property
    def device(self) -> torch.device:
        """Where the heads (and so the policy) live."""
        return self.heads.weights[0].device

    def head_index(self, head: int | str) -> int:
        """Resolves a head name or index to an index, with a clear error for bad values."""
        if isinstance(head, str):
            if head not in self.head_names:
                raise ValueError(f"Unknown head '{head}'; this policy has heads {self.head_names}.")
            return self.head_names.index(head)
        if not 0 <= int(head) < self.num_heads:
            raise ValueError(f"Head index {head} is out of range for {self.num_heads} heads.")
        return int(head)

    def selection(self, head: HeadRef = None, weights: Weights = None) -> HeadSelection:
        """Validates a head / weights request and returns the matching :class:`HeadSelection`."""
        if head is not None and weights is not None:
            raise ValueError("Pass either head= or weights=, not both.")
        if is_per_row(head):
            heads = torch.as_tensor(head, dtype=torch.long).detach()
            if heads.dim() != 1 or not heads.numel():
                raise ValueError("Per-row heads must be a non-empty 1-D sequence of indices, "
                                 f"got shape {tuple(heads.shape)}.")
            if not ((heads >= 0) & (heads < self.num_heads)).all():
                raise ValueError(f"Per-row head indices {heads.tolist()} are out of range for {self.num_heads} heads.")
            return HeadSelection(heads=heads)
        if head is not None:
            return HeadSelection(head=self.head_index(head))
        if weights is None:
            return HeadSelection()
        w = torch.as_tensor(weights, dtype=torch.float32).detach() if not torch.is_tensor(weights) else weights
        if w.dim() not in (1, 2) or w.shape[-1] != self.num_heads:
            raise ValueError(f"Head weights must have shape (K,) or (B, K) with K={self.num_heads}, "
                             f"got {tuple(w.shape)}.")
        if not torch.isfinite(w).all():
            raise ValueError("Head weights contain NaN or infinite values.")
        return HeadSelection(weights=w)

    @contextmanager
    def use(self, head: HeadRef = None, weights: Weights = None) -> Iterator[HeadSelection]:
        """Routes every forward of the wrapped model through a head or mixture inside the block.

        Args:
            head: A head index or name, or one head index per row (a ``(B,)`` sequence or tensor).
            weights: ``(K,)`` or ``(B, K)`` mixture weights (used as given; usually a probability vector).
            With neither, the equal blend is used.
        """
        previous = self.heads.selection
        selection = self.selection(head, weights)
        self.heads.select(selection)
        try:
            yield selection
        finally:
            self.heads.select(previous)

    # ---- forward -------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        head: HeadRef = None,
        weights: Weights = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_hidden: bool = False,
        **model_kwargs,
    ) -> PolicyOutput:
        """Runs the backbone and the selected head(s).

        Args:
            input_ids: ``(B, T)`` token ids.
            attention_mask: ``(B, T)`` 1 for real tokens, 0 for padding.
            head: A single head (index or name), or one head index per row.
            weights: ``(K,)`` or ``(B, K)`` mixture weights; with neither, the equal blend.
            logits_to_keep: Compute logits only for the last N positions (0 = all), as in transformers.
            return_hidden: Also return the final hidden states.
            **model_kwargs: Passed to the wrapped model (``position_ids``, the KV cache, ``use_cache``...).

        Returns:
            A :class:`PolicyOutput` with ``(B, T', V)`` logits.
        """
        model_kwargs.setdefault("use_cache", False)
        with self.use(head, weights):
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                logits_to_keep=logits_to_keep,
                output_hidden_states=return_hidden,
                **model_kwargs,
            )
        hidden = out.hidden_states[-1] if return_hidden else None
        return PolicyOutput(logits=out.logits, past_key_values=cache_of(out), hidden_states=hidden)

    @torch.no_grad()
    def last_token_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, H)`` final hidden state at each sequence's last position (left padding assumed).

        Positions count real tokens only, so a left-padded prompt gets the same positions as an
        unpadded one: needed by models with absolute position embeddings (GPT-2, OPT).
        """
        decoder = self.model.get_decoder()
        positions = padded_positions(attention_mask, input_ids)
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False)
        return out.last_hidden_state[:, -1]

    # ---- optimisation --------------------------------------------------------------------

    def head_parameters(self) -> list[nn.Parameter]:
        """The heads' parameters (weights, and biases when the model has them)."""
        return list(self.heads.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not a head's."""
        head_ids = {id(p) for p in self.head_parameters()}
        return [p for p in self.model.parameters() if id(p) not in head_ids]

    def param_groups(self, lr: float, head_lr_mult: float = 1.0, weight_decay: float = 0.0) -> list[dict]:
        """Optimiser parameter groups: trainable backbone parameters at ``lr``, heads at ``lr * head_lr_mult``."""
        groups = [
            {"name": "backbone", "params": [p for p in self.backbone_parameters() if p.requires_grad], "lr": lr},
            {"name": "heads", "params": [p for p in self.head_parameters() if p.requires_grad],
             "lr": lr * head_lr_mult},
        ]
        for group in groups:
            group["weight_decay"] = weight_decay
        return [g for g in groups if g["params"]]

    # ---- persistence ---------------------------------------------------------------------

    @contextmanager
    def _plain_output_layer(self, head: HeadRef = None, weights: Weights = None):
        """Temporarily swaps the heads for one ordinary ``nn.Linear`` (a head or fixed mixture)."""
        sel = self.selection(head, weights)
        heads = self.heads
        with torch.no_grad():
            if sel.head is not None:
                weight = heads.weights[sel.head]
                bias = None if heads.biases is None else heads.biases[sel.head]
            else:
                w = sel.weights if sel.weights is not None else torch.full((self.num_heads,), 1.0 / self.num_heads)
                if w.dim() != 1:
                    raise ValueError("A saved mixture needs one (K,) weight vector, not per-sample weights.")
                weight, bias = heads.mixed_weight(w.to(device=self.device, dtype=heads.weights[0].dtype))
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        linear.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        if bias is not None:
            linear.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.model.set_output_embeddings(linear)
        try:
            yield
        finally:
            self.model.set_output_embeddings(heads)

    def export(
        self,
        path: str | Path,
        *,
        head: HeadRef = None,
        weights: Sequence[float] | torch.Tensor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> Path:
        """Writes one head or a fixed mixture as a plain Hugging Face checkpoint.

        ``AutoModelForCausalLM.from_pretrained(path)`` then loads it without this project.

        Args:
            path: Output folder.
            head: The head to export (index or name).
            weights: A fixed ``(K,)`` mixture to export instead; with neither, the equal blend.
            tokenizer: Saved alongside when given.

        Returns:
            The output folder.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with self._plain_output_layer(head, weights):
            self.model.save_pretrained(path)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
        return path

    def save_pretrained(self, path: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
        """Saves the whole policy (exact round trip with :meth:`from_pretrained`).

        The folder holds a plain checkpoint whose output layer is the equal blend (loadable by
        ``transformers`` alone), every head in ``heads.safetensors``, and ``pluralgym_policy.json``.
        """
        path = self.export(path, tokenizer=tokenizer)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.heads.state_dict().items()}, path / HEADS_FILE)
        meta = {"format": _FORMAT, "num_heads": self.num_heads, "head_names": self.head_names,
                "init_noise_std": self.init_noise_std}
        (path / POLICY_CONFIG).write_text(json.dumps(meta, indent=1))
        return path

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> MultiHeadPolicy:
        """Loads a policy written by :meth:`save_pretrained`.

        Raises:
            FileNotFoundError: If the folder is not a saved policy.
        """
        path = Path(path)
        if not (path / POLICY_CONFIG).is_file() or not (path / HEADS_FILE).is_file():
            raise FileNotFoundError(
                f"{path} is not a saved MultiHeadPolicy (expected {POLICY_CONFIG} and {HEADS_FILE} there)."
            )
        meta = json.loads((path / POLICY_CONFIG).read_text())
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)  # never a pickle
        policy = cls(model, num_heads=meta["num_heads"], head_names=meta["head_names"], init_noise_std=0.0)
        policy.init_noise_std = meta.get("init_noise_std", 0.0)
        policy.heads.load_state_dict(load_file(path / HEADS_FILE), strict=True)
        return policy.to(device)
