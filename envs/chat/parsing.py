"""Finding and repairing the JSON in a model's reply, on top of the ``json-repair`` library.

``json-repair`` fixes almost anything, including text that was never JSON: it turns
``'{"a": 1 "b": 2}'`` into ``{"a": 1, "b": 2}`` and ``"{oops}"`` into ``["oops}"]``. A judge
must not read labels out of such guesses, so this module wraps the library in a small acceptance
rule (see :func:`parse_json_reply`): we pick the candidate span ourselves, and a repair may fix
punctuation and spelling but must keep every value and separator the model actually wrote.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import json_repair

_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_+-]*[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)
_TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*(?:"|\\?\Z)|'(?:[^'\\]|\\.)*(?:'|\\?\Z))
      | (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<word>[A-Za-z_]\w*)
      | (?P<punct>[{}\[\]:,])
      | (?P<space>\s+)
      | (?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
_COLON_AHEAD = re.compile(r"\s*:")
_LITERALS = {"true", "false", "null", "True", "False", "None"}
_MAX_CANDIDATES = 32


def parse_json_reply(text: str) -> tuple[Any, bool]:
    """Finds the JSON object or array in a model's reply, repairing common faults.

    Code fences and prose around the JSON are ignored; the first object or array that can be
    recovered wins. Faults that ``json-repair`` may fix: trailing commas, single quotes, Python's
    ``True``/``False``/``None``, raw newlines or tabs in strings, unquoted keys, and brackets or a
    string left open by a reply that was cut short.

    A repair is accepted only when it keeps the model's content (the acceptance rule):

    - the result is a dict for a span opened by ``{`` and a list for one opened by ``[``;
    - the span holds nothing but JSON-like tokens (strings in either quote, numbers, the six
      true/false/null spellings, bare words used as keys, brackets, colons and commas);
    - the result has exactly as many strings (keys included), numbers and literals as the span,
      exactly one colon per key, and at least one comma between neighbouring members.

    A span that fails is skipped as a whole, so a broken outer object never yields an inner
    fragment; a span that never closes may have swallowed the real JSON, so its inside is searched.

    Args:
        text: The raw reply.

    Returns:
        ``(obj, repaired)``: the parsed dict or list, and whether ``json-repair`` was needed.

    Raises:
        ValueError: If no JSON object or array can be recovered.
    """
    for source in _sources(text):
        found = _first_candidate(source)
        if found is not None:
            return found
    raise ValueError(f"no JSON object or array found in reply: {text[:200]!r}")


def _sources(text: str) -> list[str]:
    """The texts to search, best first: each fenced block, then the whole reply."""
    blocks = [m.group(1).strip() for m in _FENCE.finditer(text)]
    return [b for b in blocks if b] + [text.strip()]


@dataclass
class _Span:
    """What a lexical scan found from one opening bracket."""

    end: int | None  # index just past the closing bracket; None if it never closed
    counts: Counter  # "string", "number", "literal", ":" and "," tokens
    clean: bool  # False once a stray character or a bare non-key word was seen


def _first_candidate(text: str) -> tuple[Any, bool] | None:
    start = 0
    for _ in range(_MAX_CANDIDATES):
        start = _next_opening(text, start)
        if start < 0:
            return None
        span = _scan(text, start)
        piece = text[start : span.end]  # end None: the rest of the text
        try:
            obj = json.loads(piece)
        except ValueError:
            obj = _repair(piece, span)
            if obj is not None:
                return obj, True
        else:
            return obj, False
        start = span.end if span.end is not None else start + 1
    return None


def _repair(piece: str, span: _Span) -> Any:
    """``json-repair``'s reading of ``piece`` if the acceptance rule allows it, else None."""
    if not span.clean:
        return None
    obj = json_repair.loads(piece, skip_json_loads=True)
    if not isinstance(obj, dict if piece[0] == "{" else list):
        return None
    need = _content(obj)
    same = all(span.counts[k] == need[k] for k in ("string", "number", "literal", ":"))
    return obj if same and span.counts[","] >= need[","] else None


def _next_opening(text: str, start: int) -> int:
    positions = [p for p in (text.find("{", start), text.find("[", start)) if p >= 0]
    return min(positions, default=-1)


def _scan(text: str, start: int) -> _Span:
    """Tokenizes ``text`` from the bracket at ``start`` until that bracket closes."""
    counts: Counter = Counter()
    clean, depth = True, 0
    for match in _TOKEN.finditer(text, start):
        kind, token = match.lastgroup, match.group()
        if kind == "punct":
            if token in "{[":
                depth += 1
            elif token in "}]":
                depth -= 1
                if depth == 0:
                    return _Span(match.end(), counts, clean)
            else:
                counts[token] += 1
        elif kind == "word":
            if token in _LITERALS:
                counts["literal"] += 1
            elif _COLON_AHEAD.match(text, match.end()):
                counts["string"] += 1  # an unquoted key
            else:
                clean = False
        elif kind in ("string", "number"):
            counts[kind] += 1
        elif kind == "other":
            clean = False
    return _Span(None, counts, clean)


def _content(obj: Any) -> Counter:
    """The tokens a faithful source of ``obj`` must contain (commas: the fewest needed)."""
    counts: Counter = Counter()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            counts["string"] += len(item)
            counts[":"] += len(item)
            counts[","] += max(len(item) - 1, 0)
            stack.extend(item.values())
        elif isinstance(item, list):
            counts[","] += max(len(item) - 1, 0)
            stack.extend(item)
        elif isinstance(item, str):
            counts["string"] += 1
        elif item is None or isinstance(item, bool):
            counts["literal"] += 1
        else:
            counts["number"] += 1
    return counts
