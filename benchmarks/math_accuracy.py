"""Greedy accuracy of a model on the math environment's problems, per difficulty level, slice and persona.

Usage:
    python benchmarks/math_accuracy.py                        # embedded SmolLM2-135M, levels 1-6, 50 problems each
    python benchmarks/math_accuracy.py --levels 1 2 3 --num 100 --personas none kindergartener number-theorist
    python benchmarks/math_accuracy.py --levels --gsm8k-max-steps 1 --gsm8k-num 100   # GSM8K easy slice only
    python benchmarks/math_accuracy.py --levels --drills 1 2 3 --temperature 0.5   # arithmetic drills, per kind
    python benchmarks/math_accuracy.py --model tiny-random --levels 1 --num 2 --max-new-tokens 4   # smoke run

Each problem is asked exactly as ``pluralgym/PersonaMath-v0`` asks it (``envs.math.math_messages``),
answered greedily (temperature 0; ``--temperature`` samples instead, as training rollouts do) and
scored by the environment's reward rule
(``envs.math_reward.is_correct``). Generated problems come from the ``--split`` stream (``eval`` by
default, which training never sees). Prints a markdown table with a 95% Wilson interval per row;
``--out`` also writes the rows and every answer as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from agents import generate, load_backbone
from envs.data.drills import DRILL_KINDS, make_drills
from envs.data.math import LEVELS, SPLITS, MathProblem, load_gsm8k, make_problems
from envs.math import PromptPersona, math_messages, persona_pools
from envs.math_reward import has_final_marker, is_correct, parse_final_number


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for ``z=1.96``); (0, 1) when ``total`` is 0."""
    if total <= 0:
        return 0.0, 1.0
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="name or path for agents.load_backbone")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--levels", type=int, nargs="*", default=sorted(LEVELS),
                        help=f"generated difficulty levels to measure (of {sorted(LEVELS)}; none: skip)")
    parser.add_argument("--num", type=int, default=50, help="problems per level")
    parser.add_argument("--split", default="eval", choices=SPLITS, help="stream of the generated problems")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated stream")
    parser.add_argument("--drills", type=int, nargs="*", default=[],
                        help="also measure the arithmetic drills of these levels (envs.data.drills), per kind")
    parser.add_argument("--gsm8k-max-steps", type=int, default=None,
                        help="also measure the GSM8K slice with at most this many calculator steps")
    parser.add_argument("--gsm8k-split", default="test", choices=("train", "test"))
    parser.add_argument("--gsm8k-num", type=int, default=None, help="first N questions of the slice (default --num)")
    parser.add_argument("--personas", nargs="+", default=["none"],
                        help="persona ids: 'none', lottery roles, PersonaGym ids (pg-3...)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0: greedy; above 0 samples (seeded by --seed), e.g. as RLVR's rollouts do")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--show", type=int, default=0, help="print this many answers per row")
    parser.add_argument("--out", default=None, help="write rows and answers as JSON here")
    return parser.parse_args(argv)


def find_personas(ids: list[str]) -> list[PromptPersona]:
    pools = persona_pools()
    known = {p.id: p for p in (*pools.train, *pools.held_out, *pools.lottery)}
    missing = [i for i in ids if i not in known]
    if missing:
        lottery = ", ".join(p.id for p in pools.lottery)
        raise SystemExit(f"unknown persona id(s) {missing}; use 'none', a lottery role ({lottery}) or pg-<n>")
    return [known[i] for i in ids]


def task_sets(args: argparse.Namespace) -> list[tuple[str, list[MathProblem]]]:
    sets = [(f"level {level}", make_problems(args.num, level, args.seed, args.split)) for level in args.levels]
    sets += [(f"drill L{level} {kind}", make_drills(args.num, level, args.seed, args.split, kinds=(kind,)))
             for level in args.drills for kind in DRILL_KINDS]
    if args.gsm8k_max_steps is not None:
        problems = load_gsm8k(args.gsm8k_split, max_steps=args.gsm8k_max_steps)
        sets.append((f"gsm8k-{args.gsm8k_split} <= {args.gsm8k_max_steps} steps",
                     problems[: args.gsm8k_num or args.num]))
    if not sets:
        raise SystemExit("nothing to measure: give --levels, --drills and/or --gsm8k-max-steps")
    return sets


def answer(model, tokenizer, problems: list[MathProblem], persona: PromptPersona, args) -> list[str]:
    """Answers in input order (greedy unless --temperature; prompts sorted by length inside, to pad less)."""
    prompts = [math_messages(p, persona) for p in problems]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i][-1]["content"]))
    out = generate(model, tokenizer, [prompts[i] for i in order], max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size)
    texts = [""] * len(prompts)
    for i, text in zip(order, out.texts):
        texts[i] = text
    return texts


def markdown(rows: list[dict]) -> str:
    lines = ["| task | persona | n | correct | accuracy | 95% CI (Wilson) | wrote `####` | no number |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['persona']} | {r['n']} | {r['correct']} | {r['accuracy']:.1%} | "
                     f"[{r['ci_low']:.1%}, {r['ci_high']:.1%}] | {r['formatted']:.0%} | {r['no_number']:.0%} |")
    return "\n".join(lines)


@torch.no_grad()  # and restores gradients after: tests call main() in-process
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    personas = find_personas(args.personas)
    sets = task_sets(args)
    start = time.perf_counter()
    model, tokenizer = load_backbone(args.model, device=args.device)
    print(f"loaded {args.model} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

    rows, records = [], []
    for task, problems in sets:
        for persona in personas:
            start = time.perf_counter()
            texts = answer(model, tokenizer, problems, persona, args)
            correct = [is_correct(t, p.answer) for t, p in zip(texts, problems)]
            k, n = sum(correct), len(problems)
            low, high = wilson_interval(k, n)
            row = {"task": task, "persona": persona.id, "n": n, "correct": k, "accuracy": k / n,
                   "ci_low": low, "ci_high": high, "formatted": sum(map(has_final_marker, texts)) / n,
                   "no_number": sum(parse_final_number(t) is None for t in texts) / n,
                   "seconds": round(time.perf_counter() - start, 1)}
            rows.append(row)
            print(f"{task} / {persona.id}: {k}/{n} in {row['seconds']} s", file=sys.stderr, flush=True)
            for p, t, ok in zip(problems, texts, correct):
                records.append({"task": task, "persona": persona.id, "problem": p.id, "answer": p.answer,
                                "parsed": parse_final_number(t), "correct": ok, "text": t})
            for p, t, ok in list(zip(problems, texts, correct))[: args.show]:
                print(f"\n--- {p.id} (answer {p.answer}, {'right' if ok else 'wrong'})\n{p.question}\n>>> {t}")

    table = markdown(rows)
    sampling = f"temperature {args.temperature}" if args.temperature > 0 else "greedy"
    print(f"\nModel {args.model}, {sampling}, {args.max_new_tokens} new tokens, generated split {args.split!r}, "
          f"seed {args.seed}\n\n{table}")
    result = {"model": args.model, "max_new_tokens": args.max_new_tokens, "split": args.split, "seed": args.seed,
              "rows": rows, "answers": records, "markdown": table}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
