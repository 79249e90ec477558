"""Per-value breakdowns of the categorical scores: `vqa/weather/cloudy`, `gen/battery_position/top-left`.

A score is filed under the *true* value of its attribute (what the image shows, or what the
prompt asked for), so a value the model never learned stands out from the others; the
transfer study reads these. The names are fixed in advance from the world's values: under
DDP every rank must hold the same metrics in the same order to sync them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .world import CORNERS, WEATHERS

BROKEN_DOWN: dict[str, tuple[str, ...]] = {
    "weather": WEATHERS,
    "weather_position": CORNERS,
    "battery_position": CORNERS,
}


def breakdown_names(prefix: str) -> list[str]:
    """Every per-value metric name under `prefix` ("vqa" or "gen"), in a fixed order."""
    return [f"{prefix}/{group}/{value}" for group, values in BROKEN_DOWN.items() for value in values]


def breakdown_name(prefix: str, group: str, attrs: Mapping[str, Any]) -> str | None:
    """The per-value name a score of `group` goes to, or None (a group not broken down, or a value
    outside the world's, e.g. from imported data)."""
    values = BROKEN_DOWN.get(group)
    if values is None or attrs.get(group) not in values:
        return None
    return f"{prefix}/{group}/{attrs[group]}"
