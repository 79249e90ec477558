"""The ImageEncoder contract shared by every image tokenizer, built-in or plugin.

An encoder turns images into a grid of tokens a VLM reads or writes, and (when it has
a decoder) turns tokens back into pixels:

    encode(images [B, 3, H, W] in [0, 1]) -> (features [B, N, D], indices [B, N] or None)
    decode(features [B, N, D] or indices [B, N]) -> images [B, 3, H, W] in [0, 1]

It is a LightningModule, so the built-ins train with `lightning-vlm fit --config
configs/encoders/<name>.yaml`. Afterwards it lives in one checkpoint file that
records its class, so `load_encoder_checkpoint(path)` rebuilds it without being told
what it is, frozen and in eval mode as a VLM uses it.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from ..registry import import_class
from ..registry import load as load_registered

CHECKPOINT_CLASS_KEY = "encoder_class"


def _class_path(obj: type) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict at `path`, or one clear error when it is missing or not an encoder checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder checkpoint not found: {path} (train one with `lightning-vlm fit --config configs/encoders/<name>.yaml`)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or CHECKPOINT_CLASS_KEY not in ckpt:
        raise ValueError(f"{path} is not an image-encoder checkpoint (no '{CHECKPOINT_CLASS_KEY}' entry)")
    return ckpt


class ImageEncoder(pl.LightningModule):
    """Base class of image tokenizers; subclasses implement encode, decode and the four properties.

    Freezing (`freeze()`) also pins eval mode: a VLM calling `.train()` on itself will
    not switch a frozen encoder's dropout or codebook updates back on.
    """

    _frozen = False

    # ---- the contract ------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def num_tokens(self) -> int:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def codebook_size(self) -> int | None:
        return None

    @property
    def image_size(self) -> int:
        raise NotImplementedError

    @property
    def codes_per_token(self) -> int:
        """Codebook indices per token (discrete encoders; a grouped encoder's token holds several)."""
        return 1

    # ---- token cache -------------------------------------------------------------------
    @property
    def cache_encoder(self) -> ImageEncoder:
        """The encoder whose tokens `lightning-vlm encode` caches for this one (itself, unless it wraps another)."""
        return self

    def from_cache(self, feats: torch.Tensor, indices: torch.Tensor | None):
        """Cached tokens of `cache_encoder` -> this encoder's tokens (as they are, unless it wraps another)."""
        return feats, indices

    def check_images(self, images: torch.Tensor) -> None:
        """Raises one clear line unless `images` is [B, 3, image_size, image_size]."""
        size = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"expected images [B, 3, {size}, {size}] in [0, 1], got {list(images.shape)}")

    # ---- freezing --------------------------------------------------------------------------
    def freeze(self) -> ImageEncoder:
        super().freeze()
        self._frozen = True
        return self

    def unfreeze(self) -> None:
        self._frozen = False
        super().unfreeze()

    def train(self, mode: bool = True) -> ImageEncoder:
        return super().train(mode and not self._frozen)

    # ---- checkpoints -------------------------------------------------------------------
    def init_kwargs(self) -> dict:
        """Constructor arguments that rebuild this encoder (saved hyper-parameters, minus LightningCLI's private keys)."""
        return {k: v for k, v in self.hparams.items() if not k.startswith("_")}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Every Lightning checkpoint (last.ckpt too) names its class, so `load` can dispatch on it."""
        checkpoint[CHECKPOINT_CLASS_KEY] = _class_path(type(self))

    def export(self, path: str | Path) -> Path:
        """Writes the single-file checkpoint a VLM loads: class, constructor arguments, weights."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(
            {CHECKPOINT_CLASS_KEY: _class_path(type(self)), "hyper_parameters": self.init_kwargs(), "state_dict": self.state_dict()},
            tmp,
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ImageEncoder:
        """The encoder saved at `path` (an exported file or a Lightning checkpoint), frozen on the CPU."""
        ckpt = read_checkpoint(path)
        target = import_class(ckpt[CHECKPOINT_CLASS_KEY], "encoder")
        if not issubclass(target, cls):
            raise TypeError(f"{path} holds a {ckpt[CHECKPOINT_CLASS_KEY]}, which is not a subclass of {cls.__name__}")
        hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
        model = target(**hparams)
        model.load_state_dict(ckpt["state_dict"])
        return model.freeze()


def load_encoder_checkpoint(path: str | Path) -> ImageEncoder:
    """Any encoder from its checkpoint file, whatever its class (see `ImageEncoder.load`).

    A directory is read as a local Hugging Face model folder by the encoder registered as `hf`
    (`hf.HFEncoder`), found through the registry: hf.py subclasses ImageEncoder, so naming it
    here would make the two modules import each other.
    """
    if Path(path).is_dir():
        return load_registered("encoders", "hf").load(path)
    return ImageEncoder.load(path)
