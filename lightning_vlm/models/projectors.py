"""Adapters between image-encoder feature spaces and the backbone, and the study's misalignment map."""

from __future__ import annotations

import torch
from torch import nn


class MLPProjector(nn.Sequential):
    """LLaVA-style projector: encoder features [B, N, in_dim] -> backbone embeddings [B, N, out_dim].

    `layers` Linear layers with GELU between them (2 = LLaVA-1.5's mlp2x_gelu, 1 = linear);
    the hidden width defaults to out_dim.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None, layers: int = 2):
        if layers < 1:
            raise ValueError(f"a projector needs at least one layer, got layers={layers}")
        hidden = hidden or out_dim
        widths = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        modules = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            modules += [nn.GELU()] if i else []
            modules.append(nn.Linear(a, b))
        super().__init__(*modules)


class AffineMisalignment(nn.Module):
    """A fixed, seeded affine map x -> (x @ Q) * scale + shift on image-INPUT features.

    The study misaligns the space a model reads images in from the space it writes them
    in by applying this map to the input side only. Q [D, D] is orthogonal: with
    `rotation="random"` (the study's map) a Haar-random rotation for any s > 0; with
    `rotation="graded"` the orthogonal factor (QR, diag(R) > 0) of I + s * G / sqrt(D),
    G standard normal, which grows with s and moves a feature by about s times its norm.
    s = 0 gives exactly Q = I either way. scale [D] is uniform
    in [1 - s, 1 + s] and shift [D] uniform in [-s, s]. All three come from a
    torch.Generator seeded with `seed` (the same map on every device and run), and are
    buffers: never trained, saved in checkpoints.
    """

    def __init__(self, dim: int, strength: float, seed: int = 0, rotation: str = "random"):
        super().__init__()
        if strength < 0:
            raise ValueError(f"misalignment strength must be >= 0, got {strength}")
        if rotation not in ("random", "graded"):
            raise ValueError(f"rotation must be 'random' or 'graded', got '{rotation}'")
        self.strength, self.seed = strength, seed
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        eye = torch.eye(dim, dtype=torch.float64)
        base = noise if rotation == "random" and strength > 0 else eye + strength / dim**0.5 * noise
        q, r = torch.linalg.qr(base)
        q = q * torch.sign(torch.diagonal(r))[None]  # fix column signs: the unique QR with diag(R) > 0
        scale = 1 + strength * (2 * torch.rand(dim, generator=g, dtype=torch.float64) - 1)
        shift = strength * (2 * torch.rand(dim, generator=g, dtype=torch.float64) - 1)
        self.register_buffer("rotation", q.float())
        self.register_buffer("scale", scale.float())
        self.register_buffer("shift", shift.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., D]."""
        return (x @ self.rotation.to(x.dtype)) * self.scale.to(x.dtype) + self.shift.to(x.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.scale.numel()}, strength={self.strength}, seed={self.seed}"
