"""Scaling curves: a metric against the fraction of training, one colour per regime."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from .stats import mean_ci  # noqa: E402


def scaling_plot(path: Path, title: str, series: dict, chance: float | None = None) -> None:
    """series[regime][fraction][seed] = value: per-seed thin lines, the mean line and its 95 % CI band."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, (regime, by_fraction) in enumerate(series.items()):
        colour = f"C{i % 10}"
        fractions = sorted(by_fraction)
        for seed in sorted({s for v in by_fraction.values() for s in v}):
            pts = [(f, by_fraction[f][seed]) for f in fractions if seed in by_fraction[f]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colour, lw=0.7, alpha=0.35)
        stats = [mean_ci(by_fraction[f].values()) for f in fractions]
        ax.plot(fractions, [s.mean for s in stats], color=colour, lw=2, marker="o", ms=3, label=regime)
        band = [(f, s) for f, s in zip(fractions, stats) if s.n > 1]
        if band:
            ax.fill_between([f for f, _ in band], [s.lo for _, s in band], [s.hi for _, s in band], color=colour, alpha=0.15, lw=0)
    if chance is not None:
        ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance {chance:g}")
    ax.set_xlabel("fraction of training")
    ax.set_ylabel(title.rsplit(": ", 1)[-1])
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
