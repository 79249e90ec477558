"""Chance levels of every headline metric: what a model that learnt nothing scores.

    python benchmarks/chance_levels.py [--reader stage0/reader.ckpt] [--n 1000] [--seed 0]

VQA (lenient `vqa/*` and reference-protocol `vqa_ref/*`): a uniformly random answer, and the best
constant answer per question type, scored against random watches. Generation (`gen/*`): the
attribute reader on images that carry no information about the request (blank canvas, uniform
noise, a random other watch), scored against the attributes the request asked for. The code is
`lightning_vlm.smartwatch.chance`, which study reports use too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_vlm.smartwatch.chance import chance_levels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reader", default="stage0/reader.ckpt", help="attribute reader for gen/* (skipped when missing)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    reader = None
    if Path(args.reader).is_file():
        from lightning_vlm.smartwatch.reader import AttributeReader

        reader = AttributeReader.load(args.reader, map_location="cpu").eval()
    levels = chance_levels(reader, args.n, args.seed, args.image_size)
    print(f"{args.n} draws per question type / image kind, seed {args.seed}; reader: {args.reader if reader else 'none (gen/* skipped)'}")
    print(f"{'metric':<24} {'chance':>7} {'best constant':>14}")
    for metric, d in levels.items():
        print(f"{metric:<24} {d['chance']:7.3f} {d['best_constant']:14.3f}")


if __name__ == "__main__":
    main()
