"""Test-time evaluation of a VLM: generate answers and images for a batch, let the dataset score them.

The evaluator knows nothing of any dataset: it builds each VQA turn's / caption's prompt
from the sample's conversation, generates with the model's public methods, and hands the
outputs to the dataset's `Scorer` (`data.dataset`), which names and computes the metrics
(e.g. the smart watch's `vqa/weather`, `gen/battery_position`, `gen/fd_reader`). It adds one
metric of its own: `gen/prompt_gain`, the relative drop of the teacher-forced image loss on
the true image when the model sees the request rather than <unk> tokens in its place
(0: generation ignores the prompt). Means are torchmetrics, synced across ranks in a fixed
order; padding rows (DDP balance copies) are never scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchmetrics import MeanMetric

from ..models.generation import anyone, prompt_for, sharded

OWN_METRICS = ("gen/prompt_gain",)


@dataclass
class GenerationSettings:
    """How answers and images are sampled at evaluation."""

    max_new_tokens: int = 40
    text_temperature: float = 0.0  # 0 = greedy
    guidance_scale: float = 1.0  # classifier-free guidance of image tokens (1 = off)


class VLMEvaluator(nn.Module):
    """Accumulates the scorer's metrics and prompt gain over test batches; `compute()` -> {name: float}."""

    def __init__(self, scorer: nn.Module, settings: GenerationSettings | None = None):
        super().__init__()
        self.scorer = scorer
        self.settings = settings or GenerationSettings()
        names = list(OWN_METRICS) + [n for n in scorer.metric_names if n not in OWN_METRICS]
        self.means = nn.ModuleDict({n.replace("/", "__"): MeanMetric(sync_on_compute=True) for n in names})
        self.examples: list[dict] = []  # a few answers, for TensorBoard
        self.last_images = None  # (generated, ground truth, prompts) of the latest batch with generation rows

    def _add(self, scores, weight: float = 1.0) -> None:
        for name, value in scores:
            metric = self.means[name.replace("/", "__")]
            metric.update(torch.tensor(float(value), dtype=torch.float32, device=metric.device), weight)

    @torch.no_grad()
    def update(self, model, batch: dict, generator: torch.Generator | None = None, keep_examples: int = 0) -> None:
        """Generates the batch's answers and images with `model` (a `models.VLM`) and scores them.

        Under FSDP every generation step gathers each layer from all ranks, so all ranks must make the
        same calls: a rank with no question (or no request) in its batch, e.g. one of padding only at
        the end of a split while another rank still has rows, answers (or draws) a stand-in, row 0,
        unscored."""
        real = [i for i, pad in enumerate(batch["is_padding"].tolist()) if not pad]
        asked = [(i, turn) for i in real if batch["meta"][i]["task"] != "generation" for turn in self.turns(batch["meta"][i])]
        gen = [i for i in real if batch["meta"][i]["task"] == "generation"]
        answer, draw = bool(asked), bool(gen)
        if sharded(model):
            answer, draw = anyone(answer, draw, device=batch["input_ids"].device)
        if answer:
            self._answer(model, batch, asked, generator, keep_examples)
        if draw:
            self._draw(model, batch, gen, generator)

    def _answer(self, model, batch: dict, asked: list[tuple[int, int]], generator, keep_examples: int) -> None:
        """Answers each (row, turn) of `asked` and scores it; none: a stand-in answered, unscored."""
        s = self.settings
        rows = [i for i, _ in asked] or [0]
        prompts = [prompt_for(model, batch["meta"][i], turn) for i, turn in asked] or [prompt_for(model, batch["meta"][0])]
        outs = model.generate_text(prompts, batch["images"][rows], max_new_tokens=s.max_new_tokens,
                                   generator=generator, temperature=s.text_temperature, groups=rows,
                                   image_ids=[batch["meta"][i].get("image_id") for i in rows])
        for (i, turn), ids in zip(asked, outs):
            meta, text = batch["meta"][i], model.tokenizer.decode(ids)
            self._add(self.scorer.score_text(meta, text, turn))
            if len(self.examples) < keep_examples:
                self.examples.append({"task": meta["task"], "turn": turn, "answer": text, "image_id": meta["image_id"]})

    def _draw(self, model, batch: dict, gen: list[int], generator) -> None:
        """Draws the requests of rows `gen` and scores the images; none: a stand-in drawn, unscored."""
        s = self.settings
        rows = gen or [0]
        gain = prompt_gain(model, batch, rows)
        metas = [batch["meta"][i] for i in rows]
        images, _ = model.generate_images([prompt_for(model, m) for m in metas], max_new_tokens=s.max_new_tokens,
                                          generator=generator, guidance_scale=s.guidance_scale, temperature=s.text_temperature)
        if not gen:
            return
        self._add([("gen/prompt_gain", gain)], len(gen))
        truth = batch["images"][gen]
        self._add(self.scorer.score_images(images, truth, metas))
        self.last_images = (images.cpu(), truth.cpu(), [m["conversations"][0]["text"] for m in metas])

    def turns(self, meta: dict) -> list[int]:
        """The assistant turns of an understanding sample to answer: the scorer's choice (`Scorer.turns`),
        by default every VQA question, or the one caption."""
        if hasattr(self.scorer, "turns"):
            return self.scorer.turns(meta)
        return list(range(max(1, len(meta.get("question_types") or [])))) if meta["task"] == "vqa" else [0]

    def compute(self) -> dict[str, float]:
        """Every metric, synced across ranks in a fixed order; metrics nothing contributed to are left out."""
        out = {}
        for key, metric in self.means.items():
            value = float(metric.compute()) if metric.update_count or torch.distributed.is_initialized() else float("nan")
            if value == value:  # not NaN: some rank contributed
                out[key.replace("__", "/")] = value
        out.update(self.scorer.compute())
        return dict(sorted(out.items()))


@torch.no_grad()
def prompt_gain(model, batch: dict, rows: list[int]) -> float:
    """1 - (image loss with the request) / (image loss with it hidden), teacher-forced on the true images
    of `rows`; both passes draw the same random numbers (the diffusion head's noise and timesteps)."""
    keep = torch.zeros(len(batch["meta"]), dtype=torch.bool, device=batch["input_ids"].device)
    keep[rows] = True
    sub = select_rows(batch, keep)
    hidden = {**sub, "input_ids": model.hide_prompts(sub["input_ids"], torch.ones_like(keep[keep]))}
    losses = []
    for b in (sub, hidden):
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
            torch.manual_seed(0)
            losses.append(float(model(b)["image"]))
    return 1 - losses[0] / losses[1] if losses[1] > 0 else 0.0


def select_rows(batch: dict, rows: torch.Tensor) -> dict:
    """The batch restricted to `rows` ([B] bool), lists included."""
    keep = rows.nonzero().flatten().tolist()
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == rows.shape[0]:
            out[k] = v[rows]
        elif isinstance(v, list) and len(v) == rows.shape[0]:
            out[k] = [v[i] for i in keep]
        else:
            out[k] = v
    return out
