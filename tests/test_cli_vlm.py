"""Every shipped VLM config runs fit + test through the CLI on tiny shapes; DDP; resume; plugins."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny_encoders import export_tiny_encoders, export_tiny_reader

ROOT = Path(__file__).parents[1]
CONFIGS = sorted((ROOT / "configs/smartwatch").glob("*.yaml"))


@pytest.fixture(scope="module")
def overlay(tmp_path_factory, tiny_data):
    """A config layered over a shipped one: tiny data, encoders, reader and backbone."""
    folder = tmp_path_factory.mktemp("cli")
    enc = export_tiny_encoders(folder, image_size=32)
    reader = export_tiny_reader(folder / "reader.ckpt")

    def write(inp, out, groups=(1, 1), **trainer):
        path = folder / f"overlay-{inp}-{out}-{groups[0]}-{groups[1]}-{len(trainer)}.yaml"
        path.write_text(yaml.safe_dump({
            "trainer": {"accelerator": "cpu", **trainer},
            "model": {"init_args": {
                "tokenizer_path": str(tiny_data / "tokenizer.json"), "input_encoder": str(enc[inp]),
                "output_encoder": str(enc[out]), "max_new_tokens": 4,
                "backbone_overrides": {"n_layers": 1, "dim": 32, "n_heads": 2, "n_kv_heads": 1, "mlp_hidden": 64},
            }},
            "data": {"init_args": {"data_dir": str(tiny_data), "image_tokens_in": 16 // groups[0]**2, "image_tokens_out": 16 // groups[1]**2,
                                   "batch_size": 4, "eval_batch_size": 15, "num_workers": 0, "reader": str(reader)}},
        }))
        return str(path)

    return write


def encoders_of(config: Path) -> tuple[str, str]:
    """The encoder names a config's cell reads and writes (a shipped file stage0/vq.ckpt counts as vq)."""
    args = yaml.safe_load(config.read_text())["model"]["init_args"]
    return Path(args["input_encoder"]).stem, Path(args["output_encoder"]).stem


def token_groups_of(config: Path) -> tuple[int, int]:
    """The (input, output) token groups a config reads and writes in (the tiny encoders' 16 tokens shrink by g^2)."""
    args = yaml.safe_load(config.read_text())["model"]["init_args"]
    return args.get("input_token_group", 1), args.get("output_token_group", 1)


def cli(*args, cwd):
    res = subprocess.run([sys.executable, "-m", "lightning_vlm", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-3000:]
    return res.stdout + res.stderr


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_fast_dev_run_fit_and_test(config, overlay, tmp_path):
    layer = overlay(*encoders_of(config), groups=token_groups_of(config))
    fast = ["--model.init_args.head_options", "{sampling_steps: 2}"] if "diffusion" in config.stem else []
    cli("fit", "--config", str(config), "--config", layer, "--trainer.fast_dev_run", "2", *fast, cwd=tmp_path)
    out = cli("test", "--config", str(config), "--config", layer, "--trainer.fast_dev_run", "1", *fast, cwd=tmp_path)
    metrics = json.loads(next(tmp_path.rglob("test_metrics.json")).read_text())
    for name in ("test/vqa/total", "test/vqa/weather", "test/caption/recall", "test/gen/weather", "test/gen/fd_reader"):
        assert name in metrics, (name, sorted(metrics))
    assert "test/vqa/total" in out


def test_a_fit_prints_no_warning_a_user_cannot_act_on(overlay, tmp_path):
    """The frozen encoders' eval-mode notice and Lightning's pytree deprecation are silenced (issue 22)."""
    config = ROOT / "configs/smartwatch/vq_vq.yaml"
    out = cli("fit", "--config", str(config), "--config", overlay(*encoders_of(config)), "--trainer.max_steps", "2",
              "--trainer.limit_val_batches", "0", cwd=tmp_path)
    assert [line for line in out.splitlines() if "LeafSpec" in line or "in eval mode at the start" in line] == []


def test_data_presets_compose(overlay, tmp_path):
    config = ROOT / "configs/smartwatch/vq_vq.yaml"
    out = cli("fit", "--config", str(config), "--config", str(ROOT / "configs/smartwatch/presets/generation_only.yaml"),
              "--config", overlay("vq", "vq"), "--print_config", cwd=tmp_path)
    assert "task_weights: generation_only" in out


def test_plugin_head_runs_by_name(overlay, tmp_path):
    """The out-of-tree flow head: listed by `lightning-vlm plugins`, picked by name in a config."""
    out = cli("plugins", cwd=tmp_path)
    assert "flow" in out and "lightning-vlm-flow" in out
    cli("fit", "--config", str(ROOT / "configs/smartwatch/diffusion_ae.yaml"), "--config", overlay("ae", "ae"),
        "--model.init_args.head", "flow", "--model.init_args.head_options", "{steps: 2}", "--trainer.fast_dev_run", "2", cwd=tmp_path)


def test_two_process_ddp_fit_and_test(overlay, tmp_path):
    """A 2-process DDP fit, then its checkpoint tested by 2 processes and by 1: the same scores.

    Evaluation batches of one sample make every score a per-sample value, and decoding is greedy
    (text and image temperature 0), so the DDP scores (each sample on one rank, padding copies
    left out, synced across ranks) must equal the single-process ones over the same test split:
    answers, teacher-forced prompt_gain, the reader's scores of generated images and FD-reader.
    KID-reader draws random subsets, so it is left out. Ranks here run different numbers of
    generation batches (5 samples over 2 ranks), as a real test split's last batches do.
    """
    config = str(ROOT / "configs/smartwatch/vq_vq.yaml")
    layer = overlay("vq", "vq", strategy="ddp", devices=2, precision="32-true")
    cli("fit", "--config", config, "--config", layer, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1", cwd=tmp_path)
    assert torch.load(tmp_path / "runs/vq_vq/last.ckpt", weights_only=False)["global_step"] == 3
    scores = {}
    for devices, strategy in ((2, "ddp"), (1, "auto")):
        cli("test", "--config", config, "--config", layer, "--ckpt_path", "runs/vq_vq/last.ckpt", "--trainer.devices", str(devices),
            "--trainer.strategy", strategy, "--data.init_args.eval_batch_size", "1", cwd=tmp_path)
        metrics = json.loads((tmp_path / "runs/vq_vq/last.test_metrics.json").read_text())
        scores[devices] = {k: v for k, v in metrics.items() if not k.startswith("test/gen/kid_reader")}
    assert {"test/vqa/total", "test/caption/recall", "test/gen/prompt_gain", "test/gen/time", "test/gen/fd_reader"} <= set(scores[1])
    assert any(v != 0 for v in scores[1].values())  # not a comparison of zeros
    assert scores[2] == pytest.approx(scores[1], rel=1e-4, abs=1e-6)


def test_resume_continues_from_the_same_step(overlay, tmp_path):
    config = str(ROOT / "configs/smartwatch/vq_vq.yaml")
    layer = overlay("vq", "vq")
    cli("fit", "--config", config, "--config", layer, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0", cwd=tmp_path)
    last = tmp_path / "runs/vq_vq/last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 3
    out = cli("fit", "--config", config, "--config", layer, "--trainer.max_steps", "5", "--trainer.limit_val_batches", "0",
              "--ckpt_path", "last", cwd=tmp_path)
    assert "Restored all states from the checkpoint" in out
    assert torch.load(last, weights_only=False)["global_step"] == 5


def test_last_checkpoint_holds_the_final_step_between_two_saves(overlay, tmp_path):
    """Saves every 2 steps, fit of 3: Lightning alone leaves step 2 in last.ckpt. The CLI adds
    FinalStepCheckpoint to every fit, so this holds for every shipped config."""
    layer = overlay("vq", "vq")
    (tmp_path / "every2.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": "runs/every2", "save_last": True, "every_n_train_steps": 2, "enable_version_counter": False}}]}}))
    cli("fit", "--config", str(ROOT / "configs/smartwatch/vq_vq.yaml"), "--config", layer, "--config", "every2.yaml",
              "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0", cwd=tmp_path)
    assert torch.load(tmp_path / "runs/every2/last.ckpt", weights_only=False)["global_step"] == 3


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


def test_predict_writes_images_and_answers(overlay, tmp_path, tiny_data):
    config = str(ROOT / "configs/smartwatch/vq_vq.yaml")
    layer = overlay("vq", "vq")
    cli("fit", "--config", config, "--config", layer, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", cwd=tmp_path)
    image = next((tiny_data / "test").glob("*.tar"))  # any readable PNG will do: take one from the shards
    from lightning_vlm.data.shards import iter_raw_samples

    png = tmp_path / "watch.png"
    png.write_bytes(next(iter_raw_samples(str(image), on_error=pytest.fail))["png"])
    requests = tmp_path / "requests.yaml"
    requests.write_text(yaml.safe_dump({"data": {"init_args": {"images": [str(png)], "questions": ["What is the weather?"], "image_size": 32}}}))
    cli("predict", "--config", config, "--config", layer, "--config", str(ROOT / "configs/predict.yaml"), "--config", str(requests),
        "--ckpt_path", "runs/vq_vq/last.ckpt", cwd=tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "runs/predictions/results-rank0.jsonl").read_text().splitlines()]
    assert [row["kind"] for row in lines] == ["generate", "generate", "answer"]
    assert (tmp_path / "runs/predictions" / lines[0]["image_file"]).is_file()
    assert lines[2]["question"] == "What is the weather?" and isinstance(lines[2]["answer"], str)


def test_probe_command_reads_a_fitted_checkpoint(overlay, tmp_path):
    config = str(ROOT / "configs/smartwatch/vq_vq.yaml")
    cli("fit", "--config", config, "--config", overlay("semantic", "vq"), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
        "--trainer.default_root_dir", "runs/semantic_vq", cwd=tmp_path)
    out = cli("probe", "--ckpt", "runs/semantic_vq/last.ckpt", "--attribute", "weather_position", "--where", "encoder",
              "--train-samples", "60", "--test-samples", "30", cwd=tmp_path)
    (row,) = json.loads((tmp_path / "runs/semantic_vq/last.probe_encoder_flatten.json").read_text())
    assert row["attribute"] == "weather_position" and row["test_samples"] == 30 and 0 <= row["test_accuracy"] <= 1
    assert "weather_position" in out
    missing = subprocess.run([sys.executable, "-m", "lightning_vlm", "probe", "--ckpt", "none.ckpt"], cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.strip() == "error: no VLM checkpoint at none.ckpt"


def test_every_training_config_checkpoints_while_it_runs():
    """save_top_k: 0 writes last.ckpt only when fit ends: a killed run would leave nothing to resume."""
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        for cb in (config.get("trainer") or {}).get("callbacks") or []:
            if cb["class_path"].endswith("ModelCheckpoint"):
                args = cb.get("init_args", {})
                assert args.get("save_top_k", 1) != 0 and (args.get("monitor") or args.get("every_n_train_steps")), path


def test_sampling_settings_given_at_test_time_beat_the_checkpoint(overlay, tmp_path):
    """LightningCLI replaces model arguments by a checkpoint's hyperparameters; sampling knobs must not be."""
    config = str(ROOT / "configs/smartwatch/vq_vq.yaml")
    layer = overlay("vq", "vq")
    cli("fit", "--config", config, "--config", layer, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", cwd=tmp_path)
    out = cli("test", "--config", config, "--config", layer, "--ckpt_path", "runs/vq_vq/last.ckpt", "--trainer.limit_test_batches", "1",
              "--model.init_args.guidance_scale", "2.5", "--model.init_args.max_new_tokens", "3", cwd=tmp_path)
    assert "guidance_scale=2.5" in out and "max_new_tokens=3" in out


def test_each_curriculum_stage_starts_from_the_one_before(overlay, tmp_path):
    """`make curriculum`'s chain: each stage overlay on the cell, started from the stage before's last.ckpt."""
    config = str(ROOT / "configs/smartwatch/vq_vq.yaml")
    layer = overlay("vq", "vq", limit_val_batches=0)
    previous = None
    for n in (1, 2, 3):
        start = ["--model.init_args.init_weights", previous] if previous else []
        out = cli("fit", "--config", config, "--config", str(ROOT / f"configs/smartwatch/curriculum/stage{n}.yaml"), "--config", layer,
                  "--trainer.default_root_dir", f"runs/vq_vq_stage{n}", "--trainer.max_steps", "2", *start, cwd=tmp_path)
        assert (f"init_weights: started from the weights of {previous}" in out) if previous else ("init_weights" not in out)
        previous = f"runs/vq_vq_stage{n}/last.ckpt"
        assert torch.load(tmp_path / previous, weights_only=False)["global_step"] == 2


def test_val_scores_equal_the_test_metrics_of_the_same_checkpoint_and_split(overlay, tmp_path):
    """ValScores in the fit process and `lightning-vlm test` on the val split score one checkpoint alike."""
    config = str(ROOT / "configs/smartwatch/vq_vq.yaml")
    layer = overlay("vq", "vq")
    cli("fit", "--config", config, "--config", layer, "--config", str(ROOT / "configs/eval/val_scores.yaml"),
        "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.num_sanity_val_steps", "0", cwd=tmp_path)
    record = json.loads((tmp_path / "runs/vq_vq/val_scores.jsonl").read_text().splitlines()[-1])
    cli("test", "--config", config, "--config", layer, "--ckpt_path", "runs/vq_vq/last.ckpt",
        "--data.init_args.test_split", "val", cwd=tmp_path)
    tested = json.loads((tmp_path / "runs/vq_vq/last.test_metrics.json").read_text())
    assert record["step"] == 2
    assert {f"test/{k}": v for k, v in record["metrics"].items()} == pytest.approx(tested, rel=1e-6)


def test_val_scores_count_the_samples_of_each_task(overlay, tmp_path):
    layer = overlay("vq", "vq")
    cli("fit", "--config", str(ROOT / "configs/smartwatch/vq_vq.yaml"), "--config", layer, "--config", str(ROOT / "configs/eval/val_scores.yaml"),
        "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.num_sanity_val_steps", "0", cwd=tmp_path)
    record = json.loads((tmp_path / "runs/vq_vq/val_scores.jsonl").read_text().splitlines()[-1])
    assert sum(record["samples"].values()) == 2 * 4  # two batches of 4
