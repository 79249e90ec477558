"""Training callbacks: two that every `lightning-vlm` fit gets (the CLI adds them: the final
step is always saved, and the progress bar names what bounds a run), ExportEncoder, which
stage-0 encoder configs name, and ValScores, which scores a VLM on val at every validation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
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

    def __init__(self, path: str, reader: str | None = "stage0/reader.ckpt", check_split: str = "val", check_images: int = 200):
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


class ValScores(Callback):
    """Scores every validation of a VLM fit with the dataset's scorer: the test metrics, on the val split.

    Each validation logs `val/<metric>` (e.g. `val/vqa/weather`, `val/gen/weather`) and appends one JSON
    line to `path` (default `<run folder>/val_scores.jsonl`): the step, the samples seen per task, the
    seconds of training so far (wall time since the fit started, validation left out) and the metrics.
    That is a learning curve in steps, samples and minutes, chosen on val, never on test.
    The metrics are the evaluator's (`eval.evaluator.VLMEvaluator`), the same code `lightning-vlm test` runs.

    Args:
        path: the JSON-lines file; None: val_scores.jsonl in the run folder.
    """

    def __init__(self, path: str | None = None):
        self.path = path
        self.samples: dict[str, int] = {}
        self.train_seconds = 0.0
        self._since = None
        self.evaluator = None

    def _file(self, trainer: pl.Trainer) -> Path:
        return Path(self.path) if self.path else Path(trainer.default_root_dir) / "val_scores.jsonl"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._since = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: dict, batch_idx: int) -> None:
        from .data.tasks import TASKS

        for t in batch["task"].tolist():
            self.samples[TASKS[t]] = self.samples.get(TASKS[t], 0) + 1

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._since is not None:  # the clock stops while validating
            self.train_seconds += time.perf_counter() - self._since
            self._since = None
        self.evaluator = None
        if trainer.sanity_checking:
            return
        from .eval.evaluator import VLMEvaluator

        self.evaluator = VLMEvaluator(trainer.datamodule.scorer(), pl_module.generation_settings()).to(pl_module.device)
        # the module's validation_step scores each batch with it: under FSDP only the step runs inside the
        # root's forward, where every layer's weights can be gathered
        pl_module.val_scoring = (self.evaluator, torch.Generator().manual_seed(0))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.evaluator is None:
            return
        pl_module.val_scoring = None
        metrics = self.evaluator.compute()
        for name, value in metrics.items():
            pl_module.log(f"val/{name}", value, sync_dist=True, reduce_fx="max")  # already synced: equal on every rank
        if trainer.is_global_zero:
            record = {"step": trainer.global_step, "samples": dict(sorted(self.samples.items())),
                      "train_seconds": round(self.train_seconds, 1), "metrics": metrics}
            path = self._file(trainer)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        self.evaluator = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._since = time.perf_counter()
