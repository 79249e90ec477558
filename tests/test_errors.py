"""A command the user got wrong ends in a few lines that name the file or key and the fix, not a traceback.

Through the real CLI: each command in a child of one process that imported it once (tests/cli_forks.py).
"""

import os
from pathlib import Path

import pytest
import yaml
from cli_helpers import run
from tiny_encoders import export_tiny_encoders, export_tiny_reader

ROOT = Path(__file__).parents[1]
CELL = str(ROOT / "configs/smartwatch/vq_vq.yaml")
MAX_LINES = 5


def tiny_overlay(folder: Path, data: Path, enc: dict, reader_ckpt: Path, **model) -> str:
    """A config layered over a shipped cell: every part valid and tiny, unless `model` overrides it (`reader`: the data's)."""
    reader_ckpt = model.pop("reader", reader_ckpt)
    path = folder / f"overlay-{len(list(folder.glob('overlay-*')))}.yaml"
    path.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "logger": False},
        "model": {"init_args": {
            "tokenizer_path": str(data / "tokenizer.json"), "input_encoder": str(enc["vq"]), "output_encoder": str(enc["vq"]),
            "max_new_tokens": 4,
            "backbone_overrides": {"n_layers": 1, "dim": 32, "n_heads": 2, "n_kv_heads": 1, "mlp_hidden": 64}, **model,
        }},
        "data": {"init_args": {"data_dir": str(data), "image_tokens_in": 16, "image_tokens_out": 16, "batch_size": 4,
                               "eval_batch_size": 15, "num_workers": 0, "reader": str(reader_ckpt)}},
    }))
    return str(path)


@pytest.fixture(scope="module")
def failures(tmp_path_factory, tiny_data):
    """Each case's (command and what to find, exit code, stdout, stderr)."""
    folder = tmp_path_factory.mktemp("errors")
    enc = export_tiny_encoders(folder, image_size=32)
    reader = export_tiny_reader(folder / "reader.ckpt")
    gone = folder / "nowhere"
    typo = folder / "typo.yaml"
    typo.write_text(yaml.safe_dump({"data": {"init_args": {"bach_size": 3}}}))
    fine = tiny_overlay(folder, tiny_data, enc, reader)
    moved = folder / "moved.yaml"
    moved.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "lightning_vlm.encoders.export.ExportEncoder", "init_args": {"path": "x.ckpt"}}]}}))
    cases = {
        "data_dir": (["fit", "--config", CELL, "--config", fine, "--data.init_args.data_dir", str(gone / "data")],
                     str(gone / "data"), ["lightning-vlm data smartwatch", "set by data.init_args.data_dir"]),
        "tokenizer": (["fit", "--config", CELL, "--config",
                       tiny_overlay(folder, tiny_data, enc, reader, tokenizer_path=str(gone / "tokenizer.json"))],
                      str(gone / "tokenizer.json"), ["lightning-vlm data", "set by model.init_args.tokenizer_path"]),
        "encoder": (["fit", "--config", CELL, "--config", tiny_overlay(folder, tiny_data, enc, reader, input_encoder=str(gone / "vq.ckpt"))],
                    str(gone / "vq.ckpt"), ["checkpoint path", "set by model.init_args.input_encoder"]),
        # The reader is opened when testing starts (UnifiedVLM.on_test_epoch_start): checked before anything is built.
        "reader": (["test", "--config", CELL, "--config", tiny_overlay(folder, tiny_data, enc, reader, reader=str(gone / "reader.ckpt"))],
                   str(gone / "reader.ckpt"), ["configs/eval/reader.yaml", "data.init_args.reader: null"]),
        "cli_key": (["fit", "--config", CELL, "--config", fine, "--model.init_args.lrr", "0.1"],
                    "model.init_args.lrr", ["did you mean 'model.init_args.lr'", "--model.help UnifiedVLM"]),
        "yaml_key": (["fit", "--config", CELL, "--config", fine, "--config", str(typo)],
                     "data.init_args.bach_size", [str(typo), "did you mean 'data.init_args.batch_size'"]),
        "moved_class": (["fit", "--config", CELL, "--config", fine, "--config", str(moved)],
                        "lightning_vlm.encoders.export.ExportEncoder", ["class_path: lightning_vlm.callbacks.ExportEncoder"]),
        # --debug (stripped before LightningCLI sees it) keeps the whole traceback of the same mistake.
        "debug": (["fit", "--debug", "--config", CELL, "--config", fine, "--model.init_args.lrr", "0.1"], "lrr", ["Traceback"]),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LIGHTNING_VLM_DEBUG", None)
    return {name: (case, *run(*case[0], cwd=folder, env=env)) for name, case in cases.items()}


@pytest.mark.parametrize("case", ["data_dir", "tokenizer", "encoder", "reader", "cli_key", "yaml_key", "moved_class"])
def test_user_errors_are_short_and_name_the_fix(failures, case):
    (args, names, fixes), code, out, err = failures[case]
    assert code != 0, (args, out[-2000:], err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) <= MAX_LINES, f"{len(lines)} lines on stderr:\n{err[-4000:]}"
    assert "Traceback" not in err and "usage:" not in err, err
    assert names in err, err
    assert all(fix in err for fix in fixes), err
    assert "--debug" in err, err  # says how to get the full traceback


def test_debug_flag_shows_the_traceback(failures):
    (args, names, fix), code, out, err = failures["debug"]
    assert code != 0 and "Traceback" in err and names in err, err[-3000:]
    assert "unrecognized arguments: --debug" not in err, err[-3000:]


def test_explain_rebuilds_nested_keys():
    """The key of a jsonargparse error is rebuilt from its wrappers; bugs (not user errors) keep their traceback."""
    import argparse

    from lightning_vlm.errors import explain

    def wrapped(*messages):
        exc = None
        for message in reversed(messages):  # innermost last
            outer = argparse.ArgumentError(None, message)
            outer.__cause__ = exc
            exc = outer
        return exc

    exc = wrapped('Parser key "model":\n  Does not validate', "Problem with given class_path "
                  "'lightning_vlm.data.datamodule.VLMDataModule':\n  Option 'bach_size' is not accepted",
                  "Option 'bach_size' is not accepted")
    lines, code = explain(exc, "lightning-vlm fit", [])
    assert code == 2 and "'model.init_args.bach_size'" in lines[0] and "did you mean 'model.init_args.batch_size'" in lines[0]
    assert explain(RuntimeError("a bug"), "lightning-vlm fit", []) is None
    assert explain(ValueError("from a library, not ours"), "lightning-vlm fit", []) is None
