"""A fork server for the CLI tests: one process imports the CLI once, and every `lightning-vlm` command
a test runs is a child forked from it. A child starts where a fresh `python -m lightning_vlm` process
stands after its imports (seconds of torch and Lightning each, paid once per pytest worker), runs in
its own folder, environment and session, and writes to its own stdout and stderr files. The parent
runs no torch op, so no thread pool is forked.

    python cli_forks.py   # one JSON request per line on stdin: {"args", "cwd", "env", "timeout"};
                          # one answer per line on stdout: [exit code (null: timed out), stdout, stderr]

Used through `cli_helpers.run` and `cli_helpers.cli`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

# A multi-process fit re-executes sys.argv for its other ranks (Lightning's subprocess launcher): the
# console script makes that command line the one a user typed.
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("lightning-vlm"))


def run_child(args: list[str]) -> int:
    """What the interpreter does with `lightning-vlm ARGS`: the exit code, a traceback or message on stderr."""
    from lightning_vlm.cli import main

    sys.argv = [CONSOLE_SCRIPT, *args]  # read by main() and by LightningCLI, as from a shell
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


def wait(pid: int, timeout: float) -> int | None:
    """The child's exit code, or None after killing its whole session at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.05)


def run_forked(args: list[str], cwd: str, env: dict[str, str], timeout: float = 600) -> tuple[int | None, str, str]:
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: a session of its own (a timeout kills its ranks too), then exits without cleanup
            os.setsid()
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            code = run_child(args)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        code = wait(pid, timeout)
        out.seek(0)
        err.seek(0)
        return code, out.read(), err.read() + ("" if code is not None else f"\n(killed after {timeout:.0f} s)")


def serve() -> None:
    import lightning.pytorch  # noqa: F401  (what every child needs, imported once)

    import lightning_vlm.cli
    import lightning_vlm.training  # noqa: F401

    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # a stray print of the parent cannot garble an answer
    for line in sys.stdin:
        answers.write(json.dumps(run_forked(**json.loads(line))) + "\n")
        answers.flush()


if __name__ == "__main__":
    serve()
