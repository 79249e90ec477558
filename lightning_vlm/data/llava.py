"""`lightning-vlm data import-llava`: LLaVA-format conversations (and captions) -> our shard format.

Input: a JSON array or JSON Lines file of `{"id", "image" (optional), "conversations":
[{"from": "human"|"gpt", "value"}]}` rows, read as a stream (see `llava_rows`), plus an
optional captions file of `{"image", "caption"}` rows. Output: the shard format of
`data.shards`: `{split}/{task}-{index:06d}.tar`, `manifest.json` (dataset `llava`, read by
`llava_dataset.LlavaDataset`) and a `tokenizer.json` trained on the imported train text.

- Conversations become task "vqa" (understanding: the image sits in the first user turn),
  captions become task "generation" (request, acknowledgement, then the image).
- Images are fitted into a white `image_size` square once (aspect kept) and stored as PNG;
  text-only rows get one shared white image, since every understanding sample has an input image.
- Splits come from a hash of the image path (of the row id for text-only rows): every row
  of one image lands in the same split, so no test image is trained on through another row.
- Every bad row is skipped with one log line and counted under `skipped` in the manifest.
- Rows keep file order and image work is order-preserving, so the same inputs give
  byte-identical shards for any `workers`; an existing different dataset is only replaced
  with `overwrite`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing as mp
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from itertools import islice
from pathlib import Path

from PIL import Image, ImageOps
from tqdm import tqdm

from .dataset import dataset_of
from .llava_rows import SkipRow, caption_meta, conversation_meta, iter_json_rows
from .shard_writer import ShardSink, manifest, turns_histogram, write_manifest
from .shards import iter_raw_samples
from .tokenizer import train_tokenizer

log = logging.getLogger("lightning_vlm.data")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImportOptions:
    """What decides each sample's bytes and split (recorded in the manifest as `config`)."""

    image_size: int = 64
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    max_chars: int = 4000
    samples_per_shard: int = 1000
    vocab_size: int = 4096

    def check(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"--image-size {self.image_size} is too small; use 8 or more")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError("--val-fraction and --test-fraction must be in [0, 1) and leave some rows for train")
        if self.samples_per_shard < 1 or self.max_chars < 1 or self.vocab_size < 300:
            raise ValueError("--samples-per-shard and --max-chars must be >= 1, --vocab-size >= 300")


# ---- one row ---------------------------------------------------------------------------
def split_of(key: str, opts: ImportOptions) -> str:
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "test" if u < opts.test_fraction else "val" if u < opts.test_fraction + opts.val_fraction else "train"


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@lru_cache(maxsize=4)
def blank_png(size: int) -> bytes:
    return _png(Image.new("RGB", (size, size), (255, 255, 255)))


def square_png(path: Path, size: int) -> bytes:
    """The image scaled to fit a `size` square (aspect kept), centred on white, as PNG bytes."""
    with Image.open(path) as img:
        img.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at a reduced scale, much faster for big photos
        img.load()  # truncated or corrupt files fail here, not later
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        img = img.convert("RGB")
    scale = size / max(img.size)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(img.resize((w, h), Image.Resampling.BICUBIC), ((size - w) // 2, (size - h) // 2))
    return _png(canvas)


def process_row(item: tuple, images: str, opts: ImportOptions) -> tuple:
    """("ok", split, task, key, png, meta) or ("skip", source, index, reason, message) for one parsed row."""
    source, index, value, error = item
    try:
        if error is not None:
            raise SkipRow("malformed_json", error)
        convert = conversation_meta if source == "llava" else caption_meta
        image, meta = convert(value, index, opts.max_chars)
        if image is None:
            png = blank_png(opts.image_size)
        else:
            path = Path(images) / image
            if not path.is_file():
                raise SkipRow("missing_image", f"image file not found: {path}")
            try:
                png = square_png(path, opts.image_size)
            except Exception as exn:  # PIL raises many types for broken files
                raise SkipRow("unreadable_image", f"cannot read image {path}: {type(exn).__name__}: {str(exn)[:120]}") from None
    except SkipRow as skip:
        row_id = value.get("id") if isinstance(value, dict) else None
        return ("skip", source, index if row_id is None else f"{index} (id {row_id})", skip.reason, skip.message)
    split = split_of("id:" + meta["source_id"] if meta["text_only"] else "image:" + meta["image_id"], opts)
    return ("ok", split, meta["task"], f"{source}-{index:09d}", png, meta)


def llava_histogram(meta: dict) -> dict[str, str]:
    """Per-sample histogram keys of imported data: assistant turns and whether the row had an image."""
    return {**turns_histogram(meta), "text_only": str(meta["text_only"]).lower()}


# ---- the import --------------------------------------------------------------------------
def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _ours(p: Path) -> bool:
    """Files a (possibly interrupted) import leaves behind."""
    if p.name == "tokenizer.json" or (p.is_dir() and p.name == "cache"):  # cache: token caches of an earlier import
        return True
    return p.is_dir() and p.name in SPLITS and all(f.name.endswith((".tar", ".tar.tmp")) for f in p.iterdir())


def _prepare_out(out: Path, config: dict, overwrite: bool) -> None:
    manifest = out / "manifest.json"
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        same = old.get("format_version") is not None and dataset_of(old) == "llava" and old.get("config") == config
        if not same and not overwrite:
            raise FileExistsError(f"{out} already holds a different dataset ({dataset_of(old) if old else 'unknown'}); "
                                  "pass --overwrite to replace it or choose another --out")
        manifest.unlink()  # no manifest while shards are rewritten: an interrupted run is never mistaken for a dataset
    elif out.is_dir() and not overwrite and not all(_ours(p) for p in out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no dataset; choose an empty --out or pass --overwrite")
    for split in SPLITS:
        if (out / split).is_dir():
            shutil.rmtree(out / split)
        (out / split).mkdir(parents=True)


def _rows(json_path: Path, captions: Path | None) -> Iterator[tuple]:
    for index, value, error in iter_json_rows(json_path):
        yield ("llava", index, value, error)
    if captions is not None:
        for index, value, error in iter_json_rows(captions):
            yield ("caption", index, value, error)


def _batched(items: Iterator, n: int) -> Iterator[list]:
    while batch := list(islice(items, n)):
        yield batch


def _train_texts(out: Path, shards: dict[str, dict]) -> Iterator[str]:
    for name in sorted(shards):
        if shards[name]["split"] == "train":
            for raw in iter_raw_samples(str(out / name), lambda msg: log.warning("tokenizer text: %s", msg)):
                yield from (turn["text"] for turn in json.loads(raw["json"])["conversations"])


def import_llava(json_path: str | Path, images: str | Path, out: str | Path, captions: str | Path | None = None,
                 workers: int = 1, overwrite: bool = False, progress: bool = True, **options) -> dict:
    """Imports LLaVA-format rows into shards under `out`; returns the manifest. `options`: see `ImportOptions`."""
    opts = ImportOptions(**options)
    opts.check()
    json_path, images, out = Path(json_path), Path(images), Path(out)
    captions = Path(captions) if captions else None
    for path, what in ((json_path, "--json file"), (captions, "--captions file")):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"{what} not found: {path}")
    if not images.is_dir():
        raise FileNotFoundError(f"--images folder not found: {images}")
    config = {"json": {"name": json_path.name, "sha256": file_sha256(json_path)},
              "captions": {"name": captions.name, "sha256": file_sha256(captions)} if captions else None, **asdict(opts)}
    _prepare_out(out, config, overwrite)

    sink, skipped, rows, trimmed = ShardSink(out, opts.samples_per_shard, llava_histogram), Counter(), Counter(), Counter()
    work = partial(process_row, images=str(images), opts=opts)
    workers = max(1, int(workers or 1))
    pool = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None).Pool(workers) if workers > 1 else None
    bar = tqdm(unit="row", desc=f"importing into {out}", disable=not progress)
    try:
        for batch in _batched(_rows(json_path, captions), 64 * workers):  # bounded batches: memory stays flat
            for result in pool.map(work, batch, chunksize=8) if pool else map(work, batch):
                if result[0] == "skip":
                    _, source, index, reason, message = result
                    skipped[reason] += 1
                    log.warning("skipped %s row %s [%s]: %s", source, index, reason, message)
                else:
                    trimmed.update(result[-1].get("trimmed", []))
                    sink.add(*result[1:])
            rows.update(item[0] for item in batch)
            bar.update(len(batch))
            bar.set_postfix(skipped=sum(skipped.values()))
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    shards = sink.close()
    if not any(r["split"] == "train" for r in shards.values()):
        raise ValueError(f"no row of {json_path} made a train sample (skipped: {dict(skipped)}); check the input and --images")
    train_tokenizer(_train_texts(out, shards), opts.vocab_size).save(str(out / "tokenizer.json"))
    content = manifest("llava", config["image_size"], shards, seed=0, share_images=False, config=config,  # seed: nothing is random
                       rows=dict(sorted(rows.items())), skipped=dict(sorted(skipped.items())), trimmed=dict(sorted(trimmed.items())))
    write_manifest(out, content)
    return content
