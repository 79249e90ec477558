"""The `llava` dataset plugin: conversations imported by `lightning-vlm data import-llava`, scored on open answers."""

from __future__ import annotations

import argparse
import logging

from .dataset import DatasetPlugin, Scorer

log = logging.getLogger("lightning_vlm.data")


class LlavaDataset(DatasetPlugin):
    """Imported LLaVA-format data: open-ended VQA (`open/exact`, `open/contains`) and text-to-image requests."""

    name = "llava"

    def scorer(self, reader: str | None = None) -> Scorer:
        from .open_answers import OpenAnswerScorer

        if reader:
            log.warning("data.init_args.reader %s is ignored: imported data has no attribute reader", reader)
        return OpenAnswerScorer()

    def add_data_command(self, subparsers) -> None:
        lv = subparsers.add_parser("import-llava", help="import LLaVA-format conversation JSON (+ captions) as WebDataset shards")
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
        lv.set_defaults(run=import_command)


def import_command(args: argparse.Namespace) -> int:
    from .cli import summary
    from .llava import import_llava

    manifest = import_llava(
        args.json, args.images, args.out, captions=args.captions, workers=args.workers, overwrite=args.overwrite,
        image_size=args.image_size, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        max_chars=args.max_chars, samples_per_shard=args.samples_per_shard, vocab_size=args.vocab_size,
    )
    print(summary(args.out))
    skipped, trimmed = manifest["skipped"], manifest.get("trimmed", {})
    print(f"skipped rows: {sum(skipped.values())}" + "".join(f"  {k}={v}" for k, v in skipped.items()))
    print(f"rows kept with a part cut: {sum(trimmed.values())}" + "".join(f"  {k}={v}" for k, v in trimmed.items()))
    return 0
