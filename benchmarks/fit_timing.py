"""Median wall time of a training step of a short fit of any config (used by the benchmarks here)."""

from __future__ import annotations

import statistics
import time

import lightning.pytorch as pl


class StepTimer(pl.Callback):
    """Wall time of each optimiser step, data loading included (time between batch starts)."""

    def __init__(self):
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append(time.perf_counter())


def fit_step_seconds(config: str, overrides: list[str], steps: int, warmup: int = 10) -> float:
    """Median seconds per step over `steps` steps after `warmup`, of `config` with CLI `overrides`.

    No logger, checkpoints, validation or progress bar, so only the training step is timed.
    """
    from lightning.pytorch.cli import LightningCLI

    from lightning_vlm.registry import import_all

    import_all()
    timer = StepTimer()
    cli = LightningCLI(
        pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
        save_config_callback=None,
        args=["--config", config, *overrides, f"--trainer.max_steps={steps + warmup + 1}", "--trainer.logger=false",
              "--trainer.callbacks=null", "--trainer.enable_checkpointing=false", "--trainer.limit_val_batches=0",
              "--trainer.enable_progress_bar=false"],
    )
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    gaps = [b - a for a, b in zip(timer.starts, timer.starts[1:])][warmup:]
    return statistics.median(gaps)
