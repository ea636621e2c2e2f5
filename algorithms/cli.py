"""Command-line glue shared by the trainers' entry points (``python -m algorithms.opsd``, ``.rlvr``).

- ``hydra.run.dir`` resolves through :func:`run_dir` (the ``pg_run_dir`` resolver): ``resume=`` and
  ``evaluate=`` name an existing run folder, checked before Hydra makes any folder;
- :func:`run_config` swaps in a resumed or evaluated run's own ``config.yaml`` (command-line
  overrides still apply);
- :func:`evaluate_run` evaluates a finished run's saved policy again;
- :func:`run` is the body of every trainer's ``main``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from transformers import AutoTokenizer

from agents import MultiHeadPolicy
from agents.models import resolve_device
from algorithms.components import agent_config, build_task
from algorithms.evaluation import evaluate_policy
from algorithms.trainer import Trainer, fit
from configs import check_top_level
from configs.trust import load_saved_config
from configs.validation import structured

RUN_KEYS = ("seed", "device", "resume", "evaluate", "overwrite", "env", "agent", "algorithm", "ray")


def run_dir(resume: str | None, evaluate: str | None, fresh: str) -> str:
    """hydra.run.dir: the run folder named by resume= / evaluate=, else a fresh one (never a stray folder)."""
    if resume and evaluate:
        raise ValueError("Pass resume= or evaluate=, not both.")
    target = resume or evaluate
    if target and not (Path(target) / "config.yaml").is_file():
        raise ValueError(f"{'resume' if resume else 'evaluate'}={target} is not a run folder (no config.yaml "
                         "there); pass the folder a run wrote, e.g. runs/opsd/<date_time>.")
    return target or fresh


if not OmegaConf.has_resolver("pg_run_dir"):
    OmegaConf.register_new_resolver("pg_run_dir", run_dir)


def saved_run_config(cfg: DictConfig, folder: Path, reset: tuple[str, ...] = ()) -> DictConfig:
    """A run folder's own ``config.yaml`` (vetted: no unregistered ``_target_``) for this invocation.

    Args:
        cfg: The config composed for this invocation.
        folder: The run folder.
        reset: Keys set to null first: per-process settings that stopped the earlier process
            (e.g. ``algorithm.stop_after``), not this one.

    Returns:
        The saved config with this command line's dotted overrides applied on top (e.g.
        ``algorithm.steps=80``); ``resume``/``evaluate`` themselves are not copied.
    """
    run_cfg = load_saved_config(folder / "config.yaml", current=cfg)  # refuses unregistered _target_s
    for key in reset:
        if OmegaConf.select(run_cfg, key, default=None) is not None:
            OmegaConf.update(run_cfg, key, None)
    for override in HydraConfig.get().overrides.task:
        key = override.partition("=")[0].lstrip("+~")
        if key not in ("resume", "evaluate") and "." in key:
            # the saved file keeps the env's links to the plug-ins (``env.student: ${student}``), so
            # ``student.noise=0.2`` reaches the student the env is built with
            OmegaConf.update(run_cfg, key, OmegaConf.select(cfg, key), force_add=True)
    return run_cfg


def run_config(cfg: DictConfig) -> tuple[DictConfig, Path, str]:
    """Chooses the run folder and config: a new run, a resumed one, or an evaluation."""
    target = cfg.get("resume") or cfg.get("evaluate")
    if not target:
        return cfg, Path(HydraConfig.get().runtime.output_dir), "train"
    folder = Path(target)
    run_cfg = saved_run_config(cfg, folder, reset=("algorithm.stop_after",))
    return run_cfg, folder, "resume" if cfg.get("resume") else "evaluate"


def resumable_config(cfg: DictConfig) -> tuple[DictConfig, Path, bool]:
    """For the entry points that take ``resume=`` (router, benchmark, micro): config, folder, and whether to resume."""
    if not cfg.get("resume"):
        return cfg, Path(HydraConfig.get().runtime.output_dir), False
    folder = Path(cfg.resume)
    return saved_run_config(cfg, folder), folder, True


def evaluate_run(trainer_cls: type[Trainer], cfg: DictConfig, folder: Path) -> dict[str, Any]:
    """Evaluates the saved policy of a finished run with the run's own task and evaluation settings."""
    device = resolve_device(cfg.device)
    policy_dir = folder / "policy"
    if not (policy_dir / "pluralgym_policy.json").is_file():
        raise FileNotFoundError(f"{folder} has no trained policy/ yet; finish it first with resume={folder}.")
    policy = MultiHeadPolicy.from_pretrained(policy_dir, device=device)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    tokenizer.padding_side = "left"
    settings = structured(trainer_cls.config_cls, cfg.algorithm, "algorithm")
    task = build_task(cfg)
    heads = [policy.head_names.index(p.name) if p.name in policy.head_names else 0 for p in task.personas]
    base = None
    if settings.eval.baselines:
        backbone = agent_config(cfg).load(device)
        backbone.tokenizer.padding_side = "left"
        base = (backbone.model, backbone.tokenizer)
    return evaluate_policy(policy, tokenizer, task, settings.eval, folder, head_for_persona=heads, base=base)


def run(trainer_cls: type[Trainer], cfg: DictConfig) -> None:
    """Trains, resumes or evaluates, as the command line asks, and prints where the results are."""
    check_top_level(cfg, RUN_KEYS)
    cfg, folder, mode = run_config(cfg)
    if mode == "evaluate":
        result = evaluate_run(trainer_cls, cfg, folder)
        print(result["markdown"])
        print(f"[{trainer_cls.name}] {result['split']} split report in {folder / (result['split'] + '.md')}")
        return
    summary = fit(trainer_cls, cfg, folder, resume=mode == "resume")
    name = trainer_cls.name
    print(f"\n[{name}] run folder: {folder}")
    print(f"[{name}] steps {summary['step']}/{summary['steps']}, training wall {summary['wall_s_total']} s, "
          f"peak memory {summary['peak_memory_mb']} MiB")
    if "eval" in summary:
        print((folder / f"{summary.get('eval_split', 'eval')}.md").read_text())
