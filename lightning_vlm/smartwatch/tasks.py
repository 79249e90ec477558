"""Turns one watch into the text of each task: VQA, caption and generation.

Probabilities follow the study: a VQA conversation has one turn plus up to three
more, each added with probability `extra_turn_prob`; question types are uniform over
the enabled ones; a caption always states the time and each other attribute with
probability `clause_prob`; a generation request uses the same clause sampler.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .templates import ACKNOWLEDGEMENTS, CAPTION_QUESTIONS, CLAUSES, GENERATION_REQUESTS, QUESTIONS
from .world import WatchAttributes

OPTIONAL_CLAUSES = ("weather", "battery", "weather_position", "battery_position")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def answer_text(question_type: str, attrs: WatchAttributes) -> str:
    """The bare value the study expects as an answer: `HH:MM:SS`, `sunny`, `57%`, `top-left`."""
    if question_type == "time":
        return attrs.time_text
    if question_type == "battery":
        return attrs.battery_text
    return str(getattr(attrs, question_type))


def vqa_conversation(
    attrs: WatchAttributes,
    rng: np.random.Generator,
    question_types: Sequence[str],
    extra_turn_prob: float = 0.4,
    max_extra_turns: int = 3,
) -> dict:
    n_turns = 1 + sum(bool(rng.random() < extra_turn_prob) for _ in range(max_extra_turns))
    conversation, asked = [], []
    for _ in range(n_turns):
        qtype = _pick(rng, question_types)
        asked.append(qtype)
        conversation.append({"role": "user", "text": _pick(rng, QUESTIONS[qtype])})
        conversation.append({"role": "assistant", "text": answer_text(qtype, attrs)})
    return {"task": "vqa", "conversations": conversation, "question_types": asked}


def describe(
    attrs: WatchAttributes,
    rng: np.random.Generator,
    clause_prob: float = 0.5,
    optional: Sequence[str] = OPTIONAL_CLAUSES,
) -> tuple[str, list[str]]:
    """A description: the time clause first, then each optional clause with `clause_prob`, shuffled."""
    mentioned = [name for name in optional if rng.random() < clause_prob]
    mentioned = [mentioned[i] for i in rng.permutation(len(mentioned))]
    mentioned = ["time", *mentioned]
    text = " ".join(_pick(rng, CLAUSES[name]).format(answer_text(name, attrs)) for name in mentioned)
    return text, mentioned


def caption_conversation(attrs: WatchAttributes, rng: np.random.Generator, clause_prob: float = 0.5, optional=OPTIONAL_CLAUSES) -> dict:
    question = _pick(rng, CAPTION_QUESTIONS)
    text, mentioned = describe(attrs, rng, clause_prob, optional)
    conversation = [{"role": "user", "text": question}, {"role": "assistant", "text": text}]
    return {"task": "caption", "conversations": conversation, "mentioned": mentioned}


def generation_conversation(attrs: WatchAttributes, rng: np.random.Generator, clause_prob: float = 0.5, optional=OPTIONAL_CLAUSES) -> dict:
    """A text-to-image request; the image follows the acknowledgement in the assistant turn."""
    text, mentioned = describe(attrs, rng, clause_prob, optional)
    conversation = [
        {"role": "user", "text": _pick(rng, GENERATION_REQUESTS).format(text)},
        {"role": "assistant", "text": _pick(rng, ACKNOWLEDGEMENTS)},
    ]
    return {"task": "generation", "conversations": conversation, "mentioned": mentioned}


PLAN_ORDER = ("weather", "weather_position", "battery_position", "battery", "time")


def plan_fields(fields: Sequence[str] | None) -> tuple[str, ...]:
    """The attributes a plan states, in `PLAN_ORDER` (None: all of them); unknown names fail here."""
    if fields is None:
        return PLAN_ORDER
    unknown = sorted(set(fields) - set(PLAN_ORDER))
    if unknown or not fields:
        raise ValueError(f"generation_plan: unknown or no attribute(s) {unknown}; choose from {', '.join(PLAN_ORDER)}")
    return tuple(name for name in PLAN_ORDER if name in fields)


def plan_reply(reply: str, attrs: WatchAttributes, fields: Sequence[str] | None = None) -> str:
    """A generation reply that states every attribute, in a fixed order, before the image.

    With it the model commits in text (discrete: greedy or sampled) to what the request leaves open,
    then draws a watch whose every attribute is fixed. A deterministic image head (regression)
    otherwise draws the mean of all watches the request allows: an icon smeared over the
    corners the request leaves open.
    """
    return " ".join([reply, *(CLAUSES[name][0].format(answer_text(name, attrs)) for name in plan_fields(fields))])


def with_generation_plan(meta: dict, fields: Sequence[str] | None = None) -> dict:
    """A generation sample's meta with its assistant reply replaced by `plan_reply` of `fields` (None:
    every attribute); other tasks unchanged. Unknown `fields` fail on any meta (so at once, when the
    DataModule checks them with an empty one, not later in a loader worker)."""
    fields = plan_fields(fields)
    if meta.get("task") != "generation":
        return meta
    attrs = WatchAttributes.from_dict(meta["attributes"])
    conversations = [
        {**turn, "text": plan_reply(turn["text"], attrs, fields)} if turn["role"] == "assistant" else turn
        for turn in meta["conversations"]
    ]
    return {**meta, "conversations": conversations}
