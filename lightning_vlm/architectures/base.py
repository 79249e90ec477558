"""UnifiedVLM: one causal backbone that reads images (VQA, captions) and writes them.

    text ids ------------------------------> text embeddings ─┐
    image in  -> input encoder (frozen) -> [affine map] -> input projector ─┼─> backbone -> LM head (text CE)
    image out -> output encoder (frozen) -> output projector* ─┘            └─> image head (architecture)

*When input and output encoders are the same checkpoint, generated image tokens are
fed back through the input projector: one shared space, as in the study.

Output image tokens also get a learned embedding of their slot index (0..N-1). With
rotary positions alone the state that predicts a token knows only relative offsets,
and must find "which grid cell comes next" by attending back to <boi>; a corner icon
the prompt asks for then has no fixed place to be drawn. The slot embedding tells
it directly (`output_slot_embedding: false` turns it off, as in the study's model).

Classifier-free guidance (Ho & Salimans, 2022): with `prompt_dropout` p, a training
generation sample has its request text replaced by <unk> tokens with probability p, so
the one model also learns unconditional generation. With `guidance_scale` w != 1, each
image token is drawn from uncond + w x (cond - uncond) (logits, diffusion velocity or
regressed feature), which strengthens what the prompt asks for.

Each image-output slot is predicted from the hidden state one step before it; during
training the slot itself holds the target encoder's feature (teacher forcing).
Loss = text CE on assistant tokens + image_loss_weight x image loss. Architectures
subclass this and supply the image head (`discrete`, `regression`, `diffusion`).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric

from ..data.collate import SequenceBuilder
from ..data.hf_tokenizer import HFTokenizer, load_tokenizer
from ..data.smartwatch.tasks import TASKS
from ..encoders.base import ImageEncoder, load_encoder_checkpoint
from ..models.backbone import Backbone, BackboneConfig
from ..models.heads import lm_head
from ..models.projectors import AffineMisalignment, MLPProjector
from ..models.standardize import RunningStandardizer
from .batch import format_metrics, select_rows
from .evaluation import VLMEvaluator

FREEZABLE = ("backbone", "text_embeddings", "input_projector", "output_projector", "output_slots", "image_head")


@contextmanager
def own_hyperparameters():
    """LightningCLI hands its hparams to every save_hyperparameters() run while it instantiates
    the model; encoders built inside our __init__ must record their own instead."""
    token = _given_hyperparameters.set(None)
    try:
        yield
    finally:
        _given_hyperparameters.reset(token)


def encoder_checkpoint(spec: str) -> str:
    """A checkpoint path, or a registered encoder name standing for runs/encoders/<name>.ckpt."""
    if Path(spec).exists():
        return spec
    from ..registry import available

    if spec in available("encoders"):
        path = Path("runs/encoders") / f"{spec}.ckpt"
        if path.is_file():
            return str(path)
        raise FileNotFoundError(f"no trained '{spec}' encoder at {path}: train it with `lightning-vlm fit --config configs/encoders/{spec}.yaml`")
    raise FileNotFoundError(f"encoder checkpoint not found: {spec} (give a checkpoint path or a trained encoder's name)")


def build_backbone(spec: str, overrides: dict | None, vocab_size: int):
    """A preset name ("tiny", "small", "base") or "hf:/local/path" for a Hugging Face causal LM.

    `overrides` are BackboneConfig fields for a preset, HFBackbone options (dtype,
    gradient_checkpointing, lora, ...) for an hf: backbone.
    """
    if spec.startswith("hf:"):
        from ..models.hf_backbone import HFBackbone, hf_backbone_options

        return HFBackbone(spec[3:], **hf_backbone_options(overrides))
    return Backbone(BackboneConfig.preset(spec, **(overrides or {})))


class UnifiedVLM(pl.LightningModule):
    """Base LightningModule of every architecture; see the module docstring.

    Args:
        tokenizer_path: tokenizer.json of the data, or "hf:/path/to/local/causal-lm" for that model's own
            tokenizer with the project's tokens added (`data.hf_tokenizer`; the data's `tokenizer` must name
            the same). With an hf: backbone this keeps the LM's pretrained embeddings and LM head.
        input_encoder: checkpoint of the frozen encoder that reads images.
        output_encoder: checkpoint of the frozen encoder whose tokens are generated
            (default: the input encoder, i.e. one shared space).
        backbone: "tiny" | "small" | "base" | "hf:/path/to/local/causal-lm".
        backbone_overrides: BackboneConfig fields to change (e.g. {n_layers: 2}); for an hf: backbone its
            options instead (`models.hf_backbone.HFBackbone`: dtype, gradient_checkpointing, lora, ...).
        image_loss_weight: alpha in text CE + alpha x image loss.
        misalign_strength / misalign_seed / misalign_rotation: the study's affine map on the input side.
        freeze: parts kept fixed: any of backbone, text_embeddings, input_projector, output_projector, image_head.
        lr / projector_lr / weight_decay / warmup_ratio: AdamW with linear warm-up then cosine decay.
        max_new_tokens: limit on generated text per answer at test time.
        reader: checkpoint of the attribute reader used to score generated images (test).
        image_temperature: sampling temperature of image tokens at test time (0 = greedy).
        text_temperature: sampling temperature of text answers and acknowledgements (0 = greedy).
        prompt_dropout: probability that a training generation sample's request is hidden (replaced
            by <unk> tokens) so the model learns the unconditional image too; needed for guidance.
        guidance_scale: classifier-free guidance at generation (1 = off; needs prompt_dropout > 0 in training).
        output_slot_embedding: add a learned embedding of the slot index to every output image token.
        standardize_features: standardise each encoder's features per dimension (running statistics of
            the training features) before its projector and the misalignment map; for encoders whose
            tokens share a large mean direction (the semantic encoder), whose variation a projector
            otherwise hardly sees.
        context_noise: training only: add Gaussian noise to the teacher-forced output tokens the
            backbone reads, with a std drawn per sequence from U(0, context_noise) x the batch's
            feature std. The backbone can then no longer copy a corner icon from the clean token
            before it and has to take it from the prompt, and it learns to read imperfect tokens,
            like the ones it samples itself at generation. 0 = off (exact teacher forcing).
        use_token_cache: read encoder outputs from `lightning-vlm encode`'s cache beside the
            data when it matches the encoder checkpoint; images it lacks are encoded on the fly.
        init_weights: a VLM checkpoint whose weights start this fit (a curriculum's next stage, with a
            fresh optimiser and schedule); `fit --ckpt_path` still resumes a stopped run over it.
        compile_backbone: train with the backbone compiled by torch.compile (inductor, dynamic sequence
            length; the first steps pay the compile time, see benchmarks/RESULTS.md for what it buys).
        save_frozen_backbone: also store the frozen weights of an hf: backbone (all of them under LoRA) in
            checkpoints. Default: checkpoints hold the trainable weights only, and the frozen ones are read
            back from the model folder when a checkpoint is loaded (`on_load_checkpoint`; loading is then
            non-strict, `strict_loading` False, for FSDP's own loader). Frozen image encoders are always stored.
    """

    output_is_discrete = False

    def __init__(
        self,
        tokenizer_path: str,
        input_encoder: str,
        output_encoder: str | None = None,
        backbone: str = "tiny",
        backbone_overrides: dict | None = None,
        image_loss_weight: float = 1.0,
        misalign_strength: float = 0.0,
        misalign_seed: int = 0,
        misalign_rotation: str = "random",
        freeze: list[str] | None = None,
        lr: float = 1e-3,
        projector_lr: float | None = None,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.03,
        max_new_tokens: int = 40,
        reader: str | None = None,
        image_temperature: float = 0.0,
        text_temperature: float = 0.0,
        grid_images: int = 8,
        prompt_dropout: float = 0.0,
        guidance_scale: float = 1.0,
        output_slot_embedding: bool = True,
        standardize_features: bool = False,
        context_noise: float = 0.0,
        use_token_cache: bool = True,
        init_weights: str | None = None,
        compile_backbone: bool = False,
        save_frozen_backbone: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        if context_noise < 0:
            raise ValueError(f"context_noise must be >= 0, got {context_noise}")
        if not 0 <= prompt_dropout < 1:
            raise ValueError(f"prompt_dropout must be in [0, 1), got {prompt_dropout}")
        bad = set(freeze or []) - set(FREEZABLE)
        if bad:
            raise ValueError(f"freeze: unknown part(s) {sorted(bad)}; known: {', '.join(FREEZABLE)}")
        self.tokenizer = load_tokenizer(tokenizer_path)  # a tokenizer.json, or hf:/folder (the LM's own)
        in_path = encoder_checkpoint(input_encoder)
        out_path = encoder_checkpoint(output_encoder) if output_encoder is not None else in_path
        self.shared_space = Path(out_path).resolve() == Path(in_path).resolve()
        self._encoder_paths = {"input": in_path, "output": out_path}
        self._caches: dict = {}
        with own_hyperparameters():
            self.input_encoder: ImageEncoder = load_encoder_checkpoint(in_path)
            self.output_encoder: ImageEncoder = self.input_encoder if self.shared_space else load_encoder_checkpoint(out_path)
        self.builder = SequenceBuilder(self.tokenizer, self.input_encoder.num_tokens, self.output_encoder.num_tokens)

        self.backbone = build_backbone(backbone, backbone_overrides, self.tokenizer.vocab_size)
        dim = self.backbone.dim
        if isinstance(self.tokenizer, HFTokenizer) and hasattr(self.backbone, "text_layers"):
            self.text_embeddings, self.lm_head = self.backbone.text_layers(self.tokenizer)  # pretrained + added-token rows
        else:
            if backbone.startswith("hf:"):
                rank_zero_warn(f"backbone {backbone} with the data's own tokenizer: fresh text embeddings and LM head; set "
                               f"model.tokenizer_path and data.tokenizer to {backbone} to use the LM's own")
            self.text_embeddings = nn.Embedding(self.tokenizer.vocab_size, dim)
            nn.init.normal_(self.text_embeddings.weight, std=0.02)
            self.lm_head = lm_head(self.text_embeddings, tied=True)
        if backbone.startswith("hf:") and not save_frozen_backbone:
            self.strict_loading = False  # checkpoints leave the frozen pretrained weights out (on_save_checkpoint)
        self.misalign = (
            AffineMisalignment(self.input_encoder.dim, misalign_strength, misalign_seed, misalign_rotation)
            if misalign_strength > 0 else nn.Identity()
        )
        self.input_standardizer = RunningStandardizer(self.input_encoder.dim) if standardize_features else None
        self.output_standardizer = (self.input_standardizer if self.shared_space else RunningStandardizer(self.output_encoder.dim)) if standardize_features else None
        self.input_projector = MLPProjector(self.input_encoder.dim, dim)
        self.output_projector = self.input_projector if self.shared_space else MLPProjector(self.output_encoder.dim, dim)
        self.output_slots = nn.Embedding(self.output_encoder.num_tokens, dim) if output_slot_embedding else None
        if self.output_slots is not None:
            nn.init.normal_(self.output_slots.weight, std=0.02)
        self.image_head = self.build_image_head(dim, self.output_encoder)
        names = ["text", "image", "total"] + [f"text/{t}" for t in TASKS]
        self.val_losses = nn.ModuleDict({n.replace("/", "__"): MeanMetric(sync_on_compute=True) for n in names})
        for part in freeze or []:
            if getattr(self, part) is not None:
                getattr(self, part).requires_grad_(False)
        self._batch_started = None

    # ---- what an architecture supplies ----------------------------------------------------
    def build_image_head(self, dim: int, encoder: ImageEncoder) -> nn.Module:
        raise NotImplementedError

    def image_loss(self, h: torch.Tensor, features: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        """Loss of hidden states h [M, dim] predicting output tokens (features [M, F], indices [M])."""
        raise NotImplementedError

    def sample_image_token(self, h: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next image token from h [B, dim]: (features [B, F] to feed back, indices [B] or None)."""
        raise NotImplementedError

    def sample_guided_image_token(self, h: torch.Tensor, h_uncond: torch.Tensor, generator: torch.Generator | None):
        """As `sample_image_token`, with classifier-free guidance between the states of the prompted and
        the prompt-hidden sequence (scale `hparams.guidance_scale`). Optional for an architecture."""
        raise NotImplementedError(f"{type(self).__name__} does not support classifier-free guidance: set guidance_scale: 1.0")

    # ---- classifier-free guidance ----------------------------------------------------------
    def prompt_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] bool: the text of each sequence's first user turn (between its <user> and <eot>), the
        part hidden for unconditional generation."""
        b = self.builder
        in_first_turn = ((ids == b.user).cumsum(1) == 1) & ((ids == b.eot).cumsum(1) == 0)
        return in_first_turn & ~torch.isin(ids, torch.tensor([b.user, b.boi, b.image, b.eoi], device=ids.device))

    def hide_prompts(self, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """ids with the first-turn text of `rows` ([B] bool) replaced by <unk>."""
        return ids.masked_fill(self.prompt_mask(ids) & rows[:, None], self.tokenizer.id("<unk>"))

    # ---- embeddings ----------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, encoder: ImageEncoder, images: torch.Tensor, image_ids: list[str] | None = None):
        """(features [B, N, F] float, indices [B, N] or None): from the token cache when it has every id."""
        cache = self._caches.get("input" if encoder is self.input_encoder else "output")
        if cache is not None and image_ids is not None and cache.has(image_ids):
            feats, idx = cache.lookup(image_ids)
            return feats.to(self.device), None if idx is None else idx.to(self.device)
        feats, idx = encoder.encode(images.float())
        return feats.float(), idx

    def open_token_caches(self, data_dir: str) -> None:
        from ..encoders.cache import TokenCache
        from ..registry import name_of

        for side, encoder in (("input", self.input_encoder), ("output", self.output_encoder)):
            name = name_of("encoders", type(encoder))
            self._caches[side] = TokenCache.open(data_dir, name, self._encoder_paths[side]) if name else None

    def embed_input_images(self, feats: torch.Tensor) -> torch.Tensor:
        if self.input_standardizer is not None:
            if self.training:
                self.input_standardizer.update(feats)
            feats = self.input_standardizer(feats)
        return self.input_projector(self.misalign(feats))

    def embed_output_tokens(self, feats: torch.Tensor, first_slot: int = 0) -> torch.Tensor:
        """Output-token features [B, n, F] (slots first_slot .. first_slot + n - 1) -> embeddings [B, n, D]."""
        if self.output_standardizer is not None:
            if self.training:
                self.output_standardizer.update(feats)
            feats = self.output_standardizer(feats)
        emb = self.output_projector(feats)
        if self.output_slots is not None:
            emb = emb + self.output_slots.weight[first_slot: first_slot + feats.shape[1]].to(emb.dtype)
        return emb

    def embed_batch(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Input embeddings [B, L, D] with image slots filled; also the output targets."""
        ids, in_mask, out_mask = batch["input_ids"], batch["image_in_mask"], batch["image_out_mask"]
        emb = self.text_embeddings(ids)
        targets = {}
        ids = [m["image_id"] for m in batch["meta"]] if "meta" in batch else None
        pick = lambda rows: None if ids is None else [ids[i] for i in rows.nonzero().flatten().tolist()]  # noqa: E731
        rows_in = in_mask.any(1)
        if rows_in.any():
            feats, _ = self.encode_images(self.input_encoder, batch["images"][rows_in], pick(rows_in))
            self._check_slots(in_mask[rows_in], feats.shape[1], "input")
            emb = emb.masked_scatter(in_mask[..., None], self.embed_input_images(feats).to(emb.dtype))
        rows_out = out_mask.any(1)
        if rows_out.any():
            feats, idx = self.encode_images(self.output_encoder, batch["images"][rows_out], pick(rows_out))
            self._check_slots(out_mask[rows_out], feats.shape[1], "output")
            emb = emb.masked_scatter(out_mask[..., None], self.embed_output_tokens(self.add_context_noise(feats)).to(emb.dtype))
            targets = {"features": feats.reshape(-1, feats.shape[-1]), "indices": None if idx is None else idx.reshape(-1)}
        return emb, targets

    def add_context_noise(self, feats: torch.Tensor) -> torch.Tensor:
        """Teacher-forced output features [B, N, F] with noise of a random per-image level (training only)."""
        if not (self.training and self.hparams.context_noise > 0):
            return feats
        level = torch.rand(feats.shape[0], 1, 1, device=feats.device) * self.hparams.context_noise
        return feats + level * feats.std().detach() * torch.randn_like(feats)

    @staticmethod
    def _check_slots(mask: torch.Tensor, n: int, side: str) -> None:
        if (mask.sum(1) != n).any():
            raise ValueError(f"batch has {int(mask.sum(1)[0])} {side} image slots per image but the {side} encoder "
                             f"gives {n} tokens: set data.image_tokens_{'in' if side == 'input' else 'out'}: {n}")

    def setup(self, stage: str) -> None:
        """Warm-starts from `init_weights`; fails early when the data was built with another tokenizer or image-token counts."""
        if stage == "fit" and self.hparams.init_weights:
            self.load_weights(self.hparams.init_weights)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "tokenizer"):
            return
        if dm.tokenizer.tokenizer.to_str() != self.tokenizer.tokenizer.to_str():
            raise ValueError(f"model.tokenizer_path ({self.hparams.tokenizer_path}) differs from the data's tokenizer.json; point it at the data's")
        for side, enc, n in (("in", self.input_encoder, dm.builder.image_tokens_in), ("out", self.output_encoder, dm.builder.image_tokens_out)):
            if enc.num_tokens != n:
                raise ValueError(f"data.image_tokens_{side} is {n} but the {side}put encoder gives {enc.num_tokens} tokens: set data.init_args.image_tokens_{side}: {enc.num_tokens}")
        if self.hparams.use_token_cache and hasattr(dm, "data_dir"):
            self.open_token_caches(dm.data_dir)

    def load_weights(self, path: str) -> None:
        """Copies every weight from another checkpoint of the same architecture and sizes."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"init_weights: no checkpoint at {path}")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        self.on_load_checkpoint(checkpoint)  # the same upgrades of older checkpoints as a resume
        state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("val_losses.")}
        mine = {k: v for k, v in self.state_dict().items() if not k.startswith("val_losses.")}
        missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
        wrong = [k for k in set(mine) & set(state) if mine[k].shape != state[k].shape]
        if missing or extra or wrong:
            raise ValueError(f"init_weights: {path} does not fit this model (missing {missing[:3]}, unexpected "
                             f"{extra[:3]}, other shapes {sorted(wrong)[:3]}): same architecture, encoders and backbone needed")
        self.load_state_dict(state, strict=False)
        rank_zero_info(f"init_weights: started from the weights of {path}")

    # ---- checkpoints -------------------------------------------------------------------------
    def _frozen_pretrained_keys(self) -> set[str]:
        """State-dict keys of the hf: backbone's frozen weights (its embedding and head under their
        `text_embeddings` / `lm_head` names too): what a checkpoint leaves out, see `save_frozen_backbone`."""
        if not str(self.hparams.backbone).startswith("hf:") or self.hparams.get("save_frozen_backbone", False):
            return set()
        frozen = {id(p) for p in self.backbone.parameters() if not p.requires_grad}
        strip = lambda name: name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")  # noqa: E731
        return {strip(n) for n, p in self.named_parameters(remove_duplicate=False) if id(p) in frozen}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Names the architecture class (for `lightning-vlm export`), and leaves out the frozen weights of an
        hf: backbone: under LoRA a checkpoint holds the adapters, projectors and heads, not the whole LM."""
        checkpoint["vlm_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        state = checkpoint.get("state_dict")
        keys = self._frozen_pretrained_keys()
        if state is None or not keys or getattr(self.trainer.strategy if self._trainer else None, "_state_dict_type", "full") == "sharded":
            return
        dropped = sorted(k for k in state if k in keys)
        for k in dropped:
            del state[k]
        checkpoint["frozen_backbone"] = {"backbone": self.hparams.backbone, "dropped": dropped}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Puts the frozen backbone weights a checkpoint left out back in, from this model (built from the
        model folder), so every load sees all keys. Under FSDP the strategy has already loaded the state."""
        state, info = checkpoint.get("state_dict"), checkpoint.get("frozen_backbone")
        if state is None or not info:
            return
        own = self.state_dict()
        lost = [k for k in info["dropped"] if k not in own]
        if lost:
            raise ValueError(f"checkpoint left out frozen weights of {info['backbone']} that this model lacks (e.g. {lost[0]}): "
                             "build the model with the same backbone and backbone_overrides")
        for k in info["dropped"]:
            state.setdefault(k, own[k])

    # ---- training --------------------------------------------------------------------------
    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        if self.training and self.hparams.prompt_dropout > 0:
            is_gen = batch["task"] == TASKS.index("generation")
            drop = is_gen & (torch.rand(is_gen.shape, device=is_gen.device) < self.hparams.prompt_dropout)
            batch = {**batch, "input_ids": self.hide_prompts(batch["input_ids"], drop)}  # targets are assistant tokens: unchanged
        emb, targets = self.embed_batch(batch)
        hidden = self.training_backbone(emb) if self.training else self.backbone(emb)  # right-padded: causal is exact at real tokens
        h_prev = hidden[:, :-1]  # position t predicts token t + 1
        loss_mask = batch["loss_mask"][:, 1:]
        logits = self.lm_head(h_prev[loss_mask])  # [T_loss, V]
        token_ce = F.cross_entropy(logits.float(), batch["input_ids"][:, 1:][loss_mask], reduction="none")
        out = {"text": token_ce.mean() if token_ce.numel() else hidden.sum() * 0}
        task_of_token = batch["task"][:, None].expand_as(loss_mask)[loss_mask]
        for i, task in enumerate(TASKS):
            sel = task_of_token == i
            if sel.any():
                out[f"text/{task}"] = token_ce[sel].mean().detach()
        out["image"] = hidden.sum() * 0
        if targets:
            h_img = h_prev[batch["image_out_mask"][:, 1:]]  # [M, D], the same order as the targets
            out["image"] = self.image_loss(h_img.float(), targets["features"], targets["indices"])
        out["total"] = out["text"] + self.hparams.image_loss_weight * out["image"]
        if self.training:
            out["total"] = out["total"] + self._touch_unused(batch)
        return out

    def training_backbone(self, emb: torch.Tensor) -> torch.Tensor:
        """The backbone of training steps: compiled once (dynamic length) with `compile_backbone`.

        A compiled bound method, not a module attribute, so the state dict keeps its keys; evaluation
        and generation (KV cache, Python-side state) stay eager.
        """
        if not self.hparams.get("compile_backbone"):
            return self.backbone(emb)
        if getattr(self, "_compiled_forward", None) is None:
            self._compiled_forward = torch.compile(self.backbone.forward, dynamic=True)
        return self._compiled_forward(emb)

    def _touch_unused(self, batch: dict) -> torch.Tensor:
        """Zero that still reaches every trainable parameter: DDP expects a gradient for each one on
        every rank, even when this rank's batch has no generation (or no understanding) sample."""
        idle = []
        if not batch["image_out_mask"].any():
            idle += [self.image_head, self.output_projector] + ([self.output_slots] if self.output_slots is not None else [])
        if not batch["image_in_mask"].any():
            idle.append(self.input_projector)
        params = [p for m in idle for p in m.parameters() if p.requires_grad]
        return sum((p.sum() * 0 for p in params), torch.zeros((), device=self.device))


    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.losses(batch)
        if not torch.isfinite(losses["total"]):
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            tasks = sorted({TASKS[int(t)] for t in batch["task"]})
            raise FloatingPointError(f"non-finite loss at step {self.global_step} (batch tasks: {', '.join(tasks)}): {parts}")
        b = len(batch["keys"])
        for name, value in losses.items():
            self.log(f"train/loss/{name}", value, batch_size=b, prog_bar=name == "total")
        self.log("data/skipped_samples", float(batch.get("skipped", 0)), reduce_fx="sum", batch_size=b)
        return losses["total"]

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if self._batch_started is None:
            return
        seconds = time.perf_counter() - self._batch_started
        b = len(batch["keys"])
        self.log("train/samples_per_sec", b / seconds, batch_size=b)
        self.log("train/tokens_per_sec", float(batch["attention_mask"].sum()) / seconds, batch_size=b)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        real = ~batch["is_padding"]
        if not real.any():
            return
        batch = select_rows(batch, real)
        for name, value in self.losses(batch).items():
            self.val_losses[name.replace("/", "__")].update(value.detach().float(), len(batch["keys"]))

    def on_validation_epoch_end(self) -> None:
        """Synced in a fixed order on every rank (a rank may have seen no sample of some task).

        torchmetrics already reduced each loss over all ranks (a sample-weighted mean), so every rank
        logs the same value. Lightning warns under DDP about epoch values logged without `sync_dist`
        (whatever `sync_dist=False` says); `sync_dist=True` with a max over ranks silences it and, over
        equal values, returns them bit for bit (a mean could round them).
        """
        for key, metric in self.val_losses.items():
            value = metric.compute() if metric.update_count or torch.distributed.is_initialized() else torch.tensor(float("nan"))
            if not torch.isnan(value):
                self.log(f"val/loss/{key.replace('__', '/')}", value, prog_bar=key == "total", sync_dist=True, reduce_fx="max")
            metric.reset()

    # ---- evaluation -------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_logged = {"generation": False, "understanding": False}

    def on_validation_batch_end(self, outputs, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Once per validation: a grid of generated images beside their ground truth, and sample answers.

        Eval batches come task by task, so the grid waits for the first batch with generation
        rows and the answers for the first with understanding rows.
        """
        if all(self._val_logged.values()) or self.trainer.sanity_checking or not self.trainer.is_global_zero or not self._tensorboard():
            return
        real = select_rows(batch, ~batch["is_padding"])
        is_gen = [m["task"] == "generation" for m in real["meta"]]
        gen = [] if self._val_logged["generation"] else [i for i, g in enumerate(is_gen) if g][: self.hparams.grid_images]
        und = [] if self._val_logged["understanding"] else [i for i, g in enumerate(is_gen) if not g][: self.hparams.grid_images]
        if not gen and not und:
            return
        self._val_logged["generation"] |= bool(gen)
        self._val_logged["understanding"] |= bool(und)
        evaluator = VLMEvaluator()
        keep = torch.zeros(len(real["meta"]), dtype=torch.bool)
        keep[gen + und] = True
        evaluator.update(self, select_rows(real, keep.to(real["is_padding"].device)), self.hparams.max_new_tokens,
                         torch.Generator().manual_seed(0), keep_examples=len(und) * 4)
        self.log_examples(evaluator, "val")

    def on_test_epoch_start(self) -> None:
        hp = self.hparams
        knobs = {k: hp[k] for k in ("guidance_scale", "image_temperature", "text_temperature", "max_new_tokens", "sampling_steps", "noise_temperature") if k in hp}
        rank_zero_info("generation settings: " + ", ".join(f"{k}={v}" for k, v in knobs.items()))
        if hp.guidance_scale != 1 and not hp.prompt_dropout:
            rank_zero_warn(f"guidance_scale={hp.guidance_scale} on a model trained with prompt_dropout 0: its unconditional branch never saw a hidden request")
        reader = None
        if self.hparams.reader:
            from ..eval.reader import AttributeReader

            reader = AttributeReader.load(self.hparams.reader, map_location=self.device)
        else:
            rank_zero_warn("no `model.reader` checkpoint: generated images get no reader scores or FD/KID-reader")
        self.evaluator = VLMEvaluator(reader).to(self.device)
        self._generator = torch.Generator().manual_seed(0)
        self._test_grid_logged = False

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluator.update(self, batch, self.hparams.max_new_tokens, self._generator, keep_examples=16)
        if not self._test_grid_logged and self.evaluator.last_images is not None and self._tensorboard():
            self.log_examples(self.evaluator, "test", answers=False)  # the first batch with generation rows
            self._test_grid_logged = True

    def on_test_epoch_end(self) -> None:
        if self._tensorboard() and self.evaluator.examples:
            self.log_examples(self.evaluator, "test", images=False)  # answers, once, at the end
        metrics = {f"test/{k}": v for k, v in self.evaluator.compute().items()}
        for name, value in metrics.items():
            self.log(name, value, rank_zero_only=True)
        self.test_metrics = metrics
        if self.trainer.is_global_zero:
            path = self._metrics_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
            print(format_metrics(metrics) + f"\nmetrics written to {path}")

    def predict_step(self, batch: list[dict], batch_idx: int) -> list[dict]:
        from .predict import predict_requests

        return predict_requests(self, batch, self.hparams.max_new_tokens, torch.Generator().manual_seed(batch_idx))

    def _metrics_path(self) -> Path:
        ckpt = getattr(self.trainer, "ckpt_path", None)
        if ckpt:
            return Path(ckpt).with_name(Path(ckpt).stem + ".test_metrics.json")
        return Path(self.trainer.log_dir or self.trainer.default_root_dir) / "test_metrics.json"

    def _tensorboard(self):
        from lightning.pytorch.loggers import TensorBoardLogger

        return next((lg.experiment for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)

    def log_examples(self, evaluator: "VLMEvaluator", stage: str, images: bool = True, answers: bool = True) -> None:
        """Generated images beside ground-truth renders (one row each) and sample answers, to TensorBoard."""
        tb = self._tensorboard()
        if tb is None or not self.trainer.is_global_zero:
            return
        if images and evaluator.last_images is not None:
            generated, truth, prompts = evaluator.last_images
            pairs = torch.stack([generated.float(), truth.float()], 1).flatten(0, 1)  # [2B, 3, H, W]
            tb.add_image(f"{stage}/generated_vs_truth", torchvision.utils.make_grid(pairs, nrow=2, padding=2, pad_value=1.0), self.global_step)
            tb.add_text(f"{stage}/generation_prompts", "\n\n".join(f"{i}. {p}" for i, p in enumerate(prompts)), self.global_step)
        if answers and evaluator.examples:
            lines = [f"{e['task']}/{e['type'] or 'caption'} ({e['image_id']}): {e['answer']}" for e in evaluator.examples]
            tb.add_text(f"{stage}/answers", "\n\n".join(lines), self.global_step)

    def on_fit_start(self) -> None:
        tb = self._tensorboard()
        if tb is not None and self.trainer.is_global_zero:
            hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in self.hparams.items()}
            tb.add_text("hparams", "\n".join(f"{k}: {v}" for k, v in sorted(hp.items())), 0)

    # ---- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        projector_params = {id(p) for m in (self.input_projector, self.output_projector) for p in m.parameters()}
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad and not n.startswith(("input_encoder", "output_encoder"))]
        groups = [
            {"params": [p for _, p in trainable if id(p) not in projector_params], "lr": hp.lr},
            {"params": [p for _, p in trainable if id(p) in projector_params], "lr": hp.projector_lr or hp.lr},
        ]
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, weight_decay=hp.weight_decay, betas=(0.9, 0.95), foreach=True)  # multi-tensor ops (fused=True would forbid Lightning's gradient clipping)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, int(hp.warmup_ratio * total))
        schedule = torch.optim.lr_scheduler.SequentialLR(
            optimizer,
            [torch.optim.lr_scheduler.LinearLR(optimizer, 1e-3, 1.0, warmup),
             torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, total - warmup), eta_min=0.1 * hp.lr)],
            milestones=[warmup],
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
