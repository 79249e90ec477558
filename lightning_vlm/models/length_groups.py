"""Two length groups of one batch: the same loss with less padding.

A mixed batch pads every short row (a VQA turn: ~50 tokens at CPU scale) to its longest row (a
generation request with its 64 image tokens: ~140), so ~40 % of the step's tokens are padding.
`length_groups` finds the cut of the batch into short and long rows that leaves the fewest
padded slots, and `take_rows` trims each group to its own longest row. `VLM.forward` runs the
groups one after another in the same step and averages each loss over the union of their tokens,
so the loss, and hence the gradient, is the one-batch loss up to float rounding.
"""

from __future__ import annotations

import torch

from ..data.collate import MASKS

SEQUENCE_KEYS = ("input_ids", *MASKS)  # [B, L]: trimmed with the rows


def length_groups(lengths: torch.Tensor, min_saving: float = 0.2) -> list[torch.Tensor]:
    """Row indices [short, long] of the cut that pads least, or [all rows] when that cut would save
    less than `min_saving` of the batch's padded area (a second forward has a cost of its own)."""
    n = lengths.numel()
    order = lengths.argsort(stable=True)
    ordered = lengths[order]
    if n < 2:
        return [torch.arange(n)]
    short = torch.arange(1, n)  # rows in the short group, for each cut
    area = short * ordered[short - 1] + (n - short) * ordered[-1]
    best = int(area.argmin())
    if area[best] > (1 - min_saving) * n * ordered[-1]:
        return [torch.arange(n)]
    cut = best + 1
    return [order[:cut].sort().values, order[cut:].sort().values]


def row_lengths(batch: dict) -> torch.Tensor:
    """[B] the slots each row needs: up to and including its last real token."""
    mask = batch["attention_mask"]
    slots = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask * slots).amax(1)


def take_rows(batch: dict, rows: torch.Tensor) -> dict:
    """The rows of a collated batch, its sequences trimmed to the group's longest row."""
    size = batch["input_ids"].shape[0]
    length = int(row_lengths(batch)[rows].max())
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == size:
            value = value[rows.to(value.device)]
            if key in SEQUENCE_KEYS:
                value = value[:, :length]
        elif isinstance(value, list) and len(value) == size:
            value = [value[i] for i in rows.tolist()]
        out[key] = value
    return out
