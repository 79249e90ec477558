"""Draws a watch face from its attributes.

Everything is drawn at `supersample` x the target size and box-filtered down, so
thin hands and small icons survive at 64 px. Geometry is in fractions of the image
size so the same layout works at 64, 224 and 256 px. Pure function of its inputs:
the same attributes give the same pixels.
"""

from __future__ import annotations

import math
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from .world import WatchAttributes

FACE_RADIUS = 0.40  # of the image size, as in the study
HANDS = {  # name: (length x radius, width x radius)
    "hour": (0.50, 0.10),
    "minute": (0.70, 0.065),
    "second": (0.90, 0.035),
}
HAND_COLOR = (255, 255, 255)
MARGIN = 0.015
WEATHER_BOX = (0.20, 0.20)  # width, height; both boxes stay clear of the face
BATTERY_BOX = (0.25, 0.16)
TEXT_COLOR = (40, 40, 40)


def hand_angles(attrs: WatchAttributes) -> dict[str, float]:
    """Clockwise angle from 12 o'clock, in radians, of each hand (the hour hand creeps with the minutes)."""
    return {
        "hour": 2 * math.pi * ((attrs.hour % 12) + attrs.minute / 60) / 12,
        "minute": 2 * math.pi * attrs.minute / 60,
        "second": 2 * math.pi * attrs.second / 60,
    }


def corner_box(corner: str, size: tuple[float, float], canvas: float) -> tuple[float, float, float, float]:
    """Pixel box (x0, y0, x1, y1) of a `size` box tucked into `corner` of a square canvas."""
    w, h = size[0] * canvas, size[1] * canvas
    m = MARGIN * canvas
    x0 = m if corner.endswith("left") else canvas - m - w
    y0 = m if corner.startswith("top") else canvas - m - h
    return x0, y0, x0 + w, y0 + h


@lru_cache(maxsize=16)
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(px, 4))


def _draw_face(d: ImageDraw.ImageDraw, attrs: WatchAttributes, k: float) -> None:
    c, r = 0.5 * k, FACE_RADIUS * k
    face = attrs.face_color
    d.ellipse((c - r, c - r, c + r, c + r), fill=face)
    tick = tuple((v + 255) // 2 for v in face)  # a light tint of the face: visible, never as white as a hand
    for i in range(12):
        a = 2 * math.pi * i / 12
        r0 = r * (0.86 if i % 3 else 0.80)
        d.line(
            (c + r0 * math.sin(a), c - r0 * math.cos(a), c + 0.96 * r * math.sin(a), c - 0.96 * r * math.cos(a)),
            fill=tick,
            width=max(1, round(0.03 * r)),
        )
    for name, angle in hand_angles(attrs).items():
        length, width = HANDS[name]
        x, y = c + length * r * math.sin(angle), c - length * r * math.cos(angle)
        d.line((c, c, x, y), fill=HAND_COLOR, width=max(1, round(width * r)))
    cap = 0.06 * r
    d.ellipse((c - cap, c - cap, c + cap, c + cap), fill=HAND_COLOR)


def _cloud(d: ImageDraw.ImageDraw, x0: float, y0: float, s: float, color) -> None:
    """A cloud of three puffs on a flat base, inside the square (x0, y0, s)."""
    for cx, cy, rr in ((0.35, 0.55, 0.20), (0.58, 0.45, 0.25), (0.75, 0.60, 0.16)):
        d.ellipse((x0 + (cx - rr) * s, y0 + (cy - rr) * s, x0 + (cx + rr) * s, y0 + (cy + rr) * s), fill=color)
    d.rounded_rectangle((x0 + 0.15 * s, y0 + 0.55 * s, x0 + 0.90 * s, y0 + 0.76 * s), radius=0.1 * s, fill=color)


def _draw_weather(d: ImageDraw.ImageDraw, weather: str, corner: str, k: float) -> None:
    x0, y0, x1, _ = corner_box(corner, WEATHER_BOX, k)
    s = x1 - x0
    if weather == "sunny":
        cx, cy, rr = x0 + 0.5 * s, y0 + 0.5 * s, 0.22 * s
        for i in range(8):
            a = 2 * math.pi * i / 8
            d.line(
                (cx + 1.35 * rr * math.cos(a), cy + 1.35 * rr * math.sin(a), cx + 2.0 * rr * math.cos(a), cy + 2.0 * rr * math.sin(a)),
                fill=(250, 170, 0),
                width=max(1, round(0.07 * s)),
            )
        d.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=(255, 205, 0))
    elif weather == "cloudy":
        _cloud(d, x0, y0 + 0.05 * s, s, (150, 155, 165))
    elif weather == "raining":
        _cloud(d, x0, y0 - 0.15 * s, s, (95, 100, 115))
        for fx in (0.30, 0.52, 0.74):
            d.line(
                (x0 + fx * s, y0 + 0.70 * s, x0 + (fx - 0.08) * s, y0 + 0.95 * s),
                fill=(30, 110, 230),
                width=max(1, round(0.07 * s)),
            )
    else:
        raise ValueError(f"unknown weather '{weather}'")


def battery_color(level: int) -> tuple[int, int, int]:
    return (40, 170, 60) if level > 50 else (235, 150, 20) if level > 20 else (220, 40, 40)


def _draw_battery(d: ImageDraw.ImageDraw, level: int, corner: str, k: float) -> None:
    x0, y0, x1, y1 = corner_box(corner, BATTERY_BOX, k)
    w, h = x1 - x0, y1 - y0
    bar_h, nub_w = 0.42 * h, 0.06 * w
    line = max(1, round(0.012 * k))
    body = (x0, y0, x1 - nub_w, y0 + bar_h)
    d.rectangle(body, outline=TEXT_COLOR, width=line)
    d.rectangle((x1 - nub_w, y0 + 0.3 * bar_h, x1, y0 + 0.7 * bar_h), fill=TEXT_COLOR)
    inner_x0, inner_x1 = body[0] + line, body[2] - line
    fill_x1 = inner_x0 + (inner_x1 - inner_x0) * level / 100
    if level > 0:
        d.rectangle((inner_x0, body[1] + line, fill_x1, body[3] - line), fill=battery_color(level))
    font = _font(round(0.50 * h))
    d.text((x0, y0 + bar_h + 0.06 * h), f"{level}%", fill=TEXT_COLOR, font=font)


def render_watch(attrs: WatchAttributes, image_size: int = 64, supersample: int = 4) -> Image.Image:
    """Renders `attrs` as an RGB image of `image_size` pixels square."""
    k = image_size * supersample
    img = Image.new("RGB", (k, k), (255, 255, 255))
    d = ImageDraw.Draw(img)
    _draw_face(d, attrs, k)
    _draw_weather(d, attrs.weather, attrs.weather_position, k)
    _draw_battery(d, attrs.battery, attrs.battery_position, k)
    if supersample > 1:
        img = img.resize((image_size, image_size), Image.Resampling.BOX)
    return img
