"""What an image head is: the part of a unified VLM that turns backbone states into image tokens.

A head reads h [M, dim], the backbone's hidden state one step before each output-image
slot, and predicts that slot's token of the output encoder. It is the plugin unit: a
package registers a head class under the `lightning_vlm.heads` entry point and a config
picks it with `model.init_args.head: <name>` and its keyword options with `head_options`.

    class MyHead(ImageHead):
        def __init__(self, dim, encoder, width=256): ...    # options are keyword arguments
        def loss(self, h, features, indices): ...            # a scalar
        def sample(self, h, generator): ...                  # (features [B, F], indices [B] or None)

The model feeds `sample`'s features back through its output projector, and decodes the
image from the indices when the head is `discrete`, else from the features.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn


class ImageHead(nn.Module):
    """Base class of image heads; subclasses take (dim, encoder, **options) and implement loss and sample."""

    discrete = False  # True: `sample` returns code indices and the encoder decodes from them

    def loss(self, h: torch.Tensor, features: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        """Mean loss of states h [M, dim] predicting the target tokens: features [M, F] (float), indices [M] or None."""
        raise NotImplementedError

    def sample(self, h: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One image token per row of h [B, dim]: (features [B, F] to feed back, indices [B] or None)."""
        raise NotImplementedError

    def guided_sample(self, h: torch.Tensor, h_uncond: torch.Tensor, scale: float,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As `sample`, with classifier-free guidance of strength `scale` between the prompted states h and
        the states h_uncond of the same sequence with its request hidden. Optional."""
        raise NotImplementedError(f"the {type(self).__name__} head does not support classifier-free guidance: set guidance_scale: 1.0")


def head_options(cls: type) -> dict[str, object]:
    """The keyword options a head class takes beyond (dim, encoder), with their defaults."""
    params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, dim, encoder
    return {p.name: p.default for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def build_head(name: str, dim: int, encoder, options: dict | None = None) -> ImageHead:
    """The head registered as `name` (or a "module:Class" / "module.Class" path), built for backbone width
    `dim` over `encoder`'s tokens; an unknown option fails naming the ones the head has."""
    from ..registry import import_class, load

    cls = load("heads", name) if "." not in name and ":" not in name else import_class(name.replace(":", "."), "head")
    options = dict(options or {})
    known = head_options(cls)
    unknown = sorted(set(options) - set(known))
    if unknown:
        listed = ", ".join(f"{k} (default {v!r})" for k, v in known.items()) or "none"
        raise ValueError(f"head '{name}' has no option {', '.join(unknown)}; its head_options: {listed}")
    head = cls(dim, encoder, **options)
    if not isinstance(head, ImageHead):
        raise TypeError(f"head '{name}' ({cls.__module__}.{cls.__qualname__}) is not a lightning_vlm.heads.ImageHead")
    return head
