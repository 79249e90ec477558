"""`lightning-vlm study report DIR`: results.csv, report.md and plots from whatever runs finished."""

from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from pathlib import Path

from .layout import EVAL_SPLITS, RunDir
from .spec import Spec
from .stats import Summary, mean_ci, paired_differences, verdict

COLUMNS = ("run", "cell", "regime", "misalign", "variant", "seed", "fraction", "samples_seen", "steps", "split", "metric", "value")


def collect_rows(out: str | Path) -> list[dict]:
    """One tidy row per (run, checkpoint, split, metric) that has a metrics file."""
    rows = []
    for run_json in sorted(Path(out).glob("*/run.json")):
        info, rd = json.loads(run_json.read_text()), RunDir(run_json.parent)
        record = rd.path / "fractions.json"
        steps = json.loads(record.read_text()) if record.is_file() else {}
        for fraction in info["fractions"]:
            step = next((s["step"] for s in steps.values() if abs(s["fraction"] - fraction) < 1e-9), None)
            for split in EVAL_SPLITS:
                path = rd.metrics(fraction, split)
                if not path.is_file():
                    continue
                for name, value in sorted(json.loads(path.read_text()).items()):
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        rows.append({
                            "run": info["run"], "cell": info["cell"], "regime": info["regime"], "misalign": info["misalign"],
                            "variant": info["variant"], "seed": info["seed"], "fraction": fraction,
                            "samples_seen": int(round(fraction * info["epoch_samples"] * info["epochs"])), "steps": step,
                            "split": split, "metric": name.split("/", 1)[1] if name.startswith("test/") else name, "value": float(value),
                        })
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if r[k] is None else r[k]) for k in COLUMNS} for r in rows)


def group_label(group: tuple) -> str:
    cell, misalign, variant = group
    return cell + (f" misalign {misalign:g}" if misalign is not None else "") + (f" [{variant}]" if variant != "default" else "")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def index(rows: list[dict]) -> dict:
    """values[group][split][metric][regime][fraction][seed] = value."""
    tree = lambda: defaultdict(tree)  # noqa: E731
    values = tree()
    for r in rows:
        values[(r["cell"], r["misalign"], r["variant"])][r["split"]][r["metric"]][r["regime"]][r["fraction"]][r["seed"]] = r["value"]
    return values


def fmt(s: Summary) -> str:
    if s.n == 0:
        return "-"
    return f"{s.mean:.3f} (n=1)" if s.n == 1 else f"{s.mean:.3f} ± {s.half_width:.3f} (n={s.n})"


def val_selected(val: dict, test: dict, expect: str) -> dict:
    """Per seed: the test value at the checkpoint whose val value is best (max for `higher`, min for `lower`)."""
    out = {}
    seeds = {seed for by_seed in test.values() for seed in by_seed}
    for seed in seeds:
        both = [(val[f][seed], f) for f in test if seed in test[f] and seed in val.get(f, {})]
        if both:
            _, best = (max if expect == "higher" else min)(both)
            out[seed] = test[best][seed]
    return out


def comparison_lines(c, g: dict, spec: Spec) -> list[str]:
    test, val = g.get("test", {}).get(c.metric, {}), g.get("val", {}).get(c.metric, {})
    a, b = test.get(c.a, {}), test.get(c.b, {})
    fractions = sorted(set(a) & set(b))
    if not fractions:
        return []
    match = "matched steps" if spec.regimes[c.b].match == "steps" else "matched samples"
    lines = [f"#### {c.a} − {c.b}: {c.metric} ({match}; claim: {c.a} {c.expect})", "",
             "| fraction | mean difference | 95 % CI | seeds |", "|---|---|---|---|"]
    diffs = {}
    for f in fractions:
        d = diffs[f] = mean_ci(paired_differences(a[f], b[f]))
        ci = "-" if math.isnan(d.lo) else f"[{d.lo:+.3f}, {d.hi:+.3f}]"
        lines.append(f"| {f:.2f} | {d.mean:+.3f} | {ci} | {d.n} |")
    last = max(f for f in fractions if diffs[f].n > 0) if any(d.n for d in diffs.values()) else fractions[-1]
    d = diffs[last]
    lines += ["", f"**Verdict at fraction {last:.2f}: {verdict(d, c.expect)}** (difference {d.mean:+.3f}, {d.n} paired seeds)"]
    sel_a, sel_b = val_selected(val.get(c.a, {}), a, c.expect), val_selected(val.get(c.b, {}), b, c.expect)
    if sel_a and sel_b:
        s = mean_ci(paired_differences(sel_a, sel_b))
        ci = "no CI" if math.isnan(s.lo) else f"CI [{s.lo:+.3f}, {s.hi:+.3f}]"
        lines.append(f"At each run's val-selected checkpoint: {s.mean:+.3f}, {ci}, {s.n} seeds: {verdict(s, c.expect)}")
    return lines + [""]


def write_report(out: str | Path, spec: Spec | None = None) -> dict[str, Path]:
    """Writes results.csv, report.md and plots/*.png into `out`; returns their paths."""
    out = Path(out)
    rows = collect_rows(out)
    write_csv(rows, out / "results.csv")
    values = index(rows)
    found = sorted({r["metric"] for r in rows})
    wanted = list(dict.fromkeys((spec.metrics + [c.metric for c in spec.comparisons]) if spec else ["vqa/total"]))
    metrics = [m for m in wanted if m in found] or [m for m in ("vqa/total",) if m in found]
    chance = spec.chance if spec else {}
    regime_order = list(spec.regimes) if spec else sorted({r["regime"] for r in rows})
    runs = sorted({r["run"] for r in rows})
    lines = [f"# Study {spec.name if spec else out.name}", ""]
    if spec and spec.claim:
        lines += [f"Claim: {spec.claim}", ""]
    lines += [f"{len(runs)} runs with results in `{out}` (scale {spec.scale if spec else '?'}); cells show the test mean ± "
              "95 % CI half-width over seeds (Student t), n = seeds. Samples = training samples seen (all tasks).", ""]
    if not rows:
        lines.append("No finished evaluation yet.")
    pngs = []
    for group in sorted(values, key=lambda g: (g[0], -1 if g[1] is None else g[1], g[2])):
        g = values[group]
        lines += [f"## {group_label(group)}", ""]
        test = g.get("test", {})
        head = [f"{m} (chance {chance[m]:g})" if m in chance else m for m in metrics]
        lines += ["| regime | fraction | samples | " + " | ".join(head) + " |", "|---" * (3 + len(metrics)) + "|"]
        for regime in [r for r in regime_order if any(r in test.get(m, {}) for m in metrics)]:
            fractions = sorted({f for m in metrics for f in test.get(m, {}).get(regime, {})})
            for f in fractions:
                samples = next((r["samples_seen"] for r in rows if (r["cell"], r["misalign"], r["variant"]) == group
                                and r["regime"] == regime and r["fraction"] == f), "")
                cells = [fmt(mean_ci(test.get(m, {}).get(regime, {}).get(f, {}).values())) for m in metrics]
                lines.append(f"| {regime} | {f:.2f} | {samples} | " + " | ".join(cells) + " |")
        lines.append("")
        for c in spec.comparisons if spec else []:
            lines += comparison_lines(c, g, spec)
        for m in metrics:
            if test.get(m):
                png = out / "plots" / f"{slug(group_label(group))}__{slug(m)}.png"
                if _plot(png, f"{group_label(group)}: {m}", test[m], regime_order, chance.get(m)):
                    pngs.append(png)
                    lines += [f"![{group_label(group)} {m}](plots/{png.name})", ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {"csv": out / "results.csv", "md": out / "report.md", "png": pngs}


def _plot(path: Path, title: str, series: dict, order: list[str], chance: float | None) -> bool:
    try:
        from .plots import scaling_plot
    except ImportError:  # matplotlib missing: tables and CSV still come out
        return False
    scaling_plot(path, title, {r: series[r] for r in order if r in series}, chance)
    return True
