"""`lightning-vlm study run`: each run as `lightning-vlm fit` then `test` subprocesses, one at a time, resumable."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from .commands import RunCommands, build_command, run_commands
from .fraction_checkpoint import fraction_tag
from .spec import Run, Spec


def child_argv(cmd: list[str]) -> list[str]:
    """`lightning-vlm ...` run with this interpreter, so the study uses the environment it was started from."""
    return [sys.executable, "-m", "lightning_vlm", *cmd[1:]] if cmd[0] == "lightning-vlm" else cmd


def git_revision(cwd: Path | str = Path(__file__).parent) -> dict:
    """HEAD of the code's checkout and whether it has uncommitted changes; {"revision": None} outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=30)
        if rev.returncode != 0:
            return {"revision": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=60)
        return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"revision": None}


def manifest_sha256(data_dir: str | None) -> str | None:
    path = Path(data_dir) / "manifest.json" if data_dir else None
    return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None and path.is_file() else None


def duration(seconds: float) -> str:
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s"


class StudyRunner:
    """Runs a list of runs in order; a run whose DONE marker exists is skipped, an interrupted fit
    resumes from its newest checkpoint, and an evaluation whose metrics file exists is not redone."""

    def __init__(self, spec: Spec, out: str | Path, threads: int | None = None, dry_run: bool = False, log=None):
        self.spec, self.out, self.threads, self.dry_run = spec, Path(out), threads, dry_run
        self.log = log or (lambda line: print(line, flush=True))
        self.env = dict(os.environ)
        if threads:
            self.env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))

    def run_all(self, runs: list[Run]) -> int:
        if not self.dry_run:
            self.out.mkdir(parents=True, exist_ok=True)
        failures, spent, worked, start = [], 0.0, 0, time.time()
        self._build_data(sorted({r.variant for r in runs}))
        for n, run in enumerate(runs, 1):
            left = f"~{duration(spent / worked * (len(runs) - n + 1))}" if worked else "?"
            self.log(f"[{n}/{len(runs)}] {run.name}  elapsed {duration(time.time() - start)}  left {left}")
            t0 = time.time()
            outcome = self.run_one(run_commands(self.spec, run, self.out))
            if outcome == "failed":
                failures.append(run.name)
            if outcome != "skipped":
                spent, worked = spent + time.time() - t0, worked + 1
        if self.dry_run:
            self.log(f"dry run: {len(runs)} runs listed, nothing was run")
            return 0
        self.log(f"study {self.spec.name}: {len(runs) - len(failures)}/{len(runs)} runs done in {duration(time.time() - start)}"
                 + (f"; failed: {', '.join(failures)} (see <run>/logs)" if failures else ""))
        return 1 if failures else 0

    def run_one(self, rc: RunCommands) -> str:
        """'skipped' (already done), 'done', 'failed', or 'planned' (a dry run)."""
        d = rc.dir
        if d.done.is_file():
            self.log(f"  done already: {d.path}")
            return "skipped"
        if self.dry_run:
            for cmd in ([] if d.fit_done.is_file() else [rc.fit]) + [c for _, _, c in rc.evals]:
                self.log("  " + shlex.join(cmd))
            return "planned"
        d.logs.mkdir(parents=True, exist_ok=True)
        record = self._record(rc)
        if not d.fit_done.is_file():
            resumed = rc.fit[rc.fit.index("--ckpt_path") + 1] if "--ckpt_path" in rc.fit else None
            started = time.strftime("%Y-%m-%dT%H:%M:%S")
            code, secs = self._call(rc.fit, d.logs / "fit")
            record["fit_attempts"].append({"started": started, "seconds": round(secs, 1),
                                           "returncode": code, "resumed_from": resumed})
            self._write(d.run_json, record)
            if code != 0:
                self.log(f"  fit failed (exit {code}): see {d.logs / 'fit.err'}")
                return "failed"
            d.fit_done.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        ok = True
        for fraction, split, cmd in rc.evals:
            metrics, ckpt = d.metrics(fraction, split), d.fraction_ckpt(fraction)
            if metrics.is_file():
                continue
            if not ckpt.is_file():
                self.log(f"  no checkpoint {ckpt.name}: fit did not reach it")
                ok = False
                continue
            self._link(ckpt, d.eval_ckpt(fraction, split))
            code, secs = self._call(cmd, d.logs / f"{split}-{ckpt.stem}")
            record["evals"][f"{split}/{ckpt.stem}"] = {"seconds": round(secs, 1), "returncode": code}
            if code != 0 or not metrics.is_file():
                self.log(f"  {split} of {ckpt.name} failed (exit {code}): see {d.logs / f'{split}-{ckpt.stem}.err'}")
                ok = False
        self._write(d.run_json, record)
        if not ok:
            return "failed"
        if self.spec.active_scale.keep_checkpoints == "final":
            self._prune(rc)
        d.done.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        return "done"

    @staticmethod
    def _prune(rc: RunCommands) -> None:
        """Disk: once every evaluation is in, drop all fraction checkpoints but the last (metrics stay)."""
        fractions = sorted({f for f, _, _ in rc.evals})
        for f in fractions[:-1]:
            for split in ("val", "test"):
                rc.dir.eval_ckpt(f, split).unlink(missing_ok=True)

    def _record(self, rc: RunCommands) -> dict:
        """run.json: what was run, on what code and data; earlier attempts are kept."""
        old = json.loads(rc.dir.run_json.read_text()) if rc.dir.run_json.is_file() else {}
        record = {
            "study": self.spec.name, "run": rc.run.name, "cell": rc.run.cell, "regime": rc.run.regime,
            "misalign": rc.run.misalign, "variant": rc.run.variant, "seed": rc.run.seed, "scale": self.spec.scale,
            "task_weights": self.spec.regimes[rc.run.regime].task_weights, "match": self.spec.regimes[rc.run.regime].match,
            "epoch_samples": rc.epoch_samples, "epochs": rc.epochs, "fractions": sorted(self.spec.fractions),
            "git": git_revision(), "host": socket.gethostname(), "threads": self.threads,
            "data_dir": rc.data_dir, "data_manifest_sha256": manifest_sha256(rc.data_dir),
            "commands": {"fit": shlex.join(rc.fit), "eval": {f"{s}/{fraction_tag(f)}": shlex.join(c) for f, s, c in rc.evals}},
            "fit_attempts": old.get("fit_attempts", []), "evals": old.get("evals", {}),
        }
        self._write(rc.dir.run_json, record)
        return record

    def _call(self, cmd: list[str], log_stem: Path) -> tuple[int, float]:
        t0 = time.time()
        with open(f"{log_stem}.out", "a") as out, open(f"{log_stem}.err", "a") as err:
            for stream in (out, err):
                stream.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
                stream.flush()
            code = subprocess.run(child_argv(cmd), stdout=out, stderr=err, env=self.env).returncode
        return code, time.time() - t0

    @staticmethod
    def _link(target: Path, link: Path) -> None:
        if link == target or link.exists():
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            link.symlink_to(os.path.relpath(target, link.parent))
        except OSError:
            shutil.copyfile(target, link)

    @staticmethod
    def _write(path: Path, record: dict) -> None:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(path)

    def _build_data(self, variants: list[str]) -> None:
        """Datasets of data variants, built once; a second shard finding a build under way waits for it."""
        for name in variants:
            cmd = build_command(self.spec, name)
            if cmd is None:
                continue
            data = Path(cmd[cmd.index("--out") + 1])
            if (data / "manifest.json").is_file():
                continue
            self.log(f"{'would build' if self.dry_run else 'building'} data variant {name}: {shlex.join(cmd)}")
            if self.dry_run:
                continue
            lock = data.with_name(data.name + ".building")
            lock.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                while lock.exists() and not (data / "manifest.json").is_file():
                    time.sleep(10)
                continue
            os.close(fd)
            try:
                code, _ = self._call(cmd, self.out / f"build-{name}")
            finally:
                lock.unlink(missing_ok=True)
            if code != 0:
                raise RuntimeError(f"building data variant {name} failed: see {self.out / f'build-{name}.err'}")
