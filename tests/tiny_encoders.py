"""Untrained, tiny encoder checkpoints for fast model tests (shapes are what matter there)."""

from pathlib import Path

import torch

from lightning_vlm.encoders.ae import AEEncoder
from lightning_vlm.encoders.semantic import SemanticEncoder
from lightning_vlm.encoders.vq import VQEncoder

# The backbone of the model tests: small enough that a fit of a few steps takes seconds.
TINY_BACKBONE = {"n_layers": 2, "dim": 64, "n_heads": 2, "n_kv_heads": 1, "mlp_hidden": 128}


def tiny_encoders(image_size: int = 32, vocab_size: int = 1024) -> dict:
    """Untrained vq, ae and semantic encoders giving (image_size / 8)**2 tokens each."""
    torch.manual_seed(0)
    small = dict(image_size=image_size, channels=(8, 8, 8), encoder_blocks=1, decoder_blocks=1, attention=False)
    encoders = {
        "vq": VQEncoder(**small, codebook_size=32, codebook_dim=4, kmeans_init=False),
        "ae": AEEncoder(**small, latent_dim=4),
        "semantic": SemanticEncoder(image_size=image_size, patch_size=8, width=16, depth=1, heads=2, vocab_size=vocab_size,
                                    text_width=16, text_depth=1, text_heads=2, embed_dim=8, decoder_channels=(8, 8, 8),
                                    decoder_blocks=1, decoder_attention=False),
    }
    return encoders


def export_tiny_encoders(folder: Path, image_size: int = 32, vocab_size: int = 1024) -> dict[str, Path]:
    """`tiny_encoders`, exported to `folder` as checkpoints."""
    return {name: enc.export(Path(folder) / f"{name}.ckpt") for name, enc in tiny_encoders(image_size, vocab_size).items()}


def export_tiny_reader(path: Path, image_size: int = 32) -> Path:
    """An untrained attribute reader in Lightning's checkpoint format (exercises the scoring path)."""
    import lightning

    from lightning_vlm.smartwatch.reader import AttributeReader

    reader = AttributeReader(image_size=image_size, widths=(8, 8), blocks=1, feature_dim=16)
    torch.save({"state_dict": reader.state_dict(), "hyper_parameters": dict(reader.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path
