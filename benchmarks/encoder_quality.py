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
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from lightning_vlm import registry
from lightning_vlm.data.shards import decode_sample, iter_raw_samples, load_manifest, task_shards
from lightning_vlm.encoders.training import comparison_grid
from lightning_vlm.eval.reader import AttributeReader
from lightning_vlm.eval.scoring import GROUPS


def split_images(data_dir: str, split: str) -> tuple[torch.Tensor, list[dict]]:
    """All distinct images of a split with their attribute dicts."""
    manifest = load_manifest(data_dir)
    images, attrs, seen = [], [], set()
    for task in manifest["splits"][split]:
        for path, _ in task_shards(manifest, data_dir, split, task):
            for raw in iter_raw_samples(path, lambda msg: print(f"skipped: {msg}")):
                sample = decode_sample(raw, manifest["image_size"])
                if sample["meta"]["image_id"] not in seen:
                    seen.add(sample["meta"]["image_id"])
                    images.append(sample["image"])
                    attrs.append(sample["meta"]["attributes"])
    return torch.stack(images), attrs


@torch.no_grad()
def reconstruct(encoder, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch_size):
        features, indices = encoder.encode(images[i : i + batch_size])
        out.append(encoder.decode(indices if indices is not None else features).float())
    return torch.cat(out)


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
    rows = [("originals", reader.score_images(images, attrs), None, None)]
    for spec in args.encoder:
        name, _, checkpoint = spec.partition("=")
        encoder = registry.load("encoders", name).load(checkpoint)
        recon = reconstruct(encoder, images, args.batch_size)
        psnr = peak_signal_noise_ratio(recon, images, data_range=1.0).item()
        ssim = structural_similarity_index_measure(recon, images, data_range=1.0).item()
        rows.append((name, reader.score_images(recon, attrs), psnr, ssim))
        if args.grid_dir:
            grid = comparison_grid(images[:16], recon[:16])
            path = Path(args.grid_dir) / f"{name}_grid.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            torchvision.utils.save_image(torch.nn.functional.interpolate(grid[None], scale_factor=3, mode="nearest")[0], path)
    base = rows[0][1]
    print(f"{len(images)} {args.split} images; reader score (ratio to originals)\n")
    print("| images | " + " | ".join(GROUPS) + " | PSNR dB | SSIM |")
    print("|---" * (len(GROUPS) + 3) + "|")
    for name, scores, psnr, ssim in rows:
        cells = [f"{scores[g]:.3f}" + ("" if name == "originals" else f" ({scores[g] / base[g]:.2f})") for g in GROUPS]
        extra = ["-", "-"] if psnr is None else [f"{psnr:.2f}", f"{ssim:.3f}"]
        print(f"| {name} | " + " | ".join(cells + extra) + " |")


if __name__ == "__main__":
    main()
