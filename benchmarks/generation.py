"""Image generation with the KV cache against the full-recompute loop, measured side by side.

    python benchmarks/generation.py [--image-tokens 256] [--batches 1,64] [--backbone tiny] [--no-compile]
                                    [--freeze] [--threads N]

The study generated each image token by running the whole sequence again (no cache).
This builds a discrete VLM (tiny backbone, an untrained 16 x 16-token VQ encoder, random
weights with a sharpened image head so greedy tokens vary) and, for each batch size, times:
  - recompute: every image token re-runs prompt + all tokens so far through the backbone,
  - cached: `generate.image_tokens` (prefill once, then one `Backbone.decode` step per token),
  - cached + compiled: the same after `Backbone.compile_decode()` (compile time printed apart;
    `--freeze` turns on inductor's weight freezing, which prepacks the linear weights for oneDNN/MKL),
and checks that all three give identical greedy tokens. Prints the CPU model beside the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from step_efficiency import cpu_model

from lightning_vlm.data.shards import iter_raw_samples, load_manifest, task_shards
from lightning_vlm.encoders.vq import VQEncoder
from lightning_vlm.models.generation import _pad, image_tokens, prompt_for
from lightning_vlm.models.vlm import VLM
from lightning_vlm.smartwatch.config import load_config
from lightning_vlm.smartwatch.writer import write_dataset
from lightning_vlm.training import UnifiedVLM


def build_model(folder: Path, image_tokens: int, backbone: str) -> tuple[VLM, list[dict]]:
    side = int(image_tokens ** 0.5)
    write_dataset(load_config(overrides={"splits.train.images": 8, "splits.val.images": 2, "splits.test.images": 64,
                                         "samples_per_shard": 64, "image_size": 32, "supersample": 1}),
                  folder / "data", workers=1, progress=False)
    torch.manual_seed(0)
    enc = VQEncoder(image_size=8 * side, channels=(8, 8, 8), encoder_blocks=1, decoder_blocks=1, attention=False,
                    codebook_size=1024, codebook_dim=8, kmeans_init=False)
    ckpt = enc.export(folder / "vq.ckpt")
    model = UnifiedVLM(tokenizer_path=str(folder / "data" / "tokenizer.json"), input_encoder=str(ckpt), backbone=backbone,
                       use_token_cache=False).model.eval()
    with torch.no_grad():  # an untrained head gives near-uniform logits: sharpen it so greedy tokens differ
        model.image_head.proj.weight.mul_(30)
    data = folder / "data"
    metas = [json.loads(raw["json"]) for path, _ in task_shards(load_manifest(data), data, "test", "generation")
             for raw in iter_raw_samples(path, print)]
    return model, [prompt_for(model, m) for m in metas]


@torch.no_grad()
def recompute_tokens(model, prompts: list[dict]) -> torch.Tensor:
    """The study's loop: for every image token, the whole sequence so far runs through the backbone."""
    ids, attn, _ = _pad(prompts, model.builder.pad, model.device)
    base = model.text_embeddings(ids)
    n = model.output_encoder.num_tokens
    fed, out = [], []
    for step in range(n):
        emb = torch.cat([base] + fed, 1)
        mask = torch.cat([attn, torch.ones(len(prompts), len(fed), dtype=torch.bool)], 1)
        hidden = model.backbone(emb, attention_mask=mask)
        last = hidden[:, -1] if fed else hidden[torch.arange(len(prompts)), attn.sum(1) - 1]
        f, idx = model.sample_image_token(last.float(), None)
        out.append(idx)
        fed.append(model.embed_output_tokens(f[:, None], first_slot=step).to(base.dtype))
    return torch.stack(out, 1)


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-tokens", type=int, default=256)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--freeze", action="store_true", help="inductor freezing for the compiled step (inference only)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.freeze and args.no_compile:
        ap.error("--freeze applies to the compiled step: drop --no-compile")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.freeze:
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True
    name, amx = cpu_model()
    print(f"CPU: {name} | AMX: {'yes' if amx else 'no'} | torch {torch.__version__} | threads {torch.get_num_threads()}"
          f"{' | compiled with freezing' if args.freeze else ''}")
    with tempfile.TemporaryDirectory() as tmp:
        model, prompts = build_model(Path(tmp), args.image_tokens, args.backbone)
    for b in (int(x) for x in args.batches.split(",")):
        batch = (prompts * (b // len(prompts) + 1))[:b]
        image_tokens(model, batch[:1])  # warm-up
        (_, cached), t_cached = timed(lambda: image_tokens(model, batch))
        reference, t_full = timed(lambda: recompute_tokens(model, batch))
        line = (f"batch {b:3d}, {args.image_tokens} image tokens: recompute {t_full:7.2f} s | cached {t_cached:6.3f} s "
                f"({t_full / t_cached:5.1f}x, {t_cached / args.image_tokens * 1e3:.2f} ms/token)")
        same = torch.equal(cached, reference)
        if not args.no_compile:
            model.backbone.compile_decode()
            _, t_compile = timed(lambda: image_tokens(model, batch))
            (_, compiled), t_compiled = timed(lambda: image_tokens(model, batch))
            same &= torch.equal(compiled, reference)
            line += (f" | compiled {t_compiled:6.3f} s ({t_full / t_compiled:5.1f}x, "
                     f"{t_compiled / args.image_tokens * 1e3:.2f} ms/token; first call with compile {t_compile:.1f} s)")
            model.backbone._compiled_decode = None
        distinct = len(torch.unique(reference))
        print(line + f" | identical tokens: {same} ({distinct} distinct)")


if __name__ == "__main__":
    main()
