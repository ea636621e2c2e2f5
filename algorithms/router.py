"""Router learning over a frozen multi-head policy: which head should write the next turn?

Run it with Hydra (configs/router.yaml)::

    python -m algorithms.router env=tutoring policy=runs/opsd/<run>                      # matched-head targets
    python -m algorithms.router env=tutoring policy=runs/opsd/<run> router.method=pairwise
    python -m algorithms.router env=tutoring policy=runs/opsd/<run> router.method=pairwise pairwise_judge=llm
    python -m algorithms.router env=tutoring policy=runs/opsd/<run> router.method=hedge

The backbone and the heads stay frozen; only a small :class:`agents.Router` MLP is trained. Its
input is the backbone's last-token hidden state of the dialogue prefix (what the policy would see
before writing its next turn), computed once per prefix by :class:`agents.RouterFeatures`. The
hidden student type is used for supervision and for the simulated student only, never as an input.

1. Data. Dialogues on the training topics are rolled out turn by turn, each driven by one fixed
   head: half by the head that matches the dialogue's hidden student type, half by another one, so
   the prefixes show both engaged and disengaged reactions. Every prefix before a generated turn is
   one example. Validation dialogues use a disjoint slice of the training topics.
2. Candidates (``pairwise`` and ``hedge``). From every prefix each head and the equal blend write a
   candidate turn; the simulated student answers each, the satisfaction judge labels the answers,
   and a pairwise judge compares each head's candidate with the blend's.
3. Targets, one method per run (``router.method``):

   - ``matched``: cross-entropy to the head named after the student type (known in simulation);
   - ``pairwise``: REBEL-style signed preferences ``delta_d`` of head d over the equal blend,
     loss ``-w . delta - lambda H(w)``;
   - ``hedge``: MiCRo-style soft targets, the router's own weights reweighted multiplicatively by
     ``exp(-loss_d / tau)``, then cross-entropy to them.

4. Training: AdamW on the features; the validation metric (``router.select_by``) picks the epoch
   whose weights are kept.

Outputs in the run folder: ``router/`` (the router), ``summary.json``, ``history.jsonl``,
``data.jsonl`` (the prefixes with their labels and candidate scores), ``config.yaml`` and ``tb/``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from transformers import AutoTokenizer, set_seed

from agents import MultiHeadPolicy, Router, RouterFeatures, generate
from agents.models import resolve_device
from algorithms.components import build_task
from algorithms.runs import json_line, write_json
from algorithms.tasks import TutoringTask, split_topics
from configs import check_top_level, register
from configs.validation import check_types, require, require_choice, structured
from envs.judges.base import LABEL_SCORE, JudgeDialogue
from envs.judges.pairwise import PairwiseComparison, PairwiseJudge
from envs.students.base import STUDENT_TYPES, StudentContext

METHODS = ("matched", "pairwise", "hedge")
Messages = list[dict[str, str]]


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclass
class RouterConfig:
    """Hyper-parameters of router learning (node ``router`` of configs/router.yaml; only source of these defaults).

    Attributes:
        method: ``matched``, ``pairwise`` or ``hedge`` (see the module docstring).
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
        hedge_loss: Per-head loss that Hedge reweights by: ``satisfaction`` (how badly the student
            took that head's candidate, ``(1 - score) / 2``) or ``pairwise`` (``(1 - delta) / 2``).
        init_from: A saved router (folder) to start from instead of a fresh one (MiCRo fine-tunes a
            pre-trained router this way).
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
    init_from: str | None = None
    feature_batch_size: int = 8
    feature_cache: str | None = None

    def __post_init__(self):
        check_types(self, "router")
        require_choice("router.method", self.method, METHODS)
        require_choice("router.select_by", self.select_by, ("auto", "accuracy", "preference", "loss"))
        if self.select_by == "auto":
            self.select_by = "preference" if self.method == "pairwise" else "accuracy"
        require_choice("router.hedge_loss", self.hedge_loss, ("satisfaction", "pairwise"))
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
        return self.method in ("pairwise", "hedge") or self.select_by == "preference"


@dataclass
class RouterDataConfig:
    """How the router's training prefixes are collected (node ``data`` of configs/router.yaml).

    Attributes:
        dialogues: Training episodes (training contexts, every persona label, half matched / half
            mismatched head). 32 overfit on tutoring: validation accuracy 0.875 vs 0.896 with 128.
        val_dialogues: Validation episodes (a disjoint slice of the training contexts).
        val_every: Every n-th training context is reserved for validation episodes.
        turns: Generated turns per episode; the prefix before each is one example.
        matched_fraction: Share of episodes driven by the matched head (the rest by another head).
        max_new_tokens: Length limit of a generated turn.
        temperature: Sampling temperature of the rollouts and the candidates.
        gen_batch_size: Prompts per ``generate`` call (null: all at once).
    """

    dialogues: int = 128
    val_dialogues: int = 16
    val_every: int = 5
    turns: int = 3
    matched_fraction: float = 0.5
    max_new_tokens: int = 48
    temperature: float = 1.0
    gen_batch_size: int | None = None

    def __post_init__(self):
        check_types(self, "data")
        for key in ("dialogues", "val_dialogues", "turns", "max_new_tokens"):
            require(getattr(self, key) >= 1, f"data.{key}", getattr(self, key), "must be an integer >= 1")
        require(self.val_every >= 2, "data.val_every", self.val_every, "must be an integer >= 2")
        require(0.0 <= self.matched_fraction <= 1.0, "data.matched_fraction", self.matched_fraction,
                "must be in [0, 1]")
        require(self.temperature >= 0, "data.temperature", self.temperature, "must be >= 0")
        require(self.gen_batch_size is None or self.gen_batch_size >= 1, "data.gen_batch_size", self.gen_batch_size,
                "must be null or an integer >= 1")


def router_config(cfg: DictConfig) -> tuple[RouterConfig, RouterDataConfig]:
    """Reads ``cfg.router`` and ``cfg.data`` into checked configs (ConfigError names a bad key)."""
    return structured(RouterConfig, cfg.get("router"), "router"), structured(RouterDataConfig, cfg.get("data"), "data")


# ----------------------------------------------------------------------------------------------
# Losses (pure functions; B prefixes, K heads)
# ----------------------------------------------------------------------------------------------


def matched_head_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the router to the matched head as a one-hot target.

    Args:
        logits: ``(B, K)`` router logits.
        target: ``(B,)`` index of the head that matches each prefix's (hidden) student type.

    Returns:
        Scalar mean cross-entropy.
    """
    return F.cross_entropy(logits.float(), target.long())


def weight_entropy(weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``(B,)`` entropy in nats of ``(B, K)`` weight rows (0 log 0 taken as 0)."""
    return -(weights * weights.clamp(min=eps).log()).sum(-1)


def pairwise_preference_loss(weights: torch.Tensor, delta: torch.Tensor, entropy_coef: float = 0.0) -> torch.Tensor:
    """REBEL-style router objective: ``-mean_i w_i . delta_i - lambda mean_i H(w_i)``.

    Args:
        weights: ``(B, K)`` router weights (softmax rows).
        delta: ``(B, K)`` judged preference of each head's turn over the equal blend's, in
            ``{-1, -0.5, 0, 0.5, 1}`` (positive: the head was better).
        entropy_coef: lambda; the entropy bonus keeps the router from collapsing onto one head early.

    Returns:
        Scalar loss (lower is better; ``-1`` is the best value without the entropy term).
    """
    expected = (weights * delta.to(weights.dtype)).sum(-1)  # (B,)
    return -expected.mean() - entropy_coef * weight_entropy(weights).mean()


def hedge_targets(prior: torch.Tensor, head_losses: torch.Tensor, tau: float) -> torch.Tensor:
    """Multiplicative-weights (Hedge) update of prior weights by per-head losses.

    ``target_{i,k} = prior_{i,k} exp(-loss_{i,k} / tau) / sum_j prior_{i,j} exp(-loss_{i,j} / tau)``,
    the minimiser of ``sum_k f_k loss_k + tau KL(f || prior)`` over the simplex.

    Args:
        prior: ``(B, K)`` current weights (rows on the simplex; no gradient is taken through them).
        head_losses: ``(B, K)`` loss of each head on each example (lower is better).
        tau: Temperature > 0.

    Returns:
        ``(B, K)`` target weights (rows sum to 1).
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}.")
    log_prior = prior.detach().float().clamp(min=1e-12).log()
    return torch.softmax(log_prior - head_losses.float() / tau, dim=-1)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``(B, K)`` logits to ``(B, K)`` soft targets (constant); scalar mean over B."""
    return -(targets.detach() * torch.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def hedge_router_loss(logits: torch.Tensor, head_losses: torch.Tensor, tau: float) -> torch.Tensor:
    """MiCRo's router step: Hedge targets from the router's own (detached) weights, then cross-entropy.

    Args:
        logits: ``(B, K)`` router logits.
        head_losses: ``(B, K)`` per-head losses.
        tau: Hedge temperature.

    Returns:
        Scalar loss.
    """
    targets = hedge_targets(torch.softmax(logits.detach().float(), -1), head_losses, tau)
    return soft_cross_entropy(logits, targets)


def hedge_step(weights: torch.Tensor, head_losses: torch.Tensor, lr: float, floor: float = 0.0) -> torch.Tensor:
    """One online Hedge step ``w' ∝ w exp(-lr loss)``, then mixed with the uniform by ``floor``.

    Args:
        weights: ``(..., K)`` current weights.
        head_losses: ``(..., K)`` losses observed for each head.
        lr: Learning rate eta >= 0 (0 leaves the weights unchanged).
        floor: Share of the uniform distribution mixed in, so no head's weight reaches 0 for good.

    Returns:
        ``(..., K)`` new weights.
    """
    new = hedge_targets(weights, head_losses, 1.0 / lr) if lr > 0 else weights.float()
    return (1.0 - floor) * new + floor / weights.shape[-1]


def reaction_head_losses(weights: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """Per-head losses from the reaction to a turn written by the mixture ``weights``.

    Only the mixture's turn was seen, so each head takes the blame (or credit) in proportion to its
    share of it: ``loss_{i,k} = -reward_i w_{i,k}``. A good reaction moves weight towards the heads
    that wrote the turn, a bad one away from them; under equal weights nothing changes.

    Args:
        weights: ``(B, K)`` weights that produced the turn.
        reward: ``(B,)`` reaction score in [-1, 1] (+1 good, 0 neutral, -1 bad).

    Returns:
        ``(B, K)`` losses.
    """
    return -reward.float().unsqueeze(-1) * weights.float()


# ----------------------------------------------------------------------------------------------
# Data: dialogue prefixes
# ----------------------------------------------------------------------------------------------


@dataclass
class PrefixExample:
    """One dialogue prefix the router learns from.

    Attributes:
        messages: The observation before the next teacher turn (the only thing the router reads).
        topic: The session's topic.
        student_type: Hidden ground truth (supervision only).
        reaction: Hidden reaction style (used by the simulated student only).
        dialogue: Index of the dialogue it comes from.
        turn: Index of the generated turn that follows (0: right after the seed turn's reaction).
        driver: Name of the head that drove the dialogue.
        matched: Whether that head matches the student type.
        head_scores: Satisfaction score (+1/0/-1) of each head's candidate turn (with candidates).
        blend_score: Satisfaction score of the equal blend's candidate.
        deltas: Judged preference of each head's candidate over the blend's.
        candidates: The candidate turns: one per head, then the blend's.
    """

    messages: Messages
    topic: str
    student_type: str
    reaction: str
    dialogue: int
    turn: int
    driver: str
    matched: bool
    head_scores: list[float] | None = None
    blend_score: float | None = None
    deltas: list[float] | None = None
    candidates: list[str] | None = None


def matched_head(policy_or_names, student_type: str) -> int:
    """Index of the head whose name is the student type (the heads are named after the personas)."""
    names = list(getattr(policy_or_names, "head_names", policy_or_names))
    if student_type not in names:
        raise ValueError(f"No head is named after student type '{student_type}' (heads: {names}); router "
                         "supervision needs a MAH policy whose head names are the persona names.")
    return names.index(student_type)



@torch.no_grad()
def collect_prefixes(
    policy: MultiHeadPolicy,
    tokenizer,
    task: TutoringTask,
    data: RouterDataConfig,
    *,
    topics: Sequence[str],
    dialogues: int,
    seed: int,
) -> list[PrefixExample]:
    """Rolls out ``dialogues`` dialogues driven by fixed heads and returns every prefix.

    Student types alternate between dialogues (balanced); within each type, ``matched_fraction``
    of the dialogues are driven by the matched head and the rest by another head.
    """
    names = policy.head_names
    if data.turns > task.max_turns:
        raise ValueError(f"data.turns={data.turns} exceeds the env's {task.max_turns} turns per episode.")
    types = [STUDENT_TYPES[i % len(STUDENT_TYPES)] for i in range(dialogues)]
    f = data.matched_fraction
    drivers, matched, seen = [], [], {t: 0 for t in STUDENT_TYPES}
    for t in types:
        own, j = matched_head(names, t), seen[t]
        others = [d for d in range(len(names)) if d != own]
        # spread the matched dialogues of a type evenly (alternating at f = 0.5)
        is_matched = not others or int((j + 1) * f) > int(j * f)
        drivers.append(own if is_matched else others[j % len(others)])
        matched.append(is_matched)
        seen[t] += 1
    batch = task.make_batch(dialogues, topics=list(topics))
    obs, infos = batch.reset(seed=seed, options_list=[{"student_type": t} for t in types])
    one_hot = F.one_hot(torch.tensor(drivers), policy.num_heads).float()  # (N, K)
    examples: list[PrefixExample] = []
    for turn in range(data.turns):
        for i, (o, info) in enumerate(zip(obs, infos)):
            examples.append(PrefixExample(
                messages=[dict(m) for m in o], topic=info["topic"], student_type=info["label"]["student_type"],
                reaction=info["label"]["reaction"], dialogue=i, turn=turn, driver=names[drivers[i]],
                matched=matched[i]))
        out = generate(policy, tokenizer, [task.policy_messages(o) for o in obs], weights=one_hot,
                       max_new_tokens=data.max_new_tokens, temperature=data.temperature,
                       seed=seed * 7919 + turn, batch_size=data.gen_batch_size)
        obs, _, _, _, _ = batch.step(task.actions(out.texts))
    batch.close()
    return examples


@torch.no_grad()
def score_candidates(
    policy: MultiHeadPolicy,
    tokenizer,
    task: TutoringTask,
    examples: Sequence[PrefixExample],
    judge: PairwiseJudge,
    data: RouterDataConfig,
    *,
    seed: int,
) -> None:
    """Fills ``head_scores``, ``blend_score``, ``deltas`` and ``candidates`` of every example in place.

    From each prefix every head and the equal blend write one turn; the simulated student (which
    knows the hidden type, as in the environment) answers each, the task's satisfaction judge labels
    the answers, and ``judge`` compares each head's turn with the blend's.
    """
    if not examples:
        return
    prompts = [task.policy_messages(e.messages) for e in examples]
    selections = [{"head": d} for d in range(policy.num_heads)] + [{}]  # the heads, then the equal blend
    turns = []
    for s, selection in enumerate(selections):
        out = generate(policy, tokenizer, prompts, max_new_tokens=data.max_new_tokens, temperature=data.temperature,
                       seed=seed * 104729 + s, batch_size=data.gen_batch_size, **selection)
        turns.append(task.actions(out.texts))  # (S, N)
    contexts, dialogues = [], []
    for s in range(len(selections)):
        for i, e in enumerate(examples):
            convo = [m for m in e.messages if m["role"] != "system"] + [{"role": "teacher", "content": turns[s][i]}]
            contexts.append(StudentContext(topic=e.topic, student_type=e.student_type, reaction=e.reaction,
                                           messages=convo, rng=np.random.default_rng([seed, s, i])))
    replies = [str(r or "").strip() or "..." for r in task.student.reply_batch(contexts)]
    for k, (ctx, reply) in enumerate(zip(contexts, replies)):
        e = examples[k % len(examples)]
        dialogues.append(JudgeDialogue.last_turn(e.topic, e.messages + [ctx.messages[-1],
                                                                         {"role": "student", "content": reply}]))
    judgements = task.satisfaction_judge.judge_batch(dialogues)
    scores = [LABEL_SCORE.get(j.labels[-1] if j.labels else "neutral", 0.0) for j in judgements]
    n, blend = len(examples), len(selections) - 1
    comparisons = [PairwiseComparison(e.topic, e.messages, turns[d][i], turns[blend][i],
                                      replies[d * n + i], replies[blend * n + i])
                   for d in range(blend) for i, e in enumerate(examples)]
    deltas = judge.compare_batch(comparisons)
    for i, e in enumerate(examples):
        e.head_scores = [scores[d * n + i] for d in range(blend)]
        e.blend_score = scores[blend * n + i]
        e.deltas = [float(deltas[d * n + i]) for d in range(blend)]
        e.candidates = [turns[s][i] for s in range(len(selections))]


# ----------------------------------------------------------------------------------------------
# Features and training
# ----------------------------------------------------------------------------------------------


def prefix_features(features: RouterFeatures, prefixes: Sequence[Messages]) -> torch.Tensor:
    """``(N, H)`` router inputs for dialogue prefixes (observations); nothing but the messages is read."""
    return features([TutoringTask.policy_messages(p) for p in prefixes])


@torch.no_grad()
def route(router: Router, features: RouterFeatures, prefixes: Sequence[Messages]):
    """The router's :class:`agents.RouterOutput` for dialogue prefixes (in eval mode)."""
    router.eval()
    return router(prefix_features(features, prefixes).to(next(router.parameters()).device))


@dataclass
class RouterData:
    """Router training tensors (N prefixes, H feature size, K heads).

    Attributes:
        features: ``(N, H)`` backbone features of the prefixes.
        target: ``(N,)`` index of the matched head.
        turn: ``(N,)`` generated-turn index following each prefix.
        deltas: ``(N, K)`` judged preference of each head over the blend, or None.
        head_losses: ``(N, K)`` per-head loss for Hedge, or None.
    """

    features: torch.Tensor
    target: torch.Tensor
    turn: torch.Tensor
    deltas: torch.Tensor | None = None
    head_losses: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.features.shape[0]

    def subset(self, idx: torch.Tensor) -> RouterData:
        """The rows ``idx`` of every tensor."""
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return RouterData(self.features[idx], self.target[idx], self.turn[idx], pick(self.deltas),
                          pick(self.head_losses))


def build_router_data(features: torch.Tensor, examples: Sequence[PrefixExample], head_names: Sequence[str],
                      hedge_loss: str = "satisfaction") -> RouterData:
    """Pairs the features with the examples' labels (the labels never enter ``features``)."""
    target = torch.tensor([matched_head(head_names, e.student_type) for e in examples])
    turn = torch.tensor([e.turn for e in examples])
    deltas = head_losses = None
    if examples and all(e.deltas is not None for e in examples):
        deltas = torch.tensor([e.deltas for e in examples], dtype=torch.float32)
        scores = torch.tensor([e.head_scores for e in examples], dtype=torch.float32)
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
    return hedge_router_loss(out.logits, batch.head_losses, rc.hedge_tau)


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
        router = Router(train.features.shape[1], num_heads, rc.hidden_dim, rc.num_layers, rc.dropout)
        if init is not None:
            router.load_state_dict(init.state_dict())
        optimizer = torch.optim.AdamW(router.parameters(), lr=rc.lr, weight_decay=rc.weight_decay)
        generator = torch.Generator().manual_seed(seed)
        history: list[dict[str, float]] = []
        best_key, best_state, best_epoch, best = None, None, 0, {}
        for epoch in tqdm(range(1, rc.epochs + 1), desc=f"router ({rc.method})", disable=not progress):
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


def load_run(path: str | Path, device: str | torch.device = "cpu"):
    """Loads a finished OPSD run folder (or a bare saved policy folder), frozen and in eval mode.

    Returns:
        ``(policy, tokenizer, run_cfg)``; ``run_cfg`` is the run's ``config.yaml`` (None if absent).
    """
    run = Path(path)
    policy_dir = run / "policy" if (run / "policy").is_dir() else run
    policy = MultiHeadPolicy.from_pretrained(policy_dir, device=device)
    policy.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    tokenizer.padding_side = "left"
    config = run / "config.yaml"
    return policy.eval(), tokenizer, OmegaConf.load(config) if config.is_file() else None


def load_router(path: str | Path, device: str | torch.device = "cpu") -> Router:
    """Loads a router from a router run folder (its ``router/``) or a saved router folder."""
    path = Path(path)
    return Router.from_pretrained(path / "router" if (path / "router").is_dir() else path, device=device).eval()


def train(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """Collects prefixes with the frozen policy of ``cfg.policy``, trains a router and saves it.

    Args:
        cfg: The composed config (configs/router.yaml).
        out_dir: The router run folder.

    Returns:
        The summary written to ``summary.json``.
    """
    if OmegaConf.is_missing(cfg, "policy") or not cfg.get("policy"):
        raise ValueError("Set policy=<OPSD run folder> (the folder holding policy/ and config.yaml).")
    rc, data = router_config(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    started = time.perf_counter()
    set_seed(int(cfg.seed))
    device = resolve_device(cfg.device)
    policy, tokenizer, _ = load_run(cfg.policy, device)
    for t in STUDENT_TYPES:
        matched_head(policy, t)  # fail early on a policy whose heads are not the personas
    task = build_task(cfg)
    train_topics, val_topics = split_topics(task.train_topics, data.val_every)
    if not val_topics:
        raise ValueError(f"No validation topics: {len(task.train_topics)} training topics with "
                         f"val_every={data.val_every}.")

    stamp = time.perf_counter()
    train_ex = collect_prefixes(policy, tokenizer, task, data, topics=train_topics, dialogues=data.dialogues,
                                seed=cfg.seed * 1_000_003 + 1)
    val_ex = collect_prefixes(policy, tokenizer, task, data, topics=val_topics, dialogues=data.val_dialogues,
                              seed=cfg.seed * 1_000_003 + 500_009)
    judge_counter = None
    if rc.needs_candidates:
        judge = instantiate(cfg.pairwise_judge)
        score_candidates(policy, tokenizer, task, train_ex, judge, data, seed=cfg.seed * 31 + 1)
        score_candidates(policy, tokenizer, task, val_ex, judge, data, seed=cfg.seed * 31 + 2)
        judge_counter = asdict(judge.counter) if hasattr(judge, "counter") else None
    rollout_s = time.perf_counter() - stamp

    stamp = time.perf_counter()
    features = RouterFeatures(policy, tokenizer, batch_size=rc.feature_batch_size, cache_dir=rc.feature_cache)
    train_data = build_router_data(prefix_features(features, [e.messages for e in train_ex]), train_ex,
                                   policy.head_names, rc.hedge_loss)
    val_data = build_router_data(prefix_features(features, [e.messages for e in val_ex]), val_ex,
                                 policy.head_names, rc.hedge_loss)
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
            f.writelines(json_line({"split": split, **asdict(e)}) for e in examples)

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
        "best_epoch": fit.best_epoch,
        "val": fit.best,
        "train": router_metrics(fit.router, train_data, rc),
        "candidates": None if not rc.needs_candidates else {
            "mean_head_score": rate(train_ex, "head_scores"), "mean_blend_score": rate(train_ex, "blend_score"),
            "mean_delta": rate(train_ex, "deltas"), "judge_counter": judge_counter},
        "rollout_s": round(rollout_s, 1),
        "features_s": round(features_s, 1),
        "fit_s": round(fit_s, 1),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    write_json(out_dir / "summary.json", summary)
    return summary


@hydra.main(version_base="1.3", config_path="../configs", config_name="router")
def _main(cfg: DictConfig) -> None:
    check_top_level(cfg, ("seed", "device", "env", "policy", "router", "data"))
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = train(cfg, out_dir)
    val = summary["val"]
    print(f"\n[router] {summary['method']} router saved to {summary['router_dir']}")
    print(f"[router] epoch {summary['best_epoch']} kept (by {summary['select_by']}): val accuracy "
          f"{val['accuracy']:.3f}, at turn 1 {val['accuracy_turn1']:.3f}, entropy {val['entropy']:.3f}"
          + (f", expected preference {val['preference']:+.3f}" if "preference" in val else ""))
    print(f"[router] wall {summary['wall_s']} s; benchmark it with: python -m algorithms.benchmark env=tutoring "
          f"policy={summary['policy']} router={out_dir}")


def main() -> None:
    """Entry point: registers the structured configs, then lets Hydra compose and run."""
    register()
    _main()


if __name__ == "__main__":
    main()
