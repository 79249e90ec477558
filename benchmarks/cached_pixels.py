"""Training steps with and without decoding PNGs that the token cache makes unnecessary.

    python benchmarks/cached_pixels.py --config configs/smartwatch/quickstart.yaml [--steps 40] [--rounds 2]

A model that reads every training image's tokens from a token cache never looks at the pixels, so
the loader skips the PNG decode (`VLMDataModule.images_cached`; `data.decode_cached_images: true`
turns the decode back on). On 2 cores the loader worker's decoding is taken from the model's
threads. This prints the median step (data loading included) of short fits of the config, the
decode on and off in turn, `rounds` times each, for the generation-only phase and the mixed phase
(the quickstart's two task mixes), then the ratio off / on, with the CPU model.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--steps", type=int, default=40, help="timed steps per fit (after 10 warm-up steps)")
    parser.add_argument("--rounds", type=int, default=2, help="fits per setting and phase, alternating")
    parser.add_argument("--compile", action="store_true", help="keep the config's compile_backbone (default: eager, no compile time)")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()} | config {args.config} | {args.steps} steps per fit")
    for phase, weights in PHASES.items():
        seconds = {True: [], False: []}
        for _ in range(args.rounds):
            for decode in (True, False):
                overrides = [f"--data.init_args.task_weights={weights}", f"--data.init_args.decode_cached_images={decode}"]
                if not args.compile:
                    overrides.append("--model.init_args.compile_backbone=false")
                seconds[decode].append(fit_step_seconds(args.config, overrides, args.steps))
        on, off = statistics.median(seconds[True]), statistics.median(seconds[False])
        print(f"{phase}: PNGs decoded {on * 1e3:.0f} ms/step {[round(s * 1e3) for s in seconds[True]]} | "
              f"not decoded {off * 1e3:.0f} ms/step {[round(s * 1e3) for s in seconds[False]]} | ratio {off / on:.2f}", flush=True)


if __name__ == "__main__":
    main()
