"""The text head on backbone hidden states, and sampling helpers shared with the image heads (`lightning_vlm.heads`)."""

from __future__ import annotations

import torch
from torch import nn


def draw(fn, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """`fn` (torch.rand / torch.randn) of `shape` on `device`, drawn on the generator's own device.

    So one CPU generator seeds sampling identically on CPU and GPU.
    """
    source = generator.device if generator is not None else device
    return fn(shape, generator=generator, device=source).to(device)


def lm_head(embedding: nn.Embedding, tied: bool = True) -> nn.Linear:
    """Linear hidden [.., dim] -> vocabulary logits; shares the text embedding matrix when `tied`.

    Tying saves vocab x dim parameters and is the usual choice for small models.
    """
    head = nn.Linear(embedding.embedding_dim, embedding.num_embeddings, bias=False)
    if tied:
        head.weight = embedding.weight
    else:
        nn.init.normal_(head.weight, std=0.02)
    return head


def sample_logits(logits: torch.Tensor, temperature: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices [...] from logits [..., V]: argmax at temperature 0, else a Gumbel-max draw from softmax(logits / temperature)."""
    if temperature <= 0:
        return logits.argmax(-1)
    u = draw(torch.rand, logits.shape, generator, logits.device).clamp(min=1e-20)
    return (logits / temperature - torch.log(-torch.log(u))).argmax(-1)
