"""Building a run's pieces (task, judges, policy) from the composed Hydra config.

Shared by the trainer, its rollout workers (which rebuild the same pieces in their own process),
the router learner and the benchmark.
"""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from agents import MultiHeadPolicy, load_backbone
from algorithms.tasks import TutoringTask

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def read_config(cls: type, node: DictConfig | None, *, where: str, compare_with: str, drop: tuple[str, ...] = ()):
    """Reads a config node into the dataclass ``cls``, naming any unknown or missing key.

    Args:
        cls: The dataclass (its ``__post_init__`` checks the values).
        node: The node (``None`` reads as empty).
        where: The node's name in error messages (``algorithm``, ``ray``...).
        compare_with: The YAML file that holds the defaults, named in error messages.
        drop: Keys of the node that are not fields of ``cls``.

    Raises:
        ValueError: ``Bad <where> config: ...`` for an unknown or missing key.
    """
    values = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    for key in drop:
        values.pop(key, None)
    try:
        return cls(**values)
    except TypeError as err:
        raise ValueError(f"Bad {where} config: {err}. Compare with {compare_with}.") from None


def build_judges(judge_cfg: DictConfig) -> tuple[Any, Any]:
    """Instantiates the (style, satisfaction) judges; a ``judge.client`` is built once and shared."""
    shared = {}
    if judge_cfg.get("client") is not None:
        shared["client"] = instantiate(judge_cfg.client)

    def build(node):
        node = OmegaConf.to_container(node, resolve=False)
        if shared:
            node.pop("client", None)
        return instantiate(node, **shared)

    return build(judge_cfg.style), build(judge_cfg.satisfaction)


def build_task(cfg: DictConfig) -> TutoringTask:
    """Instantiates the task (env adapter, student, judges) from the env/student/judge groups."""
    style, satisfaction = build_judges(cfg.judge)
    return instantiate(cfg.env.task, student=instantiate(cfg.student), satisfaction_judge=satisfaction,
                       style_judge=style)


def build_policy(cfg: DictConfig, persona_names: list[str], variant: str, device: torch.device):
    """Loads the backbone and wraps it with one head per persona (MAH) or one shared head (MT)."""
    agent = cfg.agent
    backbone = load_backbone(agent.model, device=device, dtype=agent.dtype, **dict(agent.get("tiny", None) or {}))
    names = persona_names if variant == "mah" else ["shared"]
    policy = MultiHeadPolicy(backbone.model, num_heads=len(names), head_names=names,
                             init_noise_std=agent.init_noise_std, seed=cfg.seed)
    return policy, backbone.tokenizer


def apply_lora(policy: MultiHeadPolicy, lora: dict | DictConfig) -> MultiHeadPolicy:
    """Wraps the policy's backbone with peft LoRA adapters (``r``, ``alpha``, ``dropout``, ``target_modules``)."""
    from peft import LoraConfig, get_peft_model

    lora = dict(lora or {})
    policy.model = get_peft_model(policy.model, LoraConfig(
        r=lora.get("r", 16), lora_alpha=lora.get("alpha", 32), lora_dropout=lora.get("dropout", 0.0),
        target_modules=list(lora.get("target_modules", LORA_TARGETS)),
    ))
    return policy
