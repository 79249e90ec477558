"""FractionCheckpoint: checkpoints at fixed fractions of a run, for data-scaling curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
RECORD = "fractions.json"


def fraction_tag(fraction: float) -> str:
    """`0.1` -> "0.10"; a finer fraction keeps its digits (`0.125` -> "0.125")."""
    return f"{fraction:.2f}" if abs(fraction * 100 - round(fraction * 100)) < 1e-9 else f"{fraction:g}"


def checkpoint_name(fraction: float) -> str:
    return f"frac-{fraction_tag(fraction)}.ckpt"


def target_step(fraction: float, total_steps: int) -> int:
    """round(fraction x total_steps), halves rounded up, and never step 0 (nothing trained yet)."""
    return max(1, int(math.floor(fraction * total_steps + 0.5)))


class FractionCheckpoint(Callback):
    """Saves `frac-0.10.ckpt`, `frac-0.20.ckpt`, ... at round(f x total optimiser steps).

    The study compares runs at equal shares of their training (REFERENCE.md, "Data scaling"),
    so checkpoints are placed by fraction of `trainer.estimated_stepping_batches` rather than
    every N steps. A fraction whose step was not reached when fit ends normally (the estimate
    was high, or training stopped early) is saved at the final step. Each file is a full
    trainer checkpoint (a run can resume from it); `fractions.json` beside them records the
    step each one was taken at. A plain Callback, not a `Checkpoint`: code that walks
    `trainer.checkpoint_callbacks` may expect ModelCheckpoint's attributes there.
    """

    def __init__(self, fractions: list[float] = list(DEFAULT_FRACTIONS), dirpath: str = "checkpoints"):
        super().__init__()
        bad = [f for f in fractions if not 0 < f <= 1]
        if bad or not fractions:
            raise ValueError(f"FractionCheckpoint: fractions must lie in (0, 1], got {list(fractions)}")
        self.fractions = sorted(set(float(f) for f in fractions))
        self.dirpath = Path(dirpath)
        self.total_steps = 0
        self.targets: dict[int, list[float]] = {}
        self.saved: set[float] = set()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("FractionCheckpoint needs a finite run: set trainer.max_epochs or trainer.max_steps")
        self.total_steps = int(total)
        self.targets = {}
        for f in self.fractions:
            self.targets.setdefault(target_step(f, self.total_steps), []).append(f)
        self.saved = {f for step, fs in self.targets.items() if step <= trainer.global_step for f in fs}  # a resumed run

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        due = [f for f in self.targets.get(trainer.global_step, []) if f not in self.saved]
        for f in due:
            self._save(trainer, f)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for f in self.fractions:
            if f not in self.saved:
                self._save(trainer, f)

    def _save(self, trainer: pl.Trainer, fraction: float) -> None:
        path = self.dirpath / checkpoint_name(fraction)
        trainer.save_checkpoint(path)  # collective: every rank calls it
        self.saved.add(fraction)
        if trainer.is_global_zero:
            record_path = self.dirpath / RECORD
            record = json.loads(record_path.read_text()) if record_path.is_file() else {}
            record[fraction_tag(fraction)] = {"fraction": fraction, "step": trainer.global_step,
                                              "total_steps": self.total_steps, "epoch": trainer.current_epoch}
            record_path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
