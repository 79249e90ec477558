"""The `smartwatch` dataset plugin: its scorer, its generation plan and `lightning-vlm data smartwatch`."""

from __future__ import annotations

import argparse

from ..data.dataset import DatasetPlugin, Scorer


class SmartWatchDataset(DatasetPlugin):
    """The synthetic smart-watch world (`lightning_vlm.smartwatch`): watches rendered from attributes."""

    name = "smartwatch"

    def scorer(self, reader: str | None = None) -> Scorer:
        """VQA, caption and image scores (`scorer.SmartWatchScorer`); `reader`: an attribute reader checkpoint."""
        from .scorer import SmartWatchScorer, load_reader

        return SmartWatchScorer(load_reader(reader) if reader else None)

    def plan_generation(self, meta: dict, fields: list[str] | None = None) -> dict:
        from .tasks import with_generation_plan

        return with_generation_plan(meta, fields)

    def add_data_command(self, subparsers) -> None:
        sw = subparsers.add_parser("smartwatch", help="render the synthetic smart-watch dataset as WebDataset shards")
        sw.add_argument("--out", required=True, help="output folder")
        sw.add_argument("--config", help="generator YAML (see configs/data/smartwatch.yaml)")
        sw.add_argument("--train-images", type=int)
        sw.add_argument("--val-images", type=int)
        sw.add_argument("--test-images", type=int)
        sw.add_argument("--image-size", type=int)
        sw.add_argument("--seed", type=int)
        sw.add_argument("--workers", type=int, help="processes (default: every core)")
        sw.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
        sw.set_defaults(run=build_command)


def build_command(args: argparse.Namespace) -> int:
    from ..data.cli import summary
    from .config import load_config
    from .writer import write_dataset

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
