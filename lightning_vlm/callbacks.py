"""Callbacks every `lightning-vlm` fit gets (the CLI adds them): the final step is always
saved, and the progress bar names what bounds a run.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.callbacks.progress.rich_progress import RichProgressBar


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
