"""Common body of the pixel autoencoders (vq, ae): conv encoder -> bottleneck -> conv decoder.

Subclasses choose the bottleneck (`forward`) and what `encode` returns; training,
validation metrics (PSNR, SSIM, a TensorBoard grid) and the optimiser live here once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import ImageEncoder
from .blocks import ConvDecoder, ConvEncoder, grid_to_tokens, tokens_to_grid
from .training import ReconstructionMetrics, log_grid, param_groups, reconstruction_loss, warmup_cosine


class ConvAutoencoder(ImageEncoder):
    """Shared arguments (subclasses pass the first two):

    latent_in / latent_out: channels the decoder takes / the encoder emits per token.
    image_size: input side in pixels; the token grid is image_size / 2**len(channels).
    channels: widths of the encoder levels (the decoder mirrors them).
    encoder_blocks / decoder_blocks: residual blocks per level.
    attention: one self-attention block at the token grid in encoder and decoder.
    loss: "l2" or "l1" pixel loss (see training.reconstruction_loss).
    lr, weight_decay, warmup_steps: AdamW with linear warm-up and cosine decay over the run.
    grid_images: images in the reconstruction grid logged on validation.
    """

    def __init__(
        self,
        latent_in: int,
        latent_out: int,
        image_size: int,
        channels: Sequence[int],
        encoder_blocks: int,
        decoder_blocks: int,
        attention: bool,
        loss: str,
        lr: float,
        weight_decay: float,
        warmup_steps: int,
        grid_images: int,
    ):
        super().__init__()
        if image_size % 2 ** len(channels):
            raise ValueError(f"image_size {image_size} is not divisible by 2**len(channels) = {2 ** len(channels)}")
        self.encoder = ConvEncoder(latent_out, channels, encoder_blocks, attention)
        self.decoder = ConvDecoder(latent_in, channels, decoder_blocks, attention)
        self.metrics = ReconstructionMetrics()
        self._image_size = image_size
        self.grid = image_size // 2 ** len(channels)

    # ---- contract ----------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def image_size(self) -> int:
        return self._image_size

    def to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens_to_grid(tokens, self.grid)

    @staticmethod
    def to_tokens(fmap: torch.Tensor) -> torch.Tensor:
        return grid_to_tokens(fmap)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """images in [0, 1] -> (reconstruction in [-1, 1] space, auxiliary loss, extra logs); per subclass."""
        raise NotImplementedError

    # ---- training ------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["images"]
        recon, aux, logs = self(images)
        rec = reconstruction_loss(recon, images * 2 - 1, self.hparams.loss)
        loss = rec + aux
        n = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({"train/pixel": rec, **{f"train/{k}": v for k, v in logs.items()}}, batch_size=n)
        return loss

    def _evaluate(self, batch: dict, batch_idx: int, stage: str) -> None:
        images = batch["images"]
        recon, aux, logs = self(images)
        rec = reconstruction_loss(recon, images * 2 - 1, self.hparams.loss)
        n = images.shape[0]
        self.log_dict({f"{stage}/loss": rec + aux, **{f"{stage}/{k}": v for k, v in logs.items()}}, batch_size=n)
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
        opt = torch.optim.AdamW(param_groups([self.encoder, self.decoder, *self.extra_trainable()], h.weight_decay), lr=h.lr, betas=(0.9, 0.99))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(int(self.trainer.estimated_stepping_batches), h.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def extra_trainable(self) -> list[torch.nn.Module]:
        """Modules outside encoder/decoder that the optimiser must train (none by default)."""
        return []
