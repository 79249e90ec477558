"""Where a run keeps its files, and its state (pending / partial / done) read from them."""

from __future__ import annotations

from pathlib import Path

from .fraction_checkpoint import checkpoint_name
from .spec import Run

EVAL_SPLITS = ("val", "test")


class RunDir:
    """`<out>/<run name>/`: run.json, logs/, last.ckpt, frac-*.ckpt with their test metrics beside them,
    val/ (links to the same checkpoints, so the val evaluation writes its own metrics file), and
    the markers fit.done (training finished) and DONE (every evaluation finished too)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.run_json = self.path / "run.json"
        self.logs = self.path / "logs"
        self.last = self.path / "last.ckpt"
        self.fit_done = self.path / "fit.done"
        self.done = self.path / "DONE"

    @classmethod
    def of(cls, out: str | Path, run: Run) -> RunDir:
        return cls(Path(out) / run.name)

    def fraction_ckpt(self, fraction: float) -> Path:
        return self.path / checkpoint_name(fraction)

    def eval_ckpt(self, fraction: float, split: str) -> Path:
        """The checkpoint path a split's evaluation is given: the metrics file lands beside it."""
        return self.fraction_ckpt(fraction) if split == "test" else self.path / split / checkpoint_name(fraction)

    def metrics(self, fraction: float, split: str) -> Path:
        ckpt = self.eval_ckpt(fraction, split)
        return ckpt.with_name(ckpt.stem + ".test_metrics.json")  # what UnifiedVLM._metrics_path writes

    def resume_from(self) -> Path | None:
        """The newest of last.ckpt and the fraction checkpoints, or None for a fresh start."""
        candidates = [p for p in [self.last, *self.path.glob("frac-*.ckpt")] if p.is_file()]
        return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None

    def state(self) -> str:
        if self.done.is_file():
            return "done"
        if self.path.is_dir() and any(self.path.iterdir()):
            return "partial"
        return "pending"
