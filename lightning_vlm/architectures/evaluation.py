"""Test-time metrics of a UnifiedVLM: VQA, captions and generated images, synced across ranks.

Names are stable (configs, reports and studies read them): test/vqa/{time,weather,battery,position,weather_position,
battery_position,total} (lenient: every turn of a conversation, case-insensitive, loose
number formats), test/vqa_ref/{time,weather,battery,position,total} (the reference protocol
of REFERENCE.md "Scoring", `eval.reference`: first question of each conversation only; report
findings with these), test/caption/{recall,correct/<attr>}, test/gen/<attr> (the
attribute reader on what each prompt asked for), test/gen/{fd_reader,kid_reader_mean,
kid_reader_std}, test/gen/corner_filled (the requested corner holds an item, the right one
or not: beside gen/*_position it tells a swapped pair from an ignored corner), and
test/gen/prompt_gain: the relative drop of the teacher-forced image loss on the true image
when the model sees the request rather than <unk> tokens in its place (0: generation
ignores the prompt). Per-value breakdowns (`eval.breakdown`) split the categorical scores by
the true value: test/vqa/{weather,weather_position,battery_position}/<value> (lenient, every
turn) and test/gen/.../<value> (only prompts that asked for the attribute), e.g.
test/vqa/weather/cloudy. Padding rows (DDP balance copies) are never scored.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torchmetrics import MeanMetric

from ..eval.breakdown import breakdown_name, breakdown_names
from ..eval.caption import score_caption
from ..eval.reference import REFERENCE_TYPES, reference_score
from ..eval.scoring import corner_filled, mentioned_groups, score_answer, score_attributes
from ..eval.open_answers import OPEN_METRICS, open_answer_scores, open_turns
from .generate import generate_images, generate_text, prompt_for

log = logging.getLogger("lightning_vlm")
POSITION_TYPES = ("weather_position", "battery_position")
GROUPS = ("time", "weather", "battery", "weather_position", "battery_position")
# Every rank holds every metric, so syncing at compute time matches up across ranks.
METRIC_NAMES = (
    [f"vqa/{g}" for g in GROUPS] + ["vqa/position", "vqa/total"] + breakdown_names("vqa")
    + [f"vqa_ref/{t}" for t in REFERENCE_TYPES] + ["vqa_ref/total"]
    + ["caption/recall"] + [f"caption/correct/{g}" for g in GROUPS]
    + [f"gen/{g}" for g in GROUPS] + ["gen/corner_filled", "gen/prompt_gain"] + breakdown_names("gen")
    + list(OPEN_METRICS)
)


class VLMEvaluator(nn.Module):
    """Accumulates every test metric; `compute()` returns {name: float} (synced under DDP)."""

    def __init__(self, reader=None):
        super().__init__()
        self.means = nn.ModuleDict({name.replace("/", "__"): MeanMetric(sync_on_compute=True) for name in METRIC_NAMES})
        self.reader = reader
        self.distances = None
        if reader is not None:
            from ..eval.fd import ReaderDistances

            self.distances = ReaderDistances(reader)
        self.examples: list[dict] = []  # a few answers for TensorBoard
        self.last_images = None  # (generated, ground-truth renders, prompts) of the latest batch
        self.device = torch.device("cpu")

    def _add(self, name: str, value: float, weight: float = 1.0) -> None:
        self.means[name.replace("/", "__")].update(torch.tensor(value, dtype=torch.float32, device=self.device), weight)

    @torch.no_grad()
    def update(self, model, batch: dict, max_new_tokens: int, generator=None, keep_examples: int = 0) -> None:
        """Generates the batch's answers and images with `model` and scores them."""
        self.device = model.device
        real = [i for i, pad in enumerate(batch["is_padding"].tolist()) if not pad]
        understanding, asked = [], []  # (row, prompt), (meta, turn)
        for i in real:
            meta = batch["meta"][i]
            if meta["task"] == "vqa":
                for turn in range(len(meta["question_types"])) or open_turns(meta):  # imported VQA: its first answer
                    understanding.append((i, prompt_for(model, meta, turn)))
                    asked.append((meta, turn))
            elif meta["task"] == "caption":
                understanding.append((i, prompt_for(model, meta)))
                asked.append((meta, 0))
        if understanding:
            rows = [i for i, _ in understanding]
            outs = generate_text(model, [p for _, p in understanding], batch["images"][rows], max_new_tokens, generator=generator)
            for (meta, turn), ids in zip(asked, outs):
                text = model.tokenizer.decode(ids)
                self.score_text(meta, text, turn)
                if len(self.examples) < keep_examples:
                    vqa = meta["task"] == "vqa"
                    question = None if vqa else meta["conversations"][-2]["text"]
                    qtype = (meta["question_types"][turn] if meta["question_types"] else "open") if vqa else None
                    self.examples.append({"task": meta["task"], "type": qtype, "answer": text, "question": question, "image_id": meta["image_id"]})
        gen = [i for i in real if batch["meta"][i]["task"] == "generation"]
        if gen:
            self._add("gen/prompt_gain", prompt_gain(model, batch, gen), len(gen))
            images, _ = generate_images(model, [prompt_for(model, batch["meta"][i]) for i in gen], max_new_tokens, generator)
            truth = batch["images"][gen]
            if self.reader is not None:
                preds = self.reader.predict_attributes(images.to(self.reader.device))
                for pred, i in zip(preds, gen):
                    self.score_image_attributes(pred, batch["meta"][i])
                self.distances.update(images.to(self.reader.device), real=False)
                self.distances.update(truth.to(self.reader.device), real=True)
            self.last_images = (images.cpu(), truth.cpu(), [batch["meta"][i]["conversations"][0]["text"] for i in gen])

    def score_text(self, meta: dict, text: str, turn: int = 0) -> None:
        """Scores one generated answer: to the `turn`-th question of a VQA sample, or a caption.

        VQA: lenient per type (vqa/<type>, vqa/position, vqa/total) and per true value
        (vqa/<group>/<value>) on every turn; the reference protocol (vqa_ref/...) on turn 0 only,
        its type read from the ground-truth answer string as the reference does.
        """
        if meta["task"] == "caption":
            for name, value in score_caption(text, meta["attributes"], meta["mentioned"]).items():
                self._add(f"caption/{name}", value)
            return
        if meta["task"] != "vqa":
            raise ValueError(f"score_text scores vqa and caption answers, not '{meta['task']}'")
        if not meta["question_types"]:  # imported, open-ended: eval.open_answers
            for name, value in open_answer_scores(meta, text).items():
                self._add(name, value)
            return
        attrs, qtype = meta["attributes"], meta["question_types"][turn]
        score = score_answer(qtype, text, attrs)
        self._add(f"vqa/{qtype}", score)
        self._add("vqa/total", score)
        if qtype in POSITION_TYPES:
            self._add("vqa/position", score)
        if (name := breakdown_name("vqa", qtype, attrs)) is not None:
            self._add(name, score)
        if turn == 0:  # the reference scores only the question that comes with the image
            ref_type, ref = reference_score(text, meta["conversations"][1]["text"])
            self._add(f"vqa_ref/{ref_type}", ref)
            self._add("vqa_ref/total", ref)

    def score_image_attributes(self, pred: dict, meta: dict) -> None:
        """Scores the attributes the reader saw in one generated image against what its prompt asked for
        (gen/<group>, gen/corner_filled, gen/<group>/<value>); attributes the prompt left open are not scored."""
        attrs = meta["attributes"]
        for group, score in score_attributes(pred, attrs, mentioned_groups(meta["mentioned"])).items():
            self._add(f"gen/{group}", score)
            if (name := breakdown_name("gen", group, attrs)) is not None:
                self._add(name, score)
            if group in POSITION_TYPES:
                self._add("gen/corner_filled", corner_filled(pred, attrs, group))

    def compute(self) -> dict[str, float]:
        """Every metric, synced across ranks in a fixed order; metrics nothing contributed to are left out."""
        out = {}
        for key, metric in self.means.items():
            value = float(metric.compute()) if metric.update_count or torch.distributed.is_initialized() else float("nan")
            if value == value:  # not NaN: some rank contributed
                out[key.replace("__", "/")] = value
        if self.distances is not None:
            try:
                out.update({f"gen/{k}": v for k, v in self.distances.compute().items()})
            except RuntimeError as exn:
                log.warning("FD-reader/KID-reader skipped: %s", exn)
        return dict(sorted(out.items()))


@torch.no_grad()
def prompt_gain(model, batch: dict, rows: list[int]) -> float:
    """1 - (image loss with the request) / (image loss with it hidden), teacher-forced on the true images
    of `rows`; both passes draw the same random numbers (the diffusion head's noise and timesteps)."""
    from .batch import select_rows

    keep = torch.zeros(len(batch["meta"]), dtype=torch.bool, device=batch["input_ids"].device)
    keep[rows] = True
    sub = select_rows(batch, keep)
    hidden = {**sub, "input_ids": model.hide_prompts(sub["input_ids"], torch.ones_like(keep[keep]))}
    losses = []
    for b in (sub, hidden):
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
            torch.manual_seed(0)
            losses.append(float(model.losses(b)["image"]))
    return 1 - losses[0] / losses[1] if losses[1] > 0 else 0.0
