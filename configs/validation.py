"""Start-up checks of settings: every bad value is named with its key, its value and what is allowed.

The config dataclasses call :func:`check_types` and :func:`require` from their ``__post_init__``,
so a setting that cannot be right stops a run before any model is loaded or any rollout starts,
whether it came from the command line, a YAML preset or Python code.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A setting has a value it cannot have; the message names the key, the value and the rule."""


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    """Raises :class:`ConfigError` ``"<key>=<value> is not allowed: <rule>"`` unless ``ok``.

    Args:
        ok: Whether the value passes.
        key: The full key, e.g. ``algorithm.lr``.
        value: The offending value (shown with ``repr``).
        rule: What is allowed, e.g. ``"must be a number > 0"``.
    """
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {rule}.")


def require_choice(key: str, value: Any, choices: typing.Iterable[Any]) -> None:
    """:func:`require` that ``value`` is one of ``choices``."""
    choices = tuple(choices)
    require(value in choices, key, value, "must be one of " + ", ".join(map(str, choices)))


_TYPE_NAMES = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false",
               list: "a list", dict: "a mapping"}


def _allowed(annotation: Any) -> tuple[tuple[type, ...], bool] | None:
    """The plain types an annotation admits and whether None is allowed (None: not checked)."""
    optional = False
    args: tuple[Any, ...] = (annotation,)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        optional = type(None) in args
        args = tuple(a for a in args if a is not type(None))
    plain = tuple(typing.get_origin(a) or a for a in args)
    if not all(isinstance(a, type) for a in plain):
        return None
    return plain, optional


def check_types(obj: Any, prefix: str) -> None:
    """Checks every field of a dataclass instance against its annotation (plain types only).

    Integers pass where a float is expected; booleans never pass as numbers; floats must be finite.

    Args:
        obj: A dataclass instance.
        prefix: Key prefix for messages (``algorithm`` gives ``algorithm.lr``).

    Raises:
        ConfigError: For the first field whose value has the wrong type.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        allowed = _allowed(hints.get(f.name, Any))
        if allowed is None:
            continue
        plain, optional = allowed
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}"
        if value is None:
            require(optional, key, value, "must be set (null is not allowed)")
            continue
        if isinstance(value, bool) and bool not in plain:
            ok = False
        elif float in plain and isinstance(value, (int, float)):
            ok = math.isfinite(value)
        else:
            ok = isinstance(value, plain)
        names = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in plain) + (" or null" if optional else "")
        require(ok, key, value, f"must be {names}")


def from_values(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    """Builds the config dataclass ``cls`` from plain values, naming unknown keys (nested ones too).

    Args:
        cls: A config dataclass; fields that are dataclasses themselves are built recursively.
        values: The node's values (None reads as empty: every default).
        where: The node's key, for messages (``algorithm``).

    Raises:
        ConfigError: For an unknown key, or any value the dataclass's own checks reject.
    """
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"Unknown key {where}.{unknown[0]}" + (f" (and {unknown[1:]})" if unknown[1:] else "")
                          + f"; the keys of {where} are: {', '.join(known)}.")
    for name, value in values.items():
        if dataclasses.is_dataclass(hints.get(name)) and isinstance(value, dict):
            values[name] = from_values(hints[name], value, f"{where}.{name}")
    return cls(**values)


def structured(cls: type, node: Any, where: str) -> Any:
    """A config node (OmegaConf node, dict or None) as a checked instance of the dataclass ``cls``.

    Works the same for a node composed by Hydra, a run's saved ``config.yaml`` and a plain dict
    shipped to a Ray worker.
    """
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    return from_values(cls, node, where)
