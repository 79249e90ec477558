"""The `lightning-vlm fit/test` command lines of one run of a study."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .layout import RunDir
from .spec import Run, Spec

FRACTION_CALLBACK = "lightning_vlm.study.fraction_checkpoint.FractionCheckpoint"
DEFAULTS = resources.files("lightning_vlm") / "defaults.yaml"  # what the CLI reads before any --config


def compose(paths: list[str], root: Path | str = ".") -> dict:
    """The configs merged as `lightning-vlm fit` reads them: the packaged defaults, then each --config;
    later keys win, lists are replaced (`key+:` appends)."""
    out: dict = yaml.safe_load(DEFAULTS.read_text()) or {}
    for path in paths:
        _merge(out, yaml.safe_load((Path(root) / path).read_text()) or {})
    return out


def _merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if key.endswith("+") and isinstance(value, list):
            into[key[:-1]] = [*(into.get(key[:-1]) or []), *copy.deepcopy(value)]
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def dotted_get(config: dict, key: str, default=None):
    for part in key.split("."):
        if not isinstance(config, dict) or part not in config:
            return default
        config = config[part]
    return config


def cli_value(value) -> str:
    """A value as jsonargparse reads it from the command line."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(", ", ": "))
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return str(value)


def flags(overrides: dict) -> list[str]:
    return [part for key, value in overrides.items() for part in (f"--{key}", cli_value(value))]


@dataclass
class RunCommands:
    """Everything `plan` prints and `run` executes for one run."""

    run: Run
    dir: RunDir
    epoch_samples: int
    epochs: int
    data_dir: str | None
    fit: list[str]
    evals: list[tuple[float, str, list[str]]]  # (fraction, split, command)
    probes: list[tuple[str, list[str]]] = field(default_factory=list)  # (output JSON, command) on the final checkpoint


def run_commands(spec: Spec, run: Run, out: str | Path, root: Path | str = ".") -> RunCommands:
    scale, variant, cell = spec.active_scale, spec.variants[run.variant], spec.cells[run.cell]
    rd = RunDir.of(out, run)
    configs = [*cell.configs, *scale.configs, *variant.configs]
    composed = compose(configs, root)
    config_flags = [part for path in configs for part in ("--config", path)] + flags(cell.overrides)
    data_dir = variant.data_dir.format(scale=spec.scale) if variant.data_dir else None
    shared = {"seed_everything": run.seed}
    if data_dir:
        shared["data.init_args.data_dir"] = data_dir
    later = [*flags(scale.overrides), *flags(variant.overrides), *map(str, spec.extra_args)]

    fit = {**shared, "trainer.default_root_dir": str(rd.path)}
    if isinstance(dotted_get(composed, "trainer.logger"), dict):
        fit["trainer.logger.init_args.save_dir"] = str(rd.path)
    fit["trainer.callbacks"] = _callbacks(composed, rd.path, spec, run.regime)
    fit["trainer.max_epochs"] = scale.epochs
    fit["data.init_args.task_weights"] = spec.regimes[run.regime].task_weights
    fit["data.init_args.epoch_samples"] = spec.epoch_samples(run.regime)
    if run.misalign is not None:
        fit["model.init_args.misalign_strength"] = run.misalign
    if data_dir:
        fit["model.init_args.tokenizer_path"] = str(Path(data_dir) / "tokenizer.json")
    resume = None if rd.fit_done.is_file() else rd.resume_from()
    fit_cmd = ["lightning-vlm", "fit", *config_flags, *flags(fit), *later] + (["--ckpt_path", str(resume)] if resume else [])

    evals = []
    for fraction in sorted(spec.fractions):
        for split in spec.eval.splits:
            ev = {**shared, "trainer.default_root_dir": str(rd.path / "eval"), "trainer.logger": False}
            tasks = eval_tasks(spec, run.regime)
            if tasks:
                ev["data.init_args.eval_tasks"] = tasks
            if split != "test":
                ev["data.init_args.test_split"] = split
            cmd = ["lightning-vlm", "test", *config_flags, *flags(ev), *later, *flags(spec.eval.overrides),
                   "--ckpt_path", str(rd.eval_ckpt(fraction, split))]
            evals.append((fraction, split, cmd))
    effective = dotted_get(composed, "data.init_args.data_dir")
    effective = data_dir or scale.overrides.get("data.init_args.data_dir") or variant.overrides.get("data.init_args.data_dir") \
        or cell.overrides.get("data.init_args.data_dir") or effective
    final = rd.fraction_ckpt(max(spec.fractions))
    probes = []
    for p in spec.probes:
        if p.regimes is None or run.regime in p.regimes:
            out = final.with_name(f"{final.stem}.probe_{p.where}_{p.pool}.json")
            attrs = [part for a in p.attributes for part in ("--attribute", a)]
            probes.append((str(out), ["lightning-vlm", "probe", "--ckpt", str(final), "--where", p.where, "--pool", p.pool, *attrs, "--out", str(out)]))
    return RunCommands(run, rd, spec.epoch_samples(run.regime), scale.epochs, effective, fit_cmd, evals, probes)


def eval_tasks(spec: Spec, regime: str) -> list[str] | None:
    """The spec's evaluation tasks that the regime trains (a generation-only model is not asked questions it
    never learnt to answer: its answers run to max_new_tokens and would dominate the run's time); all of
    them when the regime trains none (None: every task of the split)."""
    if not spec.eval.tasks:
        return None
    trained = [t for t in spec.eval.tasks if t in spec.regimes[regime].task_weights]
    return trained or list(spec.eval.tasks)


def _callbacks(composed: dict, run_dir: Path, spec: Spec, regime: str) -> list[dict]:
    """The configs' callbacks with every ModelCheckpoint writing into the run folder, plus FractionCheckpoint
    (which also scores each fraction checkpoint when the spec's `eval.in_fit` is on)."""
    callbacks = copy.deepcopy(dotted_get(composed, "trainer.callbacks") or [])
    found = False
    for cb in callbacks:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("ModelCheckpoint"):
            cb.setdefault("init_args", {})["dirpath"] = str(run_dir)
            found = True
    if not found:  # a run must leave last.ckpt behind to be resumable
        callbacks.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
            "dirpath": str(run_dir), "save_last": True, "every_n_train_steps": 250, "enable_version_counter": False}})
    fraction_args = {"fractions": sorted(spec.fractions), "dirpath": str(run_dir)}
    if spec.eval.in_fit:
        fraction_args.update(evaluate=list(spec.eval.splits), eval_tasks=eval_tasks(spec, regime), test_fractions=spec.test_fractions())
    callbacks.append({"class_path": FRACTION_CALLBACK, "init_args": fraction_args})
    return callbacks


def build_command(spec: Spec, variant_name: str) -> list[str] | None:
    """`lightning-vlm data smartwatch ...` for a variant whose dataset is built from a generator config."""
    v = spec.variants[variant_name]
    if not v.build or not v.data_dir:
        return None
    out = v.data_dir.format(scale=spec.scale)
    return ["lightning-vlm", "data", "smartwatch", "--config", v.build, "--out", out, *map(str, spec.active_scale.build_args)]
