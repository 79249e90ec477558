"""The smart-watch world: what one image shows, and how attributes are drawn.

Every image is fully described by a `WatchAttributes`. Sampling is driven by a
`numpy.random.Generator` the caller seeds per image, so an image never depends on
which worker drew it or how many images came before it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

WEATHERS = ("sunny", "cloudy", "raining")
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
HOURS = tuple(range(13))  # 0..12; 0 and 12 draw the same hands
MINUTES = tuple(range(60))
SECONDS = tuple(range(60))
BATTERIES = tuple(range(101))

# Values each attribute may take; constraints in configs are checked against these.
DOMAINS: dict[str, tuple] = {
    "hour": HOURS,
    "minute": MINUTES,
    "second": SECONDS,
    "weather": WEATHERS,
    "battery": BATTERIES,
    "weather_position": CORNERS,
    "battery_position": CORNERS,
}
ATTRIBUTE_NAMES = tuple(DOMAINS)


@dataclass(frozen=True)
class WatchAttributes:
    """Everything one watch face shows. `face_color` is a nuisance: never asked, never described."""

    hour: int
    minute: int
    second: int
    weather: str
    battery: int
    weather_position: str
    battery_position: str
    face_color: tuple[int, int, int]

    @property
    def time_text(self) -> str:
        return f"{self.hour:02d}:{self.minute:02d}:{self.second:02d}"

    @property
    def battery_text(self) -> str:
        return f"{self.battery}%"

    def key(self) -> tuple:
        """The full attribute tuple (without the nuisance colour), used for train/test overlap checks."""
        return tuple(getattr(self, name) for name in ATTRIBUTE_NAMES)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["face_color"] = list(self.face_color)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WatchAttributes:
        fields = {name: d[name] for name in ATTRIBUTE_NAMES}
        return cls(**fields, face_color=tuple(int(c) for c in d["face_color"]))


def validate_constraints(constraints: Mapping[str, Sequence] | None, where: str = "constraints") -> dict[str, tuple]:
    """Checks a {attribute: allowed values} mapping and returns it normalised, or raises one clear line."""
    out: dict[str, tuple] = {}
    for name, allowed in (constraints or {}).items():
        if name not in DOMAINS:
            raise ValueError(f"{where}: unknown attribute '{name}'; known: {', '.join(ATTRIBUTE_NAMES)}")
        if isinstance(allowed, (str, int)):
            allowed = [allowed]
        allowed = tuple(allowed)
        bad = [v for v in allowed if v not in DOMAINS[name]]
        if bad or not allowed:
            raise ValueError(f"{where}.{name}: values {bad or '[]'} are not in {list(DOMAINS[name])[:12]}")
        out[name] = allowed
    if "weather_position" in out and "battery_position" in out:
        if not any(w != b for w in out["weather_position"] for b in out["battery_position"]):
            raise ValueError(f"{where}: weather and battery positions must differ but the constraints leave no pair")
    return out


def _pick(rng: np.random.Generator, values: Sequence):
    return values[int(rng.integers(len(values)))]


def sample_face_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A random face colour dark enough that the white hands stay visible (luma <= 170)."""
    while True:
        rgb = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] <= 170:
            return rgb


def sample_attributes(rng: np.random.Generator, constraints: Mapping[str, tuple] | None = None) -> WatchAttributes:
    """Draws one watch uniformly over each attribute's allowed values (two distinct corners)."""
    c = constraints or {}
    dom = {name: c.get(name, DOMAINS[name]) for name in ATTRIBUTE_NAMES}
    weather_position = _pick(rng, dom["weather_position"])
    battery_choices = [p for p in dom["battery_position"] if p != weather_position]
    while not battery_choices:  # the constraint left this weather corner without a partner
        weather_position = _pick(rng, dom["weather_position"])
        battery_choices = [p for p in dom["battery_position"] if p != weather_position]
    return WatchAttributes(
        hour=int(_pick(rng, dom["hour"])),
        minute=int(_pick(rng, dom["minute"])),
        second=int(_pick(rng, dom["second"])),
        weather=_pick(rng, dom["weather"]),
        battery=int(_pick(rng, dom["battery"])),
        weather_position=weather_position,
        battery_position=_pick(rng, battery_choices),
        face_color=sample_face_color(rng),
    )
