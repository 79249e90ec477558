"""Stage 0, shipped: the attribute reader and the CPU-scale image encoders as small files in stage0/.

Every smart-watch run needs the reader (it scores generated images) and an encoder (it turns
images into tokens). Training them costs 12-26 minutes on 2 CPU cores, more than the rest of a
quickstart, so the repository ships them: fp16 weights (half the bytes; their quality is checked
in fp16), with where each came from beside it in stage0/provenance.json. `make stage0` rebuilds
them from the generator's data:

    python -m lightning_vlm.smartwatch.stage0 pack reader runs/reader/best.ckpt --command "..."
    python -m lightning_vlm.smartwatch.stage0 check          # every shipped file against its bar

The check renders fresh watches (a seed no split uses), reads them with the shipped reader (a
bar per attribute group), and reads each encoder's reconstructions back with it (a bar on the
ratio to the originals, per group): the bars of benchmarks/RESULTS.md, "Encoders (stage 0)".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch

from .render import render_watch
from .render_data import pil_to_tensor
from .scoring import GROUPS
from .world import sample_attributes

STAGE0 = Path("stage0")
PROVENANCE = "provenance.json"
CHECK_SEED = 20261206  # fresh renders: no data split is drawn from this seed
CHECK_IMAGES = 500
# The reader on clean renders, per group (its test split scored 0.99-1.00 in every group).
READER_BARS = {"time": 0.95, "weather": 0.99, "battery": 0.9, "weather_position": 0.99, "battery_position": 0.99}
# An encoder's reconstructions, read by the reader, as a share of its score on the originals.
ENCODER_BARS = {
    "vq": {g: 0.9 for g in GROUPS},
    "ae": {g: 0.9 for g in GROUPS},
    # the semantic encoder keeps what the study asks of it: weather and corners (RESULTS: 0.94 / 1.0 / 1.0)
    "semantic": {"weather": 0.9, "weather_position": 0.9, "battery_position": 0.9},
}


def shipped(name: str, folder: Path | str = STAGE0) -> Path:
    """The shipped file of `name` ("reader", "vq", "ae", "semantic")."""
    return Path(folder) / f"{name}.ckpt"


def fresh_watches(n: int = CHECK_IMAGES, seed: int = CHECK_SEED, image_size: int = 64) -> tuple[torch.Tensor, list[dict]]:
    """n clean renders [n, 3, H, W] in [0, 1] and their attribute dicts, from a seed no data split uses."""
    images, attrs = [], []
    for i in range(n):
        a = sample_attributes(np.random.default_rng([seed, i]))
        images.append(pil_to_tensor(render_watch(a, image_size)))
        attrs.append(a.to_dict())
    return torch.stack(images), attrs


@torch.no_grad()
def quality(name: str, path: Path | str, reader_path: Path | str, n: int = CHECK_IMAGES) -> dict:
    """{"scores": per group, ["ratios": per group, "psnr"]} of the file at `path` on n fresh renders."""
    from ..encoders.base import load_encoder_checkpoint
    from .encoder_check import reconstruct, reconstruction_rows
    from .reader import AttributeReader

    images, attrs = fresh_watches(n)
    if name == "reader":
        return {"scores": AttributeReader.load(path).score_images(images, attrs)}
    rows = reconstruction_rows(AttributeReader.load(reader_path), images, attrs, {name: reconstruct(load_encoder_checkpoint(path), images)})
    base, recon = rows[0]["scores"], rows[1]["scores"]
    return {"scores": recon, "ratios": {g: recon[g] / base[g] for g in GROUPS if base[g] > 0}, "psnr": rows[1]["psnr"]}


def failures(name: str, measured: dict) -> list[str]:
    """The bars `measured` (from `quality`) misses, one line each."""
    if name == "reader":
        return [f"reader {g}: {measured['scores'][g]:.3f} < {bar}" for g, bar in READER_BARS.items() if measured["scores"][g] < bar]
    bars = ENCODER_BARS.get(name, {g: 0.9 for g in GROUPS})
    return [f"{name} {g}: {measured['ratios'][g]:.3f} of the originals' score < {bar}" for g, bar in bars.items() if measured["ratios"][g] < bar]


def small_checkpoint(source: Path | str) -> dict:
    """What loading needs of a checkpoint (class, arguments, weights), floating weights in fp16."""
    from ..encoders.base import CHECKPOINT_CLASS_KEY

    ckpt = torch.load(source, map_location="cpu", weights_only=False)
    keep = {k: ckpt[k] for k in (CHECKPOINT_CLASS_KEY, "hyper_parameters") if k in ckpt}
    keep["hyper_parameters"] = {k: v for k, v in dict(keep.get("hyper_parameters", {})).items() if not k.startswith("_")}
    keep["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    return keep


def machine() -> dict:
    from ..precision import cpu_has_native_bf16, cpu_name

    return {"cpu": cpu_name(), "torch_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_native_bf16(),
            "torch": torch.__version__, "python": platform.python_version()}


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        return head + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pack(name: str, source: Path | str, command: str, folder: Path | str = STAGE0, train_seconds: float | None = None) -> dict:
    """Writes stage0/<name>.ckpt from a trained checkpoint, checks it, and records its provenance."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dest = shipped(name, folder)
    torch.save(small_checkpoint(source), dest)
    measured = quality(name, dest, shipped("reader", folder))
    entry = {"file": dest.name, "bytes": dest.stat().st_size, "sha256": hashlib.sha256(dest.read_bytes()).hexdigest()[:16],
             "source": str(source), "command": command, "commit": commit(), "date": date.today().isoformat(), **machine(),
             "train_seconds": train_seconds, "check": {"images": CHECK_IMAGES, "seed": CHECK_SEED, **measured},
             "bars_missed": failures(name, measured)}
    record = folder / PROVENANCE
    provenance = json.loads(record.read_text()) if record.exists() else {}
    provenance[name] = entry
    record.write_text(json.dumps(provenance, indent=1, sort_keys=True) + "\n")
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_vlm.smartwatch.stage0", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack", help="write stage0/NAME.ckpt (fp16) from a trained checkpoint, check it, record provenance")
    p.add_argument("name", choices=["reader", *ENCODER_BARS])
    p.add_argument("source")
    p.add_argument("--command", required=True, help="the command that trained SOURCE (recorded)")
    p.add_argument("--train-seconds", type=float)
    p.add_argument("--folder", default=str(STAGE0))
    c = sub.add_parser("check", help="check every shipped file against its bar")
    c.add_argument("--folder", default=str(STAGE0))
    args = parser.parse_args(argv)
    if args.verb == "pack":
        entry = pack(args.name, args.source, args.command, args.folder, args.train_seconds)
        print(json.dumps({k: entry[k] for k in ("file", "bytes", "check", "bars_missed")}, indent=1))
        return 1 if entry["bars_missed"] else 0
    provenance = json.loads((Path(args.folder) / PROVENANCE).read_text())
    missed = []
    for name in provenance:
        measured = quality(name, shipped(name, args.folder), shipped("reader", args.folder))
        missed += failures(name, measured)
        print(name, {g: round(v, 3) for g, v in measured.get("ratios", measured["scores"]).items()})
    print("\n".join(missed) if missed else "every shipped file meets its bar")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
