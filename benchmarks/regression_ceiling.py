"""What a perfect deterministic regressor of the output tokens would draw, scored by the reader.

    python benchmarks/regression_ceiling.py --cache data/smartwatch/cache/semantic-2b1d5bb92031 [--plan]

A regression head trained with MSE (or cosine) on teacher-forced tokens converges to the
conditional mean of the tokens given the prompt. This script builds that mean without any
model: for each test generation prompt it averages the cached training tokens of every
training watch that matches what the prompt states (weather, weather corner, battery corner;
with --plan also the hour, as if every attribute were stated), decodes it with the cache's
encoder and reads it with the attribute reader. Beside it: the cosine head's target (the
mean's direction in standardised space at the targets' mean norm) and one matching watch
drawn at random (what a sampler could reach: the encoder's own ceiling).
The weather score is split by whether the prompt also states the weather's corner.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lightning_vlm.data.datamodule import VLMDataModule
from lightning_vlm.data.shards import iter_raw_samples, load_manifest, task_shards
from lightning_vlm.encoders.base import load_encoder_checkpoint
from lightning_vlm.smartwatch.reader import AttributeReader
from lightning_vlm.smartwatch.scoring import mentioned_groups, score_attributes

MATCHED = ("weather", "weather_position", "battery_position")


def train_attributes(data_dir: str, ids: list[str]) -> list[dict]:
    """The attributes of each cached training image, read from the shards' json (no pixels)."""
    where = {image_id: k for k, image_id in enumerate(ids)}
    out: list[dict | None] = [None] * len(ids)
    manifest = load_manifest(data_dir)
    for task in manifest["splits"]["train"]:
        for path, _ in task_shards(manifest, data_dir, "train", task):
            for raw in iter_raw_samples(path, print):
                meta = json.loads(raw["json"])
                k = where.get(meta["image_id"])
                if k is not None and out[k] is None:
                    out[k] = meta["attributes"]
    missing = sum(a is None for a in out)
    if missing:
        raise ValueError(f"{missing} cached training images have no sample in the shards")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/smartwatch")
    parser.add_argument("--cache", required=True, help="a token cache folder of the output encoder (features, not indices)")
    parser.add_argument("--reader", default="runs/reader/best.ckpt")
    parser.add_argument("--plan", action="store_true", help="treat every prompt as stating all attributes (and the hour)")
    parser.add_argument("--grid", default=None, help="save the first 32 decoded means here")
    args = parser.parse_args()

    cache = Path(args.cache)
    header = json.loads((cache / "header.json").read_text())
    ids = json.loads((cache / "train.ids.json").read_text())
    tokens = torch.from_numpy(np.load(cache / "train.features.npy").astype(np.float32))  # [N, T, D]
    attrs = train_attributes(args.data, ids)
    encoder = load_encoder_checkpoint(header["checkpoint"]).eval()
    reader = AttributeReader.load(args.reader)

    dm = VLMDataModule(args.data, eval_tasks=["generation"], eval_batch_size=100_000, num_workers=0,
                              image_tokens_in=header["num_tokens"], image_tokens_out=header["num_tokens"])
    dm.setup("test")
    metas = next(iter(dm.test_dataloader()))["meta"]
    keys = MATCHED + (("hour",) if args.plan else ())
    table = {name: np.array([a[name] for a in attrs]) for name in keys}

    mean, std = tokens.mean((0, 1)), tokens.std((0, 1))
    norm = ((tokens - mean) / std).norm(dim=-1).mean()
    rng = np.random.default_rng(0)
    drawn: dict[str, list[torch.Tensor]] = defaultdict(list)
    matches = []
    for meta in metas:
        stated = set(keys) if args.plan else set(meta["mentioned"])
        rows = np.ones(len(attrs), dtype=bool)
        for name in keys:
            if name in stated:
                rows &= table[name] == meta["attributes"][name]
        rows = np.flatnonzero(rows)
        matches.append(len(rows))
        z = ((tokens[rows] - mean) / std).mean(0)
        drawn["conditional mean (MSE optimum)"].append(z * std + mean)
        drawn["its direction at the mean norm (cosine optimum)"].append(F.normalize(z, dim=-1) * norm * std + mean)
        drawn["one matching watch (a sampler's ceiling)"].append(tokens[rng.choice(rows)])
    if args.plan:
        for meta in metas:
            meta["mentioned"] = [*meta["mentioned"], *MATCHED]

    print(f"{len(metas)} test prompts; matching training watches per prompt: median {int(np.median(matches))}, min {min(matches)}")
    groups = ("weather", "weather_position", "battery_position")
    print("| tokens | " + " | ".join(groups) + " | weather, its corner stated | weather, its corner open |")
    print("|---" * (len(groups) + 3) + "|")
    for name, toks in drawn.items():
        with torch.no_grad():
            images = torch.cat([encoder.decode(torch.stack(toks[i:i + 100])) for i in range(0, len(toks), 100)]).clamp(0, 1)
        preds = reader.predict_attributes(images)
        scores: dict[str, list[float]] = defaultdict(list)
        for pred, meta in zip(preds, metas):
            stated = mentioned_groups(meta["mentioned"])
            for group, score in score_attributes(pred, meta["attributes"], [g for g in groups if g in stated]).items():
                scores[group].append(score)
                if group == "weather":
                    scores["stated" if "weather_position" in stated else "open"].append(score)
        def cell(k, scores=scores):
            return f"{np.mean(scores[k]):.3f} (n={len(scores[k])})" if scores[k] else "-"

        print(f"| {name} | " + " | ".join(cell(k) for k in (*groups, "stated", "open")) + " |")
        if args.grid and name.startswith("conditional"):
            import torchvision

            torchvision.utils.save_image(images[:32], args.grid, nrow=8)


if __name__ == "__main__":
    main()
