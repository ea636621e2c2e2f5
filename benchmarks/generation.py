"""Generation throughput of a multi-head policy: one head, per-sample mixtures and Persona-judge, batch 1 vs 8.

Usage:
    python benchmarks/generation.py                      # embedded SmolLM2-135M, CPU
    python benchmarks/generation.py --model tiny-random --new-tokens 16 --repeats 1   # smoke run
    python benchmarks/generation.py --dtype bfloat16 --out bf16.json   # the same rows with bf16 weights

Every configuration generates exactly ``--new-tokens`` tokens per sequence (EOS suppressed) from
the same chat prompts, so tokens/s compare like for like. Persona-judge rows (``agents.DraftJudge``,
block 4, exact sampling and greedy top-20) also report the draft tokens their judges accepted per
block. Every configuration is built first and then timed in rounds that alternate direction
(forwards, backwards, ...). Each row reports its best round; each cost ratio is the median over
rounds of the ratio within a round, so neither a drift of the machine's speed nor one lucky round
enters it. Writes a JSON report with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from timing import count_of_at_least_one, interleaved, paired_ratio

from agents import DraftJudge, MultiHeadPolicy, generate, load_backbone
from agents.models import DTYPES

TOPICS = ["photosynthesis", "the French Revolution", "Newton's third law", "metaphors", "the nervous system",
          "supply and demand", "the Parthenon", "DNA"]


def prompts(batch: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Teach me about {TOPICS[i % len(TOPICS)]}."}] for i in range(batch)]


def timed(policy, tokenizer, batch: int, selection: dict, new_tokens: int, seed: int) -> float:
    """Tokens per second of one ``generate`` call."""
    start = time.perf_counter()
    out = generate(policy, tokenizer, prompts(batch), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   temperature=1.0, seed=seed, **selection)
    elapsed = time.perf_counter() - start
    assert out.num_tokens == batch * new_tokens, "every sequence must have the same length"
    return out.num_tokens / elapsed


@torch.no_grad()  # and restores gradients after: tests call main() in-process
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=count_of_at_least_one, default=2,
                        help="timing rounds over all configs (alternating order)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="weight dtype of the backbone and heads")
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    args = parser.parse_args()

    def load():
        return load_backbone(args.model, device=args.device, dtype=args.dtype)

    load()  # make sure the cache is warm
    start = time.perf_counter()
    backbone = load()
    load_s = time.perf_counter() - start

    configs = []  # (name, heads, batch, policy, selection): all built first, then timed in interleaved rounds
    for heads in (1, 2, 5):
        policy = MultiHeadPolicy(load().model, num_heads=heads)
        for batch in args.batches:
            if heads == 1:
                selection, label = {"head": 0}, "single head"
            else:  # a different random mixture per sample: the hardest case for the mixed projection
                w = torch.distributions.Dirichlet(torch.ones(heads)).sample((batch,))
                selection, label = {"weights": w}, f"{heads}-head per-sample mixture"
            configs.append((label, heads, batch, policy, selection))
            if heads > 1:
                configs += [(f"{heads}-head Persona-judge, {kind}", heads, batch, policy,
                             {"decoder": DraftJudge(block=4, exact=exact)})
                            for kind, exact in (("exact", True), ("greedy top-k", False))]
    rounds = interleaved(configs, args.repeats, lambda c, r: timed(c[3], backbone.tokenizer, c[2], c[4],
                                                                   args.new_tokens, seed=r))
    rows = []
    for (name, heads, batch, _, sel), measured in zip(configs, rounds):
        tps = max(measured)
        row = {"config": name, "heads": heads, "batch": batch, "tokens_per_s": round(tps, 1),
               "rounds": [round(m, 1) for m in measured]}
        extra = ""
        if "decoder" in sel:
            row["accepted_per_block"] = round(sel["decoder"].stats.accepted_per_block, 2)
            extra = f"  ({row['accepted_per_block']:.2f} drafts accepted per block)"
        rows.append(row)
        print(f"{name:36s} batch {batch:2d}: {tps:7.1f} tokens/s{extra}", flush=True)
    del configs

    def measured(heads, batch, config=None):
        return next(r for r in rows if r["heads"] == heads and r["batch"] == batch
                    and (config is None or r["config"] == config))

    def tps(heads, batch):
        return measured(heads, batch)["tokens_per_s"]

    def cost(heads, batch, config=None):  # time per token against one head's, paired within rounds
        return round(paired_ratio(measured(1, batch)["rounds"], measured(heads, batch, config)["rounds"]), 3)

    big, small = max(args.batches), min(args.batches)
    summary = {
        "model": args.model,
        "device": str(backbone.model.device),
        "dtype": str(backbone.model.dtype).removeprefix("torch."),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "new_tokens": args.new_tokens,
        "warm_load_s": round(load_s, 3),
        "rows": rows,
        "mixture_cost_vs_single_head": {f"{k}-head": cost(k, big) for k in (2, 5)},
        "batch_speedup": round(tps(1, big) / tps(1, small), 2),
        "persona_judge_cost_vs_single_head": {
            f"{k}-head {kind}": cost(k, big, f"{k}-head Persona-judge, {kind}")
            for k in (2, 5) for kind in ("exact", "greedy top-k")},
    }
    print(f"warm-cache load: {load_s:.2f} s")
    print(f"batch {big} vs batch {small} speed-up (single head): {summary['batch_speedup']}x")
    for k, v in summary["mixture_cost_vs_single_head"].items():
        print(f"{k} mixture cost vs single head at batch {big}: {v}x")
    for k, v in summary["persona_judge_cost_vs_single_head"].items():
        print(f"{k} Persona-judge cost vs single head at batch {big}: {v}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
