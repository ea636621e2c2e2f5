"""Building a run's pieces from the composed Hydra config: the task, the policy, what trains, the optimiser.

Shared by the trainers, their rollout workers (which rebuild the same pieces in their own
process), the router learner and the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from transformers import PreTrainedTokenizerBase

from agents import MultiHeadPolicy
from agents.models import AgentConfig
from configs.validation import check_types, require, structured


def build_task(cfg: DictConfig) -> Any:
    """Instantiates the task of ``cfg.env`` (the env's YAML builds its own student, judges, critics)."""
    return task_from_node(cfg.env)


def task_from_node(node: Any) -> Any:
    """Instantiates a task from its env node (a config node, or the plain data a rollout worker receives)."""
    return instantiate(node, _convert_="partial")


def agent_config(cfg: DictConfig) -> AgentConfig:
    """The ``agent`` node as a checked :class:`agents.models.AgentConfig`."""
    return structured(AgentConfig, cfg.get("agent"), "agent")


class BuiltPolicy(NamedTuple):
    """A freshly built policy.

    Attributes:
        policy: The multi-head policy.
        tokenizer: Its tokenizer.
        base_head: The pretrained output weight ``(V, H)`` the heads were copied from (the input
            embedding for tied models, so no extra memory); the frozen base model's output layer.
    """

    policy: MultiHeadPolicy
    tokenizer: PreTrainedTokenizerBase
    base_head: torch.Tensor


def build_policy(agent: AgentConfig, persona_names: list[str], variant: str, device: torch.device, *,
                 seed: int) -> BuiltPolicy:
    """Loads the backbone and wraps it with one head per persona (``mah``) or one shared head (``mt``).

    Args:
        agent: The parsed ``agent`` settings.
        persona_names: One head per persona (``mah``).
        variant: ``mah`` or ``mt``.
        device: Where the policy goes.
        seed: Seeds the heads' initial noise.
    """
    backbone = agent.load(device)
    base_head = backbone.model.get_output_embeddings().weight
    names = persona_names if variant == "mah" else ["shared"]
    policy = MultiHeadPolicy(backbone.model, num_heads=len(names), head_names=names,
                             init_noise_std=agent.init_noise_std, seed=seed)
    return BuiltPolicy(policy, backbone.tokenizer, base_head)


_BLOCK_LISTS = ("layers", "h", "blocks", "block")  # Llama/Qwen/Mistral/Gemma/Phi/OPT, GPT-2, others
_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm")


def decoder_blocks(model: nn.Module) -> tuple[nn.ModuleList, list[nn.Module]]:
    """The decoder's stack of transformer blocks and its final norm(s), whatever the architecture calls them.

    Raises:
        ValueError: When the model has neither a known block list nor a final norm to train.
    """
    decoder = model.get_decoder()
    blocks = next((getattr(decoder, n) for n in _BLOCK_LISTS if isinstance(getattr(decoder, n, None), nn.ModuleList)),
                  None)
    if blocks is None:
        raise ValueError(f"algorithm.trainable=last_layers cannot find the decoder blocks of {type(model).__name__} "
                         f"(looked for {', '.join(_BLOCK_LISTS)}); use trainable=heads, lora or full.")
    finals = [getattr(decoder, n) for n in _FINAL_NORMS if isinstance(getattr(decoder, n, None), nn.Module)]
    return blocks, finals


_ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def lora_targets(model: nn.Module, requested: Any) -> Any:
    """LoRA's target modules: as requested, else the attention projections (or peft's choice for the model type)."""
    if requested is not None:
        return list(requested)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if set(_ATTENTION_PROJECTIONS) <= names:
        return list(_ATTENTION_PROJECTIONS)
    if getattr(model.config, "model_type", None) in KNOWN:
        return None  # peft picks the usual modules of this model type (GPT-2: c_attn, OPT: q_proj/v_proj)
    return "all-linear"  # a type peft has no list for (Phi-3's fused qkv_proj): every linear layer but the output


@dataclass
class LoRASettings:
    """peft LoRA settings for ``algorithm.trainable=lora`` (node ``algorithm.lora``).

    Attributes:
        r: Adapter rank.
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / r``).
        dropout: Dropout on the adapter input.
        target_modules: Names of the linear layers that get adapters (null: ``q_proj``, ``k_proj``,
            ``v_proj``, ``o_proj`` when the model has them, else peft's usual modules for its type, else
            every linear layer but the output).
    """

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] | None = None

    def __post_init__(self):
        check_types(self, "algorithm.lora")
        require(self.r >= 1, "algorithm.lora.r", self.r, "must be an integer >= 1")
        require(self.alpha > 0, "algorithm.lora.alpha", self.alpha, "must be > 0")
        require(0 <= self.dropout < 1, "algorithm.lora.dropout", self.dropout, "must be in [0, 1)")
        require(self.target_modules is None or len(self.target_modules) > 0, "algorithm.lora.target_modules",
                self.target_modules, "must be null (the attention projections, or peft's choice for the model "
                "type) or name at least one module")


def apply_lora(policy: MultiHeadPolicy, lora: LoRASettings) -> MultiHeadPolicy:
    """Wraps the policy's backbone with peft LoRA adapters (``r``, ``alpha``, ``dropout``, ``target_modules``)."""
    from peft import LoraConfig, get_peft_model

    policy.model = get_peft_model(policy.model, LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora_targets(policy.model, lora.target_modules),
    ))
    return policy


@dataclass
class _Logits:
    logits: torch.Tensor


class AdapterTeacher(nn.Module):
    """The frozen base model as the LoRA policy's own weights with adapters disabled.

    Costs no extra memory for tied models: the backbone is shared, and the base output layer is
    the input embedding matrix (untied models keep the original head).
    """

    def __init__(self, policy: MultiHeadPolicy, base_head: torch.Tensor):
        super().__init__()
        self.policy = policy
        self.base_head = base_head.detach()  # a plain attribute: never trained, never saved

    @torch.no_grad()
    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep: int = 0, **_):
        """Base-model logits for ``input_ids`` (the last ``logits_to_keep`` positions when given)."""
        with self.policy.model.disable_adapter():
            hidden = self.policy.model.get_decoder()(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
        hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        return _Logits(nn.functional.linear(hidden, self.base_head))


def configure_trainable(built: BuiltPolicy, settings: Any, agent: AgentConfig, device: torch.device, *,
                        reference: bool = True) -> nn.Module | None:
    """Freezes what ``settings.trainable`` says and returns the frozen base model (teacher or reference).

    Args:
        built: The policy and its pretrained output weight.
        settings: A trainer config with ``trainable``, ``last_n_layers`` and ``lora``.
        agent: The ``agent`` settings (they load the second copy of the base model).
        device: Where the frozen copy goes.
        reference: Whether the trainer reads a frozen base model at all (False: no copy is loaded).

    Returns:
        The frozen base model: with LoRA the same weights with adapters disabled (no copy),
        otherwise a second, frozen copy of the backbone; None when ``reference`` is False.
    """
    policy = built.policy
    if settings.trainable == "lora":
        apply_lora(policy, settings.lora)
        for p in policy.head_parameters():
            p.requires_grad_(True)
        return AdapterTeacher(policy, built.base_head)
    for p in policy.backbone_parameters():
        p.requires_grad_(settings.trainable == "full")
    if settings.trainable == "last_layers":
        blocks, finals = decoder_blocks(policy.model)
        first = max(0, len(blocks) - settings.last_n_layers)  # all layers when N exceeds the depth
        for module in list(blocks[first:]) + finals:
            for p in module.parameters():
                p.requires_grad_(True)
    if not reference:
        return None
    frozen = agent.load(device).model
    frozen.requires_grad_(False)
    return frozen.eval()


def make_optimizer(param_groups: list[dict]) -> torch.optim.Optimizer:
    """AdamW, fused where torch supports it (8x faster steps over several 28M-parameter heads on CPU)."""
    try:
        return torch.optim.AdamW(param_groups, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(param_groups)


def trainable_state(policy: MultiHeadPolicy) -> dict[str, torch.Tensor]:
    """A CPU copy of every parameter that trains, by name."""
    return {n: p.detach().cpu().clone() for n, p in policy.named_parameters() if p.requires_grad}
