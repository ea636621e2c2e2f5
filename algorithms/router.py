"""Router learning over a frozen multi-head policy: which head should write the next turn?

Run it with Hydra (configs/router.yaml)::

    python -m algorithms.router env=tutoring policy=runs/opsd/<run>                      # matched-head targets
    python -m algorithms.router env=tutoring policy=runs/opsd/<run> router.method=pairwise
    python -m algorithms.router env=tutoring policy=runs/opsd/<run> router.method=pairwise pairwise_judge=llm
    python -m algorithms.router env=tutoring policy=runs/opsd/<run> router.method=hedge

The backbone and the heads stay frozen; only a small :class:`agents.Router` MLP is trained. Its
input is the backbone's last-token hidden state of the episode prefix (what the policy would see
before writing its next turn). For the played prefixes it is kept from the rollout's own prefill;
the openings (and other poolings) get it from :class:`agents.RouterFeatures`. The
hidden ``label["persona"]`` (the student type in tutoring) is used for supervision only, never as an
input. Everything goes through the task contract (:mod:`algorithms.router_data`).

1. Data. Episodes of the task's ``router_train`` split are played turn by turn, each driven by one
   fixed head: half by the head matching the episode's persona label, half by another one, so the
   prefixes show both engaged and disengaged feedback. Every prefix before a generated turn is one
   example. Validation episodes come from the ``router_val`` split. ``data.openings`` more episodes
   are only reset, and their opening observation is one more example each: the first turn gets
   plenty of data without generating anything.
2. Candidates (``pairwise`` and ``hedge``). From every prefix each head and the equal blend write a
   candidate turn; each is sent to the episode restored at that prefix, whose feedback and reward
   score it, and a pairwise judge compares each head's candidate with the blend's.
3. Targets, one method per run (``router.method``):

   - ``matched``: cross-entropy to the head named after the persona label (known in simulation);
   - ``pairwise``: REBEL-style signed preferences ``delta_d`` of head d over the equal blend,
     loss ``-w . delta - lambda H(w)``;
   - ``hedge``: MiCRo-style soft targets, the router's own weights reweighted multiplicatively by
     ``exp(-loss_d / tau)``, then cross-entropy to them (the losses are in :mod:`algorithms.losses`);
   - ``micro``: MiCRo's Stage-2 protocol (seed 003, Alg. 1): the prior is the router's weights
     recomputed once at the start of every epoch and held fixed within it, the targets are its Hedge
     update (003 Eq. 6), and only ``router.budget`` labelled prefixes per persona label are used.
     ``router_settings@router=micro`` sets the paper's router and schedule (one hidden layer of 128,
     10 epochs, batch 32, budget 50, log-loss per head); start it from a trained router with
     ``router.init_from=``, as MiCRo starts from its Stage-1 router.

4. Training: AdamW on the features; the validation metric (``router.select_by``) picks the epoch
   whose weights are kept.

Outputs in the run folder: ``router/`` (the router), ``summary.json``, ``history.jsonl``,
``data.jsonl`` (the prefixes with their labels and candidate scores), ``config.yaml`` and ``tb/``.
``prefixes=<earlier router run>`` fits on that run's saved prefixes instead of playing episodes
again (same ``policy=``), e.g. to try other ``router.features`` in a few minutes; the openings are
always made afresh, as many as this run's ``data.openings`` says.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from transformers import AutoTokenizer, set_seed

from agents import MultiHeadPolicy, Router, RouterFeatures
from agents.models import resolve_device
from agents.router import DEFAULT_POOLING, POOLINGS
from algorithms.cli import resumable_config
from algorithms.components import build_task
from algorithms.journal import Journal
from algorithms.losses import (
    hedge_router_loss,
    hedge_targets,
    matched_head_loss,
    pairwise_log_losses,
    pairwise_preference_loss,
    soft_cross_entropy,
    weight_entropy,
)
from algorithms.ray_pool import Job, run_jobs
from algorithms.router_data import (
    CANDIDATE_FIELDS,
    PrefixExample,
    PrefixWorker,
    collect_openings,
    load_prefixes,
    matched_head,
    prefix_features,
    prefix_unit,
    score_candidates,
)
from algorithms.runs import claim_run_dir, json_line, write_config, write_json
from algorithms.seeds import seed_for
from configs import check_top_level, register, store_settings
from configs.trust import load_saved_config
from configs.validation import check_types, require, require_choice, structured
from envs.chat import check_servers

METHODS = ("matched", "pairwise", "hedge", "micro")
Messages = list[dict[str, str]]


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclass
class RouterConfig:
    """Hyper-parameters of router learning (node ``router`` of configs/router.yaml; only source of these defaults).

    Attributes:
        method: ``matched``, ``pairwise``, ``hedge`` or ``micro`` (see the module docstring).
        hidden_dim: Width of the router MLP's hidden layers (512, as in the paper).
        num_layers: Linear layers of the router MLP (3, as in the paper).
        dropout: Dropout after each hidden layer (0.1, as in the paper).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        epochs: Passes over the training prefixes.
        batch_size: Prefixes per optimiser step.
        select_by: Validation metric that picks the kept epoch: ``accuracy`` (argmax weight on the
            matched head), ``preference`` (expected judged preference ``w . delta``), ``loss`` (the
            method's own loss), or ``auto`` (preference for pairwise, accuracy otherwise).
        entropy_coef: lambda of the pairwise loss's entropy bonus.
        hedge_tau: Temperature tau of the Hedge soft targets (smaller trusts the losses more).
        hedge_loss: Per-head loss that Hedge reweights by: ``satisfaction`` (how badly the env scored
            that head's candidate, ``(1 - reward) / 2``), ``pairwise`` (``(1 - delta) / 2``) or
            ``log_pairwise`` (``-log((1 + delta) / 2)``, clipped: the log-loss scale of MiCRo's tau).
        budget: Labelled training prefixes kept per persona label (MiCRo's B; null keeps them all).
        init_from: A saved router (folder) to start from instead of a fresh one (MiCRo fine-tunes a
            pre-trained router this way).
        features: The router's input (``agents.RouterFeatures`` pooling): ``last_token`` (the paper's,
            the backbone's state at the prefix's last token) or ``last_message`` (the mean state
            over the prefix's last message, the student's latest reply).
        feature_batch_size: Prefixes per backbone forward when computing features.
        feature_cache: Folder for an on-disk feature cache shared between runs (null: memory only).
    """

    method: str = "matched"
    hidden_dim: int = 512
    num_layers: int = 3
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.01
    epochs: int = 30
    batch_size: int = 32
    select_by: str = "auto"
    entropy_coef: float = 0.01
    hedge_tau: float = 0.5
    hedge_loss: str = "satisfaction"
    budget: int | None = None
    init_from: str | None = None
    features: str = DEFAULT_POOLING
    feature_batch_size: int = 8
    feature_cache: str | None = None

    def __post_init__(self):
        check_types(self, "router")
        require_choice("router.method", self.method, METHODS)
        require_choice("router.select_by", self.select_by, ("auto", "accuracy", "preference", "loss"))
        if self.select_by == "auto":
            self.select_by = "preference" if self.method == "pairwise" else "accuracy"
        require_choice("router.hedge_loss", self.hedge_loss, ("satisfaction", "pairwise", "log_pairwise"))
        require(self.budget is None or self.budget >= 1, "router.budget", self.budget,
                "must be null or an integer >= 1")
        require_choice("router.features", self.features, POOLINGS)
        for key in ("hidden_dim", "num_layers", "epochs", "batch_size", "feature_batch_size"):
            require(getattr(self, key) >= 1, f"router.{key}", getattr(self, key), "must be an integer >= 1")
        require(0 <= self.dropout < 1, "router.dropout", self.dropout, "must be in [0, 1)")
        require(self.lr > 0, "router.lr", self.lr, "must be a number > 0")
        require(self.weight_decay >= 0, "router.weight_decay", self.weight_decay, "must be >= 0")
        require(self.entropy_coef >= 0, "router.entropy_coef", self.entropy_coef, "must be >= 0")
        require(self.hedge_tau > 0, "router.hedge_tau", self.hedge_tau, "must be a number > 0")

    @property
    def needs_candidates(self) -> bool:
        """Whether the method needs every head's (and the blend's) judged candidate at each prefix."""
        return self.method in ("pairwise", "hedge", "micro") or self.select_by == "preference"


@dataclass
class RouterDataConfig:
    """How the router's training prefixes are collected (node ``data`` of configs/router.yaml).

    The episodes come from the task's ``router_train`` and ``router_val`` splits.

    Attributes:
        episodes: Training episodes (every persona label equally, half matched / half mismatched
            head). On tutoring 32 overfit: validation accuracy 0.875 vs 0.896 with 128; on the
            default run's policy 256 raised it from 0.893 to 0.938 and the benchmark's router on
            interactive students from 0.422 to 0.516 (the INTERACTIVE head's own 0.516), at 17
            instead of 9 minutes, so tutoring sets 256 (``configs/env_router/tutoring.yaml``).
        val_episodes: Validation episodes.
        turns: Generated turns per episode, at most the env's own limit (a single-turn env plays
            one); the prefix before each is one example.
        matched_fraction: Share of episodes driven by the matched head (the rest by another head).
        max_new_tokens: Length limit of a generated turn.
        temperature: Sampling temperature of the rollouts and the candidates.
        gen_batch_size: Prompts per ``generate`` call (null: all at once).
        openings: Extra training prefixes that are just the opening of a freshly reset episode of
            ``router_train`` (nothing generated, so they cost a reset and a feature each); validation
            gets ``openings * val_episodes // episodes`` more from ``router_val``. The first turn is
            where the router has the least to go on, and the rollouts give it only one opening per
            episode. null: 512 for ``router.method=matched`` and 0 for the methods that score
            candidates (every opening would cost a candidate per head and the blend); set a number
            to override either. On tutoring with the default run's policy, a router fitted on
            openings alone classified 192 held-out ones with accuracy 0.85 from 128 and 0.92 from
            512; with the 512 added to the rollouts, the benchmark's first-turn accuracy went from
            0.844 to 1.000 (32 dialogues) and the router's mean satisfaction from 0.469 to 0.508.
        unit_episodes: Episodes played (and prefixes scored) per unit of work. Each unit is kept in
            the run folder's journal as it finishes, so ``resume=<router run>`` after a kill redoes
            at most one unit; the units' seeds depend on this size, not on interruptions.
        reuse_kv: Keep each episode's keys and values from one turn to the next, so a turn's
            prefill runs only over what is new in its dialogue (:mod:`agents.prefix_cache`). Same
            distribution, faster: on tutoring's default router the rollouts took 376 s instead of
            464 s (the whole run 7:51 instead of 9:16), and all 1,360 prefixes came out the same.
            The logits equal a full prefill's up to rounding, so a near-tie may sample another
            token than with false.
    """

    episodes: int = 128
    val_episodes: int = 16
    turns: int = 3
    matched_fraction: float = 0.5
    max_new_tokens: int = 48
    temperature: float = 1.0
    gen_batch_size: int | None = None
    openings: int | None = None
    unit_episodes: int = 32
    reuse_kv: bool = True

    def __post_init__(self):
        check_types(self, "data")
        require(self.unit_episodes >= 1, "data.unit_episodes", self.unit_episodes, "must be an integer >= 1")
        require(self.openings is None or self.openings >= 0, "data.openings", self.openings,
                "must be null or an integer >= 0")
        for key in ("episodes", "val_episodes", "turns", "max_new_tokens"):
            require(getattr(self, key) >= 1, f"data.{key}", getattr(self, key), "must be an integer >= 1")
        require(0.0 <= self.matched_fraction <= 1.0, "data.matched_fraction", self.matched_fraction,
                "must be in [0, 1]")
        require(self.temperature >= 0, "data.temperature", self.temperature, "must be >= 0")
        require(self.gen_batch_size is None or self.gen_batch_size >= 1, "data.gen_batch_size", self.gen_batch_size,
                "must be null or an integer >= 1")

    def opening_counts(self, needs_candidates: bool) -> tuple[int, int]:
        """Extra ``(train, validation)`` openings of a run; ``needs_candidates``: the method scores candidates."""
        train = self.openings if self.openings is not None else (0 if needs_candidates else 512)
        return train, train * self.val_episodes // self.episodes


def router_config(cfg: DictConfig) -> tuple[RouterConfig, RouterDataConfig]:
    """Reads ``cfg.router`` and ``cfg.data`` into checked configs (ConfigError names a bad key)."""
    return structured(RouterConfig, cfg.get("router"), "router"), structured(RouterDataConfig, cfg.get("data"), "data")


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


@dataclass
class RouterData:
    """Router training tensors (N prefixes, H feature size, K heads).

    Attributes:
        features: ``(N, H)`` backbone features of the prefixes.
        target: ``(N,)`` index of the matched head.
        turn: ``(N,)`` generated-turn index following each prefix.
        deltas: ``(N, K)`` judged preference of each head over the blend, or None.
        head_losses: ``(N, K)`` per-head loss for Hedge, or None.
        prior: ``(N, K)`` fixed prior weights of ``micro`` (set by :func:`fit_router` every epoch), or None.
    """

    features: torch.Tensor
    target: torch.Tensor
    turn: torch.Tensor
    deltas: torch.Tensor | None = None
    head_losses: torch.Tensor | None = None
    prior: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.features.shape[0]

    def subset(self, idx: torch.Tensor) -> RouterData:
        """The rows ``idx`` of every tensor."""
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return RouterData(self.features[idx], self.target[idx], self.turn[idx], pick(self.deltas),
                          pick(self.head_losses), pick(self.prior))


def build_router_data(features: torch.Tensor, examples: Sequence[PrefixExample], head_names: Sequence[str],
                      hedge_loss: str = "satisfaction") -> RouterData:
    """Pairs the features with the examples' labels (the labels never enter ``features``)."""
    target = torch.tensor([matched_head(head_names, e.persona) for e in examples])
    turn = torch.tensor([e.turn for e in examples])
    deltas = head_losses = None
    if examples and all(e.deltas is not None for e in examples):
        deltas = torch.tensor([e.deltas for e in examples], dtype=torch.float32)
        scores = torch.tensor([e.head_scores for e in examples], dtype=torch.float32)
        if hedge_loss == "log_pairwise":
            head_losses = pairwise_log_losses(deltas)
        else:
            head_losses = (1.0 - (scores if hedge_loss == "satisfaction" else deltas)) / 2.0
    return RouterData(features.float(), target, turn, deltas, head_losses)


def method_loss(method: str, out, batch: RouterData, rc: RouterConfig) -> torch.Tensor:
    """The training loss of ``method`` on a batch, from a :class:`agents.RouterOutput`."""
    if method == "matched":
        return matched_head_loss(out.logits, batch.target)
    if batch.deltas is None:
        raise ValueError(f"router.method={method} needs judged candidates for every prefix.")
    if method == "pairwise":
        return pairwise_preference_loss(out.weights, batch.deltas, rc.entropy_coef)
    if method == "micro" and batch.prior is not None:
        return soft_cross_entropy(out.logits, hedge_targets(batch.prior, batch.head_losses, rc.hedge_tau))
    return hedge_router_loss(out.logits, batch.head_losses, rc.hedge_tau)  # prior: the router's own weights


def budget_indices(labels: Sequence[Any], budget: int, seed: int) -> list[int]:
    """Indices of at most ``budget`` items per label, drawn without replacement, in their original order."""
    rng = np.random.default_rng(seed)
    kept = []
    for label in dict.fromkeys(labels):
        idx = [i for i, x in enumerate(labels) if x == label]
        kept += [int(i) for i in rng.permutation(idx)[:budget]]
    return sorted(kept)


def within_budget(examples: Sequence[PrefixExample], budget: int | None, seed: int) -> list[PrefixExample]:
    """At most ``budget`` examples per persona label, drawn without replacement (all when ``budget`` is None)."""
    if budget is None:
        return list(examples)
    return [examples[i] for i in budget_indices([e.persona for e in examples], budget, seed)]


@torch.no_grad()
def router_metrics(router: Router, data: RouterData, rc: RouterConfig) -> dict[str, float]:
    """Validation metrics: loss, accuracy (overall and at turn 0), expected preference, entropy, weights."""
    router.eval()
    out = router(data.features)
    pred = out.weights.argmax(-1)
    first = data.turn == 0
    metrics = {
        "loss": float(method_loss(rc.method, out, data, rc)),
        "accuracy": float((pred == data.target).float().mean()),
        "accuracy_turn1": float((pred[first] == data.target[first]).float().mean()) if first.any() else float("nan"),
        "entropy": float(weight_entropy(out.weights).mean()),
        "matched_weight": float(out.weights.gather(-1, data.target[:, None]).mean()),
    }
    if data.deltas is not None:
        metrics["preference"] = float((out.weights * data.deltas).sum(-1).mean())
    return metrics


@dataclass
class FitResult:
    """Outcome of :func:`fit_router`.

    Attributes:
        router: The router with the selected epoch's weights.
        history: One dict per epoch (``epoch``, ``train_loss``, ``val/...``).
        best_epoch: The selected epoch (1-based).
        best: Its validation metrics.
    """

    router: Router
    history: list[dict[str, float]]
    best_epoch: int
    best: dict[str, float]


def fit_router(
    train: RouterData,
    val: RouterData,
    rc: RouterConfig,
    *,
    num_heads: int,
    seed: int = 0,
    init: Router | None = None,
    writer: SummaryWriter | None = None,
    progress: bool = False,
) -> FitResult:
    """Trains a router on precomputed features and keeps the epoch with the best validation metric.

    Args:
        train: Training tensors.
        val: Validation tensors.
        rc: Method and optimiser settings.
        num_heads: K.
        seed: Seeds the initialisation, dropout and shuffling.
        init: A router to start from (copied); default a fresh one.
        writer: Optional TensorBoard writer for ``router/`` scalars.
        progress: Show a progress bar over epochs.
    """
    if rc.select_by == "preference" and val.deltas is None:
        raise ValueError("router.select_by=preference needs judged candidates for the validation prefixes.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        router = Router(train.features.shape[1], num_heads, rc.hidden_dim, rc.num_layers, rc.dropout, rc.features)
        if init is not None:
            router.load_state_dict(init.state_dict())
        optimizer = torch.optim.AdamW(router.parameters(), lr=rc.lr, weight_decay=rc.weight_decay)
        generator = torch.Generator().manual_seed(seed)
        history: list[dict[str, float]] = []
        best_key, best_state, best_epoch, best = None, None, 0, {}
        for epoch in tqdm(range(1, rc.epochs + 1), desc=f"router ({rc.method})", disable=not progress):
            if rc.method == "micro":  # MiCRo: the prior is recomputed once per epoch, then held fixed
                router.eval()
                with torch.no_grad():
                    train = replace(train, prior=router(train.features).weights.detach())
            router.train()
            order = torch.randperm(len(train), generator=generator)
            total, count = 0.0, 0
            for start in range(0, len(train), rc.batch_size):
                batch = train.subset(order[start:start + rc.batch_size])
                loss = method_loss(rc.method, router(batch.features), batch, rc)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
                count += len(batch)
            metrics = router_metrics(router, val, rc)
            row = {"epoch": epoch, "train_loss": total / count, **{f"val/{k}": v for k, v in metrics.items()}}
            history.append(row)
            if writer is not None:
                writer.add_scalar("router/train_loss", row["train_loss"], epoch)
                for k, v in metrics.items():
                    writer.add_scalar(f"router/val_{k}", v, epoch)
            score = -metrics["loss"] if rc.select_by == "loss" else metrics[rc.select_by]
            key = (score, -metrics["loss"])
            if best_key is None or key > best_key:
                best_key, best_epoch, best = key, epoch, metrics
                best_state = {k: v.detach().clone() for k, v in router.state_dict().items()}
    router.load_state_dict(best_state)
    return FitResult(router.eval(), history, best_epoch, best)


# ----------------------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------------------


def load_run(path: str | Path, device: str | torch.device = "cpu", current: DictConfig | None = None):
    """Loads a finished OPSD run folder (or a bare saved policy folder), frozen and in eval mode.

    Args:
        path: The run folder.
        device: Where the policy goes.
        current: This invocation's composed config: the targets its command line names (and its
            ``allow_targets``) may appear in the run's ``config.yaml`` besides the registered plug-ins.

    Returns:
        ``(policy, tokenizer, run_cfg)``; ``run_cfg`` is the run's ``config.yaml`` (None if absent),
        vetted before anything else is read (:func:`configs.trust.load_saved_config`).
    """
    run = Path(path)
    config = run / "config.yaml"
    run_cfg = load_saved_config(config, current) if config.is_file() else None
    policy_dir = run / "policy" if (run / "policy").is_dir() else run
    policy = MultiHeadPolicy.from_pretrained(policy_dir, device=device)
    policy.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    tokenizer.padding_side = "left"
    return policy.eval(), tokenizer, run_cfg


def prefix_worker(cfg: dict[str, Any]) -> PrefixWorker:
    """What a Ray worker of the router holds: the frozen policy of ``cfg["policy"]``, the task, the data settings."""
    cfg = OmegaConf.create(cfg)
    policy, tokenizer, _ = load_run(cfg.policy, resolve_device(cfg.device), current=cfg)
    return PrefixWorker(policy, tokenizer, build_task(cfg), router_config(cfg)[1])


def load_router(path: str | Path, device: str | torch.device = "cpu") -> Router:
    """Loads a router from a router run folder (its ``router/``) or a saved router folder."""
    path = Path(path)
    return Router.from_pretrained(path / "router" if (path / "router").is_dir() else path, device=device).eval()


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """What decides a router run's results: a journal written with other values belongs to another run."""
    keys = ("seed", "env", "policy", "prefixes", "router", "data", "pairwise_judge")
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg.get(k), DictConfig) else cfg.get(k)
            for k in keys}


def train(cfg: DictConfig, out_dir: str | Path, *, resume: bool = False,
          on_record: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Collects prefixes with the frozen policy of ``cfg.policy``, trains a router and saves it.

    Every unit of work (a batch of ``data.unit_episodes`` episodes, their candidates, the openings,
    the features) is kept in the folder's journal as it finishes (:class:`algorithms.journal.Journal`),
    so a killed run continues with ``resume=True`` and ends with the same router and data.

    Args:
        cfg: The composed config (configs/router.yaml).
        out_dir: The router run folder.
        resume: Continue the run already in ``out_dir`` (False: the folder must hold no run).
        on_record: Called after each unit is kept (tests stop a run there).

    Returns:
        The summary written to ``summary.json``.
    """
    if OmegaConf.is_missing(cfg, "policy") or not cfg.get("policy"):
        raise ValueError("Set policy=<OPSD run folder> (the folder holding policy/ and config.yaml).")
    rc, data = router_config(cfg)
    out_dir = Path(out_dir)
    if not resume:
        claim_run_dir(out_dir, overwrite=bool(cfg.get("overwrite")), resume_hint=f"resume={out_dir}")
    started = time.perf_counter()
    set_seed(int(cfg.seed))
    device = resolve_device(cfg.device)
    task = build_task(cfg)
    judge = instantiate(cfg.pairwise_judge) if rc.needs_candidates else None  # builds no model yet
    check_servers(*task.chat_plugins(), judge)  # a server that is down: one message, before any loading
    policy, tokenizer, _ = load_run(cfg.policy, device, current=cfg)
    for persona in task.personas:
        matched_head(policy, persona.name)  # fail early on a policy whose heads are not the personas
    journal = Journal(out_dir, run_identity(cfg), on_record=on_record)
    write_config(cfg, out_dir / "config.yaml")

    local = PrefixWorker(policy, tokenizer, task, data)
    # the rollouts' prefills already compute the last-token features: keep them instead of a second pass
    prefill_features = rc.features == "last_token"

    def prefix_jobs(split: str, episodes: int, seed: int) -> list[Job]:
        return [Job(f"prefixes/{split}/{start}", prefix_unit,
                    dict(split=split, episodes=episodes, seed=seed, start=start,
                         stop=min(start + data.unit_episodes, episodes), keep_features=prefill_features))
                for start in range(0, episodes, data.unit_episodes)]

    stamp = time.perf_counter()
    reused = cfg.get("prefixes")  # an earlier run's prefixes (and candidates): no episodes are played
    if reused:  # the played episodes' prefixes; the openings are made afresh below
        train_ex, val_ex = load_prefixes(reused, policy=cfg.policy, needs_candidates=rc.needs_candidates)
    else:
        train_jobs = prefix_jobs("router_train", data.episodes, seed_for(cfg.seed, "router/train"))
        val_jobs = prefix_jobs("router_val", data.val_episodes, seed_for(cfg.seed, "router/val"))
        # with ray.enabled the episodes run on Ray workers that each load the policy (prefix_worker)
        units = run_jobs(train_jobs + val_jobs, journal, state=local, cfg=cfg, build=prefix_worker)
        train_ex = [PrefixExample.from_record(r) for unit in units[:len(train_jobs)] for r in unit]
        val_ex = [PrefixExample.from_record(r) for unit in units[len(train_jobs):] for r in unit]
    train_open, val_open = data.opening_counts(rc.needs_candidates)
    for split, examples, count in (("router_train", train_ex, train_open), ("router_val", val_ex, val_open)):
        rows = journal.unit(f"openings/{split}", lambda split=split, count=count: [
            e.to_record() for e in collect_openings(task, split=split, episodes=count,
                                                    seed=seed_for(cfg.seed, f"router/openings/{split}"))])
        examples += [PrefixExample.from_record(r) for r in rows]
    train_ex = within_budget(train_ex, rc.budget, seed=cfg.seed * 7 + 3)
    judge_counter = None
    if rc.needs_candidates and any(e.deltas is None for e in train_ex + val_ex):  # a reused run's are scored
        for split, examples in (("router_train", train_ex), ("router_val", val_ex)):
            todo = [e for e in examples if e.deltas is None]
            for start in range(0, len(todo), data.unit_episodes):
                part = todo[start:start + data.unit_episodes]

                def scored(part=part, split=split, start=start) -> list[dict[str, Any]]:
                    score_candidates(policy, tokenizer, task, part, judge, data, split=split,
                                     seed=seed_for(cfg.seed, f"router/candidates/{split}/{start}"))
                    return [{k: getattr(e, k) for k in CANDIDATE_FIELDS} for e in part]

                for e, values in zip(part, journal.unit(f"candidates/{split}/{start}", scored)):
                    for k, v in values.items():
                        setattr(e, k, v)
        judge_counter = asdict(judge.counter) if hasattr(judge, "counter") else None
    rollout_s = time.perf_counter() - stamp

    stamp = time.perf_counter()
    features = RouterFeatures(policy, tokenizer, pooling=rc.features, batch_size=rc.feature_batch_size,
                              cache_dir=rc.feature_cache)
    kept = [e for e in train_ex + val_ex if e.feature is not None]
    if kept:
        features.remember([task.policy_messages(e.observation) for e in kept], torch.tensor([e.feature for e in kept]))
    x = {split: journal.unit(f"features/{split}", lambda examples=examples: {"x": prefix_features(
        features, task, [e.observation for e in examples])}, tensors=True)["x"]
        for split, examples in (("train", train_ex), ("val", val_ex))}
    train_data = build_router_data(x["train"], train_ex, policy.head_names, rc.hedge_loss)
    val_data = build_router_data(x["val"], val_ex, policy.head_names, rc.hedge_loss)
    features_s = time.perf_counter() - stamp

    stamp = time.perf_counter()
    init = load_router(rc.init_from) if rc.init_from else None
    writer = SummaryWriter(str(out_dir / "tb"))
    fit = fit_router(train_data, val_data, rc, num_heads=policy.num_heads, seed=cfg.seed, init=init, writer=writer,
                     progress=True)
    writer.close()
    fit_s = time.perf_counter() - stamp
    fit.router.save_pretrained(out_dir / "router")
    with (out_dir / "history.jsonl").open("w") as f:
        f.writelines(json_line(row) for row in fit.history)
    with (out_dir / "data.jsonl").open("w") as f:
        for split, examples in (("train", train_ex), ("val", val_ex)):
            f.writelines(json_line({"split": split, **e.to_json()}) for e in examples)

    def rate(examples, key):
        vals = [s for e in examples if getattr(e, key) is not None for s in np.atleast_1d(getattr(e, key))]
        return float(np.mean(vals)) if vals else None

    summary = {
        "router_dir": str(out_dir / "router"),
        "policy": str(cfg.policy),
        "method": rc.method,
        "select_by": rc.select_by,
        "head_names": policy.head_names,
        "train_prefixes": len(train_ex),
        "val_prefixes": len(val_ex),
        "openings": {"train": train_open, "val": val_open},
        "best_epoch": fit.best_epoch,
        "val": fit.best,
        "train": router_metrics(fit.router, train_data, rc),
        "candidates": None if not rc.needs_candidates else {
            "mean_head_score": rate(train_ex, "head_scores"), "mean_blend_score": rate(train_ex, "blend_score"),
            "mean_delta": rate(train_ex, "deltas"), "judge_counter": judge_counter},
        "units": len(journal),
        "rollout_s": round(rollout_s, 1),
        "features_s": round(features_s, 1),
        "features_from_rollouts": len(kept),
        "fit_s": round(fit_s, 1),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    write_json(out_dir / "summary.json", summary)
    return summary


# the top-level keys this entry point reads (any other is refused by name)
TOP_LEVEL_KEYS = ("seed", "device", "env", "policy", "prefixes", "router", "data", "ray", "resume", "overwrite")


store_settings("router_settings", "default", RouterConfig)
store_settings("router_data", "default", RouterDataConfig)


@hydra.main(version_base="1.3", config_path="../configs", config_name="router")
def _main(cfg: DictConfig) -> None:
    check_top_level(cfg, TOP_LEVEL_KEYS)
    cfg, out_dir, resume = resumable_config(cfg)
    summary = train(cfg, out_dir, resume=resume)
    val = summary["val"]
    print(f"\n[router] {summary['method']} router saved to {summary['router_dir']}")
    print(f"[router] epoch {summary['best_epoch']} kept (by {summary['select_by']}): val accuracy "
          f"{val['accuracy']:.3f}, at turn 1 {val['accuracy_turn1']:.3f}, entropy {val['entropy']:.3f}"
          + (f", expected preference {val['preference']:+.3f}" if "preference" in val else ""))
    env = HydraConfig.get().runtime.choices.get("env", "<env>")
    print(f"[router] wall {summary['wall_s']} s; benchmark it with: python -m algorithms.benchmark env={env} "
          f"policy={summary['policy']} router={out_dir}")


def main() -> None:
    """Entry point: registers the structured configs, then lets Hydra compose and run."""
    register()
    _main()


if __name__ == "__main__":
    main()
