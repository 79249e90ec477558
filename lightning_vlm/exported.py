"""Loading a VLM back from the folder `lightning-vlm export` wrote.

    from lightning_vlm.exported import load_exported
    from lightning_vlm.models.generation import prompt_for

    vlm = load_exported("runs/real/export")          # or an --adapter-only folder (+ base_model=...)
    meta = {"task": "vqa", "conversations": [{"role": "user", "text": "<image>\\nWhat is shown?"}]}
    answer = vlm.generate_text([prompt_for(vlm, meta)], images)      # images [1, 3, H, W] in [0, 1]
    print(vlm.tokenizer.decode(answer[0]))
    request = {"task": "generation", "conversations": [{"role": "user", "text": "Generate an image of: a red car"}]}
    pictures, texts = vlm.generate_images([prompt_for(vlm, request)])

The VLM is rebuilt as training built it (`training.build.build_vlm`), from the folder alone: the
merged LM and its tokenizer (or, for an adapter-only export, the base model folder with the
adapters put back by peft's `PeftModel.from_pretrained`), the encoders under `encoders/`, the
head and options from the manifest, then every other weight from `vlm_parts.pt`, checked key
by key. Prompts are built in the format it was trained on (the project's, or the LM's chat
template when it was trained with `chat_template: true`). The manifest rides along as
`vlm.export_manifest` (its `generation` entry holds the checkpoint's sampling settings).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .export import ADAPTER, FORMAT, MANIFEST, PARTS, TEXT_TOKENIZER


def read_manifest(folder: str | Path) -> dict:
    """The export manifest of `folder`, or one clear error when it is not an export of this version."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {folder}: write the folder with `lightning-vlm export --ckpt ... --out {folder}`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{folder} was written by an older `lightning-vlm export` (format {manifest.get('format', 1)}, which "
                         f"saved the LM only); export the checkpoint again ({manifest.get('checkpoint')})")
    return manifest


def _encoder(folder: Path, entry: dict):
    """An exported encoder: an hf vision tower folder (read at its layer) or a checkpoint file."""
    from .encoders.base import load_encoder_checkpoint
    from .encoders.hf import HFEncoder

    if "hf_folder" in entry:
        return HFEncoder(path=str(folder / entry["hf_folder"]), layer=entry.get("layer")).freeze()
    return load_encoder_checkpoint(folder / entry["file"])


def _encoders(folder: Path, manifest: dict):
    """(input encoder, output encoder), grouped and shared as `build_vlm` does it."""
    from .encoders.grouped import GroupedTokens
    from .training.build import own_hyperparameters

    entries, groups = manifest["encoders"], manifest["token_groups"]
    shared = entries["output"] == entries["input"]
    with own_hyperparameters():
        enc_in = _encoder(folder, entries["input"])
        enc_out = enc_in if shared else _encoder(folder, entries["output"])
    grouped_in = GroupedTokens(enc_in, groups["input"]) if groups["input"] != 1 else enc_in
    if shared and groups["output"] == groups["input"]:
        return grouped_in, grouped_in
    return grouped_in, GroupedTokens(enc_out, groups["output"]) if groups["output"] != 1 else enc_out


def _sources(folder: Path, manifest: dict, base_model: str | None) -> tuple[str, str]:
    """(LM folder, tokenizer spec): the export's own LM, or for adapters the base model they go onto."""
    if manifest["kind"] == "merged":
        return str(folder), f"hf:{folder}"
    base = base_model or manifest["base_model"]
    if not base or not Path(base).is_dir():
        raise FileNotFoundError(f"the adapters in {folder} go onto the base model {base}, which is not a local folder: "
                                "pass base_model='/path/to/the/lm' (the folder the model was trained from)")
    tokenizer = f"hf:{base}" if manifest["tokenizer_kind"] == "hf" else str(folder / TEXT_TOKENIZER)
    return base, tokenizer


def _load_parts(model: nn.Module, folder: Path, kind: str) -> None:
    """Every weight the LM and encoders do not hold, from vlm_parts.pt; fails on a key that does not fit."""
    parts = torch.load(folder / PARTS, map_location="cpu", weights_only=True)
    state = {k[len("model."):]: v for k, v in parts.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    held = ("backbone.", "input_encoder.", "output_encoder.", "text_embeddings.base.", "lm_head.base.")
    held += ("text_embeddings.", "lm_head.") if kind == "merged" else ()  # the merged LM holds every text row
    lost = [k for k in missing if not k.startswith(held)]
    if unexpected or lost:
        raise ValueError(f"{folder / PARTS} does not fit the VLM rebuilt from the manifest (unexpected {unexpected[:3]}, "
                         f"missing {lost[:3]}): export the checkpoint again with this version")


def load_exported(path: str | Path, base_model: str | None = None, device: str | torch.device = "cpu"):
    """The `models.VLM` of an export folder, in eval mode on `device`, answering (`generate_text`) and drawing
    (`generate_images`) as the checkpoint did. `base_model`: for an adapter-only export, the LM folder the
    adapters go onto when it moved since training (default: the one the manifest names)."""
    from .data.hf_tokenizer import HFTokenizer, load_tokenizer
    from .heads import build_head
    from .models.hf_backbone import HFBackbone, _peft
    from .models.projectors import AffineMisalignment
    from .models.vlm import VLM

    folder = Path(path)
    manifest = read_manifest(folder)
    lm_folder, tokenizer_spec = _sources(folder, manifest, base_model)
    tokenizer = load_tokenizer(tokenizer_spec)
    enc_in, enc_out = _encoders(folder, manifest)
    options = {k: v for k, v in (("dtype", manifest["lm_dtype"]), ("attn_implementation", manifest.get("attn_implementation"))) if v}
    backbone = HFBackbone(lm_folder, **options)
    text_layers = backbone.text_layers(tokenizer) if isinstance(tokenizer, HFTokenizer) else None
    misalign = manifest["misalign"]
    misalign_map = (AffineMisalignment(enc_in.dim, misalign["strength"], misalign["seed"], misalign["rotation"])
                    if misalign["strength"] > 0 else None)
    model = VLM(tokenizer, enc_in, backbone, nn.Identity(), output_encoder=enc_out, text_layers=text_layers,
                misalign=misalign_map, chat_template=manifest["chat_template"], **manifest["vlm_options"])
    model.image_head = build_head(manifest["head"], backbone.dim, enc_out, manifest["head_options"])
    if manifest["kind"] == "adapter":
        backbone.model = _peft().PeftModel.from_pretrained(backbone.model, str(folder / ADAPTER))
        backbone.lora = manifest["lora"]
    _load_parts(model, folder, manifest["kind"])
    model.export_manifest = manifest
    return model.to(device).eval()
