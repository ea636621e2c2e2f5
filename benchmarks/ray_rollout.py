"""Rollout throughput in-process vs Ray workers, and learner idle time with max_staleness 0 vs 1.

Usage:
    python benchmarks/ray_rollout.py                      # embedded SmolLM2-135M, scripted student
    python benchmarks/ray_rollout.py --model tiny-random  # smoke run
    python benchmarks/ray_rollout.py --out ray_rollout.json

Part 1 (throughput) takes ``--turns`` turns in ``2 x --dialogues`` tutoring dialogues (both heads,
scripted student) through each rollout pool, with fixed weights:

- ``in-process``: the learner's own process, one batched request per step;
- ``ray x1``: one Ray actor holding a policy copy (``--cpus`` CPUs, as many torch threads);
- ``ray x2``: two actors with ``--cpus / 2`` CPUs each, one half of the dialogues each.

Worker start-up (a Ray cluster, a process and a model copy per actor) is timed apart.

Part 2 (overlap) runs ``--steps`` OPSD steps with two Ray workers, once with ``max_staleness=0``
(workers wait for each update) and once with ``max_staleness=1`` (they collect the next step while
the learner updates), and reports the learner's idle time (waiting for rollouts) and the wall time
per step, the first step excluded.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_module

import algorithms.opsd as opsd
import configs
from algorithms.rollout import merge_results


def config(args, *overrides):
    configs.register()
    with initialize_config_module("configs", version_base="1.3"):
        return compose("opsd", overrides=[
            f"agent.model={args.model}", "device=cpu", "algorithm.eval.enabled=false", "ray.log_to_driver=false",
            f"algorithm.episodes_per_persona={args.dialogues}", f"algorithm.max_new_tokens={args.new_tokens}",
            f"algorithm.turns_per_episode={max(args.turns, 2)}", *overrides,
        ])


def throughput(args, name: str, *overrides) -> dict:
    """Turns per second of one pool over ``args.turns`` steps of collection (no learning)."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = opsd.OPSDTrainer(config(args, *overrides), Path(tmp))
        try:
            start = time.perf_counter()
            trainer.start_pool()
            startup = time.perf_counter() - start
            start, turns = time.perf_counter(), 0
            for step in range(args.turns):
                collected = trainer.pool.wait(trainer.pool.submit(trainer.requests(step)))
                result = merge_results(collected.results, trainer.tokenizer.pad_token_id)
                trainer.episodes = result.states
                turns += len(result.uids)
            elapsed = time.perf_counter() - start
        finally:
            trainer.close()
    row = {"pool": name, "turns": turns, "seconds": round(elapsed, 2), "turns_per_s": round(turns / elapsed, 3),
           "startup_s": round(startup, 1)}
    print(f"[ray_rollout] {name}: {row['turns_per_s']} turns/s ({turns} turns in {elapsed:.1f} s, "
          f"start-up {startup:.1f} s)", flush=True)
    return row


def overlap(args, staleness: int) -> dict:
    """Learner idle time and wall time per OPSD step with two Ray workers."""
    cpus = args.cpus / 2
    with tempfile.TemporaryDirectory() as tmp:
        trainer = opsd.OPSDTrainer(config(args, f"algorithm.steps={args.steps}", "ray.enabled=true",
                                          "ray.num_workers=2", f"ray.num_cpus_per_worker={cpus}",
                                          f"ray.max_staleness={staleness}"), Path(tmp))
        try:
            trainer.start_pool()
            walls, records = [], []
            for _ in range(args.steps):
                start = time.perf_counter()
                records.append(trainer.train_step())
                walls.append(time.perf_counter() - start)
        finally:
            trainer.close()
    steady = slice(1, None)  # the first step has nothing to overlap with
    row = {
        "max_staleness": staleness,
        "steps": args.steps,
        "idle_s_per_step": round(float(np.mean([r["perf/idle_s"] for r in records[steady]])), 2),
        "learn_s_per_step": round(float(np.mean([r["perf/learn_s"] for r in records[steady]])), 2),
        "wall_s_per_step": round(float(np.mean(walls[steady])), 2),
        "staleness": [r["rollout/staleness"] for r in records],
    }
    print(f"[ray_rollout] max_staleness={staleness}: learner idle {row['idle_s_per_step']} s/step, learning "
          f"{row['learn_s_per_step']} s/step, wall {row['wall_s_per_step']} s/step", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dialogues", type=int, default=8, help="dialogues per head (two heads)")
    parser.add_argument("--turns", type=int, default=2, help="turns per dialogue in part 1")
    parser.add_argument("--steps", type=int, default=5, help="OPSD steps per setting in part 2")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--cpus", type=float, default=2, help="CPUs the Ray workers share")
    parser.add_argument("--skip-overlap", action="store_true")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    results = {"model": args.model, "dialogues": 2 * args.dialogues, "new_tokens": args.new_tokens}
    results["throughput"] = [
        throughput(args, "in-process"),
        throughput(args, "ray x1", "ray.enabled=true", "ray.num_workers=1", f"ray.num_cpus_per_worker={args.cpus}"),
        throughput(args, "ray x2", "ray.enabled=true", "ray.num_workers=2", f"ray.num_cpus_per_worker={args.cpus / 2}"),
    ]
    if not args.skip_overlap:
        results["overlap"] = [overlap(args, 0), overlap(args, 1)]

    print("\n| pool | turns/s | start-up s |\n| --- | --- | --- |")
    for row in results["throughput"]:
        print(f"| {row['pool']} | {row['turns_per_s']} | {row['startup_s']} |")
    if "overlap" in results:
        print("\n| max_staleness | learner idle s/step | learning s/step | wall s/step |\n| --- | --- | --- | --- |")
        for row in results["overlap"]:
            print(f"| {row['max_staleness']} | {row['idle_s_per_step']} | {row['learn_s_per_step']} | "
                  f"{row['wall_s_per_step']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
