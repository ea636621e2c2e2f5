"""Run folders: what a trainer writes, how a folder is claimed, and how its files stay consistent.

Shared by every entry point (``algorithms.opsd``, ``.router``, ``.benchmark``, ...):

- :func:`write_json` / :func:`json_line` write strict JSON (NaN and infinities become ``null``, which
  every JSON reader accepts);
- :func:`claim_run_dir` refuses to mix a new run into a folder that already holds one;
- :func:`truncate_history` drops ``history.jsonl`` rows written after the last checkpoint, so a
  run resumed after a crash never logs a step twice;
- :func:`peak_memory_mb` reports the process's peak memory.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
from pathlib import Path
from typing import Any

import torch

HISTORY = "history.jsonl"
# What makes a folder a run (a Hydra .hydra/ folder alone does not).
RUN_FILES = ("config.yaml", "history.jsonl", "summary.json", "checkpoint.safetensors", "checkpoint.pt", "policy",
             "tb", "eval.json", "eval.md", "eval.png", "test.json", "test.md", "test.png", "router", "benchmark.json",
             "journal.jsonl", "units", "data.jsonl", "episodes.jsonl", "benchmark.md", "reward", "micro.md")


class RunFolderError(RuntimeError):
    """A run folder cannot be used as asked; the message says what to pass instead."""


def plain(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (recursively through dicts, lists, tuples)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def json_line(record: dict[str, Any]) -> str:
    """One strict-JSON line (NaN written as null)."""
    return json.dumps(plain(record), allow_nan=False) + "\n"


def write_json(path: str | Path, value: Any) -> Path:
    """Writes ``value`` as indented strict JSON (NaN written as null)."""
    path = Path(path)
    path.write_text(json.dumps(plain(value), indent=1, allow_nan=False))
    return path


def write_config(cfg: Any, path: str | Path) -> Path:
    """Writes a run's ``config.yaml``: every setting, with the config's own links kept.

    Links such as the env's ``student: ${student}`` stay links, so a plug-in lives in one place in
    the file too, and ``resume=<run> student.noise=0.2`` changes the student the env is built with.
    Every value the links point to is in the file; loading it (``configs.trust``) resolves them.
    """
    from omegaconf import OmegaConf

    path = Path(path)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=False))
    return path


def claim_run_dir(run_dir: str | Path, *, overwrite: bool, resume_hint: str) -> Path:
    """Makes ``run_dir`` ready for a new run, refusing to mix two runs in one folder.

    Args:
        run_dir: The folder.
        overwrite: Delete an earlier run's files there instead of refusing.
        resume_hint: The command that would resume the run already there (shown in the error).

    Raises:
        RunFolderError: If the folder already holds a run and ``overwrite`` is false.
    """
    run_dir = Path(run_dir)
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if found and not overwrite:
        raise RunFolderError(
            f"{run_dir} already holds a run ({', '.join(found)}). Continue it with {resume_hint}, "
            "choose another folder (hydra.run.dir=...), or pass overwrite=true to delete its files and start over."
        )
    for name in found:
        target = run_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``history.jsonl`` (an unreadable last line, from a kill mid-write, is skipped)."""
    path = Path(run_dir) / HISTORY
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def truncate_history(run_dir: str | Path, last_step: int) -> int:
    """Keeps the rows of ``history.jsonl`` up to ``last_step``; returns how many rows were dropped."""
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return 0
    rows = read_history(run_dir)
    kept = [row for row in rows if int(row.get("step", 0)) <= last_step]
    path.write_text("".join(json_line(row) for row in kept))
    return len(rows) - len(kept)


def peak_memory_mb(device: torch.device | str = "cpu") -> float:
    """Peak resident memory of this process (CPU) or peak allocated GPU memory, in MiB."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
