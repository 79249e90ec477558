"""Frequencies of the task samplers match the study's probabilities."""

from collections import Counter

import numpy as np
import pytest

from lightning_vlm.smartwatch.tasks import (
    OPTIONAL_CLAUSES,
    caption_conversation,
    generation_conversation,
    vqa_conversation,
)
from lightning_vlm.smartwatch.templates import CLAUSES, QUESTIONS
from lightning_vlm.smartwatch.world import sample_attributes, validate_constraints

N = 6000
TYPES = list(QUESTIONS)


def draws(fn, n=N):
    rng = np.random.default_rng(123)
    return [fn(sample_attributes(rng), rng) for _ in range(n)]


def test_enough_paraphrases():
    assert all(len(set(v)) >= 8 for v in QUESTIONS.values())
    assert all(len(set(v)) >= 3 for v in CLAUSES.values())


def test_vqa_turns_and_question_types():
    convs = draws(lambda a, r: vqa_conversation(a, r, TYPES))
    extra = Counter(len(c["question_types"]) - 1 for c in convs)
    binomial = {0: 0.216, 1: 0.432, 2: 0.288, 3: 0.064}  # three extra turns, each with p = 0.4
    for k, p in binomial.items():
        assert extra[k] / N == pytest.approx(p, abs=0.02)
    types = Counter(t for c in convs for t in c["question_types"])
    total = sum(types.values())
    for t in TYPES:
        assert types[t] / total == pytest.approx(0.2, abs=0.015)


def test_vqa_answers_are_bare_values():
    rng = np.random.default_rng(0)
    a = sample_attributes(rng)
    conv = vqa_conversation(a, rng, ["time", "battery"], extra_turn_prob=1.0)
    for qtype, answer in zip(conv["question_types"], conv["conversations"][1::2]):
        assert answer["text"] == (a.time_text if qtype == "time" else f"{a.battery}%")


@pytest.mark.parametrize("fn", [caption_conversation, generation_conversation])
def test_clause_frequencies(fn):
    convs = draws(fn)
    assert all(c["mentioned"][0] == "time" for c in convs)
    counts = Counter(m for c in convs for m in c["mentioned"][1:])
    for clause in OPTIONAL_CLAUSES:
        assert counts[clause] / N == pytest.approx(0.5, abs=0.025)


def test_caption_states_true_values():
    rng = np.random.default_rng(5)
    for _ in range(200):
        a = sample_attributes(rng)
        text = caption_conversation(a, rng, clause_prob=1.0)["conversations"][1]["text"]
        assert a.time_text in text and a.weather in text and f"{a.battery}%" in text
        assert a.weather_position in text and a.battery_position in text


def test_corners_differ_and_constraints_hold():
    rng = np.random.default_rng(1)
    cons = validate_constraints({"weather": ["sunny"], "hour": [3, 4]})
    for _ in range(2000):
        a = sample_attributes(rng, cons)
        assert a.weather_position != a.battery_position
        assert a.weather == "sunny" and a.hour in (3, 4)


def test_bad_constraints_fail_with_one_line():
    with pytest.raises(ValueError, match="unknown attribute 'colour'"):
        validate_constraints({"colour": ["red"]})
    with pytest.raises(ValueError, match="weather"):
        validate_constraints({"weather": ["snowy"]})
