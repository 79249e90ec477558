"""Per-batch cost of image tokens: frozen encoder forward on the fly vs a token-cache lookup.

    python benchmarks/token_cache.py --data data/smartwatch \
        --encoder vq=runs/encoders/vq.ckpt --encoder semantic=runs/encoders/semantic.ckpt

Builds the cache of a split first when it is missing (not timed). Prints, per encoder,
the median time of `encoder.encode(images)` and of `cache.lookup(image_ids)` for one
batch, and their ratio.

With --build-parts N, it also times the parts `lightning-vlm encode` runs for the split (the
json-only id pass, decoding N images, the forward per image at --batch-size) and extrapolates the
forward to the whole split:

    python benchmarks/token_cache.py --encoder vq=stage0/vq.ckpt --batch-size 64 --build-parts 2000

With --fit-config, it also times whole training steps of that VLM config, one short fit
with `model.use_token_cache: false` and one with `true`, side by side in this process:

    python benchmarks/token_cache.py --encoder vq=runs/encoders/vq.ckpt \
        --fit-config configs/smartwatch/quickstart.yaml --steps 60
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from fit_timing import fit_step_seconds  # benchmarks/fit_timing.py

from lightning_vlm import registry
from lightning_vlm.encoders.cache import TokenCache, iter_split_images, split_image_ids
from lightning_vlm.precision import cpu_name


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/smartwatch")
    parser.add_argument("--encoder", action="append", required=True, metavar="NAME=CHECKPOINT")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--build-parts", type=int, metavar="N", help="also time the cache build's parts on N images of the split")
    parser.add_argument("--fit-config", help="also time training steps of this VLM config without and with the cache")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per fit (after 10 warm-up steps)")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}")

    batch = []
    for item in iter_split_images(args.data, args.split):
        batch.append(item)
        if len(batch) == args.batch_size:
            break
    ids = [image_id for image_id, _ in batch]
    images = torch.stack([image for _, image in batch])
    print(f"batch of {len(ids)} images at {images.shape[-1]} px, split {args.split}, torch threads {torch.get_num_threads()}")
    print(f"{'encoder':<10}{'tokens':>8}{'dim':>6}{'encode ms':>12}{'lookup ms':>12}{'ratio':>9}")
    for spec in args.encoder:
        name, _, checkpoint = spec.partition("=")
        encoder = registry.load("encoders", name).load(checkpoint)
        cache = TokenCache.open(args.data, name, checkpoint)
        if cache is None or not cache.has(ids):
            cache = TokenCache.build(args.data, name, checkpoint, encoder, splits=[args.split])
        with torch.no_grad():
            t_encode = median_seconds(lambda: encoder.encode(images), args.repeats)
        t_lookup = median_seconds(lambda: cache.lookup(ids), args.repeats)
        print(f"{name:<10}{encoder.num_tokens:>8}{encoder.dim:>6}{1e3 * t_encode:>12.2f}{1e3 * t_lookup:>12.3f}{t_encode / t_lookup:>8.0f}x")

    if args.build_parts:
        name, _, checkpoint = args.encoder[0].partition("=")
        build_parts(args.data, args.split, registry.load("encoders", name).load(checkpoint).eval(), args.build_parts, args.batch_size)

    if args.fit_config:
        off = fit_step_seconds(args.fit_config, ["--model.init_args.use_token_cache=false"], args.steps)
        on = fit_step_seconds(args.fit_config, ["--model.init_args.use_token_cache=true"], args.steps)
        print(f"\n{args.fit_config}: median training step {1e3 * off:.0f} ms on the fly, {1e3 * on:.0f} ms from the cache "
              f"({off / on:.2f}x, {100 * (off - on) / off:.0f}% of the step saved)")


def build_parts(data: str, split: str, encoder, images: int, batch_size: int) -> None:
    """What `TokenCache.build` spends on one split: the id pass, PNG decoding, the encoder's forward."""
    start = time.perf_counter()
    ids = split_image_ids(data, split)
    print(f"\ncache build, split {split}: id pass over {len(ids)} images {time.perf_counter() - start:.2f} s")
    start, decoded = time.perf_counter(), []
    for _, image in iter_split_images(data, split):
        decoded.append(image)
        if len(decoded) == images:
            break
    seconds = time.perf_counter() - start
    print(f"decoding: {seconds / len(decoded) * 1e3:.2f} ms an image ({len(decoded)} images)")
    stacked = torch.stack(decoded)
    with torch.inference_mode():
        encoder.encode(stacked[:batch_size])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(stacked), batch_size):
            encoder.encode(stacked[i:i + batch_size])
    per_image = (time.perf_counter() - start) / len(stacked)
    print(f"forward at batch {batch_size}: {per_image * 1e3:.2f} ms an image (the whole split ~{per_image * len(ids):.0f} s)")


if __name__ == "__main__":
    main()
