"""Learning curves of VLM fits scored on val (`configs/eval/val_scores.yaml`): steps and minutes to each bar.

    python benchmarks/calibration.py runs/calib/*        # one row per run folder holding val_scores.jsonl

The bars are issue 22's, on val: VQA weather, weather corner and battery corner >= 0.9 and
generated weather >= 0.8 (by the reader). Minutes are training minutes (validation left out), read
from the run's own clock; the CPU model is printed beside them, as it changes between machines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lightning_vlm.precision import cpu_name

BARS = {"vqa/weather": 0.9, "vqa/weather_position": 0.9, "vqa/battery_position": 0.9, "gen/weather": 0.8}
ALSO = ["gen/weather_position", "gen/battery_position", "gen/time", "gen/battery", "vqa/total", "vqa/time", "vqa/battery"]


def curve(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "val_scores.jsonl").read_text().splitlines() if line.strip()]


def first_reached(records: list[dict], metric: str, bar: float) -> dict | None:
    return next((r for r in records if r["metrics"].get(metric, -1) >= bar), None)


def all_bars(records: list[dict]) -> dict | None:
    return next((r for r in records if all(r["metrics"].get(m, -1) >= b for m, b in BARS.items())), None)


def cell(r: dict | None) -> str:
    return "-" if r is None else f"{r['step']} / {r['train_seconds'] / 60:.1f}"


def main(runs: list[str]) -> None:
    print(f"CPU: {cpu_name()}; cells: step / training minutes at the first validation at or above the bar ('-': never)")
    head = ["run", "s/step"] + [f"{m} >= {b}" for m, b in BARS.items()] + ["all bars", "last step"] + [m.replace("/", " ") for m in list(BARS) + ALSO]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for run in map(Path, runs):
        if not (run / "val_scores.jsonl").is_file():
            continue
        records = curve(run)
        last = records[-1]
        per_step = last["train_seconds"] / max(1, last["step"])
        cells = [run.name, f"{per_step:.3f}"] + [cell(first_reached(records, m, b)) for m, b in BARS.items()]
        cells += [cell(all_bars(records)), str(last["step"])] + [f"{last['metrics'].get(m, float('nan')):.3f}" for m in list(BARS) + ALSO]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
