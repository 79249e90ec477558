"""Training: the LightningModule (`UnifiedVLM`) that builds, optimises, evaluates and checkpoints a `models.VLM`."""

from .module import FREEZABLE, UnifiedVLM

__all__ = ["FREEZABLE", "UnifiedVLM"]
