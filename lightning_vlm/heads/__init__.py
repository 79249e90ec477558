"""Image heads: the plugin unit that turns backbone states into image tokens (see `base.ImageHead`).

Built-ins, registered under the `lightning_vlm.heads` entry point like any plugin's head:
`discrete` (VQ code indices), `regression` (continuous features), `diffusion` (per-token
diffusion over continuous latents).
"""

from .base import ImageHead, build_head, head_options
from .diffusion import DiffusionHead
from .discrete import DiscreteHead
from .regression import RegressionHead

__all__ = ["DiffusionHead", "DiscreteHead", "ImageHead", "RegressionHead", "build_head", "head_options"]
