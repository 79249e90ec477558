"""A pretrained Hugging Face causal LM as the backbone, with the same interface as `Backbone`.

The model is read from a LOCAL directory (`save_pretrained` output); nothing is
downloaded. `transformers` is an optional dependency (`pip install 'lightning-vlm[hf]'`),
imported only when an HFBackbone is built.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from .backbone import default_positions


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("the hf backbone needs transformers: pip install 'lightning-vlm[hf]' (or transformers)") from None
    return transformers


class HFCache:
    """Cache of an HFBackbone: the model's own `past_key_values` plus the mask of every token seen.

    Same semantics as `KVCache`: each call appends its T tokens (padding included) for the
    whole batch; `mask` [B, S] marks the real ones and `seen()` gives each sample's next
    position. It grows as needed, so `max_len` is not used.
    """

    def __init__(self, batch: int, device: torch.device | str | None = None):
        self.past = None
        self.mask = torch.zeros(batch, 0, dtype=torch.bool, device=device)

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    def seen(self) -> torch.Tensor:
        """[B] number of real tokens cached per sample (= the position of its next token)."""
        return self.mask.sum(1)


class HFBackbone(nn.Module):
    """Any `AutoModelForCausalLM` checkpoint as a backbone: inputs_embeds [B, T, dim] -> final hidden states.

    Runs the model's base transformer (final norm included, no LM head); the full causal
    LM stays reachable as `.model` for its text embeddings (`get_input_embeddings`) and
    LM head (`get_output_embeddings`). Extra keyword arguments go to `from_pretrained`
    (e.g. a dtype or attn_implementation).
    """

    def __init__(self, path: str, **from_pretrained_kwargs):
        super().__init__()
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"hf backbone: no model directory at {folder} (give the local folder written by save_pretrained)")
        auto = _transformers().AutoModelForCausalLM
        self.model = auto.from_pretrained(str(folder), local_files_only=True, **from_pretrained_kwargs)
        # the cache argument is `past_key_values` in transformers 4, renamed `cache` in 5
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.base_model.forward).parameters else "past_key_values"

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def new_cache(self, batch: int, max_len: int | None = None) -> HFCache:
        """An empty cache for `batch` sequences (`max_len` is accepted for parity with `Backbone`)."""
        return HFCache(batch, self.model.device)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: HFCache | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, T, dim]; arguments as in `Backbone.forward`."""
        b, t, _ = inputs_embeds.shape
        real = (attention_mask.bool() if attention_mask is not None
                else torch.ones(b, t, dtype=torch.bool, device=inputs_embeds.device))
        if positions is None:
            positions = default_positions(real, cache.seen() if cache is not None else 0)
        mask = None  # None: plain causal attention
        if cache is not None:
            mask = torch.cat([cache.mask, real], 1)  # HF wants the mask over past + new tokens: [B, S]
        elif attention_mask is not None:
            mask = real
        out = self.model.base_model(
            inputs_embeds=inputs_embeds,
            attention_mask=mask.long() if mask is not None else None,
            position_ids=positions,
            use_cache=cache is not None,
            **{self._cache_arg: cache.past if cache is not None else None},
        )
        if cache is not None:
            cache.past, cache.mask = getattr(out, self._cache_arg), mask
        return out.last_hidden_state

    def decode(self, inputs_embeds: torch.Tensor, cache: HFCache) -> torch.Tensor:
        """One new token per sample, as `Backbone.decode`."""
        return self(inputs_embeds, cache=cache)
