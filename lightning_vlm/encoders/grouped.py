"""Token grouping: a g x g block of an encoder's token grid becomes one token the VLM reads and writes.

An 8 x 8 VQ grid is 64 positions in every sequence, and on a CPU the step time and the number of
steps to draw an image both grow with that length. Grouping 2 x 2 blocks gives 16 positions and
keeps the tokenizer as it is: each new token's features are its block's g^2 feature vectors side
by side, and a discrete one has g^2 codes, written at once from one hidden state (the discrete
head predicts g^2 codebook indices per slot). Vision towers reduce tokens the same way
(InternVL's pixel shuffle); a coarser tokenizer instead (4 x 4 tokens from a fresh VQ) mixed the
weather icon with the face colour in one code and was slower to read (benchmarks/RESULTS.md,
"Calibration").

Block order: blocks row-major over the grid, the g^2 tokens of a block row-major inside it.
The token cache stores the inner encoder's tokens (`cache_encoder`); `from_cache` groups them.
"""

from __future__ import annotations

import math

import torch

from .base import ImageEncoder


def group_grid(x: torch.Tensor, side: int, g: int) -> torch.Tensor:
    """[B, side*side, *rest] tokens in row-major order -> [B, (side/g)^2, g*g, *rest]."""
    b, rest = x.shape[0], x.shape[2:]
    s = side // g
    x = x.reshape(b, s, g, s, g, *rest).transpose(2, 3)  # [B, s, s, g, g, *rest]
    return x.reshape(b, s * s, g * g, *rest)


def ungroup_grid(x: torch.Tensor, side: int, g: int) -> torch.Tensor:
    """The inverse of `group_grid`: [B, (side/g)^2, g*g, *rest] -> [B, side*side, *rest]."""
    b, rest = x.shape[0], x.shape[3:]
    s = side // g
    x = x.reshape(b, s, s, g, g, *rest).transpose(2, 3)  # [B, s, g, s, g, *rest]
    return x.reshape(b, side * side, *rest)


class GroupedTokens(ImageEncoder):
    """`inner`'s tokens in g x g blocks: N / g^2 tokens of dim g^2 x D, g^2 indices each when discrete.

    Args:
        inner: a frozen encoder with a square token grid whose side g divides.
        group: the block side g (2: four tokens become one).
    """

    def __init__(self, inner: ImageEncoder, group: int):
        super().__init__()
        side = math.isqrt(inner.num_tokens)
        if group < 1 or side * side != inner.num_tokens or side % group:
            raise ValueError(f"a token group of {group} needs a square token grid whose side it divides; "
                             f"{type(inner).__name__} gives {inner.num_tokens} tokens")
        self.inner, self.group, self.side = inner, group, side
        self.freeze()

    @property
    def num_tokens(self) -> int:
        return self.inner.num_tokens // self.group**2

    @property
    def dim(self) -> int:
        return self.inner.dim * self.group**2

    @property
    def codebook_size(self) -> int | None:
        return self.inner.codebook_size

    @property
    def codes_per_token(self) -> int:
        return self.group**2

    @property
    def image_size(self) -> int:
        return self.inner.image_size

    @property
    def cache_encoder(self) -> ImageEncoder:
        return self.inner

    def from_cache(self, feats: torch.Tensor, indices: torch.Tensor | None):
        """The inner encoder's (features [B, N, D], indices [B, N] or None) -> this encoder's tokens."""
        grouped = group_grid(feats, self.side, self.group).flatten(2)  # [B, N / g^2, g^2 D]
        return grouped, None if indices is None else group_grid(indices, self.side, self.group)

    def encode(self, images: torch.Tensor):
        return self.from_cache(*self.inner.encode(images))

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """[..., g^2] long -> [..., g^2 x D]: the block's code vectors side by side."""
        codes = self.inner.codes_from_indices(indices.reshape(indices.shape[0], -1))  # [B, n g^2, D]
        return codes.reshape(*indices.shape[:-1], -1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """indices [B, N / g^2, g^2] (integer) or features [B, N / g^2, g^2 x D] -> images [B, 3, H, W]."""
        if tokens.is_floating_point():
            tokens = tokens.reshape(*tokens.shape[:2], self.group**2, -1)
        return self.inner.decode(ungroup_grid(tokens, self.side, self.group))
