"""A chat client that generates with a local Hugging Face causal LM, in-process.

Sampling draws from one random generator per request, seeded from the request itself, so a
request gets the same reply whichever batch it lands in, and the global torch random state is
never touched.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

from envs.chat.base import ChatClient, ChatClientError, ChatRequest

# Models loaded by any LocalChatClient of this process, by (model, device), each with the lock that
# serialises its generate() calls: the student, the judges and the critic of a run share one copy.
_LOADED: dict[tuple[str, str], tuple[object, threading.Lock]] = {}
_LOADING = threading.Lock()


class LocalChatClient(ChatClient):
    """A client that generates with a local Hugging Face causal LM.

    The model is loaded on first use through :func:`agents.models.load_backbone`, once per process:
    clients naming the same model and device share it. Requests are
    generated in left-padded batches of ``batch_size``; requests that share length and temperature
    settings share a batch. Sampling uses one random generator per request seeded by ``seed`` and
    the request's digest, so a request's reply does not depend on its batch companions.

    Args:
        model: Any name :func:`agents.models.load_backbone` understands (``"tiny-random"`` for tests).
        device: Torch device, or ``"auto"``.
        batch_size: Most conversations per ``generate`` call.
        max_new_tokens: Default reply length bound, in tokens.
        temperature: Default sampling temperature; 0 means greedy.
        top_p: Nucleus-sampling mass.
        cache_path: Response cache file; ``"auto"`` for the default, ``None`` for none.
        seed: Base seed of the per-request generators.
    """

    backend = "local"

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        device: str = "cpu",
        batch_size: int = 8,
        max_new_tokens: int = 128,
        temperature: float = 0.7,
        top_p: float = 0.95,
        cache_path: str | os.PathLike | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(cache_path=cache_path, temperature=temperature, max_tokens=max_new_tokens)
        self.model = model
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.top_p = float(top_p)
        self.seed = int(seed)
        self._backbone = None
        self._lock: threading.Lock | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_backbone=None, _lock=None)  # the copy uses its own process's model
        return state

    def _cache_fields(self) -> dict:
        return {"model": self.model, "seed": self.seed, "top_p": self.top_p, "base_url": None}

    @property
    def backbone(self):
        """The loaded :class:`agents.models.Backbone`, loaded on first access (shared within the process)."""
        if self._backbone is None:
            key = (str(self.model), str(self.device))
            with _LOADING:
                if key not in _LOADED:
                    _LOADED[key] = (self._load(), threading.Lock())
            self._backbone, self._lock = _LOADED[key]
        return self._backbone

    def _load(self):
        import torch

        try:
            from agents.models import load_backbone

            backbone = load_backbone(self.model, device=self.device, dtype=torch.float32)
        except ImportError as err:
            raise ChatClientError(f"LocalChatClient needs the agents package ({err}).") from err
        except (RuntimeError, OSError, ValueError) as err:
            raise ChatClientError(f"Cannot load local chat model {self.model!r}: {err}") from err
        if not getattr(backbone.tokenizer, "chat_template", None):
            raise ChatClientError(
                f"Local model {self.model!r} has no chat template; use an instruction-tuned model."
            )
        backbone.tokenizer.padding_side = "left"
        return backbone

    def check(self) -> None:
        """Loads the model (if not yet loaded) and confirms it has a chat template.

        Raises:
            ChatClientError: If the model cannot be loaded or cannot format conversations.
        """
        _ = self.backbone

    def _generate(self, requests: list[ChatRequest]) -> Iterator[tuple[int, str]]:
        for chunk in _chunks(requests, self.batch_size):
            replies = self._generate_chunk([requests[i] for i in chunk])
            yield from zip(chunk, replies)

    def _generate_chunk(self, requests: list[ChatRequest]) -> list[str]:
        """Replies for requests sharing ``max_tokens`` and ``temperature``, in one ``generate`` call."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        model, tokenizer = self.backbone.model, self.backbone.tokenizer
        texts = [
            tokenizer.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False) for r in requests
        ]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        temperature = requests[0].temperature
        processors = LogitsProcessorList()
        if temperature > 0:
            seeds = [(self.seed + int(r.key[:15], 16)) % 2**63 for r in requests]
            processors.append(_PerRowSampler(seeds, temperature, self.top_p, model.device))
        config = GenerationConfig(  # greedy over the sampler's one-hot scores == per-row sampling
            max_new_tokens=requests[0].max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
            bos_token_id=model.generation_config.bos_token_id,
        )
        self.stats.add(requests=len(requests))
        with self._lock, torch.inference_mode():  # the shared model generates for one client at a time
            output = model.generate(**inputs, generation_config=config, logits_processor=processors)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]  # (B, T_new)
        return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _chunks(requests: list[ChatRequest], size: int) -> list[list[int]]:
    """Indices grouped by (max_tokens, temperature), in order, then cut into pieces of ``size``."""
    groups: dict[tuple[int, float], list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault((r.max_tokens, r.temperature), []).append(i)
    return [idx[k : k + size] for idx in groups.values() for k in range(0, len(idx), size)]


class _PerRowSampler:
    """A logits processor that samples each row with its own generator and returns one-hot scores.

    Temperature and top-p are applied here; the caller then decodes greedily, which picks exactly
    the sampled token. Separate generators make each row's draw independent of the other rows.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device) -> None:
        import torch
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.warpers = [TemperatureLogitsWarper(temperature)]
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids, scores):
        import torch

        from agents.sampling import multinomial_one

        for warp in self.warpers:
            scores = warp(input_ids, scores)
        probs = torch.softmax(scores.float(), dim=-1)  # (B, V)
        picks = torch.stack([multinomial_one(p, g) for p, g in zip(probs, self.generators)])  # (B,), as multinomial
        onehot = torch.full_like(scores, float("-inf"))
        return onehot.scatter_(1, picks[:, None], 0.0)
