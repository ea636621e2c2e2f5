"""Dialogue turns per second: stepping tutoring dialogues one at a time vs the batched path.

Usage:
    python benchmarks/tutoring_rollout.py                      # embedded SmolLM2-135M teacher, scripted student
    python benchmarks/tutoring_rollout.py --model tiny-random  # smoke run

Both paths drive the same ``--dialogues`` dialogues (same seeds) for ``--turns`` teacher turns with
a 2-head policy on the embedded model as the teacher (head 0 for half the dialogues, head 1 for the
rest) and the scripted student. "One at a time" runs each dialogue in its own ``TutoringEnv`` and
samples each turn alone; "batched" samples every dialogue's turn in one ``generate`` call (per-sample
head weights) and steps a ``TutoringBatch`` (one student call and one judge call per turn), once
with finished rows dropped from the batch (the default of ``agents.generate``) and once with
``transformers.generate`` keeping them until the longest row ends.
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium
import torch

import envs  # noqa: F401  (registers the env ids)
from agents import MultiHeadPolicy, generate, load_backbone
from envs.judges import HeuristicSatisfactionJudge
from envs.students import ScriptedStudent
from envs.tasks import TutoringTask


def sequential(policy, tokenizer, task, args) -> tuple[float, int]:
    """Seconds and turns for one dialogue at a time."""
    turns, start = 0, time.perf_counter()
    for i in range(args.dialogues):
        env = gymnasium.make("pluralgym/Tutoring-v0", student=task.student, satisfaction_judge=task.satisfaction_judge)
        obs, _ = env.reset(seed=args.seed + i)
        for t in range(args.turns):
            out = generate(policy, tokenizer, [task.policy_messages(obs)], head=i % 2, max_new_tokens=args.new_tokens,
                           temperature=1.0, seed=args.seed + 1000 * i + t)
            obs, *_ = env.step(task.actions(out.texts)[0])
            turns += 1
    return time.perf_counter() - start, turns


def batched(policy, tokenizer, task, args, drop_finished: bool = True) -> tuple[float, int]:
    """Seconds and turns for all dialogues stepped together."""
    start = time.perf_counter()
    batch = task.make_batch(args.dialogues)
    obs, _ = batch.reset(seed=args.seed)
    weights = torch.nn.functional.one_hot(torch.arange(args.dialogues) % 2, 2).float()
    for t in range(args.turns):
        out = generate(policy, tokenizer, [task.policy_messages(o) for o in obs], weights=weights,
                       max_new_tokens=args.new_tokens, temperature=1.0, seed=args.seed + t, batch_size=args.batch_size,
                       drop_finished=drop_finished)
        obs, *_ = batch.step(task.actions(out.texts))
    return time.perf_counter() - start, args.dialogues * args.turns


@torch.no_grad()  # and restores gradients after: tests call main() in-process
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dialogues", type=int, default=16)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=None, help="generate in chunks (default: all at once)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    backbone = load_backbone(args.model, device=args.device)
    policy = MultiHeadPolicy(backbone.model, num_heads=2, head_names=["direct", "interactive"])
    persona = {"name": "direct", "label": "DIRECT", "description": "Explain."}
    task = TutoringTask([persona], ScriptedStudent(), HeuristicSatisfactionJudge())
    seq_s, seq_turns = sequential(policy, backbone.tokenizer, task, args)
    print(f"one at a time: {seq_turns} turns in {seq_s:.1f} s = {seq_turns / seq_s:.2f} turns/s", flush=True)
    keep_s, _ = batched(policy, backbone.tokenizer, task, args, drop_finished=False)
    print(f"batched, finished rows kept:    {seq_turns} turns in {keep_s:.1f} s = {seq_turns / keep_s:.2f} turns/s",
          flush=True)
    bat_s, bat_turns = batched(policy, backbone.tokenizer, task, args)
    print(f"batched, finished rows dropped: {bat_turns} turns in {bat_s:.1f} s = {bat_turns / bat_s:.2f} turns/s",
          flush=True)
    ratio = (bat_turns / bat_s) / (seq_turns / seq_s)
    print(f"batched / one at a time: {ratio:.2f}x (finished rows kept: {seq_s / keep_s:.2f}x)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "dialogues": args.dialogues, "turns": args.turns,
                       "new_tokens": args.new_tokens, "sequential_turns_per_s": seq_turns / seq_s,
                       "batched_turns_per_s": bat_turns / bat_s, "speedup": ratio,
                       "batched_keep_finished_turns_per_s": bat_turns / keep_s}, f, indent=1)


if __name__ == "__main__":
    main()
