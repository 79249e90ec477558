"""`lightning-vlm study run`: each run as `lightning-vlm fit` then `test` subprocesses, one at a time, resumable."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .commands import RunCommands, build_command, run_commands
from .fraction_checkpoint import fraction_tag
from .records import build_record, command_hash, record_path, resolved_commands, write_record
from .spec import Run, Spec
from .stats import select_fraction


def child_argv(cmd: list[str]) -> list[str]:
    """`lightning-vlm ...` run with this interpreter, so the study uses the environment it was started from."""
    return [sys.executable, "-m", "lightning_vlm", *cmd[1:]] if cmd[0] == "lightning-vlm" else cmd


def run_child(argv: list[str], **popen) -> int:
    """The child's exit code. A runner stopped by SIGTERM (`kill`, `pkill`) or Ctrl-C takes its child
    with it: a fit left running would hold the cores and race the next run for them."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        with subprocess.Popen(argv, **popen) as child:
            try:
                return child.wait()
            except BaseException:
                child.terminate()
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
                raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


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
    """Runs a list of runs in order; a run with a committed record of the same commands, or whose DONE
    marker exists, is skipped, an interrupted fit resumes from its newest checkpoint, and an evaluation
    whose metrics file exists is not redone. Each finished run writes its record (`records`)."""

    def __init__(self, spec: Spec, out: str | Path, threads: int | None = None, dry_run: bool = False, log=None,
                 records: str | Path | None = None, rerun_stale: bool = False, root: str | Path = "."):
        self.spec, self.out, self.threads, self.dry_run = spec, Path(out), threads, dry_run
        self.records, self.rerun_stale, self.root = (Path(records) if records else None), rerun_stale, Path(root)
        self.log = log or (lambda line: print(line, flush=True))
        self.env = dict(os.environ)
        if threads:
            self.env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))

    def run_all(self, runs: list[Run]) -> int:
        if not self.dry_run:
            self.out.mkdir(parents=True, exist_ok=True)
        failures, stale, spent, worked, start = [], [], 0.0, 0, time.time()
        self._build_data(sorted({r.variant for r in runs}))
        for n, run in enumerate(runs, 1):
            left = f"~{duration(spent / worked * (len(runs) - n + 1))}" if worked else "?"
            self.log(f"[{n}/{len(runs)}] {run.name}  elapsed {duration(time.time() - start)}  left {left}")
            t0 = time.time()
            outcome = self.run_one(run_commands(self.spec, run, self.out, self.root))
            if outcome == "failed":
                failures.append(run.name)
            if outcome == "stale":
                stale.append(run.name)
            if outcome in ("done", "failed"):
                spent, worked = spent + time.time() - t0, worked + 1
        if self.dry_run:
            self.log(f"dry run: {len(runs)} runs listed, nothing was run")
            return 0
        self.log(f"study {self.spec.name}: {len(runs) - len(failures) - len(stale)}/{len(runs)} runs done in {duration(time.time() - start)}"
                 + (f"; failed: {', '.join(failures)} (see <run>/logs)" if failures else "")
                 + (f"; stale, not rerun: {', '.join(stale)} (--rerun-stale redoes them)" if stale else ""))
        return 1 if failures else 0

    def record_state(self, rc: RunCommands) -> tuple[str, str]:
        """('recorded' | 'stale' | 'none', this run's command hash) from the committed record."""
        h = command_hash(rc, self.root)
        path = record_path(self.records, rc.run.name) if self.records else None
        if path is None or not path.is_file():
            return "none", h
        return ("recorded" if json.loads(path.read_text()).get("command_hash") == h else "stale"), h

    def run_one(self, rc: RunCommands) -> str:
        """'skipped' (recorded or done already), 'stale' (a record of other commands, not rerun), 'done',
        'failed', or 'planned' (a dry run)."""
        d = rc.dir
        state, h = self.record_state(rc)
        if state == "recorded":
            self.log(f"  recorded already: {record_path(self.records, rc.run.name)}")
            return "skipped"
        old = json.loads(d.run_json.read_text()).get("command_hash", h) if d.run_json.is_file() else h
        if state == "stale" or old != h:
            if not self.rerun_stale:
                self.log(f"  stale: recorded with other commands or configs (hash {old if old != h else 'in the record'}, now {h}); "
                         "not rerun (--rerun-stale redoes it)")
                return "stale"
            if d.path.is_dir() and old != h and not self.dry_run:
                d.path.rename(d.path.with_name(f"{d.path.name}.old-{old}"))
                rc = run_commands(self.spec, rc.run, self.out, self.root)  # no resume from the old folder
        if d.done.is_file():
            self.log(f"  done already: {d.path}")
            self._write_record(rc, h)
            return "skipped"
        if self.dry_run:
            for cmd in ([] if d.fit_done.is_file() else [rc.fit]) + [c for _, _, c in rc.evals]:
                self.log("  " + shlex.join(cmd))
            return "planned"
        d.logs.mkdir(parents=True, exist_ok=True)
        record = self._run_json(rc, h)
        if not d.fit_done.is_file():
            resumed = rc.fit[rc.fit.index("--ckpt_path") + 1] if "--ckpt_path" in rc.fit else None
            started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S"), time.time()
            try:
                code, secs = self._call(rc.fit, d.logs / "fit")
            except KeyboardInterrupt:  # stopped (Ctrl-C, SIGTERM): the attempt's time still counts in the record
                code, secs = "interrupted", time.time() - t0
                raise
            finally:
                record["fit_attempts"].append({"started": started, "seconds": round(secs, 1),
                                               "returncode": code, "resumed_from": resumed})
                self._write(d.run_json, record)
            if code != 0:
                self.log(f"  fit failed (exit {code}): see {d.logs / 'fit.err'}")
                return "failed"
            d.fit_done.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        ok = self._evaluate(rc, record, [e for e in rc.evals if e[1] != "test"])  # val first: it picks the test checkpoints
        ok &= self._evaluate(rc, record, [e for e in rc.evals if e[1] == "test" and e[0] in self.test_fractions_of(rc)])
        ok &= self._probe(rc, record)
        self._write(d.run_json, record)
        if not ok:
            return "failed"
        if self.spec.active_scale.keep_checkpoints == "final":
            self._prune(rc)
        d.done.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        self._write_record(rc, h)
        return "done"

    def test_fractions_of(self, rc: RunCommands) -> set[float]:
        """The spec's test fractions, plus this run's val-selected fraction of each metric it is compared on."""
        wanted = set(self.spec.test_fractions())
        metrics = {c.metric for c in [*self.spec.comparisons, *self.spec.trends] if rc.run.regime in (c.a, c.b)}
        for metric in sorted(metrics):
            val = {}
            for fraction in self.spec.fractions:
                path = rc.dir.metrics(fraction, "val")
                value = json.loads(path.read_text()).get(f"test/{metric}") if path.is_file() else None
                if value is not None:
                    val[fraction] = value
            if val:
                wanted.add(select_fraction(val, self.spec.better(metric)))
        return wanted

    def _evaluate(self, rc: RunCommands, record: dict, evals) -> bool:
        d, ok = rc.dir, True
        for fraction, split, cmd in evals:
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
        return ok

    def _probe(self, rc: RunCommands, record: dict) -> bool:
        """The spec's probes on the final checkpoint, each once (its JSON beside the checkpoint)."""
        ok = True
        for out, cmd in rc.probes:
            if Path(out).is_file():
                continue
            code, secs = self._call(cmd, rc.dir.logs / Path(out).stem)
            record["evals"][f"probe/{Path(out).stem}"] = {"seconds": round(secs, 1), "returncode": code}
            if code != 0 or not Path(out).is_file():
                self.log(f"  probe failed (exit {code}): see {rc.dir.logs / (Path(out).stem + '.err')}")
                ok = False
        return ok

    def _write_record(self, rc: RunCommands, h: str) -> None:
        if self.records is None or self.dry_run or not rc.dir.run_json.is_file():
            return
        info = json.loads(rc.dir.run_json.read_text())
        write_record(record_path(self.records, rc.run.name), build_record(info, rc.dir, h, resolved_commands(rc)))
        self.log(f"  record: {record_path(self.records, rc.run.name)}")

    @staticmethod
    def _prune(rc: RunCommands) -> None:
        """Disk: once every evaluation is in, drop all fraction checkpoints but the last (metrics stay)."""
        fractions = sorted({f for f, _, _ in rc.evals})
        for f in fractions[:-1]:
            for split in ("val", "test"):
                rc.dir.eval_ckpt(f, split).unlink(missing_ok=True)

    def _run_json(self, rc: RunCommands, h: str) -> dict:
        """run.json: what was run, on what code and data; earlier attempts are kept."""
        old = json.loads(rc.dir.run_json.read_text()) if rc.dir.run_json.is_file() else {}
        record = {
            "study": self.spec.name, "run": rc.run.name, "command_hash": h, "cell": rc.run.cell, "regime": rc.run.regime,
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
            code = run_child(child_argv(cmd), stdout=out, stderr=err, env=self.env)
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
