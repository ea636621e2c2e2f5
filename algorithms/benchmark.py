"""Routers against fixed heads: end-to-end tutoring satisfaction when each policy drives the dialogue.

Run it with Hydra (configs/benchmark.yaml)::

    python -m algorithms.benchmark env=tutoring policy=runs/opsd/<run> router=runs/router/<run>
    python -m algorithms.benchmark env=tutoring policy=runs/opsd/<run>      # no router: router rows skipped
    python -m algorithms.benchmark ... student=chat_model judge=llm          # LLM student and judge

Every entry of ``benchmark.entries`` is a Hydra ``_target_`` that contributes one or more rows
(:class:`Contender`). The defaults compare the untrained base model, each fixed head, the equal
blend, the offline router (re-reads the prefix before every turn) and the online router (starts
from the router's weights and then follows the student's reactions with Hedge steps). Each row
drives full dialogues turn by turn on the same held-out contexts x both student types.

Reported per row: satisfaction (good-turn rate) per student type and their mean, with bootstrap
95% intervals over dialogues; for rows that mix heads, the share of turns whose largest weight is
on the student's matched head (at the first generated turn and over all turns), the mean weights
and their entropy. Written to the output folder as ``benchmark.json``, ``benchmark.md`` (the
paper's Table 5 layout), ``satisfaction.png``, ``router_weights.png`` and ``dialogues.jsonl``.

Adding a row needs no change here: write a class with ``build(ctx) -> list[Contender]`` and add
``benchmark.entries.<name>={_target_: mypkg.MyEntry, ...}`` (``+benchmark.entries...`` on the
command line); set an entry to null to drop it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from agents import Router, RouterFeatures
from agents.models import resolve_device
from algorithms.components import agent_config, build_task
from algorithms.evaluation import (
    DialogueRecord,
    Selection,
    Selector,
    good_rate,
    rollout_dialogues,
)
from algorithms.router import (
    hedge_step,
    load_router,
    load_run,
    matched_head,
    reaction_head_losses,
    route,
    weight_entropy,
)
from algorithms.runs import json_line, write_json
from algorithms.tasks import TutoringTask
from configs import check_top_level, register
from configs.validation import check_types, require, structured
from envs.students.base import STUDENT_TYPES

# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------


def _default_entries() -> dict[str, Any]:
    """The default rows, each a config node built from its class's signature (so every argument can be overridden)."""
    from hydra_zen import builds

    rows = {"base": BaseModel, "heads": FixedHeads, "blend": EqualBlend, "router": OfflineRouter,
            "online_router": OnlineRouter}
    return {name: builds(cls, populate_full_signature=True)() for name, cls in rows.items()}


@dataclass
class BenchmarkConfig:
    """Settings of a benchmark run (node ``benchmark`` of configs/benchmark.yaml; only source of these defaults).

    Attributes:
        contexts: Held-out contexts; each runs against every persona label (both student types).
        turns: Generated turns per episode.
        max_new_tokens: Length limit of a generated turn.
        temperature: Sampling temperature.
        seed: Same openings and sampling seeds for every row.
        bootstrap: Bootstrap resamples for the intervals.
        confidence: Level of the intervals.
        feature_batch_size: Prefixes per backbone forward for router features.
        entries: The rows: each a ``_target_`` with ``build(ctx) -> list[Contender]`` plus its
            constructor arguments (``benchmark.entries.online_router.lr=1.0``); keys only order the
            rows, and a null entry is dropped.
    """

    contexts: int = 16
    turns: int = 4
    max_new_tokens: int = 48
    temperature: float = 0.7
    seed: int = 1234
    bootstrap: int = 1000
    confidence: float = 0.95
    feature_batch_size: int = 8
    entries: dict[str, Any] = field(default_factory=_default_entries)

    def __post_init__(self):
        check_types(self, "benchmark")
        for key in ("contexts", "turns", "max_new_tokens", "bootstrap", "feature_batch_size"):
            require(getattr(self, key) >= 1, f"benchmark.{key}", getattr(self, key), "must be an integer >= 1")
        require(self.temperature >= 0, "benchmark.temperature", self.temperature, "must be >= 0")
        require(0 < self.confidence < 1, "benchmark.confidence", self.confidence, "must be in (0, 1)")


# ----------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------


@dataclass
class BenchmarkContext:
    """What entries build their rows from.

    Attributes:
        policy: The frozen multi-head policy of ``policy=``.
        tokenizer: Its tokenizer (left padding).
        task: The tutoring task (held-out topics, student, satisfaction judge).
        run_cfg: The OPSD run's own config (its ``agent`` node says which base model it started from).
        router_dir: The ``router=`` folder, or None.
        device: Where the models run.
        settings: The ``benchmark`` config node.
    """

    policy: Any
    tokenizer: Any
    task: TutoringTask
    run_cfg: DictConfig | None
    router_dir: str | None
    device: torch.device
    settings: BenchmarkConfig
    _features: RouterFeatures | None = None

    @property
    def features(self) -> RouterFeatures:
        """Shared prefix-feature cache of the policy's frozen backbone."""
        if self._features is None:
            self._features = RouterFeatures(self.policy, self.tokenizer,
                                            batch_size=self.settings.feature_batch_size)
        return self._features

    def router(self, path: str | None) -> Router | None:
        """Loads the router at ``path`` (default ``router_dir``); None when there is none."""
        path = path or self.router_dir
        if not path:
            return None
        router = load_router(path, device="cpu")
        if router.hparams["input_dim"] != self.policy.config.hidden_size or router.num_heads != self.policy.num_heads:
            raise ValueError(f"Router {path} expects {router.hparams['input_dim']}-d features and "
                             f"{router.num_heads} heads; the policy has {self.policy.config.hidden_size} and "
                             f"{self.policy.num_heads}. Train it on this policy.")
        return router


@dataclass
class Contender:
    """One row of the benchmark.

    Attributes:
        name: Short identifier (keys in the JSON).
        label: What the table calls it.
        selector: ``generate`` keyword arguments, or ``(observations, turn) -> kwargs``.
        model: What generates (default: the context's policy); a plain causal LM takes ``selector={}``.
        tokenizer: Its tokenizer (default: the context's).
        task: The task to roll out in (default: the context's).
        mixes: Whether it picks per-dialogue head weights (router statistics are reported).
    """

    name: str
    label: str
    selector: Selector | Selection
    model: Any = None
    tokenizer: Any = None
    task: TutoringTask | None = None
    mixes: bool = False


class BaseModel:
    """The untrained backbone the OPSD run started from (its ``agent`` config), without any head."""

    def __init__(self, label: str = "Base model", name: str = "base"):
        self.label, self.name = label, name

    def build(self, ctx: BenchmarkContext) -> list[Contender]:
        """One row: the base model, loaded from the run's ``agent`` config."""
        if ctx.run_cfg is None or "agent" not in ctx.run_cfg:
            raise ValueError("The base-model row needs the OPSD run's config.yaml (agent node) next to policy/.")
        backbone = agent_config(ctx.run_cfg).load(ctx.device)
        backbone.tokenizer.padding_side = "left"
        return [Contender(self.name, self.label, {}, model=backbone.model.eval(), tokenizer=backbone.tokenizer)]


class FixedHeads:
    """One row per head (or only ``heads``), each head driving every turn.

    Args:
        heads: Head names to include (null: all).
        label: Format string for the row label; ``{head}`` / ``{HEAD}`` is the head's name.
    """

    def __init__(self, heads: Sequence[str] | None = None, label: str = "always-{HEAD}"):
        self.heads, self.label = heads, label

    def build(self, ctx: BenchmarkContext) -> list[Contender]:
        """One row per selected head."""
        heads = list(self.heads) if self.heads else list(ctx.policy.head_names)
        return [Contender(f"head_{h}", self.label.format(head=h, HEAD=h.upper()), {"head": ctx.policy.head_index(h)})
                for h in heads]


class EqualBlend:
    """The logit-space equal blend of all heads, every turn."""

    def __init__(self, label: str = "Equal blend", name: str = "blend"):
        self.label, self.name = label, name

    def build(self, ctx: BenchmarkContext) -> list[Contender]:
        """One row: the equal blend."""
        return [Contender(self.name, self.label, {})]


class OfflineRouter:
    """The trained router: before every turn it reads the dialogue prefix and sets the head weights.

    Args:
        path: A router folder (default: the benchmark's ``router=``); skipped when neither is set.
        label: Row label.
        name: Row key.
    """

    def __init__(self, path: str | None = None, label: str = "Router", name: str = "router"):
        self.path, self.label, self.name = path, label, name

    def build(self, ctx: BenchmarkContext) -> list[Contender]:
        """One row driven by the router (none when no router is given)."""
        router = ctx.router(self.path)
        if router is None:
            print(f"[benchmark] no router given: skipping '{self.label}' (pass router=<router run folder>)")
            return []
        features = ctx.features

        def select(observations, turn):
            return {"weights": route(router, features, observations).weights.float()}

        return [Contender(self.name, self.label, select, mixes=True)]


class _OnlineSelector:
    """Router weights at the first turn, then a Hedge step after every observed reaction."""

    def __init__(self, router: Router, features: RouterFeatures, lr: float, floor: float):
        self.router, self.features = router, features
        self.lr, self.floor = lr, floor
        self.weights: torch.Tensor | None = None
        self.rewards: torch.Tensor | None = None

    def observe(self, infos, rewards) -> None:
        """Keeps the satisfaction reward of each dialogue's latest turn (+1 good, 0 neutral, -1 bad)."""
        self.rewards = torch.as_tensor(rewards, dtype=torch.float32)

    def __call__(self, observations, turn):
        if turn == 0 or self.weights is None or self.weights.shape[0] != len(observations):
            self.weights = route(self.router, self.features, observations).weights.float()  # (B, K)
        else:
            if self.rewards is None or len(self.rewards) != len(observations):
                raise RuntimeError("The online router was not shown the previous turn's rewards.")
            losses = reaction_head_losses(self.weights, self.rewards)  # (B, K)
            self.weights = hedge_step(self.weights, losses, self.lr, self.floor)
        return {"weights": self.weights.clone()}


class OnlineRouter:
    """Router weights at the first turn, then one Hedge step per turn from the student's reaction.

    After every turn the satisfaction verdict on the student's answer (+1 good, 0 neutral, -1 bad,
    the same verdict the environment rewards) updates the weights by
    ``w <- w exp(-lr loss) / Z`` with ``loss_k = -reward w_k``; nothing is trained.

    Args:
        lr: Hedge learning rate (0 keeps the first turn's weights for the whole dialogue).
        floor: Share of the uniform mixed into the weights after each step.
        path: A router folder (default: the benchmark's ``router=``); skipped when neither is set.
        label: Row label.
        name: Row key.
    """

    def __init__(self, lr: float = 2.0, floor: float = 0.02, path: str | None = None, label: str = "Online router",
                 name: str = "online_router"):
        if lr < 0 or not 0 <= floor < 1:
            raise ValueError(f"OnlineRouter needs lr >= 0 and 0 <= floor < 1, got {lr} and {floor}.")
        self.lr, self.floor, self.path, self.label, self.name = lr, floor, path, label, name

    def build(self, ctx: BenchmarkContext) -> list[Contender]:
        """One row driven by the router plus per-turn Hedge steps (none when no router is given)."""
        router = ctx.router(self.path)
        if router is None:
            print(f"[benchmark] no router given: skipping '{self.label}' (pass router=<router run folder>)")
            return []
        selector = _OnlineSelector(router, ctx.features, self.lr, self.floor)
        return [Contender(self.name, self.label, selector, mixes=True)]


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def bootstrap_satisfaction(records: Sequence[DialogueRecord], *, samples: int, confidence: float,
                           seed: int) -> dict[str, dict[str, float]]:
    """Good-turn rate per student type and their mean, with percentile bootstrap intervals.

    Dialogues are the resampled unit (drawn with replacement within each student type); the mean's
    interval comes from averaging the per-type rates of the same replicate.

    Returns:
        ``{type or "mean": {"value", "low", "high", "dialogues"}}``.
    """
    rng = np.random.default_rng(seed)
    alpha = (1.0 - confidence) / 2.0
    out, reps = {}, {}
    for t in STUDENT_TYPES:
        rows = [r.satisfaction for r in records if r.student_type == t]
        good = np.array([sum(lab == "good" for lab in s) for s in rows], dtype=float)
        total = np.array([len(s) for s in rows], dtype=float)
        value = good_rate([lab for s in rows for lab in s], exclude_neutral=False)
        if len(rows) and total.sum() > 0:
            idx = rng.integers(0, len(rows), size=(samples, len(rows)))
            reps[t] = good[idx].sum(1) / np.maximum(total[idx].sum(1), 1)
        else:
            reps[t] = np.full(samples, np.nan)
        out[t] = {"value": value, "low": float(np.nanquantile(reps[t], alpha)) if len(rows) else float("nan"),
                  "high": float(np.nanquantile(reps[t], 1 - alpha)) if len(rows) else float("nan"),
                  "dialogues": len(rows)}
    mean_reps = np.nanmean(np.stack([reps[t] for t in STUDENT_TYPES]), axis=0)
    out["mean"] = {"value": float(np.nanmean([out[t]["value"] for t in STUDENT_TYPES])),
                   "low": float(np.nanquantile(mean_reps, alpha)), "high": float(np.nanquantile(mean_reps, 1 - alpha)),
                   "dialogues": len(records)}
    return out


def router_statistics(records: Sequence[DialogueRecord], head_names: Sequence[str]) -> dict[str, Any]:
    """Statistics of the per-turn head weights recorded by a mixing row.

    Returns:
        ``accuracy_turn1`` / ``accuracy``: share of first / all generated turns whose largest weight
        is on the student's matched head; ``mean_weights`` overall and ``mean_weights_by_type``;
        ``entropy`` (nats); ``weights_by_turn[type][turn]``: mean weight vector at each turn.
    """
    rows = [(r.student_type, t, w) for r in records for t, w in enumerate(r.weights)]
    if not rows:
        return {}
    weights = torch.tensor([w for _, _, w in rows], dtype=torch.float32)  # (N, K)
    target = torch.tensor([matched_head(head_names, s) for s, _, _ in rows])
    turn = torch.tensor([t for _, t, _ in rows])
    hit = (weights.argmax(-1) == target).float()
    by_turn: dict[str, list[list[float]]] = {}
    by_type: dict[str, dict[str, float]] = {}
    for s in STUDENT_TYPES:
        mask = target == matched_head(head_names, s)
        if mask.any():
            by_type[s] = dict(zip(head_names, weights[mask].mean(0).tolist()))
        by_turn[s] = [weights[mask & (turn == t)].mean(0).tolist() for t in range(int(turn.max()) + 1)
                      if (mask & (turn == t)).any()]
    return {
        "accuracy_turn1": float(hit[turn == 0].mean()),
        "accuracy": float(hit.mean()),
        "mean_weights": dict(zip(head_names, weights.mean(0).tolist())),
        "mean_weights_by_type": by_type,
        "entropy": float(weight_entropy(weights).mean()),
        "weights_by_turn": by_turn,
    }


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------


def _cell(stat: dict[str, float], bold: bool = False) -> str:
    if stat["value"] != stat["value"]:
        return "n/a"
    value = f"**{stat['value']:.3f}**" if bold else f"{stat['value']:.3f}"
    return f"{value} [{stat['low']:.3f}, {stat['high']:.3f}]"


def markdown_table(results: dict[str, Any], confidence: float) -> str:
    """The satisfaction table (Policy | Direct stu. | Interactive stu. | Mean) and the router table."""
    rows = results["rows"]
    best = max((r["satisfaction"]["mean"]["value"] for r in rows.values()
                if r["satisfaction"]["mean"]["value"] == r["satisfaction"]["mean"]["value"]), default=None)
    types = [f"{t.capitalize()} stu." for t in STUDENT_TYPES]
    lines = [f"Satisfaction (good-turn rate) with bootstrap {confidence:.0%} intervals, "
             f"{results['contexts']} held-out contexts x {len(STUDENT_TYPES)} student types, "
             f"{results['turns']} generated turns each.", "",
             "| Policy | " + " | ".join(types) + " | Mean |", "| --- |" + " --- |" * (len(types) + 1)]
    for row in rows.values():
        sat = row["satisfaction"]
        cells = [_cell(sat[t]) for t in STUDENT_TYPES] + [_cell(sat["mean"], bold=sat["mean"]["value"] == best)]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    mixing = {k: r for k, r in rows.items() if r.get("router")}
    if mixing:
        heads = results["head_names"]
        lines += ["", "Head weights of the mixing rows (accuracy: largest weight on the student's matched head):", "",
                  "| Policy | Acc. turn 1 | Acc. all turns | " + " | ".join(f"mean w({h})" for h in heads)
                  + " | Entropy |", "| --- |" + " --- |" * (len(heads) + 3)]
        for row in mixing.values():
            st = row["router"]
            lines.append(f"| {row['label']} | {st['accuracy_turn1']:.3f} | {st['accuracy']:.3f} | "
                         + " | ".join(f"{st['mean_weights'][h]:.3f}" for h in heads) + f" | {st['entropy']:.3f} |")
    return "\n".join(lines) + "\n"


def plot_satisfaction(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: satisfaction per student type and mean for every row, with the intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(results["rows"].values())
    groups = list(STUDENT_TYPES) + ["mean"]
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(groups) + 0.3 * len(rows), 4))
    x = np.arange(len(groups))
    for i, row in enumerate(rows):
        vals = np.array([row["satisfaction"][g]["value"] for g in groups], dtype=float)
        low = np.array([row["satisfaction"][g]["low"] for g in groups], dtype=float)
        high = np.array([row["satisfaction"][g]["high"] for g in groups], dtype=float)
        err = np.nan_to_num(np.stack([vals - low, high - vals]).clip(min=0))
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, np.nan_to_num(vals), width, yerr=err, capsize=3,
               label=row["label"])
    ax.set_xticks(x, [f"{g} student" if g != "mean" else "mean" for g in groups])
    ax.set_ylim(0, 1)
    ax.set_ylabel("good-turn rate")
    ax.set_title("Student satisfaction by policy")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_router_weights(results: dict[str, Any], path: Path) -> None:
    """Mean weight on each head at each generated turn, per student type, one panel per mixing row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixing = [r for r in results["rows"].values() if r.get("router")]
    heads = results["head_names"]
    fig, axes = plt.subplots(1, max(len(mixing), 1), figsize=(5 * max(len(mixing), 1), 3.6), squeeze=False)
    if not mixing:
        axes[0, 0].text(0.5, 0.5, "no router rows in this benchmark", ha="center", va="center")
        axes[0, 0].set_axis_off()
    for ax, row in zip(axes[0], mixing):
        for s, style in zip(STUDENT_TYPES, ("-", "--")):
            curve = np.array(row["router"]["weights_by_turn"].get(s, []), dtype=float)  # (T, K)
            if curve.size == 0:
                continue
            for k, h in enumerate(heads):
                ax.plot(np.arange(1, len(curve) + 1), curve[:, k], style, color=f"C{k}", marker="o",
                        label=f"w({h}), {s} student")
        ax.set_ylim(0, 1)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("generated turn")
        ax.set_ylabel("mean head weight")
        ax.set_title(row["label"])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------------------


def build_contenders(cfg: DictConfig, ctx: BenchmarkContext) -> list[Contender]:
    """Instantiates every non-null ``benchmark.entries`` item and collects their rows (in order)."""
    contenders: list[Contender] = []
    for key, node in (cfg.benchmark.get("entries") or {}).items():
        if node is None:
            continue
        entry = instantiate(node)
        if not hasattr(entry, "build"):
            raise TypeError(f"benchmark.entries.{key} ({type(entry).__name__}) has no build(ctx) method.")
        contenders += entry.build(ctx)
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise ValueError(f"Two benchmark rows share a name: {names}; give the entries distinct name=.")
    if not contenders:
        raise ValueError("benchmark.entries produced no rows.")
    return contenders


def run_benchmark(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """Runs every row on the same held-out dialogues and writes the reports into ``out_dir``.

    Returns:
        The results written to ``benchmark.json`` (without the dialogues).
    """
    if OmegaConf.is_missing(cfg, "policy") or not cfg.get("policy"):
        raise ValueError("Set policy=<OPSD run folder> (the folder holding policy/ and config.yaml).")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    b = structured(BenchmarkConfig, cfg.benchmark, "benchmark")
    device = resolve_device(cfg.device)
    policy, tokenizer, run_cfg = load_run(cfg.policy, device)
    ctx = BenchmarkContext(policy, tokenizer, build_task(cfg), run_cfg, cfg.get("router"), device, b)
    contenders = build_contenders(cfg, ctx)
    results: dict[str, Any] = {"policy": str(cfg.policy), "router": cfg.get("router"), "contexts": b.contexts,
                               "turns": b.turns, "head_names": list(policy.head_names), "rows": {}}
    dialogues = (out_dir / "dialogues.jsonl").open("w")
    try:
        for c in contenders:
            print(f"[benchmark] {c.label}: {b.contexts} contexts x {len(STUDENT_TYPES)} student types, {b.turns} turns")
            records = rollout_dialogues(c.model or policy, c.tokenizer or tokenizer, c.task or ctx.task, c.selector,
                                        driver=c.name, contexts=b.contexts, turns=b.turns,
                                        max_new_tokens=b.max_new_tokens, temperature=b.temperature, seed=b.seed)
            row = {"label": c.label,
                   "satisfaction": bootstrap_satisfaction(records, samples=b.bootstrap, confidence=b.confidence,
                                                          seed=b.seed)}
            if c.mixes:
                row["router"] = router_statistics(records, policy.head_names)
            results["rows"][c.name] = row
            dialogues.writelines(json_line(asdict(r)) for r in records)
    finally:
        dialogues.close()
    markdown = markdown_table(results, b.confidence)
    (out_dir / "benchmark.md").write_text(markdown)
    write_json(out_dir / "benchmark.json", results)
    plot_satisfaction(results, out_dir / "satisfaction.png")
    plot_router_weights(results, out_dir / "router_weights.png")
    results["markdown"] = markdown
    return results


@hydra.main(version_base="1.3", config_path="../configs", config_name="benchmark")
def _main(cfg: DictConfig) -> None:
    check_top_level(cfg, ("seed", "device", "env", "policy", "router", "benchmark"))
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    results = run_benchmark(cfg, out_dir)
    print()
    print(results["markdown"])
    print(f"[benchmark] reports in {out_dir}")


def main() -> None:
    """Entry point: registers the structured configs, then lets Hydra compose and run."""
    register()
    _main()


if __name__ == "__main__":
    main()
