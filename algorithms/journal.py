"""Finished units of work of a long run, kept as they finish, so a killed run resumes where it stopped.

The trainers checkpoint their whole state every few steps (:mod:`algorithms.checkpoint`). The other
long entry points (router learning, the benchmark, MiCRo) do a sequence of independent units: play
a batch of episodes, score a batch of candidates, play one row's dialogues, fit one stage. A
:class:`Journal` records each unit's result the moment it is done:

- ``journal.jsonl`` in the run folder: its first line names the run (its identity: the settings
  that decide the results); every later line is one finished unit, ``{"unit": key, "value": ...}``,
  written with one ``write`` and an ``fsync``. JSON only: nothing is ever unpickled.
- units that hold tensors are one :func:`algorithms.checkpoint.save_checkpoint` file each under
  ``units/`` (written atomically), named by their line in the journal.

A kill during a write loses at most the unit being written: a last line cut short is ignored (and
cut off before the next append), so a resumed run never records a unit twice. A journal written by
another run (a different identity) is refused, and a line that is not JSON anywhere but at the end
is reported as damage with what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from algorithms.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from algorithms.runs import RunFolderError, plain

JOURNAL = "journal.jsonl"
UNITS = "units"
KILL_AT = "PLURALGYM_KILL_AT_UNIT"  # a unit key: the process kills itself (SIGKILL) once that unit is kept


class Journal:
    """The finished units of one run (see the module docstring).

    Args:
        run_dir: The run folder.
        identity: JSON-compatible settings that decide the run's results; a journal already in the
            folder must have been written with the same identity.
        on_record: Called with each unit's key after it is on disk (tests stop a run there).
    """

    def __init__(self, run_dir: str | Path, identity: dict[str, Any],
                 on_record: Callable[[str], None] | None = None):
        self.path = Path(run_dir) / JOURNAL
        self.units_dir = Path(run_dir) / UNITS
        self.identity = json.loads(json.dumps(plain(identity), sort_keys=True))
        self.on_record = on_record
        self._values: dict[str, Any] = {}
        if self.path.is_file():
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append({"identity": self.identity})

    # ---- reading ----------------------------------------------------------------------------

    def _load(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        complete = raw.endswith(b"\n")
        good, named = 0, False  # bytes of whole lines; whether the identity line was read
        for i, line in enumerate(lines):
            if not line:
                continue
            last = i == len(lines) - 1 or (i == len(lines) - 2 and not lines[-1])
            try:
                row = json.loads(line)
            except ValueError:
                if last and not complete:  # cut short by a kill mid-write: that unit is lost, nothing else
                    break
                raise CheckpointError(f"{self.path} is damaged at line {i + 1}; delete the run folder's {JOURNAL} "
                                      f"and {UNITS}/ to start the run over.") from None
            if i == 0:
                named = True
                if row.get("identity") != self.identity:
                    raise RunFolderError(
                        f"{self.path.parent} holds another run (its {JOURNAL} was written with other settings); "
                        "resume it with its own settings, or choose another folder.")
            else:
                self._values.setdefault(row["unit"], row["value"])
            good += len(line) + 1
        if good < len(raw):
            with self.path.open("r+b") as f:  # drop the cut-short tail before appending again
                f.truncate(good)
        if not named:  # killed while writing the very first line
            self._append({"identity": self.identity})

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: str) -> Any:
        """The recorded value of unit ``key`` (tensor units are read back from ``units/``)."""
        value = self._values[key]
        if isinstance(value, dict) and "__unit_file__" in value:
            return load_checkpoint(self.units_dir / value["__unit_file__"])
        return value

    # ---- writing ----------------------------------------------------------------------------

    def _append(self, row: dict[str, Any]) -> None:
        data = (json.dumps(plain(row), allow_nan=False) + "\n").encode()
        with self.path.open("ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def record(self, key: str, value: Any, *, tensors: bool = False) -> Any:
        """Records unit ``key`` as finished with ``value`` (JSON data; ``tensors=True`` for a state with tensors).

        Returns:
            ``value`` as a resumed run reads it back (JSON data comes back as parsed JSON: lists for
            tuples, string keys), so a run goes on with the same values whether it was resumed or not.
        """
        if key in self._values:
            raise ValueError(f"unit {key!r} is already recorded in {self.path}")
        stored = value = value if tensors else json.loads(json.dumps(plain(value), allow_nan=False))
        if tensors:
            self.units_dir.mkdir(exist_ok=True)
            name = hashlib.sha1(key.encode()).hexdigest()[:16] + ".safetensors"
            save_checkpoint(self.units_dir / name, value)
            stored = {"__unit_file__": name}
        self._append({"unit": key, "value": stored})
        self._values[key] = stored
        if self.on_record is not None:
            self.on_record(key)
        if os.environ.get(KILL_AT) == key:  # fault injection for tests: die as kill -9 would, right here
            os.kill(os.getpid(), signal.SIGKILL)
        return value

    def unit(self, key: str, compute: Callable[[], Any], *, tensors: bool = False) -> Any:
        """The value of unit ``key``: recorded earlier, or computed now and recorded."""
        if key in self:
            return self.get(key)
        return self.record(key, compute(), tensors=tensors)
