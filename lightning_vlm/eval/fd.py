"""FD-reader and KID-reader: Fréchet and kernel distances in a dataset reader's feature space.

torchmetrics' `FrechetInceptionDistance` / `KernelInceptionDistance` take any `nn.Module`
as `feature`; we pass a reader's penultimate features (e.g. the smart watch's attribute
reader), so nothing is downloaded and the numbers measure what the dataset cares about
(legible attributes). They are *not* FID or KID and must not be reported as such.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance


class ReaderFeatures(nn.Module):
    """A reader's `features` as a torchmetrics feature extractor: [N, 3, H, W] -> [N, D] float.

    A reader is any module with `features(images) -> [N, feature_dim]` and a `feature_dim`.

    The metrics are built with `normalize=True`, which for a custom extractor means they pass
    float images in [0, 1] through untouched; uint8 images are accepted too and rescaled.
    `num_features` spares torchmetrics its dummy forward pass. The reader stays in eval mode.
    """

    def __init__(self, reader: nn.Module):
        super().__init__()
        self.reader = reader.eval()
        self.num_features = reader.feature_dim

    def train(self, mode: bool = True) -> ReaderFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 255
        # float32 even inside a bf16-mixed test loop: bf16 features (8-bit mantissa) left FD and KID
        # rounded to 3 significant digits (FD 2400.0, KID std 34.25)
        with torch.autocast(images.device.type, enabled=False):
            return self.reader.features(images.float()).float()


class ReaderDistances(nn.Module):
    """Accumulates real and generated images, then reports FD-reader and KID-reader.

    KID draws `kid_subsets` random subsets of `kid_subset_size` images from each side. When a
    side has fewer images than that, subsets of half the smaller side are used instead, so a
    few dozen images still give a number (noisier) rather than an error, and the subsets
    still differ, so the reported std stays meaningful.
    """

    def __init__(self, reader: nn.Module, kid_subsets: int = 100, kid_subset_size: int = 1000):
        super().__init__()
        features = ReaderFeatures(reader)
        self.fd = FrechetInceptionDistance(feature=features, normalize=True)
        with warnings.catch_warnings():  # "will save all extracted features in buffer": 256-d features of a test split, by design
            warnings.filterwarnings("ignore", message=".*Kernel Inception Distance.*will save all extracted features")
            self.kid = KernelInceptionDistance(
                feature=features, subsets=kid_subsets, subset_size=kid_subset_size, normalize=True
            )
        self.kid_subset_size = kid_subset_size

    def update(self, images: torch.Tensor, real: bool) -> None:
        """Adds a batch of float [B, 3, H, W] images in [0, 1] to the real or the generated set."""
        self.fd.update(images, real=real)
        self.kid.update(images, real=real)

    def compute(self) -> dict[str, float]:
        # KID keeps its features as lists synced element by element: ranks that called update() a
        # different number of times would run different collectives (gloo aborts). One element each.
        for name in ("real_features", "fake_features"):
            feats = getattr(self.kid, name)
            setattr(self.kid, name, [torch.cat(feats) if feats else torch.zeros(0, self.kid.inception.num_features, device=self.kid.device)])
        counts = torch.stack([self.fd.real_features_num_samples, self.fd.fake_features_num_samples]).clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)  # every rank decides alike, or the metric sync would hang
        n = int(counts.min())
        if n < 2:
            raise RuntimeError(f"FD-reader / KID-reader need at least 2 real and 2 generated images, got {n}")
        self.kid.subset_size = self.kid_subset_size if n >= self.kid_subset_size else max(2, n // 2)
        with torch.random.fork_rng(devices=[]):  # KID draws random subsets: the same ones every time, as at test
            torch.manual_seed(0)
            kid_mean, kid_std = self.kid.compute()
        fd = float(self.fd.compute())
        return {"fd_reader": fd, "kid_reader_mean": float(kid_mean), "kid_reader_std": float(kid_std)}

    def reset(self) -> None:
        self.fd.reset()
        self.kid.reset()
