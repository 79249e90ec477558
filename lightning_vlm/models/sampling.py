"""Token sampling shared by text decoding and the image heads: seeded draws, argmax or Gumbel-max."""

from __future__ import annotations

import torch


def draw(fn, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """`fn` (torch.rand / torch.randn) of `shape` on `device`, drawn on the generator's own device.

    So one CPU generator seeds sampling identically on CPU and GPU.
    """
    source = generator.device if generator is not None else device
    return fn(shape, generator=generator, device=source).to(device)


def sample_logits(logits: torch.Tensor, temperature: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices [...] from logits [..., V]: argmax at temperature 0, else a Gumbel-max draw from softmax(logits / temperature)."""
    if temperature <= 0:
        return logits.argmax(-1)
    u = draw(torch.rand, logits.shape, generator, logits.device).clamp(min=1e-20)
    return (logits / temperature - torch.log(-torch.log(u))).argmax(-1)
