"""Watch images rendered on the fly, with per-attribute labels, for training the attribute reader.

Every image is a pure function of (seed, split, index): train, val and test draw from
separate seed streams, so held-out renders never repeat a training draw's randomness.
The train sampler shifts its indices by the epoch, so each epoch sees fresh watches.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from .render import render_watch
from .world import CORNERS, WEATHERS, WatchAttributes, sample_attributes

SPLITS = {"train": 0, "val": 1, "test": 2}


def attribute_labels(attrs: WatchAttributes) -> dict[str, int]:
    """Integer class of every attribute the reader predicts (hours mod 12: 0 and 12 draw the same hands)."""
    return {
        "hour": attrs.hour % 12,
        "minute": attrs.minute,
        "second": attrs.second,
        "weather": WEATHERS.index(attrs.weather),
        "battery": attrs.battery,
        "weather_position": CORNERS.index(attrs.weather_position),
        "battery_position": CORNERS.index(attrs.battery_position),
    }


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)


@dataclass(frozen=True)
class Augment:
    """Photometric noise that keeps every attribute readable, so the reader tolerates imperfect generated images.

    No rotation or flip: hand angles and corner positions are the labels.
    """

    color_jitter: float = 0.08  # max relative change of brightness, contrast and each channel's gain
    blur_prob: float = 0.3
    blur_sigma: float = 0.6  # max Gaussian blur sigma, in pixels
    jpeg_prob: float = 0.3
    jpeg_quality: tuple[int, int] = (50, 95)
    noise_std: float = 0.02  # max std of additive Gaussian pixel noise
    max_shift: int = 1  # max translation in pixels (edge-replicated)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a [3, H, W] image."""
    radius = max(1, int(np.ceil(2 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(x[None], (radius, radius, radius, radius), mode="replicate")  # [1, 3, H+2r, W+2r]
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return x[0]


def augment_image(img: Image.Image, aug: Augment, rng: np.random.Generator) -> torch.Tensor:
    """Applies `aug` to one rendered image; returns float [3, H, W] in [0, 1]."""
    if rng.random() < aug.jpeg_prob:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(aug.jpeg_quality[0], aug.jpeg_quality[1] + 1)))
        img = Image.open(buf).convert("RGB")
    x = pil_to_tensor(img)
    if aug.max_shift > 0:
        s = aug.max_shift
        dx, dy = (int(v) for v in rng.integers(-s, s + 1, size=2))
        h, w = x.shape[1:]
        x = F.pad(x[None], (s, s, s, s), mode="replicate")[0, :, s + dy : s + dy + h, s + dx : s + dx + w]
    if rng.random() < aug.blur_prob:
        x = _blur(x, float(rng.uniform(0.2, aug.blur_sigma)))
    j = aug.color_jitter
    if j > 0:
        gain = torch.from_numpy(rng.uniform(1 - j, 1 + j, size=(3, 1, 1)).astype(np.float32))
        contrast = float(rng.uniform(1 - j, 1 + j))
        brightness = float(rng.uniform(-j, j)) / 2
        mean = x.mean()
        x = (x - mean) * contrast + mean + brightness
        x = x * gain
    if aug.noise_std > 0:
        std = rng.uniform(0, aug.noise_std)
        x = x + torch.from_numpy((rng.standard_normal(x.shape) * std).astype(np.float32))
    return x.clamp(0, 1)


class RenderedWatches(Dataset):
    """Item i is the watch drawn from seed stream (seed, split, i), rendered at `image_size` px.

    Any index >= 0 is valid (the train sampler goes past `size`); `size` only sets the epoch length.
    """

    def __init__(self, seed: int, split: str, size: int, image_size: int, augment: Augment | None = None):
        self.seed, self.split_code, self.size = seed, SPLITS[split], size
        self.image_size, self.augment = image_size, augment

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        rng = np.random.default_rng([self.seed, self.split_code, index])
        attrs = sample_attributes(rng)
        img = render_watch(attrs, self.image_size)
        images = pil_to_tensor(img) if self.augment is None else augment_image(img, self.augment, rng)
        return {"images": images, **attribute_labels(attrs)}


class EpochShiftSampler(Sampler[int]):
    """Yields indices [epoch * n, (epoch + 1) * n) so each epoch renders new watches.

    Lightning calls `set_epoch` on the train sampler before every epoch.
    """

    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(range(self.epoch * self.n, (self.epoch + 1) * self.n))


class RenderedWatchDataModule(pl.LightningDataModule):
    """Seeded, on-the-fly rendered watches: augmented for train, clean for val and test.

    Batches are dicts: `images` float [B, 3, H, W] in [0, 1] plus one long [B] tensor per
    attribute (hour mod 12, minute, second, weather index, battery, corner indices).
    """

    def __init__(
        self,
        train_size: int = 20000,
        val_size: int = 1000,
        test_size: int = 2000,
        image_size: int = 64,
        batch_size: int = 128,
        num_workers: int = 1,
        seed: int = 0,
        augment: Augment | None = Augment(),
    ):
        super().__init__()
        # LightningCLI hands nested dataclasses over as dicts; hparams keep a dict either way so
        # checkpoints stay loadable with `weights_only=True`.
        self.augment = Augment(**augment) if isinstance(augment, Mapping) else augment
        self.save_hyperparameters(ignore=["augment"])
        self.hparams["augment"] = None if self.augment is None else asdict(self.augment)

    def _loader(self, split: str, size: int, augment: Augment | None, sampler=None) -> DataLoader:
        h = self.hparams
        return DataLoader(
            RenderedWatches(h.seed, split, size, h.image_size, augment),
            batch_size=h.batch_size,
            sampler=sampler,
            num_workers=h.num_workers,
            persistent_workers=h.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        return self._loader("train", h.train_size, self.augment, EpochShiftSampler(h.train_size))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.val_size, None)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.test_size, None)


class TorchThreads(pl.Callback):
    """Sets torch's intra-op thread count when training starts.

    On a small CPU box the render workers need cores too: with 2 cores, 1 render worker
    and 1 torch thread train faster than 2 oversubscribed torch threads (benchmarks/RESULTS.md, "Attribute reader").
    """

    def __init__(self, threads: int = 1):
        self.threads = threads

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        torch.set_num_threads(self.threads)
