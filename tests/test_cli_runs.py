"""What a run does through the CLI on tiny shapes: DDP, resume, checkpoints, predict, probe, curricula, scores.

Most tests start from one fitted run (`fitted`: 2 steps of vq_vq with the in-fit val scores), each on
its own copy, instead of fitting their own: every CLI process spends seconds importing torch.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import CELL, cli

ROOT = Path(__file__).parents[1]
VAL_SCORES = str(ROOT / "configs/eval/val_scores.yaml")


@pytest.fixture(scope="module")
def fitted(overlay, tmp_path_factory):
    """A folder holding runs/vq_vq of a 2-step fit (last.ckpt at step 2, val_scores.jsonl scored at step 2) and its fit command."""
    folder = tmp_path_factory.mktemp("fitted")
    command = ["fit", "--config", str(CELL), "--config", overlay("vq", "vq"), "--config", VAL_SCORES,
               "--trainer.val_check_interval", "2", "--trainer.num_sanity_val_steps", "0"]
    cli(*command, "--trainer.max_steps", "2", cwd=folder)
    return folder, command


def copy_of(fitted, tmp_path: Path) -> Path:
    """The fitted run's folder copied into tmp_path: a test may write next to its checkpoint."""
    shutil.copytree(fitted[0] / "runs", tmp_path / "runs")
    return tmp_path / "runs/vq_vq"


def test_two_process_test_scores_equal_one_process(fitted, overlay, tmp_path):
    """The fitted checkpoint tested by 2 DDP processes and by 1: the same scores.

    Evaluation batches of one sample make every score a per-sample value, and decoding is greedy
    (text and image temperature 0), so the DDP scores (each sample on one rank, padding copies
    left out, synced across ranks) must equal the single-process ones over the same test split:
    answers, teacher-forced prompt_gain, the reader's scores of generated images and FD-reader.
    KID-reader draws random subsets, so it is left out. Ranks here run different numbers of
    generation batches (5 samples over 2 ranks), as a real test split's last batches do. (A DDP fit:
    test_ddp_data.py with this data module, test_strategies.py through the CLI's DDP preset.)
    """
    run = copy_of(fitted, tmp_path)
    layer = overlay("vq", "vq", precision="32-true")
    scores = {}
    for devices, strategy in ((2, "ddp"), (1, "auto")):
        cli("test", "--config", str(CELL), "--config", layer, "--ckpt_path", "runs/vq_vq/last.ckpt", "--trainer.devices", str(devices),
            "--trainer.strategy", strategy, "--data.init_args.eval_batch_size", "1", cwd=tmp_path)
        metrics = json.loads((run / "last.test_metrics.json").read_text())
        scores[devices] = {k: v for k, v in metrics.items() if not k.startswith("test/gen/kid_reader")}
    assert {"test/vqa/total", "test/caption/recall", "test/gen/prompt_gain", "test/gen/time", "test/gen/fd_reader"} <= set(scores[1])
    assert any(v != 0 for v in scores[1].values())  # not a comparison of zeros
    assert scores[2] == pytest.approx(scores[1], rel=1e-4, abs=1e-6)


def test_resume_continues_from_the_same_step(fitted, tmp_path):
    last = copy_of(fitted, tmp_path) / "last.ckpt"
    out = cli(*fitted[1], "--trainer.max_steps", "4", "--ckpt_path", "last", cwd=tmp_path)
    assert "Restored all states from the checkpoint" in out
    assert torch.load(last, weights_only=False)["global_step"] == 4


def test_last_checkpoint_holds_the_final_step_between_two_saves(overlay, tmp_path):
    """Saves every 2 steps, fit of 3: Lightning alone leaves step 2 in last.ckpt. The CLI adds
    FinalStepCheckpoint to every fit, so this holds for every shipped config."""
    layer = overlay("vq", "vq")
    (tmp_path / "every2.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": "runs/every2", "save_last": True, "every_n_train_steps": 2, "enable_version_counter": False}}]}}))
    cli("fit", "--config", str(CELL), "--config", layer, "--config", "every2.yaml",
        "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0", cwd=tmp_path)
    assert torch.load(tmp_path / "runs/every2/last.ckpt", weights_only=False)["global_step"] == 3


def test_predict_writes_images_and_answers(fitted, overlay, tmp_path, tiny_data):
    copy_of(fitted, tmp_path)
    image = next((tiny_data / "test").glob("*.tar"))  # any readable PNG will do: take one from the shards
    from lightning_vlm.data.shards import iter_raw_samples

    png = tmp_path / "watch.png"
    png.write_bytes(next(iter_raw_samples(str(image), on_error=pytest.fail))["png"])
    requests = tmp_path / "requests.yaml"
    requests.write_text(yaml.safe_dump({"data": {"init_args": {"images": [str(png)], "questions": ["What is the weather?"], "image_size": 32}}}))
    cli("predict", "--config", str(CELL), "--config", overlay("vq", "vq"), "--config", str(ROOT / "configs/predict.yaml"),
        "--config", str(requests), "--ckpt_path", "runs/vq_vq/last.ckpt", cwd=tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "runs/predictions/results-rank0.jsonl").read_text().splitlines()]
    assert [row["kind"] for row in lines] == ["generate", "generate", "answer"]
    assert (tmp_path / "runs/predictions" / lines[0]["image_file"]).is_file()
    assert lines[2]["question"] == "What is the weather?" and isinstance(lines[2]["answer"], str)


def test_probe_command_reads_a_fitted_checkpoint(overlay, tmp_path):
    """A cell whose input encoder differs from its output one (semantic in, vq out): the probe reads the input side."""
    cli("fit", "--config", str(CELL), "--config", overlay("semantic", "vq"), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
        "--trainer.default_root_dir", "runs/semantic_vq", cwd=tmp_path)
    out = cli("probe", "--ckpt", "runs/semantic_vq/last.ckpt", "--attribute", "weather_position", "--where", "encoder",
              "--train-samples", "60", "--test-samples", "30", cwd=tmp_path)
    (row,) = json.loads((tmp_path / "runs/semantic_vq/last.probe_encoder_flatten.json").read_text())
    assert row["attribute"] == "weather_position" and row["test_samples"] == 30 and 0 <= row["test_accuracy"] <= 1
    assert "weather_position" in out
    missing = subprocess.run([sys.executable, "-m", "lightning_vlm", "probe", "--ckpt", "none.ckpt"], cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.strip() == "error: no VLM checkpoint at none.ckpt"


def test_sampling_settings_given_at_test_time_beat_the_checkpoint(fitted, overlay, tmp_path):
    """LightningCLI replaces model arguments by a checkpoint's hyperparameters; sampling knobs must not be."""
    copy_of(fitted, tmp_path)
    out = cli("test", "--config", str(CELL), "--config", overlay("vq", "vq"), "--ckpt_path", "runs/vq_vq/last.ckpt",
              "--trainer.limit_test_batches", "1", "--model.init_args.guidance_scale", "2.5", "--model.init_args.max_new_tokens", "3",
              cwd=tmp_path)
    assert "guidance_scale=2.5" in out and "max_new_tokens=3" in out


def test_each_curriculum_stage_starts_from_the_one_before(overlay, tmp_path):
    """`make curriculum`'s chain: each stage overlay on the cell, started from the stage before's last.ckpt
    (stages 1 and 2 here; every stage file parses in test_configs.py)."""
    layer = overlay("vq", "vq", limit_val_batches=0)
    previous = None
    for n in (1, 2):
        start = ["--model.init_args.init_weights", previous] if previous else []
        out = cli("fit", "--config", str(CELL), "--config", str(ROOT / f"configs/smartwatch/curriculum/stage{n}.yaml"), "--config", layer,
                  "--trainer.default_root_dir", f"runs/vq_vq_stage{n}", "--trainer.max_steps", "2", *start, cwd=tmp_path)
        assert (f"init_weights: started from the weights of {previous}" in out) if previous else ("init_weights" not in out)
        previous = f"runs/vq_vq_stage{n}/last.ckpt"
        assert torch.load(tmp_path / previous, weights_only=False)["global_step"] == 2


def test_val_scores_equal_the_test_metrics_of_the_same_checkpoint_and_split(fitted, overlay, tmp_path):
    """ValScores in the fit process and `lightning-vlm test` on the val split score one checkpoint alike."""
    run = copy_of(fitted, tmp_path)
    record = json.loads((run / "val_scores.jsonl").read_text().splitlines()[-1])
    cli("test", "--config", str(CELL), "--config", overlay("vq", "vq"), "--ckpt_path", "runs/vq_vq/last.ckpt",
        "--data.init_args.test_split", "val", cwd=tmp_path)
    tested = json.loads((run / "last.test_metrics.json").read_text())
    assert record["step"] == 2
    assert {f"test/{k}": v for k, v in record["metrics"].items()} == pytest.approx(tested, rel=1e-6)


def test_val_scores_count_the_samples_of_each_task(fitted):
    record = json.loads((fitted[0] / "runs/vq_vq/val_scores.jsonl").read_text().splitlines()[-1])
    assert sum(record["samples"].values()) == 2 * 4  # two batches of 4
