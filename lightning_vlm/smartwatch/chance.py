"""Chance levels of the smart-watch metrics, computed: what a model that learnt nothing scores.

Two baselines per metric. `chance`: a uniformly random answer (VQA), or the attribute reader on a
random other watch (generation). `best_constant`: the best single answer given to every question
of a type (VQA), or the best of three uninformative images (blank canvas, uniform noise, a random
other watch) for generation. A model must beat the stronger of the two before it has learnt
anything from the image or the request. Both are Monte-Carlo estimates with a fixed seed, so the
same call gives the same numbers (`benchmarks/chance_levels.py` prints them; study reports use them).
"""

from __future__ import annotations

import numpy as np
import torch

from .reference import reference_score
from .scoring import GROUPS, score_answer, score_attributes
from .tasks import answer_text
from .world import CORNERS, WEATHERS, sample_attributes

# The first question of a conversation is drawn uniformly from these (the default dataset config);
# the reference protocol scores that question only and merges the two corner types into "position".
QUESTION_TYPES = ("time", "weather", "battery", "weather_position", "battery_position")
CONSTANT_CANDIDATES = {"time": ("06:00:00",), "weather": WEATHERS, "battery": ("50%",),
                       "weather_position": CORNERS, "battery_position": CORNERS}


def _vqa_scores(rng: np.random.Generator, n: int) -> dict[str, dict[str, np.ndarray]]:
    """{qtype: {"uniform" | constant: [(lenient, reference) x n]}} against n random watches."""
    out = {}
    for qtype in QUESTION_TYPES:
        per = {key: [] for key in ("uniform", *CONSTANT_CANDIDATES[qtype])}
        for _ in range(n):
            truth, guess = sample_attributes(rng), sample_attributes(rng)
            true_text, attrs = answer_text(qtype, truth), truth.to_dict()
            for key in per:
                answer = answer_text(qtype, guess) if key == "uniform" else key
                per[key].append((score_answer(qtype, answer, attrs), reference_score(answer, true_text)[1]))
        out[qtype] = {k: np.asarray(v) for k, v in per.items()}
    return out


def vqa_chance(n: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """{metric: {"chance", "best_constant"}} for vqa/* (lenient) and vqa_ref/* (reference rules, first question)."""
    scores = _vqa_scores(np.random.default_rng(seed), n)
    out: dict[str, dict[str, float]] = {}
    for col, prefix in ((0, "vqa"), (1, "vqa_ref")):
        uniform = {q: float(scores[q]["uniform"][:, col].mean()) for q in QUESTION_TYPES}
        best = {q: max(float(v[:, col].mean()) for k, v in scores[q].items() if k != "uniform") for q in QUESTION_TYPES}
        for q in QUESTION_TYPES:
            name = q if prefix == "vqa" or "position" not in q else None
            if name:
                out[f"{prefix}/{name}"] = {"chance": uniform[q], "best_constant": best[q]}
        position = [q for q in QUESTION_TYPES if "position" in q]
        out[f"{prefix}/position"] = {k: float(np.mean([d[q] for q in position])) for k, d in (("chance", uniform), ("best_constant", best))}
        out[f"{prefix}/total"] = {k: float(np.mean(list(d.values()))) for k, d in (("chance", uniform), ("best_constant", best))}
    return out


@torch.no_grad()
def reader_floor(reader, n: int = 1000, seed: int = 0, image_size: int = 64) -> dict[str, dict[str, float]]:
    """{image kind: {group: mean reader score}} of images that say nothing about random requests."""
    from torchvision.transforms.functional import to_tensor

    from .render import render_watch

    rng = np.random.default_rng(seed)
    targets = [sample_attributes(rng).to_dict() for _ in range(n)]
    kinds = {
        "blank": torch.ones(n, 3, image_size, image_size),
        "noise": torch.from_numpy(rng.random((n, 3, image_size, image_size), dtype=np.float32)),
        "other watch": torch.stack([to_tensor(render_watch(sample_attributes(rng), image_size)) for _ in range(n)]),
    }
    out = {}
    for kind, images in kinds.items():
        scores = [score_attributes(p, t) for p, t in zip(reader.predict_attributes(images), targets)]
        out[kind] = {g: float(np.mean([s[g] for s in scores])) for g in GROUPS}
    return out


def gen_chance(reader, n: int = 1000, seed: int = 0, image_size: int = 64) -> dict[str, dict[str, float]]:
    """{gen/<group>: {"chance": reader on a random other watch, "best_constant": best uninformative image}}."""
    floor = reader_floor(reader, n, seed, image_size)
    return {f"gen/{g}": {"chance": floor["other watch"][g], "best_constant": max(k[g] for k in floor.values())} for g in GROUPS}


def chance_levels(reader=None, n: int = 1000, seed: int = 0, image_size: int = 64) -> dict[str, dict[str, float]]:
    """Every metric's two baselines, rounded to 3 decimals; gen/* only with an attribute reader."""
    out = vqa_chance(n, seed)
    if reader is not None:
        out.update(gen_chance(reader, n, seed, image_size))
    return {m: {k: round(v, 3) for k, v in d.items()} for m, d in sorted(out.items())}
