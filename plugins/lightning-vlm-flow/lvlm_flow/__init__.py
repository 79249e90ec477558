"""`flow`: an out-of-tree lightning-vlm architecture with a per-token flow-matching head.

Each output image token is drawn by integrating a learned velocity field from noise
to the token (rectified flow), conditioned on the backbone's hidden state. It plugs
into lightning-vlm only through the `lightning_vlm.architectures` entry point.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_vlm.architectures.base import UnifiedVLM

__all__ = ["FlowMatchingVLM", "FlowHead"]


class FlowHead(nn.Module):
    """Velocity v(x_t, t | z) for one token: an MLP over [x_t, t, z]."""

    def __init__(self, feat_dim: int, cond_dim: int, width: int = 256, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(feat_dim + 1 + cond_dim, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        layers.append(nn.Linear(width, feat_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None], z], dim=-1))

    def loss(self, target: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Rectified flow: x_t = (1 - t) noise + t target; regress the straight-line velocity."""
        noise = torch.randn_like(target)
        t = torch.rand(target.shape[0], device=target.device)
        x_t = (1 - t[:, None]) * noise + t[:, None] * target
        return (self(x_t, t, z) - (target - noise)).pow(2).mean()

    @torch.no_grad()
    def sample(self, z: torch.Tensor, feat_dim: int, steps: int, generator: torch.Generator | None) -> torch.Tensor:
        x = torch.randn(z.shape[0], feat_dim, generator=generator, device="cpu").to(z.device)
        for i in range(steps):  # Euler steps from t = 0 (noise) to t = 1 (data)
            t = torch.full((z.shape[0],), i / steps, device=z.device)
            x = x + self(x, t, z) / steps
        return x


class FlowMatchingVLM(UnifiedVLM):
    """UnifiedVLM with a flow-matching image head over continuous latents (e.g. the `ae` encoder).

    Args:
        flow_width / flow_depth: size of the velocity MLP.
        flow_steps: Euler steps per generated token.
    """

    def __init__(self, *args, flow_width: int = 256, flow_depth: int = 3, flow_steps: int = 16, **kwargs):
        self._flow_size = (flow_width, flow_depth)
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()

    def build_image_head(self, dim, encoder):
        width, depth = self._flow_size
        return FlowHead(encoder.dim, dim, width, depth)

    def image_loss(self, h, features, indices):
        return self.image_head.loss(features.float(), h)

    def sample_image_token(self, h, generator):
        x = self.image_head.sample(h, self.output_encoder.dim, self.hparams.flow_steps, generator)
        return x.float(), None
