"""Scaling curves: a metric against the training samples of the task it measures, one colour per regime."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from .stats import mean_ci

PNG_METADATA = {"Software": None}  # no version string in the file: a report regenerates byte for byte


def scaling_plot(path: Path, title: str, series: dict, chance: float | None = None, x: dict | None = None,
                 xlabel: str = "fraction of training", best_constant: float | None = None) -> None:
    """series[regime][fraction][seed] = value: per-seed thin lines, the mean line and its 95 % CI band.
    x[regime][fraction] places each fraction on the x axis (e.g. counted samples); default: the fraction.
    A metric whose values all lie in [0, 1] is read as a rate: its axis and CI bands stay inside [0, 1]."""
    values = [v for by_fraction in series.values() for by_seed in by_fraction.values() for v in by_seed.values()]
    rate = bool(values) and all(0 <= v <= 1 for v in values)  # an accuracy: its band is clipped to [0, 1]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, (regime, by_fraction) in enumerate(series.items()):
        colour = f"C{i % 10}"
        fractions = sorted(by_fraction)
        at = (x or {}).get(regime) or {}
        pos = [at.get(f, f) for f in fractions]
        for seed in sorted({s for v in by_fraction.values() for s in v}):
            pts = [(p, by_fraction[f][seed]) for f, p in zip(fractions, pos) if seed in by_fraction[f]]
            ax.plot([q[0] for q in pts], [q[1] for q in pts], color=colour, lw=0.7, alpha=0.35)
        stats = [mean_ci(by_fraction[f].values()) for f in fractions]
        ax.plot(pos, [s.mean for s in stats], color=colour, lw=2, marker="o", ms=3, label=regime)
        band = [(p, s) for p, s in zip(pos, stats) if s.n > 1]
        if band:
            lo, hi = [s.lo for _, s in band], [s.hi for _, s in band]
            if rate:
                lo, hi = [max(v, 0.0) for v in lo], [min(v, 1.0) for v in hi]
            ax.fill_between([p for p, _ in band], lo, hi, color=colour, alpha=0.15, lw=0)
    if chance is not None:
        ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance {chance:g}")
    if best_constant is not None and best_constant != chance:
        ax.axhline(best_constant, color="grey", ls=":", lw=1, label=f"best constant {best_constant:g}")
    if rate:
        ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(title.rsplit(": ", 1)[-1])
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata=PNG_METADATA)
    plt.close(fig)
