"""Learned 2-D positions for the image tokens a VLM reads.

A conv tokenizer's token (VQ, AE) carries what is in its patch but not where the patch is, and
the backbone's rotary positions are relative: without an absolute position the model must find
"top left" by counting tokens from <boi> (the tiny backbone's corner questions stayed on their
plateau for thousands of steps: benchmarks/RESULTS.md, "Curriculum"). Vision towers of LLaVA-style
models give every patch a position embedding; this is that for the input slots. At micro size the
corners left their plateau about as fast without it (one seed each: RESULTS, "Calibration").

Row and column get one table each (side x dim) and a token gets their sum: 2 x 8 rows for an
8 x 8 grid instead of 64, and each row entry is trained by every token of its row.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class GridPositionEmbedding(nn.Module):
    """[N, dim] position embeddings of an image's N tokens in row-major order: row(i) + column(i).

    A token count that is not a square gets one entry per token instead.
    """

    def __init__(self, num_tokens: int, dim: int, std: float = 0.02):
        super().__init__()
        side = math.isqrt(num_tokens)
        self.num_tokens = num_tokens
        self.side = side if side * side == num_tokens else None
        shape = (2, side, dim) if self.side else (1, num_tokens, dim)
        self.table = nn.Parameter(torch.randn(shape) * std)

    def forward(self) -> torch.Tensor:
        if self.side is None:
            return self.table[0]
        rows, cols = self.table[0], self.table[1]
        return (rows[:, None, :] + cols[None, :, :]).reshape(self.num_tokens, -1)  # [side, side, D] -> [N, D]
