"""A plain pre-LayerNorm transformer, attention pooling and a caption decoder: the semantic encoder's parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """Pre-LN block: x + Attn(LN(x)), then x + MLP(LN(x)); `mask` [B, L] marks real (True) tokens."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x [B, h, L, d/h]
        attn_mask = mask[:, None, None, :] if mask is not None else None  # [B, 1, 1, L]: keys each query may see
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, h, L, d/h]
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """`depth` blocks then a final LayerNorm: [B, L, dim] -> [B, L, dim]."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


class AttentionPool(nn.Module):
    """One learned query attending over the tokens (SigLIP's MAP head): [B, L, dim] -> [B, dim].

    A mean would let large regions (a watch face's random colour) drown small decisive
    ones (a corner icon, one digit of a caption); the query learns where to look.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        query = self.query.expand(x.shape[0], -1, -1)
        pooled, _ = self.attn(query, x, x, key_padding_mask=None if mask is None else ~mask, need_weights=False)  # [B, 1, dim]
        return self.norm(pooled[:, 0])


class CaptionDecoder(nn.Module):
    """Causal text decoder cross-attending to image features: (ids [B, L], image [B, N, image_dim]) -> logits [B, L, vocab].

    Only a training signal for the image tower (see semantic.py); never used to caption.
    """

    def __init__(self, vocab_size: int, max_len: int, dim: int, depth: int, heads: int, image_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        self.image_in = nn.Linear(image_dim, dim)
        layer = nn.TransformerDecoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, depth, norm=nn.LayerNorm(dim))
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, ids: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).triu(1)  # True: may not attend
        x = self.embed(ids) + self.pos[:, :length]
        return self.head(self.layers(x, self.image_in(image), tgt_mask=causal, tgt_is_causal=True))
