"""`lightning-vlm export`: a trained VLM as one folder that loads back whole, or one image encoder as a file.

    lightning-vlm export --ckpt runs/real/last.ckpt --merge-lora --out runs/real/export
    lightning-vlm export --ckpt runs/real/last.ckpt --adapter-only --out runs/real/adapter
    lightning-vlm export --hf-encoder /models/siglip-base --layer -2 --out runs/encoders/siglip_l2.ckpt

The first form rebuilds the VLM from its checkpoint (an hf: backbone is read again from its
model folder), folds the LoRA adapters into the LM's weights (`--merge-lora`, required when
the checkpoint has adapters), writes the rows the VLM added for its own tokens into the
embedding table and LM head, and saves one folder:

    DIR/config.json, model.safetensors, ...   the merged LM: `transformers.AutoModelForCausalLM.from_pretrained(DIR)`
    DIR/tokenizer.json, tokenizer_config.json  `AutoTokenizer.from_pretrained(DIR)`: the project's tokens, and the chat
                                               template the model was trained with (the LM's own under
                                               `chat_template: true`, else the project's format written as one)
    DIR/vlm_parts.pt                           the rest of the VLM (projectors, image head, slot embeddings, ...)
    DIR/encoders/                              the image encoders (a checkpoint file, or an hf vision tower's folder)
    DIR/lightning_vlm_export.json              the manifest: how the parts fit together, where they came from

`lightning_vlm.exported.load_exported(DIR)` rebuilds the whole VLM from it (answers and images as
the checkpoint gave them); the merged LM alone reads and writes text with plain transformers.

`--adapter-only` saves the LoRA adapters alone instead of a merged LM (`DIR/adapter/`, peft's
`save_pretrained`), beside the same tokenizer, parts (with the added-token rows) and encoders;
`load_exported(DIR)` puts them back onto the base model folder the manifest names (or the one
given as `base_model=`).

The last form writes an hf vision tower with a chosen hidden layer as a single-file encoder
checkpoint, the way `input_encoder:` and `lightning-vlm encode` name an encoder with options
(its token cache is then keyed to that layer).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from .data.tokenizer import EOT, PAD
from .models.checkpoints import load_vlm

MANIFEST = "lightning_vlm_export.json"
PARTS = "vlm_parts.pt"
ADAPTER = "adapter"
TEXT_TOKENIZER = "text_tokenizer.json"  # the data's own BPE, when the model was trained with it
FORMAT = 2
LM_PARTS = tuple(f"model.{part}." for part in ("backbone", "text_embeddings", "lm_head", "input_encoder", "output_encoder")) + ("val_losses.",)
# adapter-only: the LM's own weights (and rows) come from the base model; the added-token rows are parts
NOT_ADAPTER_PARTS = tuple(f"model.{part}." for part in ("backbone", "text_embeddings.base", "lm_head.base", "input_encoder", "output_encoder")) + ("val_losses.",)
VLM_OPTIONS = {"standardize_features": False, "output_slot_embedding": True, "input_position_embedding": False,
               "prompt_dropout": 0.0, "context_noise": 0.0, "image_loss_weight": 1.0}


def _fast_tokenizer(model, tokenizer_path: str):
    """The transformers tokenizer to save beside the LM: the hf: one with the project's tokens, or the data's BPE."""
    from .data.hf_tokenizer import HF_PREFIX, HFTokenizer, hf_tokenizer_with_specials

    if isinstance(model.tokenizer, HFTokenizer):
        spec = str(tokenizer_path)
        tok, _, _ = hf_tokenizer_with_specials(spec[len(HF_PREFIX):] if spec.startswith(HF_PREFIX) else model.tokenizer.source)
        if tok.backend_tokenizer.to_str() != model.tokenizer.tokenizer.to_str():
            raise ValueError(f"the tokenizer at {spec} changed since training; export needs the one the model was trained with")
        return tok
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=model.tokenizer.tokenizer, bos_token="<bos>", eos_token=EOT,
                                   unk_token="<unk>", pad_token=PAD)


def trained_chat_template(model) -> str:
    """The chat template of the format the model was trained on: the tokenizer's own under `chat_template: true`,
    else the project's sequence format written as a Jinja template (`data.chat_format.project_chat_template`)."""
    from .data.chat_format import project_chat_template

    if model.builder.chat is not None:
        return model.tokenizer.chat_template
    return project_chat_template(model.tokenizer)


@torch.no_grad()
def _install_text_rows(lm, model) -> None:
    """Makes the LM's embedding table and head those the VLM reads and writes text with."""
    from .models.hf_backbone import AddedTokenEmbedding

    emb, head = model.text_embeddings, model.lm_head
    rows = emb.num_embeddings
    if lm.get_input_embeddings().num_embeddings != rows:
        lm.resize_token_embeddings(rows, mean_resizing=False)
    lm_in, lm_out = lm.get_input_embeddings().weight, lm.get_output_embeddings().weight
    if isinstance(emb, AddedTokenEmbedding):  # pretrained rows (unchanged or fine-tuned in place) + the added ones
        ids = emb.added_ids.to(lm_in.device)
        lm_in[ids] = emb.added.to(lm_in.dtype)
        if lm_out is not lm_in:
            lm_out[ids] = head.added.to(lm_out.dtype)
    else:  # a fresh table of the data's own tokenizer (an hf: backbone trained with tokenizer.json)
        lm_in.copy_(emb.weight.to(lm_in.dtype))
        if lm_out is not lm_in:
            lm_out.copy_(head.weight.to(lm_out.dtype))


def _stop_at_turn_end(lm, model) -> None:
    """`generate` of the saved LM stops where the VLM's turns end (`<eot>`, or the chat template's end of turn)."""
    own = lm.generation_config.eos_token_id
    own = [] if own is None else [own] if isinstance(own, int) else list(own)
    lm.generation_config.eos_token_id = sorted(set(own) | set(model.builder.stop_ids((EOT,))))
    pad = model.tokenizer.id(PAD)
    lm.generation_config.pad_token_id = pad
    lm.config.pad_token_id = pad


def _dtype_name(dtype: torch.dtype) -> str:
    from .models.hf_backbone import DTYPES

    return next((name for name, d in DTYPES.items() if d == dtype), "float32")


def _write_encoders(model, out: Path) -> dict:
    """The frozen encoders under out/encoders: a checkpoint file each, or an hf vision tower's folder copied
    (its weights and preprocessor config) with the layer it is read at; one entry when both sides share one."""
    from .encoders.hf import HFEncoder

    def write(encoder, side: str) -> dict:
        inner = getattr(encoder, "inner", encoder)  # grouped tokens: the group size is in the manifest
        if isinstance(inner, HFEncoder):
            source = Path(inner.hparams.path)
            if not source.is_dir():
                raise FileNotFoundError(f"the {side} encoder's model folder {source} is gone: export copies the vision tower from it")
            shutil.copytree(source, out / "encoders" / side, dirs_exist_ok=True)
            return {"hf_folder": f"encoders/{side}", "layer": inner.hparams.layer}
        inner.export(out / "encoders" / f"{side}.ckpt")
        return {"file": f"encoders/{side}.ckpt"}

    entries = {"input": write(model.input_encoder, "input")}
    same = getattr(model.input_encoder, "inner", model.input_encoder) is getattr(model.output_encoder, "inner", model.output_encoder)
    entries["output"] = entries["input"] if same else write(model.output_encoder, "output")
    return entries


def _manifest(module, ckpt, kind: str, lm_dtype: str, encoders: dict) -> dict:
    """What `exported.load_exported` rebuilds the VLM from, and where it came from."""
    from .data.hf_tokenizer import HFTokenizer

    model, hp = module.model, module.hparams
    backbone = str(hp.backbone)
    overrides = dict(hp.get("backbone_overrides") or {})
    return {
        "format": FORMAT, "kind": kind, "checkpoint": None if ckpt is None else str(ckpt),
        "vlm_class": f"{type(module).__module__}.{type(module).__qualname__}",
        "backbone": backbone, "base_model": backbone[3:] if backbone.startswith("hf:") else None,
        "tokenizer": str(hp.tokenizer_path), "tokenizer_kind": "hf" if isinstance(model.tokenizer, HFTokenizer) else "text",
        "lm_dtype": lm_dtype, "attn_implementation": overrides.get("attn_implementation"),
        "lora": model.backbone.lora if kind == "adapter" else None, "merged_lora": kind == "merged" and bool(overrides.get("lora")),
        "chat_template": model.builder.chat is not None,
        "head": hp.head, "head_options": dict(hp.get("head_options") or {}),
        "vlm_options": {k: hp.get(k, default) for k, default in VLM_OPTIONS.items()},
        "misalign": {"strength": hp.get("misalign_strength", 0.0), "seed": hp.get("misalign_seed", 0),
                     "rotation": hp.get("misalign_rotation", "random")},
        "token_groups": {"input": hp.get("input_token_group", 1), "output": hp.get("output_token_group", 1)},
        "encoders": encoders,
        "generation": {k: hp.get(k) for k in ("max_new_tokens", "text_temperature", "guidance_scale")},
        "special_tokens": dict(model.tokenizer.special),
        "image_tokens_in": model.input_encoder.num_tokens, "image_tokens_out": model.output_encoder.num_tokens,
    }


def export_vlm(ckpt: str | Path, out: str | Path, merge_lora: bool = False, adapter_only: bool = False,
               dtype: str | None = None) -> Path:
    """Writes the VLM of checkpoint `ckpt` as one folder (see the module docstring); returns the folder."""
    if merge_lora and adapter_only:
        raise ValueError("give one of --merge-lora (one merged LM) and --adapter-only (the adapters alone)")
    return write_export(load_vlm(ckpt), out, merge_lora=merge_lora, adapter_only=adapter_only, dtype=dtype, source=str(ckpt))


def write_export(module, out: str | Path, merge_lora: bool = False, adapter_only: bool = False, dtype: str | None = None,
                 source: str | None = None) -> Path:
    """`export_vlm` of a loaded `training.UnifiedVLM` (in eval mode); `source` names where it came from.
    A merged export folds the adapters into `module`'s LM in place."""
    from .models.hf_backbone import DTYPES, HFBackbone

    model, hp = module.model, module.hparams
    backbone = model.backbone
    ckpt = source or "the model"
    if not isinstance(backbone, HFBackbone):
        raise ValueError(f"{ckpt} has backbone '{hp.backbone}': export writes Hugging Face models (backbone: hf:/path)")
    if adapter_only and not backbone.has_lora:
        raise ValueError(f"{ckpt} has no LoRA adapters to save alone: export the whole model (without --adapter-only)")
    if backbone.has_lora and not (merge_lora or adapter_only):
        raise ValueError(f"{ckpt} has LoRA adapters: pass --merge-lora to fold them into the exported weights, "
                         "or --adapter-only to save them alone")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if adapter_only:
        backbone.model.save_pretrained(str(out / ADAPTER), save_embedding_layers=False)  # the added rows go to the parts
        lm_dtype = _dtype_name(backbone.get_input_embeddings().weight.dtype)
        parts = {k: v for k, v in module.state_dict().items() if not k.startswith(NOT_ADAPTER_PARTS)}
    else:
        lm = backbone.merge_lora()
        _install_text_rows(lm, model)
        _stop_at_turn_end(lm, model)
        if dtype is not None:
            lm = lm.to(DTYPES[dtype])
        lm.save_pretrained(str(out))
        lm_dtype = _dtype_name(lm.get_input_embeddings().weight.dtype)
        parts = {k: v for k, v in module.state_dict().items() if not k.startswith(LM_PARTS)}
    tokenizer = _fast_tokenizer(model, hp.tokenizer_path)
    tokenizer.chat_template = trained_chat_template(model)
    tokenizer.save_pretrained(str(out))
    if adapter_only and not hasattr(model.tokenizer, "added_ids"):
        model.tokenizer.tokenizer.save(str(out / TEXT_TOKENIZER))
    torch.save(parts, out / PARTS)
    manifest = _manifest(module, source, "adapter" if adapter_only else "merged", lm_dtype, _write_encoders(model, out))
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


export_hf = export_vlm  # the name of the LM-only export this replaced


def export_hf_encoder(folder: str | Path, out: str | Path, layer: int | None = None) -> Path:
    """A local hf vision tower with its hidden `layer` as one encoder checkpoint file (see `encoders.hf`)."""
    from .encoders.hf import HFEncoder

    return HFEncoder(path=str(folder), layer=layer).export(out)


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-vlm export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", help="a VLM checkpoint with an hf: backbone")
    parser.add_argument("--hf-encoder", help="instead: a local hf vision model folder to write as an encoder checkpoint")
    parser.add_argument("--out", required=True, help="output folder (VLM) or .ckpt file (--hf-encoder)")
    parser.add_argument("--merge-lora", action="store_true", help="fold the LoRA adapters into the weights")
    parser.add_argument("--adapter-only", action="store_true", help="save the LoRA adapters alone (peft save_pretrained), not a merged LM")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="merged LM weights as saved (default: as trained)")
    parser.add_argument("--layer", type=int, help="--hf-encoder: hidden layer to read (-2 = penultimate, LLaVA's)")
    args = parser.parse_args(argv)
    if bool(args.ckpt) == bool(args.hf_encoder):
        parser.error("give exactly one of --ckpt and --hf-encoder")
    try:
        if args.hf_encoder:
            path = export_hf_encoder(args.hf_encoder, args.out, args.layer)
            print(f"encoder checkpoint written to {path} (use it as input_encoder, and with `lightning-vlm encode --encoder hf`)")
        else:
            path = export_vlm(args.ckpt, args.out, merge_lora=args.merge_lora, adapter_only=args.adapter_only, dtype=args.dtype)
            lm = "" if args.adapter_only else f"; its LM alone: transformers.AutoModelForCausalLM.from_pretrained('{path}')"
            print(f"VLM written to {path}: lightning_vlm.exported.load_exported('{path}'){lm}")
    except (FileNotFoundError, ValueError, ImportError, TypeError) as exn:
        print(f"lightning-vlm export: error: {exn}", file=sys.stderr)
        return 2
    return 0
