"""FractionCheckpoint: checkpoints at fixed fractions of a run, for data-scaling curves, scored in the fit."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
RECORD = "fractions.json"
EVAL_SPLITS = ("val", "test")


def fraction_tag(fraction: float) -> str:
    """`0.1` -> "0.10"; a finer fraction keeps its digits (`0.125` -> "0.125")."""
    return f"{fraction:.2f}" if abs(fraction * 100 - round(fraction * 100)) < 1e-9 else f"{fraction:g}"


def checkpoint_name(fraction: float) -> str:
    return f"frac-{fraction_tag(fraction)}.ckpt"


def metrics_file(dirpath: str | Path, fraction: float, split: str) -> Path:
    """Where a fraction's scores on `split` go: `frac-X.test_metrics.json` beside the checkpoint for test,
    under `<split>/` otherwise (where `lightning-vlm test` of the `<split>/frac-X.ckpt` link writes them)."""
    folder = Path(dirpath) if split == "test" else Path(dirpath) / split
    return folder / checkpoint_name(fraction).replace(".ckpt", ".test_metrics.json")


def target_step(fraction: float, total_steps: int) -> int:
    """round(fraction x total_steps), halves rounded up, and never step 0 (nothing trained yet)."""
    return max(1, int(math.floor(fraction * total_steps + 0.5)))


class FractionCheckpoint(Callback):
    """Saves `frac-0.10.ckpt`, `frac-0.20.ckpt`, ... at round(f x total optimiser steps), and can score them.

    The study compares runs at equal shares of their training (REFERENCE.md, "Data scaling"),
    so checkpoints are placed by fraction of `trainer.estimated_stepping_batches` rather than
    every N steps. A fraction whose step was not reached when fit ends normally (the estimate
    was high, or training stopped early) is saved at the final step. Each file is a full
    trainer checkpoint (a run can resume from it); `fractions.json` beside them records, per
    fraction, the step, the training samples of each task the run actually saw up to it
    (counted batch by batch, summed over ranks; kept across a resume), the precision and CPU.

    Args:
        fractions: shares of the run's optimiser steps, in (0, 1].
        dirpath: the run folder.
        evaluate: splits to score at each fraction inside this process (`eval.in_fit.evaluate_split`:
            the evaluator, loader and seed of `lightning-vlm test`, so the metrics are the same), written
            where `lightning-vlm test` of that checkpoint would write them (`metrics_file`). This saves
            a process start and a model load per checkpoint and split.
        eval_tasks: the tasks scored (None: every task of the split).
        test_fractions: the fractions at which `test` is scored (None: all); val is scored at every one,
            so checkpoints are chosen on val and test is reported where the report reads it.

    A plain Callback, not a `Checkpoint`: code that walks `trainer.checkpoint_callbacks` may
    expect ModelCheckpoint's attributes there.
    """

    def __init__(self, fractions: Sequence[float] = DEFAULT_FRACTIONS, dirpath: str = "checkpoints",
                 evaluate: Sequence[str] = (), eval_tasks: list[str] | None = None, test_fractions: list[float] | None = None):
        super().__init__()
        bad = [f for f in fractions if not 0 < f <= 1]
        if bad or not fractions:
            raise ValueError(f"FractionCheckpoint: fractions must lie in (0, 1], got {list(fractions)}")
        unknown = [s for s in evaluate if s not in EVAL_SPLITS]
        if unknown:
            raise ValueError(f"FractionCheckpoint: evaluate takes splits among {', '.join(EVAL_SPLITS)}, got {unknown}")
        self.fractions = sorted(set(float(f) for f in fractions))
        self.dirpath = Path(dirpath)
        self.evaluate, self.eval_tasks = list(evaluate), eval_tasks
        self.test_fractions = None if test_fractions is None else {float(f) for f in test_fractions}
        self.total_steps = 0
        self.targets: dict[int, list[float]] = {}
        self.saved: set[float] = set()
        self.samples: dict[str, int] = {}  # this rank's training samples per task, kept in the checkpoint

    def state_dict(self) -> dict:
        return {"samples": dict(self.samples)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.samples = dict(state_dict.get("samples", {}))

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
        self._count(batch)
        due = [f for f in self.targets.get(trainer.global_step, []) if f not in self.saved]
        for f in due:
            self._save(trainer, pl_module, f)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for f in self.fractions:
            if f not in self.saved:
                self._save(trainer, pl_module, f)

    def _count(self, batch) -> None:
        if not isinstance(batch, dict) or "task" not in batch:
            return
        from ..data.tasks import TASKS

        tasks = batch["task"]
        if "is_padding" in batch:  # a rank's balance copies are not new samples
            tasks = tasks[~batch["is_padding"]]
        for t in tasks.tolist():
            self.samples[TASKS[t]] = self.samples.get(TASKS[t], 0) + 1

    def _samples_all_ranks(self, trainer: pl.Trainer) -> dict[str, int]:
        from ..data.tasks import TASKS

        counts = torch.tensor([self.samples.get(t, 0) for t in TASKS], dtype=torch.long)
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts.to(trainer.strategy.root_device), reduce_op="sum").cpu()
        return {t: int(n) for t, n in zip(TASKS, counts.tolist()) if n}

    def _save(self, trainer: pl.Trainer, pl_module, fraction: float) -> None:
        from ..precision import cpu_name

        path = self.dirpath / checkpoint_name(fraction)
        trainer.save_checkpoint(path)  # collective: every rank calls it
        self.saved.add(fraction)
        entry = {"fraction": fraction, "step": trainer.global_step, "total_steps": self.total_steps, "epoch": trainer.current_epoch,
                 "samples": self._samples_all_ranks(trainer), "precision": str(trainer.precision), "cpu": cpu_name()}
        scored = {}
        for split in self.evaluate:
            if split == "test" and self.test_fractions is not None and fraction not in self.test_fractions:
                continue
            scored[split] = self._score(trainer, pl_module, fraction, split)
        if scored:
            entry["eval_seconds"] = scored
        if trainer.is_global_zero:
            record_path = self.dirpath / RECORD
            record = json.loads(record_path.read_text()) if record_path.is_file() else {}
            record[fraction_tag(fraction)] = entry
            record_path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")

    def _score(self, trainer: pl.Trainer, pl_module, fraction: float, split: str) -> float:
        """Scores the weights just saved on `split` (every rank takes part); returns the seconds it took."""
        from ..eval.in_fit import evaluate_split

        t0 = time.perf_counter()
        metrics = evaluate_split(trainer, pl_module, split, self.eval_tasks)
        if trainer.is_global_zero:
            path = metrics_file(self.dirpath, fraction, split)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
        return round(time.perf_counter() - t0, 1)
