"""`lightning-vlm data ...`: build datasets and inspect them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _build_smartwatch(args: argparse.Namespace) -> int:
    from .smartwatch.config import load_config
    from .smartwatch.writer import write_dataset

    overrides = {
        "splits.train.images": args.train_images,
        "splits.val.images": args.val_images,
        "splits.test.images": args.test_images,
        "image_size": args.image_size,
        "seed": args.seed,
    }
    cfg = load_config(args.config, overrides)
    write_dataset(cfg, args.out, workers=args.workers, overwrite=args.overwrite)
    print(summary(args.out))
    return 0


def _import_llava(args: argparse.Namespace) -> int:
    from .llava import import_llava

    manifest = import_llava(
        args.json, args.images, args.out, captions=args.captions, workers=args.workers, overwrite=args.overwrite,
        image_size=args.image_size, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        max_chars=args.max_chars, samples_per_shard=args.samples_per_shard, vocab_size=args.vocab_size,
    )
    print(summary(args.out))
    skipped = manifest["skipped"]
    print(f"skipped rows: {sum(skipped.values())}" + "".join(f"  {k}={v}" for k, v in skipped.items()))
    return 0


def summary(data_dir: str | Path) -> str:
    """A short table of a dataset: samples and shards per split and task."""
    from .shards import load_manifest

    m = load_manifest(data_dir)
    lines = [f"dataset {data_dir}  (format v{m['format_version']}, {m['image_size']} px, seed {m['seed']}, share_images={m['share_images']})"]
    lines.append(f"{'split':<8}{'task':<12}{'samples':>9}{'shards':>8}  question types / mentioned")
    order = {"train": 0, "val": 1, "test": 2}
    for split in sorted(m["splits"], key=lambda s: (order.get(s, 3), s)):
        for task in ("vqa", "caption", "generation"):
            e = m["splits"][split].get(task)
            if e is None:
                continue
            h = e["histograms"]
            extra = h.get("question_types") or h.get("mentioned") or {}
            extra_text = " ".join(f"{k}={v}" for k, v in extra.items())
            lines.append(f"{split:<8}{task:<12}{e['samples']:>9}{len(e['shards']):>8}  {extra_text}")
    lines.append(f"tokenizer: {Path(data_dir) / m['tokenizer']}")
    return "\n".join(lines)


def data_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-vlm data", description="Build or inspect datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    sw = sub.add_parser("smartwatch", help="render the synthetic smart-watch dataset as WebDataset shards")
    sw.add_argument("--out", required=True, help="output folder")
    sw.add_argument("--config", help="generator YAML (see configs/data/smartwatch.yaml)")
    sw.add_argument("--train-images", type=int)
    sw.add_argument("--val-images", type=int)
    sw.add_argument("--test-images", type=int)
    sw.add_argument("--image-size", type=int)
    sw.add_argument("--seed", type=int)
    sw.add_argument("--workers", type=int, help="processes (default: every core)")
    sw.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    sw.set_defaults(run=_build_smartwatch)
    lv = sub.add_parser("import-llava", help="import LLaVA-format conversation JSON (+ captions) as WebDataset shards")
    lv.add_argument("--json", required=True, help="LLaVA conversations: a JSON array or JSON Lines file")
    lv.add_argument("--images", required=True, help="folder the rows' 'image' paths are relative to")
    lv.add_argument("--out", required=True, help="output folder")
    lv.add_argument("--captions", help="JSON/JSONL of {image, caption} rows, imported as text-to-image requests")
    lv.add_argument("--image-size", type=int, default=64, help="square side in pixels (aspect kept, white padding)")
    lv.add_argument("--val-fraction", type=float, default=0.05)
    lv.add_argument("--test-fraction", type=float, default=0.05)
    lv.add_argument("--max-chars", type=int, default=4000, help="rows with more text than this are skipped")
    lv.add_argument("--samples-per-shard", type=int, default=1000)
    lv.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary of the tokenizer trained on the train text")
    lv.add_argument("--workers", type=int, default=1, help="image processes (default 1)")
    lv.add_argument("--overwrite", action="store_true", help="replace a different dataset already in --out")
    lv.set_defaults(run=_import_llava)
    sm = sub.add_parser("summary", help="print a dataset's manifest summary")
    sm.add_argument("data_dir")
    sm.set_defaults(run=lambda a: print(summary(a.data_dir)) or 0)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, json.JSONDecodeError) as exc:
        print(f"lightning-vlm data: error: {exc}", file=sys.stderr)
        return 2
