"""`lightning-vlm predict`: answers and generated images written to a folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torchvision
from lightning.pytorch.callbacks import BasePredictionWriter

from ..models.generation import prompt_for


@torch.no_grad()
def predict_requests(model, requests: list[dict], settings, generator=None) -> list[dict]:
    """Runs, with a `models.VLM` and `eval.evaluator.GenerationSettings`, PromptDataModule items: {"kind": "generate"|"answer", "text", ["image"]} -> results in order."""
    results: list[dict] = [{} for _ in requests]
    gen = [i for i, r in enumerate(requests) if r["kind"] == "generate"]
    if gen:
        prompts = [prompt_for(model, {"task": "generation", "conversations": [{"role": "user", "text": requests[i]["text"]}]}) for i in gen]
        images, texts = model.generate_images(prompts, max_new_tokens=settings.max_new_tokens, generator=generator,
                                              guidance_scale=settings.guidance_scale, temperature=settings.text_temperature)
        for j, i in enumerate(gen):
            results[i] = {"kind": "generate", "prompt": requests[i]["text"], "reply": texts[j], "image": images[j].cpu()}
    ask = [i for i, r in enumerate(requests) if r["kind"] == "answer"]
    if ask:
        prompts = [prompt_for(model, {"task": "vqa", "conversations": [{"role": "user", "text": requests[i]["text"]}]}) for i in ask]
        images = torch.stack([requests[i]["image"] for i in ask]).to(model.device)
        outs = model.generate_text(prompts, images, max_new_tokens=settings.max_new_tokens, generator=generator,
                                   temperature=settings.text_temperature)
        for j, i in enumerate(ask):
            results[i] = {"kind": "answer", "question": requests[i]["text"], "image_path": requests[i]["path"],
                          "answer": model.tokenizer.decode(outs[j])}
    return results


class PredictionWriter(BasePredictionWriter):
    """Saves generated images as PNGs and every request's result as one line of results.jsonl."""

    def __init__(self, output_dir: str = "runs/predictions"):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / f"results-rank{trainer.global_rank}.jsonl", "a") as sink:
            for k, result in enumerate(prediction):
                result = dict(result)
                if "image" in result:
                    name = f"generated-b{batch_idx:04d}-{k:02d}.png"
                    torchvision.utils.save_image(result.pop("image"), self.output_dir / name)
                    result["image_file"] = name
                sink.write(json.dumps(result) + "\n")
