"""Every YAML under configs/ parses against its classes (litgpt's config-hub test).

Training configs go through the real `lightning-vlm` parser (the packaged defaults first), by
the `lightning-vlm fit|predict` command their own header documents, so the documented commands
are checked too; nothing is instantiated and no data or checkpoint is needed. Data-generator
configs go through their loader, study specs through `study.spec` and each of their cells'
fit commands through the parser.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from lightning_vlm.cli import DEFAULTS, cli_class, run_cli
from lightning_vlm.study.commands import run_commands
from lightning_vlm.study.spec import expand, load_spec

ROOT = Path(__file__).parents[1]
ALL = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
DATA = [p for p in ALL if p.startswith("configs/data/")]
SPECS = [p for p in ALL if p.startswith("configs/studies/")]
CLI = [p for p in ALL if p not in DATA and p not in SPECS]


class Parsed(Exception):
    """Raised where the CLI would build the classes: carries the merged config of the verb."""


def parse(args: list[str]):
    """The merged, run-dir-filled config of one `lightning-vlm VERB ...` command, without instantiating it."""

    class ParseOnly(cli_class()):
        def instantiate_classes(self):
            raise Parsed(self.config[self.config.subcommand])

    with pytest.raises(Parsed) as parsed:
        run_cli(args, ParseOnly)
    return parsed.value.args[0]


def documented_command(path: str) -> list[str]:
    """The first `lightning-vlm fit|predict` command of a config's header, without --ckpt_path and [optional] parts."""
    lines = (ROOT / path).read_text().splitlines()
    header = "\n".join(line.lstrip("#").strip() for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])
    logical = header.replace("\\\n", " ").splitlines()  # a trailing backslash continues the command
    found = next(filter(None, (re.search(r"^lightning-vlm (fit|predict) +(.*?)(?= {2,}#| +->|$)", line) for line in logical)), None)
    assert found, f"{path}: its header documents no `lightning-vlm fit` command"
    args = shlex.split(re.sub(r"\[[^\]]*\]", "", found.group(2)))
    if "--ckpt_path" in args:
        at = args.index("--ckpt_path")
        del args[at : at + 2]
    return [found.group(1), *args]


def configs_of(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "--config"]


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs name their paths relative to the repository
    monkeypatch.setattr("sys.argv", ["lightning-vlm"])  # the args go to the CLI; pytest's own must not look like them


@pytest.mark.parametrize("path", CLI)
def test_config_parses_by_its_documented_command(path):
    args = documented_command(path)
    assert path in configs_of(args), f"{path}: its header command does not use it: {args}"
    config = parse(args)
    assert config.trainer.default_root_dir, f"{path}: names no run folder (trainer.default_root_dir)"
    if config.trainer.logger:
        assert config.trainer.logger.init_args.save_dir == config.trainer.default_root_dir


@pytest.mark.parametrize("path", DATA)
def test_data_generator_config_loads(path):
    from lightning_vlm.smartwatch.config import load_config
    assert load_config(ROOT / path).splits["train"].images


@pytest.mark.parametrize("path", SPECS)
def test_study_cells_parse_as_the_study_runs_them(path, tmp_path):
    spec = load_spec(ROOT / path, root=ROOT)
    first_run = {}
    for run in expand(spec):
        first_run.setdefault((run.cell, run.variant), run)
    for run in first_run.values():
        fit = run_commands(spec, run, tmp_path / "study", root=ROOT).fit
        config = parse(fit[1:])
        assert str(config.trainer.default_root_dir).startswith(str(tmp_path))
        assert any(c.class_path.endswith("FractionCheckpoint") for c in config.trainer.callbacks)


def test_every_config_is_covered():
    """Each YAML is parsed by one of the tests above: its own header command, a loader, or a study."""
    assert set(CLI) | set(DATA) | set(SPECS) == set(ALL) and CLI and DATA and SPECS


def test_unknown_key_fails(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"model": {"init_args": {"image_loss_wieght": 0.5}}}))
    with pytest.raises(Exception, match="image_loss_wieght"):
        run_cli(["fit", "--config", "configs/smartwatch/vq_vq.yaml", "--config", str(typo)], cli_class())


def test_defaults_give_logger_and_checkpoint_in_the_run_folder(monkeypatch):
    """An overlay that names only its run folder gets defaults.yaml's logger and callbacks there."""
    monkeypatch.setenv("LIGHTNING_VLM_CPU_BF16", "1")  # the file's precision, whatever this CPU would switch it to
    config = parse(["fit", "--config", "configs/smartwatch/vq_vq.yaml", "--trainer.default_root_dir", "runs/elsewhere"])
    assert config.trainer.logger.class_path.endswith("TensorBoardLogger")
    assert (config.trainer.logger.init_args.save_dir, config.trainer.logger.init_args.name) == ("runs/elsewhere", "tb")
    checkpoint, monitor = config.trainer.callbacks
    assert checkpoint.class_path.endswith("ModelCheckpoint") and checkpoint.init_args.dirpath == "runs/elsewhere"
    assert checkpoint.init_args.save_last and monitor.class_path.endswith("LearningRateMonitor")
    assert config.trainer.precision == "bf16-mixed" and config.seed_everything == 0


def test_no_logger_drops_the_lr_monitor_it_would_need():
    """`--trainer.logger false` must not end in Lightning's "LearningRateMonitor ... has no logger"."""
    config = parse(["fit", "--config", "configs/smartwatch/vq_vq.yaml", "--trainer.logger", "false"])
    assert [c.class_path.rpartition(".")[2] for c in config.trainer.callbacks] == ["ModelCheckpoint"]


def test_callbacks_plus_appends_and_callbacks_replaces():
    encoder = parse(["fit", "--config", "configs/encoders/vq.yaml"])
    assert [c.class_path.rpartition(".")[2] for c in encoder.trainer.callbacks] == ["ModelCheckpoint", "LearningRateMonitor", "ExportEncoder"]
    assert encoder.trainer.callbacks[0].init_args.dirpath == "runs/encoders/vq" and encoder.trainer.gradient_clip_val is None
    reader = parse(["fit", "--config", "configs/eval/reader.yaml"])
    best = reader.trainer.callbacks[0]
    assert (best.init_args.filename, best.init_args.every_n_train_steps, best.init_args.dirpath) == ("best", None, "runs/reader")


def test_print_config_shows_the_merged_result(capsys):
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", "configs/smartwatch/vq_vq.yaml", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["default_root_dir"] == "runs/vq_vq" and printed["trainer"]["precision"] == "bf16-mixed"
    assert printed["trainer"]["callbacks"][0]["init_args"]["save_last"] is True  # from the defaults file
    assert printed["model"]["init_args"]["image_loss_weight"] == 0.2  # from the overlay


def test_missing_run_folder_is_one_clear_error(tmp_path):
    from lightning_vlm.errors import UserError

    bare = yaml.safe_load((ROOT / "configs/smartwatch/vq_vq.yaml").read_text())
    del bare["trainer"]["default_root_dir"]
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump(bare))
    with pytest.raises(UserError, match="default_root_dir"):
        run_cli(["fit", "--config", str(tmp_path / "bare.yaml")], cli_class())


def test_defaults_file_ships_in_the_package():
    assert DEFAULTS.is_file() and DEFAULTS.parent.name == "lightning_vlm"
    assert '"defaults.yaml"' in (ROOT / "pyproject.toml").read_text()


def test_test_time_head_options_merge_into_the_checkpoints(tmp_path):
    """With --ckpt_path the model's arguments come from the checkpoint, but the sampling knobs given win
    and head_options is the checkpoint's dict updated by the given keys (width/depth stay as trained)."""
    import torch

    trained = {"_class_path": "lightning_vlm.training.UnifiedVLM", "tokenizer_path": "data/smartwatch/tokenizer.json",
               "input_encoder": "ae", "head": "diffusion", "head_options": {"width": 64, "depth": 2, "sampling_steps": 25}, "lr": 0.123}
    torch.save({"hyper_parameters": trained}, tmp_path / "last.ckpt")
    config = parse(["test", "--config", "configs/smartwatch/diffusion_ae.yaml", "--ckpt_path", str(tmp_path / "last.ckpt"),
                    "--data.init_args.reader", "null", "--model.init_args.head_options", "{sampling_steps: 50}",
                    "--model.init_args.guidance_scale", "3"])
    init = config.model.init_args
    assert init.head_options == {"width": 64, "depth": 2, "sampling_steps": 50}
    assert (init.guidance_scale, init.lr, init.head) == (3.0, 0.123, "diffusion")
