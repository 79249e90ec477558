"""Convolutional encoder / decoder shared by the vq, ae and semantic encoders.

Geometry: a stride-2 stem, then one level per entry of `channels`, each after the
first halving the resolution again, so the token grid is image_size / 2**len(channels)
(64 px with 3 levels -> 8 x 8). The decoder mirrors it and upsamples with pixel
shuffle, which keeps full-resolution work small (only the last 3x3 conv runs there)
while still letting it place one-pixel-wide clock hands.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def grid_to_tokens(fmap: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h*w, C] (row-major token order)."""
    return fmap.flatten(2).transpose(1, 2)


def tokens_to_grid(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """[B, side*side, C] -> [B, C, side, side]; the inverse of `grid_to_tokens`."""
    b, n, c = tokens.shape
    if n != side * side:
        raise ValueError(f"expected {side * side} tokens per image, got {n}")
    return tokens.transpose(1, 2).reshape(b, c, side, side)


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels)


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, conv3x3) x 2, 1x1 skip when widths differ."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(
            norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
            norm(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over the token grid: lets distant tokens agree (face colour, a hand's line)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)  # 3 x [B, HW, C]
        y = F.scaled_dot_product_attention(q, k, v)  # [B, HW, C]
        return x + self.out(y.transpose(1, 2).reshape(b, c, h, w))


class Upsample(nn.Module):
    """x2 upsampling: conv3x3 to 4 x c_out channels, then pixel shuffle."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, 4 * c_out, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class ConvEncoder(nn.Module):
    """[B, 3, H, W] in [-1, 1] -> [B, out_channels, H / 2**L, W / 2**L] with L = len(channels)."""

    def __init__(self, out_channels: int, channels: Sequence[int] = (64, 128, 256), blocks: int = 1, attention: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels[0], 4, stride=2, padding=1)]
        c = channels[0]
        for level, width in enumerate(channels):
            if level > 0:
                layers.append(nn.Conv2d(c, width, 4, stride=2, padding=1))
            layers += [ResBlock(width, width) for _ in range(blocks)]
            c = width
        if attention:
            layers += [AttnBlock(c), ResBlock(c, c)]
        layers += [norm(c), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.out = nn.Conv2d(c, out_channels, 1)  # the latent projection (ae initialises its log-variance half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(x))


class ConvDecoder(nn.Module):
    """[B, in_channels, h, w] -> [B, 3, h * 2**L, w * 2**L], unbounded (the target range is [-1, 1])."""

    def __init__(self, in_channels: int, channels: Sequence[int] = (64, 128, 256), blocks: int = 2, attention: bool = True):
        super().__init__()
        widths = list(channels)[::-1]  # deepest level first
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        if attention:
            layers += [ResBlock(widths[0], widths[0]), AttnBlock(widths[0])]
        for level, width in enumerate(widths):
            layers += [ResBlock(width, width) for _ in range(blocks)]
            c_next = widths[level + 1] if level + 1 < len(widths) else max(width // 2, 8)
            layers.append(Upsample(width, c_next))
        layers += [norm(c_next), nn.SiLU(), nn.Conv2d(c_next, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
