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
from ..models.standardize import RunningStandardizer
from .base import UnifiedVLM


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
        self.register_buffer("target_norm", torch.tensor(1.0))
        self.target_stats = RunningStandardizer(self.output_encoder.dim) if standardize_targets else None

    def build_image_head(self, dim, encoder):
        loss, layers = self._regression
        return RegressionImageHead(dim, encoder.dim, loss=loss, layers=layers)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Older checkpoints: statistics under their first names, or none (loaded as identity, i.e. unstandardised)."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        if self.target_stats is None:
            return
        identity = RunningStandardizer(self.output_encoder.dim).state_dict()
        for name in identity:
            if f"target_{name}" in state:  # their names before RunningStandardizer held them
                state[f"target_stats.{name}"] = state.pop(f"target_{name}")
            state.setdefault(f"target_stats.{name}", identity[name])

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
