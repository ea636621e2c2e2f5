"""Which turn does the feedback put in the teacher's mind? Rewards of the teacher's own turns with and without it.

Usage:
    python benchmarks/feedback_target.py --env tutoring                   # base model, whole eval split, first turns
    python benchmarks/feedback_target.py --env tutoring --variant before_style env.feedback_position=before_style
    python benchmarks/feedback_target.py --env persona --num 20 --samples 2 --out persona_target.json
    python benchmarks/feedback_target.py --env persona --model tiny-random --num 2   # seconds: a smoke run

``feedback_signal.py`` asks whether the teacher *reads* the feedback (the AUC of its log-prob
shift). That does not say which way distillation pulls. OPSD moves each head towards the
teacher's distribution, so what it can teach is what the teacher itself would write. This script
samples exactly that:

1. The base policy plays ``eval`` episodes; the state before each of its turns is kept, with the
   env's feedback on the turn (the student's reply; the critique) and its reward.
2. In that state the frozen teacher writes ``--samples`` turns of its own under the matched block
   (the student's own style; the focal facet), once without the feedback and once with the
   feedback on the policy's turn (``env.teacher_feedback=false|true``).
3. Each of those turns goes to a copy of the episode restored from the state (the same draws for
   every candidate), and the env's reward rates it.

The gain is the paired mean of reward(with) - reward(without), with a bootstrap interval over
episodes, over all turns and split by how the env rated the policy's turn. A gain at or below
zero means that training a head towards this teacher cannot make the head better *because of*
the feedback, however well the teacher reads it. The task's per-turn figures (``step_metrics``)
are reported for every writer too, with its independent checks (``turn_checks``, which the reward
never calls) where the task has them, and ``--show`` prints some states side by side for reading.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from feedback_signal import compose_env, load_base, sample_turns

from agents import generate

SPLITS = {"all": lambda r: np.ones_like(r, dtype=bool), "after a bad turn": lambda r: r < 0,
          "after a neutral turn": lambda r: r == 0, "after a good turn": lambda r: r > 0}


def paired_interval(diff: np.ndarray, episodes: np.ndarray, *, samples: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> dict[str, float]:
    """Mean of ``diff`` with a percentile bootstrap interval that resamples whole episodes (NaN when empty)."""
    if not len(diff):
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    ids = np.unique(episodes)
    groups = [np.flatnonzero(episodes == e) for e in ids]
    sums = np.array([diff[g].sum() for g in groups])
    counts = np.array([len(g) for g in groups])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ids), size=(samples, len(ids)))
    reps = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    alpha = (1 - confidence) / 2
    return {"mean": float(diff.mean()), "low": float(np.quantile(reps, alpha)),
            "high": float(np.quantile(reps, 1 - alpha)), "n": int(len(diff))}


def teacher_turns(task, model, tokenizer, turns: list[dict[str, Any]], prompts: list, *, samples: int,
                  max_new_tokens: int, temperature: float, seed: int, batch_size: int) -> list[dict[str, Any]]:
    """``samples`` rounds of one teacher turn per state, each rated in a copy of its episode.

    Returns:
        One dict per round: ``texts`` (the turns as the env received them), ``rewards`` and ``metrics``
        (the task's per-turn figures), each a list over states.
    """
    rounds = []
    for s in range(samples):
        out = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                       seed=seed * 7919 + s, batch_size=batch_size)
        actions = task.actions(out.texts)
        batch = task.make_batch(len(turns), split="eval")
        batch.set_states([t["state"] for t in turns])
        _, rewards, _, _, infos = batch.step(actions)
        batch.close()
        rounds.append({"texts": actions, "rewards": [float(r) for r in rewards],
                       "feedback": [i["feedback"] for i in infos],
                       "metrics": {**task.step_metrics(out.texts, infos), **turn_checks(task, turns, actions)}})
    return rounds


def turn_checks(task, turns: list[dict[str, Any]], texts: list[str]) -> dict[str, list[float]]:
    """The task's independent per-turn checks of ``texts`` written in the states of ``turns`` (``{}`` without any).

    A task may define ``turn_checks(observations, texts, labels)``: figures its reward never
    computes (tutoring: meta-talk and questions about the lesson; persona: the attribution check).
    """
    checker = getattr(task, "turn_checks", None)
    if checker is None:
        return {}
    checks = checker([t["observation"] for t in turns], texts, [t["labels"] for t in turns])
    return {f"check/{k}": v for k, v in checks.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the measurement, prints the tables and returns (and with ``--out`` writes) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=("tutoring", "persona"), default="tutoring")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the frozen teacher (and base policy)")
    parser.add_argument("--num", type=int, default=None, help="eval contexts (default: the whole split)")
    parser.add_argument("--turns", type=int, default=1, help="policy turns per episode (OPSD trains first turns)")
    parser.add_argument("--samples", type=int, default=2, help="teacher turns per state and teacher")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "OVERRIDE"),
                        help="another teacher: a name and env overrides (e.g. before_style "
                             "env.feedback_position=before_style)")
    parser.add_argument("--set", nargs="+", default=[], metavar="OVERRIDE",
                        help="config overrides of the env the turns are played and rated in, for every teacher")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--show", type=int, default=5, help="states to print side by side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results (every turn included) as JSON here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    task, model, tokenizer = load_base(args.env, args.model, args.set)
    common = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, batch_size=args.batch_size)
    turns = sample_turns(task, model, tokenizer, contexts=args.num, turns=args.turns, seed=args.seed, selector={},
                         driver="base", keep_states=True, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature)
    names = [p.name for p in task.personas]
    blocks = [task.personas[names.index(t["label"])] for t in turns]  # the matched style; the focal facet
    policy_rewards = np.array([t["reward"] for t in turns], dtype=float)
    episodes = np.array([t["episode"] for t in turns])
    rows, writers = [], {}
    policy_checks = turn_checks(task, turns, [t["turn"] for t in turns])
    for name, overrides in [("plain", [])] + [(v[0], v[1:]) for v in args.variant]:
        for feedback in (False, True):
            _, teacher = compose_env(args.env, args.model, [*args.set, *overrides, f"env.teacher_feedback={feedback}"])
            prompts = [teacher.teacher_messages(t["observation"], b, t["feedback"]) for t, b in zip(turns, blocks)]
            writers[name, feedback] = teacher_turns(task, model, tokenizer, turns, prompts, samples=args.samples,
                                                    seed=args.seed + 1, **common)
        without, with_fb = (np.mean([r["rewards"] for r in writers[name, f]], axis=0) for f in (False, True))
        for split, select in SPLITS.items():
            keep = select(policy_rewards)
            gain = paired_interval(with_fb[keep] - without[keep], episodes[keep], samples=args.bootstrap,
                                   seed=args.seed)
            rows.append({"variant": name, "turns": split, "policy": float(policy_rewards[keep].mean()) if keep.any()
                         else float("nan"), "without": float(without[keep].mean()) if keep.any() else float("nan"),
                         "with": float(with_fb[keep].mean()) if keep.any() else float("nan"), **gain})
            print(json.dumps(rows[-1]), flush=True)
    metrics = {f"{name}/{'with' if f else 'without'}": {k: float(np.mean([np.mean(r["metrics"][k]) for r in rounds]))
                                                         for k in rounds[0]["metrics"]}
               for (name, f), rounds in writers.items()}
    if policy_checks:  # the policy's own turns, on the checks only (its step metrics were not kept)
        metrics = {"policy": {k: float(np.mean(v)) for k, v in policy_checks.items()}, **metrics}
    print(f"\n{args.env}: reward of the teacher's own turns with and without the feedback on the policy's turn "
          f"({args.samples} per state; gain: paired, 95% bootstrap over episodes)\n")
    print("| variant | states | n | policy's turn | teacher without | teacher with | gain (with - without) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['variant']} | {r['turns']} | {r['n']} | {r['policy']:.3f} | {r['without']:.3f} | "
              f"{r['with']:.3f} | {r['mean']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] |")
    columns = list(dict.fromkeys(k for values in metrics.values() for k in values))
    print("\n| writer | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for writer, values in metrics.items():
        print(f"| {writer} | " + " | ".join(f"{values[k]:.3f}" if k in values else "" for k in columns) + " |")
    per_state = [{"episode": t["episode"], "persona": b.name, "policy_turn": t["turn"], "feedback": t["feedback"],
                  "reward": t["reward"],
                  **{f"{name}/{'with' if f else 'without'}": [{"turn": r["texts"][i], "reward": r["rewards"][i],
                                                                "feedback": r["feedback"][i]} for r in rounds]
                     for (name, f), rounds in writers.items()}}
                 for i, (t, b) in enumerate(zip(turns, blocks))]
    for state in per_state[:: max(1, len(per_state) // max(1, args.show))][: args.show]:
        print(f"\n[{state['persona']}] policy: {state['policy_turn']!r} -> {state['feedback']!r} "
              f"({state['reward']:+g})")
        for writer in (w for w in metrics if w != "policy"):
            first = state[writer][0]
            print(f"  {writer}: {first['turn']!r} -> {first['feedback']!r} ({first['reward']:+g})")
    result = {"env": args.env, "model": args.model, "set": args.set, "samples": args.samples, "rows": rows,
              "metrics": metrics, "states": per_state, "seconds": round(time.perf_counter() - started, 1)}
    print(f"\n{result['seconds']} s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
