"""`regression`: the output image is a sequence of continuous features, regressed directly.

The study regressed SigLIP features with a cosine loss. A cosine loss leaves the norm
of a prediction free, so before a predicted token is fed back it is rescaled to the
running mean norm of the real target tokens: generation then feeds the backbone
features of the same scale it saw during teacher forcing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.heads import RegressionImageHead
from .base import UnifiedVLM


class RegressionVLM(UnifiedVLM):
    """UnifiedVLM with a regression image head.

    Args:
        regression_loss: "cosine" (the study's) or "mse".
        head_layers: 1 = linear head, 2 = MLP.
    """

    def __init__(self, *args, regression_loss: str = "cosine", head_layers: int = 1, **kwargs):
        self._regression = (regression_loss, head_layers)
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        self.register_buffer("target_norm", torch.tensor(1.0))

    def build_image_head(self, dim, encoder):
        loss, layers = self._regression
        return RegressionImageHead(dim, encoder.dim, loss=loss, layers=layers)

    def image_loss(self, h, features, indices):
        if self.training:
            with torch.no_grad():
                self.target_norm.lerp_(features.norm(dim=-1).mean(), 0.01)
        return self.image_head.loss(h, features)

    def sample_image_token(self, h, generator):
        return self._feed_back(self.image_head.sample(h))

    def sample_guided_image_token(self, h, h_uncond, generator):
        cond, uncond = self.image_head.sample(h).float(), self.image_head.sample(h_uncond).float()
        return self._feed_back(uncond + self.hparams.guidance_scale * (cond - uncond))

    def _feed_back(self, pred):
        if self.image_head.kind == "cosine":
            pred = F.normalize(pred, dim=-1) * self.target_norm
        return pred.float(), None
