import numpy as np

from lightning_vlm.smartwatch.render import FACE_RADIUS, WEATHER_BOX, corner_box, render_watch
from lightning_vlm.smartwatch.world import CORNERS, WatchAttributes

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


def hand_failures(img, attrs, size):
    """Why the hands are not visible in `img`, as a list (empty when all three are drawn where the time says).

    Along each hand (from beyond the centre cap to short of its tip and of the ticks) the pixels
    must be hand-white, while the same radii in the opposite direction show the face colour: a
    blank canvas, or a face without hands, has no such contrast.
    """
    from lightning_vlm.smartwatch.render import HANDS, hand_angles

    c, r = size / 2, FACE_RADIUS * size
    failures = []
    for name, angle in hand_angles(attrs).items():
        radii = np.linspace(0.2, min(HANDS[name][0], 0.75) - 0.05, 8) * r

        def along(a, radii=radii):
            xs = np.clip(np.round(c + radii * np.sin(a) - 0.5).astype(int), 0, size - 1)
            ys = np.clip(np.round(c - radii * np.cos(a) - 0.5).astype(int), 0, size - 1)
            return img[ys, xs]  # [8, 3]

        hand, opposite = along(angle), along(angle + np.pi)
        if hand.min(axis=-1).mean() < 150:
            failures.append(f"{name} hand not white along {np.degrees(angle):.0f} deg: {hand.min(axis=-1).tolist()}")
        if np.abs(opposite - np.array(FACE)).max() > 40:
            failures.append(f"{name}: no face colour opposite the hand: {opposite.tolist()}")
    return failures


def test_hands_survive_at_64px_and_scale_to_256(monkeypatch):
    from lightning_vlm.smartwatch import render

    attrs = watch(hour=8, minute=0, second=20)  # hands at 240, 0 and 120 degrees: none opposite another
    for size in (64, 256):
        img = pixels(attrs, size)
        assert img.shape == (size, size, 3)
        assert hand_failures(img, attrs, size) == [], size
    # The check fails where no hands are drawn (a blank canvas, a face whose hands are face-coloured)
    # and on hands that show another time.
    assert len(hand_failures(pixels(attrs, 64), watch(hour=2, minute=30, second=50), 64)) == 6
    assert hand_failures(np.full((64, 64, 3), 255, dtype=np.int16), attrs, 64)
    monkeypatch.setattr(render, "HAND_COLOR", FACE)
    faceless = hand_failures(pixels(attrs, 64), attrs, 64)
    assert len(faceless) == 3 and all("not white" in f for f in faceless), faceless
