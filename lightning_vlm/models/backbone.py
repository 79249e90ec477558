"""A small decoder-only transformer (Llama-style: RoPE, RMSNorm, SwiGLU, GQA) with a KV cache.

It reads input EMBEDDINGS rather than token ids, because a VLM splices image features
into the text sequence before the backbone sees it; the caller owns the embedding
table and the heads.

Padding and positions: `attention_mask` [B, T] marks real tokens. Positions default
to counting real tokens only (position of a token = number of real tokens before it),
so a prompt gets the same rotary positions whether it is right-padded, left-padded or
alone; a padded slot never serves as a key for a real token.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BackboneConfig:
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2  # grouped-query attention: n_heads query heads share n_kv_heads key/value heads
    mlp_hidden: int = 704  # SwiGLU width, about 8/3 x dim
    max_seq_len: int = 1024
    rope_base: float = 10000.0
    dropout: float = 0.0

    def __post_init__(self):
        if self.dim % self.n_heads:
            raise ValueError(f"backbone dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> BackboneConfig:
        """A named size (micro ~0.7M and tiny ~3M params for CPU, small ~24M, base ~110M), optionally with fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown backbone preset '{name}'; known presets: {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)


PRESETS = {
    "micro": BackboneConfig(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, mlp_hidden=352, max_seq_len=1024),
    "tiny": BackboneConfig(dim=256, n_layers=4, n_heads=4, n_kv_heads=2, mlp_hidden=704, max_seq_len=1024),
    "small": BackboneConfig(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, mlp_hidden=1408, max_seq_len=1024),
    "base": BackboneConfig(dim=768, n_layers=16, n_heads=12, n_kv_heads=4, mlp_hidden=2304, max_seq_len=2048),
}


def default_positions(valid: torch.Tensor, seen: torch.Tensor | int = 0) -> torch.Tensor:
    """Rotary positions [B, T] that count real tokens: `seen` (already cached, [B] or 0) + real tokens before.

    Padding slots get the position of the previous real token (clamped at 0); they are never attended to.
    """
    if isinstance(seen, torch.Tensor):
        seen = seen[:, None]
    return (seen + valid.long().cumsum(1) - 1).clamp(min=0)


class KVCache:
    """Preallocated keys and values of every layer, for incremental decoding of a batch.

    Slots are shared by the batch: each forward call writes its T tokens at slots
    [length, length + T) of every sample and then advances `length` by T. `mask`
    [B, max_len] records which slots hold real tokens, so a batch of right-padded
    prompts (or left-padded ones) can be prefilled in one call and then decoded one
    token per call: the pad slots stay in the cache but are masked out as keys, and
    each sample's next rotary position is `seen()`, its count of real tokens so far.

    The one-token step (`Backbone.decode`) reads every slot with `mask` as the key mask,
    so its shapes never change from step to step: no allocation grows with the
    sequence, and the step compiles once (`Backbone.compile_decode`).

    Build one with `Backbone.new_cache(batch, max_len)`.
    """

    def __init__(self, n_layers: int, batch: int, max_len: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.mask = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.positions = torch.zeros(batch, dtype=torch.long, device=device)  # real tokens cached per sample
        self.slot = torch.zeros(1, dtype=torch.long, device=device)  # == length, as a tensor for the compiled step
        self.length = 0  # slots filled so far

    @property
    def max_len(self) -> int:
        return self.mask.shape[1]

    def seen(self) -> torch.Tensor:
        """[B] number of real tokens cached per sample (= the position of its next token)."""
        return self.positions

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, h_kv, T, hd] of `layer` at the current slots; return all filled slots [B, h_kv, length + T, hd]."""
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, valid: torch.Tensor) -> None:
        """Record which of the T tokens just written are real ([B, T] bool) and move past them."""
        end = self.length + valid.shape[1]
        self.mask[:, self.length:end] = valid
        self.positions += valid.sum(1)
        self.length = end
        self.slot.fill_(end)


def rope_tables(max_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [max_len, head_dim] of the rotary embedding (each half-width table repeated twice)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, h, T, hd] by position; cos, sin are [B, 1, T, hd] in x's dtype (half-split pairing, as in Llama).

    x * cos + rotate_half(x) * sin, computed in x's own dtype: no casts on the way.
    """
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # no-ops unless autocast gave x another dtype
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units).

    Without them, CPU attention kernels run slower in bf16 than in fp32 (`benchmarks/attention.py`;
    benchmarks/RESULTS.md, "Speed"), so bf16 attention inputs are upcast there.
    """
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:
        return False


class Attention(nn.Module):
    def __init__(self, c: BackboneConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
        self.qkv = nn.Linear(c.dim, (c.n_heads + 2 * c.n_kv_heads) * c.head_dim, bias=False)
        self.proj = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=False)
        self.dropout = c.dropout

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self._rotated_qkv(x, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # [B, h_kv, S, hd]
        return self._attend(q, k, v, mask, b, t)

    def decode(self, x, cos, sin, mask, k_cache, v_cache, slot) -> torch.Tensor:
        """One new token per sample (x [B, 1, D]) against the whole preallocated cache of this layer.

        k_cache, v_cache [B, h_kv, max_len, hd] get the token's key and value at `slot` ([1] long);
        mask [B, 1, 1, max_len] hides empty and padded slots. Shapes do not depend on the step.
        """
        q, k, v = self._rotated_qkv(x, cos, sin)
        k_cache.index_copy_(2, slot, k.to(k_cache.dtype))
        v_cache.index_copy_(2, slot, v.to(v_cache.dtype))
        return self._attend(q, k_cache, v_cache, mask, x.shape[0], 1)

    def _rotated_qkv(self, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, h, T, hd], k and v [B, h_kv, T, hd] of x [B, T, D], q and k rotated by position."""
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # [B, h + 2 h_kv, T, hd]
        q, k, v = qkv.split([self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=1)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _attend(self, q, k, v, mask, b: int, t: int) -> torch.Tensor:
        dtype = q.dtype
        upcast = dtype == torch.bfloat16 and q.device.type == "cpu" and not cpu_has_amx()
        if upcast:  # see `cpu_has_amx`; no-ops on a float32 cache
            q, k, v = q.float(), k.float(), v.float()
        else:
            k, v = k.to(dtype), v.to(dtype)  # no-ops unless a cache was built in another dtype
        with torch.autocast("cpu", enabled=False) if upcast else contextlib.nullcontext():  # autocast would undo it
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                               dropout_p=self.dropout if self.training else 0.0,
                                               enable_gqa=self.n_kv_heads != self.n_heads)  # [B, h, T, hd]
        return self.proj(y.to(dtype).transpose(1, 2).reshape(b, t, -1))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """Pre-norm block: x + Attn(RMSNorm(x)), then x + MLP(RMSNorm(x))."""

    def __init__(self, c: BackboneConfig):
        super().__init__()
        self.attn_norm, self.mlp_norm = nn.RMSNorm(c.dim, eps=1e-5), nn.RMSNorm(c.dim, eps=1e-5)
        self.attn = Attention(c)
        self.mlp = SwiGLU(c.dim, c.mlp_hidden)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, cos, sin, mask, cache, layer) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, mask, cache, layer))
        return x + self.drop(self.mlp(self.mlp_norm(x)))

    def decode(self, x, cos, sin, mask, k_cache, v_cache, slot) -> torch.Tensor:
        x = x + self.attn.decode(self.attn_norm(x), cos, sin, mask, k_cache, v_cache, slot)
        return x + self.mlp(self.mlp_norm(x))


class Backbone(nn.Module):
    """Causal transformer over embeddings: [B, T, dim] -> final-normed hidden states [B, T, dim].

    Weights are initialised as in GPT-2: normal(0, 0.02), with the projections that write
    into the residual stream scaled by 1 / sqrt(2 n_layers) so its variance stays flat with depth.
    """

    cache_rows_can_be_cut = True  # its KVCache's rows can be copied and cut (generation's shared prefill)

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.dim, eps=1e-5)
        cos, sin = rope_tables(config.max_seq_len, config.head_dim, config.rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self._compiled_decode = None
        for name, p in self.named_parameters():
            if p.dim() == 2:  # every Linear weight; norm gains stay at 1
                residual = name.endswith(("attn.proj.weight", "mlp.down.weight"))
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layers) if residual else 0.02)

    @property
    def dim(self) -> int:
        return self.config.dim

    def new_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for `batch` sequences of up to `max_len` tokens (default: config.max_seq_len)."""
        c = self.config
        max_len = max_len or c.max_seq_len
        if max_len > c.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds the backbone's max_seq_len {c.max_seq_len}")
        weight = self.norm.weight
        if dtype is None:  # the dtype attention reads keys and values in: autocast's, else the weights'
            kind = weight.device.type
            dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else weight.dtype
            if dtype == torch.bfloat16 and kind == "cpu" and not cpu_has_amx():
                dtype = torch.float32  # attention upcasts there (`Attention._attend`): store what it reads
        return KVCache(c.n_layers, batch, max_len, c.n_kv_heads, c.head_dim, dtype, weight.device)

    def decode(self, inputs_embeds: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Hidden states [B, 1, dim] of one new token per sample (inputs_embeds [B, 1, dim]), appended to `cache`.

        The same result as `forward(inputs_embeds, cache=cache)` for a batch of real tokens, with
        shapes fixed by the cache: it runs compiled after `compile_decode()`.
        """
        if cache.length + 1 > cache.max_len:
            raise ValueError(f"{cache.length + 1} tokens exceed the KV cache's max_len of {cache.max_len}")
        step = self._compiled_decode if self._compiled_decode is not None else self._decode
        hidden = step(inputs_embeds, cache.k, cache.v, cache.mask, cache.positions, cache.slot)
        cache.length += 1
        return hidden

    def compile_decode(self, **options) -> None:
        """Compile the one-token step with torch.compile (inductor); it then recompiles only for a new
        batch size or cache length."""
        self._compiled_decode = torch.compile(self._decode, dynamic=False, **options)

    def _decode(self, x, k, v, mask, positions, slot) -> torch.Tensor:
        """decode's body on plain tensors (k, v [n_layers, B, h_kv, max_len, hd], mask [B, max_len],
        positions [B], slot [1]); updates them in place."""
        mask.index_fill_(1, slot, True)
        cos, sin = self.cos[positions][:, None, None], self.sin[positions][:, None, None]  # [B, 1, 1, hd]
        keys = mask[:, None, None, :]  # [B, 1, 1, max_len]
        for i, block in enumerate(self.blocks):
            x = block.decode(x, cos, sin, keys, k[i], v[i], slot)
        positions.add_(1)
        slot.add_(1)
        return self.norm(x)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, T, dim] of inputs_embeds [B, T, dim].

        attention_mask: [B, T] bool, True on real tokens; None means all real. Without a
            cache and mask the fast causal kernel is used; for right-padded training
            batches, passing None gives identical outputs at the real tokens (padding
            only ever follows them), so a mask is needed only for left padding or a cache.
        cache: appended to in place (see KVCache); the T tokens are written after the
            ones it holds and attend to them.
        positions: [B, T] rotary positions; default `default_positions` (counts real tokens).
        """
        b, t, _ = inputs_embeds.shape
        start = cache.length if cache is not None else 0
        limit = cache.max_len if cache is not None else self.config.max_seq_len
        if start + t > limit:
            where = "the KV cache's max_len" if cache is not None else "the backbone's max_seq_len"
            raise ValueError(f"{start + t} tokens exceed {where} of {limit}")
        real = (attention_mask.bool() if attention_mask is not None
                else torch.ones(b, t, dtype=torch.bool, device=inputs_embeds.device))
        if positions is None:
            positions = default_positions(real, cache.seen() if cache is not None else 0)
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # [B, 1, T, hd]

        mask = None  # None: plain causal attention (fast path)
        if cache is not None or attention_mask is not None:
            keys = torch.cat([cache.mask[:, :start], real], 1) if cache is not None else real  # [B, S]
            q_slot = torch.arange(start, start + t, device=keys.device)[:, None]  # [T, 1]
            k_slot = torch.arange(start + t, device=keys.device)[None]  # [1, S]
            # causal over slots, keys must be real; a query always sees itself so no row is empty
            mask = (k_slot <= q_slot) & (keys[:, None, :] | (k_slot == q_slot))  # [B, T, S]
            mask = mask[:, None]  # [B, 1, T, S]

        x = inputs_embeds
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.advance(real)
        return self.norm(x)
