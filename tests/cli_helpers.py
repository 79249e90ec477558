"""What the CLI tests share: the tiny overlay layered over a shipped config, and running the real CLI."""

import subprocess
import sys
from pathlib import Path

import yaml
from tiny_encoders import export_tiny_encoders, export_tiny_reader

ROOT = Path(__file__).parents[1]
CELL = ROOT / "configs/smartwatch/vq_vq.yaml"


def overlay_writer(folder: Path, tiny_data: Path):
    """write(inp, out, groups, **trainer) -> a config layered over a shipped one: tiny data, encoders, reader and backbone."""
    enc = export_tiny_encoders(folder, image_size=32)
    reader = export_tiny_reader(folder / "reader.ckpt")

    def write(inp, out, groups=(1, 1), **trainer):
        settings = "".join(f"-{k}={v}" for k, v in sorted(trainer.items()))  # one file per distinct overlay: none is rewritten
        path = folder / f"overlay-{inp}-{out}-{groups[0]}-{groups[1]}{settings}.yaml"
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


def cli(*args, cwd):
    """`lightning-vlm ARGS` in its own process (as a user runs it): its stdout and stderr; fails the test on a non-zero exit."""
    res = subprocess.run([sys.executable, "-m", "lightning_vlm", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-3000:]
    return res.stdout + res.stderr
