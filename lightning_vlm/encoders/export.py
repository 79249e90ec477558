"""Callback that writes the single-file encoder checkpoint at the end of `fit`."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from .base import ImageEncoder


class ExportEncoder(pl.Callback):
    """After training, `pl_module.export(path)`: the file `ImageEncoder.load` and `lightning-vlm encode` read.

    Args:
        path: where to write it, e.g. runs/encoders/vq.ckpt.
    """

    def __init__(self, path: str):
        self.path = path

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, ImageEncoder):
            raise TypeError(f"ExportEncoder exports ImageEncoders, not {type(pl_module).__name__}")
        if trainer.is_global_zero:
            rank_zero_info(f"encoder exported to {pl_module.export(self.path)}")
