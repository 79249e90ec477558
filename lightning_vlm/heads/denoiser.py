"""The per-token denoiser of the diffusion head, for continuous image tokens (MAR: Li et al. 2024, arXiv 2406.11838).

Instead of quantising image features, the backbone emits a condition z per image
token and a small MLP denoiser models p(x | z) for that token's feature vector x.
Training: diffuse the target token to a random timestep and regress the denoiser's
output; sampling: DDIM from Gaussian noise, conditioned on z.

Parameterisation: v-prediction (Salimans & Ho 2022), v = alpha_t * eps - sigma_t * x0.
Its target stays well scaled at both ends of the schedule, which suits a cosine
schedule whose last steps are almost pure noise, and gives good few-step DDIM samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models.sampling import draw


def alphas_cumprod(schedule: str, steps: int) -> torch.Tensor:
    """Cumulative signal fraction alpha_bar_t [steps] (t = 0 least noisy), float64, as in improved DDPM."""
    if schedule == "cosine":
        f = torch.cos((torch.arange(steps + 1, dtype=torch.float64) / steps + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    elif schedule == "linear":
        scale = 1000 / steps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    else:
        raise ValueError(f"unknown noise schedule '{schedule}'; known: cosine, linear")
    return torch.cumprod(1 - betas, dim=0)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [M, dim] of integer timesteps t [M]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]  # [M, half]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class AdaLNBlock(nn.Module):
    """x + gate * MLP(LayerNorm(x) * (1 + scale) + shift), with shift, scale, gate computed from the condition c.

    The modulation starts at zero, so each block starts as the identity.
    """

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)  # 3 x [M, width]
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class Denoiser(nn.Module):
    """MLP denoiser of one image token x [M, feat_dim] given its backbone state z [M, cond_dim].

    The condition of every block is timestep embedding + projected z (adaLN); the output
    layer is zero-initialised (as in DiT and MAR). `forward(x_t, t, z)` predicts v.
    """

    def __init__(self, feat_dim: int, cond_dim: int, width: int = 256, depth: int = 3,
                 num_train_timesteps: int = 1000, schedule: str = "cosine"):
        super().__init__()
        self.feat_dim, self.num_train_timesteps = feat_dim, num_train_timesteps
        abar = alphas_cumprod(schedule, num_train_timesteps)
        self.register_buffer("alpha", abar.sqrt().float(), persistent=False)  # [T] signal scale
        self.register_buffer("sigma", (1 - abar).sqrt().float(), persistent=False)  # [T] noise scale
        self.time_embed = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(feat_dim, width)
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, feat_dim)
        for layer in (self.final_ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Predicted v [M, feat_dim] for noisy tokens x_t [M, feat_dim] at timesteps t [M] under condition z."""
        dtype = self.input_proj.weight.dtype
        c = self.time_embed(timestep_embedding(t, 256).to(dtype)) + self.cond_embed(z.to(dtype))  # [M, width]
        x = self.input_proj(x_t.to(dtype))
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        return self.out(self.final_norm(x) * (1 + scale) + shift)

    def loss(self, target: torch.Tensor, z: torch.Tensor, repeats: int = 4, mean_weight: float = 0.0) -> torch.Tensor:
        """Mean v-prediction MSE for target tokens [M, feat_dim] under conditions z [M, cond_dim].

        Each token is diffused at `repeats` independent timesteps (MAR's diffusion batch
        multiplier): the denoiser is cheap, so this buys more gradient signal per backbone pass.
        `mean_weight` adds that weight x the loss at the last timestep, where x_t is pure noise and
        the target is ~ -x0: the denoiser must give the token's mean under z alone. That is the
        part of the loss only the condition can explain, so it is the cleanest signal that
        teaches the backbone to carry the prompt; a uniform timestep draw gives it little weight.
        """
        x0 = target.float().repeat(repeats, 1)  # [k M, feat_dim]
        zk = z.repeat(repeats, 1)  # [k M, cond_dim]
        t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), device=x0.device)
        loss = self._v_loss(x0, t, zk)
        if mean_weight > 0:
            last = torch.full((target.shape[0],), self.num_train_timesteps - 1, device=target.device)
            loss = loss + mean_weight * self._v_loss(target.float(), last, z)
        return loss

    def _v_loss(self, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(x0)
        a, s = self.alpha[t, None], self.sigma[t, None]
        v_pred = self(a * x0 + s * noise, t, z).float()
        return F.mse_loss(v_pred, a * noise - s * x0)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, steps: int = 50, temperature: float = 1.0,
               generator: torch.Generator | None = None, z_uncond: torch.Tensor | None = None,
               guidance_scale: float = 1.0) -> torch.Tensor:
        """Tokens [M, feat_dim] for conditions z [M, cond_dim], by `steps` deterministic DDIM steps (eta = 0).

        The starting noise is scaled by `temperature` (0: start from zeros, a fully
        deterministic sample); it is drawn from `generator`, on the generator's device,
        so one seed gives the same samples on CPU and GPU. With `z_uncond`, each step uses
        the guided velocity v_uncond + guidance_scale x (v - v_uncond).
        """
        if not 1 <= steps <= self.num_train_timesteps:
            raise ValueError(f"steps must be in [1, {self.num_train_timesteps}], got {steps}")
        x = temperature * draw(torch.randn, (z.shape[0], self.feat_dim), generator, z.device)
        ts = torch.linspace(self.num_train_timesteps - 1, 0, steps).round().long().tolist()
        for i, t in enumerate(ts):
            v = self(x, torch.full((x.shape[0],), t, device=z.device), z).float()
            if z_uncond is not None:
                v_uncond = self(x, torch.full((x.shape[0],), t, device=z.device), z_uncond).float()
                v = v_uncond + guidance_scale * (v - v_uncond)
            a, s = self.alpha[t], self.sigma[t]
            x0, eps = a * x - s * v, s * x + a * v  # invert v = a eps - s x0 with x = a x0 + s eps
            x = x0 if i == len(ts) - 1 else self.alpha[ts[i + 1]] * x0 + self.sigma[ts[i + 1]] * eps
        return x
