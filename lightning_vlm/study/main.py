"""`lightning-vlm study plan|run|report`: a finding as one command (see configs/studies/)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from .commands import build_command, run_commands
from .spec import SpecError, expand, load_spec, parse_shard, shard

STUDY_COPY = "study.yaml"  # the spec, copied into the out dir by `run` so `report DIR` needs nothing else


def default_out(spec) -> str:
    return f"runs/studies/{spec.name}"


def _selected(args):
    spec = load_spec(args.spec, scale=args.scale)
    runs = expand(spec)
    i, n = parse_shard(args.shard)
    return spec, runs, shard(runs, i, n), args.out or default_out(spec)


def plan(args) -> int:
    spec, runs, chosen, out = _selected(args)
    shard_text = f" (shard {args.shard}: {len(chosen)})" if args.shard else ""
    print(f"study {spec.name}: {len(runs)} runs{shard_text}, scale {spec.scale}, out {out}")
    for variant in sorted({r.variant for r in chosen}):
        cmd = build_command(spec, variant)
        if cmd and not (Path(cmd[cmd.index("--out") + 1]) / "manifest.json").is_file():
            print(f"data {variant} (built first): {shlex.join(cmd)}")
    for run in chosen:
        rc = run_commands(spec, run, out)
        regime = spec.regimes[run.regime]
        print(f"[{rc.dir.state()}] {run.name}  ({rc.epoch_samples} samples x {rc.epochs} epoch(s), task_weights "
              f"{json.dumps(regime.task_weights)}, matched by {regime.match})")
        print(f"  fit:  {shlex.join(rc.fit)}")
        for fraction, split, cmd in rc.evals:
            state = "done" if rc.dir.metrics(fraction, split).is_file() else "pending"
            print(f"  {split + ':':<5} [{state}] {shlex.join(cmd)}")
    return 0


def run(args) -> int:
    from .runner import StudyRunner

    spec, runs, chosen, out = _selected(args)
    if not args.dry_run:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.spec, Path(out) / STUDY_COPY)
    print(f"study {spec.name}: {len(chosen)} of {len(runs)} runs, scale {spec.scale}, out {out}", flush=True)
    return StudyRunner(spec, out, threads=args.threads, dry_run=args.dry_run).run_all(chosen)


def report(args) -> int:
    from .report import write_report

    out = Path(args.dir)
    if not out.is_dir():
        raise SpecError(f"no study folder at {out}")
    spec_path = args.spec or (out / STUDY_COPY if (out / STUDY_COPY).is_file() else None)
    spec = load_spec(spec_path, root=None) if spec_path else None
    paths = write_report(out, spec)
    print(f"wrote {paths['csv']}, {paths['md']} and {len(paths['png'])} plot(s)")
    return 0


def study_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-vlm study", description="Plan, run and report a study spec (configs/studies/*.yaml).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, text in (("plan", plan, "list the runs with their commands and state"), ("run", run, "run them one at a time, resumably")):
        p = sub.add_parser(name, help=text)
        p.add_argument("spec", help="study spec YAML")
        p.add_argument("--out", help="study folder (default runs/studies/<name>)")
        p.add_argument("--shard", help="i/n: take runs i, i+n, i+2n, ... (1-based), e.g. one GPU each")
        p.add_argument("--scale", help="a key of the spec's scales (default: the spec's scale)")
        p.set_defaults(run=fn)
    runp = sub.choices["run"]
    runp.add_argument("--threads", type=int, help="torch threads per child (OMP_NUM_THREADS); default: the machine's")
    runp.add_argument("--dry-run", action="store_true", help="print the commands that would run, run nothing")
    rep = sub.add_parser("report", help="aggregate finished runs: results.csv, report.md, plots/")
    rep.add_argument("dir", help="the study folder given to `run --out`")
    rep.add_argument("--spec", help="spec YAML (default: DIR/study.yaml)")
    rep.set_defaults(run=report)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (SpecError, FileNotFoundError, RuntimeError) as exn:
        print(f"lightning-vlm study: error: {exn}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `study plan ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
