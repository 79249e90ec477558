"""Small helpers over a collated batch and a metrics dict, shared by the model and its evaluation.

They live apart from `base.py` so that `evaluation.py` (which `base.py` imports) can use them
without importing `base.py` back.
"""

from __future__ import annotations

import torch


def select_rows(batch: dict, rows: torch.Tensor) -> dict:
    """The batch restricted to `rows` ([B] bool), lists included."""
    keep = rows.nonzero().flatten().tolist()
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == rows.shape[0]:
            out[k] = v[rows]
        elif isinstance(v, list) and len(v) == rows.shape[0]:
            out[k] = [v[i] for i in keep]
        else:
            out[k] = v
    return out


def format_metrics(metrics: dict[str, float]) -> str:
    """A two-column table of metric names and values."""
    width = max(len(k) for k in metrics) if metrics else 10
    return "\n".join(f"{k:<{width}}  {v:8.4f}" for k, v in sorted(metrics.items()))
