"""Linear probes: can an attribute be read off a trained VLM's image features by a linear map?

The study's transfer question ("is weather missing from the model, or only from what the
LLM learned to say?") is answered by probing the adapter: fit a multinomial logistic
regression from a checkpoint's projector outputs to one watch attribute on fresh renders,
and score it on other renders. High probe accuracy with chance-level VQA means the
information reaches the backbone and the missing piece is learned there.

    lightning-vlm probe --ckpt runs/vq_vq/last.ckpt --attribute weather --attribute weather_position

Where to probe (`where`): `encoder` (the frozen encoder's tokens), `adapter` (after the
affine map and the input projector: what the backbone reads) or `output` (the output
projector's embeddings of the same image, slot embeddings included). Token features
are flattened (`pool: flatten`, keeps which token says what: needed for corners) or
averaged (`pool: mean`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models import checkpoints
from .reader import HEADS
from .render_data import RenderedWatches

WHERE = ("encoder", "adapter", "output")
POOLS = ("flatten", "mean")


def load_vlm(path: str | Path, map_location: str = "cpu"):
    """The `models.VLM` of a trained checkpoint (`models.checkpoints.load_vlm`), in eval mode."""
    return checkpoints.load_vlm(path, map_location).model.eval()


@torch.no_grad()
def image_features(model, images: torch.Tensor, where: str = "adapter", pool: str = "flatten") -> torch.Tensor:
    """[B, 3, H, W] -> [B, F] float32: the image's tokens at `where`, flattened or averaged."""
    if where not in WHERE or pool not in POOLS:
        raise ValueError(f"where must be one of {WHERE} and pool one of {POOLS}, got {where!r}, {pool!r}")
    feats, _ = model.encode_images("output" if where == "output" else "input", images.to(model.device))
    if where == "adapter":
        feats = model.embed_input_images(feats)
    elif where == "output":
        feats = model.embed_output_tokens(feats)
    feats = feats.float()
    return feats.flatten(1) if pool == "flatten" else feats.mean(1)


@dataclass
class ProbeResult:
    attribute: str
    where: str
    pool: str
    train_accuracy: float
    test_accuracy: float
    chance: float  # the most frequent test class's share: what a constant guess scores
    train_samples: int
    test_samples: int


def fit_linear_probe(x_train, y_train, x_test, y_test, num_classes: int, l2: float = 1e-3, steps: int = 100):
    """Multinomial logistic regression (full-batch L-BFGS on standardised features, L2 penalty `l2`).

    Returns (train accuracy, test accuracy)."""
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    linear = torch.nn.Linear(x_train.shape[1], num_classes)
    torch.nn.init.zeros_(linear.weight)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(linear(x_train), y_train) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        acc = lambda x, y: float((linear(x).argmax(1) == y).float().mean())  # noqa: E731
        return acc(x_train, y_train), acc(x_test, y_test)


def render_split(split: str, n: int, image_size: int, seed: int, batch: int = 128):
    """(images [n, 3, S, S], labels {attribute: [n]}) of fresh renders from one seed stream."""
    data = RenderedWatches(seed, split, n, image_size)
    items = [data[i] for i in range(n)]
    images = torch.stack([it["images"] for it in items])
    labels = {name: torch.tensor([it[name] for it in items]) for name in HEADS}
    return images, labels


@torch.no_grad()
def probe_attributes(model, attributes: list[str], where: str = "adapter", pool: str = "flatten",
                     train_samples: int = 2000, test_samples: int = 500, seed: int = 1234, l2: float = 1e-3) -> list[ProbeResult]:
    """Fits one probe per attribute on `train_samples` renders and scores it on `test_samples` others."""
    unknown = [a for a in attributes if a not in HEADS]
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown}; known: {', '.join(HEADS)}")
    size = model.input_encoder.image_size
    feats, labels = {}, {}
    for split, n in (("train", train_samples), ("test", test_samples)):
        images, labels[split] = render_split(split, n, size, seed)
        feats[split] = torch.cat([image_features(model, chunk, where, pool).cpu() for chunk in images.split(128)])
    results = []
    for name in attributes:
        y_train, y_test = labels["train"][name], labels["test"][name]
        train_acc, test_acc = fit_linear_probe(feats["train"], y_train, feats["test"], y_test, HEADS[name], l2=l2)
        chance = float(torch.bincount(y_test, minlength=HEADS[name]).max()) / len(y_test)
        results.append(ProbeResult(name, where, pool, train_acc, test_acc, chance, train_samples, test_samples))
    return results


def probe_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-vlm probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a VLM checkpoint written by `lightning-vlm fit`")
    parser.add_argument("--attribute", action="append", choices=list(HEADS), help="repeatable (default: weather and both corners)")
    parser.add_argument("--where", choices=WHERE, default="adapter")
    parser.add_argument("--pool", choices=POOLS, default="flatten")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--test-samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1234, help="seed of the render streams")
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--out", help="write the results as JSON here (default: beside the checkpoint)")
    args = parser.parse_args(argv)
    try:
        model = load_vlm(args.ckpt)
        results = probe_attributes(model, args.attribute or ["weather", "weather_position", "battery_position"], args.where,
                                   args.pool, args.train_samples, args.test_samples, args.seed, args.l2)
    except (FileNotFoundError, ValueError, ImportError) as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 2
    print(f"{'attribute':<18} {'where':<8} {'pool':<8} {'train':>6} {'test':>6} {'chance':>6}")
    for r in results:
        print(f"{r.attribute:<18} {r.where:<8} {r.pool:<8} {r.train_accuracy:6.3f} {r.test_accuracy:6.3f} {r.chance:6.3f}")
    out = Path(args.out) if args.out else Path(args.ckpt).with_name(f"{Path(args.ckpt).stem}.probe_{args.where}_{args.pool}.json")
    out.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    print(f"probe results written to {out}")
    return 0
