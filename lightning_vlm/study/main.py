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
from .runner import StudyRunner
from .spec import SpecError, expand, load_spec, parse_shard, shard

STUDY_COPY = "study.yaml"  # the spec, copied into the study folder by `run` so `report DIR` needs nothing else
CHANCE_FILE = "chance.json"  # chance levels computed once per study folder (lightning_vlm.smartwatch.chance)
READER = "stage0/reader.ckpt"  # the shipped attribute reader: generation's chance levels


def default_out(spec) -> str:
    return f"runs/studies/{spec.name}"


def default_records(spec) -> str:
    """Where the records live: committed with the repository, unlike runs/."""
    return f"studies/{spec.name}"


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
    records = args.records or default_records(spec)
    for run in chosen:
        rc = run_commands(spec, run, out)
        regime = spec.regimes[run.regime]
        state, _ = StudyRunner(spec, out, records=records, log=lambda line: None).record_state(rc)
        print(f"[{state if state != 'none' else rc.dir.state()}] {run.name}  ({rc.epoch_samples} samples x {rc.epochs} epoch(s), task_weights "
              f"{json.dumps(regime.task_weights)}, matched by {regime.match})")
        print(f"  fit:  {shlex.join(rc.fit)}")
        for fraction, split, cmd in rc.evals:
            state = "done" if rc.dir.metrics(fraction, split).is_file() else "pending"
            print(f"  {split + ':':<5} [{state}] {shlex.join(cmd)}")
    return 0


def run(args) -> int:
    spec, runs, chosen, out = _selected(args)
    records = None if args.no_records else (args.records or default_records(spec))
    if not args.dry_run:
        for folder in [out] + ([records] if records else []):
            Path(folder).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(args.spec, Path(folder) / STUDY_COPY)
    print(f"study {spec.name}: {len(chosen)} of {len(runs)} runs, scale {spec.scale}, out {out}"
          + (f", records {records}" if records else ""), flush=True)
    return StudyRunner(spec, out, threads=args.threads, dry_run=args.dry_run, records=records,
                       rerun_stale=args.rerun_stale).run_all(chosen)


def expected_hashes(spec_path: str | Path, spec, scales: set[str]) -> dict[str, str]:
    """{run name: command hash} of the spec's current commands at each scale the records hold (the spec
    file is read again per scale: a scale changes the commands)."""
    from .records import command_hash

    out = {}
    for scale in sorted(s for s in scales if s in spec.scales):
        scaled = load_spec(spec_path, scale=scale)
        for run in expand(scaled):
            out[run.name] = command_hash(run_commands(scaled, run, default_out(scaled)))
    return out


def chance_of(folder: Path) -> dict:
    """The folder's chance.json, computed and written the first time (VQA always; gen/* with the shipped reader)."""
    path = folder / CHANCE_FILE
    if path.is_file():
        return json.loads(path.read_text())
    from ..smartwatch.chance import chance_levels

    reader = None
    if Path(READER).is_file():
        from ..smartwatch.reader import AttributeReader

        reader = AttributeReader.load(READER, map_location="cpu").eval()
    levels = chance_levels(reader)
    path.write_text(json.dumps(levels, indent=1, sort_keys=True) + "\n")
    return levels


def report(args) -> int:
    from .records import load_records
    from .report import write_report

    folder = Path(args.dir)
    if not folder.is_dir():
        raise SpecError(f"no study folder at {folder}")
    spec_path = args.spec or (folder / STUDY_COPY if (folder / STUDY_COPY).is_file() else None)
    spec = load_spec(spec_path, root=None) if spec_path else None
    hashes = None
    if spec is not None and (folder / "records").is_dir():
        try:
            hashes = expected_hashes(spec_path, spec, {str(r.get("scale")) for r in load_records(folder)})
        except (SpecError, OSError) as exn:  # the configs are not here: no stale check
            print(f"note: cannot rebuild the spec's commands here ({exn}); records are not checked for staleness")
    chance = chance_of(folder)
    for metric, level in (spec.chance if spec else {}).items():  # hand-set levels only where none is computed
        chance.setdefault(metric, {"chance": level, "best_constant": level})
    paths = write_report(folder, spec, chance, hashes)
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
    runp.add_argument("--rerun-stale", action="store_true", help="redo runs whose record was made with other commands or configs")
    runp.add_argument("--no-records", action="store_true", help="write no records (a scratch study)")
    for p in (sub.choices["plan"], runp):
        p.add_argument("--records", help="study folder for the records (default studies/<name>; commit it)")
    rep = sub.add_parser("report", help="aggregate finished runs: results.csv, report.md, plots/")
    rep.add_argument("dir", help="a study folder (studies/<name>, with records/) or a `run --out` folder of run folders")
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
