"""KL-regularised continuous autoencoder: the same 8 x 8 token grid as vq, without quantisation.

Its tokens are the latent means ([B, N, latent_dim], `encode` returns no indices), so
a VLM can regress them or diffuse over them and `decode` turns the result into
pixels. The small KL weight keeps the latent space smooth and roughly unit-scaled
(what a regression or diffusion head wants) without costing detail.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .autoencoder import ConvAutoencoder


class AEEncoder(ConvAutoencoder):
    """Continuous tokenizer: N = (image_size / 2**len(channels))**2 tokens of `latent_dim` channels.

    Args (besides ConvAutoencoder's):
        latent_dim: channels per token.
        kl_weight: weight of KL(q(z|x) || N(0, I)), averaged over latent elements.
        init_logvar: initial log-variance of q(z|x). Starting with little sampling noise lets the
            decoder use the latents from the first steps (noise of std 1 would drown them early on).
    """

    def __init__(
        self,
        image_size: int = 64,
        channels: Sequence[int] = (64, 128, 256),
        encoder_blocks: int = 1,
        decoder_blocks: int = 2,
        attention: bool = True,
        latent_dim: int = 16,
        kl_weight: float = 1e-4,
        init_logvar: float = -6.0,
        loss: str = "l2",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        grid_images: int = 16,
    ):
        super().__init__(latent_dim, 2 * latent_dim, image_size, channels, encoder_blocks, decoder_blocks, attention, loss, lr, weight_decay, warmup_steps, grid_images)
        self.save_hyperparameters()
        with torch.no_grad():
            self.encoder.out.bias[latent_dim:].fill_(init_logvar)

    @property
    def dim(self) -> int:
        return self.hparams.latent_dim

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images -> (mean, logvar), each [B, latent_dim, h, w], in float32."""
        mean, logvar = self.encoder(images * 2 - 1).float().chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        self.check_images(images)
        mean, _ = self.moments(images)
        return self.to_tokens(mean), None

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """features [B, N, latent_dim] -> images [B, 3, H, W] in [0, 1]."""
        if not tokens.is_floating_point():
            raise TypeError("the ae encoder is continuous: decode takes features [B, N, D], not indices")
        return ((self.decoder(self.to_grid(tokens)) + 1) / 2).clamp(0, 1)

    def forward(self, images: torch.Tensor):
        """Samples z ~ q(z|x) in training and uses the mean otherwise (what `encode` hands a VLM)."""
        self.check_images(images)
        mean, logvar = self.moments(images)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        return self.decoder(z), self.hparams.kl_weight * kl, {"kl": kl, "latent_std": mean.std()}
