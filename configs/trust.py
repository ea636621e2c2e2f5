"""Saved configs are data: a config read from a folder may only name plug-ins the project knows.

A run folder's ``config.yaml`` is handed around (shared drives, archives, colleagues), and Hydra's
``instantiate`` calls whatever ``_target_`` a config names, ``torch.load`` included. So every config
read back from a folder (``resume=``, ``evaluate=``, ``policy=``...) goes through
:func:`load_saved_config`, which refuses it, before anything is built, unless each ``_target_`` in it
is one of:

- a registered plug-in: a ``_target_`` in a node of Hydra's config store (the project's students,
  judges, critics, chat clients, tasks, benchmark rows) or in a YAML file shipped in ``configs/``;
- a target named in the config composed for *this* invocation, i.e. on its command line
  (``student=custom student._target_=mypkg.MyStudent``);
- a target listed in ``allow_targets=[...]`` on this invocation's command line. That switch is read
  from the composed config only; the copy a run folder saved is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from configs.validation import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent
ALLOW_KEY = "allow_targets"
# Hydra's own config groups (launchers, sweepers, loggers) are not plug-ins a run config can name.
_SKIPPED_GROUPS = ("hydra",)
# Module paths the project moved: a run folder saved before the move names the old path, which is
# rewritten to the new one before vetting (the new path must then be a registered plug-in as usual).
MOVED_MODULES = {"algorithms.tasks.": "envs.tasks."}


class UntrustedConfigError(ConfigError):
    """A saved config names a ``_target_`` that is not a registered plug-in; nothing was called."""


def iter_targets(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Yields ``(key path, target)`` for every ``_target_`` in nested dicts and lists.

    Args:
        node: A plain container (dicts and lists), e.g. ``OmegaConf.to_container(cfg)``.
        path: The key path of ``node`` (for messages).
    """
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}{key}"
            if key == "_target_":
                yield where, value if isinstance(value, str) else repr(value)
            else:
                yield from iter_targets(value, where + ".")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from iter_targets(value, f"{path}{i}.")


def _config_targets(cfg: Any) -> set[str]:
    """The ``_target_`` strings of a config (unresolvable or missing values are skipped)."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    return {target for _, target in iter_targets(cfg) if "${" not in target and target != "???"}


def registered_targets() -> set[str]:
    """Every ``_target_`` the project registers: config-store nodes and the YAML files in ``configs/``."""
    from hydra.core.config_store import ConfigStore

    import configs

    configs.register()
    found: set[str] = set()

    def walk(tree: dict[str, Any]) -> None:
        for name, entry in tree.items():
            if isinstance(entry, dict):
                if name not in _SKIPPED_GROUPS:
                    walk(entry)
            elif getattr(entry, "node", None) is not None:
                found.update(_config_targets(entry.node))

    walk(ConfigStore.instance().repo)
    for path in CONFIG_DIR.rglob("*.yaml"):
        found.update(_config_targets(OmegaConf.load(path)))
    return found


def allowed_targets(current: Any = None) -> set[str]:
    """The targets a saved config may name in this invocation.

    Args:
        current: The config composed for this invocation (shipped defaults plus its command line),
            or None outside an entry point. Its targets and its ``allow_targets`` list are allowed.
    """
    allowed = registered_targets()
    if current is not None:
        extra = OmegaConf.select(current, ALLOW_KEY, default=None) if isinstance(current, DictConfig) else (
            current.get(ALLOW_KEY) if isinstance(current, dict) else None)
        allowed |= {str(t) for t in (extra or [])}
        allowed |= _config_targets(current)
    return allowed


def check_saved_config(cfg: DictConfig, source: str | Path, allowed: Iterable[str]) -> None:
    """Refuses ``cfg`` (read from ``source``) if any of its ``_target_`` values is not in ``allowed``.

    Interpolations are resolved first, so a target cannot hide behind one; a config whose
    interpolations cannot be resolved is refused too.

    Raises:
        UntrustedConfigError: naming the key, the target and how to allow it on purpose.
    """
    allowed = set(allowed)
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception as err:  # noqa: BLE001 - any resolver failure means we cannot vet the file
        raise UntrustedConfigError(
            f"{source} cannot be checked: an interpolation in it does not resolve ({err}). A run's config.yaml "
            "links only to its own settings; this file was edited.") from None
    for key, target in iter_targets(plain):
        if key.split(".")[0] == ALLOW_KEY or target in allowed:
            continue
        raise UntrustedConfigError(
            f"{source}: {key} = {target!r} is not a registered plug-in, so it was not called. A saved config is "
            "data: it may only name the project's plug-ins or ones named on this command line. If you wrote this "
            f"class yourself and trust the folder, allow it for this invocation with {ALLOW_KEY}=[{target}] "
            f"(or name it again, e.g. {key.rsplit('.', 1)[0] or 'node'}._target_={target}).")


def _moved(node: Any) -> Any:
    """``node`` (plain dicts and lists) with every ``_target_`` under a moved module renamed."""
    if isinstance(node, dict):
        out = {k: _moved(v) for k, v in node.items()}
        target = out.get("_target_")
        if isinstance(target, str):
            for old, new in MOVED_MODULES.items():
                if target.startswith(old):
                    out["_target_"] = new + target[len(old):]
        return out
    if isinstance(node, list):
        return [_moved(v) for v in node]
    return node


def load_saved_config(path: str | Path, current: Any = None) -> DictConfig:
    """Reads a saved ``config.yaml`` and vets every ``_target_`` in it (see the module docstring).

    Args:
        path: The file.
        current: The config composed for this invocation (its command line may allow more targets).

    Returns:
        The config, with targets under :data:`MOVED_MODULES` renamed and without the
        ``allow_targets`` it saved (only the current command line's counts).

    Raises:
        UntrustedConfigError: If the file names a target that is not allowed; nothing has been called.
    """
    path = Path(path)
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - YAML or OmegaConf syntax errors
        raise ConfigError(f"{path} is not a readable config ({type(err).__name__}: {err}).") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} is not a run config (a mapping of settings was expected).")
    cfg = OmegaConf.create(_moved(OmegaConf.to_container(cfg, resolve=False)))
    check_saved_config(cfg, path, allowed_targets(current))
    if ALLOW_KEY in cfg:
        with_flag = OmegaConf.to_container(cfg, resolve=False)
        with_flag.pop(ALLOW_KEY)
        cfg = OmegaConf.create(with_flag)
    return cfg
