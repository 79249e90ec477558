"""Test-time metrics of a UnifiedVLM: VQA, captions and generated images, synced across ranks.

Names are stable (DESIGN.md): test/vqa/{time,weather,battery,position,weather_position,
battery_position,total}, test/caption/{recall,correct/<attr>}, test/gen/<attr> (the
attribute reader on what each prompt asked for), test/gen/{fd_reader,kid_reader_mean,
kid_reader_std}, test/gen/corner_filled (the requested corner holds an item, the right one
or not: beside gen/*_position it tells a swapped pair from an ignored corner), and
test/gen/prompt_gain: the relative drop of the teacher-forced image loss on the true image
when the model sees the request rather than <unk> tokens in its place (0: generation
ignores the prompt). Padding rows (DDP balance copies) are never scored.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torchmetrics import MeanMetric

from ..eval.caption import score_caption
from ..eval.scoring import corner_filled, mentioned_groups, score_answer, score_attributes
from .generate import generate_images, generate_text, prompt_for

log = logging.getLogger("lightning_vlm")
POSITION_TYPES = ("weather_position", "battery_position")
GROUPS = ("time", "weather", "battery", "weather_position", "battery_position")
# Every rank holds every metric, so syncing at compute time matches up across ranks.
METRIC_NAMES = (
    [f"vqa/{g}" for g in GROUPS] + ["vqa/position", "vqa/total", "caption/recall"]
    + [f"caption/correct/{g}" for g in GROUPS] + [f"gen/{g}" for g in GROUPS] + ["gen/corner_filled", "gen/prompt_gain"]
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
        self.device = model.device
        real = [i for i, pad in enumerate(batch["is_padding"].tolist()) if not pad]
        understanding, truths = [], []
        for i in real:
            meta = batch["meta"][i]
            if meta["task"] == "vqa":
                for turn, qtype in enumerate(meta["question_types"]):
                    understanding.append((i, prompt_for(model, meta, turn)))
                    truths.append(("vqa", qtype, meta))
            elif meta["task"] == "caption":
                understanding.append((i, prompt_for(model, meta)))
                truths.append(("caption", None, meta))
        if understanding:
            rows = [i for i, _ in understanding]
            outs = generate_text(model, [p for _, p in understanding], batch["images"][rows], max_new_tokens, generator=generator)
            for (kind, qtype, meta), ids in zip(truths, outs):
                text = model.tokenizer.decode(ids)
                if kind == "vqa":
                    score = score_answer(qtype, text, meta["attributes"])
                    self._add(f"vqa/{qtype}", score)
                    self._add("vqa/total", score)
                    if qtype in POSITION_TYPES:
                        self._add("vqa/position", score)
                else:
                    for name, value in score_caption(text, meta["attributes"], meta["mentioned"]).items():
                        self._add(f"caption/{name}", value)
                if len(self.examples) < keep_examples:
                    question = meta["conversations"][-2]["text"] if kind == "caption" else None
                    self.examples.append({"task": kind, "type": qtype, "answer": text, "question": question, "image_id": meta["image_id"]})
        gen = [i for i in real if batch["meta"][i]["task"] == "generation"]
        if gen:
            self._add("gen/prompt_gain", prompt_gain(model, batch, gen), len(gen))
            images, _ = generate_images(model, [prompt_for(model, batch["meta"][i]) for i in gen], max_new_tokens, generator)
            truth = batch["images"][gen]
            if self.reader is not None:
                metas = [batch["meta"][i] for i in gen]
                preds = self.reader.predict_attributes(images.to(self.reader.device))
                for pred, meta in zip(preds, metas):
                    for group, score in score_attributes(pred, meta["attributes"], mentioned_groups(meta["mentioned"])).items():
                        self._add(f"gen/{group}", score)
                        if group in POSITION_TYPES:
                            self._add("gen/corner_filled", corner_filled(pred, meta["attributes"], group))
                self.distances.update(images.to(self.reader.device), real=False)
                self.distances.update(truth.to(self.reader.device), real=True)
            self.last_images = (images.cpu(), truth.cpu(), [batch["meta"][i]["conversations"][0]["text"] for i in gen])

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
    from .base import select_rows

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
