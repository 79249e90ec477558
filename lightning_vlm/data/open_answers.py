"""Scores for open-ended answers (imported LLaVA-style VQA), and an answers file for other tools.

Imported conversations (`lightning-vlm data import-llava`) have no question types or world
attributes, so the smart-watch scores skip them. These are scored instead, on the first
assistant answer of each conversation (the turn that comes with the image, as the
reference protocol scores the smart-watch VQA):

- `open/exact`: the normalised answer equals the normalised reference;
- `open/contains`: the normalised reference appears in the normalised answer as whole words
  (what short-answer benchmarks accept from a chatty model: "It is red." for "red").

Normalisation, after the VQAv2 evaluation: lower case, punctuation dropped (a decimal point
kept), number words zero..twenty as digits, the articles a/an/the dropped, spaces collapsed.
Only references of at most `MAX_REFERENCE_WORDS` words are scored: matching a whole
paragraph (LLaVA's detailed descriptions, ShareGPT replies) says nothing.

A sample is "imported open VQA" when its task is vqa, it has no question types and it carries
the importer's `source_id` (see `data.llava_rows.conversation_meta`).

`OpenAnswerScorer` is the test-time `data.dataset.Scorer` of such data (the `llava` dataset).
`write_predictions` writes answers as JSON Lines in the format of LLaVA's `model_vqa` answer
files, which lmms-eval style converters read: question_id, prompt, text, answer_id, model_id,
metadata.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

from .dataset import Scorer
from .tokenizer import IMAGE

OPEN_METRICS = ("open/exact", "open/contains")
MAX_REFERENCE_WORDS = 10
NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty".split())}
ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"(?<!\d)\.(?!\d)|[^\w\s.]")


def is_open_vqa(meta: dict) -> bool:
    """An imported VQA conversation (open-ended answers), not a smart-watch one."""
    return meta.get("task") == "vqa" and not meta.get("question_types") and "source_id" in meta


def open_turns(meta: dict) -> list[int]:
    """Turns to score: [0] (the first answer) for imported VQA with a short enough reference, else []."""
    if not is_open_vqa(meta):
        return []
    ref = reference_answer(meta)
    return [0] if short_enough(ref) else []


def short_enough(reference: str | None) -> bool:
    """A reference of 1 to `MAX_REFERENCE_WORDS` normalised words: one worth matching."""
    return reference is not None and 0 < len(normalize_answer(reference).split()) <= MAX_REFERENCE_WORDS


def reference_answer(meta: dict) -> str | None:
    """The first assistant answer of the conversation."""
    return next((t["text"] for t in meta.get("conversations", []) if t["role"] == "assistant"), None)


def normalize_answer(text: str) -> str:
    text = _PUNCT.sub(" ", text.lower())
    words = [NUMBER_WORDS.get(w, w) for w in text.split()]
    return " ".join(w for w in words if w not in ARTICLES)


def score_open_answer(prediction: str, reference: str) -> dict[str, float]:
    """{"open/exact": 0 or 1, "open/contains": 0 or 1} of one answer against its reference."""
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    return {"open/exact": float(pred == ref), "open/contains": float(bool(ref) and f" {ref} " in f" {pred} ")}


def open_answer_scores(meta: dict, prediction: str) -> dict[str, float]:
    """The open-answer scores of a generated first answer, or {} when the sample is not scored that way."""
    return score_open_answer(prediction, reference_answer(meta)) if open_turns(meta) else {}


class OpenAnswerScorer(Scorer):
    """open/exact and open/contains of the first answer of each VQA conversation whose reference is short;
    nothing else is scored (no captions, no images)."""

    metric_names = OPEN_METRICS

    def turns(self, meta: dict) -> list[int]:
        return [0] if meta["task"] == "vqa" and short_enough(reference_answer(meta)) else []

    def score_text(self, meta: dict, text: str, turn: int) -> list[tuple[str, float]]:
        if turn != 0 or meta["task"] != "vqa" or not short_enough(reference := reference_answer(meta)):
            return []
        return list(score_open_answer(text, reference).items())


# ---- answers file -------------------------------------------------------------------------
def prediction_record(meta: dict, answer: str, model_id: str, prompt: str | None = None) -> dict:
    """One answer in LLaVA `model_vqa` / lmms-eval form; `answer_id` is a stable hash, not a random id."""
    question_id = str(meta.get("source_id") or meta.get("image_id"))
    if prompt is None:  # the first question as asked, without the image placeholder
        prompt = next((t["text"] for t in meta.get("conversations", []) if t["role"] == "user"), "").replace(IMAGE, "").strip()
    answer_id = hashlib.sha1(f"{model_id}\0{question_id}\0{answer}".encode()).hexdigest()[:22]
    metadata = {"image": meta.get("image_id"), "reference": reference_answer(meta), "task": meta.get("task")}
    return {"question_id": question_id, "prompt": prompt, "text": answer, "answer_id": answer_id,
            "model_id": model_id, "metadata": metadata}


def write_predictions(path: str | Path, records: Iterable[dict]) -> Path:
    """Writes records (see `prediction_record`) as JSON Lines, one answer per line; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as sink:
        for record in records:
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
