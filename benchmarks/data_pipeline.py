"""Samples/s of our shard DataModule next to the reference's layout, same samples, one run.

The reference (LLaVA-style) keeps one JSON list of conversations and a folder of PNGs,
opening one image file per sample behind a map-style Dataset with random access. Both
paths here decode the same PNGs, tokenize with the same tokenizer and collate with the
same code, so the difference is the storage layout and the streaming.

    python benchmarks/data_pipeline.py [--images 3000] [--workers 0 2] [--image-size 64] [--cold]

`--cold` drops the page cache before every pass (needs root), which is what a first
epoch read from disk looks like; without it both sides read from memory.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lightning_vlm.data.collate import collate
from lightning_vlm.data.datamodule import VLMDataModule
from lightning_vlm.data.shards import iter_raw_samples, load_manifest
from lightning_vlm.smartwatch.config import load_config
from lightning_vlm.smartwatch.writer import write_dataset


class FolderJsonDataset(Dataset):
    """The reference layout: one JSON list, one PNG file per sample."""

    def __init__(self, root: Path, builder):
        self.root, self.builder = root, builder
        self.items = json.loads((root / "data.json").read_text())

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        item = self.items[i]
        img = Image.open(self.root / item["image"]).convert("RGB")
        image = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        meta = item["meta"]
        return {"key": item["id"], "image": image, "meta": meta, **self.builder.encode(meta)}


def export_folder(data_dir: Path, out: Path) -> int:
    """Writes the train split of `data_dir` as PNG files + one JSON list."""
    (out / "images").mkdir(parents=True)
    items = []
    for entry in load_manifest(data_dir)["splits"]["train"].values():
        for shard in entry["shards"]:
            for raw in iter_raw_samples(str(data_dir / shard["name"]), on_error=print):
                name = f"images/{raw['__key__']}.png"
                (out / name).write_bytes(raw["png"])
                items.append({"id": raw["__key__"], "image": name, "meta": json.loads(raw["json"])})
    (out / "data.json").write_text(json.dumps(items))
    return len(items)


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def rate(loader, samples_of, cold: bool) -> float:
    if cold:
        drop_page_cache()
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += samples_of(batch)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=3000, help="train images (x3 samples)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--cold", action="store_true", help="drop the page cache before each pass (root only)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = load_config("configs/data/smartwatch.yaml", {"splits.train.images": args.images, "splits.val.images": 0, "splits.test.images": 0, "image_size": args.image_size})
        write_dataset(cfg, tmp / "shards", progress=False)
        n = export_folder(tmp / "shards", tmp / "folder")
        cache = "cold page cache" if args.cold else "warm page cache"
        print(f"{n} samples ({args.image_size} px), batch {args.batch_size}, {cache}, torch threads {torch.get_num_threads()}")
        print(f"{'workers':>8} {'shards (samples/s)':>20} {'folder+json (samples/s)':>25} {'ratio':>7}")
        for w in args.workers:
            dm = VLMDataModule(str(tmp / "shards"), batch_size=args.batch_size, num_workers=w, eval_batch_size=args.batch_size)
            folder = FolderJsonDataset(tmp / "folder", dm.builder)
            pad = dm.builder.pad
            ref_loader = DataLoader(folder, batch_size=args.batch_size, shuffle=True, num_workers=w,
                                    collate_fn=lambda b, pad=pad: collate(b, pad), drop_last=True)
            ours, ref = [], []
            for _ in range(args.repeats):  # alternate so neither side gets a warmer cache
                ours.append(rate(dm.train_dataloader(), lambda b: len(b["keys"]), args.cold))
                ref.append(rate(ref_loader, lambda b: len(b["keys"]), args.cold))
            o, r = max(ours), max(ref)
            print(f"{w:>8} {o:>20.0f} {r:>25.0f} {o / r:>7.2f}")


if __name__ == "__main__":
    main()
