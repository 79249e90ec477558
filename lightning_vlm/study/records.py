"""Study records: one small JSON per finished run, committed under `studies/<study>/records/`.

Checkpoints and logs stay in the run folder (`runs/`, not kept between sessions); the record
holds what the report needs: what was run (cell, regime, seed, scale and a hash of its
commands), where (commit, CPU, precision), how long it took, the training samples of each
task it actually saw up to each fraction checkpoint, and every metric per fraction and split.
`study run` treats a record whose hash matches the spec's current commands as done;
`study report` reads records only, so the runs of a study never need to share one folder.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

from .fraction_checkpoint import RECORD as FRACTIONS_RECORD
from .fraction_checkpoint import fraction_tag
from .layout import EVAL_SPLITS, RunDir

RECORD_VERSION = 1
RUN_PLACEHOLDER = "<run>"


def resolved_commands(rc) -> list[list[str]]:
    """The run's fit and evaluation commands with its folder written as <run> and the resume flag dropped:
    what decides its results, independent of where the study folder lives."""
    fit = list(rc.fit)
    if "--ckpt_path" in fit:
        i = fit.index("--ckpt_path")
        del fit[i : i + 2]
    folder = str(rc.dir.path)
    return [[part.replace(folder, RUN_PLACEHOLDER) for part in cmd] for cmd in [fit, *(c for _, _, c in rc.evals)]]


def command_hash(rc, root: Path | str = ".") -> str:
    """sha256 (16 hex digits) of the resolved commands and of every config file they name, so an edited
    config changes the hash as much as an edited command line does."""
    commands = resolved_commands(rc)
    h = hashlib.sha256(json.dumps(commands).encode())
    configs = sorted({cmd[i + 1] for cmd in commands for i, part in enumerate(cmd[:-1]) if part == "--config"})
    for path in configs:
        file = Path(root) / path
        h.update(path.encode() + b"\0" + (file.read_bytes() if file.is_file() else b"<missing>") + b"\0")
    return h.hexdigest()[:16]


def record_path(records_dir: Path | str, run_name: str) -> Path:
    return Path(records_dir) / "records" / f"{run_name}.json"


def build_record(run_info: dict, rd: RunDir, hash_: str | None, commands: list[list[str]] | None = None) -> dict:
    """The record of a finished run folder: `run_info` is its run.json (written by `StudyRunner`);
    `commands` are its resolved commands (`resolved_commands`), kept instead of run.json's paths."""
    steps = json.loads((rd.path / FRACTIONS_RECORD).read_text()) if (rd.path / FRACTIONS_RECORD).is_file() else {}
    fractions, cpu, precision, in_fit = {}, None, None, 0.0
    for fraction in run_info["fractions"]:
        tag = fraction_tag(fraction)
        saved = steps.get(tag, {})
        cpu, precision = saved.get("cpu", cpu), saved.get("precision", precision)
        in_fit += sum((saved.get("eval_seconds") or {}).values())
        metrics = {}
        for split in EVAL_SPLITS:
            path = rd.metrics(fraction, split)
            if path.is_file():
                metrics[split] = {k.split("/", 1)[1] if k.startswith("test/") else k: v
                                  for k, v in sorted(json.loads(path.read_text()).items()) if isinstance(v, (int, float))}
        fractions[tag] = {"fraction": fraction, "step": saved.get("step"), "samples": saved.get("samples"), "metrics": metrics}
        ckpt = rd.fraction_ckpt(fraction)
        probes = {p.name.split(".probe_", 1)[1].removesuffix(".json"): json.loads(p.read_text())
                  for p in sorted(rd.path.glob(f"{ckpt.stem}.probe_*.json"))}
        if probes:
            fractions[tag]["probes"] = probes
    attempts = run_info.get("fit_attempts", [])
    fit_seconds = sum(a.get("seconds", 0.0) for a in attempts)
    git = run_info.get("git") or {}
    return {
        "record_version": RECORD_VERSION,
        "study": run_info["study"], "run": run_info["run"], "command_hash": hash_,
        "cell": run_info["cell"], "regime": run_info["regime"], "misalign": run_info.get("misalign"),
        "variant": run_info.get("variant", "default"), "seed": run_info["seed"], "scale": run_info.get("scale"),
        "task_weights": run_info.get("task_weights"), "match": run_info.get("match"),
        "epoch_samples": run_info.get("epoch_samples"), "epochs": run_info.get("epochs"),
        "commit": git.get("revision"), "dirty": git.get("dirty"),
        "cpu": cpu, "precision": precision, "threads": run_info.get("threads"),
        "seconds": {"fit": round(fit_seconds - in_fit, 1), "eval_in_fit": round(in_fit, 1),
                    "eval_processes": round(sum(e.get("seconds", 0.0) for e in run_info.get("evals", {}).values()), 1)},
        "commands": {"fit": shlex.join(commands[0]), "eval": [shlex.join(c) for c in commands[1:]]} if commands else run_info.get("commands"),
        "fractions": fractions,
    }


def write_record(path: Path, record: dict) -> None:
    """Sorted keys and a fixed indent: a record rewritten from the same run is the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def load_records(records_dir: Path | str) -> list[dict]:
    """Every record under `<records_dir>/records/`, in name order."""
    return [json.loads(p.read_text()) for p in sorted((Path(records_dir) / "records").glob("*.json"))]


def records_from_runs(out: Path | str) -> list[dict]:
    """Records built from the run folders of a `study run --out` folder (no hash): `study report` on runs/."""
    return [build_record(json.loads(p.read_text()), RunDir(p.parent), None) for p in sorted(Path(out).glob("*/run.json"))]
