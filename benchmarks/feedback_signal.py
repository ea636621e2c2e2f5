"""Can the frozen teacher read the feedback? The AUC of its feedback shift on good vs bad turns.

Usage:
    python benchmarks/feedback_signal.py --env tutoring                      # base model, 48 contexts
    python benchmarks/feedback_signal.py --env persona --num 40 --out persona.json
    python benchmarks/feedback_signal.py --env tutoring --run runs/opsd/<run>   # also every head of a run
    python benchmarks/feedback_signal.py --env tutoring --variant before_style env.feedback_position=before_style
    python benchmarks/feedback_signal.py --env persona --model tiny-random --num 4   # seconds: a smoke run
    python benchmarks/feedback_signal.py --env persona --teacher-samples --num 20  # also turns the teacher would write
    python benchmarks/feedback_signal.py --env persona --set critic.quote_off_facet=false   # another critic

OPSD can only teach what the privileged teacher does with the feedback. For every turn (tutoring)
or response (persona) sampled on the ``eval`` split, the env gives its feedback (the student's
reply; the critic's critique) and rates the turn (its reward: satisfaction +1/0/-1; the judge's Q
on the focal facet). The frozen base model scores the turn under the privileged prompt twice,
with and without the feedback (``env.teacher_feedback=true|false``), and

    delta = mean over tokens of log q(y | context, feedback) - log q(y | context).

If the teacher reads the feedback, delta is higher for turns the env rated good than for turns it
rated bad: the AUC of delta (good vs bad; neutral and zero-rated turns left out) measures it, with
a bootstrap interval over episodes. An AUC near 0.5 means no trainer can learn from that feedback
through this teacher; one well below 0.5 means the teacher moves towards the turns the env rated
bad. ``--labels nonnegative`` counts every unpenalised turn as good (the persona judge rates most
responses 0). With several sources, a row ``all`` pools them. ``--contrast`` adds the feedback-contrastive teacher
``(1 + w) log q(. | feedback) - w log q(. | no feedback)`` (renormalised over the vocabulary),
whose delta is taken the same way. ``--variant NAME OVERRIDES...`` adds a teacher built with other
env settings (where the feedback sits, its wording); every variant is measured on the same turns.
A variant only changes how the teacher is shown the feedback; ``--set OVERRIDES...`` changes the
env the turns are played in (the critic and the words of its critique, the student), for every
teacher. Sampling does not read the feedback, so runs that differ only in ``--set`` score the same
turns under the same rewards whenever the reward does not come from the changed plug-in.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir

import algorithms.opsd  # noqa: F401  (registers the OPSD settings its config composes)
import configs
from agents import load_backbone
from agents.generation import completion_logits, encode_prompts
from algorithms.components import build_task
from algorithms.episodes import play_episodes
from algorithms.losses import contrastive_teacher_logits, feedback_shift

LABELS = {  # reward -> +1 good, -1 bad, 0 left out
    "sign": np.sign,
    "nonnegative": lambda r: np.where(np.asarray(r) >= 0, 1, -1),
}


def auc(good: np.ndarray, bad: np.ndarray) -> float:
    """P(a good turn's delta > a bad turn's delta), ties counting half (NaN when a side is empty)."""
    if not len(good) or not len(bad):
        return float("nan")
    diff = good[:, None] - bad[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def auc_interval(deltas: np.ndarray, labels: np.ndarray, episodes: np.ndarray, *, samples: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """The AUC with a percentile bootstrap interval that resamples whole episodes (their turns together)."""
    value = auc(deltas[labels > 0], deltas[labels < 0])
    ids = np.unique(episodes)
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(samples):
        chosen = rng.choice(ids, size=len(ids), replace=True)
        idx = np.concatenate([np.flatnonzero(episodes == e) for e in chosen])
        reps.append(auc(deltas[idx][labels[idx] > 0], deltas[idx][labels[idx] < 0]))
    reps = np.array([r for r in reps if r == r])
    alpha = (1 - confidence) / 2
    low, high = (float(np.quantile(reps, alpha)), float(np.quantile(reps, 1 - alpha))) if len(reps) else (np.nan,) * 2
    return {"auc": value, "low": low, "high": high, "good": int((labels > 0).sum()), "bad": int((labels < 0).sum())}


@torch.no_grad()
def feedback_deltas(model, tokenizer, with_prompts: list, without_prompts: list, turns: list[str],
                    weights: list[float], batch_size: int = 8) -> np.ndarray:
    """``(len(weights), N)`` mean per-token log-prob shift of each turn when the teacher sees the feedback.

    Weight 0 is the plain teacher; weight ``w`` the feedback-contrastive teacher.
    """
    device = next(model.parameters()).device
    eos = tokenizer.eos_token or ""
    out = np.zeros((len(weights), len(turns)))
    for start in range(0, len(turns), batch_size):
        part = slice(start, start + batch_size)
        enc = tokenizer([t + eos for t in turns[part]], return_tensors="pt", padding=True, padding_side="right",
                        add_special_tokens=False).to(device)
        comp, mask = enc["input_ids"], enc["attention_mask"]
        lw = completion_logits(model, *encode_prompts(tokenizer, with_prompts[part], device), comp, mask).float()
        lo = completion_logits(model, *encode_prompts(tokenizer, without_prompts[part], device), comp, mask).float()
        for k, w in enumerate(weights):  # the shift the trainer's feedback advantage also uses
            out[k, part] = feedback_shift(contrastive_teacher_logits(lw, [lo], w), lo, comp, mask).cpu().numpy()
    return out


class TeacherPrompts:
    """The task, except that turns are written under the teacher's prompt for ``persona`` without the feedback.

    Sampling the base model this way gives the turns the privileged teacher itself would write (on
    the persona critic: responses that draw on the focal facet, which the plain policy seldom does).
    """

    def __init__(self, task, persona):
        self._task, self._persona = task, persona

    def __getattr__(self, name: str):
        return getattr(self._task, name)

    def policy_messages(self, observation):
        """The teacher's prompt of this persona, without the feedback."""
        return self._task.teacher_messages(observation, self._persona, None)


def sample_turns(task, model, tokenizer, *, contexts: int | None, turns: int, max_new_tokens: int, temperature: float,
                 seed: int, selector: dict, driver: str, persona: str | None = None,
                 keep_states: bool = False) -> list[dict[str, Any]]:
    """Plays ``eval`` episodes and returns every turn with its observation, feedback and rating.

    With ``persona`` on a task whose feedback follows the head (the persona critic), every
    episode's focal facet is that persona, as when its head is trained: the feedback and the
    rating are about it. ``keep_states`` adds each turn's ``state``: the episode just before it.
    """
    options = task.eval_options(contexts, split="eval")
    if persona is not None and task.feedback_follows_head:
        options = [{**o, **task.persona_options(persona)} for o in options]
    records = play_episodes(model, tokenizer, task, selector, options, driver=driver, turns=turns,
                            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, split="eval",
                            keep_states=keep_states)
    return [{"episode": f"{driver}/{e}", "observation": obs, "turn": action, "feedback": fb, "reward": reward,
             "label": r.label.get("persona"), "labels": dict(r.label),
             **({"state": r.states[t]} if keep_states else {})}
            for e, r in enumerate(records)
            for t, (obs, action, fb, reward) in enumerate(zip(r.observations, r.actions, r.feedback, r.rewards))]


def compose_env(env: str, model: str, overrides: list[str]):
    """The OPSD config for ``env`` (with the given env overrides) and its task."""
    configs.register()
    with initialize_config_dir(str(Path(configs.__file__).resolve().parent), version_base="1.3"):
        cfg = compose("opsd", overrides=[f"env={env}", f"agent.model={model}", *overrides])
    return cfg, build_task(cfg)


def load_base(env: str, model: str, overrides: list[str]):
    """The env's task (with ``overrides``) and the frozen base model, eval mode, padding on the left for sampling."""
    _, task = compose_env(env, model, overrides)
    backbone = load_backbone(model)
    backbone.tokenizer.padding_side = "left"
    return task, backbone.model.eval(), backbone.tokenizer


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the measurement, prints the table and returns (and with ``--out`` writes) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=("tutoring", "persona"), default="tutoring")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the frozen teacher (and base policy)")
    parser.add_argument("--run", default=None, help="an OPSD run folder: also sample every head of its policy")
    parser.add_argument("--num", type=int, default=None, help="eval contexts (default: the whole split)")
    parser.add_argument("--turns", type=int, default=3, help="turns per episode (capped by the env)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--contrast", type=float, nargs="*", default=[1.0, 2.0],
                        help="feedback-contrast weights to measure besides the plain teacher")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "OVERRIDE"),
                        help="another teacher: a name and env overrides "
                             "(e.g. before_style env.feedback_position=before_style)")
    parser.add_argument("--set", nargs="+", default=[], metavar="OVERRIDE",
                        help="config overrides of the env the turns are played in, for every teacher "
                             "(e.g. critic.quote_off_facet=false)")
    parser.add_argument("--teacher-samples", action="store_true",
                        help="also sample the base model under each persona's teacher prompt (without the feedback)")
    parser.add_argument("--labels", nargs="+", choices=sorted(LABELS), default=["sign"],
                        help="which turns count as good and bad: sign (reward > 0 vs < 0, zero left out) or "
                             "nonnegative (>= 0 vs < 0: unpenalised vs penalised)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results (every turn's delta included) as JSON here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    task, model, tokenizer = load_base(args.env, args.model, args.set)
    common = dict(contexts=args.num, turns=args.turns, max_new_tokens=args.max_new_tokens,
                  temperature=args.temperature, seed=args.seed)
    samples = sample_turns(task, model, tokenizer, selector={}, driver="base", **common)
    # Base turns: under the focal persona's block when the feedback is about it (the critique of facet
    # d), else under every persona's block (a tutoring head of either style meets every student).
    sources = {"base": (samples, None if task.feedback_follows_head else list(range(len(task.personas))))}
    if args.run:
        from algorithms.router import load_run

        policy, ptok, _ = load_run(args.run, "cpu")
        for h, name in enumerate(policy.head_names):
            persona = next((j for j, p in enumerate(task.personas) if p.name == name), 0)
            sources[f"head_{name}"] = (sample_turns(task, policy, ptok, selector={"head": h}, driver=name,
                                                    persona=name, **common), [persona])
    if args.teacher_samples:  # the base model under each persona's teacher prompt, without the feedback
        for j, persona in enumerate(task.personas):
            sources[f"teacher_{persona.name}"] = (sample_turns(
                TeacherPrompts(task, persona), model, tokenizer, selector={}, driver=f"teacher-{persona.name}",
                persona=persona.name, **common), [j])
    weights = [0.0, *[w for w in args.contrast if w > 0]]
    variants = [("plain", [])] + [(v[0], v[1:]) for v in args.variant]
    rows, per_turn = [], []
    for name, overrides in variants:
        _, with_fb = compose_env(args.env, args.model, [*args.set, *overrides, "env.teacher_feedback=true"])
        _, without = compose_env(args.env, args.model, [*args.set, *overrides, "env.teacher_feedback=false"])
        scored = {}  # source -> (items, deltas)
        for source, (turns, blocks) in sources.items():
            names = [p.name for p in task.personas]
            items = [(t, task.personas[b]) for t in turns
                     for b in (blocks if blocks is not None else [names.index(t["label"])])]
            scored[source] = items, feedback_deltas(
                model, tokenizer, [with_fb.teacher_messages(t["observation"], p, t["feedback"]) for t, p in items],
                [without.teacher_messages(t["observation"], p, t["feedback"]) for t, p in items],
                [t["turn"] for t, _ in items], weights, batch_size=args.batch_size)
            per_turn += [{"variant": name, "source": source, "persona": p.name, "turn": t["turn"],
                          "feedback": t["feedback"], "reward": t["reward"], "delta": float(scored[source][1][0][i]),
                          "deltas": {f"{w:g}": float(scored[source][1][k][i]) for k, w in enumerate(weights)}}
                         for i, (t, p) in enumerate(items)]
        if len(scored) > 1:  # every source together
            scored["all"] = ([i for items, _ in scored.values() for i in items],
                             np.concatenate([d for _, d in scored.values()], axis=1))
        for source, (items, deltas) in scored.items():
            rewards = np.array([t["reward"] for t, _ in items], dtype=float)
            episodes = np.array([t["episode"] for t, _ in items])
            for rule in args.labels:
                labels = LABELS[rule](rewards)
                for k, w in enumerate(weights):
                    stat = auc_interval(deltas[k], labels, episodes, samples=args.bootstrap, seed=args.seed)
                    rows.append({"variant": name, "source": source, "labels": rule, "contrast": w, **stat,
                                 "delta_good": float(deltas[k][labels > 0].mean()) if stat["good"] else float("nan"),
                                 "delta_bad": float(deltas[k][labels < 0].mean()) if stat["bad"] else float("nan")})
                    print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.env}: AUC of the teacher's feedback shift, good vs bad turns (95% bootstrap over episodes)\n")
    print("| variant | turns from | good / bad by | contrast w | AUC | good / bad | delta good | delta bad |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['variant']} | {r['source']} | {r['labels']} | {r['contrast']:g} | "
              f"{r['auc']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"
              f" | {r['good']} / {r['bad']} | {r['delta_good']:.3f} | {r['delta_bad']:.3f} |")
    result = {"env": args.env, "model": args.model, "run": args.run, "set": args.set, "rows": rows, "turns": per_turn,
              "seconds": round(time.perf_counter() - started, 1)}
    print(f"\n{result['seconds']} s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
