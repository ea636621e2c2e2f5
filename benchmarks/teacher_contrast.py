"""How strongly the frozen OPSD teacher shows each persona, with and without the persona contrast.

Usage:
    python benchmarks/teacher_contrast.py                                 # tutoring, w = 0, 1, 2, 48 prefixes
    python benchmarks/teacher_contrast.py --weights 0 0.5 1 2 --prefixes 96
    python benchmarks/teacher_contrast.py --model tiny-random --prefixes 2 --new-tokens 4   # smoke run
    python benchmarks/teacher_contrast.py env=persona --weights 0 1      # Hydra overrides pick the env
    python benchmarks/teacher_contrast.py algorithm.contrast_plausibility=0.1 --weights 2

OPSD pulls each head towards the base model under that head's privileged prompt, so a head can
only become as distinct as that teacher is. This script samples turns *from the teacher itself*
on fresh first-turn observations of the env's training split (the task contract's
``make_batch(...).reset``), for every persona and every contrast weight ``w`` of
``algorithm.contrast`` (:func:`algorithms.losses.contrastive_teacher_logits`: ``w = 0`` is the
plain privileged teacher), and reports the task's per-turn figures (``Task.step_metrics``; for
tutoring, questions per turn and the share of turns the student reads as asking) in a markdown
table. The privileged prompt gets an empty feedback string: the teacher's own turn has no reply
yet (with ``env.teacher_feedback=false``, the tutoring default, the prompt carries none anyway).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

import algorithms.opsd  # noqa: F401  (registers the OPSD settings its config composes)
import configs
from agents import load_backbone
from agents.generation import _eos_ids, encode_prompts
from agents.multihead import padded_positions
from agents.prefix_cache import cache_of, with_cache
from algorithms.components import build_task
from algorithms.losses import contrastive_teacher_logits


class _Decoder:
    """One batch of prompts decoded token by token with a KV cache."""

    def __init__(self, model, ids: torch.Tensor, mask: torch.Tensor):
        self.model, self.ids, self.mask, self.past = model, ids, mask, None

    def logits(self, token: torch.Tensor | None) -> torch.Tensor:
        """``(B, V)`` next-token logits after feeding ``token`` (None: the prompt itself)."""
        if token is None:
            ids, positions = self.ids, padded_positions(self.mask, self.ids)
        else:
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(token), 1)], 1)
            ids, positions = token[:, None], self.mask.sum(1, keepdim=True) - 1
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, use_cache=True,
                         **with_cache(self.model, self.past))
        self.past = cache_of(out)
        return out.logits[:, -1].float()


@torch.no_grad()
def sample_teacher(model, tokenizer, own: list, others: list[list], weight: float, *, new_tokens: int,
                   generator: torch.Generator, plausibility: float = 0.0) -> list[str]:
    """Samples one turn per row from the (contrastive) teacher.

    Args:
        model: The frozen base model.
        tokenizer: Its tokenizer.
        own: The persona's privileged prompts, one per row.
        others: For each other persona, its privileged prompts for the same rows.
        weight: Contrast weight (0: the plain teacher, and ``others`` is not decoded).
        plausibility: Plausibility threshold of the contrast (``algorithm.contrast_plausibility``).
        new_tokens: Length limit of a turn.
        generator: Source of the sampling randomness.

    Returns:
        The decoded turns.
    """
    device = next(model.parameters()).device
    streams = [_Decoder(model, *encode_prompts(tokenizer, prompts, device))
               for prompts in [own, *(others if weight > 0 else [])]]
    eos = torch.tensor(_eos_ids(tokenizer, model), device=device)
    rows = len(own)
    tokens = torch.full((rows, new_tokens), tokenizer.pad_token_id, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    token = None
    for t in range(new_tokens):
        logits = [s.logits(token) for s in streams]
        mixed = contrastive_teacher_logits(logits[0], logits[1:], weight, plausibility)
        token = torch.multinomial(mixed.softmax(-1).cpu(), 1, generator=generator)[:, 0].to(device)
        token = torch.where(done, torch.full_like(token, tokenizer.pad_token_id), token)
        tokens[:, t] = token
        done |= torch.isin(token, eos)
        if bool(done.all()):
            break
    texts = []
    for row in tokens.tolist():
        ends = [i for i, tok in enumerate(row) if tok in set(eos.tolist())]
        texts.append(tokenizer.decode(row[:ends[0]] if ends else row, skip_special_tokens=True))
    return texts


def main(argv: list[str] | None = None) -> dict:
    """Runs the measurement and prints (and returns) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the OPSD config (default: env=tutoring)")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    parser.add_argument("--prefixes", type=int, default=48, help="first-turn observations per persona")
    parser.add_argument("--new-tokens", type=int, default=None, help="turn length (default: algorithm.max_new_tokens)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default=None, help="backbone (default: the config's agent.model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the results, every sampled turn included, as JSON here")
    args = parser.parse_args(argv)
    if any(w < 0 for w in args.weights):
        parser.error(f"--weights must be >= 0, got {args.weights}")
    if args.prefixes < 1 or args.batch_size < 1:
        parser.error("--prefixes and --batch-size must be positive")

    configs.register()
    with initialize_config_dir(str(Path(configs.__file__).resolve().parent), version_base="1.3"):
        cfg = compose("opsd", overrides=list(args.overrides))
    task = build_task(cfg)
    new_tokens = args.new_tokens or int(cfg.algorithm.max_new_tokens)
    backbone = load_backbone(args.model or cfg.agent.model, device=args.device)
    observations, _ = task.make_batch(args.prefixes).reset(seed=args.seed)
    personas = task.personas
    rows = []
    for weight in args.weights:
        for d, persona in enumerate(personas):
            start = time.perf_counter()
            own = [task.teacher_messages(o, persona, "") for o in observations]
            others = [[task.teacher_messages(o, p, "") for o in observations] for j, p in enumerate(personas) if j != d]
            generator = torch.Generator().manual_seed(args.seed)
            texts = []
            for i in range(0, len(own), args.batch_size):
                part = slice(i, i + args.batch_size)
                texts += sample_teacher(backbone.model, backbone.tokenizer, own[part], [o[part] for o in others],
                                        weight, new_tokens=new_tokens, generator=generator,
                                        plausibility=float(cfg.algorithm.contrast_plausibility))
            metrics = task.step_metrics(texts, [{}] * len(texts))
            figures = {key: float(np.mean(values)) for key, values in metrics.items()}
            rows.append({"contrast": weight, "persona": persona.name, **figures,
                         "seconds": round(time.perf_counter() - start, 1), "example": texts[0], "texts": texts})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "texts"}), flush=True)
    keys = [k for k in rows[0] if k not in ("contrast", "persona", "seconds", "example", "texts")]
    print("\n| contrast w | persona | " + " | ".join(keys) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in keys) + " |")
    for row in rows:
        print(f"| {row['contrast']:g} | {row['persona']} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
    result = {"prefixes": args.prefixes, "new_tokens": new_tokens, "model": args.model or cfg.agent.model, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
