"""How close a training step comes to this CPU's own matmul speed at the model's shapes.

    python benchmarks/step_efficiency.py --config configs/smartwatch/quickstart.yaml [--config more.yaml] [--steps 8] [--variants config,split]

Builds the model and data of a `lightning-vlm fit` config, takes real training batches,
and for bf16 autocast (the shipped precision) and fp32 in one process prints:
  - the FLOPs of one step (forward + backward, `torch.utils.flop_counter.FlopCounterMode`),
  - the median warm step time with the batch already in memory, and with data loading,
  - every matmul of the step (shape, dtype) timed alone, and so the rate this CPU reaches
    on exactly those matmuls,
  - step FLOP/s / own-shape matmul FLOP/s: the fraction of the possible that the step reaches,
  - tokens/s and the padding fraction of the slots the step computes (variant split: per length group),
  - the CPU model and whether it has AMX.
Remaining cost beyond the matmuls is elementwise work, attention kernels, casts and Python.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from lightning_vlm.models.length_groups import length_groups, row_lengths

MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


def cpu_model() -> tuple[str, bool]:
    """(the CPU's model name, whether it has AMX), printed beside every speed figure."""
    from lightning_vlm.models.backbone import cpu_has_amx
    from lightning_vlm.precision import cpu_name

    return cpu_name(), cpu_has_amx()


class MatmulShapes(TorchDispatchMode):
    """Records (op, operand shapes, dtype) of every matmul run under it."""

    def __init__(self):
        super().__init__()
        self.seen: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            self.seen[(func, tuple(tuple(t.shape) for t in tensors), tensors[-1].dtype)] += 1
        return func(*args, **(kwargs or {}))


def matmul_flops(func, shapes) -> int:
    if func is torch.ops.aten.bmm.default:
        (b, m, k), (_, _, n) = shapes
        return 2 * b * m * k * n
    (m, k), (_, n) = shapes[-2], shapes[-1]
    return 2 * m * k * n


def time_matmuls(seen: Counter, repeats: int = 5) -> tuple[float, int]:
    """Seconds and FLOPs of all recorded matmuls, each shape timed alone (median of `repeats`)."""
    total_s, total_flops = 0.0, 0
    for (func, shapes, dtype), count in seen.items():
        args = [torch.randn(s, dtype=dtype) for s in shapes]
        func(*args)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            func(*args)
            times.append(time.perf_counter() - t0)
        total_s += statistics.median(times) * count
        total_flops += matmul_flops(func, shapes) * count
    return total_s, total_flops


def build(configs: list[str]):
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    from lightning_vlm.registry import import_all

    import_all()
    args = [a for c in configs for a in ("--config", c)] + ["--trainer.logger", "false"]
    cli = LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       run=False, args=args, save_config_callback=None)
    return cli.model, cli.datamodule, cli.trainer


def computed_slots(vlm, batch) -> int:
    """Sequence slots the step computes: the batch's padded area, or its length groups' areas when split."""
    if not vlm.split_by_length:
        return batch["attention_mask"].numel()
    lengths = row_lengths(batch)
    return sum(len(rows) * int(lengths[rows].max()) for rows in length_groups(lengths))


def run(model, loader_iter, optimizer, dtype, steps: int):
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    batch = next(loader_iter)

    def step(b):
        with autocast:
            loss = model.model(b)["total"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for _ in range(2):  # warm-up (and compilation, where on)
        step(batch)
    warmup = time.perf_counter() - t0
    counter = FlopCounterMode(display=False)
    shapes = MatmulShapes()
    with counter, shapes:
        step(batch)
    flops = counter.get_total_flops()
    compute, loaded, tokens, padding = [], [], [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        nxt = next(loader_iter)
        t1 = time.perf_counter()
        step(batch)
        t2 = time.perf_counter()
        compute.append(t2 - t1)
        loaded.append(t2 - t0)
        real = batch["attention_mask"].sum().item()
        tokens.append(real)
        padding.append(1 - real / computed_slots(model.model, batch))
        batch = nxt
    return (flops, shapes.seen, statistics.median(compute), statistics.median(loaded), statistics.mean(tokens),
            statistics.mean(padding), warmup)


VARIANTS = {
    # name: (upcast bf16 attention on CPUs without AMX, length_buckets, compile_backbone, split_by_length)
    "plain": (False, 0, False, False),
    "attention-fp32": (True, 0, False, False),
    "buckets": (True, 8, False, False),
    "compiled": (True, 8, True, False),
    "split": (True, 0, False, True),  # the config's batches, each run as a short and a long group
    "split-compiled": (True, 0, True, True),  # the same, the backbone compiled (dynamic lengths: one graph for both groups)
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--variants", default="config",
                    help=f"comma-separated: config (as the config says) or any of {', '.join(VARIANTS)}, each measured in turn")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, dm, _ = build(args.config)
    dm.setup("fit")
    if model.hparams.get("use_token_cache") and hasattr(model, "open_token_caches"):
        model.open_token_caches(dm.data_dir)  # as the fit's setup does: cached encoder tokens when present
    model.train()
    name, amx = cpu_model()
    print(f"CPU: {name} | AMX: {'yes' if amx else 'no'} | torch {torch.__version__} | threads {torch.get_num_threads()}")
    trainable = [p for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.95), foreach=True)
    from lightning_vlm.models import backbone as backbone_module

    has_amx = backbone_module.cpu_has_amx
    as_configured = (True, dm.hparams.length_buckets, model.model._train_backbone is not None, model.model.split_by_length)
    for variant in args.variants.split(","):
        upcast, buckets, compiled, split = as_configured if variant == "config" else VARIANTS[variant]
        backbone_module.cpu_has_amx = has_amx if upcast else (lambda: True)
        dm.hparams.length_buckets = buckets
        model.model.split_by_length = split
        model.model._train_backbone = None  # eager, unless this variant compiles
        if compiled:
            model.model.compile_backbone()
        for label in args.dtypes.split(","):
            dtype = torch.bfloat16 if label == "bf16" else torch.float32
            loader = iter(dm.train_dataloader())
            flops, seen, step_s, loaded_s, tokens, padding, warmup = run(model, loader, optimizer, dtype, args.steps)
            mm_s, mm_flops = time_matmuls(seen)
            step_rate, mm_rate = flops / step_s, mm_flops / mm_s
            print(f"{variant} [{label}] step {flops / 1e9:.1f} GFLOP | step {step_s * 1e3:.0f} ms "
                  f"(with data loading {loaded_s * 1e3:.0f} ms) | {step_rate / 1e9:.0f} GFLOP/s | own-shape matmuls alone "
                  f"{mm_s * 1e3:.0f} ms, {mm_rate / 1e9:.0f} GFLOP/s | ratio {step_rate / mm_rate:.2f} | "
                  f"{tokens / step_s:.0f} tokens/s | padding {padding:.1%} | 2 warm-up steps {warmup:.1f} s", flush=True)
    backbone_module.cpu_has_amx = has_amx


if __name__ == "__main__":
    main()
