"""Callback that writes the single-file encoder checkpoint at the end of `fit`, then checks it with the reader."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from .base import ImageEncoder


class ExportEncoder(pl.Callback):
    """After training, `pl_module.export(path)`: the file `ImageEncoder.load` and `lightning-vlm encode` read.

    Then, when an attribute reader checkpoint exists, prints (and logs to TensorBoard as
    text) the reader's scores on `check_images` reconstructions of the data's
    `check_split` beside its scores on the originals: a tokenizer that loses the watch's
    attributes makes every study built on it meaningless, so this is shown after every run.

    Args:
        path: where to write it, e.g. runs/encoders/vq.ckpt.
        reader: attribute reader checkpoint for the check; skipped with one line when missing.
        check_split, check_images: which data split and how many of its images to check.
    """

    def __init__(self, path: str, reader: str | None = "runs/reader/best.ckpt", check_split: str = "val", check_images: int = 200):
        self.path = path
        self.reader = reader
        self.check_split = check_split
        self.check_images = check_images

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, ImageEncoder):
            raise TypeError(f"ExportEncoder exports ImageEncoders, not {type(pl_module).__name__}")
        if not trainer.is_global_zero:
            return
        rank_zero_info(f"encoder exported to {pl_module.export(self.path)}")
        data_dir = getattr(trainer.datamodule, "data_dir", None)
        if not self.reader or data_dir is None:
            return
        if not Path(self.reader).is_file():
            rank_zero_info(f"no attribute reader at {self.reader}: reconstruction check skipped "
                           "(train it with configs/eval/reader.yaml, then run benchmarks/encoder_quality.py)")
            return
        table = self.check(pl_module, data_dir)
        rank_zero_info(f"reader scores on {self.check_split} reconstructions (ratio to originals):\n{table}")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("encoder/reconstruction_check", table, trainer.global_step)

    def check(self, encoder: ImageEncoder, data_dir: str) -> str:
        from ..eval.encoder_check import markdown_table, reconstruct, reconstruction_rows, split_images
        from ..eval.reader import AttributeReader

        images, attrs = split_images(data_dir, self.check_split, self.check_images)
        was_training = encoder.training
        encoder.eval()
        recon = reconstruct(encoder, images)
        encoder.train(was_training)
        return markdown_table(reconstruction_rows(AttributeReader.load(self.reader), images, attrs, {type(encoder).__name__: recon}))
