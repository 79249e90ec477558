"""`regression`: the output image is a sequence of continuous features, regressed directly.

The study regressed SigLIP features with a cosine loss. Raw semantic features share one
large mean direction (on our semantic encoder 91 % of a token's energy; two random tokens
have cosine 0.92), so the cosine loss on them is nearly blind: predicting the mean token
already scores 0.08 and training drives the loss to ~0 while learning nothing that tells
images apart. So by default the targets are standardised per dimension with running
statistics (like the diffusion head's latent scale), the loss is taken on the
standardised features, and a prediction is un-standardised before it is fed back or
decoded. A cosine loss leaves a prediction's norm free, so it is first rescaled to the
running mean norm of the (standardised) targets: generation then feeds the backbone
features of the scale it saw during teacher forcing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.heads import RegressionImageHead
from .base import UnifiedVLM

STATS_MOMENTUM = 0.01  # after the first 100 batches (exact running average before)


class RegressionVLM(UnifiedVLM):
    """UnifiedVLM with a regression image head.

    Args:
        regression_loss: "cosine" (the study's) or "mse".
        head_layers: 1 = linear head, 2 = MLP.
        standardize_targets: regress (features - mean) / std per dimension (running statistics);
            false regresses the raw features as the study did.
    """

    def __init__(self, *args, regression_loss: str = "cosine", head_layers: int = 1,
                 standardize_targets: bool = True, **kwargs):
        self._regression = (regression_loss, head_layers)
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        dim = self.output_encoder.dim
        self.register_buffer("target_norm", torch.tensor(1.0))
        self.register_buffer("target_mean", torch.zeros(dim))
        self.register_buffer("target_var", torch.ones(dim))
        self.register_buffer("target_batches", torch.tensor(0))

    def build_image_head(self, dim, encoder):
        loss, layers = self._regression
        return RegressionImageHead(dim, encoder.dim, loss=loss, layers=layers)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints from before standardisation load as unstandardised (identity statistics)."""
        state = checkpoint["state_dict"]
        for name, value in (("target_mean", self.target_mean), ("target_var", self.target_var), ("target_batches", self.target_batches)):
            state.setdefault(name, value.clone())

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.target_mean) / self.target_var.clamp(min=1e-12).sqrt()

    def unstandardize(self, z: torch.Tensor) -> torch.Tensor:
        return z.float() * self.target_var.clamp(min=1e-12).sqrt() + self.target_mean

    @torch.no_grad()
    def _update_statistics(self, features: torch.Tensor) -> None:
        weight = max(1.0 / (int(self.target_batches) + 1), STATS_MOMENTUM)
        if self.hparams.standardize_targets:
            f = features.float()
            self.target_mean.lerp_(f.mean(0), weight)
            self.target_var.lerp_(f.var(0, unbiased=False), weight)
        self.target_norm.lerp_(self.standardize(features).norm(dim=-1).mean(), weight)
        self.target_batches += 1

    def image_loss(self, h, features, indices):
        if self.training:
            self._update_statistics(features)
        return self.image_head.loss(h, self.standardize(features))

    def sample_image_token(self, h, generator):
        return self._feed_back(self.image_head.sample(h))

    def sample_guided_image_token(self, h, h_uncond, generator):
        cond, uncond = self.image_head.sample(h).float(), self.image_head.sample(h_uncond).float()
        return self._feed_back(uncond + self.hparams.guidance_scale * (cond - uncond))

    def _feed_back(self, z):
        """A predicted (standardised) token -> features in the output encoder's space."""
        if self.image_head.kind == "cosine":
            z = F.normalize(z.float(), dim=-1) * self.target_norm
        return self.unstandardize(z), None
