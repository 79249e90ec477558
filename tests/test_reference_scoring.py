"""The reference's VQA scoring protocol (REFERENCE.md "Scoring") on its edge cases."""

import pytest

from lightning_vlm.smartwatch.reference import reference_score, reference_type


@pytest.mark.parametrize(
    "truth, qtype",
    [("11:59:58", "time"), ("sunny", "weather"), ("raining", "weather"), ("top-left", "position"),
     ("bottom-right", "position"), ("57%", "battery"), ("0%", "battery")],
)
def test_question_type_comes_from_the_ground_truth(truth, qtype):
    assert reference_type(truth) == qtype


def test_type_rules_apply_in_order_and_unknown_truths_fail():
    assert reference_type("cloudy-ish") == "weather"  # a weather word wins over '-'
    assert reference_type("10:00:00 at 50%") == "time"  # ':' wins over '%'
    with pytest.raises(ValueError, match="question type"):
        reference_type("Sunny")  # weather words are matched case-sensitively too


def test_exact_time_and_wrap_around():
    assert reference_score("It is 11:59:58.", "11:59:58") == ("time", 1.0)
    # 11 vs 1 o'clock is 2 h on the dial, not 10
    _, score = reference_score("01:00:00", "11:00:00")
    assert score == pytest.approx(1 - (2 / 6) / 3)
    # 59 vs 01 minutes and seconds: 2 each; 12 and 00 are the same hour
    _, score = reference_score("12:59:59", "00:01:01")
    assert score == pytest.approx(1 - (0 + 2 / 30 + 2 / 30) / 3)
    assert reference_score("06:30:30", "00:00:00")[1] == pytest.approx(0.0)


def test_time_needs_two_digits_per_field_without_word_boundary():
    assert reference_score("3:04:05", "03:04:05")[1] == 0.0  # one-digit hour: no match
    # no word boundary: "123:45:678" reads as 23:45:67; 23 h is 11 mod 12 and 67 s is 7 mod 60
    _, score = reference_score("at 123:45:678", "11:45:07")
    assert score == pytest.approx(1.0)
    # the first match counts, even when a later one is right
    _, score = reference_score("05:00:00 or rather 11:00:00", "11:00:00")
    assert score == pytest.approx(1 - 1 / 3)
    assert reference_score("no time here", "11:00:00") == ("time", 0.0)


@pytest.mark.parametrize(
    "answer, expected",
    [("100%", 1.0), ("It has 57% left", 0.57), ("0%", 0.0), ("1000%", 0.0), ("5 %", 0.0),
     ("x5%", 0.0), ("057%", 0.0), ("7%, no, 100%", 0.07)],
)
def test_battery_needs_percent_right_after_a_bounded_number(answer, expected):
    # truth 100%: score = 1 - |pred - 100| / 100 = pred / 100; no match -> 0
    assert reference_score(answer, "100%") == ("battery", pytest.approx(expected))


def test_weather_and_positions_are_case_sensitive_substrings():
    assert reference_score("It is sunny.", "sunny") == ("weather", 1.0)
    assert reference_score("Sunny", "sunny") == ("weather", 0.0)
    assert reference_score("the top-left corner", "top-left") == ("position", 1.0)
    assert reference_score("Top-left", "top-left") == ("position", 0.0)
    assert reference_score("top left", "top-left") == ("position", 0.0)
