"""Per-dimension standardisation of encoder features with running statistics.

Why: an encoder's tokens can share one large mean direction (our semantic encoder's do:
benchmarks/RESULTS.md, "Regression head"), which leaves what tells images apart a small ripple
on a constant.
A projector fed such features, or a cosine loss taken on them, hardly sees the ripple.
(x - mean) / std per dimension puts every dimension's variation at unit scale.

The statistics are an exact running average over the first 1 / momentum training batches,
then an exponential moving average; they are buffers, so checkpoints carry them.
"""

from __future__ import annotations

import torch
from torch import nn


class RunningStandardizer(nn.Module):
    """x [..., dim] -> (x - mean) / std, with `update(x)` called on training features."""

    def __init__(self, dim: int, momentum: float = 0.01, eps: float = 1e-12):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("batches", torch.tensor(0))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1, x.shape[-1])
        weight = max(1.0 / (int(self.batches) + 1), self.momentum)
        self.mean.lerp_(x.mean(0), weight)
        self.var.lerp_(x.var(0, unbiased=False), weight)
        self.batches += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) * torch.rsqrt(self.var + self.eps)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z.float() * torch.sqrt(self.var + self.eps) + self.mean
