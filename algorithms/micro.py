"""MiCRo (seed 003) at the reward level: a mixture of Bradley-Terry heads with a context router.

MiCRo routes over *reward* heads and mixes preference probabilities; this project's router mixes
*policy* heads in logit space. Here MiCRo is used as the paper builds it, as a reward model over
the candidates the policy heads write, and then as a policy by best-of-N reranking
(:class:`MicroRerank`, a benchmark row):

1. Pairs. A router run with candidates (``router.method=pairwise|hedge|micro``) saved, for every
   prefix, one candidate turn per head and one from the equal blend, each scored by the
   environment (the student's reaction in tutoring). Every two candidates of a prefix with
   different scores form a (chosen, rejected) pair; ties are dropped; the persona label is kept
   for reporting only (the pairs are pooled, as MiCRo pools its Stage-1 data).
2. Stage 1 (003 Eqs. 3-5): K linear heads ``r_k`` on the frozen backbone's last-token feature of
   (prefix, candidate) and a router ``f(x)`` (one hidden layer of 128) on the prefix's feature are
   trained jointly on ``-log sum_k f_k sigma(r_k(chosen) - r_k(rejected)) + alpha sum_k f_k log f_k``.
3. Stage 2 (003 Alg. 1): the heads are frozen and the router is fine-tuned with Hedge targets of
   the per-head losses ``-log sigma(margin_k)``, the prior recomputed once per epoch, on at most
   ``budget`` pairs per persona label.

The report (``micro.md``) gives pairwise accuracy per persona label, as MiCRo's tables do: a single
Bradley-Terry head, a static mixture (the same K heads with one weight vector for every prefix),
the best Stage-1 head per label (an oracle), MiCRo after Stage 1 and after Stage 2.

Run it after a router run with candidates::

    python -m algorithms.micro env=tutoring policy=runs/opsd/<run> candidates=runs/router/<run>
    python -m algorithms.benchmark env=tutoring policy=runs/opsd/<run> \
        '+benchmark.entries.micro={_target_: algorithms.micro.MicroRerank, path: runs/micro/<run>}'
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from agents import RouterFeatures
from agents.models import resolve_device
from agents.sampling import sample_dropping_finished
from algorithms.benchmark import Contender
from algorithms.cli import resumable_config
from algorithms.components import build_task
from algorithms.journal import Journal
from algorithms.losses import bt_mixture_loss, hedge_targets, soft_cross_entropy
from algorithms.router import budget_indices, load_run
from algorithms.runs import claim_run_dir, write_config, write_json
from configs import check_top_level, register, store_settings
from configs.validation import check_types, require, structured
from envs.chat import check_servers
from envs.tasks.reporting import markdown_table

MODEL_FILE, MODEL_CONFIG = "reward.safetensors", "reward.json"


@dataclass
class MicroConfig:
    """MiCRo settings (node ``micro`` of configs/micro.yaml; only source of these defaults).

    Attributes:
        num_heads: K Bradley-Terry heads (the paper used 5 for HelpSteer2 and 10 for RPR).
        router_hidden: Width of the router's single hidden layer (128 in the paper).
        alpha: Weight of the router's pull towards uniform in Stage 1 (0.5 in the paper).
        lr: AdamW learning rate of both stages (0.002 in the paper).
        epochs: Stage-1 passes over the pairs.
        batch_size: Pairs per step (32 in the paper).
        stage2_epochs: Stage-2 passes (10 in the paper).
        budget: Stage-2 pairs per persona label (50 per attribute in the paper).
        tau: Hedge temperature of Stage 2 on the Bradley-Terry log-loss scale (the paper: 1e-3 to 1e-4).
    """

    num_heads: int = 4
    router_hidden: int = 128
    alpha: float = 0.5
    lr: float = 2e-3
    epochs: int = 30
    batch_size: int = 32
    stage2_epochs: int = 10
    budget: int = 50
    tau: float = 1e-3

    def __post_init__(self):
        check_types(self, "micro")
        for key in ("num_heads", "router_hidden", "epochs", "batch_size", "stage2_epochs", "budget"):
            require(getattr(self, key) >= 1, f"micro.{key}", getattr(self, key), "must be an integer >= 1")
        for key in ("lr", "tau"):
            require(getattr(self, key) > 0, f"micro.{key}", getattr(self, key), "must be a number > 0")
        require(self.alpha >= 0, "micro.alpha", self.alpha, "must be >= 0")


class MixtureReward(nn.Module):
    """K linear Bradley-Terry heads on (prefix, candidate) features and a router on prefix features.

    Args:
        input_dim: Feature size (the backbone's hidden size).
        num_heads: K.
        router_hidden: Width of the router's hidden layer.
        static: One learned weight vector for every prefix instead of a router (the static mixture).
    """

    def __init__(self, input_dim: int, num_heads: int, router_hidden: int = 128, static: bool = False):
        super().__init__()
        self.hparams = {"input_dim": input_dim, "num_heads": num_heads, "router_hidden": router_hidden,
                        "static": static}
        self.heads = nn.Linear(input_dim, num_heads)
        self.router = None if static else nn.Sequential(nn.Linear(input_dim, router_hidden), nn.ReLU(),
                                                        nn.Linear(router_hidden, num_heads))
        self.static_logits = nn.Parameter(torch.zeros(num_heads)) if static else None

    def router_logits(self, context: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` router logits of prefix features ``(N, H)``."""
        if self.router is None:
            return self.static_logits.expand(context.shape[0], -1)
        return self.router(context)

    def rewards(self, pair: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` reward of each head for (prefix, candidate) features ``(N, H)``."""
        return self.heads(pair)

    def score(self, context: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        """``(N,)`` routed reward ``sum_k f_k(x) r_k(x, a)``, used to rank candidates."""
        return (torch.softmax(self.router_logits(context), -1) * self.rewards(pair)).sum(-1)

    def save_pretrained(self, path: str | Path) -> Path:
        """Writes the weights (safetensors) and the hyper-parameters (JSON) into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, path / MODEL_FILE)
        (path / MODEL_CONFIG).write_text(json.dumps(self.hparams, indent=1))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> MixtureReward:
        """Loads a model saved by :meth:`save_pretrained` (no code is read from the folder)."""
        path = Path(path)
        if not (path / MODEL_CONFIG).is_file():
            raise FileNotFoundError(f"{path} has no {MODEL_CONFIG}; give the folder written by algorithms.micro.")
        model = cls(**json.loads((path / MODEL_CONFIG).read_text()))
        model.load_state_dict(load_file(path / MODEL_FILE))
        return model.eval()


@dataclass
class PreferencePairs:
    """Pairs of candidates from the same prefix (N pairs, H feature size).

    Attributes:
        context: ``(N, H)`` prefix features (the router's input).
        chosen: ``(N, H)`` features of (prefix, preferred candidate).
        rejected: ``(N, H)`` features of (prefix, other candidate).
        persona: ``(N,)`` index of each pair's persona label (reporting and the Stage-2 budget only).
    """

    context: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    persona: torch.Tensor

    def __len__(self) -> int:
        return self.context.shape[0]

    def subset(self, idx: torch.Tensor) -> PreferencePairs:
        """The pairs ``idx``."""
        return PreferencePairs(self.context[idx], self.chosen[idx], self.rejected[idx], self.persona[idx])

    def margins(self, model: MixtureReward) -> torch.Tensor:
        """``(N, K)`` reward margin of the chosen over the rejected candidate under every head."""
        return model.rewards(self.chosen) - model.rewards(self.rejected)


def candidate_pairs(scores: Sequence[float]) -> list[tuple[int, int]]:
    """``(chosen, rejected)`` index pairs of candidates whose scores differ (ties dropped)."""
    return [(i, j) if scores[i] > scores[j] else (j, i)
            for i in range(len(scores)) for j in range(i + 1, len(scores)) if scores[i] != scores[j]]


def _batches(n: int, size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    return [order[s:s + size] for s in range(0, n, size)]


def fit_stage1(pairs: PreferencePairs, settings: MicroConfig, *, num_heads: int, static: bool = False,
               seed: int = 0) -> MixtureReward:
    """Stage 1: heads and router (or static weights) trained jointly on the mixture likelihood."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MixtureReward(pairs.context.shape[1], num_heads, settings.router_hidden, static=static)
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr)
        generator = torch.Generator().manual_seed(seed)
        for _ in tqdm(range(settings.epochs), desc=f"micro stage 1 (K={num_heads})", leave=False):
            for idx in _batches(len(pairs), settings.batch_size, generator):
                batch = pairs.subset(idx)
                weights = torch.softmax(model.router_logits(batch.context), -1)
                loss = bt_mixture_loss(weights, batch.margins(model), settings.alpha)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model.eval()


def fit_stage2(model: MixtureReward, pairs: PreferencePairs, settings: MicroConfig, *, seed: int = 0) -> MixtureReward:
    """Stage 2: the router alone, by cross-entropy to Hedge targets of a prior fixed for each epoch.

    The per-head losses are the Bradley-Terry log-losses ``-log sigma(margin_k)`` of the frozen
    heads; the targets are ``prior_k exp(-loss_k / tau)`` normalised (003 Eq. 6).
    """
    if model.router is None:
        raise ValueError("Stage 2 fine-tunes a router; the static mixture has none.")
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        losses = -F.logsigmoid(pairs.margins(tuned))  # (N, K), the heads stay frozen
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        optimizer = torch.optim.AdamW(tuned.router.parameters(), lr=settings.lr)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(settings.stage2_epochs):
            with torch.no_grad():
                prior = torch.softmax(tuned.router_logits(pairs.context), -1)  # recomputed once per epoch
            targets = hedge_targets(prior, losses, settings.tau)
            for idx in _batches(len(pairs), settings.batch_size, generator):
                loss = soft_cross_entropy(tuned.router_logits(pairs.context[idx]), targets[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return tuned.eval()


def per_label_budget(pairs: PreferencePairs, budget: int, seed: int) -> PreferencePairs:
    """At most ``budget`` pairs per persona label, drawn without replacement (as ``router.budget_indices``)."""
    return pairs.subset(torch.tensor(budget_indices(pairs.persona.tolist(), budget, seed), dtype=torch.long))


@torch.no_grad()
def pairwise_accuracy(model: MixtureReward, pairs: PreferencePairs, labels: Sequence[str]) -> dict[str, Any]:
    """Share of pairs whose chosen candidate the model prefers, per persona label and overall.

    ``routed`` thresholds the mixture probability ``sum_k f_k sigma(margin_k)`` at 0.5; ``per_head``
    gives each head's own accuracy (``sigma(margin_k) > 0.5``), from which an oracle picks the best
    head per label; ``count`` is the number of pairs per label.
    """
    margins = pairs.margins(model)  # (N, K)
    weights = torch.softmax(model.router_logits(pairs.context), -1)
    routed = ((weights * torch.sigmoid(margins)).sum(-1) > 0.5).float()
    heads = (margins > 0).float()
    out: dict[str, Any] = {"routed": {}, "per_head": {}, "count": {}}
    for i, label in enumerate(labels):
        mask = pairs.persona == i
        if mask.any():
            out["routed"][label] = float(routed[mask].mean())
            out["per_head"][label] = heads[mask].mean(0).tolist()
            out["count"][label] = int(mask.sum())
    out["routed"]["all"] = float(routed.mean()) if len(pairs) else float("nan")
    return out


# ----------------------------------------------------------------------------------------------
# Best-of-N reranking: MiCRo as a policy (a benchmark row)
# ----------------------------------------------------------------------------------------------


class BestOfN:
    """A ``generate`` decoder: every head and the equal blend write a candidate, the reward model picks one.

    Args:
        reward: The MiCRo reward model (router and heads).
        tokenizer: The policy's tokenizer (the reward model reads prompt and candidate as text).
        source_names: Names of the candidate sources for the statistics (the heads, then the blend).
    """

    def __init__(self, reward: MixtureReward, tokenizer, source_names: Sequence[str]):
        self.reward, self.tokenizer, self.source_names = reward, tokenizer, list(source_names)
        self.picks = dict.fromkeys(self.source_names, 0)

    @torch.no_grad()
    def decode(self, policy, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
               min_new_tokens: int, temperature: float, eos_ids: Sequence[int],
               pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples one candidate per source for every prompt and keeps the best-scored one."""
        selections = [{"head": d} for d in range(policy.num_heads)] + [{}]
        outputs = []
        for selection in selections:
            with policy.use(**selection):
                outputs.append(sample_dropping_finished(
                    policy.model, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                    min_new_tokens=min_new_tokens, temperature=temperature, top_p=1.0, eos_ids=eos_ids, pad_id=pad_id))
        prompts = [self.tokenizer.decode(ids[m.bool()], skip_special_tokens=False)
                   for ids, m in zip(input_ids, attention_mask)]
        features = RouterFeatures(policy, self.tokenizer)
        context = features(prompts)
        scores = []
        for tokens, _ in outputs:
            texts = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
            pair = features([p + t.strip() for p, t in zip(prompts, texts)])
            scores.append(self.reward.score(context.to(pair.dtype), pair))
        best = torch.stack(scores).argmax(0)  # (B,)
        for b in best.tolist():
            self.picks[self.source_names[b]] += 1
        width = max(t.shape[1] for t, _ in outputs)
        tokens = torch.stack([F.pad(t, (0, width - t.shape[1]), value=pad_id) for t, _ in outputs])  # (S, B, T)
        logprobs = torch.stack([F.pad(lp, (0, width - lp.shape[1])) for _, lp in outputs])
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return tokens[best.to(tokens.device), rows], logprobs[best.to(tokens.device), rows]

    def statistics(self) -> dict[str, Any]:
        """How often each source's candidate was picked."""
        total = sum(self.picks.values()) or 1
        return {f"picked {name}": round(n / total, 3) for name, n in self.picks.items()}


class MicroRerank:
    """Benchmark row: best-of-N over the heads' and the blend's candidates, ranked by MiCRo's routed reward.

    Args:
        path: An ``algorithms.micro`` run folder (or its ``reward/`` folder).
        label: Row label.
        name: Row key.
    """

    def __init__(self, path: str, label: str = "MiCRo best-of-N", name: str = "micro_rerank"):
        self.path, self.label, self.name = path, label, name

    def build(self, ctx) -> list:
        """One row decoded by :class:`BestOfN`."""
        folder = Path(self.path)
        reward = MixtureReward.from_pretrained(folder / "reward" if (folder / "reward").is_dir() else folder)
        if reward.hparams["input_dim"] != ctx.policy.config.hidden_size:
            raise ValueError(f"The reward model at {self.path} reads {reward.hparams['input_dim']}-d features; the "
                             f"policy's are {ctx.policy.config.hidden_size}-d. Train it on this policy.")
        decoder = BestOfN(reward.to(ctx.device), ctx.tokenizer, [*ctx.policy.head_names, "blend"])
        return [Contender(self.name, self.label, {"decoder": decoder}, statistics=decoder.statistics)]


# ----------------------------------------------------------------------------------------------
# Data from a router run, and the run
# ----------------------------------------------------------------------------------------------


def load_candidates(folder: str | Path) -> list[dict[str, Any]]:
    """The scored prefixes of a router run (``data.jsonl``), refusing a run without candidates."""
    path = Path(folder) / "data.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: candidates= must be a router run folder (algorithms.router).")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows or any(r.get("candidates") is None or r.get("head_scores") is None for r in rows):
        raise ValueError(f"{folder} has no scored candidates: train that router with router.method=pairwise, "
                         "hedge or micro, which write one candidate per head and one from the blend.")
    return rows


def prompt_text(tokenizer, task, observation) -> str:
    """The policy's prompt for ``observation`` as text, ready for the next turn (what a candidate follows)."""
    return tokenizer.apply_chat_template(task.policy_messages(observation), tokenize=False,
                                         add_generation_prompt=True)


def build_pairs(rows: Sequence[dict[str, Any]], features: RouterFeatures, task,
                labels: Sequence[str]) -> PreferencePairs:
    """Features of every (chosen, rejected) candidate pair of the rows."""
    prompts = [prompt_text(features.tokenizer, task, r["observation"]) for r in rows]
    context = features(prompts)
    index = [(i, c, r) for i, row in enumerate(rows)
             for c, r in candidate_pairs(list(row["head_scores"]) + [row["blend_score"]])]
    if not index:
        raise ValueError("Every candidate of every prefix got the same score: there is no pair to learn from.")
    texts = {(i, c): prompts[i] + rows[i]["candidates"][c] for i, c, r in index}
    texts.update({(i, r): prompts[i] + rows[i]["candidates"][r] for i, c, r in index})
    keys = list(texts)
    pair_features = dict(zip(keys, features([texts[k] for k in keys])))
    return PreferencePairs(
        context=context[[i for i, _, _ in index]],
        chosen=torch.stack([pair_features[(i, c)] for i, c, _ in index]),
        rejected=torch.stack([pair_features[(i, r)] for i, _, r in index]),
        persona=torch.tensor([list(labels).index(rows[i]["persona"]) for i, _, _ in index]),
    )


def report_markdown(results: dict[str, dict[str, Any]], labels: Sequence[str], counts: dict[str, int]) -> str:
    """Pairwise accuracy per persona label for every model (MiCRo's Table 2 shape)."""
    columns = [*labels, "all"]
    rows = [[name, *(f"{res.get(c, float('nan')):.3f}" for c in columns)] for name, res in results.items()]
    head = (f"Pairwise accuracy on the validation pairs ({counts['val']} pairs; {counts['train']} training "
            f"pairs, {counts['stage2']} in the Stage-2 budget). The best-head row picks, for each label, the "
            "Stage-1 head that does best on it (an oracle, as MiCRo's Stage-1 figure).\n\n")
    return head + "\n".join(markdown_table(["Model", *columns], rows)) + "\n"


def _pairs_state(pairs: PreferencePairs) -> dict[str, torch.Tensor]:
    return {"context": pairs.context, "chosen": pairs.chosen, "rejected": pairs.rejected, "persona": pairs.persona}


def _model_state(model: MixtureReward) -> dict[str, Any]:
    return {"hparams": dict(model.hparams), "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def _model(state: dict[str, Any]) -> MixtureReward:
    model = MixtureReward(**state["hparams"])
    model.load_state_dict(state["weights"])
    return model.eval()


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """What decides a MiCRo run's results: a journal written with other values belongs to another run."""
    keys = ("seed", "env", "policy", "candidates", "micro")
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg.get(k), DictConfig) else cfg.get(k)
            for k in keys}


def train(cfg: DictConfig, out_dir: str | Path, *, resume: bool = False,
          on_record: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Trains MiCRo and its baselines on a router run's candidates and writes the report.

    Every stage (the feature pairs of each split, each fitted model) is kept in the folder's journal
    as it finishes (:class:`algorithms.journal.Journal`), so a killed run continues with
    ``resume=True`` and ends with the same models and report.
    """
    for key in ("policy", "candidates"):
        if OmegaConf.is_missing(cfg, key) or not cfg.get(key):
            raise ValueError(f"Set {key}=<folder> (policy: the OPSD run; candidates: a router run with candidates).")
    settings = structured(MicroConfig, cfg.micro, "micro")
    out_dir = Path(out_dir)
    if not resume:
        claim_run_dir(out_dir, overwrite=bool(cfg.get("overwrite")), resume_hint=f"resume={out_dir}")
    task = build_task(cfg)
    check_servers(*task.chat_plugins())  # a server that is down: one message, before any loading
    policy, tokenizer, _ = load_run(cfg.policy, resolve_device(cfg.device), current=cfg)
    journal = Journal(out_dir, run_identity(cfg), on_record=on_record)
    write_config(cfg, out_dir / "config.yaml")
    labels = [p.name for p in task.personas]
    rows = load_candidates(cfg.candidates)
    features = RouterFeatures(policy, tokenizer, show_progress=True)
    pairs = {split: PreferencePairs(**journal.unit(f"pairs/{split}", lambda split=split: _pairs_state(build_pairs(
        [r for r in rows if r["split"] == split], features, task, labels)), tensors=True))
        for split in ("train", "val")}
    train_pairs, val_pairs = pairs["train"], pairs["val"]
    seed = int(cfg.seed)

    def stage(name: str, fit: Callable[[], MixtureReward]) -> MixtureReward:
        return _model(journal.unit(f"fit/{name}", lambda: _model_state(fit()), tensors=True))

    single = stage("single", lambda: fit_stage1(train_pairs, settings, num_heads=1, seed=seed))
    static = stage("static", lambda: fit_stage1(train_pairs, settings, num_heads=settings.num_heads, static=True,
                                                seed=seed))
    stage1 = stage("stage1", lambda: fit_stage1(train_pairs, settings, num_heads=settings.num_heads, seed=seed))
    budgeted = per_label_budget(train_pairs, settings.budget, seed)
    stage2 = stage("stage2", lambda: fit_stage2(stage1, budgeted, settings, seed=seed))
    stage2.save_pretrained(out_dir / "reward")
    acc = {name: pairwise_accuracy(m, val_pairs, labels) for name, m in
           (("single", single), ("static", static), ("stage1", stage1), ("stage2", stage2))}
    best = {label: max(acc["stage1"]["per_head"].get(label, [float("nan")])) for label in labels}
    counts_per_label = acc["stage1"]["count"]
    if counts_per_label:  # the oracle over all pairs: each label's pairs scored by that label's best head
        best["all"] = sum(best[label] * n for label, n in counts_per_label.items()) / sum(counts_per_label.values())
    results = {"Single Bradley-Terry head": acc["single"]["routed"], "Static mixture": acc["static"]["routed"],
               "Best Stage-1 head per label (oracle)": best, "MiCRo, Stage 1": acc["stage1"]["routed"],
               "MiCRo, Stage 2 (Hedge, budget)": acc["stage2"]["routed"]}
    counts = {"train": len(train_pairs), "val": len(val_pairs), "stage2": len(budgeted)}
    markdown = report_markdown(results, labels, counts)
    (out_dir / "micro.md").write_text(markdown)
    summary = {"policy": str(cfg.policy), "candidates": str(cfg.candidates), "settings": asdict(settings),
               "pairs": counts, "accuracy": results, "per_head": {k: v["per_head"] for k, v in acc.items()},
               "reward_dir": str(out_dir / "reward")}
    write_json(out_dir / "summary.json", summary)
    summary["markdown"] = markdown
    return summary


# the top-level keys this entry point reads (any other is refused by name)
TOP_LEVEL_KEYS = ("seed", "device", "env", "policy", "candidates", "micro", "resume", "overwrite")


store_settings("micro_settings", "default", MicroConfig)


@hydra.main(version_base="1.3", config_path="../configs", config_name="micro")
def _main(cfg: DictConfig) -> None:
    check_top_level(cfg, TOP_LEVEL_KEYS)
    cfg, out_dir, resume = resumable_config(cfg)
    summary = train(cfg, out_dir, resume=resume)
    print(summary["markdown"])
    print(f"[micro] reward model and report in {out_dir}")


def main() -> None:
    """Entry point: registers the structured configs, then lets Hydra compose and run."""
    register()
    _main()


if __name__ == "__main__":
    main()
