"""Output heads on backbone hidden states: text logits and the image heads of the architectures.

The image heads read hidden states h [..., dim] (the state one step before each
image-output slot). All three (these two and diffusion.DiffusionHead) sample with
`sample(h, temperature=..., generator=...)`, so an architecture's generation loop is the
same for each; training calls `loss(h, target)` here and `loss(target, z)` on the
diffusion head, whose signature follows MAR.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .projectors import MLPProjector


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


class DiscreteImageHead(nn.Module):
    """Logits over a VQ codebook: h [..., dim] -> [..., codebook_size]; loss = cross-entropy on code indices."""

    def __init__(self, dim: int, codebook_size: int):
        super().__init__()
        self.proj = nn.Linear(dim, codebook_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)

    def loss(self, h: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy; indices [...] long, matching h's leading shape."""
        logits = self(h)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), indices.reshape(-1))

    def sample(self, h: torch.Tensor, temperature: float = 0.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Code indices [...]: argmax at temperature 0, else a draw from softmax(logits / temperature).

        Draws by the Gumbel-max trick: argmax(logits / temperature + Gumbel noise).
        """
        return sample_logits(self(h).float(), temperature, generator)


def sample_logits(logits: torch.Tensor, temperature: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices [...] from logits [..., V]: argmax at temperature 0, else a Gumbel-max draw from softmax(logits / temperature)."""
    if temperature <= 0:
        return logits.argmax(-1)
    u = draw(torch.rand, logits.shape, generator, logits.device).clamp(min=1e-20)
    return (logits / temperature - torch.log(-torch.log(u))).argmax(-1)


class RegressionImageHead(nn.Module):
    """Continuous image features: h [..., dim] -> [..., feat_dim], trained by cosine or MSE loss.

    The study regresses SigLIP features with a cosine loss; `layers` > 1 makes the head an MLP.
    """

    def __init__(self, dim: int, feat_dim: int, loss: str = "cosine", layers: int = 1):
        super().__init__()
        if loss not in ("cosine", "mse"):
            raise ValueError(f"unknown regression loss '{loss}'; known: cosine, mse")
        self.kind = loss
        self.proj = MLPProjector(dim, feat_dim, layers=layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)

    def loss(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over tokens of 1 - cos(pred, target), or of the squared error."""
        pred = self(h).float()
        if self.kind == "cosine":
            return (1 - F.cosine_similarity(pred, target.float(), dim=-1)).mean()
        return F.mse_loss(pred, target.float())

    def sample(self, h: torch.Tensor, temperature: float = 0.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """The predicted features; deterministic (temperature and generator exist for a uniform interface)."""
        return self(h)
