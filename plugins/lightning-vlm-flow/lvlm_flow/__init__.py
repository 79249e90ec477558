"""`flow`: an out-of-tree lightning-vlm image head that draws each token by flow matching.

Each output image token is drawn by integrating a learned velocity field from noise to the
token (rectified flow), conditioned on the backbone's hidden state. It plugs into
lightning-vlm only through the `lightning_vlm.heads` entry point of its pyproject.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_vlm.heads import ImageHead

__all__ = ["FlowHead"]


class FlowHead(ImageHead):
    """Velocity v(x_t, t | h) for one continuous token (e.g. of the `ae` encoder): an MLP over [x_t, t, h].

    Args:
        width / depth: size of the velocity MLP.
        steps: Euler steps per generated token.
    """

    def __init__(self, dim: int, encoder, width: int = 256, depth: int = 3, steps: int = 16):
        super().__init__()
        self.feat_dim, self.steps = encoder.dim, steps
        layers: list[nn.Module] = [nn.Linear(encoder.dim + 1 + dim, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        layers.append(nn.Linear(width, encoder.dim))
        self.net = nn.Sequential(*layers)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None], h], dim=-1))

    def loss(self, h, features, indices):
        """Rectified flow: x_t = (1 - t) noise + t target; regress the straight-line velocity."""
        target = features.float()
        noise = torch.randn_like(target)
        t = torch.rand(target.shape[0], device=target.device)
        x_t = (1 - t[:, None]) * noise + t[:, None] * target
        return (self.velocity(x_t, t, h) - (target - noise)).pow(2).mean()

    @torch.no_grad()
    def sample(self, h, generator=None):
        x = torch.randn(h.shape[0], self.feat_dim, generator=generator, device="cpu").to(h.device)
        for i in range(self.steps):  # Euler steps from t = 0 (noise) to t = 1 (data)
            t = torch.full((h.shape[0],), i / self.steps, device=h.device)
            x = x + self.velocity(x, t, h) / self.steps
        return x.float(), None
