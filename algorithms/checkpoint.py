"""Checkpoints that load without running any code: tensors in safetensors, everything else as JSON.

A checkpoint is one ``.safetensors`` file. Its tensors are the state's tensors (trainable weights,
optimiser moments, the torch random state); its metadata holds the rest of the state as JSON
(counters, the scheduler, learning rates, random states of Python and numpy, live episode states).
Loading parses JSON and reads raw tensor bytes; unlike a pickle, nothing in the file can make the
loader execute code, so a run folder from someone else is safe to resume.

JSON cannot say everything Python state needs, so four shapes are encoded explicitly: tensors
(``{"__tensor__": name}``), tuples (``{"__tuple__": [...]}``), dicts whose keys are not all strings
(``{"__items__": [[key, value], ...]}``, e.g. optimiser state keyed by parameter index) and
non-finite floats (``{"__float__": "nan"}``). Anything else (an arbitrary object) is refused when
saving, so a checkpoint never silently loses part of the state.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "pluralgym-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or of another format; the message names the file and what to do."""


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if torch.is_tensor(value):
        tensors[path] = value.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, f"{path}.{k}", tensors) for k, v in value.items()}
        return {"__items__": [[_encode(k, f"{path}.k{i}", tensors), _encode(v, f"{path}.{i}", tensors)]
                              for i, (k, v) in enumerate(value.items())]}
    raise TypeError(f"cannot store {type(value).__name__} at '{path}' in a checkpoint: only tensors, numbers, "
                    "strings, None, lists, tuples and dicts are allowed")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
    if "__float__" in value:
        return float(value["__float__"])
    return {k: _decode(v, tensors) for k, v in value.items()}


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Writes ``state`` to ``path`` atomically (a crash mid-write leaves the previous file intact).

    Args:
        path: The checkpoint file (``.safetensors``).
        state: Nested dicts/lists/tuples of tensors, numbers, strings and None.

    Returns:
        The path written.
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    plain = _encode(state, "state", tensors)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp, metadata={"format": FORMAT, "state": json.dumps(plain, allow_nan=False)})
    with tmp.open("rb") as f:  # the bytes are on disk before the rename makes them the checkpoint
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint` (no code in the file is ever run).

    Raises:
        CheckpointError: If the file is missing, truncated, damaged or not a pluralgym checkpoint,
            with a message that names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        return _decode(json.loads(meta["state"]), tensors)
    except Exception as err:  # noqa: BLE001 - any parse failure means the same thing to the user
        raise CheckpointError(
            f"{path} is damaged or is not a pluralgym checkpoint ({type(err).__name__}: {str(err)[:200]}). "
            f"Delete it to restart this run from step 0 with the same command, or start a new run; "
            f"its policy/ folder, if any, is unaffected."
        ) from None


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Deletes ``*.tmp`` files an interrupted write left in ``folder``; returns what it removed."""
    removed = [p for p in Path(folder).glob("*.tmp") if p.is_file()]
    for p in removed:
        p.unlink()
    return removed


# ----------------------------------------------------------------------------------------------
# Random states
# ----------------------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """The global random states of Python, numpy and torch (and CUDA when present), as checkpointable data."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"] = {"key": numpy_state["state"]["key"].tolist(), "pos": int(numpy_state["state"]["pos"])}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restores random states captured by :func:`capture_rng`."""
    random.setstate(state["python"])
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {"key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32),
                            "pos": numpy_state["state"]["pos"]}
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
