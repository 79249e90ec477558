"""A Hugging Face vision tower (SigLIP, CLIP, ...) as a frozen, encode-only ImageEncoder.

The model is read from a LOCAL directory (`save_pretrained` output, with an optional
`preprocessor_config.json` for the normalisation); nothing is downloaded.
`transformers` is an optional dependency (`pip install lightning-vlm[hf]`), imported
only when an HFEncoder is built.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .base import ImageEncoder


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("the hf encoder needs transformers: pip install 'lightning-vlm[hf]' (or transformers)") from None
    return transformers


class HFEncoder(ImageEncoder):
    """Patch features of a pretrained vision transformer: [B, (size/patch)**2, hidden_size].

    Args:
        path: local directory of a vision model (SiglipVisionModel, CLIPVisionModel) or of a full
            dual-encoder model (SiglipModel, CLIPModel), whose vision tower is used.
        layer: None for the final output (`last_hidden_state`, after the final layer norm), or an index
            into the hidden states (0 = patch embeddings, -1 = last layer before the norm; LLaVA reads -2,
            the penultimate layer).

    Images of any square size are resized to the tower's own `image_size`; a class token,
    when the model has one, is dropped so every token is a patch: (image_size / patch_size)**2
    tokens of hidden_size, e.g. 196 x 768 for SigLIP-base-patch16-224.

    As a VLM's `input_encoder` (and in `lightning-vlm encode --encoder hf --checkpoint ...`) the
    model folder itself reads the final output. For another layer write a single-file checkpoint
    that records it, `lightning-vlm export --hf-encoder DIR --layer -2 --out siglip_l2.ckpt`, and
    name that file instead: its token cache is then keyed to the layer as well.
    """

    requires = ("transformers",)  # `lightning-vlm plugins` marks hf unavailable without it

    def __init__(self, path: str, layer: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"hf encoder: no model directory at {folder} (give the local folder written by save_pretrained)")
        model = _transformers().AutoModel.from_pretrained(str(folder), local_files_only=True)
        self.vision = getattr(model, "vision_model", model)
        config = self.vision.config
        self._size, self._patch, self._dim = int(config.image_size), int(config.patch_size), int(config.hidden_size)
        depth = int(config.num_hidden_layers)
        if layer is not None and not -(depth + 1) <= layer <= depth:
            raise ValueError(f"hf encoder: layer {layer} out of range for {depth} layers (hidden states {-(depth + 1)}..{depth})")
        mean, std = self._normalisation(folder)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def _normalisation(folder: Path) -> tuple[list[float], list[float]]:
        """image_mean / image_std from preprocessor_config.json, else SigLIP's 0.5 / 0.5."""
        config = folder / "preprocessor_config.json"
        if config.is_file():
            pre = json.loads(config.read_text())
            return list(pre.get("image_mean", [0.5] * 3)), list(pre.get("image_std", [0.5] * 3))
        return [0.5] * 3, [0.5] * 3

    @property
    def num_tokens(self) -> int:
        return (self._size // self._patch) ** 2

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def image_size(self) -> int:
        return self._size

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        """images [B, 3, S, S] in [0, 1] (any S) -> (patch features [B, N, hidden_size], None)."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"expected square images [B, 3, S, S] in [0, 1], got {list(images.shape)}")
        if images.shape[-1] != self._size:
            images = F.interpolate(images, size=(self._size, self._size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        pixels = (images - self.mean) / self.std
        want_hidden = self.hparams.layer is not None
        out = self.vision(pixel_values=pixels.to(self.std.dtype), output_hidden_states=want_hidden)
        features = out.hidden_states[self.hparams.layer] if want_hidden else out.last_hidden_state  # [B, N (+1), D]
        return features[:, -self.num_tokens :], None  # a leading class token, if any, is dropped

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "the hf encoder has no pixel decoder; to turn generated tokens into images use the semantic encoder "
            "(same role, with a decoder) or vq / ae"
        )

    @classmethod
    def load(cls, path: str | Path) -> HFEncoder:
        """From the model directory itself, or from a checkpoint written by `export`."""
        if Path(path).is_dir():
            return cls(path=str(path)).freeze()
        return super().load(path)
