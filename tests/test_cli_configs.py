"""Every shipped VLM config runs fit + test through the CLI on tiny shapes, without warnings a user cannot act on; presets, plugins."""

import json
from pathlib import Path

import pytest
import yaml
from cli_helpers import CELL, cli

ROOT = Path(__file__).parents[1]
CONFIGS = sorted((ROOT / "configs/smartwatch").glob("*.yaml"))


def encoders_of(config: Path) -> tuple[str, str]:
    """The encoder names a config's cell reads and writes (a shipped file stage0/vq.ckpt counts as vq)."""
    args = yaml.safe_load(config.read_text())["model"]["init_args"]
    return Path(args["input_encoder"]).stem, Path(args["output_encoder"]).stem


def token_groups_of(config: Path) -> tuple[int, int]:
    """The (input, output) token groups a config reads and writes in (the tiny encoders' 16 tokens shrink by g^2)."""
    args = yaml.safe_load(config.read_text())["model"]["init_args"]
    return args.get("input_token_group", 1), args.get("output_token_group", 1)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_fast_dev_run_fit_and_test(config, overlay, tmp_path):
    """Fit and test, then what a user could not act on: the frozen encoders' eval-mode notice and Lightning's
    pytree deprecation are silenced, and so is Lightning's tip to install its cloud logger (issue 22)."""
    layer = overlay(*encoders_of(config), groups=token_groups_of(config))
    fast = ["--model.init_args.head_options", "{sampling_steps: 2}"] if "diffusion" in config.stem else []
    fast += ["--model.init_args.compile_backbone", "false"]  # a cold compile is ~100 s here; test_vlm.py checks the compiled path
    fitted = cli("fit", "--config", str(config), "--config", layer, "--trainer.fast_dev_run", "2", *fast, cwd=tmp_path)
    out = cli("test", "--config", str(config), "--config", layer, "--trainer.fast_dev_run", "1", *fast, cwd=tmp_path)
    metrics = json.loads(next(tmp_path.rglob("test_metrics.json")).read_text())
    for name in ("test/vqa/total", "test/vqa/weather", "test/caption/recall", "test/gen/weather", "test/gen/fd_reader"):
        assert name in metrics, (name, sorted(metrics))
    assert "test/vqa/total" in out
    assert [line for line in fitted.splitlines() if "LeafSpec" in line or "in eval mode at the start" in line or "litlogger" in line] == []


def test_data_presets_compose(overlay, tmp_path):
    out = cli("fit", "--config", str(CELL), "--config", str(ROOT / "configs/smartwatch/presets/generation_only.yaml"),
              "--config", overlay("vq", "vq"), "--print_config", cwd=tmp_path)
    assert "task_weights: generation_only" in out


def test_plugin_head_runs_by_name(overlay, tmp_path):
    """The out-of-tree flow head: listed by `lightning-vlm plugins`, picked by name in a config."""
    out = cli("plugins", cwd=tmp_path)
    assert "flow" in out and "lightning-vlm-flow" in out
    cli("fit", "--config", str(ROOT / "configs/smartwatch/diffusion_ae.yaml"), "--config", overlay("ae", "ae"),
        "--model.init_args.head", "flow", "--model.init_args.head_options", "{steps: 2}", "--trainer.fast_dev_run", "2", cwd=tmp_path)


def test_progress_bar_of_a_step_bounded_fit():
    from lightning.pytorch import Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel

    from lightning_vlm.callbacks import StepProgressBar

    descriptions = {}
    for bound in ({"max_steps": 3000}, {"max_epochs": 4}):
        bar = StepProgressBar()
        trainer = Trainer(**bound, callbacks=[bar], logger=False, enable_checkpointing=False)
        bar.setup(trainer, BoringModel(), stage="fit")
        descriptions[next(iter(bound))] = bar._get_train_description(5).strip()
    assert descriptions == {"max_steps": "Epoch 5 · step 0/3000", "max_epochs": "Epoch 5/3"}


def test_every_training_config_checkpoints_while_it_runs():
    """save_top_k: 0 writes last.ckpt only when fit ends: a killed run would leave nothing to resume."""
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        for cb in (config.get("trainer") or {}).get("callbacks") or []:
            if cb["class_path"].endswith("ModelCheckpoint"):
                args = cb.get("init_args", {})
                assert args.get("save_top_k", 1) != 0 and (args.get("monitor") or args.get("every_n_train_steps")), path
