"""Model building blocks a UnifiedVLM is assembled from.

- backbone: `Backbone` (causal transformer over embeddings) + `KVCache`, sized by `BackboneConfig`
- hf_backbone: `HFBackbone`, a local Hugging Face causal LM behind the same interface (optional extra)
- projectors: `MLPProjector` (encoder features -> backbone width), `AffineMisalignment` (the study's input-side map)
- heads: `lm_head`, `DiscreteImageHead` (VQ indices), `RegressionImageHead` (continuous features)
- diffusion: `DiffusionHead`, MAR-style per-token diffusion for continuous features
- standardize: `RunningStandardizer`, per-dimension feature standardisation with running statistics
"""

from .backbone import Backbone, BackboneConfig, KVCache, default_positions
from .diffusion import DiffusionHead
from .heads import DiscreteImageHead, RegressionImageHead, lm_head
from .hf_backbone import HFBackbone, HFCache
from .projectors import AffineMisalignment, MLPProjector
from .standardize import RunningStandardizer

__all__ = [
    "AffineMisalignment",
    "Backbone",
    "BackboneConfig",
    "DiffusionHead",
    "DiscreteImageHead",
    "HFBackbone",
    "HFCache",
    "KVCache",
    "MLPProjector",
    "RegressionImageHead",
    "RunningStandardizer",
    "default_positions",
    "lm_head",
]
