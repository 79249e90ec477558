"""Does an image tokenizer keep the watch? The reader's scores on its reconstructions beside the originals.

A tokenizer whose reconstructions lose the attributes makes every study built on it
meaningless, so `callbacks.ExportEncoder` prints this table after each encoder fit and
benchmarks/encoder_quality.py prints it for several encoders at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ..encoders.cache import iter_split_samples
from .reader import AttributeReader
from .scoring import GROUPS


def split_images(data_dir: str, split: str, limit: int | None = None) -> tuple[torch.Tensor, list[dict]]:
    """The distinct images of a split (at most `limit`) with their attribute dicts."""
    images, attrs = [], []
    for _, sample in itertools.islice(iter_split_samples(data_dir, split), limit):
        images.append(sample["image"])
        attrs.append(sample["meta"]["attributes"])
    return torch.stack(images), attrs


@torch.no_grad()
def reconstruct(encoder, images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    """decode(encode(x)) in batches, on the encoder's device; returns float images on the CPU."""
    device = next(encoder.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        features, indices = encoder.encode(images[i : i + batch_size].to(device))
        out.append(encoder.decode(indices if indices is not None else features).float().cpu())
    return torch.cat(out)


def reconstruction_rows(reader: AttributeReader, images: torch.Tensor, attrs: list[dict], reconstructions: Mapping[str, torch.Tensor]) -> list[dict]:
    """One row per image set: reader score per group (and PSNR/SSIM against the originals)."""
    rows = [{"images": "originals", "scores": reader.score_images(images, attrs)}]
    for name, recon in reconstructions.items():
        rows.append({
            "images": name,
            "scores": reader.score_images(recon, attrs),
            "psnr": peak_signal_noise_ratio(recon, images, data_range=1.0).item(),
            "ssim": structural_similarity_index_measure(recon, images, data_range=1.0).item(),
        })
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Rows as a markdown table; reconstruction cells show (ratio to the originals)."""
    base = rows[0]["scores"]
    lines = ["| images | " + " | ".join(GROUPS) + " | PSNR dB | SSIM |", "|---" * (len(GROUPS) + 3) + "|"]
    for row in rows:
        ratio = row["images"] != "originals"
        cells = [f"{row['scores'][g]:.3f}" + (f" ({row['scores'][g] / base[g]:.2f})" if ratio and base[g] > 0 else "") for g in GROUPS]
        cells += [f"{row['psnr']:.2f}", f"{row['ssim']:.3f}"] if "psnr" in row else ["-", "-"]
        lines.append(f"| {row['images']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
