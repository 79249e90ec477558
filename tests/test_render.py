import numpy as np

from lightning_vlm.data.smartwatch.render import FACE_RADIUS, WEATHER_BOX, corner_box, render_watch
from lightning_vlm.data.smartwatch.world import CORNERS, WatchAttributes

FACE = (30, 60, 120)


def watch(**kw):
    base = dict(hour=0, minute=0, second=0, weather="sunny", battery=50, weather_position="top-left",
                battery_position="bottom-right", face_color=FACE)
    return WatchAttributes(**{**base, **kw})


def pixels(attrs, size=64):
    return np.asarray(render_watch(attrs, size), dtype=np.int16)


def test_render_is_deterministic():
    a = watch(hour=7, minute=33, second=12)
    assert render_watch(a).tobytes() == render_watch(a).tobytes()
    assert render_watch(a).tobytes() != render_watch(watch(hour=7, minute=34, second=12)).tobytes()


def white_fraction(img, x0, x1, y0, y1):
    """Share of pixels in the box that are mostly hand (the face's darkest channel is 30)."""
    region = img[y0:y1, x0:x1]
    return float((region.min(axis=-1) > 150).mean())


def test_minute_hand_points_where_the_minutes_say():
    size, c = 64, 32
    r = FACE_RADIUS * size
    x_in, x_out = int(0.35 * r), int(0.65 * r)  # beyond the hour-hand cap, within the minute hand
    right = pixels(watch(minute=15), size)
    left = pixels(watch(minute=45), size)
    assert white_fraction(right, c + x_in, c + x_out, c - 1, c + 1) > 0.5
    assert white_fraction(right, c - x_out, c - x_in, c - 1, c + 1) == 0.0
    assert white_fraction(left, c - x_out, c - x_in, c - 1, c + 1) > 0.5
    assert white_fraction(left, c + x_in, c + x_out, c - 1, c + 1) == 0.0


def yellow_count(img, corner, size):
    x0, y0, x1, y1 = (int(round(v)) for v in corner_box(corner, WEATHER_BOX, size))
    region = img[y0:y1, x0:x1]
    return int(((region[..., 0] > 200) & (region[..., 1] > 140) & (region[..., 2] < 90)).sum())


def test_weather_icon_sits_in_its_stated_corner():
    for corner in CORNERS:
        other = next(c for c in CORNERS if c != corner)
        img = pixels(watch(weather="sunny", battery=90, weather_position=corner, battery_position=other))
        counts = {c: yellow_count(img, c, 64) for c in CORNERS}
        assert counts[corner] > 10, counts
        assert all(v == 0 for c, v in counts.items() if c != corner), counts


def test_battery_bar_fill_grows_with_level():
    def green(level):
        img = pixels(watch(battery=level), 64)
        return int(((img[..., 1] > 130) & (img[..., 0] < 120) & (img[..., 2] < 120)).sum())

    assert green(20) == 0  # low levels are drawn red/orange, not green
    assert 0 < green(60) < green(100)


def test_hands_survive_at_64px_and_scale_to_256():
    for size in (64, 256):
        img = pixels(watch(minute=15), size)
        assert img.shape == (size, size, 3)
        assert (img.min(axis=-1) > 230).sum() > 0
