"""`lightning-vlm study report DIR`: results.csv, report.md and plots from a study's records.

DIR is a study folder (`studies/<name>`: `records/*.json`, `study.yaml`, `chance.json`) or, for
runs not recorded yet, a `study run --out` folder of run folders. Everything written is a
function of the records, the spec and the chance levels, so a report regenerates byte for byte.
"""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from pathlib import Path

from .records import load_records, records_from_runs
from .runner import duration
from .spec import Spec
from .stats import Summary, mean_ci, paired_differences, select_fraction, slope, verdict

COLUMNS = ("run", "cell", "regime", "misalign", "variant", "seed", "scale", "fraction", "step", "samples_seen",
           "samples_vqa", "samples_caption", "samples_generation", "samples_counted", "split", "metric", "value")
TASKS = ("vqa", "caption", "generation")


def measured_tasks(metric: str) -> tuple[str, ...]:
    """The training tasks whose samples a metric measures: generation for gen/*, understanding otherwise."""
    return ("generation",) if metric.startswith("gen/") else ("vqa", "caption")


def collect_rows(records: list[dict]) -> list[dict]:
    """One tidy row per (run, fraction, split, metric); linear probes come as split "probe", metric
    probe/<where>_<pool>/<attribute> (test accuracy). Samples are the counted ones when the run
    counted them (FractionCheckpoint), else the planned share of its epochs (`samples_counted` false)."""
    rows = []
    for rec in records:
        for frac in sorted(rec["fractions"].values(), key=lambda f: f["fraction"]):
            counted = frac.get("samples")
            if counted:
                per_task = {t: int(counted.get(t, 0)) for t in TASKS}
                total = sum(per_task.values())
            else:
                per_task, total = {t: None for t in TASKS}, int(round(frac["fraction"] * rec["epoch_samples"] * rec["epochs"]))
            base = {"run": rec["run"], "cell": rec["cell"], "regime": rec["regime"], "misalign": rec["misalign"],
                    "variant": rec["variant"], "seed": rec["seed"], "scale": rec.get("scale"), "fraction": frac["fraction"],
                    "step": frac.get("step"), "samples_seen": total, **{f"samples_{t}": per_task[t] for t in TASKS},
                    "samples_counted": bool(counted)}
            for split, metrics in sorted(frac["metrics"].items()):
                rows += [{**base, "split": split, "metric": name, "value": float(value)} for name, value in sorted(metrics.items())]
            for kind, results in sorted((frac.get("probes") or {}).items()):
                rows += [{**base, "split": "probe", "metric": f"probe/{kind}/{r['attribute']}", "value": float(r["test_accuracy"])}
                         for r in results]
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
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


def task_samples(rows: list[dict], group: tuple, regime: str, metric: str) -> dict[float, float]:
    """{fraction: mean over seeds of the counted training samples of the tasks `metric` measures}."""
    per = defaultdict(dict)
    for r in rows:
        if (r["cell"], r["misalign"], r["variant"]) == group and r["regime"] == regime and r["metric"] == metric:
            n = [r[f"samples_{t}"] for t in measured_tasks(metric)]
            per[r["fraction"]][r["seed"]] = sum(n) if None not in n else r["samples_seen"]
    return {f: sum(by_seed.values()) / len(by_seed) for f, by_seed in per.items()}


def fmt(s: Summary) -> str:
    if s.n == 0:
        return "-"
    return f"{s.mean:.3f} (n=1)" if s.n == 1 else f"{s.mean:.3f} ± {s.half_width:.3f} (n={s.n})"


def baseline_text(metric: str, chance: dict) -> str:
    c = chance.get(metric)
    if not c:
        return "no chance level computed"
    return f"chance {c['chance']:.3f}, best constant {c['best_constant']:.3f}"


def val_selected(val: dict, test: dict, better: str) -> dict:
    """Per seed: (fraction, test value) at the checkpoint whose val value is best in the metric's own direction."""
    out = {}
    for seed in sorted({s for by_seed in val.values() for s in by_seed}):
        on_val = {f: by_seed[seed] for f, by_seed in val.items() if seed in by_seed}
        if on_val:
            best = select_fraction(on_val, better)
            if seed in test.get(best, {}):
                out[seed] = (best, test[best][seed])
    return out


def comparison_lines(c, g: dict, spec: Spec, chance: dict, samples: dict) -> tuple[list[str], str | None]:
    """The comparison's table and verdicts; returns (lines, verdict at the final fraction)."""
    test, val = g.get("test", {}).get(c.metric, {}), g.get("val", {}).get(c.metric, {})
    a, b = test.get(c.a, {}), test.get(c.b, {})
    fractions = sorted(set(a) & set(b))
    if not fractions:
        return [], None
    match = "matched steps" if spec.regimes[c.b].match == "steps" else "matched samples"
    lines = [f"#### {c.a} − {c.b}: {c.metric} ({match}; claim: {c.a} {c.expect}; {baseline_text(c.metric, chance)})", "",
             f"| fraction | {c.a} | {c.b} | task samples {c.a} / {c.b} (counted) | mean difference | 95 % CI | seeds |",
             "|---|---|---|---|---|---|---|"]
    diffs = {}
    for f in fractions:
        d = diffs[f] = mean_ci(paired_differences(a[f], b[f]))
        ci = "-" if math.isnan(d.lo) else f"[{d.lo:+.3f}, {d.hi:+.3f}]"
        n_a, n_b = samples[c.a].get(f), samples[c.b].get(f)
        counted = f"{n_a:,.0f} / {n_b:,.0f}" if n_a is not None and n_b is not None else "-"
        mean = "-" if math.isnan(d.mean) else f"{d.mean:+.3f}"  # no seed holds both regimes here
        lines.append(f"| {f:.2f} | {fmt(mean_ci(a[f].values()))} | {fmt(mean_ci(b[f].values()))} | {counted} | {mean} | {ci} | {d.n} |")
    last = max(fractions)
    d = diffs[last]
    lines += ["", f"**Verdict at the final fraction ({last:.2f}): {verdict(d, c.expect)}** (difference {d.mean:+.3f}, {d.n} paired seeds)."]
    better = spec.better(c.metric)
    sel_a, sel_b = val_selected(val.get(c.a, {}), a, better), val_selected(val.get(c.b, {}), b, better)
    seeds = sorted(set(sel_a) & set(sel_b))
    if seeds:
        s = mean_ci([sel_a[k][1] - sel_b[k][1] for k in seeds])
        ci = "no CI" if math.isnan(s.lo) else f"CI [{s.lo:+.3f}, {s.hi:+.3f}]"
        picked = ", ".join(f"s{k}: {sel_a[k][0]:.2f} / {sel_b[k][0]:.2f}" for k in seeds)
        lines.append(f"At each run's val-selected checkpoint ({better} is better; fractions {c.a} / {c.b}: {picked}): "
                     f"{s.mean:+.3f}, {ci}, {s.n} seeds: **{verdict(s, c.expect)}**.")
    return lines + [""], verdict(d, c.expect)


def last_fraction_values(by_fraction: dict) -> list[float]:
    """{fraction: {seed: value}} -> the values of the last fraction probed (none for a regime never probed)."""
    return list(by_fraction[max(by_fraction)].values()) if by_fraction else []


def probe_lines(probes: dict, regime_order: list[str]) -> list[str]:
    """Linear probes on the final checkpoints: test accuracy per regime and attribute, mean ± CI over seeds."""
    if not probes:
        return []
    lines = ["#### Linear probes on the final checkpoint (test accuracy of a linear map from the image features)", "",
             "| probe | attribute | " + " | ".join(r for r in regime_order if any(r in v for v in probes.values())) + " |"]
    shown = [r for r in regime_order if any(r in v for v in probes.values())]
    lines.append("|---|---|" + "---|" * len(shown))
    for metric in sorted(probes):
        _, kind, attribute = metric.split("/", 2)
        cells = [fmt(mean_ci(last_fraction_values(probes[metric].get(r, {})))) for r in shown]
        lines.append(f"| {kind} | {attribute} | " + " | ".join(cells) + " |")
    return lines + [""]


def trend_lines(t, values: dict, spec: Spec) -> tuple[list[str], list[str]]:
    """Slope of the paired a - b difference (final fraction, test) against misalignment, fitted per seed:
    the report's lines and one verdict per cell."""
    by_cell = defaultdict(dict)
    for (cell, misalign, variant), g in values.items():
        if misalign is None:
            continue
        test = g.get("test", {}).get(t.metric, {})
        a, b = test.get(t.a, {}), test.get(t.b, {})
        common = sorted(set(a) & set(b))
        if common:
            last = common[-1]
            by_cell[(cell, variant)][misalign] = {k: a[last][k] - b[last][k] for k in set(a[last]) & set(b[last])}
    lines, verdicts = [], []
    for (cell, variant), by_level in sorted(by_cell.items()):
        levels = sorted(by_level)
        if len(levels) < 2:
            continue
        seeds = sorted(set.intersection(*(set(by_level[m]) for m in levels)))
        slopes = [slope(levels, [by_level[m][s] for m in levels]) for s in seeds]
        s = mean_ci(slopes)
        ci = "no CI" if math.isnan(s.lo) else f"CI [{s.lo:+.3f}, {s.hi:+.3f}]"
        lines += [f"#### Trend: {t.a} − {t.b} on {t.metric} against misalignment ({group_label((cell, None, variant))}; claim: slope {t.expect})", "",
                  "| misalignment | mean difference | seeds |", "|---|---|---|"]
        lines += [f"| {m:g} | {mean_ci(by_level[m].values()).mean:+.3f} | {len(by_level[m])} |" for m in levels]
        verdicts.append(verdict(s, t.expect))
        lines += ["", f"Slope per unit of misalignment, fitted per seed over {len(levels)} levels: {s.mean:+.3f}, {ci}, {s.n} seeds: "
                  f"**{verdicts[-1]}**.", ""]
    return lines, verdicts


def header_lines(records: list[dict], stale: list[str], spec: Spec | None, folder: Path) -> list[str]:
    lines = [f"# Study {spec.name if spec else folder.name}", ""]
    if spec and spec.claim:
        lines += [f"Claim: {spec.claim}", ""]
    scales = sorted({str(r.get("scale")) for r in records})
    commits = sorted({(r.get("commit") or "unknown")[:10] + (" (uncommitted changes)" if r.get("dirty") else "") for r in records})
    cpus = sorted({f"{r.get('cpu') or 'unknown CPU'}, {r.get('precision') or '?'}" for r in records})
    fit = sum((r.get("seconds") or {}).get("fit", 0) for r in records)
    ev = sum((r.get("seconds") or {}).get("eval_in_fit", 0) + (r.get("seconds") or {}).get("eval_processes", 0) for r in records)
    lines += [f"{len(records)} run records (scale {', '.join(scales) or '-'}), from commit(s) {', '.join(commits) or '-'}; "
              f"machines: {'; '.join(cpus) or '-'}. Training {duration(fit)}, evaluation {duration(ev)}"
              + (f" ({ev / (fit + ev):.0%} of the total)." if fit + ev else "."), "",
              "Cells show the mean ± 95 % CI half-width over seeds (Student t), n = seeds. Samples are the training samples "
              "each run counted up to that checkpoint; test is scored at the final fraction and at val-selected ones, val at "
              "every fraction (it picks the checkpoints).", ""]
    if stale:
        lines += [f"**Stale records, left out** (recorded with other commands or configs than the spec's current ones; "
                  f"`study run --rerun-stale` redoes them): {', '.join(stale)}.", ""]
    return lines


def agreement(counts: dict, total: int, noun: str = "comparison") -> str:
    """Whether this scale agrees with the paper, comparison by comparison (one word would hide a split)."""
    replicated, contradicted, alike = (counts.get(k, 0) for k in ("replicates", "contradicts", "no difference"))
    if total and replicated == total:
        return f"Yes: every {noun} replicates the paper's claim at this scale."
    if not replicated and not contradicted and not alike:
        return f"Not yet: no {noun} decides at this scale."
    undecided = total - replicated - contradicted - alike
    parts = [f"{n} {what}" for n, what in ((replicated, "replicate the paper's claim"), (contradicted, "contradict it" if replicated else "contradict the paper's claim"),
                                            (alike, "show no difference at all"), (undecided, "do not decide at this scale")) if n]
    listed = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    return f"{'In part' if replicated else 'No'}: of {total} {noun}{'s' if total != 1 else ''}, {listed}."


def tally(verdicts: list[str]) -> tuple[dict, str]:
    """{verdict: count} and its text ("3 inconclusive at this scale, 1 replicates")."""
    counts = defaultdict(int)
    for v in verdicts:
        counts[v.split(" (")[0]] += 1
    return counts, ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no verdict yet"


def conclusion_lines(spec: Spec | None, verdicts: list[str], trend_verdicts: list[str] = ()) -> list[str]:
    """The verdicts tallied against the paper. Where the spec names trends, the claim is the trend: the
    comparisons within one group say whether mixing helps there, not how alignment changes it."""
    if not spec:
        return []
    counts, shown = tally(verdicts)
    lines = ["## Conclusion", ""]
    if spec.conclusion.get("paper"):
        lines.append(f"*The paper's claim.* {spec.conclusion['paper']}")
    if spec.trends:
        trend_counts, trend_shown = tally(list(trend_verdicts))
        n = len(trend_verdicts)
        lines.append(f"*What this scale shows.* Trend verdicts: {trend_shown} (of {n} trend{'s' if n != 1 else ''}). "
                     f"Verdicts at the final fraction within each group: {shown} (of {len(verdicts)} comparisons).")
        lines.append(f"*Does it agree?* {agreement(trend_counts, n, 'trend')} The claim is the trend; a comparison within one "
                     "group says whether mixing helps there, not whether alignment changes it.")
    else:
        lines.append(f"*What this scale shows.* Verdicts at the final fraction: {shown} (of {len(verdicts)} comparisons).")
        lines.append(f"*Does it agree?* {agreement(counts, len(verdicts))}")
    if spec.conclusion.get("gpu"):
        lines.append(f"*What the GPU scale would add.* {spec.conclusion['gpu']}")
    return lines + [""]


def write_report(folder: str | Path, spec: Spec | None = None, chance: dict | None = None,
                 expected_hashes: dict[str, str] | None = None) -> dict[str, Path]:
    """Writes results.csv, report.md and plots/*.png into `folder`; returns their paths.

    `expected_hashes` ({run: command hash} of the spec's current commands): records with another
    hash are listed as stale and left out of the numbers."""
    folder = Path(folder)
    records = load_records(folder) if (folder / "records").is_dir() else records_from_runs(folder)
    stale = sorted(r["run"] for r in records if expected_hashes and r.get("command_hash") and r["run"] in expected_hashes
                   and r["command_hash"] != expected_hashes[r["run"]])
    records = [r for r in records if r["run"] not in stale]
    rows = collect_rows(records)
    write_csv(rows, folder / "results.csv")
    values = index(rows)
    found = sorted({r["metric"] for r in rows})
    wanted = list(dict.fromkeys((spec.metrics + [c.metric for c in spec.comparisons]) if spec else ["vqa/total"]))
    metrics = [m for m in wanted if m in found] or [m for m in ("vqa/total",) if m in found]
    chance = chance or {}
    regime_order = list(spec.regimes) if spec else sorted({r["regime"] for r in rows})
    lines = header_lines(records, stale, spec, folder)
    if not rows:
        lines.append("No finished evaluation yet.")
    pngs, verdicts = [], []
    for group in sorted(values, key=lambda g: (g[0], -1 if g[1] is None else g[1], g[2])):
        g = values[group]
        lines += [f"## {group_label(group)}", ""]
        head = [f"{m} ({baseline_text(m, chance)})" if m in chance else m for m in metrics]
        lines += ["| regime | split | fraction | samples (counted) | " + " | ".join(head) + " |", "|---" * (4 + len(metrics)) + "|"]
        for regime in [r for r in regime_order if any(r in g.get(s, {}).get(m, {}) for s in ("test", "val") for m in metrics)]:
            for split in ("test", "val"):
                fractions = sorted({f for m in metrics for f in g.get(split, {}).get(m, {}).get(regime, {})})
                for f in fractions:
                    per_seed = {r["seed"]: r["samples_seen"] for r in rows if (r["cell"], r["misalign"], r["variant"]) == group
                                and r["regime"] == regime and r["fraction"] == f and r["split"] == split}  # any metric the run has
                    seen = mean_ci(per_seed.values())
                    cells = [fmt(mean_ci(g.get(split, {}).get(m, {}).get(regime, {}).get(f, {}).values())) for m in metrics]
                    lines.append(f"| {regime} | {split} | {f:.2f} | {seen.mean:,.0f} | " + " | ".join(cells) + " |")
        lines.append("")
        for c in spec.comparisons if spec else []:
            samples = {r: task_samples(rows, group, r, c.metric) for r in (c.a, c.b)}
            block, final = comparison_lines(c, g, spec, chance, samples)
            verdicts += [final] if final else []
            lines += block
        lines += probe_lines(g.get("probe", {}), regime_order)
        for m in metrics:
            on = {sp: {f for v in g.get(sp, {}).get(m, {}).values() for f in v} for sp in ("test", "val")}
            split = "test" if on["test"] and on["test"] >= on["val"] else "val"  # curves where every fraction was scored
            series = g.get(split, {}).get(m)
            if not series:
                continue
            png = folder / "plots" / f"{slug(group_label(group))}__{slug(m)}.png"
            xs = {r: task_samples(rows, group, r, m) for r in series}
            if _plot(png, f"{group_label(group)}: {m} ({split})", series, regime_order, chance.get(m), xs, m):
                pngs.append(png)
                lines += [f"![{group_label(group)} {m}](plots/{png.name})", ""]
    trend_verdicts = []
    for t in spec.trends if spec else []:
        block, found_verdicts = trend_lines(t, values, spec)
        lines += block
        trend_verdicts += found_verdicts
    lines += conclusion_lines(spec, verdicts, trend_verdicts)
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return {"csv": folder / "results.csv", "md": folder / "report.md", "png": pngs}


def _plot(path: Path, title: str, series: dict, order: list[str], chance: dict | None, xs: dict, metric: str) -> bool:
    try:
        from .plots import scaling_plot
    except ImportError:  # matplotlib missing: tables and CSV still come out
        return False
    tasks = " + ".join(measured_tasks(metric))
    scaling_plot(path, title, {r: series[r] for r in order if r in series}, chance and chance.get("chance"),
                 x={r: xs[r] for r in order if r in series}, xlabel=f"training samples of {tasks} (counted)",
                 best_constant=chance and chance.get("best_constant"))
    return True
