"""`diffusion`: each output image token is sampled by a small per-token diffusion model (MAR-style).

The backbone's hidden state before a slot conditions an adaLN MLP denoiser over that token's
continuous latent (e.g. the `ae` encoder). Each token is noised at several timesteps per
training step to amortise the backbone pass. Latents are divided by a running scale of the
targets, so the noise schedule sees unit-variance data whatever the encoder's latent scale.
"""

from __future__ import annotations

import torch

from .base import ImageHead
from .denoiser import Denoiser


class DiffusionHead(ImageHead):
    """Per-token diffusion over the output encoder's continuous features.

    Args:
        width / depth: size of the MLP denoiser.
        repeats: timesteps drawn per token per training step.
        sampling_steps: DDIM steps per generated token.
        noise_temperature: scale of the starting noise at generation (0 = deterministic).
        mean_loss_weight: extra weight on the pure-noise timestep, where the denoiser must give the
            token's mean from the backbone state alone (`Denoiser.loss`); 0 = the plain MAR loss.
    """

    def __init__(self, dim: int, encoder, width: int = 256, depth: int = 3, repeats: int = 4,
                 sampling_steps: int = 25, noise_temperature: float = 1.0, mean_loss_weight: float = 0.0):
        super().__init__()
        self.repeats, self.sampling_steps = repeats, sampling_steps
        self.noise_temperature, self.mean_loss_weight = noise_temperature, mean_loss_weight
        self.denoiser = Denoiser(encoder.dim, dim, width=width, depth=depth)
        self.register_buffer("latent_scale", torch.tensor(0.0))  # 0: not measured yet

    def _scale(self) -> torch.Tensor:
        return self.latent_scale.clamp(min=1e-6)

    def loss(self, h, features, indices):
        if self.training:
            with torch.no_grad():
                std = features.float().std()
                self.latent_scale.copy_(std if self.latent_scale == 0 else torch.lerp(self.latent_scale, std, 0.01))
        return self.denoiser.loss(features / self._scale(), h, repeats=self.repeats, mean_weight=self.mean_loss_weight)

    def sample(self, h, generator=None):
        x = self.denoiser.sample(h, steps=self.sampling_steps, temperature=self.noise_temperature, generator=generator)
        return (x * self._scale()).float(), None

    def guided_sample(self, h, h_uncond, scale, generator=None):
        x = self.denoiser.sample(h, steps=self.sampling_steps, temperature=self.noise_temperature, generator=generator,
                                 z_uncond=h_uncond, guidance_scale=scale)
        return (x * self._scale()).float(), None
