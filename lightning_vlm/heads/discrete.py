"""`discrete`: the output image is a sequence of VQ code indices (the study's VQ output).

Loss: cross-entropy over the output encoder's codebook at each image slot. A sampled
index is fed back as its codebook vector, as the teacher-forced targets are. An encoder whose
token holds several codes (`codes_per_token`, e.g. `encoders.grouped.GroupedTokens`) gets that
many predictions per slot from the one hidden state: all at once (independent), or with
`sequential_codes` one after another, each seeing the codes of its slot before it.

Why sequential: a slot of 2 x 2 codes is a quarter of the sequence positions, so a generation row
costs far less, but four codes predicted at once lose each other as context and drew worse
(benchmarks/RESULTS.md, Calibration, round 3, G3). A small residual MLP per code restores that
context inside the slot, as RQ-Transformer's depth transformer does across a stack of codes. At the
CPU quickstart's micro scale it did not bring the drawing back (RESULTS, Calibration, round 10, R10S).
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
        sequential_codes: with several codes per slot, predict them in order (code j sees the slot's
            codes before j) instead of all at once. No effect with one code per slot.
        code_smoothing: share of each target moved from the true code to codes near it in the codebook
            (softmax of cosine similarity / `code_smoothing_temperature`): a near miss then costs less
            than a far one, so a sample teaches more than 1 of 1,024. 0 = plain cross-entropy.
    """

    discrete = True

    def __init__(self, dim: int, encoder, temperature: float = 0.0, sequential_codes: bool = False,
                 code_smoothing: float = 0.0, code_smoothing_temperature: float = 0.1):
        super().__init__()
        if not 0 <= code_smoothing < 1 or code_smoothing_temperature <= 0:
            raise ValueError(f"code_smoothing must lie in [0, 1) and its temperature be > 0; got {code_smoothing}, {code_smoothing_temperature}")
        self.code_smoothing, self.code_smoothing_temperature = code_smoothing, code_smoothing_temperature
        if encoder.codebook_size is None or not hasattr(encoder, "codes_from_indices"):
            raise ValueError(f"the discrete head needs a discrete output encoder; {type(encoder).__name__} is continuous")
        self.codes_from_indices = encoder.codes_from_indices  # a bound method: the encoder stays out of this module
        self.temperature = temperature
        self.codebook_size, self.codes_per_token = encoder.codebook_size, getattr(encoder, "codes_per_token", 1)  # duck-typed encoders: one
        self.sequential = sequential_codes and self.codes_per_token > 1
        if code_smoothing and self.codes_per_token > 1:
            raise ValueError("code_smoothing needs one code per output slot (output_token_group 1)")
        if self.sequential:
            k, c = self.codes_per_token, self.codebook_size
            self.earlier_codes = nn.Embedding(k * c, dim)  # code c at place i of the slot: row i * C + c
            self.places = nn.Parameter(torch.zeros(k, dim))
            self.mixer = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            self.proj = nn.Linear(dim, c)
        else:
            self.proj = nn.Linear(dim, self.codebook_size * self.codes_per_token)

    def forward(self, h: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """h [..., dim] -> logits [..., codebook_size], or [..., codes_per_token, codebook_size] when > 1.
        Sequential codes need the slot's true `indices` [..., codes_per_token] (teacher forcing)."""
        if self.sequential:
            if indices is None:
                raise ValueError("sequential codes are predicted one at a time: pass the slot's indices, or use sample()")
            offsets = torch.arange(self.codes_per_token, device=indices.device) * self.codebook_size
            seen = self.earlier_codes(indices + offsets)  # [..., k, dim]
            return self._place_logits(h[..., None, :] + self.places + torch.cumsum(seen, -2) - seen)
        logits = self.proj(h)
        return logits if self.codes_per_token == 1 else logits.unflatten(-1, (self.codes_per_token, self.codebook_size))

    def _place_logits(self, state: torch.Tensor) -> torch.Tensor:
        return self.proj(state + self.mixer(state))

    def _code_logits(self, h: torch.Tensor, j: int, context) -> torch.Tensor:
        """Logits [B, C] of code j of each slot, given the summed embeddings of its codes before j."""
        return self._place_logits(h + self.places[j] + context).float()

    def loss(self, h, features, indices):
        logits = self(h, indices.reshape(*h.shape[:-1], self.codes_per_token)) if self.sequential else self(h)
        logits, indices = logits.reshape(-1, logits.shape[-1]).float(), indices.reshape(-1)
        if not self.code_smoothing:
            return F.cross_entropy(logits, indices)
        return F.cross_entropy(logits, self.soft_targets(indices))

    def soft_targets(self, indices: torch.Tensor) -> torch.Tensor:
        """[N] code indices -> [N, C] target distributions: the true code, plus `code_smoothing` of mass
        spread over the codebook by cosine similarity to it."""
        book = F.normalize(self.codes_from_indices(torch.arange(self.codebook_size, device=indices.device)[None])[0].float(), dim=-1)
        near = torch.softmax(book[indices] @ book.T / self.code_smoothing_temperature, dim=-1)
        return (1 - self.code_smoothing) * F.one_hot(indices, self.codebook_size).float() + self.code_smoothing * near

    def _codes(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(code vectors [B, F], indices [B] or [B, codes_per_token]) of sampled indices."""
        return self.codes_from_indices(idx[:, None])[:, 0].float(), idx

    def _sample_in_order(self, logits_of, generator) -> torch.Tensor:
        """Indices [B, k], code j sampled from logits_of(j, the context of codes < j)."""
        context, picked = 0, []
        for j in range(self.codes_per_token):
            idx = sample_logits(logits_of(j, context), self.temperature, generator)
            picked.append(idx)
            context = context + self.earlier_codes(idx + j * self.codebook_size)
        return torch.stack(picked, -1)

    def sample(self, h, generator=None):
        if self.sequential:
            return self._codes(self._sample_in_order(lambda j, ctx: self._code_logits(h, j, ctx), generator))
        return self._codes(sample_logits(self(h).float(), self.temperature, generator))

    def guided_sample(self, h, h_uncond, scale, generator=None):
        if self.sequential:
            def guided(j, ctx):
                cond, uncond = self._code_logits(h, j, ctx), self._code_logits(h_uncond, j, ctx)
                return uncond + scale * (cond - uncond)
            return self._codes(self._sample_in_order(guided, generator))
        cond, uncond = self(h).float(), self(h_uncond).float()
        return self._codes(sample_logits(uncond + scale * (cond - uncond), self.temperature, generator))
