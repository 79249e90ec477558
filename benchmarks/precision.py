"""Training-step time of a VLM config in bf16-mixed vs fp32 on this machine, side by side in one run.

    python benchmarks/precision.py --fit-config configs/smartwatch/quickstart.yaml --steps 40
"""

from __future__ import annotations

import argparse

import torch
from fit_timing import fit_step_seconds  # benchmarks/fit_timing.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit-config", default="configs/smartwatch/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per fit (after 10 warm-up steps)")
    args = parser.parse_args()
    print(f"{args.fit_config}, torch threads {torch.get_num_threads()}")
    times = {p: fit_step_seconds(args.fit_config, [f"--trainer.precision={p}"], args.steps) for p in ("32-true", "bf16-mixed")}
    for p, t in times.items():
        print(f"{p:>11}: median training step {1e3 * t:.0f} ms")
    print(f"bf16-mixed speed-up: {times['32-true'] / times['bf16-mixed']:.2f}x")


if __name__ == "__main__":
    main()
