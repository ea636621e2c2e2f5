"""Export one head, or a fixed mixture of heads, of a trained run as a plain Hugging Face model folder.

    python -m algorithms.export runs/opsd/<run> --head interactive --out exported/interactive
    python -m algorithms.export runs/opsd/<run> --weights 0.3,0.7 --out exported/mix   # a fixed mixture
    python -m algorithms.export runs/opsd/<run> --out exported/blend                     # the equal blend

The folder holds the backbone with the chosen output layer as its ``lm_head`` (untied from the
embeddings) and the tokenizer, saved by ``save_pretrained`` in the model's own architecture:
``transformers`` loads it with no project code (tested: the same logits). ``transformers serve``
serves such folders (tests/test_real_server.py serves one saved the same way). vLLM reads the format
too, but it has not been run on an export here, because it needs a GPU. A logit-space mixture
``sum_d w_d W_d h`` is the single output layer ``(sum_d w_d W_d)``,
so a fixed mixture exports exactly too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from algorithms.router import load_run


def export(run: str | Path, out: str | Path, *, head: str | None = None,
           weights: list[float] | None = None, allow_targets: list[str] | None = None) -> Path:
    """Writes the run's head ``head`` (or the mixture ``weights``, or the equal blend) to ``out``.

    Args:
        run: An OPSD/RLVR run folder (its ``policy/``) or a saved policy folder.
        out: The output folder.
        head: A head's name or index.
        weights: One weight per head (they are used as given; a mixture needs no normalisation).
        allow_targets: Unregistered ``_target_`` classes the run's ``config.yaml`` may name.

    Raises:
        ValueError: For both ``head`` and ``weights``, an unknown head, or a wrong number of weights.
    """
    if head is not None and weights is not None:
        raise ValueError("Give --head or --weights, not both.")
    policy, tokenizer, _ = load_run(run, "cpu", current={"allow_targets": allow_targets or []})
    if head is not None:
        ref: int | str = int(head) if str(head).isdigit() else head
        if isinstance(ref, str) and ref not in policy.head_names:
            raise ValueError(f"No head named {ref!r}; the run's heads are {policy.head_names}.")
        return policy.export(out, head=ref, tokenizer=tokenizer)
    if weights is not None and len(weights) != policy.num_heads:
        raise ValueError(f"--weights needs {policy.num_heads} values (heads {policy.head_names}), got {len(weights)}.")
    return policy.export(out, weights=torch.tensor(weights) if weights is not None else None, tokenizer=tokenizer)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m algorithms.export <run> [--head NAME | --weights W,W,...] --out DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a trained run folder (or a saved policy folder)")
    parser.add_argument("--head", default=None, help="the head to export (name or index)")
    parser.add_argument("--weights", default=None, help="comma-separated weights of a fixed mixture, one per head")
    parser.add_argument("--out", type=Path, required=True, help="the output folder")
    parser.add_argument("--allow-targets", default="",
                        help="comma-separated _target_ classes the run's config may name")
    args = parser.parse_args(argv)
    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    allow = [t for t in args.allow_targets.split(",") if t]
    path = export(args.run, args.out, head=args.head, weights=weights, allow_targets=allow)
    print(f"[export] wrote {path}: load it with transformers.AutoModelForCausalLM.from_pretrained({str(path)!r})")


if __name__ == "__main__":
    main()
