"""`lightning-vlm export`: a trained VLM's language model as a plain Hugging Face model folder.

    lightning-vlm export --ckpt runs/real/last.ckpt --merge-lora --out runs/real/hf
    lightning-vlm export --hf-encoder /models/siglip-base --layer -2 --out runs/encoders/siglip_l2.ckpt

The first form rebuilds the VLM from its checkpoint (an hf: backbone is read again from its
model folder), folds the LoRA adapters into the LM's weights (`--merge-lora`, required when
the checkpoint has adapters), writes the rows the VLM added for its own tokens into the
embedding table and LM head, and saves:

    DIR/config.json, model.safetensors, ...   `transformers.AutoModelForCausalLM.from_pretrained(DIR)`
    DIR/tokenizer.json, tokenizer_config.json  `AutoTokenizer.from_pretrained(DIR)`, the project's tokens included
    DIR/vlm_parts.pt                           the rest of the VLM (projectors, image head, slot embeddings)
    DIR/lightning_vlm_export.json              where it came from and the special-token ids

The merged model reads and writes text exactly like the VLM's language path; images need the
VLM (its encoders and projectors). The second form writes an hf vision tower with a chosen
hidden layer as a single-file encoder checkpoint, the way `input_encoder:` and
`lightning-vlm encode` name an encoder with options (its token cache is then keyed to that layer).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .data.tokenizer import EOT, PAD
from .models.checkpoints import load_vlm

LM_PARTS = tuple(f"model.{part}." for part in ("backbone", "text_embeddings", "lm_head", "input_encoder", "output_encoder")) + ("val_losses.",)


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


def export_hf(ckpt: str | Path, out: str | Path, merge_lora: bool = False, dtype: str | None = None) -> Path:
    """Writes the VLM's language model (+ tokenizer) as a transformers folder; see the module docstring."""
    from .models.hf_backbone import DTYPES, HFBackbone

    module = load_vlm(ckpt)
    model, hp = module.model, module.hparams
    backbone = model.backbone
    if not isinstance(backbone, HFBackbone):
        raise ValueError(f"{ckpt} has backbone '{hp.backbone}': export writes Hugging Face models (backbone: hf:/path)")
    if backbone.has_lora and not merge_lora:
        raise ValueError(f"{ckpt} has LoRA adapters: pass --merge-lora to fold them into the exported weights")
    lm = backbone.merge_lora()
    _install_text_rows(lm, model)
    tokenizer = _fast_tokenizer(model, hp.tokenizer_path)
    eot, pad = model.tokenizer.id(EOT), model.tokenizer.id(PAD)
    own_eos = lm.generation_config.eos_token_id
    own_eos = [] if own_eos is None else [own_eos] if isinstance(own_eos, int) else list(own_eos)
    lm.generation_config.eos_token_id = sorted(set(own_eos) | {eot})  # `generate` stops at the end of a turn too
    lm.generation_config.pad_token_id = pad
    lm.config.pad_token_id = pad
    if dtype is not None:
        lm = lm.to(DTYPES[dtype])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    parts = {k: v for k, v in module.state_dict().items() if not k.startswith(LM_PARTS)}
    torch.save(parts, out / "vlm_parts.pt")
    info = {"checkpoint": str(ckpt), "vlm_class": f"{type(module).__module__}.{type(module).__qualname__}", "head": hp.head,
            "backbone": hp.backbone, "tokenizer": str(hp.tokenizer_path), "merged_lora": merge_lora,
            "special_tokens": dict(model.tokenizer.special), "image_tokens_in": model.input_encoder.num_tokens,
            "image_tokens_out": model.output_encoder.num_tokens}
    (out / "lightning_vlm_export.json").write_text(json.dumps(info, indent=1) + "\n")
    return out


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
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="weights as saved (default: as trained)")
    parser.add_argument("--layer", type=int, help="--hf-encoder: hidden layer to read (-2 = penultimate, LLaVA's)")
    args = parser.parse_args(argv)
    if bool(args.ckpt) == bool(args.hf_encoder):
        parser.error("give exactly one of --ckpt and --hf-encoder")
    try:
        if args.hf_encoder:
            path = export_hf_encoder(args.hf_encoder, args.out, args.layer)
            print(f"encoder checkpoint written to {path} (use it as input_encoder, and with `lightning-vlm encode --encoder hf`)")
        else:
            path = export_hf(args.ckpt, args.out, merge_lora=args.merge_lora, dtype=args.dtype)
            print(f"Hugging Face model written to {path} (transformers.AutoModelForCausalLM.from_pretrained('{path}'))")
    except (FileNotFoundError, ValueError, ImportError, TypeError) as exn:
        print(f"lightning-vlm export: error: {exn}", file=sys.stderr)
        return 2
    return 0
