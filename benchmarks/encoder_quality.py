"""How much of each watch survives an encoder round trip: reader scores, PSNR and SSIM.

    python benchmarks/encoder_quality.py --data data/smartwatch --reader runs/reader/best.ckpt \
        --encoder vq=runs/encoders/vq.ckpt --encoder ae=runs/encoders/ae.ckpt \
        --encoder semantic=runs/encoders/semantic.ckpt --grid-dir runs/encoders

Reads every image of a split (default: test), reconstructs it with decode(encode(x)),
and prints one markdown table: the attribute reader's score per attribute group on the
originals and on each encoder's reconstructions (with the ratio to the originals), plus
PSNR and SSIM. With --grid-dir, saves originals-above-reconstructions PNGs to look at.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision

from lightning_vlm import registry
from lightning_vlm.encoders.training import comparison_grid
from lightning_vlm.smartwatch.encoder_check import markdown_table, reconstruct, reconstruction_rows, split_images
from lightning_vlm.smartwatch.reader import AttributeReader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/smartwatch")
    parser.add_argument("--split", default="test")
    parser.add_argument("--reader", required=True, help="attribute reader checkpoint")
    parser.add_argument("--encoder", action="append", required=True, metavar="NAME=CHECKPOINT")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--grid-dir", help="save <name>_grid.png (originals above reconstructions) here")
    args = parser.parse_args()

    images, attrs = split_images(args.data, args.split)
    reader = AttributeReader.load(args.reader)
    recons = {}
    for spec in args.encoder:
        name, _, checkpoint = spec.partition("=")
        encoder = registry.load("encoders", name).load(checkpoint)
        recons[name] = reconstruct(encoder, images, args.batch_size)
        if args.grid_dir:
            grid = comparison_grid(images[:16], recons[name][:16])
            path = Path(args.grid_dir) / f"{name}_grid.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            torchvision.utils.save_image(torch.nn.functional.interpolate(grid[None], scale_factor=3, mode="nearest")[0], path)
    print(f"{len(images)} {args.split} images; reader score (ratio to originals)\n")
    print(markdown_table(reconstruction_rows(reader, images, attrs, recons)))


if __name__ == "__main__":
    main()
