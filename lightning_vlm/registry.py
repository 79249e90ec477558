"""Plugin discovery through entry points: one path for built-ins and pip-installed plugins.

Groups: `lightning_vlm.heads` (image heads, `heads.ImageHead`), `lightning_vlm.encoders`
(ImageEncoder classes) and `lightning_vlm.datasets` (dataset plugins, `data.dataset`). Our own
pyproject declares the built-ins exactly as a plugin package would.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from importlib.metadata import entry_points

GROUPS = {"heads": "lightning_vlm.heads", "encoders": "lightning_vlm.encoders", "datasets": "lightning_vlm.datasets"}


def _entries(kind: str) -> dict:
    if kind not in GROUPS:
        raise ValueError(f"unknown plugin kind '{kind}'; known: {', '.join(GROUPS)}")
    return {ep.name: ep for ep in entry_points(group=GROUPS[kind])}


def available(kind: str) -> list[str]:
    return sorted(_entries(kind))


def load(kind: str, name: str):
    """The class registered as `name` in `kind`; an unknown name fails with the known ones."""
    entries = _entries(kind)
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none installed"
        raise ValueError(f"unknown {kind[:-1]} '{name}'; known {kind}: {known}")
    return entries[name].load()


def import_class(path: str, what: str) -> type:
    """The class at a dotted `path` recorded in a checkpoint; a missing one fails in one line."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exn:
        raise ImportError(f"{what} class {path} named in the checkpoint cannot be imported ({exn}); install the package that provides it") from None


def name_of(kind: str, cls: type) -> str | None:
    """The registered name of `cls` in `kind`, or None when it is not registered."""
    target = f"{cls.__module__}:{cls.__qualname__}"
    return next((name for name, ep in _entries(kind).items() if ep.value == target), None)


def import_all() -> None:
    """Imports every registered class, so LightningCLI resolves short class names (e.g. VQEncoder).

    A plugin that fails to import (say, an optional extra is missing) is skipped here;
    naming it in a config still fails with its own error.
    """
    for kind in GROUPS:
        for ep in _entries(kind).values():
            try:
                ep.load()
            except ImportError:
                pass


def missing_requirements(ep) -> list[str]:
    """Modules a plugin class declares in `requires` that are not installed (e.g. transformers for hf)."""
    try:
        cls = ep.load()
    except ImportError as exn:
        return [getattr(exn, "name", None) or str(exn)]
    return [m for m in getattr(cls, "requires", ()) if importlib.util.find_spec(m) is None]


def describe(kind: str) -> list[tuple[str, str, str, str, list[str]]]:
    """(name, target, distribution, version, missing requirements) for each registered plugin of `kind`."""
    rows = []
    for name, ep in sorted(_entries(kind).items()):
        dist = ep.dist
        rows.append((name, ep.value, dist.name if dist else "?", dist.version if dist else "?", missing_requirements(ep)))
    return rows


def plugins_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-vlm plugins", description="List registered heads, encoders and datasets.")
    parser.add_argument("kind", nargs="?", choices=sorted(GROUPS), help="only this kind")
    args = parser.parse_args(argv)
    for kind in [args.kind] if args.kind else sorted(GROUPS):
        rows = describe(kind)
        print(f"{kind}:")
        if not rows:
            print("  (none installed)")
        for name, target, dist, version, missing in rows:
            note = f"  (unavailable: needs {', '.join(missing)})" if missing else ""
            print(f"  {name:<12} {dist + ' ' + version:<26} {target}{note}")
    return 0
