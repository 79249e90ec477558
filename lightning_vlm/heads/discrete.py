"""`discrete`: the output image is a sequence of VQ code indices (the study's VQ output).

Loss: cross-entropy over the output encoder's codebook at each image slot. A sampled
index is fed back as its codebook vector, as the teacher-forced targets are. An encoder whose
token holds several codes (`codes_per_token`, e.g. `encoders.grouped.GroupedTokens`) gets that
many independent predictions per slot, from the one hidden state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.sampling import sample_logits
from .base import ImageHead


class DiscreteHead(ImageHead):
    """Logits over the codebook of a discrete output encoder (the study uses image_loss_weight 0.2 with it).

    Args:
        temperature: sampling temperature of image tokens (0 = greedy).
    """

    discrete = True

    def __init__(self, dim: int, encoder, temperature: float = 0.0):
        super().__init__()
        if encoder.codebook_size is None or not hasattr(encoder, "codes_from_indices"):
            raise ValueError(f"the discrete head needs a discrete output encoder; {type(encoder).__name__} is continuous")
        self.codes_from_indices = encoder.codes_from_indices  # a bound method: the encoder stays out of this module
        self.temperature = temperature
        self.codebook_size, self.codes_per_token = encoder.codebook_size, getattr(encoder, "codes_per_token", 1)  # duck-typed encoders: one
        self.proj = nn.Linear(dim, encoder.codebook_size * self.codes_per_token)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., dim] -> logits [..., codebook_size], or [..., codes_per_token, codebook_size] when > 1."""
        logits = self.proj(h)
        return logits if self.codes_per_token == 1 else logits.unflatten(-1, (self.codes_per_token, self.codebook_size))

    def loss(self, h, features, indices):
        logits = self(h)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), indices.reshape(-1))

    def _codes(self, logits: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(code vectors [B, F], indices [B] or [B, codes_per_token]) sampled from logits [B, (k,) C]."""
        idx = sample_logits(logits, self.temperature, generator)
        return self.codes_from_indices(idx[:, None])[:, 0].float(), idx

    def sample(self, h, generator=None):
        return self._codes(self(h).float(), generator)

    def guided_sample(self, h, h_uncond, scale, generator=None):
        cond, uncond = self(h).float(), self(h_uncond).float()
        return self._codes(uncond + scale * (cond - uncond), generator)
