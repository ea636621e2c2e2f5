"""The verifiable reward of the persona math environment: find an answer's final number and compare it.

:func:`parse_final_number` reads the final answer (the ``#### <number>`` form first, else the last
number), :func:`is_correct` compares it with the reference, and :func:`answer_reward` turns that
into the env's reward (1 when right, an optional bonus for the ``####`` form). The problems and
their references live in ``envs.data.math``; ``envs.checks.math`` holds checks written apart from
this rule.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

# --- answer parsing --------------------------------------------------------------------------------

# sign (not after a letter, digit or dot, so "10-3" is ten and three), currency, then digits with
# optional thousands groups and decimals; a number is never started right after a digit or a dot
_NUMBER = (r"(?P<sign>(?<![\w.])[-\u2212])?(?P<currency>[$\u20ac\u00a3][ \t]?)?"
           r"(?<![\d.])(?P<digits>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")
_NUMBER_RE = re.compile(_NUMBER)
# "####" directly followed by the number (spaces, bold marks and an "answer:" label allowed);
# a markdown heading such as "#### Step 2" does not count as a final answer
_MARKED_RE = re.compile(
    r"####[ \t]*(?:\*\*|__)?[ \t]*(?:(?:the[ \t]+)?(?:final[ \t]+)?answer(?:[ \t]+is)?[ \t]*[:=]?[ \t]*)?"
    + _NUMBER + r"(?:[ \t]*/[ \t]*(?P<den>\d+)(?![\d.]))?",
    re.IGNORECASE,
)
_CALC_RE = re.compile(r"<<[^<>]*>>")


def _number_value(match: re.Match) -> float:
    value = float(match.group("digits").replace(",", ""))
    return -value if match.group("sign") else value


def parse_final_number(text: str) -> float | None:
    """The final numeric answer written in ``text``, or None when it holds no number.

    Rules:

    - If some ``####`` marker is directly followed by a number, the number after the *last* such
      marker is the answer. Between the marker and the number only spaces, ``**`` / ``__`` and a
      label such as ``Answer:`` or ``The final answer is`` may stand, so a markdown heading like
      ``#### Step 2`` is not read as an answer. Otherwise the answer is the *last* number anywhere
      in the text.
    - Thousands separators and currency signs are dropped: ``$1,234.50`` is 1234.5. Commas count
      as separators only in groups of three digits (``1,2,3`` is three numbers).
    - A ``-`` (or unicode minus) is a sign only when no letter, digit or dot stands right before
      it: ``-5`` and ``x = -5`` are -5, while ``10-3`` is 10 and 3.
    - Units, punctuation and words after a number are ignored (``12 km.`` is 12, ``3rd`` is 3).
    - Percentages keep their number: ``25%`` is 25, not 0.25 (GSM8K writes percent answers so).
    - Fractions are read only right after ``####``: ``#### 3/4`` is 0.75. Anywhere else ``3/4`` is
      the two numbers 3 and 4, and mixed numbers (``1 1/2``) are not understood.
    - Number words (``five``), scientific notation and other numerals are not understood.

    Args:
        text: A model's answer.

    Returns:
        The number as a float, or None.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_final_number expects a str, got {type(text).__name__}")
    marked = list(_MARKED_RE.finditer(text))
    if marked:
        match = marked[-1]
        value = _number_value(match)
        den = match.group("den")
        if den is not None and int(den) != 0 and "." not in match.group("digits"):
            value /= int(den)
        return value
    numbers = list(_NUMBER_RE.finditer(text))
    return _number_value(numbers[-1]) if numbers else None


def has_final_marker(text: str) -> bool:
    """Whether ``text`` gives its answer in the requested form, a ``####`` directly followed by a number."""
    return isinstance(text, str) and _MARKED_RE.search(text) is not None


def to_number(value: Any) -> float:
    """A reference answer (int, float or a string such as ``"1,234"``) as a float; ValueError if it is none."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        number = float(value)
    else:
        number = parse_final_number(value) if isinstance(value, str) else None
    if number is None or not math.isfinite(number):
        raise ValueError(f"expected a finite number or a string holding one, got {value!r}")
    return number


def format_number(value: float) -> str:
    """A number as the shortest plain text: ``42.0`` -> ``"42"``, ``0.50`` -> ``"0.5"``."""
    value = float(value)
    if value.is_integer():
        return str(int(value))
    return repr(value)


def is_correct(text: str, reference: Any, *, abs_tol: float = 1e-6, rel_tol: float = 1e-9) -> bool:
    """Whether the final number of ``text`` (:func:`parse_final_number`) equals ``reference`` numerically.

    ``0.5``, ``.50`` and ``1/2`` after ``####`` all match a reference of 0.5; the tolerances only
    absorb floating-point noise, so a rounded answer (0.33 for 1/3) does not match.
    """
    parsed = parse_final_number(text)
    return parsed is not None and math.isclose(parsed, to_number(reference), abs_tol=abs_tol, rel_tol=rel_tol)


def answer_reward(text: str, reference: Any, *, format_bonus: float = 0.0) -> float:
    """The verifiable reward: 1.0 for a correct final number, else 0.0.

    Args:
        text: The answer.
        reference: The reference answer.
        format_bonus: Off (0) by default. When set, it is *added* whenever the answer ends in the
            requested ``#### <number>`` form (:func:`has_final_marker`), right or wrong, so a
            correct, well-formed answer earns ``1 + format_bonus``.
    """
    reward = 1.0 if is_correct(text, reference) else 0.0
    if format_bonus and has_final_marker(text):
        reward += float(format_bonus)
    return reward


__all__ = ["answer_reward", "format_number", "has_final_marker", "is_correct", "parse_final_number", "to_number"]
