"""The attribute reader: a small CNN that reads a watch image back into its attributes.

It grades generated images with the same formulas the study uses for VQA answers
(`scoring`), and its penultimate features drive FD-reader / KID-reader.
Minute, second and battery are trained as classifications against Gaussian-smoothed
targets (circular for the clock), so near misses cost less than far ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from .scoring import GROUPS, battery_score, mentioned_groups, score_attributes, time_score
from .world import CORNERS, WEATHERS, WatchAttributes

HEADS = {  # attribute -> number of classes
    "hour": 12,
    "minute": 60,
    "second": 60,
    "weather": 3,
    "battery": 101,
    "weather_position": 4,
    "battery_position": 4,
}
CIRCULAR = {"minute", "second"}  # soft targets wrap around; battery's do not, hour keeps hard targets
SOFT = {"minute", "second", "battery"}
VOCAB = {"weather": WEATHERS, "weather_position": CORNERS, "battery_position": CORNERS}  # class index -> world value


def conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.GELU())


def soft_targets(labels: torch.Tensor, n: int, sigma: float, circular: bool) -> torch.Tensor:
    """Gaussian class distributions centred on `labels`: [B] long -> [B, n] float summing to 1."""
    d = torch.arange(n, device=labels.device)[None, :] - labels[:, None]  # [B, n]
    if circular:
        d = torch.minimum(d.abs(), n - d.abs())
    w = torch.exp(-0.5 * (d.float() / sigma) ** 2)
    return w / w.sum(dim=1, keepdim=True)


def decode(logits: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Logits -> predicted class per attribute ([B] long each).

    The two corners are decoded jointly as the most likely pair of *different* corners,
    since the world never puts both widgets in one corner.
    """
    pred = {name: logits[name].argmax(dim=1) for name in ("hour", "minute", "second", "weather", "battery")}
    lw = logits["weather_position"].log_softmax(dim=1)
    lb = logits["battery_position"].log_softmax(dim=1)
    pair = lw[:, :, None] + lb[:, None, :]  # [B, 4 weather corners, 4 battery corners]
    pair = pair.masked_fill(torch.eye(4, dtype=torch.bool, device=pair.device), float("-inf"))
    best = pair.flatten(1).argmax(dim=1)  # [B] index into the 4 x 4 grid
    pred["weather_position"], pred["battery_position"] = best // 4, best % 4
    return pred


def to_world(pred: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Decoded classes -> one attribute dict per image, in the world's vocabulary (hour in 0..11)."""
    rows = zip(*(pred[name].tolist() for name in HEADS))
    return [{name: VOCAB[name][v] if name in VOCAB else v for name, v in zip(HEADS, row)} for row in rows]


class AttributeReader(pl.LightningModule):
    """CNN with one classification head per attribute.

    Stages of `blocks` 3x3 conv blocks (BatchNorm + GELU), the first of each with stride 2;
    the final map is flattened (not pooled: corners and hand directions are *where* things
    are) into `feature_dim` features shared by all heads.
    """

    def __init__(
        self,
        image_size: int = 64,
        widths: Sequence[int] = (32, 64, 96, 128),
        blocks: int = 2,
        feature_dim: int = 256,
        dropout: float = 0.1,
        soft_sigma: float = 1.0,
        lr: float = 3e-3,
        weight_decay: float = 0.05,
        warmup_pct: float = 0.15,
    ):
        super().__init__()
        if image_size % 2 ** len(widths):
            raise ValueError(f"image_size {image_size} must be divisible by 2**len(widths) = {2 ** len(widths)}")
        self.save_hyperparameters()
        layers, c = [], 3
        for width in widths:
            layers += [conv_block(c, width, 2)] + [conv_block(width, width, 1) for _ in range(blocks - 1)]
            c = width
        self.backbone = nn.Sequential(*layers)
        side = image_size // 2 ** len(widths)
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(c * side * side, feature_dim), nn.GELU())
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, n) for name, n in HEADS.items()})
        self.feature_dim = feature_dim

    # ---- model ---------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features: float [B, 3, H, W] in [0, 1] (any H = W) -> [B, feature_dim]."""
        size = self.hparams.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return self.neck(self.backbone(images * 2 - 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute: {name: [B, classes]}."""
        h = self.dropout(self.features(images))
        return {name: head(h) for name, head in self.heads.items()}

    def loss(self, logits: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for name, n in HEADS.items():
            target = batch[name]
            if name in SOFT and self.hparams.soft_sigma > 0:
                target = soft_targets(target, n, self.hparams.soft_sigma, name in CIRCULAR)
            total = total + F.cross_entropy(logits[name], target)
        return total

    # ---- reading images ------------------------------------------------------------------
    @torch.no_grad()
    def predict_attributes(self, images: torch.Tensor) -> list[dict[str, Any]]:
        """Reads each image's attributes (world vocabulary; hour in 0..11). Call in eval mode."""
        return to_world(decode(self(images.to(self.device))))

    def score_images(
        self,
        images: torch.Tensor,
        attrs_list: Sequence[Mapping[str, Any] | WatchAttributes],
        mentioned_list: Sequence[Iterable[str]] | None = None,
    ) -> dict[str, float]:
        """Mean score per attribute group (time, weather, battery, weather_position, battery_position).

        `mentioned_list[i]` (attribute or group names) limits image i to what its prompt
        specified; a group no image mentions is left out of the result.
        """
        preds = self.predict_attributes(images)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for i, (pred, true) in enumerate(zip(preds, attrs_list)):
            true = true.to_dict() if isinstance(true, WatchAttributes) else true
            groups = GROUPS if mentioned_list is None else mentioned_groups(mentioned_list[i])
            for group, score in score_attributes(pred, true, groups).items():
                sums[group] = sums.get(group, 0.0) + score
                counts[group] = counts.get(group, 0) + 1
        return {group: sums[group] / counts[group] for group in GROUPS if group in sums}

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> AttributeReader:
        """A trained reader from a Lightning checkpoint, in eval mode with gradients off.

        Built from the saved arguments and weights, not the class path the checkpoint names, so
        readers saved before the class moved here (lightning_vlm.eval.reader) load too.
        """
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        reader = cls(**{k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")})
        reader.load_state_dict(checkpoint["state_dict"])
        reader.eval().requires_grad_(False)
        return reader

    # ---- training ------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["images"]), batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: dict[str, torch.Tensor], split: str) -> None:
        logits = self(batch["images"])
        pred = decode(logits)
        n = batch["images"].shape[0]
        metrics = {f"{split}/loss": self.loss(logits, batch)}
        for name in HEADS:
            metrics[f"{split}/acc_{name}"] = (pred[name] == batch[name]).float().mean()
        p = {k: v.tolist() for k, v in pred.items()}
        t = {k: batch[k].tolist() for k in HEADS}
        clock = zip(p["hour"], p["minute"], p["second"], t["hour"], t["minute"], t["second"])
        metrics[f"{split}/time_score"] = sum(time_score(*hms) for hms in clock) / n
        metrics[f"{split}/battery_score"] = sum(map(battery_score, p["battery"], t["battery"])) / n
        # one number for checkpoint selection: the mean of the five study scores
        study = ("acc_weather", "acc_weather_position", "acc_battery_position", "time_score", "battery_score")
        metrics[f"{split}/mean_score"] = sum(float(metrics[f"{split}/{k}"]) for k in study) / len(study)
        self.log_dict(metrics, batch_size=n, prog_bar=False)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        h = self.hparams
        decay = [p for p in self.parameters() if p.ndim > 1]
        no_decay = [p for p in self.parameters() if p.ndim <= 1]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": h.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=h.lr
        )
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=h.lr, total_steps=self.trainer.estimated_stepping_batches, pct_start=h.warmup_pct
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
