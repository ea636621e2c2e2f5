"""Routers against fixed heads and baselines: every policy drives the same held-out episodes.

Run it with Hydra (configs/benchmark.yaml)::

    python -m algorithms.benchmark env=tutoring policy=runs/opsd/<run> router=runs/router/<run>
    python -m algorithms.benchmark env=tutoring policy=runs/opsd/<run>      # no router: router rows skipped
    python -m algorithms.benchmark ... student=chat_model judge=llm          # LLM student and judge

Every entry of ``benchmark.entries`` is a Hydra ``_target_`` that contributes one or more rows
(:class:`Contender`). The defaults compare the untrained base model, each fixed head, the equal
blend, Persona-judge (seed 004: the heads take turns drafting and judging blocks of tokens,
training-free), the offline router (re-reads the prefix before every turn) and the online router
(starts from the router's weights and then follows the feedback with Hedge steps: the project's
own test-time extension, not part of any paper's protocol). Each row plays the same held-out episodes
(the task's ``eval`` split, every context against every persona label) turn by turn.

Reported: the task's own report of every row (for tutoring, satisfaction per student type and
their mean with bootstrap intervals over dialogues, the style matrix and questions per turn), and
for rows that mix heads, the share of turns whose largest weight is on the matched head
(``label["persona"]``; at the first turn and over all turns), the mean weights and their entropy.
Written to the output folder as ``benchmark.json``, ``benchmark.md``, ``benchmark.png``,
``router_weights.png`` and ``episodes.jsonl``.

Adding a row needs no change here: write a class with ``build(ctx) -> list[Contender]`` and add
``benchmark.entries.<name>={_target_: mypkg.MyEntry, ...}`` (``+benchmark.entries...`` on the
command line); set an entry to null to drop it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from agents import DraftJudge, Router, RouterFeatures
from agents.models import resolve_device
from agents.router import DEFAULT_POOLING
from algorithms.cli import resumable_config
from algorithms.components import agent_config, build_task
from algorithms.episodes import Selection, Selector, play_episodes
from algorithms.journal import Journal
from algorithms.losses import hedge_step, reaction_head_losses, weight_entropy
from algorithms.ray_pool import Job, run_jobs
from algorithms.router import load_router, load_run
from algorithms.router_data import matched_head, route
from algorithms.runs import claim_run_dir, json_line, write_config, write_json
from algorithms.win_rates import win_rate_markdown, win_rates
from configs import check_top_level, register, store_settings
from configs.validation import check_types, require, structured
from envs.chat import check_servers
from envs.tasks.base import EpisodeRecord, Task
from envs.tasks.reporting import markdown_table, pyplot, save_figure

# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------


def _default_entries() -> dict[str, Any]:
    """The default rows, each a config node built from its class's signature (so every argument can be overridden)."""
    from hydra_zen import builds

    rows = {"base": BaseModel, "heads": FixedHeads, "blend": EqualBlend, "persona_judge": PersonaJudge,
            "router": OfflineRouter, "online_router": OnlineRouter}
    return {name: builds(cls, populate_full_signature=True)() for name, cls in rows.items()}


@dataclass
class BenchmarkConfig:
    """Settings of a benchmark run (node ``benchmark`` of configs/benchmark.yaml; only source of these defaults).

    Attributes:
        split: The held-out split played: ``eval`` (tuning, the default) or ``test`` (headline numbers).
        contexts: Held-out contexts (null: every one of the split); each runs against every persona
            label (both student types). More than the split holds is refused.
        unit_episodes: Episodes a row plays per unit of work, each kept in the run folder's journal
            as it finishes, so ``resume=<benchmark run>`` after a kill replays at most one unit (a
            row that reports statistics, e.g. Persona-judge, is one unit). Episode ``i`` opens the
            same way in every row and whatever the unit size.
        turns: Generated turns per episode.
        max_new_tokens: Length limit of a generated turn.
        temperature: Sampling temperature.
        seed: Same openings and sampling seeds for every row.
        bootstrap: Bootstrap resamples for the intervals.
        confidence: Level of the intervals.
        feature_batch_size: Prefixes per backbone forward for router features.
        reuse_kv: Keep each dialogue's keys and values from one turn to the next, so a turn's
            prefill runs only over what is new (``play_episodes(reuse_kv=True)``; rows decoded by a
            ``decoder`` are prefilled whole). Same distribution; a near-tie may sample another token
            than with false. The tutoring benchmark took 8:21 instead of 11:31, every episode the same.
        win_rates: Compare the first turn of every other row (routers, Persona-judge, rerankers)
            with the equal blend's and each fixed head's through the ``pairwise_judge`` plug-in
            (:mod:`algorithms.win_rates`; 000 Table 3).
        protocol: ``project`` (the defaults here) or ``paper`` (000 Section 4.2.2: up to 6 teacher
            turns per dialogue; ``benchmark_settings@benchmark=paper`` sets it with 6 turns). The
            tutoring report counts rates the paper's way under both: style rates without neutral
            turns (Table 4), satisfaction with them (Table 5). The report says which protocol ran.
        entries: The rows: each a ``_target_`` with ``build(ctx) -> list[Contender]`` plus its
            constructor arguments (``benchmark.entries.online_router.lr=1.0``); keys only order the
            rows, and a null entry is dropped.
    """

    split: str = "eval"
    contexts: int | None = None
    unit_episodes: int = 16
    turns: int = 4
    max_new_tokens: int = 48
    temperature: float = 0.7
    seed: int = 1234
    bootstrap: int = 1000
    confidence: float = 0.95
    feature_batch_size: int = 8
    reuse_kv: bool = True
    win_rates: bool = True
    protocol: str = "project"
    entries: dict[str, Any] = field(default_factory=_default_entries)

    def __post_init__(self):
        check_types(self, "benchmark")
        require(self.split in ("eval", "test"), "benchmark.split", self.split, "must be eval or test")
        require(self.contexts is None or self.contexts >= 1, "benchmark.contexts", self.contexts,
                "must be null (the whole split) or an integer >= 1")
        for key in ("unit_episodes", "turns", "max_new_tokens", "bootstrap", "feature_batch_size"):
            require(getattr(self, key) >= 1, f"benchmark.{key}", getattr(self, key), "must be an integer >= 1")
        require(self.temperature >= 0, "benchmark.temperature", self.temperature, "must be >= 0")
        require(0 < self.confidence < 1, "benchmark.confidence", self.confidence, "must be in (0, 1)")
        require(self.protocol in PROTOCOLS, "benchmark.protocol", self.protocol, f"must be one of {list(PROTOCOLS)}")
        if self.protocol == "paper":
            require(self.turns <= 6, "benchmark.turns", self.turns, "must be at most 6 under the paper's protocol")

    def describe(self, episodes: int, turns: int) -> str:
        """One line for the report: the protocol, the episodes and the turns actually played (``turns``)."""
        capped = f" (the env's limit; benchmark.turns={self.turns})" if turns < self.turns else ""
        return (f"Protocol: {self.protocol} ({PROTOCOLS[self.protocol]}). {episodes} held-out episodes per row "
                f"of the {self.split} split (benchmark.contexts={self.contexts}, every persona label), {turns} "
                f"generated turn{'s' if turns != 1 else ''} each{capped}.")


PROTOCOLS = {
    "project": "this project's default size for a 2-core CPU",
    "paper": "000 Section 4.2.2: up to 6 teacher turns per dialogue, re-routed before every turn",
}


# ----------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------


@dataclass
class BenchmarkContext:
    """What entries build their rows from.

    Attributes:
        policy: The frozen multi-head policy of ``policy=``.
        tokenizer: Its tokenizer (left padding).
        task: The task (held-out episodes and their report).
        run_cfg: The OPSD run's own config (its ``agent`` node says which base model it started from).
        router_dir: The ``router=`` folder, or None.
        device: Where the models run.
        settings: The ``benchmark`` config node.
    """

    policy: Any
    tokenizer: Any
    task: Task
    run_cfg: DictConfig | None
    router_dir: str | None
    device: torch.device
    settings: BenchmarkConfig
    _features: dict[str, RouterFeatures] = field(default_factory=dict)

    def features(self, router: Router) -> RouterFeatures:
        """The policy backbone's prefix features in the pooling ``router`` was trained on (shared cache)."""
        pooling = router.hparams.get("pooling", DEFAULT_POOLING)  # routers saved before poolings existed
        if pooling not in self._features:
            self._features[pooling] = RouterFeatures(self.policy, self.tokenizer, pooling=pooling,
                                                     batch_size=self.settings.feature_batch_size)
        return self._features[pooling]

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
        mixes: Whether it picks per-episode head weights (router statistics are reported).
        statistics: Called once the row has played; its figures go to ``benchmark.json`` and
            ``benchmark.md`` (e.g. tokens accepted per draft/judge block).
        base: Whether it is the untrained base model (the task's report measures the heads against it).
        oracle: Whether it reads the env's reward during the episode (the report says it is no
            deployable policy).
    """

    name: str
    label: str
    selector: Selector | Selection
    model: Any = None
    tokenizer: Any = None
    mixes: bool = False
    statistics: Callable[[], dict[str, Any]] | None = None
    base: bool = False
    oracle: bool = False


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
        return [Contender(self.name, self.label, {}, model=backbone.model.eval(), tokenizer=backbone.tokenizer,
                          base=True)]


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


class PersonaJudge:
    """Persona-judge decoding (seed 004): heads take turns drafting and judging blocks of tokens.

    Training-free: both distributions come from one backbone pass
    (:class:`agents.draft_judge.DraftJudge`). With ``exact=True`` every token follows its block's
    judge head, so the row is a block-wise alternation of the heads; ``exact=False`` is the paper's
    greedy top-k variant. The row reports the draft tokens accepted per block.

    Args:
        heads: Heads that take turns (null: all, in order).
        block: Draft tokens per block (the paper's lambda).
        exact: Speculative sampling (True) or greedy top-k (False).
        topk: Candidates of the greedy variant.
        swap: Roles move on after every block (False: "Persona-judge-Base").
        label: Row label.
        name: Row key.
    """

    def __init__(self, heads: Sequence[str] | None = None, block: int = 4, exact: bool = True, topk: int = 20,
                 swap: bool = True, label: str = "Persona-judge", name: str = "persona_judge"):
        self.decoder = DraftJudge(heads or (), block=block, exact=exact, topk=topk, swap=swap)
        self.label, self.name = label, name

    def build(self, ctx: BenchmarkContext) -> list[Contender]:
        """One row decoded with draft/judge blocks between the policy's heads."""
        self.decoder.head_order(ctx.policy)  # fail now, not after the other rows, on a bad head name
        return [Contender(self.name, self.label, {"decoder": self.decoder}, statistics=self.statistics)]

    def statistics(self) -> dict[str, Any]:
        """Which variant the row ran and the decoder's block counts."""
        st = self.decoder.stats
        return {"variant": "exact sampling" if self.decoder.exact else f"greedy top-{self.decoder.topk}",
                "block": self.decoder.block, "blocks": st.blocks, "accepted drafts per block": st.accepted_per_block,
                "tokens per block": st.tokens_per_block}


class OfflineRouter:
    """The trained router: before every turn it reads the episode prefix and sets the head weights.

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
        features, task = ctx.features(router), ctx.task

        def select(observations, turn):
            return {"weights": route(router, features, task, observations).weights.float()}

        return [Contender(self.name, self.label, select, mixes=True)]


class _OnlineSelector:
    """Router weights at the first turn, then a Hedge step after every observed reaction."""

    def __init__(self, router: Router, features: RouterFeatures, task: Task, lr: float, floor: float):
        self.router, self.features, self.task = router, features, task
        self.lr, self.floor = lr, floor
        self.weights: torch.Tensor | None = None
        self.rewards: torch.Tensor | None = None

    def observe(self, infos, rewards) -> None:
        """Keeps the satisfaction reward of each dialogue's latest turn (+1 good, 0 neutral, -1 bad)."""
        self.rewards = torch.as_tensor(rewards, dtype=torch.float32)

    def __call__(self, observations, turn):
        if turn == 0 or self.weights is None or self.weights.shape[0] != len(observations):
            self.weights = route(self.router, self.features, self.task, observations).weights.float()  # (B, K)
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
    ``w <- w exp(-lr loss) / Z`` with ``loss_k = -reward w_k``; nothing is trained. It therefore
    reads, during the dialogue, the very figure the benchmark scores it on: an oracle reference,
    not a deployable router (its row is marked so in every report).

    Args:
        lr: Hedge learning rate (0 keeps the first turn's weights for the whole dialogue).
        floor: Share of the uniform mixed into the weights after each step.
        path: A router folder (default: the benchmark's ``router=``); skipped when neither is set.
        label: Row label.
        name: Row key.
    """

    def __init__(self, lr: float = 2.0, floor: float = 0.02, path: str | None = None,
                 label: str = "Online router (oracle: reads the reward)", name: str = "online_router"):
        if lr < 0 or not 0 <= floor < 1:
            raise ValueError(f"OnlineRouter needs lr >= 0 and 0 <= floor < 1, got {lr} and {floor}.")
        self.lr, self.floor, self.path, self.label, self.name = lr, floor, path, label, name

    def build(self, ctx: BenchmarkContext) -> list[Contender]:
        """One row driven by the router plus per-turn Hedge steps (none without a router or a second turn)."""
        if ctx.task.max_turns < 2:
            print(f"[benchmark] single-turn env: skipping '{self.label}' (its Hedge steps act from the second turn)")
            return []
        router = ctx.router(self.path)
        if router is None:
            print(f"[benchmark] no router given: skipping '{self.label}' (pass router=<router run folder>)")
            return []
        selector = _OnlineSelector(router, ctx.features(router), ctx.task, self.lr, self.floor)
        return [Contender(self.name, self.label, selector, mixes=True, oracle=True)]


# ----------------------------------------------------------------------------------------------
# Router statistics and reports
# ----------------------------------------------------------------------------------------------


def router_statistics(records: Sequence[EpisodeRecord], head_names: Sequence[str]) -> dict[str, Any]:
    """Statistics of the per-turn head weights recorded by a mixing row.

    Returns:
        ``accuracy_turn1`` / ``accuracy``: share of first / all generated turns whose largest weight
        is on the head named after ``label["persona"]``; ``mean_weights`` overall and
        ``mean_weights_by_persona``; ``entropy`` (nats); ``weights_by_turn[persona][turn]``: the mean
        weight vector at each turn.
    """
    rows = [(r.label["persona"], t, w) for r in records for t, w in enumerate(r.weights)]
    if not rows:
        return {}
    weights = torch.tensor([w for _, _, w in rows], dtype=torch.float32)  # (N, K)
    target = torch.tensor([matched_head(head_names, p) for p, _, _ in rows])
    turn = torch.tensor([t for _, t, _ in rows])
    hit = (weights.argmax(-1) == target).float()
    by_turn: dict[str, list[list[float]]] = {}
    by_persona: dict[str, dict[str, float]] = {}
    for persona in dict.fromkeys(p for p, _, _ in rows):
        mask = target == matched_head(head_names, persona)
        by_persona[persona] = dict(zip(head_names, weights[mask].mean(0).tolist()))
        by_turn[persona] = [weights[mask & (turn == t)].mean(0).tolist() for t in range(int(turn.max()) + 1)
                            if (mask & (turn == t)).any()]
    return {
        "accuracy_turn1": float(hit[turn == 0].mean()),
        "accuracy": float(hit.mean()),
        "mean_weights": dict(zip(head_names, weights.mean(0).tolist())),
        "mean_weights_by_persona": by_persona,
        "entropy": float(weight_entropy(weights).mean()),
        "weights_by_turn": by_turn,
    }


def router_markdown(routers: dict[str, dict[str, Any]], head_names: Sequence[str]) -> str:
    """The table of the mixing rows' head weights (empty when there is no mixing row)."""
    if not routers:
        return ""
    lines = ["", "Head weights of the mixing rows (accuracy: largest weight on the episode's matched head):", ""]
    lines += markdown_table(
        ["Policy", "Acc. turn 1", "Acc. all turns"] + [f"mean w({h})" for h in head_names] + ["Entropy"],
        [[label, f"{st['accuracy_turn1']:.3f}", f"{st['accuracy']:.3f}"]
         + [f"{st['mean_weights'][h]:.3f}" for h in head_names] + [f"{st['entropy']:.3f}"]
         for label, st in routers.items()])
    return "\n".join(lines) + "\n"


def statistics_markdown(statistics: dict[str, dict[str, Any]]) -> str:
    """One line per row that reported its own figures (e.g. Persona-judge's accepted drafts per block)."""
    if not statistics:
        return ""

    def show(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["", "Figures the rows report about themselves:", ""]
    lines += [f"- **{label}**: " + ", ".join(f"{k} {show(v)}" for k, v in st.items())
              for label, st in statistics.items()]
    return "\n".join(lines) + "\n"


def plot_router_weights(routers: dict[str, dict[str, Any]], head_names: Sequence[str], path: Path) -> None:
    """Mean weight on each head at each generated turn, per persona label, one panel per mixing row."""
    plt = pyplot()
    fig, axes = plt.subplots(1, max(len(routers), 1), figsize=(5 * max(len(routers), 1), 3.6), squeeze=False)
    if not routers:
        axes[0, 0].text(0.5, 0.5, "no router rows in this benchmark", ha="center", va="center")
        axes[0, 0].set_axis_off()
    styles = ("-", "--", ":", "-.")
    for ax, (label, stats) in zip(axes[0], routers.items()):
        for j, (persona, curve) in enumerate(stats["weights_by_turn"].items()):
            curve = np.array(curve, dtype=float)  # (T, K)
            for k, h in enumerate(head_names):
                ax.plot(np.arange(1, len(curve) + 1), curve[:, k], styles[j % len(styles)], color=f"C{k}",
                        marker="o", label=f"w({h}), {persona}")
        ax.set_ylim(0, 1)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("generated turn")
        ax.set_ylabel("mean head weight")
        ax.set_title(label)
        ax.legend(fontsize=7)
    save_figure(fig, path)


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
    for kind, values in (("name", [c.name for c in contenders]), ("label", [c.label for c in contenders])):
        if len(set(values)) != len(values):
            raise ValueError(f"Two benchmark rows share a {kind}: {values}; give the entries distinct {kind}=.")
    if not contenders:
        raise ValueError("benchmark.entries produced no rows.")
    return contenders


def _win_rates(judge: Any, b: BenchmarkConfig, task: Task, rows: dict[str, list[EpisodeRecord]],
               contenders: Sequence[Contender], head_labels: Sequence[str]) -> tuple[dict[str, Any] | None, str]:
    """First-turn win rates of the other rows against the blend and each head (None when off or nothing to compare)."""
    opponents = [c.label for c in contenders if c.label in head_labels or c.name == "blend"]
    challengers = [c.label for c in contenders if c.label not in opponents and c.name != "base"]
    if not (b.win_rates and opponents and challengers):
        return None, ""
    if judge is None:
        raise ValueError("benchmark.win_rates needs a pairwise judge (pairwise_judge=heuristic|llm), or set "
                         "benchmark.win_rates=false.")
    wins = win_rates(task, judge, rows, challengers, opponents, bootstrap=b.bootstrap, confidence=b.confidence,
                     seed=b.seed)
    return wins, win_rate_markdown(wins, type(judge).__name__, b.confidence)


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """What decides a benchmark run's results: a journal written with other values belongs to another run."""
    keys = ("seed", "env", "policy", "router", "benchmark", "pairwise_judge")
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg.get(k), DictConfig) else cfg.get(k)
            for k in keys}


@dataclass
class RowWorker:
    """What playing the benchmark's rows needs: the frozen policy, the task, the episodes and every row by name."""

    policy: Any
    tokenizer: Any
    task: Task
    options: list[dict[str, Any]]
    settings: BenchmarkConfig
    contenders: dict[str, Contender]


def row_jobs(c: Contender, episodes: int, b: BenchmarkConfig) -> list[Job]:
    """Row ``c``'s episodes in units of ``b.unit_episodes`` (a row with statistics is one unit: its state spans it)."""
    size = episodes if c.statistics is not None else b.unit_episodes
    return [Job(f"row/{c.name}/{start}", row_unit, dict(name=c.name, start=start, stop=min(start + size, episodes)))
            for start in range(0, episodes, size)]


def row_unit(worker: RowWorker, *, name: str, start: int, stop: int) -> dict[str, Any]:
    """Episodes ``start`` to ``stop`` of row ``name``, as journal data (records and the row's statistics)."""
    c, b, task = worker.contenders[name], worker.settings, worker.task
    played = play_episodes(c.model or worker.policy, c.tokenizer or worker.tokenizer, task, c.selector,
                           worker.options[start:stop], driver=c.name, turns=min(b.turns, task.max_turns),
                           max_new_tokens=b.max_new_tokens, temperature=b.temperature, seed=b.seed + start,
                           split=b.split, reuse_kv=b.reuse_kv)
    return {"records": [r.to_json() for r in played],
            "statistics": c.statistics() if c.statistics is not None else None}


def row_worker(cfg: dict[str, Any]) -> RowWorker:
    """What a Ray worker of the benchmark holds: everything :func:`run_benchmark` builds, from the same config."""
    cfg = OmegaConf.create(cfg)
    b = structured(BenchmarkConfig, cfg.benchmark, "benchmark")
    device = resolve_device(cfg.device)
    policy, tokenizer, run_cfg = load_run(cfg.policy, device, current=cfg)
    return build_rows(cfg, b, device, policy, tokenizer, build_task(with_run_agent(cfg, run_cfg)), run_cfg)


def build_rows(cfg: DictConfig, b: BenchmarkConfig, device: torch.device, policy: Any, tokenizer: Any, task: Task,
               run_cfg: DictConfig | None) -> RowWorker:
    """Every row of ``benchmark.entries`` (:func:`build_contenders`) with the episodes they play."""
    contenders = build_contenders(cfg, BenchmarkContext(policy, tokenizer, task, run_cfg, cfg.get("router"), device, b))
    return RowWorker(policy, tokenizer, task, task.eval_options(b.contexts, split=b.split), b,
                     {c.name: c for c in contenders})


def with_run_agent(cfg: DictConfig, run_cfg: DictConfig | None) -> DictConfig:
    """``cfg`` plus the OPSD run's ``agent`` node, unless it has its own.

    Env settings that name "the run's base model" (``${oc.select:agent.model,...}``, e.g. the persona
    attribution check) then resolve to the model the run started from, not the embedded default.
    """
    if run_cfg is None or "agent" not in run_cfg or "agent" in cfg:
        return cfg
    merged = cfg.copy()
    with open_dict(merged):
        merged.agent = run_cfg.agent
    return merged


def run_benchmark(cfg: DictConfig, out_dir: str | Path, *, resume: bool = False,
                  on_record: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Runs every row on the same held-out episodes and writes the reports into ``out_dir``.

    Each row's episodes are played in units of ``benchmark.unit_episodes`` kept in the folder's
    journal as they finish (:class:`algorithms.journal.Journal`), so a killed run continues with
    ``resume=True`` and ends with the same reports.

    Args:
        cfg: The composed config (configs/benchmark.yaml).
        out_dir: The benchmark run folder.
        resume: Continue the run already in ``out_dir`` (False: the folder must hold no run).
        on_record: Called after each unit is kept (tests stop a run there).

    Returns:
        The results written to ``benchmark.json`` (without the episodes), plus ``markdown``.
    """
    if OmegaConf.is_missing(cfg, "policy") or not cfg.get("policy"):
        raise ValueError("Set policy=<OPSD run folder> (the folder holding policy/ and config.yaml).")
    b = structured(BenchmarkConfig, cfg.benchmark, "benchmark")
    out_dir = Path(out_dir)
    if not resume:
        claim_run_dir(out_dir, overwrite=bool(cfg.get("overwrite")), resume_hint=f"resume={out_dir}")
    device = resolve_device(cfg.device)
    policy, tokenizer, run_cfg = load_run(cfg.policy, device, current=cfg)
    task = build_task(with_run_agent(cfg, run_cfg))
    judge = instantiate(cfg.pairwise_judge) if b.win_rates and cfg.get("pairwise_judge") is not None else None
    check_servers(*task.chat_plugins(), judge)  # a server that is down: one message, before any episode
    journal = Journal(out_dir, run_identity(cfg), on_record=on_record)
    write_config(cfg, out_dir / "config.yaml")
    worker = build_rows(cfg, b, device, policy, tokenizer, task, run_cfg)
    contenders, options = list(worker.contenders.values()), worker.options
    rows: dict[str, list[EpisodeRecord]] = {}
    routers: dict[str, dict[str, Any]] = {}
    row_stats: dict[str, dict[str, Any]] = {}
    turns = min(b.turns, task.max_turns)
    print(f"[benchmark] {len(contenders)} rows of {len(options)} episodes, {turns} turns: "
          + ", ".join(c.label for c in contenders))
    jobs = {c.name: row_jobs(c, len(options), b) for c in contenders}
    # with ray.enabled every row's units run at once on Ray workers that each build the rows (row_worker)
    units = iter(run_jobs([j for c in contenders for j in jobs[c.name]], journal, state=worker, cfg=cfg,
                          build=row_worker))
    for c in contenders:
        played = [next(units) for _ in jobs[c.name]]
        records = [EpisodeRecord.from_json(r) for unit in played for r in unit["records"]]
        stats = played[-1]["statistics"]
        rows[c.label] = records
        if c.mixes:
            routers[c.label] = router_statistics(records, policy.head_names)
        if stats is not None:
            row_stats[c.label] = stats
    with (out_dir / "episodes.jsonl").open("w") as episodes:  # written whole at the end: never a row twice
        for records in rows.values():
            episodes.writelines(json_line(r.to_json()) for r in records)
    head_labels = [c.label for c in contenders if isinstance(c.selector, dict) and "head" in c.selector]
    base = next((c.label for c in contenders if c.base), None)
    report = task.evaluate(rows, heads=head_labels, base=base, bootstrap=b.bootstrap, confidence=b.confidence,
                           seed=b.seed)
    wins, wins_md = _win_rates(judge, b, task, rows, contenders, head_labels)
    oracles = [c.label for c in contenders if c.oracle]
    results = {"policy": str(cfg.policy), "router": cfg.get("router"), "protocol": b.protocol,
               "split": b.split, "contexts": b.contexts, "turns": b.turns,
               "episodes_per_row": len(options), "head_names": list(policy.head_names),
               "rows": {c.label: c.name for c in contenders}, "oracle_rows": oracles, "report": report.metrics,
               "routers": routers,
               "row_statistics": row_stats, "win_rates": wins}
    oracle_note = (f"Oracle rows ({', '.join(oracles)}) read the env's reward (the student's satisfaction) during "
                   "the dialogue, the figure they are scored on: a reference, not a deployable router.\n\n"
                   if oracles else "")
    markdown = (b.describe(len(options), turns) + "\n\n" + oracle_note + report.markdown
                + router_markdown(routers, policy.head_names) + statistics_markdown(row_stats) + wins_md)
    (out_dir / "benchmark.md").write_text(markdown)
    write_json(out_dir / "benchmark.json", results)
    if report.plot is not None:
        report.plot(out_dir / "benchmark.png")
    plot_router_weights(routers, policy.head_names, out_dir / "router_weights.png")
    results["markdown"] = markdown
    return results


# the top-level keys this entry point reads (any other is refused by name)
TOP_LEVEL_KEYS = ("seed", "device", "env", "policy", "router", "benchmark", "pairwise_judge", "ray", "resume",
                  "overwrite")


store_settings("benchmark_settings", "default", BenchmarkConfig)


@hydra.main(version_base="1.3", config_path="../configs", config_name="benchmark")
def _main(cfg: DictConfig) -> None:
    check_top_level(cfg, TOP_LEVEL_KEYS)
    cfg, out_dir, resume = resumable_config(cfg)
    results = run_benchmark(cfg, out_dir, resume=resume)
    print()
    print(results["markdown"])
    print(f"[benchmark] reports in {out_dir}")


def main() -> None:
    """Entry point: registers the structured configs, then lets Hydra compose and run."""
    register()
    _main()


if __name__ == "__main__":
    main()
