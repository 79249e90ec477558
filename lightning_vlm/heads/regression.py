"""`regression`: the output image is a sequence of continuous features, regressed directly.

The study regressed SigLIP features with a cosine loss. Semantic features share one large
mean direction, so a cosine loss on the raw features is nearly blind: predicting the mean
token already scores well while telling no two images apart (benchmarks/RESULTS.md,
"Regression head"). By default the targets are therefore standardised per dimension with
running statistics, the loss is taken on the standardised features, and a prediction is
un-standardised before it is fed back or decoded. A cosine loss leaves a prediction's norm
free, so it is first rescaled to the running mean norm of the (standardised) targets:
generation then feeds the backbone features of the scale it saw during teacher forcing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.projectors import MLPProjector
from ..models.standardize import RunningStandardizer
from .base import ImageHead


class RegressionHead(ImageHead):
    """Features [.., F] regressed from h [.., dim].

    Args:
        loss: "cosine" (the study's) or "mse".
        layers: 1 = linear head, 2 = MLP.
        standardize_targets: regress (features - mean) / std per dimension (running statistics);
            false regresses the raw features, as the study did.
    """

    def __init__(self, dim: int, encoder, loss: str = "cosine", layers: int = 1, standardize_targets: bool = True):
        super().__init__()
        if loss not in ("cosine", "mse"):
            raise ValueError(f"unknown regression loss '{loss}'; known: cosine, mse")
        self.kind = loss
        self.proj = MLPProjector(dim, encoder.dim, layers=layers)
        self.target_stats = RunningStandardizer(encoder.dim) if standardize_targets else None
        self.register_buffer("target_norm", torch.tensor(1.0))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        return features.float() if self.target_stats is None else self.target_stats(features)

    def unstandardize(self, z: torch.Tensor) -> torch.Tensor:
        return z.float() if self.target_stats is None else self.target_stats.inverse(z)

    @torch.no_grad()
    def _update_statistics(self, features: torch.Tensor) -> None:
        if self.target_stats is not None:
            self.target_stats.update(features)
            weight = max(1.0 / int(self.target_stats.batches), self.target_stats.momentum)
        else:
            weight = 0.01
        self.target_norm.lerp_(self.standardize(features).norm(dim=-1).mean(), weight)

    def loss(self, h, features, indices):
        if self.training:
            self._update_statistics(features)
        pred, target = self(h).float(), self.standardize(features)
        if self.kind == "cosine":
            return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()
        return F.mse_loss(pred, target)

    def sample(self, h, generator=None):
        return self._feed_back(self(h))

    def guided_sample(self, h, h_uncond, scale, generator=None):
        cond, uncond = self(h).float(), self(h_uncond).float()
        return self._feed_back(uncond + scale * (cond - uncond))

    def _feed_back(self, z: torch.Tensor) -> tuple[torch.Tensor, None]:
        """A predicted (standardised) token -> features in the output encoder's space."""
        if self.kind == "cosine":
            z = F.normalize(z.float(), dim=-1) * self.target_norm
        return self.unstandardize(z), None
