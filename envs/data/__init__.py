"""Shipped data and loaders.

``tutoring_topics.json`` holds the 78 topics of the Education Dialogue generator
(Shani et al., 2024, arXiv 2405.14655, appendix C), a plain list of names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

DATA_DIR = Path(__file__).resolve().parent


def load_tutoring_topics(path: str | Path | None = None) -> list[str]:
    """Topic names for ``TutoringEnv`` (the shipped list unless ``path`` is given).

    ``path`` may be a JSON file with a ``"topics"`` list (or a bare list) or a text file with
    one topic per line.
    """
    path = Path(path) if path is not None else DATA_DIR / "tutoring_topics.json"
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        topics = data["topics"] if isinstance(data, dict) else data
    else:
        topics = path.read_text(encoding="utf-8").splitlines()
    topics = [str(t).strip() for t in topics if str(t).strip()]
    if not topics:
        raise ValueError(f"no topics found in {path}")
    return topics


def _records(path: Path) -> Iterable[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        for line in text.splitlines():
            if line.strip():
                yield json.loads(line)
        return
    data = json.loads(text)
    if isinstance(data, dict):
        data = data.get("dialogues", data.get("data", [data]))
    yield from data


def load_education_dialogue(paths: str | Path | Iterable[str | Path]) -> list[dict[str, str]]:
    """Tutoring contexts from Education Dialogue files: ``[{"topic": ..., "seed_turn": ...}]``.

    The dialogues themselves are not shipped (licence); users who have the JSON/JSONL shards can
    pass them here and hand the result to ``TutoringEnv(contexts=...)``. Each record must have
    ``background_info.topic`` (or ``topic``) and a ``conversation`` list whose first teacher
    turn (``role``/``speaker`` starting with "teacher", text in ``text``/``content``/``utterance``)
    becomes the seed turn. Records without both are skipped.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    contexts = []
    for path in paths:
        for record in _records(Path(path)):
            if not isinstance(record, dict):
                continue
            info = record.get("background_info") or {}
            topic = info.get("topic") if isinstance(info, dict) else None
            topic = topic or record.get("topic")
            seed = None
            for turn in record.get("conversation") or []:
                role = str(turn.get("role", turn.get("speaker", ""))).strip().lower()
                if role.startswith("teacher"):
                    seed = turn.get("text") or turn.get("content") or turn.get("utterance")
                    break
            if topic and seed and str(seed).strip():
                contexts.append({"topic": str(topic).strip(), "seed_turn": str(seed).strip()})
    return contexts


__all__ = ["DATA_DIR", "load_education_dialogue", "load_tutoring_topics"]
