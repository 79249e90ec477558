"""The smart-watch test metrics: VQA answers, captions and generated images (`data.dataset.Scorer`).

Names are stable (configs, reports and studies read them; the evaluator adds the "test/"
prefix): vqa/{time,weather,battery,weather_position,battery_position,position,total}
(lenient: every turn of a conversation, case-insensitive, loose number formats),
vqa_ref/{time,weather,battery,position,total} (the reference protocol of REFERENCE.md
"Scoring", `reference`: first question of each conversation only; report findings with
these), caption/{recall,correct/<attr>}, gen/<attr> (the attribute reader on what each
prompt asked for), gen/{fd_reader,kid_reader_mean,kid_reader_std}, and gen/corner_filled
(the requested corner holds an item, the right one or not: beside gen/*_position it tells a
swapped pair from an ignored corner). Per-value breakdowns (`breakdown`) split the
categorical scores by the true value: vqa/{weather,weather_position,battery_position}/<value>
(every turn) and gen/.../<value> (only prompts that asked for the attribute), e.g.
vqa/weather/cloudy. Without a reader, generated images are not scored here.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor

from ..data.dataset import Scorer
from ..eval.fd import ReaderDistances
from .breakdown import breakdown_name, breakdown_names
from .caption import score_caption
from .reader import AttributeReader
from .reference import REFERENCE_TYPES, reference_score
from .scoring import GROUPS, corner_filled, mentioned_groups, score_answer, score_attributes

log = logging.getLogger("lightning_vlm")
POSITION_TYPES = ("weather_position", "battery_position")
METRIC_NAMES = tuple(
    [f"vqa/{g}" for g in GROUPS] + ["vqa/position", "vqa/total"] + breakdown_names("vqa")
    + [f"vqa_ref/{t}" for t in REFERENCE_TYPES] + ["vqa_ref/total"]
    + ["caption/recall"] + [f"caption/correct/{g}" for g in GROUPS]
    + [f"gen/{g}" for g in GROUPS] + ["gen/corner_filled"] + breakdown_names("gen")
)

# What a model that learnt nothing scores (benchmarks/RESULTS.md, "Chance levels", 1,000 draws each):
# VQA, the better of a uniform random and the best constant answer; generated images, the reader on a
# random other watch scored against the request.
CHANCE = {
    "vqa/time": 0.500, "vqa/weather": 0.326, "vqa/battery": 0.747, "vqa/weather_position": 0.263,
    "vqa/battery_position": 0.247, "vqa/position": 0.255,
    "gen/time": 0.503, "gen/weather": 0.338, "gen/battery": 0.655, "gen/weather_position": 0.247,
    "gen/battery_position": 0.251,
}


def load_reader(path: str) -> AttributeReader:
    """The attribute reader checkpoint at `path`, in eval mode; a missing file fails in one line."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"attribute reader checkpoint not found: {path} (data.init_args.reader); train it with "
                                "`lightning-vlm fit --config configs/eval/reader.yaml`, or set data.init_args.reader: null "
                                "to test without reader scores")
    return AttributeReader.load(path)


class SmartWatchScorer(Scorer):
    """Scores answers, captions and (with an attribute reader) generated images of the smart-watch world."""

    metric_names = METRIC_NAMES
    chance = CHANCE

    def __init__(self, reader: AttributeReader | None = None):
        super().__init__()
        self.reader = reader
        self.distances = ReaderDistances(reader) if reader is not None else None

    def turns(self, meta: dict) -> list[int]:
        """Every question of a VQA conversation; the one caption."""
        if meta["task"] == "vqa":
            return list(range(len(meta.get("question_types") or [])))
        return [0] if meta["task"] == "caption" else []

    def score_text(self, meta: dict, text: str, turn: int) -> list[tuple[str, float]]:
        """One generated answer to the `turn`-th question of a VQA sample, or a caption.

        VQA: lenient per type (vqa/<type>, vqa/position, vqa/total) and per true value
        (vqa/<group>/<value>) on every turn; the reference protocol (vqa_ref/...) on turn 0 only,
        its type read from the ground-truth answer string as the reference does.
        """
        if meta["task"] == "caption":
            return [(f"caption/{name}", value) for name, value in score_caption(text, meta["attributes"], meta["mentioned"]).items()]
        if meta["task"] != "vqa":
            raise ValueError(f"score_text scores vqa and caption answers, not '{meta['task']}'")
        attrs, qtype = meta["attributes"], meta["question_types"][turn]
        score = score_answer(qtype, text, attrs)
        scores = [(f"vqa/{qtype}", score), ("vqa/total", score)]
        if qtype in POSITION_TYPES:
            scores.append(("vqa/position", score))
        if (name := breakdown_name("vqa", qtype, attrs)) is not None:
            scores.append((name, score))
        if turn == 0:  # the reference scores only the question that comes with the image
            ref_type, ref = reference_score(text, meta["conversations"][1]["text"])
            scores += [(f"vqa_ref/{ref_type}", ref), ("vqa_ref/total", ref)]
        return scores

    def score_images(self, images: Tensor, truth: Tensor, metas: list[dict]) -> list[tuple[str, float]]:
        """The reader's attribute scores of each generated image against its prompt; both image sets feed FD/KID."""
        if self.reader is None:
            return []
        device = next(self.reader.parameters()).device
        images, truth = images.to(device), truth.to(device)
        scores = []
        for pred, meta in zip(self.reader.predict_attributes(images), metas):
            scores += self.score_image_attributes(pred, meta)
        self.distances.update(images, real=False)
        self.distances.update(truth, real=True)
        return scores

    def score_image_attributes(self, pred: dict, meta: dict) -> list[tuple[str, float]]:
        """The attributes read off one generated image against what its prompt asked for (gen/<group>,
        gen/corner_filled, gen/<group>/<value>); attributes the prompt left open are not scored."""
        attrs, scores = meta["attributes"], []
        for group, score in score_attributes(pred, attrs, mentioned_groups(meta["mentioned"])).items():
            scores.append((f"gen/{group}", score))
            if (name := breakdown_name("gen", group, attrs)) is not None:
                scores.append((name, score))
            if group in POSITION_TYPES:
                scores.append(("gen/corner_filled", corner_filled(pred, attrs, group)))
        return scores

    def compute(self) -> dict[str, float]:
        """FD-reader and KID-reader over every generated and true image (synced under DDP); {} without a reader."""
        if self.distances is None:
            return {}
        try:
            return {f"gen/{k}": v for k, v in self.distances.compute().items()}
        except RuntimeError as exn:
            log.warning("FD-reader/KID-reader skipped: %s", exn)
            return {}
