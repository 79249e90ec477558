"""Which attention kernel and dtype is fastest for short causal CPU sequences (forward + backward).

    python benchmarks/attention.py [--preset tiny] [--batch 32] [--lengths 64,128,256,512]

For each sequence length, times `scaled_dot_product_attention` with the math and flash
backends (the memory-efficient one has no CPU kernel), in bf16 and fp32, at the backbone
preset's head shapes (GQA included), and prints milliseconds with the CPU model.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from step_efficiency import cpu_model
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_vlm.models.backbone import BackboneConfig


def time_attention(backend, batch: int, cfg: BackboneConfig, length: int, dtype, repeats: int = 5) -> float:
    gen = torch.Generator().manual_seed(0)
    shape = lambda h: (batch, h, length, cfg.head_dim)  # noqa: E731
    q = torch.randn(shape(cfg.n_heads), generator=gen).to(dtype).requires_grad_()
    k, v = (torch.randn(shape(cfg.n_kv_heads), generator=gen).to(dtype).requires_grad_() for _ in range(2))
    grad = torch.randn(shape(cfg.n_heads), generator=gen).to(dtype)

    def run():
        with sdpa_kernel([backend]):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=cfg.n_kv_heads != cfg.n_heads)
        out.backward(grad)

    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lengths", default="64,128,256,512")
    args = ap.parse_args()
    cfg = BackboneConfig.preset(args.preset)
    name, amx = cpu_model()
    print(f"CPU: {name} | AMX: {'yes' if amx else 'no'} | torch {torch.__version__} | threads {torch.get_num_threads()}")
    print(f"{args.preset}: batch {args.batch}, {cfg.n_heads} heads ({cfg.n_kv_heads} kv) x {cfg.head_dim}; forward + backward, ms")
    print(f"{'length':>6} {'math bf16':>10} {'flash bf16':>11} {'math fp32':>10} {'flash fp32':>11}")
    for length in (int(x) for x in args.lengths.split(",")):
        row = [time_attention(b, args.batch, cfg, length, d) for d in (torch.bfloat16, torch.float32)
               for b in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION)]
        print(f"{length:>6} " + " ".join(f"{t:>10.1f}" for t in row))


if __name__ == "__main__":
    main()
