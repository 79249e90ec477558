"""A study spec (YAML) and its expansion into runs; the format is documented in configs/studies/*.yaml."""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .fraction_checkpoint import DEFAULT_FRACTIONS

AXES = ("cell", "regime", "misalign", "variant", "seed")
TASKS = ("vqa", "caption", "generation")
PRESET_WEIGHTS = {"mixed": TASKS, "understanding_only": ("vqa", "caption"), "generation_only": ("generation",)}


class SpecError(ValueError):
    """A spec problem, stated in one line that names the key and the fix."""


@dataclass
class Regime:
    """What a run trains on: task weights, and an epoch sized to match the reference regime's
    samples of this regime's tasks (`match: samples`) or its optimiser steps (`match: steps`)."""

    task_weights: dict[str, float]
    match: str = "samples"


STANDARD_REGIMES = {
    "mixed": Regime({"vqa": 1.0, "caption": 1.0, "generation": 1.0}),
    "understanding_only": Regime({"vqa": 1.0, "caption": 1.0}),
    "generation_only": Regime({"generation": 1.0}),
    "step_matched": Regime({"vqa": 1.0, "caption": 1.0}, match="steps"),
}


@dataclass
class Cell:
    """A cell of the grid: fit configs composed in order, then `--key value` overrides (e.g. another
    input encoder on the same overlay, instead of a second near-identical config file)."""

    configs: list[str]
    overrides: dict = field(default_factory=dict)


@dataclass
class Variant:
    """A data variant: extra fit configs and overrides, and optionally a dataset to build first."""

    configs: list[str] = field(default_factory=list)
    overrides: dict = field(default_factory=dict)
    data_dir: str | None = None  # may hold {scale}
    build: str | None = None  # a generator config for `lightning-vlm data smartwatch`


@dataclass
class Scale:
    """How big every run is: mixed-regime samples per epoch, epochs, and `--key value` overrides."""

    samples: int
    epochs: int = 1
    overrides: dict = field(default_factory=dict)
    build_args: list[str] = field(default_factory=list)
    fractions: list[float] | None = None  # replaces the spec's fractions at this scale
    keep_checkpoints: str = "all"  # "final": a finished run keeps only its last fraction checkpoint
    test_fractions: str | list[float] | None = None  # replaces eval.test_fractions at this scale
    configs: list[str] = field(default_factory=list)  # fit configs composed after each cell's (e.g. a CPU preset)
    axes: list[dict] | dict | None = None  # replaces the spec's axes at this scale (a smaller grid on a CPU)


@dataclass
class Eval:
    """Which checkpoints' evaluations run: splits (val for selection, test reported), tasks, overrides;
    `in_fit` scores the fraction checkpoints inside the fit process (no eval overrides allowed then);
    `test_fractions` ("all", "final" or a list) limits test to where the report reads it: val is scored
    at every fraction, and test also at each run's val-selected fraction of every compared metric."""

    splits: list[str] = field(default_factory=lambda: ["val", "test"])
    tasks: list[str] | None = None
    overrides: dict = field(default_factory=dict)
    in_fit: bool = True
    test_fractions: str | list[float] = "all"


@dataclass
class Comparison:
    """A claim to test: metric of regime `a` minus regime `b`, paired by seed, expected `higher` or `lower`."""

    a: str
    b: str
    metric: str
    expect: str = "higher"


@dataclass
class Probe:
    """`lightning-vlm probe` on a run's final checkpoint after its evaluations: a linear probe of
    `attributes` from the image features at `where` (encoder, adapter or output), per regime listed."""

    where: str = "adapter"
    pool: str = "flatten"
    attributes: list[str] = field(default_factory=lambda: ["weather", "weather_position", "battery_position"])
    regimes: list[str] | None = None  # None: every regime


@dataclass
class Trend:
    """A claim about a trend: the paired a - b difference of `metric` against the `over` axis
    (misalign), fitted per seed as a line; `expect` is the sign of its slope."""

    a: str
    b: str
    metric: str
    over: str = "misalign"
    expect: str = "lower"


@dataclass
class Spec:
    name: str
    cells: dict[str, Cell]
    axes: list[dict]
    scales: dict[str, Scale]
    scale: str = "cpu"
    claim: str = ""
    regimes: dict[str, Regime] = field(default_factory=lambda: dict(STANDARD_REGIMES))
    reference_regime: str = "mixed"
    variants: dict[str, Variant] = field(default_factory=lambda: {"default": Variant()})
    fractions: list[float] = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    eval: Eval = field(default_factory=Eval)
    extra_args: list[str] = field(default_factory=list)
    chance: dict[str, float] = field(default_factory=dict)  # hand-set levels for metrics the code does not compute
    metrics: list[str] = field(default_factory=lambda: ["vqa/total"])
    comparisons: list[Comparison] = field(default_factory=list)
    trends: list[Trend] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    lower_is_better: list[str] = field(default_factory=list)  # metrics where less is better, beyond losses and FD/KID
    conclusion: dict[str, str] = field(default_factory=dict)  # paper / gpu: the report's closing paragraph

    @property
    def active_scale(self) -> Scale:
        return self.scales[self.scale]

    def test_fractions(self) -> list[float]:
        """The fractions scored on test whatever val says: all, the final one, or the listed ones."""
        tf = self.active_scale.test_fractions or self.eval.test_fractions
        if tf == "all":
            return sorted(self.fractions)
        if tf == "final":
            return [max(self.fractions)]
        return sorted(float(f) for f in tf)

    def better(self, metric: str) -> str:
        """The metric's own better direction ("higher" or "lower"): losses, FD and KID, and the
        spec's `lower_is_better`, are lower; everything else higher."""
        lower = metric in self.lower_is_better or any(k in metric for k in ("loss", "fd_", "kid_"))
        return "lower" if lower else "higher"

    def epoch_samples(self, regime: str) -> int:
        """Training samples per epoch: matched to the reference regime's samples of this regime's tasks, or its steps."""
        r, ref = self.regimes[regime], self.regimes[self.reference_regime]
        n = self.active_scale.samples
        if r.match == "steps":
            return n
        share = sum(ref.task_weights.get(t, 0.0) for t in r.task_weights) / sum(ref.task_weights.values())
        return int(round(n * share))


@dataclass(frozen=True)
class Run:
    """One fit: a point of the spec's grid."""

    cell: str
    regime: str
    misalign: float | None
    variant: str
    seed: int
    scale: str = "cpu"

    @property
    def name(self) -> str:
        """cell-regime[-mis<s>][-variant]-s<seed>-<scale>: the scale is part of a run's identity, so a
        GPU-scale run never mistakes a CPU-scale one (or its record) for itself."""
        parts = [self.cell, self.regime]
        if self.misalign is not None:
            parts.append(f"mis{self.misalign:g}")
        if self.variant != "default":
            parts.append(self.variant)
        return re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(parts + [f"s{self.seed}", self.scale]))


def _build(cls, data, where: str):
    """A dataclass from a mapping, with one line naming any unknown key."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            raise SpecError(f"{where}: unknown key '{key}'; known keys: {', '.join(known)}")
    try:
        return cls(**data)
    except TypeError as exn:  # a required key is missing
        raise SpecError(f"{where}: {exn}; known keys: {', '.join(known)}") from None


def _weights(value, where: str) -> dict[str, float]:
    if isinstance(value, str):
        if value not in PRESET_WEIGHTS:
            raise SpecError(f"{where}: unknown preset '{value}'; use {', '.join(PRESET_WEIGHTS)} or a {{task: weight}} mapping")
        return {t: 1.0 for t in PRESET_WEIGHTS[value]}
    if not isinstance(value, dict) or set(value) - set(TASKS) or not value:
        raise SpecError(f"{where}: task_weights must map some of {', '.join(TASKS)} to weights, got {value!r}")
    return {t: float(w) for t, w in value.items()}


def _cell(value, where: str) -> Cell:
    """A cell from its config list (`[a.yaml, b.yaml]` or one path) or a mapping {configs, overrides}."""
    if isinstance(value, dict):
        cell = _build(Cell, value, where)
        cell.configs = _as_list(cell.configs)
        return cell
    return Cell(_as_list(value))


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def parse_spec(raw: dict, root: Path | str | None = ".", where: str = "spec") -> Spec:
    """Validate a loaded YAML mapping into a Spec; config paths are checked relative to `root` (None: not checked)."""
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: a study spec is a YAML mapping")
    raw = dict(raw)
    if "axes" not in raw:
        raise SpecError(f"{where}: missing key 'axes' (e.g. axes: {{cell: [vq_vq], seed: [0, 1, 2]}})")
    raw["axes"] = [dict(a) for a in _as_list(raw["axes"])]
    if "regimes" in raw:
        raw["regimes"] = {k: _build(Regime, v, f"{where}: regimes.{k}") for k, v in (raw["regimes"] or {}).items()}
    if "variants" in raw:
        raw["variants"] = {"default": Variant(), **{k: _build(Variant, v or {}, f"{where}: variants.{k}") for k, v in (raw["variants"] or {}).items()}}
    raw["scales"] = {k: _build(Scale, v, f"{where}: scales.{k}") for k, v in (raw.get("scales") or {}).items()}
    if "eval" in raw:
        raw["eval"] = _build(Eval, raw["eval"] or {}, f"{where}: eval")
    raw["comparisons"] = [_build(Comparison, c, f"{where}: comparisons[{i}]") for i, c in enumerate(raw.get("comparisons") or [])]
    raw["trends"] = [_build(Trend, t, f"{where}: trends[{i}]") for i, t in enumerate(raw.get("trends") or [])]
    raw["probes"] = [_build(Probe, t, f"{where}: probes[{i}]") for i, t in enumerate(raw.get("probes") or [])]
    spec = _build(Spec, raw, where)
    scale = spec.scales.get(spec.scale)
    if scale is not None and scale.axes is not None:
        spec.axes = [dict(a) for a in _as_list(scale.axes)]
    if not isinstance(spec.cells, dict) or not spec.cells:
        raise SpecError(f"{where}: cells must map each cell name to its fit config(s), e.g. cells: {{vq_vq: [configs/smartwatch/vq_vq.yaml]}}")
    spec.cells = {k: _cell(v, f"{where}: cells.{k}") for k, v in spec.cells.items()}
    if spec.scale in spec.scales and spec.scales[spec.scale].fractions:
        spec.fractions = list(spec.scales[spec.scale].fractions)
    _check(spec, None if root is None else Path(root), where)
    return spec


def _check(spec: Spec, root: Path | None, where: str) -> None:
    for name, regime in spec.regimes.items():
        regime.task_weights = _weights(regime.task_weights, f"{where}: regimes.{name}.task_weights")
        if regime.match not in ("samples", "steps"):
            raise SpecError(f"{where}: regimes.{name}.match must be 'samples' or 'steps', got {regime.match!r}")
    if spec.reference_regime not in spec.regimes:
        raise SpecError(f"{where}: reference_regime '{spec.reference_regime}' is not among regimes: {', '.join(spec.regimes)}")
    ref = spec.regimes[spec.reference_regime].task_weights
    for name, regime in spec.regimes.items():
        if regime.match == "samples" and set(regime.task_weights) - set(ref):
            raise SpecError(f"{where}: regimes.{name} trains tasks the reference regime '{spec.reference_regime}' lacks; use match: steps")
    if spec.scale not in spec.scales:
        raise SpecError(f"{where}: scale '{spec.scale}' has no entry under scales (known: {', '.join(spec.scales) or 'none'})")
    for name, sc in spec.scales.items():
        if sc.keep_checkpoints not in ("all", "final"):
            raise SpecError(f"{where}: scales.{name}.keep_checkpoints must be 'all' or 'final', got {sc.keep_checkpoints!r}")
    if not spec.fractions or any(not 0 < f <= 1 for f in spec.fractions):
        raise SpecError(f"{where}: fractions must be numbers in (0, 1], got {spec.fractions}")
    bad = [s for s in spec.eval.splits if s not in ("val", "test")]
    if bad:
        raise SpecError(f"{where}: eval.splits may hold val and test, got {bad}")
    for i, axes in enumerate(spec.axes):
        for key in axes:
            if key not in AXES:
                raise SpecError(f"{where}: axes[{i}]: unknown axis '{key}'; known axes: {', '.join(AXES)}")
        for key, pool in (("cell", spec.cells), ("regime", spec.regimes), ("variant", spec.variants)):
            for value in _as_list(axes.get(key, [])):
                if value not in pool:
                    raise SpecError(f"{where}: axes[{i}].{key}: '{value}' is not defined; defined: {', '.join(pool)}")
        if "cell" not in axes:
            raise SpecError(f"{where}: axes[{i}] needs a 'cell' axis")
    for i, c in enumerate(spec.comparisons):
        for r in (c.a, c.b):
            if r not in spec.regimes:
                raise SpecError(f"{where}: comparisons[{i}]: regime '{r}' is not defined; defined: {', '.join(spec.regimes)}")
        if c.expect not in ("higher", "lower"):
            raise SpecError(f"{where}: comparisons[{i}].expect must be 'higher' or 'lower', got {c.expect!r}")
    for i, t in enumerate(spec.trends):
        for r in (t.a, t.b):
            if r not in spec.regimes:
                raise SpecError(f"{where}: trends[{i}]: regime '{r}' is not defined; defined: {', '.join(spec.regimes)}")
        if t.over != "misalign":
            raise SpecError(f"{where}: trends[{i}].over: only 'misalign' is a numeric axis, got {t.over!r}")
        if t.expect not in ("higher", "lower"):
            raise SpecError(f"{where}: trends[{i}].expect must be 'higher' or 'lower' (the slope's sign), got {t.expect!r}")
    for i, probe in enumerate(spec.probes):
        if probe.where not in ("encoder", "adapter", "output") or probe.pool not in ("flatten", "mean"):
            raise SpecError(f"{where}: probes[{i}]: where must be encoder, adapter or output, and pool flatten or mean")
        for r in probe.regimes or []:
            if r not in spec.regimes:
                raise SpecError(f"{where}: probes[{i}]: regime '{r}' is not defined; defined: {', '.join(spec.regimes)}")
    for key, tf in [("eval.test_fractions", spec.eval.test_fractions)] + [(f"scales.{k}.test_fractions", v.test_fractions)
                                                                          for k, v in spec.scales.items() if v.test_fractions is not None]:
        if not (tf in ("all", "final") or (isinstance(tf, list) and all(isinstance(f, (int, float)) for f in tf))):
            raise SpecError(f"{where}: {key} must be 'all', 'final' or a list of fractions, got {tf!r}")
    if spec.eval.in_fit and spec.eval.overrides:
        raise SpecError(f"{where}: eval.overrides change the evaluation, which in_fit scoring cannot; set eval.in_fit: false")
    for name, v in spec.variants.items():
        if v.build and not v.data_dir:
            raise SpecError(f"{where}: variants.{name} has build but no data_dir to build it into")
    configs = [p for cell in spec.cells.values() for p in cell.configs] + [p for v in spec.variants.values() for p in v.configs + ([v.build] if v.build else [])]
    configs += [p for sc in spec.scales.values() for p in sc.configs]
    for path in configs if root is not None else []:
        if not (root / path).is_file():
            raise SpecError(f"{where}: config file {path} not found (paths are relative to {root})")


def load_spec(path: str | Path, root: Path | str | None = ".", scale: str | None = None) -> Spec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"no study spec at {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exn:
        raise SpecError(f"{path}: not valid YAML ({str(exn).splitlines()[0]})") from None
    if scale is not None:
        raw = {**(raw or {}), "scale": scale}
    return parse_spec(raw, root, where=str(path))


def expand(spec: Spec) -> list[Run]:
    """Every run of the spec: the union of its grids (each a cross product), seeds outermost."""
    runs: dict[Run, None] = {}
    for axes in spec.axes:
        values = [
            _as_list(axes["cell"]),
            _as_list(axes.get("regime", [spec.reference_regime])),
            [None if m is None else float(m) for m in _as_list(axes.get("misalign", [None]))],
            _as_list(axes.get("variant", ["default"])),
            [int(s) for s in _as_list(axes.get("seed", [0]))],
        ]
        for cell, regime, misalign, variant, seed in itertools.product(*values):
            runs[Run(cell, regime, misalign, variant, seed, spec.scale)] = None
    seeds = sorted({r.seed for r in runs})
    return sorted(runs, key=lambda r: seeds.index(r.seed))  # stable: grid order within a seed


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 1, 1
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise SpecError(f"--shard takes i/n with 1 <= i <= n (e.g. 2/3), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def shard(runs: list[Run], i: int, n: int) -> list[Run]:
    """Every n-th run starting at run i (1-based): shards 1..n cover each run once."""
    return runs[i - 1 :: n]
