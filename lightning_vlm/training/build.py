"""Building a VLM from what a config names: files, registered names and presets.

The model itself (`models.VLM`) is built from objects; this module turns a config's
strings into those objects: a tokenizer file, encoder checkpoints (or the name of a trained
encoder under runs/encoders/), a backbone preset or local Hugging Face folder, a registered head.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from ..data.hf_tokenizer import HFTokenizer, load_tokenizer
from ..encoders.base import load_encoder_checkpoint
from ..encoders.grouped import GroupedTokens
from ..heads import build_head
from ..models.backbone import Backbone, BackboneConfig
from ..models.projectors import AffineMisalignment
from ..models.vlm import VLM


@contextmanager
def own_hyperparameters():
    """LightningCLI hands its hparams to every save_hyperparameters() run while it instantiates
    the model; encoders built inside our __init__ must record their own instead."""
    token = _given_hyperparameters.set(None)
    try:
        yield
    finally:
        _given_hyperparameters.reset(token)


def encoder_checkpoint(spec: str) -> str:
    """A checkpoint path, or a registered encoder name: the one trained here (runs/encoders/<name>.ckpt)
    when there is one, else the shipped one (stage0/<name>.ckpt, `make stage0`)."""
    if Path(spec).exists():
        return spec
    from ..registry import available

    if spec in available("encoders"):
        for path in (Path("runs/encoders") / f"{spec}.ckpt", Path("stage0") / f"{spec}.ckpt"):
            if path.is_file():
                return str(path)
        raise FileNotFoundError(f"no trained '{spec}' encoder at runs/encoders/{spec}.ckpt nor a shipped one at stage0/{spec}.ckpt: "
                                f"train it with `lightning-vlm fit --config configs/encoders/{spec}.yaml` (or `make stage0`)")
    raise FileNotFoundError(f"encoder checkpoint not found: {spec} (give a checkpoint path or a trained encoder's name)")


def build_backbone(spec: str, overrides: dict | None):
    """A preset name ("tiny", "small", "base") or "hf:/local/path" for a Hugging Face causal LM.

    `overrides` are BackboneConfig fields for a preset, HFBackbone options (dtype,
    gradient_checkpointing, lora, ...) for an hf: backbone.
    """
    if spec.startswith("hf:"):
        from ..models.hf_backbone import HFBackbone, hf_backbone_options

        return HFBackbone(spec[3:], **hf_backbone_options(overrides))
    return Backbone(BackboneConfig.preset(spec, **(overrides or {})))


def build_vlm(tokenizer_path: str, input_encoder: str, output_encoder: str | None, backbone: str, backbone_overrides: dict | None,
              head: str, head_options: dict | None, misalign: dict, input_token_group: int = 1, output_token_group: int = 1,
              **vlm_options) -> tuple[VLM, dict[str, str]]:
    """(the VLM, {"input": path, "output": path} of its encoder checkpoints) from a config's strings.

    `misalign` holds strength, seed and rotation of the study's affine map (strength 0: none);
    `input_token_group` / `output_token_group` g > 1 read / write an encoder's tokens in g x g blocks
    (`encoders.grouped`; one encoder grouped alike on both sides stays one shared space);
    `vlm_options` go to `VLM` unchanged.
    """
    tokenizer = load_tokenizer(tokenizer_path)  # a tokenizer.json, or hf:/folder (the LM's own)
    in_path = encoder_checkpoint(input_encoder)
    out_path = encoder_checkpoint(output_encoder) if output_encoder is not None else in_path
    shared = Path(out_path).resolve() == Path(in_path).resolve()
    with own_hyperparameters():
        encoder_in = load_encoder_checkpoint(in_path)
        encoder_out = encoder_in if shared else load_encoder_checkpoint(out_path)
    grouped_in = GroupedTokens(encoder_in, input_token_group) if input_token_group != 1 else encoder_in
    if shared and output_token_group == input_token_group:
        encoder_out = grouped_in
    elif output_token_group != 1:
        encoder_out = GroupedTokens(encoder_out, output_token_group)
    encoder_in = grouped_in
    net = build_backbone(backbone, backbone_overrides)
    text_layers = None
    if isinstance(tokenizer, HFTokenizer) and hasattr(net, "text_layers"):
        text_layers = net.text_layers(tokenizer)  # pretrained + added-token rows
    elif backbone.startswith("hf:"):
        rank_zero_warn(f"backbone {backbone} with the data's own tokenizer: fresh text embeddings and LM head; set "
                       f"model.tokenizer_path and data.tokenizer to {backbone} to use the LM's own")
    strength = misalign.get("strength", 0.0)
    misalign_map: nn.Module | None = (AffineMisalignment(encoder_in.dim, strength, misalign.get("seed", 0), misalign.get("rotation", "random"))
                                      if strength > 0 else None)
    model = VLM(tokenizer, encoder_in, net, nn.Identity(), output_encoder=encoder_out,
                text_layers=text_layers, misalign=misalign_map, **vlm_options)
    # The head draws its initial weights last, as it did before heads were plugins: a seed still
    # gives the initial weights, and so the runs, that the shipped results came from.
    model.image_head = build_head(head, net.dim, encoder_out, head_options)
    return model, {"input": in_path, "output": out_path}
