"""Two settings of a fit config, training steps side by side: the step-time ratio of B to A.

    python benchmarks/step_ab.py --config configs/smartwatch/quickstart.yaml \\
        --a="--data.init_args.decode_cached_images=true" --b="--data.init_args.decode_cached_images=false"
    python benchmarks/step_ab.py --a="--model.init_args.optimizer=adamw" --b="--model.init_args.optimizer=muon"

Short fits of the config with A's and then B's command-line overrides, in turn, `rounds` times
each, for the quickstart's two task mixes (generation only, then the mixed phase). Prints the
median step (data loading included, after 10 warm-up steps) of each and the ratio B / A, with the
CPU model. Eager unless --compile: no compile time inside the timed steps.
"""

from __future__ import annotations

import argparse
import shlex
import statistics

from fit_timing import fit_step_seconds  # benchmarks/fit_timing.py

from lightning_vlm.precision import cpu_name

PHASES = {
    "generation only": "generation_only",
    "mixed": "{vqa: 0.55, caption: 0.21, generation: 0.24}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/smartwatch/quickstart.yaml")
    parser.add_argument("--a", required=True, help="setting A: CLI overrides as one argument (--a=\"...\": they start with dashes)")
    parser.add_argument("--b", required=True, help="setting B")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per fit (after 10 warm-up steps)")
    parser.add_argument("--rounds", type=int, default=2, help="fits per setting and phase, A and B in turn")
    parser.add_argument("--compile", action="store_true", help="keep the config's compile_backbone (default: eager)")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()} | config {args.config} | {args.steps} steps per fit | A: {args.a} | B: {args.b}")
    for phase, weights in PHASES.items():
        seconds = {"A": [], "B": []}
        for _ in range(args.rounds):
            for name, overrides in (("A", args.a), ("B", args.b)):
                extra = [f"--data.init_args.task_weights={weights}", *shlex.split(overrides)]
                if not args.compile:
                    extra.append("--model.init_args.compile_backbone=false")
                seconds[name].append(fit_step_seconds(args.config, extra, args.steps))
        a, b = statistics.median(seconds["A"]), statistics.median(seconds["B"])
        print(f"{phase}: A {a * 1e3:.0f} ms/step {[round(s * 1e3) for s in seconds['A']]} | "
              f"B {b * 1e3:.0f} ms/step {[round(s * 1e3) for s in seconds['B']]} | B / A {b / a:.2f}", flush=True)


if __name__ == "__main__":
    main()
