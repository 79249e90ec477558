"""Chance levels of every headline metric: what a model that learnt nothing scores.

    python benchmarks/chance_levels.py [--reader runs/reader/best.ckpt] [--n 1000] [--seed 0]

VQA (reference protocol, `smartwatch.reference`): answers drawn uniformly from the world's values
for each question type, and the best constant answer per type, scored against uniform
truths. Generation (`gen/*`): the attribute reader on images that carry no information
about the request (blank canvas, uniform noise, a random other watch), scored against the
attributes the request asked for. Reports print these beside the metrics.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torchvision.transforms.functional import to_tensor

from lightning_vlm.smartwatch.render import render_watch
from lightning_vlm.smartwatch.tasks import answer_text
from lightning_vlm.smartwatch.world import CORNERS, WEATHERS, sample_attributes
from lightning_vlm.smartwatch.reference import reference_score
from lightning_vlm.smartwatch.scoring import GROUPS, score_attributes


def vqa_chance(rng: np.random.Generator, n: int) -> dict[str, tuple[float, float]]:
    """{question type: (uniform random answer, best constant answer)} under the reference rules."""
    constants = {"time": "06:00:00", "weather": WEATHERS[0], "battery": "50%", "weather_position": CORNERS[0],
                 "battery_position": CORNERS[0]}
    out = {}
    for qtype in GROUPS:
        rand, const = [], []
        for _ in range(n):
            truth, guess = sample_attributes(rng), sample_attributes(rng)
            rand.append(reference_score(answer_text(qtype, guess), answer_text(qtype, truth))[1])
            const.append(reference_score(constants[qtype], answer_text(qtype, truth))[1])
        out[qtype] = (float(np.mean(rand)), float(np.mean(const)))
    return out


@torch.no_grad()
def reader_floor(reader, rng: np.random.Generator, n: int, image_size: int) -> dict[str, dict[str, float]]:
    """{image kind: {group: mean reader score}} of uninformative images against random requests."""
    targets = [sample_attributes(rng).to_dict() for _ in range(n)]
    kinds = {
        "blank": torch.ones(n, 3, image_size, image_size),
        "noise": torch.from_numpy(rng.random((n, 3, image_size, image_size), dtype=np.float32)),
        "other watch": torch.stack([to_tensor(render_watch(sample_attributes(rng), image_size)) for _ in range(n)]),
    }
    out = {}
    for kind, images in kinds.items():
        preds = reader.predict_attributes(images)
        scores = [score_attributes(p, t) for p, t in zip(preds, targets)]
        out[kind] = {g: float(np.mean([s[g] for s in scores])) for g in GROUPS}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reader", default="runs/reader/best.ckpt")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"VQA, reference rules ({args.n} draws per type): uniform random answer / best constant answer")
    for qtype, (rand, const) in vqa_chance(rng, args.n).items():
        print(f"  {qtype:<17} {rand:.3f} / {const:.3f}")
    from lightning_vlm.smartwatch.reader import AttributeReader

    reader = AttributeReader.load(args.reader, map_location="cpu").eval()
    print(f"generation: the reader ({args.reader}) on uninformative images vs random requests ({args.n} each)")
    print(f"  {'image':<12} " + " ".join(f"{g:>17}" for g in GROUPS))
    for kind, scores in reader_floor(reader, rng, args.n, args.image_size).items():
        print(f"  {kind:<12} " + " ".join(f"{scores[g]:>17.3f}" for g in GROUPS))


if __name__ == "__main__":
    main()
