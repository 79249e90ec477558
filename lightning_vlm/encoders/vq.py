"""VQ-VAE image tokenizer: discrete codes a VLM can read as embeddings or write as class ids.

In the spirit of LlamaGen's VQ-16: the code lookup happens in a small space
(`codebook_dim`, default 8) on l2-normalised vectors (cosine similarity), which keeps
a large codebook well used; codes are updated by EMA with dead-code restarts
(vector-quantize-pytorch). `quantizer: fsq` swaps in finite scalar quantisation
(no codebook to collapse; `fsq_levels` fix its size).

Token features are the quantised code vectors themselves ([B, N, codebook_dim], unit
norm for vq, values on the FSQ grid for fsq), so `decode` takes either indices or
features; features are decoded as given (no snapping to the nearest code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from vector_quantize_pytorch import FSQ, VectorQuantize

from .autoencoder import ConvAutoencoder

QUANTIZERS = ("vq", "fsq")


class VQEncoder(ConvAutoencoder):
    """Discrete tokenizer: N = (image_size / 2**len(channels))**2 codes per image.

    Args (besides ConvAutoencoder's):
        quantizer: "vq" (cosine-sim codebook with EMA updates) or "fsq".
        codebook_size, codebook_dim: vq codebook entries and the size of their (unit-norm) vectors.
        commitment_weight: weight of the encoder's commitment loss (vq).
        ema_decay: codebook EMA decay (vq).
        dead_code_threshold: codes whose EMA usage per batch falls below this are re-seeded from the batch (vq).
        kmeans_init: initialise the codebook by k-means on the first batch (vq).
        fsq_levels: levels per FSQ dimension; codebook size is their product (fsq).
    """

    def __init__(
        self,
        image_size: int = 64,
        channels: Sequence[int] = (64, 128, 256),
        encoder_blocks: int = 1,
        decoder_blocks: int = 2,
        attention: bool = True,
        quantizer: str = "vq",
        codebook_size: int = 1024,
        codebook_dim: int = 8,
        commitment_weight: float = 0.25,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 0.5,
        kmeans_init: bool = True,
        fsq_levels: Sequence[int] = (8, 5, 5, 5),
        loss: str = "l2",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        grid_images: int = 16,
    ):
        if quantizer not in QUANTIZERS:
            raise ValueError(f"unknown quantizer '{quantizer}'; use one of {', '.join(QUANTIZERS)}")
        code_dim = codebook_dim if quantizer == "vq" else len(fsq_levels)
        super().__init__(code_dim, code_dim, image_size, channels, encoder_blocks, decoder_blocks, attention, loss, lr, weight_decay, warmup_steps, grid_images)
        self.save_hyperparameters()
        self._dim = code_dim
        if quantizer == "vq":
            self._codebook_size = codebook_size
            self.quantizer = VectorQuantize(
                dim=code_dim,
                codebook_size=codebook_size,
                use_cosine_sim=True,
                decay=ema_decay,
                commitment_weight=commitment_weight,
                kmeans_init=kmeans_init,
                threshold_ema_dead_code=dead_code_threshold,
            )
        else:
            self._codebook_size = math.prod(fsq_levels)
            self.quantizer = FSQ(levels=list(fsq_levels))
        self.register_buffer("code_counts", torch.zeros(self._codebook_size), persistent=False)

    # ---- contract ----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def codebook_size(self) -> int:
        return self._codebook_size

    def quantize(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Continuous tokens [B, N, D] -> (codes [B, N, D], indices [B, N], commitment loss), always in float32."""
        with torch.autocast(tokens.device.type, enabled=False):
            tokens = tokens.float()
            if self.hparams.quantizer == "vq":
                return self.quantizer(tokens)
            codes, indices = self.quantizer(tokens)
            return codes, indices.long(), tokens.new_zeros(())

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """[B, N] long -> code vectors [B, N, D]."""
        if self.hparams.quantizer == "vq":
            return self.quantizer.get_codes_from_indices(indices)
        return self.quantizer.indices_to_codes(indices)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_images(images)
        codes, indices, _ = self.quantize(self.to_tokens(self.encoder(images * 2 - 1)))
        return codes, indices

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """indices [B, N] (integer) or features [B, N, D] -> images [B, 3, H, W] in [0, 1]."""
        codes = self.codes_from_indices(tokens) if not tokens.is_floating_point() else tokens
        return ((self.decoder(self.to_grid(codes)) + 1) / 2).clamp(0, 1)

    # ---- training ------------------------------------------------------------------------
    def forward(self, images: torch.Tensor):
        self.check_images(images)
        codes, indices, commit = self.quantize(self.to_tokens(self.encoder(images * 2 - 1)))
        counts = torch.bincount(indices.flatten(), minlength=self.codebook_size).float()
        if not self.training:
            self.code_counts += counts
        return self.decoder(self.to_grid(codes)), commit, {"commit": commit, "perplexity": perplexity(counts)}

    def on_validation_epoch_start(self) -> None:
        self.code_counts.zero_()

    def on_validation_epoch_end(self) -> None:
        """Codebook use over the whole validation set: perplexity and the share of codes never picked."""
        if self.code_counts.sum() > 0:
            self.log("val/codebook_perplexity", perplexity(self.code_counts))
            self.log("val/dead_fraction", (self.code_counts == 0).float().mean())

    def extra_trainable(self):
        return [self.quantizer]


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of code usage: the number of equally used codes it is worth."""
    p = counts / counts.sum().clamp(min=1)
    return torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())
