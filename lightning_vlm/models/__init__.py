"""Model building blocks, and the model itself.

- vlm: `VLM`, the unified model (a plain nn.Module): embeddings, projectors, backbone and an image head
- generation: prompts, the KV-cached text and image decoding loops
- backbone: `Backbone` (causal transformer over embeddings) + `KVCache`, sized by `BackboneConfig`
- hf_backbone: `HFBackbone`, a local Hugging Face causal LM behind the same interface (optional extra)
- projectors: `MLPProjector` (encoder features -> backbone width), `AffineMisalignment` (the study's input-side map)
- text_head: `lm_head`, hidden states -> vocabulary logits
- sampling: `sample_logits` and seeded draws, shared by text decoding and the image heads
- standardize: `RunningStandardizer`, per-dimension feature standardisation with running statistics
"""

from .backbone import Backbone, BackboneConfig, KVCache, default_positions
from .hf_backbone import HFBackbone, HFCache
from .projectors import AffineMisalignment, MLPProjector
from .sampling import sample_logits
from .standardize import RunningStandardizer
from .text_head import lm_head

__all__ = [
    "AffineMisalignment",
    "Backbone",
    "BackboneConfig",
    "HFBackbone",
    "HFCache",
    "KVCache",
    "MLPProjector",
    "RunningStandardizer",
    "default_positions",
    "lm_head",
    "sample_logits",
]
