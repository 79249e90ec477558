"""Free-form requests for `lightning-vlm predict`: text-to-image prompts and questions about image files."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """[3, size, size] float in [0, 1]; other sizes are resized (a one-line error if unreadable)."""
    try:
        img = Image.open(path).convert("RGB")
    except (OSError, ValueError) as exn:
        raise ValueError(f"cannot read image {path}: {exn}") from None
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255


class PromptDataModule(pl.LightningDataModule):
    """Requests to run through a trained model.

    Args:
        prompts: text-to-image requests; or a path to a text file with one per line.
        images: image files to ask `questions` about (each question for each image).
        questions: questions asked about every image.
        image_size: size the model's input encoder expects.
    """

    def __init__(self, prompts: list[str] | str | None = None, images: list[str] | None = None,
                 questions: list[str] | None = None, image_size: int = 64, batch_size: int = 8):
        super().__init__()
        if isinstance(prompts, str):
            path = Path(prompts)
            if not path.is_file():
                raise FileNotFoundError(f"prompt file not found: {path}")
            prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        self.items = [{"kind": "generate", "text": p} for p in prompts or []]
        for image in images or []:
            pixels = load_image(image, image_size)
            for q in questions or ["Describe this watch."]:
                self.items.append({"kind": "answer", "text": q, "image": pixels, "path": str(image)})
        if not self.items:
            raise ValueError("nothing to predict: give data.init_args.prompts and/or images")
        self.batch_size = batch_size

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.items, batch_size=self.batch_size, collate_fn=list)
