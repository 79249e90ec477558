"""Reads a generated caption back into attributes and scores it.

Our clause wording makes captions parseable: a time clause holds `HH:MM:SS`, a battery
clause `N%`, a weather clause a weather word and no corner, a position clause one
corner and the item it places ("weather"/"forecast" or "battery"/"charge").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .scoring import battery_score, parse_battery, parse_time, time_score
from .world import CORNERS, WEATHERS

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def parse_caption(text: str) -> dict[str, Any]:
    """The attributes a caption states, e.g. {"time": (3, 7, 9), "weather": "sunny", "battery_position": "top-left"}."""
    stated: dict[str, Any] = {}
    for sentence in _SENTENCE.split(text.strip()):
        low = sentence.lower()
        corner = next((c for c in CORNERS if c in low), None)
        if corner is not None:
            if "battery" in low or "charge" in low:
                stated.setdefault("battery_position", corner)
            elif "weather" in low or "forecast" in low:
                stated.setdefault("weather_position", corner)
            continue
        if (t := parse_time(sentence)) is not None:
            stated.setdefault("time", t)
        if (b := parse_battery(sentence)) is not None:
            stated.setdefault("battery", b)
        weather = next((w for w in WEATHERS if w in low), None)
        if weather is not None:
            stated.setdefault("weather", weather)
    return stated


def score_caption(text: str, attrs: Mapping[str, Any], should_state: list[str]) -> dict[str, float]:
    """Per-attribute correctness of what the caption states, and recall of what it should state.

    Returns {"correct/<attr>": score} for each stated attribute (time and battery with the
    VQA formulas, the others exact) and {"recall": share of `should_state` that is stated}.
    """
    stated = parse_caption(text)
    out: dict[str, float] = {}
    for name, value in stated.items():
        if name == "time":
            out[f"correct/{name}"] = time_score(*value, attrs["hour"], attrs["minute"], attrs["second"])
        elif name == "battery":
            out[f"correct/{name}"] = battery_score(value, attrs["battery"])
        else:
            out[f"correct/{name}"] = float(value == attrs[name])
    if should_state:
        out["recall"] = sum(name in stated for name in should_state) / len(should_state)
    return out
