"""VLM: one causal backbone that reads images (VQA, captions) and writes them.

    text ids ------------------------------------------> text embeddings ---------┐
    image in  -> input encoder (frozen) -> [misalign] -> input projector ----------┼-> backbone -> LM head (text CE)
    image out -> output encoder (frozen) -> output projector* + slot embedding ----┘          └-> image head

*When the input and output encoders are one and the same, generated image tokens are fed
back through the input projector: one shared space, as in the study.

Each image-output slot is predicted from the hidden state one step before it; in training
the slot itself holds the target token's features (teacher forcing). The image head is
passed in (`lightning_vlm.heads`): it owns the image loss and how a token is sampled.
loss = text CE on assistant tokens + image_loss_weight x image loss. The text CE is a mean over
tokens; `text_task_weights` ({task: w}) counts each token of a task w times in it (default 1): a
VQA row's answer is ~10 tokens against a caption's ~34, so per row a caption outweighs a VQA answer.

Output image tokens get a learned embedding of their slot index (0..N-1): with rotary
positions alone, the state that predicts a token knows only relative offsets and must find
"which grid cell comes next" by attending back to <boi>.

Classifier-free guidance (Ho & Salimans, 2022): with `prompt_dropout` p, a training
generation sample has its request text replaced by <unk> with probability p, so the one
model also learns the unconditional image; `generation.image_tokens` then mixes the two.

`context_noise` (training only) adds Gaussian noise of a random per-image level to the
teacher-forced output tokens the backbone reads: it can no longer copy a corner icon from
the clean token before it and has to take it from the prompt, and it learns to read
imperfect tokens, like the ones it samples itself.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..data.collate import SequenceBuilder
from ..data.tasks import TASKS
from . import generation
from .length_groups import length_groups, row_lengths, take_rows
from .positions import GridPositionEmbedding
from .projectors import MLPProjector
from .standardize import RunningStandardizer
from .text_head import lm_head


class VLM(nn.Module):
    """The unified model; see the module docstring.

    Args:
        tokenizer: the data's text tokenizer (`data.tokenizer.TextTokenizer` or `data.hf_tokenizer.HFTokenizer`).
        input_encoder / output_encoder: frozen image encoders (`encoders.ImageEncoder`); output defaults to
            the input encoder: one shared space.
        backbone: a causal model over embeddings (`models.Backbone` or `models.HFBackbone`).
        head: the image head (`heads.ImageHead`), built for this backbone's width and the output encoder.
        text_layers: (embeddings, LM head) to use, e.g. a pretrained LM's own; default: fresh, tied.
        misalign: a map applied to input features before their projector (the alignment study).
        standardize_features: standardise each encoder's features per dimension (running statistics) before
            its projector; for encoders whose tokens share a large mean direction.
        output_slot_embedding: add a learned embedding of the slot index to every output image token.
        input_position_embedding: add a learned 2-D (row + column) embedding to every input image token
            (`models.positions`): conv tokens carry no absolute position.
        prompt_dropout / context_noise / image_loss_weight: see the module docstring.
        chat_template: render conversations with the tokenizer's own chat template (`data.chat_format`);
            must match the data module's `chat_template` so training batches and prompts agree.
        split_by_length: compute each batch as a short and a long group of rows, each with less padding
            (`models.length_groups`): the same losses, fewer padded tokens in mixed batches.
        text_task_weights: {task: weight} of each task's tokens in the text CE (see the module docstring).
    """

    def __init__(self, tokenizer, input_encoder: nn.Module, backbone: nn.Module, head: nn.Module,
                 output_encoder: nn.Module | None = None, text_layers: tuple[nn.Module, nn.Module] | None = None,
                 misalign: nn.Module | None = None, standardize_features: bool = False, output_slot_embedding: bool = True,
                 input_position_embedding: bool = False, prompt_dropout: float = 0.0, context_noise: float = 0.0, image_loss_weight: float = 1.0,
                 chat_template: bool = False, split_by_length: bool = False, text_task_weights: dict[str, float] | None = None):
        super().__init__()
        unknown = set(text_task_weights or {}) - set(TASKS)
        if unknown:
            raise ValueError(f"text_task_weights: unknown task(s) {sorted(unknown)}; known: {', '.join(TASKS)}")
        if any(w < 0 for w in (text_task_weights or {}).values()):
            raise ValueError(f"text_task_weights must be >= 0, got {text_task_weights}")
        if not 0 <= prompt_dropout < 1:
            raise ValueError(f"prompt_dropout must be in [0, 1), got {prompt_dropout}")
        if chat_template and prompt_dropout:
            raise ValueError("prompt_dropout hides the request by the project's turn markers, which a chat template does not use: "
                             "set prompt_dropout: 0 or chat_template: false")
        if context_noise < 0:
            raise ValueError(f"context_noise must be >= 0, got {context_noise}")
        self.tokenizer = tokenizer
        self.prompt_dropout, self.context_noise, self.image_loss_weight = prompt_dropout, context_noise, image_loss_weight
        self.split_by_length = split_by_length
        weights = text_task_weights or {}
        self.register_buffer("text_task_weights", torch.tensor([float(weights.get(t, 1.0)) for t in TASKS]), persistent=False)
        self.shared_space = output_encoder is None or output_encoder is input_encoder
        self.input_encoder = input_encoder
        self.output_encoder = input_encoder if self.shared_space else output_encoder
        self.builder = SequenceBuilder(tokenizer, self.input_encoder.num_tokens, self.output_encoder.num_tokens, chat_template)
        self.backbone = backbone
        dim = backbone.dim
        if text_layers is None:
            embeddings = nn.Embedding(tokenizer.vocab_size, dim)
            nn.init.normal_(embeddings.weight, std=0.02)
            text_layers = (embeddings, lm_head(embeddings, tied=True))
        self.text_embeddings, self.lm_head = text_layers
        self.misalign = misalign if misalign is not None else nn.Identity()
        in_dim, out_dim = self.input_encoder.dim, self.output_encoder.dim
        self.input_standardizer = RunningStandardizer(in_dim) if standardize_features else None
        self.output_standardizer = (self.input_standardizer if self.shared_space else RunningStandardizer(out_dim)) if standardize_features else None
        self.input_projector = MLPProjector(in_dim, dim)
        self.output_projector = self.input_projector if self.shared_space else MLPProjector(out_dim, dim)
        self.output_slots = nn.Embedding(self.output_encoder.num_tokens, dim) if output_slot_embedding else None
        if self.output_slots is not None:
            nn.init.normal_(self.output_slots.weight, std=0.02)
        self.input_positions = GridPositionEmbedding(self.input_encoder.num_tokens, dim) if input_position_embedding else None
        self.image_head = head
        self.token_caches: dict = {}  # side ("input" / "output") -> encoders.cache.TokenCache, see `encode_images`
        self._train_backbone = None

    @property
    def device(self) -> torch.device:
        return next(self.input_projector.parameters()).device

    # ---- classifier-free guidance ----------------------------------------------------------
    def prompt_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] bool: the text of each sequence's first user turn, the part hidden for the unconditional image."""
        b = self.builder
        if b.chat is not None:
            raise ValueError("classifier-free guidance hides the request by the project's turn markers, which a chat template "
                             "does not use: set guidance_scale: 1 or train with chat_template: false")
        in_first_turn = ((ids == b.user).cumsum(1) == 1) & ((ids == b.eot).cumsum(1) == 0)
        return in_first_turn & ~torch.isin(ids, torch.tensor([b.user, b.boi, b.image, b.eoi], device=ids.device))

    def hide_prompts(self, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """ids with the first-turn text of `rows` ([B] bool) replaced by <unk>."""
        return ids.masked_fill(self.prompt_mask(ids) & rows[:, None], self.tokenizer.id("<unk>"))

    # ---- embeddings ------------------------------------------------------------------------
    def cached_splits(self) -> set[str]:
        """Data splits whose every image both encoders read from their token caches (none without caches)."""
        caches = [self.token_caches.get(side) for side in ("input", "output")]
        if any(cache is None for cache in caches):
            return set()
        return caches[0].splits & caches[1].splits

    @torch.no_grad()
    def encode_images(self, side: str, images: torch.Tensor | None, image_ids: list[str] | None = None):
        """(features [B, N, F] float, indices [B, N] or None) of the `side` ("input"/"output") encoder;
        from its token cache when the cache holds every id. `images` is None when the loader left the
        PNGs undecoded because the caches hold the split (`VLMDataModule.images_cached`)."""
        cache = self.token_caches.get(side)
        encoder = self.input_encoder if side == "input" else self.output_encoder
        if cache is not None and image_ids is not None and cache.has(image_ids):
            feats, idx = cache.lookup(image_ids)
            feats, idx = encoder.from_cache(feats, idx)  # e.g. grouped tokens over the cached encoder's
            return feats.to(self.device), None if idx is None else idx.to(self.device)
        if images is None:
            raise ValueError(f"the {side} token cache lacks images of this batch and the loader did not decode them; "
                             "rebuild the cache with `lightning-vlm encode`, or set data.init_args.decode_cached_images: true")
        feats, idx = encoder.encode(images.float())
        return feats.float(), idx

    def embed_input_images(self, feats: torch.Tensor) -> torch.Tensor:
        if self.input_standardizer is not None:
            if self.training:
                self.input_standardizer.update(feats)
            feats = self.input_standardizer(feats)
        emb = self.input_projector(self.misalign(feats))
        if self.input_positions is not None:
            emb = emb + self.input_positions().to(emb.dtype)
        return emb

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
        """Input embeddings [B, L, D] with the image slots filled, and the output-image targets."""
        ids, in_mask, out_mask = batch["input_ids"], batch["image_in_mask"], batch["image_out_mask"]
        emb = self.text_embeddings(ids)
        image_ids = [m["image_id"] for m in batch["meta"]] if "meta" in batch else None
        pick = lambda rows: None if image_ids is None else [image_ids[i] for i in rows.nonzero().flatten().tolist()]  # noqa: E731
        images = batch["images"]
        pixels = lambda rows: None if images is None else images[rows]  # noqa: E731
        targets = {}
        rows = in_mask.any(1)
        if rows.any():
            feats, _ = self.encode_images("input", pixels(rows), pick(rows))
            _check_slots(in_mask[rows], feats.shape[1], "input")
            emb = emb.masked_scatter(in_mask[..., None], self.embed_input_images(feats).to(emb.dtype))
        rows = out_mask.any(1)
        if rows.any():
            feats, idx = self.encode_images("output", pixels(rows), pick(rows))
            _check_slots(out_mask[rows], feats.shape[1], "output")
            emb = emb.masked_scatter(out_mask[..., None], self.embed_output_tokens(self.add_context_noise(feats)).to(emb.dtype))
            targets = {"features": feats.reshape(-1, feats.shape[-1]), "indices": None if idx is None else idx.reshape(-1)}
        return emb, targets

    def add_context_noise(self, feats: torch.Tensor) -> torch.Tensor:
        """Teacher-forced output features [B, N, F] with noise of a random per-image level (training only)."""
        if not (self.training and self.context_noise > 0):
            return feats
        level = torch.rand(feats.shape[0], 1, 1, device=feats.device) * self.context_noise
        return feats + level * feats.std().detach() * torch.randn_like(feats)

    # ---- training ----------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Losses of a collated batch: text, text/<task>, image and total (text + image_loss_weight x image).

        With `split_by_length` the batch runs as a short and a long group of rows (`models.length_groups`),
        each trimmed to its own longest row; every loss is still the mean over all the batch's tokens."""
        if self.training and self.prompt_dropout > 0:
            is_gen = batch["task"] == TASKS.index("generation")
            drop = is_gen & (torch.rand(is_gen.shape, device=is_gen.device) < self.prompt_dropout)
            batch = {**batch, "input_ids": self.hide_prompts(batch["input_ids"], drop)}  # targets are assistant tokens: unchanged
        groups = length_groups(row_lengths(batch)) if self.split_by_length else []
        parts = [self._token_losses(take_rows(batch, rows)) for rows in groups] if len(groups) > 1 else [self._token_losses(batch)]
        token_ce = torch.cat([p["token_ce"] for p in parts])
        task_of_token = torch.cat([p["task_of_token"] for p in parts])
        zero = sum(p["zero"] for p in parts)  # ties every group's graph (DDP); 0 + x is exact
        out = {"text": self._weighted_text_loss(token_ce, task_of_token) if token_ce.numel() else zero}
        for i, task in enumerate(TASKS):
            sel = task_of_token == i
            if sel.any():
                out[f"text/{task}"] = token_ce[sel].mean().detach()
        n_image = sum(p["n_image"] for p in parts)
        if len(parts) == 1:
            out["image"] = parts[0]["image"] if n_image else zero
        else:  # a head's loss is a mean over its tokens: weighting each group's by its count gives the batch mean
            out["image"] = sum(p["image"] * p["n_image"] for p in parts) / n_image if n_image else zero
        out["total"] = out["text"] + self.image_loss_weight * out["image"]
        return out

    def _weighted_text_loss(self, token_ce: torch.Tensor, task_of_token: torch.Tensor) -> torch.Tensor:
        """The mean text CE with each token counted its task's weight times (all weights 1: the plain mean)."""
        w = self.text_task_weights[task_of_token]
        return (token_ce * w).sum() / w.sum().clamp_min(1e-12)

    def _token_losses(self, batch: dict) -> dict:
        """Per-token text CE (with each token's task), the image head's mean loss and its token count, and
        a zero tied to the backbone's output."""
        emb, targets = self.embed_batch(batch)
        backbone = self._train_backbone if self.training and self._train_backbone is not None else self.backbone
        hidden = backbone(emb)  # right-padded: causal attention is exact at the real tokens
        h_prev = hidden[:, :-1]  # position t predicts token t + 1
        loss_mask = batch["loss_mask"][:, 1:]
        logits = self.lm_head(h_prev[loss_mask])  # [T_loss, V]
        token_ce = F.cross_entropy(logits.float(), batch["input_ids"][:, 1:][loss_mask], reduction="none")
        out = {"token_ce": token_ce, "task_of_token": batch["task"][:, None].expand_as(loss_mask)[loss_mask],
               "zero": hidden.sum() * 0, "image": 0.0, "n_image": 0}
        if targets:
            h_img = h_prev[batch["image_out_mask"][:, 1:]]  # [M, D], in the targets' order
            out["image"] = self.image_head.loss(h_img.float(), targets["features"], targets["indices"])
            out["n_image"] = h_img.shape[0]
        return out

    def compile_backbone(self) -> None:
        """Training steps run the backbone compiled by torch.compile (dynamic length); evaluation and
        generation (KV cache, Python-side state) stay eager. A compiled bound method, not a module
        attribute, so the state dict keeps its keys."""
        if not torch.cuda.is_available():  # a CUDA build of torch on a CPU machine logs "No CUDA runtime is found"
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # as inductor builds: nothing to act on
        self._train_backbone = torch.compile(self.backbone.forward, dynamic=True)

    # ---- generation --------------------------------------------------------------------------
    def sample_image_token(self, h: torch.Tensor, generator: torch.Generator | None = None,
                           h_uncond: torch.Tensor | None = None, guidance_scale: float = 1.0):
        """Next image token from h [B, dim] (with guidance against h_uncond when given): (features, indices or None)."""
        if h_uncond is None:
            return self.image_head.sample(h, generator)
        return self.image_head.guided_sample(h, h_uncond, guidance_scale, generator)

    def decode_images(self, feats: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] from generated tokens."""
        images = self.output_encoder.decode(indices if self.image_head.discrete and indices is not None else feats)
        return images.float().clamp(0, 1)

    def generate_text(self, prompts: list[dict], images: torch.Tensor | None = None, **options) -> list[list[int]]:
        """Token ids answering each prompt (`generation.prompt_for`); options: see `generation.generate_text`."""
        return generation.generate_text(self, prompts, images, **options)

    def generate_images(self, prompts: list[dict], **options) -> tuple[torch.Tensor, list[str]]:
        """Images [B, 3, H, W] in [0, 1] and the text written before each; see `generation.generate_images`."""
        return generation.generate_images(self, prompts, **options)


def _check_slots(mask: torch.Tensor, n: int, side: str) -> None:
    if (mask.sum(1) != n).any():
        raise ValueError(f"batch has {int(mask.sum(1)[0])} {side} image slots per image but the {side} encoder "
                         f"gives {n} tokens: set data.image_tokens_{'in' if side == 'input' else 'out'}: {n}")
