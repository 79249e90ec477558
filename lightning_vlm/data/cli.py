"""`lightning-vlm data ...`: build datasets and inspect them.

Each dataset plugin adds its own subcommands (`DatasetPlugin.add_data_command`: e.g.
`smartwatch`, `import-llava`); `summary` works on any dataset's shards.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .. import registry
from .dataset import dataset_of, load_dataset
from .shards import load_manifest
from .tasks import TASKS

log = logging.getLogger("lightning_vlm.data")


def summary(data_dir: str | Path) -> str:
    """A short table of a dataset: samples and shards per split and task."""
    m = load_manifest(data_dir)
    extra = "".join(f", {k} {m[k]}" for k in ("seed", "share_images") if k in m)
    lines = [f"dataset {data_dir}: {dataset_of(m)}  (format v{m['format_version']}, {m['image_size']} px{extra})"]
    lines.append(f"{'split':<8}{'task':<12}{'samples':>9}{'shards':>8}  question types / mentioned")
    order = {"train": 0, "val": 1, "test": 2}
    for split in sorted(m["splits"], key=lambda s: (order.get(s, 3), s)):
        for task in TASKS:
            e = m["splits"][split].get(task)
            if e is None:
                continue
            h = e["histograms"]
            counts = h.get("question_types") or h.get("mentioned") or {}
            counts_text = " ".join(f"{k}={v}" for k, v in counts.items())
            lines.append(f"{split:<8}{task:<12}{e['samples']:>9}{len(e['shards']):>8}  {counts_text}")
    lines.append(f"tokenizer: {Path(data_dir) / m['tokenizer']}")
    return "\n".join(lines)


def data_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-vlm data", description="Build or inspect datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in registry.available("datasets"):
        try:
            load_dataset(name).add_data_command(sub)
        except (ImportError, ValueError) as exn:  # a broken plugin must not take the other commands down
            log.warning("dataset plugin %s adds no command: %s", name, exn)
    sm = sub.add_parser("summary", help="print a dataset's manifest summary")
    sm.add_argument("data_dir")
    sm.set_defaults(run=lambda a: print(summary(a.data_dir)) or 0)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, json.JSONDecodeError) as exc:
        print(f"lightning-vlm data: error: {exc}", file=sys.stderr)
        return 2
