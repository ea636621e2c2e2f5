"""Hydra configuration of the entry points (``python -m algorithms.opsd``, ``.router``, ``.benchmark``).

Where each default lives, once:

- trainer settings: the config dataclasses next to the code that uses them (``OPSDConfig`` in
  ``algorithms/opsd.py``, ``RayConfig`` in ``algorithms/ray_pool.py``, ...). Each module registers
  its own with :func:`store_settings` when it is imported, so this package imports no trainer;
  Hydra checks types when it composes, and their ``__post_init__`` checks ranges before anything
  is loaded. ``AgentConfig`` (``agents/models.py``, a floor below) is registered by :func:`register`.
- plug-ins (students, judges, chat clients, tasks): their constructor signatures. hydra-zen turns
  each signature into a config node, so every argument shows in a run's ``config.yaml`` and can be
  overridden from the command line (``student.noise=0.2``).

The YAML files in this folder only choose components and hold the values a preset changes
(``algorithm=opsd_quick``, the personas of ``env=tutoring``). A key that does not exist fails at
start-up with a message that names it.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback

_registered = False


def _equal(a: Any, b: Any) -> bool:
    """``${pg_equal:a,b}``: whether two config values are equal (e.g. a default that follows another setting)."""
    return str(a) == str(b)


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("pg_equal"):
        OmegaConf.register_new_resolver("pg_equal", _equal)


_register_resolvers()


def store_settings(group: str, name: str, node: type) -> None:
    """Registers a module's settings dataclass as the structured config ``group/name``.

    A trainer module calls this at import for its own settings (``algorithm/opsd``, ``ray/default``),
    so composing its config needs only that module, and ``configs`` never imports a trainer.
    """
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group=group, name=name, node=node)


def register() -> None:
    """Registers the agent settings and every plug-in with Hydra's ConfigStore (idempotent; call before composing)."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore
    from hydra_zen import builds, make_config

    from agents.models import AgentConfig
    from envs.chat import LocalChatClient, OpenAIChatClient
    from envs.chat.server import LOCAL_SERVER_URL
    from envs.judges import (
        HeuristicPairwiseJudge,
        HeuristicSatisfactionJudge,
        HeuristicStyleJudge,
        LLMPairwiseJudge,
        LLMSatisfactionJudge,
        LLMStyleJudge,
    )
    from envs.judges.persona import HeuristicPersonaCritic, HeuristicPersonaEvalJudge, HeuristicRubricExtractor
    from envs.judges.persona_llm import LLMPersonaCritic, LLMPersonaEvalJudge, LLMRubricExtractor
    from envs.students import ChatModelStudent, ScriptedStudent
    from envs.tasks import PersonaTask, TutoringTask
    from envs.tasks.math import MathTask

    def plugin(target: Any, **kwargs: Any) -> Any:
        return builds(target, populate_full_signature=True, **kwargs)

    with_chat = ["_self_", {"/chat@client": "local"}]  # the client node comes from the chat group
    cs = ConfigStore.instance()
    entries = {
        "agent": {"smollm2": AgentConfig},
        # server: the local `python -m envs.chat.server` (no key, whatever single model it serves). On a
        # CPU a busy server takes minutes per batch, and a timed-out attempt is resent while the server
        # still works on it, so attempts get 300 s (at 60 s the quick tutoring run fell into a retry storm).
        "chat": {"local": plugin(LocalChatClient), "openai": plugin(OpenAIChatClient),
                 "server": plugin(OpenAIChatClient, base_url=LOCAL_SERVER_URL, api_key_env=None, model="auto",
                                  timeout=300.0)},
        "student": {"scripted": plugin(ScriptedStudent),
                    "chat_model": plugin(ChatModelStudent, hydra_defaults=with_chat)},
        "judge": {
            "heuristic": make_config(style=plugin(HeuristicStyleJudge),
                                     satisfaction=plugin(HeuristicSatisfactionJudge)),
            "llm": make_config(client=None, style=plugin(LLMStyleJudge, client="${..client}"),
                               satisfaction=plugin(LLMSatisfactionJudge, client="${..client}"),
                               hydra_defaults=with_chat),
        },
        "pairwise_judge": {"heuristic": plugin(HeuristicPairwiseJudge),
                           "llm": plugin(LLMPairwiseJudge, seed="${seed}", hydra_defaults=with_chat)},
        "critic": {"heuristic": plugin(HeuristicPersonaCritic),
                   "llm": plugin(LLMPersonaCritic, hydra_defaults=with_chat)},
        "rubric_extractor": {"heuristic": plugin(HeuristicRubricExtractor),
                             "llm": plugin(LLMRubricExtractor, hydra_defaults=with_chat)},
        "persona_judge": {"heuristic": plugin(HeuristicPersonaEvalJudge),
                          "llm": plugin(LLMPersonaEvalJudge, hydra_defaults=with_chat)},
        "task": {"tutoring": plugin(TutoringTask), "persona": plugin(PersonaTask),
                 "persona_math": plugin(MathTask)},
    }
    for group in ("student", "pairwise_judge", "critic", "rubric_extractor", "persona_judge"):
        # any class: <group>=custom <group>._target_=mypkg.X +<group>.arg=...
        entries[group]["custom"] = {"_target_": "???"}
    for group, options in entries.items():
        for name, node in options.items():
            cs.store(group=group, name=name, node=node)
    _registered = True


# Top-level keys every entry point accepts besides its own: the plug-in nodes that env configs put
# at the top level (``student=...``, ``judge=...``).
PLUGIN_KEYS = ("student", "judge", "pairwise_judge", "critic", "rubric_extractor", "persona_judge")


def check_top_level(cfg: Any, own_keys: tuple[str, ...]) -> None:
    """Refuses top-level keys that nothing reads (``+chat=openai``, ``+learning_rate=...``).

    Args:
        cfg: The composed config.
        own_keys: The entry point's own top-level keys.

    Raises:
        configs.validation.ConfigError: naming the first unknown key, with a hint for ``chat``.
    """
    from configs.validation import ConfigError

    allowed = set(own_keys) | set(PLUGIN_KEYS) | {"hydra", "allow_targets"}
    for key in cfg:
        if key in allowed:
            continue
        if key == "chat":
            raise ConfigError(
                "The top-level key 'chat' is read by nothing: the chat group picks the backend of one plug-in "
                "at a time, e.g. chat@student.client=openai or chat@judge.client=openai (then "
                "student.client.model=... or judge.client.model=...).")
        raise ConfigError(f"Unknown top-level key '{key}'; this entry point reads: {', '.join(sorted(allowed))}.")


def _walk(node: Any, path: str = ""):
    """Yields ``(key path, key, value)`` for every entry of nested dicts and lists."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield f"{path}{key}", str(key), value
        yield from _walk(value, f"{path}{key}.")


class StartupChecks(Callback):
    """A Hydra callback (``hydra.callbacks`` in common.yaml) that vets the composed config before Hydra saves it.

    It runs before the run folder or its ``.hydra/`` copy of the config is written, so an API key
    pasted where the NAME of its environment variable belongs (``...client.api_key_env=sk-...``)
    stops the run without ever reaching a file.
    """

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        """Refuses an API key given where the name of its environment variable belongs."""
        from omegaconf import OmegaConf

        from envs.chat import check_api_key_env

        for path, key, value in _walk(OmegaConf.to_container(config, resolve=False)):
            if key == "api_key_env" and isinstance(value, str) and not value.startswith("${"):
                try:
                    check_api_key_env(value)
                except Exception as err:  # noqa: BLE001
                    # Hydra turns an exception raised by a callback into a warning and goes on to save
                    # the config; SystemExit is the one way to stop it first.
                    print(f"Error: {path}: {err}", file=sys.stderr)
                    raise SystemExit(2) from None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """The same check for a multirun."""
        self.on_run_start(config)
