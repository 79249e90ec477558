"""The study's VQA scoring formulas on hand-made answers."""

import pytest

from lightning_vlm.smartwatch.scoring import (
    battery_score,
    corner_filled,
    mentioned_groups,
    parse_battery,
    parse_time,
    score_answer,
    score_attributes,
    time_score,
)

ATTRS = {
    "hour": 11,
    "minute": 59,
    "second": 58,
    "weather": "raining",
    "battery": 60,
    "weather_position": "top-left",
    "battery_position": "bottom-right",
}


def test_exact_time_scores_one():
    assert score_answer("time", "It shows 11:59:58.", ATTRS) == 1.0


def test_time_errors_wrap_around():
    # 11:59:58 -> 00:00:01 is 1 h (12 wraps to 0), 1 min and 3 s away on the dial
    expected = 1 - (1 / 6 + 1 / 30 + 3 / 30) / 3
    assert score_answer("time", "00:00:01", ATTRS) == pytest.approx(expected)
    assert expected == pytest.approx(0.9)  # without wrapping, 11 h apart would score below 0
    # hour 12 and hour 0 draw the same hands
    assert time_score(12, 0, 0, 0, 0, 0) == 1.0


def test_worst_time_scores_zero():
    assert time_score(5, 29, 28, 11, 59, 58) == pytest.approx(0.0)


def test_unparsable_answers_score_zero():
    assert score_answer("time", "about noon", ATTRS) == 0.0
    assert score_answer("battery", "sixty percent", ATTRS) == 0.0
    assert score_answer("battery", "150%", ATTRS) == 0.0


def test_battery_score():
    assert score_answer("battery", "The battery is at 57%.", ATTRS) == pytest.approx(0.97)
    assert battery_score(0, 100) == 0.0
    assert parse_battery("level 100 %") == 100
    assert parse_battery("1000% or 42%") == 42


def test_contains_checks_are_case_insensitive():
    assert score_answer("weather", "It is RAINING today", ATTRS) == 1.0
    assert score_answer("weather", "sunny", ATTRS) == 0.0
    assert score_answer("weather_position", "Top-Left corner", ATTRS) == 1.0
    assert score_answer("battery_position", "top-right", ATTRS) == 0.0


def test_unknown_question_type_raises():
    with pytest.raises(ValueError):
        score_answer("colour", "red", ATTRS)


def test_parse_time_takes_first_match():
    assert parse_time("from 3:04:05 to 06:07:08") == (3, 4, 5)


def test_score_attributes_and_groups():
    pred = dict(ATTRS, hour=0, minute=0, second=1, battery=57, weather="sunny")
    scores = score_attributes(pred, ATTRS)
    assert scores["time"] == pytest.approx(score_answer("time", "00:00:01", ATTRS))
    assert scores["battery"] == pytest.approx(0.97)
    assert scores["weather"] == 0.0 and scores["weather_position"] == 1.0
    assert mentioned_groups(["minute", "hour", "battery"]) == ["time", "battery"]


def test_corner_filled_tells_a_swap_from_an_empty_corner():
    true = {"weather_position": "top-left", "battery_position": "bottom-right"}
    swapped = {"weather_position": "bottom-right", "battery_position": "top-left"}
    elsewhere = {"weather_position": "top-right", "battery_position": "bottom-left"}
    assert score_attributes(dict(ATTRS, **swapped), dict(ATTRS, **true), ["weather_position"]) == {"weather_position": 0.0}
    assert corner_filled(swapped, true, "weather_position") == 1.0 and corner_filled(swapped, true, "battery_position") == 1.0
    assert corner_filled(elsewhere, true, "weather_position") == 0.0
    assert corner_filled(true, true, "battery_position") == 1.0
