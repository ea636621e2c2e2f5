"""Policies: backbones, multi-head language models, generation and the head router."""

from agents.draft_judge import DraftJudge, DraftJudgeStats
from agents.generation import (
    GenerationOutput,
    completion_logits,
    generate,
    score_completions,
)
from agents.models import Backbone, BackboneError, cache_dir, load_backbone
from agents.multihead import (
    HeadSelection,
    MultiHeadLMHead,
    MultiHeadPolicy,
    PolicyOutput,
)
from agents.router import Router, RouterFeatures, RouterOutput

__all__ = [
    "Backbone",
    "BackboneError",
    "DraftJudge",
    "DraftJudgeStats",
    "GenerationOutput",
    "HeadSelection",
    "MultiHeadLMHead",
    "MultiHeadPolicy",
    "PolicyOutput",
    "Router",
    "RouterFeatures",
    "RouterOutput",
    "cache_dir",
    "completion_logits",
    "generate",
    "load_backbone",
    "score_completions",
]
