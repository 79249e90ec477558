"""Reading our WebDataset shards: manifest, shard lists and tolerant sample decoding.

The format is the same for every dataset: `{split}/{task}-{index:06d}.tar` holding one
PNG and one JSON (task, conversations, dataset-specific fields) per sample, a
`manifest.json` (format version, dataset name, image size, splits) and a tokenizer.

A bad sample (corrupt PNG, malformed JSON, a truncated tar) never stops a run: it is
skipped, logged as one warning line and counted by the caller.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

log = logging.getLogger("lightning_vlm.data")
FORMAT_VERSION = 1  # of the shard layout and manifest that every dataset writer produces


def load_manifest(data_dir: str | Path) -> dict:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_dir} (build one with `lightning-vlm data smartwatch --out {data_dir}`)")
    path = data_dir / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{data_dir} has no manifest.json (build it with `lightning-vlm data smartwatch --out {data_dir}`)")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {manifest.get('format_version')} but this package reads {FORMAT_VERSION}; rebuild the data")
    return manifest


def task_shards(manifest: dict, data_dir: str | Path, split: str, task: str) -> list[tuple[str, int]]:
    """[(path, samples)] of one split and task, in manifest order; empty when absent."""
    entry = manifest["splits"].get(split, {}).get(task)
    if not entry:
        return []
    return [(str(Path(data_dir) / s["name"]), int(s["samples"])) for s in entry["shards"]]


def iter_raw_samples(path: str, on_error: Callable[[str], None]) -> Iterator[dict]:
    """Raw samples ({__key__, png, json} bytes) of one tar, in order; tar damage ends the shard early."""

    def handler(exn: Exception) -> bool:
        on_error(f"{path}: {type(exn).__name__}: {str(exn).splitlines()[0] if str(exn) else ''}")
        return True  # keep going

    try:
        stream = open(path, "rb")
    except OSError as exn:
        on_error(f"{path}: cannot open: {exn}")
        return
    with stream:
        files = wds.tariterators.tar_file_expander([{"url": path, "stream": stream}], handler=handler)
        yield from wds.tariterators.group_by_keys(files, handler=handler)


def decode_sample(raw: dict, image_size: int | None = None, with_image: bool = True) -> dict:
    """{key, image [3,H,W] float in [0,1], meta} from raw bytes; raises ValueError on anything malformed.

    with_image=False leaves the PNG undecoded (image None): a model that reads the image's tokens from
    a token cache never looks at the pixels, and decoding them is most of a loader's work."""
    key = raw.get("__key__", "?")
    if "png" not in raw or "json" not in raw:
        raise ValueError(f"sample {key} lacks {'png' if 'png' not in raw else 'json'}")
    try:
        meta = json.loads(raw["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as exn:
        raise ValueError(f"sample {key}: malformed json ({exn})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("conversations"), list) or "task" not in meta:
        raise ValueError(f"sample {key}: json lacks task or conversations")
    if not with_image:
        return {"key": key, "image": None, "meta": meta}
    try:
        with Image.open(io.BytesIO(raw["png"])) as img:
            img = img.convert("RGB")
    except Exception as exn:  # PIL raises many types for broken files
        raise ValueError(f"sample {key}: corrupt png ({type(exn).__name__})") from None
    if image_size is not None and img.size != (image_size, image_size):
        raise ValueError(f"sample {key}: image is {img.size[0]}x{img.size[1]}, expected {image_size}x{image_size}")
    image = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)  # [H,W,3] -> [3,H,W]
    return {"key": key, "image": image.float().div_(255), "meta": meta}


def manifest_splits(results: dict[str, dict]) -> dict[str, dict]:
    """manifest["splits"] from per-shard records {name: {split, task, samples, histograms}}, in name order:
    per split and task, the sample count, the shard list and the merged attribute histograms."""
    splits: dict[str, dict] = {}
    for name in sorted(results):
        r = results[name]
        entry = splits.setdefault(r["split"], {}).setdefault(r["task"], {"samples": 0, "shards": [], "histograms": {}})
        entry["samples"] += r["samples"]
        entry["shards"].append({"name": name, "samples": r["samples"]})
        for key, counter in r["histograms"].items():
            merged = Counter(entry["histograms"].get(key, {}))
            merged.update(counter)
            entry["histograms"][key] = dict(sorted(merged.items()))
    return splits
