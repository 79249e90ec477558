"""The study's VQA scoring formulas, as pure functions.

Text answers are scored by `score_answer`; the attribute reader scores what it reads
off an image with the same numeric formulas (`time_score`, `battery_score`, exact
match for the categorical attributes), so a generated image and a VQA answer are
graded on one scale.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

QUESTION_TYPES = ("time", "weather", "battery", "weather_position", "battery_position")
GROUPS = QUESTION_TYPES  # attribute groups the reader scores: one per question type
ATTRIBUTE_GROUP = {  # world attribute -> the group (question type) it belongs to
    "hour": "time",
    "minute": "time",
    "second": "time",
    "weather": "weather",
    "battery": "battery",
    "weather_position": "weather_position",
    "battery_position": "battery_position",
}

_TIME_RE = re.compile(r"(\d{1,2}):(\d{1,2}):(\d{1,2})")
_BATTERY_RE = re.compile(r"(?<!\d)(\d{1,3})\s*%")


def _circular_error(pred: int, true: int, period: int) -> int:
    d = (pred - true) % period
    return min(d, period - d)


def time_score(pred_h: int, pred_m: int, pred_s: int, true_h: int, true_m: int, true_s: int) -> float:
    """1 - mean of the wrapped hour/minute/second errors, each scaled by its largest value (6 h, 30 min, 30 s)."""
    e_h = _circular_error(pred_h, true_h, 12)
    e_m = _circular_error(pred_m, true_m, 60)
    e_s = _circular_error(pred_s, true_s, 60)
    return 1.0 - (e_h / 6 + e_m / 30 + e_s / 30) / 3


def battery_score(pred: int, true: int) -> float:
    """1 - |pred - true| / 100 for battery levels in 0..100."""
    return 1.0 - abs(pred - true) / 100


def parse_time(text: str) -> tuple[int, int, int] | None:
    """The first `H:M:S` (one or two digits each) in `text`, or None."""
    m = _TIME_RE.search(text)
    return None if m is None else (int(m[1]), int(m[2]), int(m[3]))


def parse_battery(text: str) -> int | None:
    """The first integer 0..100 followed by `%` in `text`, or None."""
    for m in _BATTERY_RE.finditer(text):
        value = int(m[1])
        if value <= 100:
            return value
    return None


def contains_score(answer: str, true_value: str) -> float:
    """1 when the true value string appears in the answer (case-insensitive), else 0."""
    return float(true_value.lower() in answer.lower())


def score_answer(question_type: str, answer_text: str, attrs: Mapping[str, Any]) -> float:
    """Scores one VQA answer against the image's attributes (a `WatchAttributes.to_dict()`-style mapping)."""
    if question_type == "time":
        parsed = parse_time(answer_text)
        return 0.0 if parsed is None else time_score(*parsed, attrs["hour"], attrs["minute"], attrs["second"])
    if question_type == "battery":
        parsed = parse_battery(answer_text)
        return 0.0 if parsed is None else battery_score(parsed, attrs["battery"])
    if question_type in ("weather", "weather_position", "battery_position"):
        return contains_score(answer_text, attrs[question_type])
    raise ValueError(f"unknown question type '{question_type}'; known: {', '.join(QUESTION_TYPES)}")


def score_attributes(
    pred: Mapping[str, Any], true: Mapping[str, Any], groups: Iterable[str] = GROUPS
) -> dict[str, float]:
    """Scores attributes read off an image against the true ones, per group, with the VQA formulas."""
    scores = {}
    for group in groups:
        if group == "time":
            scores[group] = time_score(
                pred["hour"], pred["minute"], pred["second"], true["hour"], true["minute"], true["second"]
            )
        elif group == "battery":
            scores[group] = battery_score(pred["battery"], true["battery"])
        elif group in ("weather", "weather_position", "battery_position"):
            scores[group] = float(pred[group] == true[group])
        else:
            raise ValueError(f"unknown attribute group '{group}'; known: {', '.join(GROUPS)}")
    return scores


def corner_filled(pred: Mapping[str, Any], true: Mapping[str, Any], group: str) -> float:
    """1 when the corner asked for in `group` (weather_position or battery_position) holds either item.

    Beside the position score it separates "knows which corners the prompt names" from
    "knows which item goes where": a model that swaps the two items scores 1 here, 0 there.
    """
    return float(true[group] in (pred["weather_position"], pred["battery_position"]))


def mentioned_groups(mentioned: Iterable[str]) -> list[str]:
    """Groups covered by a prompt's mentioned attributes; accepts world attribute names or group names."""
    out = []
    for name in mentioned:
        group = ATTRIBUTE_GROUP.get(name, name)
        if group not in GROUPS:
            raise ValueError(f"unknown attribute '{name}'; known: {', '.join(ATTRIBUTE_GROUP)} or {', '.join(GROUPS)}")
        if group not in out:
            out.append(group)
    return out
