"""Semantic image encoder: a small ViT trained SigLIP-style against captions, plus a pixel decoder.

The study's "SigLIP" side at toy scale. Phase 1 (steps < `decoder_start`) trains the
ViT and a small text transformer with the sigmoid image-caption loss, so the patch
features carry what captions talk about (time, weather, battery, corners) rather than
raw pixels. A small caption decoder that cross-attends to the patch features adds a
next-token captioning loss beside the contrastive one (CoCa's recipe): contrastive
learning from scratch on one small batch gets a single bit per pair and sits near
chance for hundreds of steps, while captioning asks the patches for every attribute
a caption states at every token. Phase 2 (the remaining steps of the same fit) freezes both towers and
trains a conv pixel decoder on the ViT's patch features, so semantic tokens a VLM
generates can be turned into images. One fit, one checkpoint.

`recon_weight` > 0 also trains the pixel decoder during phase 1, with its loss flowing
into the ViT (as TULIP adds reconstruction to SigLIP to keep fine detail). Without it
the patch features lost the watch: after contrastive + captioning training, decoded weather
icons scored at chance by the reader, while the features of an untrained ViT decode well
(benchmarks/RESULTS.md, "Encoders (stage 0)"). Reconstruction keeps the tokens decodable
while the contrastive and captioning losses shape them.

Captions come from the caption samples of a batch (the assistant turn), tokenised with
the DataModule's tokenizer; train it with `task_weights: {caption: 1}`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import ImageEncoder
from .blocks import ConvDecoder, grid_to_tokens, tokens_to_grid
from .training import ReconstructionMetrics, log_grid, param_groups, reconstruction_loss, warmup_cosine
from .transformer import AttentionPool, CaptionDecoder, Transformer


def sigmoid_contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """SigLIP loss of unit-norm embeddings [B, E]: every (image, caption) pair is one binary decision."""
    logits = img @ txt.t() * scale.exp() + bias  # [B, B]
    labels = 2 * torch.eye(len(img), device=img.device) - 1  # +1 on matched pairs, -1 elsewhere
    return -F.logsigmoid(labels * logits).sum() / len(img)


def make_conv_stem(patch_size: int, width: int) -> nn.Sequential:
    """log2(patch_size) stages of (stride-2 3x3 conv, 3x3 conv), each with GroupNorm + GELU, widening to
    `width`, then a 1x1: [B, 3, H, W] -> [B, width, H/p, W/p]. A small CNN in front of the ViT
    (the "hybrid" ViT); the norms keep its output at a usable scale from the first step."""
    levels = patch_size.bit_length() - 1
    if 2**levels != patch_size:
        raise ValueError(f"a conv stem needs a power-of-two patch_size, got {patch_size}")
    layers: list[nn.Module] = []
    c = 3
    for level in range(levels):
        c_out = width // 2 ** (levels - 1 - level)
        for stride, c_in in ((2, c), (1, c_out)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(min(8, c_out), c_out), nn.GELU()]
        c = c_out
    return nn.Sequential(*layers, nn.Conv2d(c, width, 1))


def embedding_head(width: int, embed_dim: int) -> nn.Sequential:
    """Linear map to the shared space, then BatchNorm without affine parameters.

    From scratch every image (and every caption) embeds to nearly the same direction
    (shared biases dominate content), and the coupled contrastive problem sits on its
    chance plateau for thousands of steps. Centring and scaling each dimension over the
    batch makes the embeddings differ from the first step, and the towers pair images with
    captions far sooner (benchmarks/RESULTS.md, "Encoders (stage 0)").
    """
    return nn.Sequential(nn.Linear(width, embed_dim), nn.BatchNorm1d(embed_dim, affine=False))


class SemanticEncoder(ImageEncoder):
    """Continuous tokenizer: (image_size / patch_size)**2 ViT patch features of `width` channels.

    Args:
        image_size, patch_size: the token grid is image_size / patch_size per side.
        width, depth, heads: the ViT.
        conv_stem: embed each patch with a few stride-2 convolutions instead of one linear map (the
            usual help for a ViT trained from scratch on little data: "early convolutions"; cheap).
        vocab_size, max_text_len, text_width, text_depth, text_heads: the caption transformer
            (vocab_size must cover the dataset tokenizer's).
        embed_dim: shared image-text embedding size of the contrastive loss.
        init_logit_bias: starting bias of the sigmoid logits. -log(batch size) is the chance level (one
            matching caption per image in a batch); SigLIP's -10 is that value for its 32k batches.
        caption_weight, caption_depth: weight of the captioning loss (0 turns it off) and depth of the
            caption decoder (text_width wide, text_heads heads), used in phase 1 only.
        recon_weight: weight of the pixel decoder's loss in phase 1, trained through the ViT (0: the
            decoder trains in phase 2 only, on frozen features).
        decoder_channels, decoder_blocks, decoder_attention: the pixel decoder (see blocks.ConvDecoder).
        decoder_start: optimiser step at which phase 2 (decoder only) starts; must be below the run's steps.
        loss: the decoder's pixel loss, "l2" or "l1" (see training.reconstruction_loss).
        lr, decoder_lr, weight_decay, warmup_steps: AdamW; each phase warms up and decays on its own.
        grid_images: images in the reconstruction grid logged on validation.
    """

    def __init__(
        self,
        image_size: int = 64,
        patch_size: int = 8,
        width: int = 192,
        depth: int = 6,
        heads: int = 3,
        conv_stem: bool = True,
        vocab_size: int = 1024,
        max_text_len: int = 96,
        text_width: int = 128,
        text_depth: int = 3,
        text_heads: int = 4,
        embed_dim: int = 128,
        init_logit_bias: float = -4.0,
        caption_weight: float = 1.0,
        caption_depth: int = 2,
        recon_weight: float = 0.0,
        decoder_channels: Sequence[int] = (64, 128, 256),
        decoder_blocks: int = 2,
        decoder_attention: bool = True,
        decoder_start: int = 1000,
        loss: str = "l2",
        lr: float = 1e-3,
        decoder_lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 100,
        grid_images: int = 16,
    ):
        super().__init__()
        self.save_hyperparameters()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        self.side = image_size // patch_size
        if self.side != image_size // 2 ** len(decoder_channels):
            raise ValueError(f"the decoder upsamples by 2**len(decoder_channels) = {2 ** len(decoder_channels)}, but patches are {patch_size} px")
        # image tower
        self.patch_embed = make_conv_stem(patch_size, width) if conv_stem else nn.Conv2d(3, width, patch_size, stride=patch_size)
        # Patch tokens enter the residual stream at unit scale. A default-initialised conv stem
        # gives a far smaller scale, and six blocks of (near-uniform) attention then added the same
        # vector to every token: the final tokens of one image were nearly identical (RESULTS.md,
        # "Encoders (stage 0)"), so the pixel decoder could not place anything and drew an average watch.
        self.patch_norm = nn.LayerNorm(width)
        self.pos_embed = nn.Parameter(torch.randn(1, self.side * self.side, width) * 0.02)
        self.vit = Transformer(width, depth, heads)
        self.image_pool = AttentionPool(width, heads)
        self.image_proj = embedding_head(width, embed_dim)
        # text tower
        self.token_embed = nn.Embedding(vocab_size, text_width)
        self.text_pos = nn.Parameter(torch.randn(1, max_text_len, text_width) * 0.02)
        self.text = Transformer(text_width, text_depth, text_heads)
        self.text_pool = AttentionPool(text_width, text_heads)
        self.text_proj = embedding_head(text_width, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.302585))  # log 10, as SigLIP
        self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))
        # caption decoder (phase 1 auxiliary)
        self.caption_decoder = CaptionDecoder(vocab_size, max_text_len + 1, text_width, caption_depth, text_heads, width)
        # pixel decoder (phase 2)
        self.decoder = ConvDecoder(width, decoder_channels, decoder_blocks, decoder_attention)
        self.metrics = ReconstructionMetrics()
        self.tokenizer = None  # set from the DataModule in setup(); needed for training only

    # ---- contract ----------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return self.side * self.side

    @property
    def dim(self) -> int:
        return self.hparams.width

    @property
    def image_size(self) -> int:
        return self.hparams.image_size

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        """images [B, 3, H, W] in [0, 1] -> (patch features [B, N, width], None)."""
        self.check_images(images)
        x = self.patch_norm(grid_to_tokens(self.patch_embed(images * 2 - 1))) + self.pos_embed  # [B, N, width]
        return self.vit(x), None

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """features [B, N, width] -> images [B, 3, H, W] in [0, 1]."""
        if not tokens.is_floating_point():
            raise TypeError("the semantic encoder is continuous: decode takes features [B, N, D], not indices")
        return ((self.pixels(tokens) + 1) / 2).clamp(0, 1)

    def pixels(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, N, width] -> decoder output in [-1, 1] space (unclamped)."""
        return self.decoder(tokens_to_grid(features, self.side))

    # ---- contrastive towers ------------------------------------------------------------
    def image_embedding(self, features: torch.Tensor) -> torch.Tensor:
        """patch features [B, N, width] -> unit-norm [B, embed_dim]."""
        return F.normalize(self.image_proj(self.image_pool(features)), dim=-1)

    def text_embedding(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, L] -> unit-norm [B, embed_dim]."""
        h = self.text(self.token_embed(ids) + self.text_pos[:, : ids.shape[1]], mask)  # [B, L, text_width]
        return F.normalize(self.text_proj(self.text_pool(h, mask)), dim=-1)

    def caption_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, ids, mask) of the batch's real caption samples; captions are cut to max_text_len tokens."""
        if self.tokenizer is None:
            raise RuntimeError("the semantic encoder trains with a DataModule that has a `tokenizer` (VLMDataModule)")
        keep = [i for i, m in enumerate(batch["meta"]) if m["task"] == "caption" and not bool(batch["is_padding"][i])]
        if not keep:
            raise ValueError("the semantic encoder trains on caption samples: set the data's task_weights to {caption: 1}")
        texts = [" ".join(t["text"] for t in batch["meta"][i]["conversations"] if t["role"] == "assistant") for i in keep]
        seqs = [self.tokenizer.encode(t)[: self.hparams.max_text_len] for t in texts]
        ids = torch.full((len(seqs), max(map(len, seqs))), self.tokenizer.id("<pad>"), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
        mask = torch.arange(ids.shape[1])[None, :] < torch.tensor([len(s) for s in seqs])[:, None]  # [B, L]
        return batch["images"][keep], ids.to(self.device), mask.to(self.device)

    def contrastive(self, batch: dict) -> dict[str, torch.Tensor]:
        """Phase-1 losses of the batch's captions: sigmoid contrastive, captioning, reconstruction, their
        weighted sum ("loss"), and the in-batch image->caption top-1 accuracy."""
        images, ids, mask = self.caption_batch(batch)
        features = self.encode(images)[0]
        img = self.image_embedding(features).float()
        txt = self.text_embedding(ids, mask).float()
        out = {"contrastive": sigmoid_contrastive_loss(img, txt, self.logit_scale, self.logit_bias)}
        out["i2t_acc"] = ((img @ txt.t()).argmax(dim=1) == torch.arange(len(img), device=img.device)).float().mean()
        out["loss"] = out["contrastive"]
        if self.hparams.recon_weight > 0:
            out["reconstruction"] = reconstruction_loss(self.pixels(features).float(), images.float() * 2 - 1, self.hparams.loss)
            out["loss"] = out["loss"] + self.hparams.recon_weight * out["reconstruction"]
        if self.hparams.caption_weight > 0:
            bos = torch.full_like(ids[:, :1], self.tokenizer.id("<bos>"))
            logits = self.caption_decoder(torch.cat([bos, ids[:, :-1]], 1), features)  # [B, L, vocab]
            out["caption"] = F.cross_entropy(logits.float()[mask], ids[mask])
            out["loss"] = out["loss"] + self.hparams.caption_weight * out["caption"]
        return out

    # ---- training ------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is not None and tokenizer.vocab_size > self.hparams.vocab_size:
            raise ValueError(f"the data's tokenizer has {tokenizer.vocab_size} tokens but the text tower {self.hparams.vocab_size}; raise model vocab_size")
        self.tokenizer = tokenizer

    @property
    def decoder_phase(self) -> bool:
        return self.global_step >= self.hparams.decoder_start

    def decoder_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction loss of the decoder on frozen ViT features; returns (loss, output in [-1, 1])."""
        with torch.no_grad():
            features = self.encode(images)[0]
        recon = self.pixels(features)
        return reconstruction_loss(recon, images * 2 - 1, self.hparams.loss), recon

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        n = batch["images"].shape[0]
        if self.decoder_phase:
            rec, _ = self.decoder_loss(batch["images"])
            self.log("train/decoder_loss", rec, batch_size=n, prog_bar=True)
            return rec
        out = self.contrastive(batch)
        self.log_dict({f"train/{k}": v for k, v in out.items() if k != "loss"}, batch_size=n, prog_bar=True)
        self.log_dict({"train/logit_scale": self.logit_scale.exp(), "train/logit_bias": self.logit_bias}, batch_size=n)
        return out["loss"]

    def _evaluate(self, batch: dict, batch_idx: int, stage: str) -> None:
        images = batch["images"]
        n = images.shape[0]
        out = self.contrastive(batch)
        rec, recon = self.decoder_loss(images)
        self.log_dict({**{f"{stage}/{k}": v for k, v in out.items() if k != "loss"}, f"{stage}/decoder_loss": rec}, batch_size=n)
        recon01 = (recon.float() + 1) / 2
        self.metrics.update(self, stage, recon01, images)
        if stage == "val" and batch_idx == 0:
            k = self.hparams.grid_images
            log_grid(self, "val/reconstructions", images[:k], recon01[:k])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def configure_optimizers(self):
        h = self.hparams
        total = int(self.trainer.estimated_stepping_batches)
        if not 0 <= h.decoder_start < total:
            raise ValueError(f"decoder_start ({h.decoder_start}) must lie in [0, {total}), the steps of this run")
        towers = [self.patch_embed, self.patch_norm, self.vit, self.image_pool, self.image_proj, self.token_embed, self.text, self.text_pool, self.text_proj, self.caption_decoder]
        tower_groups = param_groups(towers, h.weight_decay)
        tower_groups[1]["params"] += [self.pos_embed, self.text_pos, self.logit_scale, self.logit_bias]
        decoder_groups = [{**g, "lr": h.decoder_lr} for g in param_groups([self.decoder], h.weight_decay)]
        opt = torch.optim.AdamW(tower_groups + decoder_groups, lr=h.lr, betas=(0.9, 0.98))
        phase1 = warmup_cosine(h.decoder_start, min(h.warmup_steps, h.decoder_start))
        phase2 = warmup_cosine(total - h.decoder_start, h.warmup_steps, start=h.decoder_start)
        if h.recon_weight > 0:  # the decoder trains through both phases
            phase2 = warmup_cosine(total, min(h.warmup_steps, total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, [phase1, phase1, phase2, phase2])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
