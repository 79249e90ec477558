"""Training callbacks: two that every `lightning-vlm` fit gets (the CLI adds them: the final
step is always saved, and the progress bar names what bounds a run), and ExportEncoder,
which stage-0 encoder configs name.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.callbacks.progress.rich_progress import RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from .encoders.base import ImageEncoder


class FinalStepCheckpoint(Callback):
    """Writes `last.ckpt` of every `ModelCheckpoint(save_last=True)` when a fit ends between two of its saves.

    Lightning's ModelCheckpoint with `every_n_train_steps` saves nothing when the fit stops
    after the last multiple of its interval (300 steps at an interval of 250 leave step 250 in
    last.ckpt), so `test --ckpt_path last.ckpt` would score a model short of its final steps.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run or trainer.global_step == 0:
            return
        for callback in trainer.checkpoint_callbacks:
            # private API of ModelCheckpoint: the step of its latest save and its save-last routine
            if (isinstance(callback, ModelCheckpoint) and callback.save_last
                    and callback._last_global_step_saved != trainer.global_step):
                callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


class StepProgressBar(RichProgressBar):
    """Lightning's rich bar, without "Epoch 5/-2" on step-bounded fits: it shows "Epoch 5 · step 1200/3000"."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            text = f"Epoch {current_epoch}/{trainer.max_epochs - 1}"
        else:
            text = f"Epoch {current_epoch}"
        if trainer.max_steps is not None and trainer.max_steps > 0:
            text += f" · step {trainer.global_step}/{trainer.max_steps}"
        return f"{text:{len(self.validation_description)}}"


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
        try:
            table = self.check(pl_module, data_dir)
        except Exception as exc:  # a diagnostic: the export above is done, so the fit still succeeds
            rank_zero_warn(f"reconstruction check with {self.reader} failed ({type(exc).__name__}: {exc}); "
                           f"the encoder is exported all the same (benchmarks/encoder_quality.py repeats the check)")
            return
        rank_zero_info(f"reader scores on {self.check_split} reconstructions (ratio to originals):\n{table}")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("encoder/reconstruction_check", table, trainer.global_step)

    def check(self, encoder: ImageEncoder, data_dir: str) -> str:
        from .smartwatch.encoder_check import markdown_table, reconstruct, reconstruction_rows, split_images
        from .smartwatch.reader import AttributeReader

        images, attrs = split_images(data_dir, self.check_split, self.check_images)
        was_training = encoder.training
        encoder.eval()
        recon = reconstruct(encoder, images)
        encoder.train(was_training)
        return markdown_table(reconstruction_rows(AttributeReader.load(self.reader), images, attrs, {type(encoder).__name__: recon}))
