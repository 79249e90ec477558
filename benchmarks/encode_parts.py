"""Where `lightning-vlm encode` spends its time on one split: the id pass, PNG decoding, the encoder.

    python benchmarks/encode_parts.py --data data/smartwatch --checkpoint stage0/vq.ckpt [--images 2000]

Times, in this process, the parts `TokenCache.build` runs for a split: `split_image_ids` (the
json-only pass over the shards), decoding the first `--images` images, and the encoder's forward
on them at a few batch sizes. Prints each with the CPU model, and the forward's share of a whole
split extrapolated from its per-image time.
"""

from __future__ import annotations

import argparse
import time

import torch

from lightning_vlm import registry
from lightning_vlm.encoders.cache import iter_split_images, split_image_ids
from lightning_vlm.precision import cpu_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/smartwatch")
    parser.add_argument("--encoder", default="vq", help="registered encoder name")
    parser.add_argument("--checkpoint", default="stage0/vq.ckpt")
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    args = parser.parse_args()
    print(f"CPU: {cpu_name()} | torch threads {torch.get_num_threads()} | {args.encoder} {args.checkpoint} | split {args.split}")

    start = time.perf_counter()
    ids = split_image_ids(args.data, args.split)
    print(f"id pass: {len(ids)} images in {time.perf_counter() - start:.2f} s")

    start, images = time.perf_counter(), []
    for _, image in iter_split_images(args.data, args.split):
        images.append(image)
        if len(images) == args.images:
            break
    decode = time.perf_counter() - start
    print(f"decode: {len(images)} images in {decode:.2f} s ({decode / len(images) * 1e3:.2f} ms each)")

    encoder = registry.load("encoders", args.encoder).load(args.checkpoint).eval()
    batch = torch.stack(images)
    with torch.inference_mode():
        encoder.encode(batch[: args.batch_sizes[0]])  # warm-up
        for size in args.batch_sizes:
            start = time.perf_counter()
            for i in range(0, len(batch), size):
                encoder.encode(batch[i:i + size])
            seconds = time.perf_counter() - start
            per_image = seconds / len(batch)
            print(f"forward, batch {size}: {seconds:.2f} s ({per_image * 1e3:.2f} ms each; the whole split ~{per_image * len(ids):.0f} s)")


if __name__ == "__main__":
    main()
