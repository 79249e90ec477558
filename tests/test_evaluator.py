"""VLMEvaluator's scoring on hand-written answers: lenient, reference-protocol and per-value metrics."""

import pytest

from lightning_vlm.architectures.evaluation import METRIC_NAMES, VLMEvaluator
from lightning_vlm.eval.breakdown import breakdown_name, breakdown_names


def watch(weather, weather_position, battery_position, hour=11, battery=40):
    return {"hour": hour, "minute": 0, "second": 0, "weather": weather, "battery": battery,
            "weather_position": weather_position, "battery_position": battery_position, "face_color": [0, 0, 0]}


CLOUDY = watch("cloudy", "top-left", "bottom-right")
SUNNY = watch("sunny", "bottom-left", "top-right")


def vqa(attrs, turns):
    """A VQA meta; `turns` is [(question type, true answer)]."""
    conversations = [t for qtype, answer in turns for t in ({"role": "user", "text": f"{qtype}?"}, {"role": "assistant", "text": answer})]
    return {"task": "vqa", "attributes": attrs, "conversations": conversations, "question_types": [q for q, _ in turns], "image_id": 0}


def test_answers_score_lenient_reference_and_per_value():
    ev = VLMEvaluator()
    first = vqa(CLOUDY, [("weather", "cloudy"), ("time", "11:00:00")])
    ev.score_text(first, "Cloudy", 0)  # lenient 1 (any case); reference 0 (case-sensitive)
    ev.score_text(first, "01:00:00", 1)  # 2 h off on the dial; a second turn: not in the reference protocol
    second = vqa(SUNNY, [("battery_position", "top-right"), ("weather", "sunny")])
    ev.score_text(second, "in the top-right corner", 0)
    ev.score_text(second, "cloudy", 1)
    ev.score_text(vqa(CLOUDY, [("battery", "40%")]), "40 %", 0)  # lenient reads "40 %", the reference does not
    caption = {"task": "caption", "attributes": CLOUDY, "mentioned": ["time", "weather"], "conversations": [], "image_id": 1}
    ev.score_text(caption, "The watch shows 11:00:00.", 0)

    time = 1 - (2 / 6) / 3
    assert ev.compute() == pytest.approx({
        "vqa/time": time,
        "vqa/weather": 0.5,
        "vqa/battery": 1.0,
        "vqa/battery_position": 1.0,
        "vqa/position": 1.0,
        "vqa/total": (1 + time + 1 + 0 + 1) / 5,
        "vqa/weather/cloudy": 1.0,
        "vqa/weather/sunny": 0.0,
        "vqa/battery_position/top-right": 1.0,
        "vqa_ref/weather": 0.0,
        "vqa_ref/position": 1.0,
        "vqa_ref/battery": 0.0,
        "vqa_ref/total": 1 / 3,
        "caption/correct/time": 1.0,
        "caption/recall": 0.5,
    })


def test_generated_images_score_only_what_the_prompt_asked_for():
    ev = VLMEvaluator()
    read = watch("cloudy", "bottom-right", "top-left", battery=99)  # the two items swapped, battery wrong
    ev.score_image_attributes(read, {"task": "generation", "attributes": CLOUDY, "mentioned": ["time", "weather", "weather_position"]})
    read = watch("raining", "bottom-left", "top-right", hour=5)
    ev.score_image_attributes(read, {"task": "generation", "attributes": SUNNY, "mentioned": ["time", "battery_position"]})
    assert ev.compute() == pytest.approx({
        "gen/time": (1 + 2 / 3) / 2,  # 5 vs 11 o'clock: 6 h, the worst hour
        "gen/weather": 1.0,
        "gen/weather_position": 0.0,
        "gen/battery_position": 1.0,
        "gen/corner_filled": 1.0,  # the swapped pair still fills the asked-for corner
        "gen/weather/cloudy": 1.0,
        "gen/weather_position/top-left": 0.0,
        "gen/battery_position/top-right": 1.0,
    })


def test_per_value_names_are_fixed_in_advance():
    # every rank must hold the same metrics in the same order to sync them under DDP
    assert len(METRIC_NAMES) == len(set(METRIC_NAMES))
    for prefix in ("vqa", "gen"):
        names = breakdown_names(prefix)
        assert set(names) <= set(METRIC_NAMES) and len(names) == 3 + 4 + 4
    assert list(VLMEvaluator().means) == [n.replace("/", "__") for n in METRIC_NAMES]
    assert breakdown_name("vqa", "weather", {"weather": "foggy"}) is None  # a value outside the world is not filed
    assert breakdown_name("vqa", "time", CLOUDY) is None
