"""Plugin discovery through entry points: one path for built-ins and pip-installed plugins.

Groups: `lightning_vlm.architectures` (LightningModule classes) and
`lightning_vlm.encoders` (ImageEncoder classes). Our own pyproject declares the
built-ins exactly as a plugin package would.
"""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points

GROUPS = {"architectures": "lightning_vlm.architectures", "encoders": "lightning_vlm.encoders"}


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


def describe(kind: str) -> list[tuple[str, str, str, str]]:
    """(name, target, distribution, version) for each registered plugin of `kind`."""
    rows = []
    for name, ep in sorted(_entries(kind).items()):
        dist = ep.dist
        rows.append((name, ep.value, dist.name if dist else "?", dist.version if dist else "?"))
    return rows


def plugins_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-vlm plugins", description="List registered architectures and encoders.")
    parser.add_argument("kind", nargs="?", choices=sorted(GROUPS), help="only this kind")
    args = parser.parse_args(argv)
    for kind in [args.kind] if args.kind else sorted(GROUPS):
        rows = describe(kind)
        print(f"{kind}:")
        if not rows:
            print("  (none installed)")
        for name, target, dist, version in rows:
            print(f"  {name:<14} {dist} {version:<10} {target}")
    return 0
