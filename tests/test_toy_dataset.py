"""A second dataset, a few lines long, trains and tests through the generic model and DataModule.

The toy world: a coloured square on white. VQA asks its colour, generation draws a square of a
named colour; its scorer checks the colour named in the answer and the colour at the centre of
each generated image. The fit and test run in a fresh interpreter, which must never import the
smart-watch package.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from lightning_vlm.data.dataset import DatasetPlugin, Scorer
from lightning_vlm.data.shard_writer import write_samples

# ---- the toy dataset: everything a dataset plugin needs ------------------------------------
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
SIZE = 32


def toy_items(split: str, n: int):
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        image = Image.new("RGB", (SIZE, SIZE), "white")
        image.paste(COLOURS[colour], (8, 8, 24, 24))
        ask = [{"role": "user", "text": "What colour is the square?"}, {"role": "assistant", "text": colour}]
        draw = [{"role": "user", "text": f"Draw a {colour} square."}, {"role": "assistant", "text": "Here it is."}]
        yield split, f"{split}-{i}-vqa", image, {"task": "vqa", "conversations": ask, "colour": colour, "image_id": f"{split}-{i}"}
        yield split, f"{split}-{i}-gen", image, {"task": "generation", "conversations": draw, "colour": colour, "image_id": f"{split}-{i}"}


class ToyScorer(Scorer):
    metric_names = ("vqa/colour", "gen/colour")

    def score_text(self, meta, text, turn):
        return [("vqa/colour", float(text.strip().lower() == meta["colour"]))]

    def score_images(self, images, truth, metas):
        centre = images[:, :, SIZE // 2, SIZE // 2] * 255  # [B, 3]
        palette = torch.tensor(list(COLOURS.values()), dtype=centre.dtype, device=centre.device)
        nearest = torch.cdist(centre, palette).argmin(1).tolist()
        return [("gen/colour", float(list(COLOURS)[k] == m["colour"])) for k, m in zip(nearest, metas)]


class ToyDataset(DatasetPlugin):
    name = "toy"

    def scorer(self, reader=None):
        return ToyScorer()


# ---- the run, in a fresh interpreter -------------------------------------------------------
def fit_and_test(data_dir: str, encoder: str, work: str) -> dict:
    """Writes the toy shards, fits a tiny UnifiedVLM 2 steps and tests it; returns the test metrics."""
    import lightning.pytorch as pl

    from lightning_vlm.data.datamodule import VLMDataModule
    from lightning_vlm.training import UnifiedVLM

    items = [item for split, n in (("train", 6), ("val", 3), ("test", 3)) for item in toy_items(split, n)]
    write_samples(data_dir, f"{__name__}:ToyDataset", items, image_size=SIZE, samples_per_shard=4, vocab_size=300)
    torch.manual_seed(0)
    model = UnifiedVLM(tokenizer_path=str(Path(data_dir) / "tokenizer.json"), input_encoder=encoder, backbone="tiny",
                       backbone_overrides={"n_layers": 1, "dim": 32, "n_heads": 2, "n_kv_heads": 1, "mlp_hidden": 64}, max_new_tokens=3)
    dm = VLMDataModule(data_dir, batch_size=4, num_workers=0, image_tokens_in=16, image_tokens_out=16)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=work)
    trainer.fit(model, dm)
    metrics = trainer.test(model, dm, verbose=False)[0]
    return {"metrics": metrics, "dataset": type(dm.dataset).__name__, "steps": trainer.global_step,
            "smartwatch_imported": sorted(m for m in sys.modules if m.startswith("lightning_vlm.smartwatch"))}


def test_a_toy_dataset_trains_and_tests_without_the_smartwatch_package(tmp_path):
    from tiny_encoders import export_tiny_encoders

    encoder = export_tiny_encoders(tmp_path, image_size=SIZE)["vq"]
    here = Path(__file__).parent
    code = (f"import json, sys; sys.path.insert(0, {str(here)!r}); import test_toy_dataset as t; "
            f"print('RESULT', json.dumps(t.fit_and_test({str(tmp_path / 'toy')!r}, {str(encoder)!r}, {str(tmp_path)!r})))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    assert out["dataset"] == "ToyDataset" and out["steps"] == 2
    metrics = out["metrics"]
    assert {"test/vqa/colour", "test/gen/colour", "test/gen/prompt_gain"} <= set(metrics)
    assert all(0 <= metrics[k] <= 1 for k in ("test/vqa/colour", "test/gen/colour"))
    assert not any(k.startswith(("test/vqa/total", "test/caption", "test/open")) for k in metrics)  # no other dataset's metrics
    assert out["smartwatch_imported"] == []
