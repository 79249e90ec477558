"""What the CLI tests share: the tiny overlay layered over a shipped config, and running the real CLI (forked, tests/cli_forks.py)."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from tiny_encoders import export_tiny_encoders, export_tiny_reader

ROOT = Path(__file__).parents[1]
CELL = ROOT / "configs/smartwatch/vq_vq.yaml"
FORKS = Path(__file__).with_name("cli_forks.py")


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


class ForkServer:
    """This worker's `cli_forks.py` process, started at the first command; it ends when the worker does (its stdin closes)."""

    def __init__(self):
        self.proc = None
        self.log = tempfile.TemporaryFile("w+")

    def run(self, request: dict) -> tuple[int | None, str, str]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, str(FORKS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self.log, text=True, cwd=ROOT)
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            self.log.seek(0)
            raise RuntimeError(f"the CLI fork server stopped: {self.log.read()[-3000:]}")
        return tuple(json.loads(answer))


SERVER = ForkServer()


def run(*args, cwd, env=None, timeout=600) -> tuple[int | None, str, str]:
    """`lightning-vlm ARGS` in a process of its own, forked from this worker's fork server: exit code, stdout, stderr."""
    return SERVER.run({"args": [str(a) for a in args], "cwd": str(cwd), "env": dict(os.environ if env is None else env),
                       "timeout": timeout})


def cli(*args, cwd):
    """`lightning-vlm ARGS` as a user runs it: its stdout and stderr; fails the test on a non-zero exit."""
    code, out, err = run(*args, cwd=cwd)
    assert code == 0, out[-1500:] + err[-3000:]
    return out + err
