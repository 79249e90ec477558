"""The README's plugin example works as written: its head installs (the entry point pip would
record), is listed by `lightning-vlm plugins`, fits and tests (vector-quantize-pytorch's
test_readme pattern: documentation that cannot silently rot)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import tomllib
import torch
import yaml
from tiny_encoders import export_tiny_encoders, export_tiny_reader

from lightning_vlm.data.datamodule import VLMDataModule
from lightning_vlm.training import UnifiedVLM

README = Path(__file__).parents[1] / "README.md"


def code_blocks(text: str) -> dict[str, str]:
    """The README's first fenced block of each language (python, toml, yaml)."""
    blocks = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", text, flags=re.S):
        blocks.setdefault(lang, body)
    return blocks


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The README's module and entry point, as `pip install` of its package would leave them."""
    blocks = code_blocks(README.read_text())
    assert {"python", "toml", "yaml"} <= set(blocks), "README lost its plugin example"
    lines = len(blocks["python"].strip().splitlines())
    assert 20 <= lines <= 45, f"the README head is {lines} lines; about 40 is the promise"
    (name, target), = tomllib.loads(blocks["toml"])["project"]["entry-points"]["lightning_vlm.heads"].items()
    module = target.split(":")[0]
    site = tmp_path_factory.mktemp("site")
    (site / f"{module}.py").write_text(blocks["python"])
    info = site / "readme_head-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: readme-head\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[lightning_vlm.heads]\n{name} = {target}\n")
    sys.path.insert(0, str(site))
    yield name, yaml.safe_load(blocks["yaml"])["model"]["init_args"], site
    sys.path.remove(str(site))


def test_the_readme_head_is_listed(installed):
    name, _, site = installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "lightning_vlm", "plugins", "heads"], env=env, capture_output=True, text=True, check=True).stdout
    assert re.search(rf"^\s+{name}\s+readme-head 0.1", out, flags=re.M), out


def test_the_readme_head_fits_and_tests(installed, tiny_data, tmp_path):
    name, config, _ = installed
    assert config["head"] == name
    enc = export_tiny_encoders(tmp_path, image_size=32)
    torch.manual_seed(0)
    module = UnifiedVLM(tokenizer_path=str(tiny_data / "tokenizer.json"), input_encoder=str(enc["vq"]), backbone="tiny",
                        backbone_overrides={"n_layers": 1, "dim": 32, "n_heads": 2, "n_kv_heads": 1, "mlp_hidden": 64},
                        head=config["head"], head_options=config["head_options"], max_new_tokens=3)
    assert type(module.model.image_head).__name__ != "DiscreteHead"
    dm = VLMDataModule(str(tiny_data), batch_size=4, eval_batch_size=8, num_workers=0, image_tokens_in=16, image_tokens_out=16,
                       reader=str(export_tiny_reader(tmp_path / "reader.ckpt")))
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=0, limit_test_batches=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    before = [p.clone() for p in module.model.image_head.parameters()]
    trainer.fit(module, dm)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.model.image_head.parameters()))  # the head trained
    metrics = trainer.test(module, dm, verbose=False)[0]
    assert "test/gen/prompt_gain" in metrics and "test/vqa/total" in metrics
