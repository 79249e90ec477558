"""`diffusion`: each output image token is sampled by a small per-token diffusion head.

MAR-style (Li et al., 2024): the backbone's hidden state before a slot conditions an
adaLN MLP denoiser over that token's continuous latent (e.g. the `ae` encoder). Each
token is noised at several timesteps per training step to amortise the backbone pass.
Latents are standardised by a running scale of the targets so the noise schedule
sees unit-variance data whatever the encoder's latent scale.
"""

from __future__ import annotations

import torch

from ..models.diffusion import DiffusionHead
from .base import UnifiedVLM


class DiffusionVLM(UnifiedVLM):
    """UnifiedVLM with a per-token diffusion head.

    Args:
        head_width / head_depth: size of the MLP denoiser.
        diffusion_repeats: timesteps drawn per token per training step.
        sampling_steps: DDIM steps per generated token.
        noise_temperature: scale of the starting noise at generation (0 = deterministic).
        mean_loss_weight: extra weight on the pure-noise timestep, where the head must predict the
            token's mean from the backbone state alone (see `DiffusionHead.loss`); 0 = plain MAR loss.
    """

    def __init__(self, *args, head_width: int = 256, head_depth: int = 3, diffusion_repeats: int = 4,
                 sampling_steps: int = 25, noise_temperature: float = 1.0, mean_loss_weight: float = 0.0, **kwargs):
        self._head_size = (head_width, head_depth)
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        self.register_buffer("latent_scale", torch.tensor(0.0))  # 0: not measured yet

    def build_image_head(self, dim, encoder):
        width, depth = self._head_size
        return DiffusionHead(encoder.dim, dim, width=width, depth=depth)

    def image_loss(self, h, features, indices):
        if self.training:
            with torch.no_grad():
                std = features.float().std()
                self.latent_scale.copy_(std if self.latent_scale == 0 else torch.lerp(self.latent_scale, std, 0.01))
        scale = self.latent_scale.clamp(min=1e-6)
        return self.image_head.loss(features / scale, h, repeats=self.hparams.diffusion_repeats,
                                    mean_weight=self.hparams.mean_loss_weight)

    def sample_image_token(self, h, generator):
        x = self.image_head.sample(h, steps=self.hparams.sampling_steps, temperature=self.hparams.noise_temperature, generator=generator)
        return (x * self.latent_scale.clamp(min=1e-6)).float(), None

    def sample_guided_image_token(self, h, h_uncond, generator):
        x = self.image_head.sample(h, steps=self.hparams.sampling_steps, temperature=self.hparams.noise_temperature,
                                   generator=generator, z_uncond=h_uncond, guidance_scale=self.hparams.guidance_scale)
        return (x * self.latent_scale.clamp(min=1e-6)).float(), None
