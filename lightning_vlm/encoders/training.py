"""Training pieces shared by the encoders: pixel loss, schedule, metrics and image grids."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

LOSSES = ("l1", "l2")


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Pixel loss in [-1, 1] space, computed in float32.

    L2 is the default: it rewards a blurred guess of a thin clock hand early in training,
    where L1's median-seeking leaves the hand out, and a 64 px watch gets its hands
    within a few hundred steps (see benchmarks/results_encoders.md).
    """
    if kind not in LOSSES:
        raise ValueError(f"unknown reconstruction loss '{kind}'; use one of {', '.join(LOSSES)}")
    recon = recon.float()
    return F.l1_loss(recon, target) if kind == "l1" else F.mse_loss(recon, target)


def warmup_cosine(total_steps: int, warmup_steps: int, start: int = 0):
    """LR multiplier for LambdaLR: 0 before `start`, linear warm-up, cosine decay to 0 at start + total_steps."""

    def factor(step: int) -> float:
        step -= start
        if step < 0:
            return 0.0
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices and kernels, none on biases, norms and embeddings' 1-d params."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


class ReconstructionMetrics(nn.Module):
    """PSNR and SSIM of [0, 1] images, one pair per stage so val and test never mix."""

    def __init__(self, stages: tuple[str, ...] = ("val", "test")):
        super().__init__()
        self.psnr = nn.ModuleDict({s: PeakSignalNoiseRatio(data_range=1.0) for s in stages})
        self.ssim = nn.ModuleDict({s: StructuralSimilarityIndexMeasure(data_range=1.0) for s in stages})

    def update(self, module, stage: str, recon: torch.Tensor, target: torch.Tensor) -> None:
        recon, target = recon.float().clamp(0, 1), target.float()
        with torch.autocast(recon.device.type, enabled=False):  # SSIM's local variances need float32
            self.psnr[stage](recon, target)
            self.ssim[stage](recon, target)
        n = target.shape[0]
        module.log(f"{stage}/psnr", self.psnr[stage], on_epoch=True, batch_size=n, prog_bar=stage == "val")
        module.log(f"{stage}/ssim", self.ssim[stage], on_epoch=True, batch_size=n)


def comparison_grid(originals: torch.Tensor, recons: torch.Tensor, rows: int = 2) -> torch.Tensor:
    """[3, H', W'] grid: `rows` pairs of rows, originals above their reconstructions."""
    originals, recons = originals.float().clamp(0, 1).cpu(), recons.float().clamp(0, 1).cpu()
    per_row = max(1, originals.shape[0] // rows)
    tiles = []
    for r in range(rows):
        sl = slice(r * per_row, (r + 1) * per_row)
        tiles += [originals[sl], recons[sl]]
    return torchvision.utils.make_grid(torch.cat(tiles), nrow=per_row, padding=1, pad_value=1.0)


def log_grid(module, tag: str, originals: torch.Tensor, recons: torch.Tensor) -> None:
    """Adds an originals-vs-reconstructions grid to TensorBoard when that is the logger."""
    logger = module.logger
    experiment = getattr(logger, "experiment", None) if logger is not None else None
    if experiment is None or not hasattr(experiment, "add_image"):
        return
    experiment.add_image(tag, comparison_grid(originals, recons), module.global_step)
