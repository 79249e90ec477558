"""Image encoders (tokenizers) a VLM reads and writes images with; see `base.ImageEncoder`.

Built-ins are registered as entry points (`lightning_vlm.encoders`: vq, ae, semantic,
hf) exactly like plugins; `lightning_vlm.registry.load("encoders", name)` returns a class.
"""

from .base import ImageEncoder, load_encoder_checkpoint

__all__ = ["ImageEncoder", "load_encoder_checkpoint"]
