"""A pretrained Hugging Face causal LM as the backbone, with the same interface as `Backbone`.

The model is read from a LOCAL directory (`save_pretrained` output); nothing is
downloaded. `transformers` (and `peft` for LoRA) are optional dependencies
(`pip install 'lightning-vlm[hf]'`), imported only when an HFBackbone is built.

With the model's own tokenizer (`tokenizer_path: hf:/same/folder`, see
`data.hf_tokenizer`) the VLM reads text through the LM's pretrained input embeddings and
writes it through its LM head (`text_layers`); the project's added tokens (turn and image
markers) get rows of their own that are trained even when LoRA freezes the LM.

    backbone: hf:/models/llama-1b
    backbone_overrides:            # HFBackbone options (instead of BackboneConfig fields)
      dtype: bfloat16              # weights as loaded; train with precision bf16-mixed
      gradient_checkpointing: true
      lora: {r: 128, alpha: 256, dropout: 0.05, target_modules: all-linear}   # {} = these defaults
"""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import default_positions

# The study's LoRA (r 128, alpha 256 on every linear layer of the LM; LLaVA's dropout 0.05).
# "all-linear": peft's name for every nn.Linear of the transformer except the output layer.
LORA_DEFAULTS = {"r": 128, "alpha": 256, "dropout": 0.05, "target_modules": "all-linear"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("the hf backbone needs transformers: pip install 'lightning-vlm[hf]' (or transformers)") from None
    return transformers


def _peft():
    try:
        import peft
    except ImportError:
        raise ImportError("lora on the hf backbone needs peft: pip install 'lightning-vlm[hf]' (or peft)") from None
    return peft


def lora_settings(lora: dict | bool | None) -> dict | None:
    """None / False: no LoRA; True or {}: the defaults; a dict: the defaults updated by it (unknown keys fail)."""
    if lora is None or lora is False:
        return None
    given = {} if lora is True else dict(lora)
    unknown = set(given) - set(LORA_DEFAULTS)
    if unknown:
        raise ValueError(f"lora: unknown option(s) {sorted(unknown)}; known: {', '.join(LORA_DEFAULTS)}")
    return {**LORA_DEFAULTS, **given}


def hf_backbone_options(overrides: dict | None) -> dict:
    """`backbone_overrides` of an hf: backbone, checked against HFBackbone's options (one clear line otherwise)."""
    known = [n for n in inspect.signature(HFBackbone.__init__).parameters if n not in ("self", "path", "from_pretrained_kwargs")]
    unknown = set(overrides or {}) - set(known)
    if unknown:
        raise ValueError(f"backbone_overrides: {sorted(unknown)} are not options of an hf: backbone; known: {', '.join(known)}")
    return dict(overrides or {})


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
    LM stays reachable as `causal_lm` for its text embeddings (`get_input_embeddings`) and
    LM head (`get_output_embeddings`).

    Args:
        path: local folder written by `save_pretrained`.
        dtype: "bfloat16" | "float16" | "float32" | None (the checkpoint's own): the weights as loaded.
            bf16 halves the memory of frozen weights; train with precision bf16-mixed (trainable
            LoRA weights stay float32). Not under FSDP, which needs one dtype per wrapped unit.
        gradient_checkpointing: recompute each decoder layer's activations in the backward pass.
        lora: LoRA adapters through peft (see `lora_settings`, `LORA_DEFAULTS`): the LM's own weights
            are frozen, the adapters trained. None = off (every weight trainable).
        local_files_only: never look for the model online (the default; a hub id needs False).
        attn_implementation: "sdpa", "eager", "flash_attention_2", ... (default: transformers' choice).
        weights_on_rank0: only global rank 0 reads the weights; the other ranks build the LM on the meta
            device (no memory) and FSDP copies rank 0's into their shards (`training.strategies.VLMFSDPStrategy`).
            For FSDP only: with any other strategy those ranks would have no weights.
        from_pretrained_kwargs: anything else for `from_pretrained` (programmatic use).
    """

    def __init__(self, path: str, dtype: str | None = None, gradient_checkpointing: bool = False,
                 lora: dict | bool | None = None, local_files_only: bool = True, attn_implementation: str | None = None,
                 weights_on_rank0: bool = False, **from_pretrained_kwargs):
        super().__init__()
        folder = Path(path)
        if local_files_only and not folder.is_dir():
            raise FileNotFoundError(f"hf backbone: no model directory at {folder} (give the local folder written by save_pretrained)")
        transformers = _transformers()
        kwargs = dict(from_pretrained_kwargs)
        if dtype is not None:
            if dtype not in DTYPES:
                raise ValueError(f"hf backbone: dtype '{dtype}' unknown; use one of {', '.join(DTYPES)}")
            kwargs[_dtype_argument(transformers.__version__)] = DTYPES[dtype]
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        on_meta = weights_on_rank0 and _global_rank() != 0
        if on_meta:  # the architecture without its weights: FSDP fills them in from rank 0
            config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=local_files_only)
            with torch.device("meta"):
                model = transformers.AutoModelForCausalLM.from_config(config, **kwargs)
        else:
            model = transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=local_files_only, **kwargs)
        if gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.lora = lora_settings(lora)
        if self.lora is not None:
            peft = _peft()
            config = peft.LoraConfig(r=int(self.lora["r"]), lora_alpha=float(self.lora["alpha"]), lora_dropout=float(self.lora["dropout"]),
                                     target_modules=self.lora["target_modules"], bias="none")
            with torch.device("meta") if on_meta else contextlib.nullcontext():
                model = peft.get_peft_model(model, config)  # freezes every weight of the LM; adapters in float32
        # from_pretrained returns the LM in eval mode, which Lightning keeps: LoRA dropout would be off in
        # training, and so would gradient checkpointing (transformers recomputes only while `training`)
        self.model = model.train()
        # the cache argument is `past_key_values` in transformers 4, renamed `cache` in 5
        self._cache_arg = "cache" if "cache" in inspect.signature(self.decoder.forward).parameters else "past_key_values"

    @property
    def has_lora(self) -> bool:
        return self.lora is not None

    @property
    def causal_lm(self) -> nn.Module:
        """The transformers causal LM (with LoRA layers injected, when on)."""
        return self.model.get_base_model() if self.has_lora else self.model

    @property
    def decoder(self) -> nn.Module:
        """The base transformer: embeddings, decoder layers, final norm."""
        return self.causal_lm.base_model

    @property
    def dim(self) -> int:
        return self.causal_lm.config.hidden_size

    def get_input_embeddings(self) -> nn.Module:
        return self.causal_lm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.causal_lm.get_output_embeddings()

    def text_layers(self, tokenizer) -> tuple[AddedTokenEmbedding, AddedTokenHead]:
        """(text embeddings, LM head) over the pretrained ones, with trainable rows for `tokenizer.added_ids`."""
        emb, head = self.get_input_embeddings(), self.get_output_embeddings()
        rows = emb.num_embeddings
        added = list(tokenizer.added_ids)
        beyond = sorted(set(range(rows, tokenizer.vocab_size)) - set(added))
        if beyond:
            raise ValueError(f"the tokenizer has ids up to {tokenizer.vocab_size - 1} but the model's embedding table only {rows} rows "
                             f"(e.g. id {beyond[0]}): tokenizer_path must be the model's own tokenizer (hf:/same/folder)")
        embedding = AddedTokenEmbedding(emb, added)
        tied = head is not None and head.weight is emb.weight
        return embedding, AddedTokenHead(head, added, embedding.added if tied else None)

    def merge_lora(self) -> nn.Module:
        """Folds the LoRA adapters into the LM's weights (in place) and returns the plain causal LM."""
        if self.has_lora:
            self.model = self.model.merge_and_unload()
            self.lora = None
        return self.model

    def new_cache(self, batch: int, max_len: int | None = None) -> HFCache:
        """An empty cache for `batch` sequences (`max_len` is accepted for parity with `Backbone`)."""
        return HFCache(batch, self.causal_lm.device)

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
        out = self.decoder(
            inputs_embeds=inputs_embeds.to(self.get_input_embeddings().weight.dtype),  # bf16 weights need bf16 inputs
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


def _global_rank() -> int:
    """This process's global rank as Lightning reads it from the launcher's environment, before any process group."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0)


def _dtype_argument(version: str) -> str:
    """`from_pretrained`'s dtype keyword: `dtype` from transformers 4.56 on, `torch_dtype` before."""
    major, minor = (int("".join(c for c in part if c.isdigit()) or 0) for part in version.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class AddedTokenEmbedding(nn.Module):
    """A pretrained embedding table plus trainable rows for added token ids: ids [...] -> [..., dim].

    `base` is the LM's own table (frozen under LoRA); the ids in `added_ids` read `added`
    ([K, dim], float32, trainable, started near the mean pretrained row so new tokens begin neutral)
    whatever `base` holds for them. `num_embeddings` covers both.
    """

    def __init__(self, base: nn.Embedding, added_ids: list[int]):
        super().__init__()
        self.base = base
        weight = base.weight.detach().float()
        k = len(added_ids)
        noise = torch.randn(k, weight.shape[1], device="meta" if weight.is_meta else "cpu")  # meta: a rank that FSDP fills in
        init = weight.mean(0, keepdim=True) + 0.01 * weight.std(0, keepdim=True) * noise.to(weight.device)
        self.added = nn.Parameter(init)  # float32: trainable even when the pretrained table is bf16
        self.num_embeddings = max([base.num_embeddings] + [i + 1 for i in added_ids])
        self.embedding_dim = base.embedding_dim
        slot = torch.full((self.num_embeddings,), -1, dtype=torch.long)
        slot[torch.tensor(added_ids, dtype=torch.long)] = torch.arange(k)
        self.register_buffer("slot", slot, persistent=False)  # id -> row of `added`, or -1
        self.register_buffer("added_ids", torch.tensor(added_ids, dtype=torch.long), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        slot = self.slot[ids]
        out = self.base(ids.clamp(max=self.base.num_embeddings - 1))  # added ids past the table read a stand-in row
        if not len(self.added):
            return out
        return torch.where((slot >= 0)[..., None], self.added[slot.clamp(min=0)].to(out.dtype), out)


class AddedTokenHead(nn.Module):
    """The pretrained LM head plus logits for added ids: h [..., dim] -> [..., num_embeddings].

    `added` is the embedding's own Parameter for a tied model (as the pretrained head is its
    table), else a trainable float32 [K, dim] of its own started at the mean pretrained head row.
    """

    def __init__(self, base: nn.Linear, added_ids: list[int], added: nn.Parameter | None = None):
        super().__init__()
        self.base = base
        if added is None:
            weight = base.weight.detach().float()
            added = nn.Parameter(weight.mean(0, keepdim=True).repeat(len(added_ids), 1))
        self.added = added
        self.out_features = max([base.out_features] + [i + 1 for i in added_ids])
        self.register_buffer("added_ids", torch.tensor(added_ids, dtype=torch.long), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.base(h.to(self.base.weight.dtype))  # [..., V0]
        if not len(self.added_ids):
            return logits
        extra = F.linear(h.to(logits.dtype), self.added.to(logits.dtype))  # [..., K]
        if self.out_features > logits.shape[-1]:
            logits = F.pad(logits, (0, self.out_features - logits.shape[-1]))  # every padded id is an added one
        return logits.index_copy(-1, self.added_ids, extra)
