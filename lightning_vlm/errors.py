"""Errors for people: a failed `lightning-vlm fit|validate|test|predict` ends with a few lines, not a traceback.

A mistyped config key, a bad value, a missing data folder, tokenizer, encoder or reader
checkpoint is the user's to fix, so the command says which key or file and what to do,
in at most a handful of lines on stderr, and exits non-zero (2 for the config, 1 for the
rest). Anything else (a bug) keeps its traceback. `--debug` (anywhere on the command
line) or LIGHTNING_VLM_DEBUG=1 shows every traceback in full.

jsonargparse wraps what goes wrong while parsing and instantiating: a key error inside a
"Does not validate against any of the Union subtypes" inside 'Parser key "model"', and a
constructor's own FileNotFoundError inside a ValueError. `explain` walks that exception
chain down to its root cause and rebuilds the dotted key on the way.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import os
import re
import sys
import traceback
from pathlib import Path

from .compat import MOVED

DEBUG_ENV = "LIGHTNING_VLM_DEBUG"
DEBUG_FLAG = "--debug"
DEBUG_HINT = f"  (full traceback: add {DEBUG_FLAG} or set {DEBUG_ENV}=1)"
TOP_LEVEL_KEYS = ("config", "seed_everything", "trainer", "model", "data", "optimizer", "lr_scheduler", "ckpt_path")
# Lightning's own values of ckpt_path that are not files.
CKPT_KEYWORDS = ("best", "last", "hpc", "registry")


class UserError(Exception):
    """A problem the user fixes by changing the command or the files it names (printed without traceback)."""


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """(debug on?, argv without --debug). The flag also sets the env var, so DDP workers inherit it."""
    if DEBUG_FLAG in argv:
        os.environ[DEBUG_ENV] = "1"
        argv = [a for a in argv if a != DEBUG_FLAG]
    return os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no"), argv


# ---- fail fast: files that are only opened late in a run ----------------------------------
def preflight(config, subcommand: str | None) -> None:
    """Check the paths a run opens after minutes of work (the test-time reader, --ckpt_path) before it starts."""
    if not subcommand:
        return
    sub = config.get(subcommand)
    ckpt = sub.get("ckpt_path") if sub is not None else None
    sharded = Path(ckpt or "", "meta.pt").is_file()  # an FSDP sharded checkpoint is a folder (state_dict_type: sharded)
    if ckpt and str(ckpt) not in CKPT_KEYWORDS and "://" not in str(ckpt) and not str(ckpt).startswith("registry:") \
            and not Path(ckpt).is_file() and not sharded:
        raise UserError(f"checkpoint not found: {ckpt} (--ckpt_path); give the .ckpt a fit wrote, e.g. <run dir>/last.ckpt")
    reader = sub.get("data.init_args.reader") if sub is not None and sub.get("data.init_args") is not None else None
    if subcommand == "test" and isinstance(reader, str) and reader and not Path(reader).is_file():
        raise UserError(f"attribute reader checkpoint not found: {reader} (data.init_args.reader); train it with "
                        "`lightning-vlm fit --config configs/eval/reader.yaml`, or set data.init_args.reader: null "
                        "to test without reader scores")


# ---- explaining a failure ------------------------------------------------------------------
def _chain(exc: BaseException) -> list[BaseException]:
    out = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return out


def _raised_in_package(exc: BaseException) -> bool:
    """Whether the `raise` itself sits in lightning_vlm (our messages are written for people)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and f"{os.sep}lightning_vlm{os.sep}" in frames[-1].filename


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _short(text: str, lines: int = 2, width: int = 300) -> str:
    kept = [line.rstrip()[:width] for line in text.strip().splitlines()[:lines]]
    return "\n  ".join(kept)


def _init_params(class_path: str | None) -> list[str]:
    """Constructor arguments of a class and its bases (jsonargparse follows **kwargs into super())."""
    if not class_path:
        return []
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except Exception:
        return []
    names: list[str] = []
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        try:
            params = inspect.signature(init).parameters.values() if init else []
        except (TypeError, ValueError):
            continue
        names += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]
    return names


def _suggest(key: str, class_path: str | None) -> str | None:
    """The accepted key closest to a mistyped one, e.g. model.init_args.lr for model.init_args.lrr."""
    parts = key.split(".")
    if class_path:  # the last part is an argument of that class
        at, options = len(parts) - 1, _init_params(class_path)
    elif parts[0] == "trainer" and len(parts) > 1:
        at, options = 1, _init_params("lightning.pytorch.Trainer")
    elif parts[0] not in TOP_LEVEL_KEYS:
        at, options = 0, list(TOP_LEVEL_KEYS)
    else:
        return None
    close = difflib.get_close_matches(parts[at], options, n=1)
    return ".".join(parts[:at] + close + parts[at + 1:]) if close else None


def config_files(argv: list[str]) -> list[str]:
    """The YAML files given with -c/--config, in order."""
    files = []
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _holds(tree, parts: list[str]) -> bool:
    if not parts:
        return True
    if not isinstance(tree, dict):
        return False
    if parts[0] in tree and _holds(tree[parts[0]], parts[1:]):
        return True
    return parts[0] == "init_args" and _holds(tree, parts[1:])  # `model: {lr: ...}` without init_args


def file_with_key(key: str, argv: list[str]) -> str | None:
    """The last --config file that sets `key` (it is the one that wins), if any."""
    import yaml

    found = None
    for path in config_files(argv):
        try:
            tree = yaml.safe_load(Path(path).read_text())
        except Exception:
            continue
        if _holds(tree, key.split(".")):
            found = path
    return found


def _parses(path: str) -> bool:
    import yaml

    try:
        yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError:
        return False
    except Exception:
        pass
    return True


def _yaml_mark(exc: BaseException) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def _leaves(tree, prefix: str = ""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}{key}.")
    elif isinstance(tree, str):
        yield prefix[:-1], tree


def setters(message: str, argv: list[str]) -> dict[str, str]:
    """{config key: where it is set} for the keys whose value (a path) the message quotes; the last setter wins."""
    import yaml

    found: dict[str, str] = {}
    given: list[tuple[str, str, str]] = []
    for path in config_files(argv):
        try:
            given += [(key, value, path) for key, value in _leaves(yaml.safe_load(Path(path).read_text()))]
        except Exception:
            continue
    for i, arg in enumerate(argv):
        if arg.startswith("--") and arg not in ("--config", "--debug"):
            key, eq, value = arg[2:].partition("=")
            if eq or (i + 1 < len(argv) and not argv[i + 1].startswith("--")):
                given.append((key, value if eq else argv[i + 1], "command line"))
    for key, value, where in given:
        if len(value) > 1 and re.search(rf"(?<![\w/.-]){re.escape(value)}(?![\w/.-])", message):
            found[key] = where
    return found


UNKNOWN = (re.compile(r"Option '([^']+)' is not accepted"), re.compile(r"does not accept option '([^']+)'"),
           re.compile(r"unrecognized arguments: --?([^\s=]+)", re.IGNORECASE))


def _parser_error(chain: list[BaseException], prog: str, argv: list[str]) -> list[str]:
    """A jsonargparse error: rebuild the dotted key from its nested 'Parser key' / class_path wrappers."""
    keys: list[str] = []
    class_path = None
    seen = set()
    for exc in chain:
        line = _first_line(exc)
        if line in seen:
            continue
        seen.add(line)
        if m := re.match(r'Parser key "([^"]+)":', line):
            keys.append(m.group(1))
        elif m := re.match(r"Problem with given class_path '([^']+)':", line):
            class_path = m.group(1)
            keys.append("init_args")
    root = chain[-1]
    message = str(root).strip()
    for pattern in UNKNOWN:
        if m := pattern.search(message):
            key = ".".join(keys + [m.group(1)])
            where = file_with_key(key, argv)
            guess = _suggest(key, class_path if keys else None)
            name = class_path.rpartition(".")[2] if class_path else None
            listing = f"`{prog} --{keys[0]}.help {name}`" if name and keys else f"`{prog} --help`"
            return [f"{prog}: unknown option '{key}'" + (f" in {where}" if where else "")
                    + (f"; did you mean '{guess}'?" if guess else ""),
                    f"  fix or remove it; {listing} lists the accepted options"]
    if any(_first_line(e).startswith("Problems parsing config") for e in chain):  # not YAML at all
        bad = next((f for f in config_files(argv) if not _parses(f)), None)
        return [f"{prog}: {bad or 'a config'} is not valid YAML: {_short(message, 1)}" + _yaml_mark(root),
                "  fix the file's syntax (indentation, brackets, quotes)"]
    key = ".".join(k for k in keys if k) or None
    if type(root).__name__ == "PathError" and key:  # a file option (--config, a path-typed argument)
        return [f"{prog}: --{key}: {_short(message, 1)}", "  check the path (relative paths start from the current folder)"]
    if keys and keys[-1] == "init_args" and class_path:  # the class itself could not be imported or built
        key = ".".join(keys[:-1]) + f" (class_path '{class_path}')"
        if class_path in MOVED:
            return [f"{prog}: {class_path} " + (MOVED[class_path] if " " in MOVED[class_path] else f"has moved: write class_path: {MOVED[class_path]} in the config")]
    return [f"{prog}: " + (f"bad value for {key}: " if key else "") + _short(message),
            f"  check the config; `{prog} --help` lists the options and their types"]


def explain(exc: BaseException, prog: str, argv: list[str]) -> tuple[list[str], int] | None:
    """(lines to print, exit code) for a failure the user can fix, None for one that needs its traceback."""
    chain = _chain(exc)
    root = chain[-1]
    if isinstance(exc, argparse.ArgumentError) or any(isinstance(e, argparse.ArgumentError) for e in chain):
        return _parser_error(chain, prog, argv), 2
    if isinstance(root, UserError):
        return [f"{prog}: {_short(str(root), 3)}"], 2
    if isinstance(root, FileNotFoundError):
        text = str(root) if _raised_in_package(root) or not root.filename else f"file not found: {root.filename}"
    elif isinstance(root, ValueError) and _raised_in_package(root):
        text = str(root)
    else:
        return None
    lines = [f"{prog}: {_short(text, 3)}"]
    if keys := setters(text, argv):  # which config key gave the path, so that layered configs are easy to fix
        lines.append("  set by " + ", ".join(f"{key} ({where})" for key, where in list(keys.items())[-2:]))
    return lines, 1


def report(exc: BaseException, prog: str, argv: list[str]) -> int | None:
    """Print the short explanation to stderr; the exit code, or None when the traceback should show."""
    try:
        explained = explain(exc, prog, argv)
    except Exception:
        return None
    if explained is None:
        return None
    lines, code = explained
    sys.stderr.write("\n".join(lines + [DEBUG_HINT]) + "\n")
    return code
