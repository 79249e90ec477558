"""Dataset scorers on hand-written outputs: the smart watch's lenient, reference-protocol and per-value
metrics, its reader's image scores and FD/KID, and the open-answer scorer of imported data."""

from collections import defaultdict

import pytest
import torch
from tiny_encoders import export_tiny_reader

from lightning_vlm.data.open_answers import OpenAnswerScorer
from lightning_vlm.smartwatch.breakdown import breakdown_name, breakdown_names
from lightning_vlm.smartwatch.dataset import SmartWatchDataset
from lightning_vlm.smartwatch.scorer import METRIC_NAMES, SmartWatchScorer


def watch(weather, weather_position, battery_position, hour=11, battery=40):
    return {"hour": hour, "minute": 0, "second": 0, "weather": weather, "battery": battery,
            "weather_position": weather_position, "battery_position": battery_position, "face_color": [0, 0, 0]}


CLOUDY = watch("cloudy", "top-left", "bottom-right")
SUNNY = watch("sunny", "bottom-left", "top-right")


def vqa(attrs, turns):
    """A VQA meta; `turns` is [(question type, true answer)]."""
    conversations = [t for qtype, answer in turns for t in ({"role": "user", "text": f"{qtype}?"}, {"role": "assistant", "text": answer})]
    return {"task": "vqa", "attributes": attrs, "conversations": conversations, "question_types": [q for q, _ in turns], "image_id": 0}


def means(scores):
    """{name: mean} of (name, value) observations, as the evaluator averages them."""
    sums = defaultdict(list)
    for name, value in scores:
        sums[name].append(value)
    return {name: sum(v) / len(v) for name, v in sums.items()}


def test_answers_score_lenient_reference_and_per_value():
    scorer, scores = SmartWatchScorer(), []
    first = vqa(CLOUDY, [("weather", "cloudy"), ("time", "11:00:00")])
    scores += scorer.score_text(first, "Cloudy", 0)  # lenient 1 (any case); reference 0 (case-sensitive)
    scores += scorer.score_text(first, "01:00:00", 1)  # 2 h off on the dial; a second turn: not in the reference protocol
    second = vqa(SUNNY, [("battery_position", "top-right"), ("weather", "sunny")])
    scores += scorer.score_text(second, "in the top-right corner", 0)
    scores += scorer.score_text(second, "cloudy", 1)
    scores += scorer.score_text(vqa(CLOUDY, [("battery", "40%")]), "40 %", 0)  # lenient reads "40 %", the reference does not
    caption = {"task": "caption", "attributes": CLOUDY, "mentioned": ["time", "weather"], "conversations": [], "image_id": 1}
    scores += scorer.score_text(caption, "The watch shows 11:00:00.", 0)

    time = 1 - (2 / 6) / 3
    assert means(scores) == pytest.approx({
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
    assert {name for name, _ in scores} <= set(scorer.metric_names)
    assert scorer.turns(first) == [0, 1] and scorer.turns(caption) == [0] and scorer.turns({"task": "generation"}) == []


def test_generated_images_score_only_what_the_prompt_asked_for():
    scorer = SmartWatchScorer()
    read = watch("cloudy", "bottom-right", "top-left", battery=99)  # the two items swapped, battery wrong
    scores = scorer.score_image_attributes(read, {"task": "generation", "attributes": CLOUDY, "mentioned": ["time", "weather", "weather_position"]})
    read = watch("raining", "bottom-left", "top-right", hour=5)
    scores += scorer.score_image_attributes(read, {"task": "generation", "attributes": SUNNY, "mentioned": ["time", "battery_position"]})
    assert means(scores) == pytest.approx({
        "gen/time": (1 + 2 / 3) / 2,  # 5 vs 11 o'clock: 6 h, the worst hour
        "gen/weather": 1.0,
        "gen/weather_position": 0.0,
        "gen/battery_position": 1.0,
        "gen/corner_filled": 1.0,  # the swapped pair still fills the asked-for corner
        "gen/weather/cloudy": 1.0,
        "gen/weather_position/top-left": 0.0,
        "gen/battery_position/top-right": 1.0,
    })
    assert {name for name, _ in scores} <= set(scorer.metric_names)


def test_per_value_names_are_fixed_in_advance():
    # every rank must hold the same metrics in the same order to sync them under DDP
    assert len(METRIC_NAMES) == len(set(METRIC_NAMES)) and "gen/prompt_gain" not in METRIC_NAMES  # the evaluator's own
    for prefix in ("vqa", "gen"):
        names = breakdown_names(prefix)
        assert set(names) <= set(METRIC_NAMES) and len(names) == 3 + 4 + 4
    assert breakdown_name("vqa", "weather", {"weather": "foggy"}) is None  # a value outside the world is not filed
    assert breakdown_name("vqa", "time", CLOUDY) is None


def test_the_reader_scores_images_and_gives_fd_and_kid(tmp_path):
    scorer = SmartWatchDataset().scorer(str(export_tiny_reader(tmp_path / "reader.ckpt")))
    generation = {"task": "generation", "attributes": CLOUDY, "mentioned": ["time", "weather"]}
    torch.manual_seed(0)
    scores = []
    for _ in range(2):
        scores += scorer.score_images(torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32), [generation] * 3)
    assert [name for name, _ in scores] == ["gen/time", "gen/weather", "gen/weather/cloudy"] * 6
    assert all(0 <= value <= 1 for _, value in scores)
    distances = scorer.compute()
    assert set(distances) == {"gen/fd_reader", "gen/kid_reader_mean", "gen/kid_reader_std"} and distances["gen/fd_reader"] >= 0
    assert SmartWatchScorer().score_images(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), [generation]) == []  # no reader
    assert SmartWatchScorer().compute() == {}


def test_a_missing_reader_fails_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.init_args.reader: null"):
        SmartWatchDataset().scorer(str(tmp_path / "gone.ckpt"))


def test_open_answers_score_the_first_short_answer_only():
    scorer = OpenAnswerScorer()
    short = {"task": "vqa", "conversations": [{"role": "user", "text": "Colour?"}, {"role": "assistant", "text": "Red."},
                                              {"role": "user", "text": "And?"}, {"role": "assistant", "text": "Blue"}]}
    long = {"task": "vqa", "conversations": [{"role": "user", "text": "Describe."}, {"role": "assistant", "text": "word " * 20}]}
    assert scorer.turns(short) == [0] and scorer.turns(long) == [] and scorer.turns({"task": "generation", "conversations": []}) == []
    assert dict(scorer.score_text(short, "It is red", 0)) == {"open/exact": 0.0, "open/contains": 1.0}
    assert dict(scorer.score_text(short, "the red", 0)) == {"open/exact": 1.0, "open/contains": 1.0}
    assert scorer.score_text(short, "blue", 1) == [] and scorer.score_text(long, "word", 0) == []
    assert scorer.metric_names == ("open/exact", "open/contains") and scorer.compute() == {}
