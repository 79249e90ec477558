"""Token cache: a frozen encoder's outputs for every image of a dataset, stored beside its shards.

A VLM run with frozen encoders spends much of its step re-encoding the same images;
`lightning-vlm encode` does it once. Layout:

    DIR/cache/<encoder>-<sha256 of the checkpoint, 12 hex>/
        header.json          encoder name and class, checkpoint sha256, data manifest sha256,
                             num_tokens, dim, codebook_size, dtypes, rows per split
        <split>.ids.json     image ids, in row order
        <split>.features.npy [rows, N, D] token features (float16 by default)
        <split>.indices.npy  [rows, N] code indices (discrete encoders only)

`TokenCache.lookup(image_ids)` returns exactly what `encoder.encode(images)` would
(features, and indices or None), so a model can take either. A cache whose checkpoint
or data manifest no longer matches is never used: `TokenCache.open` returns None and
logs why.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.shards import decode_sample, iter_raw_samples, load_manifest, task_shards
from .base import ImageEncoder

log = logging.getLogger("lightning_vlm.encoders")

CACHE_VERSION = 1
FEATURE_DTYPES = ("float16", "float32")


# ---- identities ------------------------------------------------------------------------
def checkpoint_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint file, or of every file (names and bytes) in a model directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"encoder checkpoint not found: {path}")
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def manifest_sha256(data_dir: str | Path) -> str:
    load_manifest(data_dir)  # one clear error for a missing or foreign dataset
    return hashlib.sha256((Path(data_dir) / "manifest.json").read_bytes()).hexdigest()


def cache_folder(data_dir: str | Path, encoder_name: str, sha256: str) -> Path:
    return Path(data_dir) / "cache" / f"{encoder_name}-{sha256[:12]}"


# ---- reading images --------------------------------------------------------------------
def _on_error(message: str) -> None:
    log.warning("token cache: skipped bad data: %s", message)


def split_image_ids(data_dir: str | Path, split: str) -> list[str]:
    """Distinct image ids of a split, in shard order (each image appears once per task; json only, no pixels)."""
    manifest = load_manifest(data_dir)
    seen: dict[str, None] = {}
    for task in manifest["splits"].get(split, {}):
        for path, _ in task_shards(manifest, data_dir, split, task):
            for raw in iter_raw_samples(path, _on_error):
                try:
                    seen.setdefault(json.loads(raw["json"])["image_id"], None)
                except (KeyError, TypeError, ValueError) as exn:
                    _on_error(f"{path}: sample {raw.get('__key__', '?')}: {type(exn).__name__}")
    return list(seen)


def iter_split_images(data_dir: str | Path, split: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(image id, image [3, H, W] in [0, 1]) for each distinct image of a split; bad samples are skipped."""
    for image_id, sample in iter_split_samples(data_dir, split):
        yield image_id, sample["image"]


def iter_split_samples(data_dir: str | Path, split: str) -> Iterator[tuple[str, dict]]:
    """(image id, decoded sample) for the first sample of each distinct image of a split; bad samples are skipped."""
    manifest = load_manifest(data_dir)
    seen: set[str] = set()
    for task in manifest["splits"].get(split, {}):
        for path, _ in task_shards(manifest, data_dir, split, task):
            for raw in iter_raw_samples(path, _on_error):
                try:
                    image_id = json.loads(raw["json"])["image_id"]
                    if image_id in seen:
                        continue
                    sample = decode_sample(raw, manifest.get("image_size"))
                except (KeyError, TypeError, ValueError) as exn:
                    _on_error(f"{path}: sample {raw.get('__key__', '?')}: {exn}")
                    continue
                seen.add(image_id)
                yield image_id, sample


def _batches(items: Iterator[tuple[str, torch.Tensor]], size: int) -> Iterator[tuple[list[str], torch.Tensor]]:
    ids, images = [], []
    for image_id, image in items:
        ids.append(image_id)
        images.append(image)
        if len(ids) == size:
            yield ids, torch.stack(images)
            ids, images = [], []
    if ids:
        yield ids, torch.stack(images)


# ---- the cache -------------------------------------------------------------------------
class TokenCache:
    """Read access to one encoder's cached tokens; `open` finds it, `build` writes it.

    Picklable (arrays are memory-mapped lazily in each process), so DataLoader workers can use it.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.header = json.loads((self.folder / "header.json").read_text())
        self.index: dict[str, tuple[str, int]] = {}
        for split in self.header["splits"]:
            ids = json.loads((self.folder / f"{split}.ids.json").read_text())
            self.index.update((image_id, (split, row)) for row, image_id in enumerate(ids))
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "header": self.header, "index": self.index}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _arrays={})

    def __len__(self) -> int:
        return len(self.index)

    @property
    def discrete(self) -> bool:
        return self.header["codebook_size"] is not None

    @property
    def checkpoint_sha256(self) -> str:
        """Identity of the encoder checkpoint the tokens came from (a model can match its own against it)."""
        return self.header["checkpoint_sha256"]

    @classmethod
    def open(cls, data_dir: str | Path, encoder_name: str, checkpoint_path: str | Path) -> TokenCache | None:
        """The cache of this checkpoint for this data, or None (with the reason logged) when there is none."""
        sha = checkpoint_sha256(checkpoint_path)
        folder = cache_folder(data_dir, encoder_name, sha)
        rebuild = f"build it with `lightning-vlm encode --encoder {encoder_name} --checkpoint {checkpoint_path} --data {data_dir}`"
        if not (folder / "header.json").is_file():
            others = sorted(p.name for p in (Path(data_dir) / "cache").glob(f"{encoder_name}-*"))
            why = f"caches of other checkpoints exist ({', '.join(others)})" if others else "none exists"
            log.warning("token cache: no cache of %s for checkpoint %s (sha256 %s): %s; %s", encoder_name, checkpoint_path, sha[:12], why, rebuild)
            return None
        header = json.loads((folder / "header.json").read_text())
        if header.get("version") != CACHE_VERSION or header.get("checkpoint_sha256") != sha:
            log.warning("token cache: %s was written by another cache version or checkpoint; %s", folder, rebuild)
            return None
        if header.get("manifest_sha256") != manifest_sha256(data_dir):
            log.warning("token cache: %s was built for other data (the manifest changed); %s", folder, rebuild)
            return None
        return cls(folder)

    @property
    def splits(self) -> set[str]:
        """The data splits whose every image the cache holds (a build raises rather than leave one out)."""
        return set(self.header["splits"])

    def has(self, image_ids: Sequence[str]) -> bool:
        return all(image_id in self.index for image_id in image_ids)

    def _array(self, split: str, kind: str) -> np.ndarray:
        key = (split, kind)
        if key not in self._arrays:
            self._arrays[key] = np.load(self.folder / f"{split}.{kind}.npy", mmap_mode="r")
        return self._arrays[key]

    def lookup(self, image_ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features [B, N, D] float32, indices [B, N] long or None), like `ImageEncoder.encode`."""
        missing = [i for i in image_ids if i not in self.index]
        if missing:
            raise KeyError(f"token cache {self.folder} lacks {len(missing)} image(s), e.g. {missing[0]}; rebuild it with `lightning-vlm encode`")
        where = [self.index[i] for i in image_ids]
        features = torch.from_numpy(np.stack([self._array(split, "features")[row] for split, row in where])).float()
        if not self.discrete:
            return features, None
        indices = torch.from_numpy(np.stack([self._array(split, "indices")[row] for split, row in where]).astype(np.int64))
        return features, indices

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        data_dir: str | Path,
        encoder_name: str,
        checkpoint_path: str | Path,
        encoder: ImageEncoder,
        splits: Sequence[str] | None = None,
        batch_size: int = 64,
        dtype: str = "float16",
        overwrite: bool = False,
        progress: bool = True,
    ) -> TokenCache:
        """Encodes every image of `splits` (default: all) with the frozen `encoder` loaded from `checkpoint_path`."""
        if dtype not in FEATURE_DTYPES:
            raise ValueError(f"unknown feature dtype '{dtype}'; use one of {', '.join(FEATURE_DTYPES)}")
        manifest = load_manifest(data_dir)
        splits = list(splits or manifest["splits"])
        unknown = [s for s in splits if s not in manifest["splits"]]
        if unknown:
            raise ValueError(f"{data_dir} has no split(s) {unknown}; it has {', '.join(manifest['splits'])}")
        sha, data_sha = checkpoint_sha256(checkpoint_path), manifest_sha256(data_dir)
        folder = cache_folder(data_dir, encoder_name, sha)
        header = {
            "version": CACHE_VERSION,
            "encoder": encoder_name,
            "encoder_class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
            "checkpoint": str(checkpoint_path),
            "checkpoint_sha256": sha,
            "manifest_sha256": data_sha,
            "num_tokens": encoder.num_tokens,
            "dim": encoder.dim,
            "codebook_size": encoder.codebook_size,
            "feature_dtype": dtype,
            "index_dtype": _index_dtype(encoder.codebook_size),
            "splits": {},
        }
        path = folder / "header.json"
        if path.is_file():  # keep the splits built before with the same settings
            previous = json.loads(path.read_text())
            same = lambda h: {k: v for k, v in h.items() if k not in ("splits", "checkpoint")}  # noqa: E731
            if same(previous) == same(header):
                header["splits"] = {s: n for s, n in previous["splits"].items() if not (overwrite and s in splits)}
        folder.mkdir(parents=True, exist_ok=True)
        for split in splits:
            if split in header["splits"]:
                log.info("token cache: %s/%s is up to date", folder, split)
                continue
            header["splits"][split] = _encode_split(folder, data_dir, split, encoder, batch_size, dtype, header["index_dtype"], progress)
            _write_json(path, header)  # after every split, so an interrupted build keeps what it finished
        _write_json(path, header)
        return cls(folder)


def _index_dtype(codebook_size: int | None) -> str | None:
    if codebook_size is None:
        return None
    return "int16" if codebook_size <= np.iinfo(np.int16).max + 1 else "int32"


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _encode_split(folder: Path, data_dir, split: str, encoder: ImageEncoder, batch_size: int, dtype: str, index_dtype: str | None, progress: bool) -> int:
    """Writes one split's arrays and ids (each file atomically); returns its rows."""
    ids = split_image_ids(data_dir, split)
    rows = {image_id: r for r, image_id in enumerate(ids)}
    n, d = encoder.num_tokens, encoder.dim
    tmp = {kind: folder / f"{split}.{kind}.tmp.npy" for kind in ("features", "indices")}
    features = np.lib.format.open_memmap(tmp["features"], mode="w+", dtype=dtype, shape=(len(ids), n, d))
    indices = np.lib.format.open_memmap(tmp["indices"], mode="w+", dtype=index_dtype, shape=(len(ids), n)) if index_dtype else None
    written = np.zeros(len(ids), dtype=bool)
    bar = tqdm(total=len(ids), unit="image", desc=f"encoding {split}", disable=not progress)
    for batch_ids, images in _batches(iter_split_images(data_dir, split), batch_size):
        feats, idx = encoder.encode(images.to(encoder.device))
        at = [rows[i] for i in batch_ids]
        features[at] = feats.float().cpu().numpy().astype(dtype)
        if indices is not None:
            indices[at] = idx.cpu().numpy().astype(index_dtype)
        written[at] = True
        bar.update(len(batch_ids))
    bar.close()
    if not written.all():  # a sample whose json was readable but whose image was not
        raise RuntimeError(f"token cache: {int((~written).sum())} image(s) of split {split} could not be decoded; see the warnings above")
    features.flush()
    del features
    os.replace(tmp["features"], folder / f"{split}.features.npy")
    if indices is not None:
        indices.flush()
        del indices
        os.replace(tmp["indices"], folder / f"{split}.indices.npy")
    _write_json(folder / f"{split}.ids.json", ids)
    return len(ids)


# ---- command line ----------------------------------------------------------------------
def encode_main(argv: list[str]) -> int:
    """`lightning-vlm encode`: builds (or tops up) the token cache of one encoder checkpoint."""
    from lightning_vlm import registry

    parser = argparse.ArgumentParser(prog="lightning-vlm encode", description="Cache a frozen image encoder's tokens for every image of a dataset.")
    parser.add_argument("--encoder", required=True, help="registered encoder name (see `lightning-vlm plugins encoders`)")
    parser.add_argument("--checkpoint", required=True, help="the encoder's checkpoint file (a model folder for hf)")
    parser.add_argument("--data", required=True, help="dataset folder (holds manifest.json)")
    parser.add_argument("--splits", help="comma-separated splits (default: every split)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", choices=FEATURE_DTYPES, default="float16", help="storage type of the features")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--overwrite", action="store_true", help="re-encode the requested splits even when cached")
    args = parser.parse_args(argv)
    try:
        encoder_class = registry.load("encoders", args.encoder)
        encoder = encoder_class.load(args.checkpoint).to(args.device)
        start = time.time()
        cache = TokenCache.build(
            args.data, args.encoder, args.checkpoint, encoder,
            splits=args.splits.split(",") if args.splits else None,
            batch_size=args.batch_size, dtype=args.dtype, overwrite=args.overwrite,
        )
    except (ValueError, FileNotFoundError, TypeError, ImportError, RuntimeError) as exn:
        print(f"lightning-vlm encode: error: {exn}", file=sys.stderr)
        return 2
    rows = ", ".join(f"{split} {n}" for split, n in cache.header["splits"].items())
    print(f"token cache {cache.folder}: {rows} images, {cache.header['num_tokens']} tokens x {cache.header['dim']} ({time.time() - start:.1f} s)")
    return 0
