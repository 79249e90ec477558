"""Writing shards in the format `shards.py` reads, for any dataset.

`ShardSink` streams samples into `{split}/{task}-{index:06d}.tar` files; `write_samples`
is the whole job for a small dataset given as (split, key, image, meta) items: shards, a
tokenizer trained on the train text and the manifest naming the dataset plugin that reads
them (`data.dataset`). The smart-watch writer keeps its own parallel job runner but
writes the same layout and manifest.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import webdataset as wds
from PIL import Image

from .shards import FORMAT_VERSION, manifest_splits
from .tokenizer import train_tokenizer


def png_bytes(image: Image.Image | bytes) -> bytes:
    if isinstance(image, bytes):
        return image
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def turns_histogram(meta: dict) -> dict[str, str]:
    """The histogram keys every sample has: its number of assistant turns."""
    return {"turns": str(sum(t["role"] == "assistant" for t in meta["conversations"]))}


class ShardSink:
    """Writes samples, in arrival order, into `{split}/{task}-{index:06d}.tar` of `per_shard` samples each.

    `histogram(meta)` gives {histogram name: value} per sample; the counts land in the manifest.
    """

    def __init__(self, out: Path, per_shard: int, histogram: Callable[[dict], dict[str, str]] = turns_histogram):
        self.out, self.per_shard, self.histogram = Path(out), per_shard, histogram
        self.open: dict[tuple[str, str], dict] = {}
        self.done: dict[str, dict] = {}
        self.count: Counter = Counter()

    def add(self, split: str, task: str, key: str, png: bytes, meta: dict) -> None:
        cur = self.open.get((split, task))
        if cur is None:
            name = f"{split}/{task}-{self.count[split, task]:06d}.tar"
            self.count[split, task] += 1
            tmp = self.out / f"{name}.tmp"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            cur = self.open[split, task] = {"name": name, "tmp": tmp, "samples": 0, "histograms": {},
                                            "sink": wds.TarWriter(str(tmp), encoder=False, mtime=0)}
        cur["sink"].write({"__key__": key, "png": png, "json": json.dumps(meta, sort_keys=True).encode()})
        cur["samples"] += 1
        for name, value in self.histogram(meta).items():
            cur["histograms"].setdefault(name, Counter())[value] += 1
        if cur["samples"] == self.per_shard:
            self._close(split, task)

    def _close(self, split: str, task: str) -> None:
        cur = self.open.pop((split, task))
        cur["sink"].close()
        os.replace(cur["tmp"], self.out / cur["name"])  # never a half-written shard under the final name
        self.done[cur["name"]] = {"split": split, "task": task, "samples": cur["samples"], "histograms": cur["histograms"]}

    def close(self) -> dict[str, dict]:
        """{shard name: record} of every shard written (the input of `shards.manifest_splits`)."""
        for key in list(self.open):
            self._close(*key)
        return self.done


def manifest(dataset: str, image_size: int, shards: dict[str, dict], **extra) -> dict:
    """The manifest of a written dataset; `dataset` names the plugin that reads it (a registered name or module:Class)."""
    return {"format_version": FORMAT_VERSION, "dataset": dataset, "image_size": image_size,
            "tokenizer": "tokenizer.json", "splits": manifest_splits(shards), **extra}


def write_manifest(out: str | Path, content: dict) -> None:
    (Path(out) / "manifest.json").write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")


def write_samples(out: str | Path, dataset: str, items: Iterable[tuple[str, str, Image.Image | bytes, dict]], image_size: int,
                  samples_per_shard: int = 1000, vocab_size: int = 1024) -> dict:
    """Writes (split, key, image, meta) items as a dataset under `out`; returns its manifest.

    Each meta needs `task` (one of `data.tasks.TASKS`) and `conversations`; the tokenizer is
    trained on the train split's text.
    """
    out = Path(out)
    sink, texts = ShardSink(out, samples_per_shard), []
    for split, key, image, meta in items:
        sink.add(split, meta["task"], key, png_bytes(image), meta)
        if split == "train":
            texts += [turn["text"] for turn in meta["conversations"]]
    shards = sink.close()
    if not texts:
        raise ValueError(f"no train sample to train the tokenizer of {out} on")
    train_tokenizer(texts, vocab_size).save(str(out / "tokenizer.json"))
    content = manifest(dataset, image_size, shards)
    write_manifest(out, content)
    return content
