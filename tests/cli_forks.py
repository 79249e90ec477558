"""Runs several `lightning-vlm` commands for a test, each in a child forked from one process that has
imported the CLI once. A child starts where a fresh `python -m lightning_vlm` process stands after
its imports, and writes to its own stdout and stderr files; only torch's import (seconds each) is
shared. Used by test_errors.py, whose cases fail before any training starts.

    python cli_forks.py CASES.json RESULTS.json   # {name: [args...]} -> {name: [exit code, stdout, stderr]}
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback


def run_child(args: list[str]) -> int:
    """What the interpreter does with `python -m lightning_vlm ARGS`: the exit code, a traceback or message on stderr."""
    from lightning_vlm.cli import main

    sys.argv = ["lightning-vlm", *args]  # read by main() and by LightningCLI, as from a shell
    try:
        main()
        return 0
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


def run_forked(args: list[str]) -> tuple[int, str, str]:
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: its stdout and stderr go to the two files, then it exits without cleanup
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            code = run_child(args)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), out.read(), err.read()


def main(cases_file: str, results_file: str) -> None:
    import lightning.pytorch  # noqa: F401  (what every child needs, imported once)

    import lightning_vlm.cli
    import lightning_vlm.training  # noqa: F401

    cases = json.loads(open(cases_file).read())
    results = {name: run_forked(args) for name, args in cases.items()}
    with open(results_file, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
