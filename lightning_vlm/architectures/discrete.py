"""`discrete`: the output image is a sequence of VQ code indices (the study's VQ output).

Loss: cross-entropy over the output encoder's codebook at each image slot. Tokens are
fed back as their codebook vectors, at training (teacher forcing) and generation alike.
"""

from __future__ import annotations

import torch

from ..models.heads import DiscreteImageHead, sample_logits
from .base import UnifiedVLM


class DiscreteVLM(UnifiedVLM):
    """UnifiedVLM with a codebook classifier as image head (use image_loss_weight 0.2 as in the study)."""

    def build_image_head(self, dim, encoder):
        if encoder.codebook_size is None or not hasattr(encoder, "codes_from_indices"):
            raise ValueError(f"the discrete architecture needs a discrete output encoder; {type(encoder).__name__} is continuous")
        return DiscreteImageHead(dim, encoder.codebook_size)

    def image_loss(self, h, features, indices):
        return self.image_head.loss(h, indices)

    def sample_image_token(self, h, generator):
        idx = self.image_head.sample(h, temperature=self.hparams.image_temperature, generator=generator)  # [B]
        codes = self.output_encoder.codes_from_indices(idx[:, None])[:, 0]  # [B, 1] -> [B, F]
        return codes.float(), idx

    def sample_guided_image_token(self, h, h_uncond, generator):
        cond, uncond = self.image_head(h).float(), self.image_head(h_uncond).float()
        logits = uncond + self.hparams.guidance_scale * (cond - uncond)
        idx = sample_logits(logits, self.hparams.image_temperature, generator)
        return self.output_encoder.codes_from_indices(idx[:, None])[:, 0].float(), idx
