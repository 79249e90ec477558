"""docs/real_data.md as a user runs it: every command of its shell blocks, in the page's order, on tiny
models (a 2-layer Llama with its own tokenizer and chat template, a tiny SigLIP at 224 px, a dozen LLaVA rows).

The page's placeholder folders become the tiny ones and its `paths.yaml` block is used as written with
those folders; fit and test get one more overlay, toy scale on a CPU. A command that fails here fails
for a user, and a command that needs a file an earlier one has not written yet is out of order. The
multi-process lines (DDP, FSDP, SLURM) need several devices: tests/test_strategies.py runs those
presets on 2 CPU processes, and a test here checks that the page names no other preset.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from strategy_fit_script import PRESET  # noqa: E402
from test_chat_format import save_chat_lm  # noqa: E402
from test_llava_import import make_inputs  # noqa: E402

from lightning_vlm.cli import main as cli_main  # noqa: E402

ROOT = Path(__file__).parents[1]
PAGE = ROOT / "docs" / "real_data.md"
SET_UP = {"pip", "jq"}  # installs the extras / converts COCO's captions file: not the package's commands
TOY = {  # composed after the page's own configs for fit and test: a CPU, 2 steps inside the first epoch, small batches
    "trainer": {"accelerator": "cpu", "max_steps": 2, "accumulate_grad_batches": 1, "limit_val_batches": 1, "limit_test_batches": 2, "enable_progress_bar": False},
    "model": {"init_args": {"max_new_tokens": 4, "backbone_overrides": {
        "dtype": "bfloat16", "gradient_checkpointing": True, "lora": {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": "all-linear"}}}},
    "data": {"init_args": {"batch_size": 2, "eval_batch_size": 2, "num_workers": 0, "image_tokens_in": 16, "image_tokens_out": 16}},
}


def logical_lines(block: str) -> list[str]:
    """A shell block's commands: continuation lines joined, a quote left open joined with the next line, comments dropped."""
    lines, pending = [], ""
    for raw in block.splitlines():
        line = (pending + " " + raw.strip()).strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # "No closing quotation": the command goes on
            pending = line
            continue
        pending = ""
        if words:
            lines.append(line)
    return lines


def page_commands() -> list[list[str]]:
    """Every command of the page's ```bash blocks, in order, as argv; `[optional flags]` left out."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", PAGE.read_text(), flags=re.S):
        for line in logical_lines(block):
            words, optional = [], False
            for word in shlex.split(line, comments=True):
                optional = optional or word.startswith("[")
                if not optional:
                    words.append(word)
                optional = optional and not word.endswith("]")
            commands.append(words)
    return commands


def is_multi_process(argv: list[str]) -> bool:
    return argv[0] == "srun" or any(a.startswith("configs/real/") and Path(a).stem in ("ddp", "fsdp") for a in argv)


COMMANDS = [c for c in page_commands() if c[0] not in SET_UP and not is_multi_process(c)]


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    """Runs the page's commands in order in a user's folder; returns (exit code, output) per command."""
    root = tmp_path_factory.mktemp("walkthrough")
    lm = save_chat_lm(root / "models" / "lm")  # an instruct LM: its tokenizer has a chat template (configs/real/chat.yaml)
    torch.manual_seed(0)
    siglip = root / "models" / "siglip"
    transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224, patch_size=56,
    )).save_pretrained(siglip)  # 4 x 4 = 16 tokens at the page's --image-size 224
    inputs = make_inputs(root / "downloads")
    user = root / "user"
    user.mkdir()
    (user / "configs").symlink_to(ROOT / "configs")
    shutil.copy(inputs["json_path"], user / "llava_v1_5_mix665k.json")
    shutil.copy(inputs["captions"], user / "coco_captions.jsonl")
    paths_block = next(b for b in re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), flags=re.S) if b.startswith("# paths.yaml"))
    for placeholder, real in (("/scratch/models/Llama-3.2-1B", lm), ("/scratch/models/siglip-base-patch16-224", siglip),
                              ("/scratch/data/llava", user / "data" / "llava")):
        assert placeholder in paths_block, f"the page's paths.yaml no longer names {placeholder}"
        paths_block = paths_block.replace(placeholder, str(real))
    (user / "paths.yaml").write_text(paths_block)
    (user / "toy.yaml").write_text(yaml.safe_dump(TOY))
    pope = [{"question_id": f"q{i}", "image": name, "question": "Is there a red square in the image?",
             "answer": "yes" if i == 1 else "no", "category": "random"} for i, name in enumerate(["img01.png", "img02.png", "sub/img03.jpg"])]
    (user / "pope_coco.jsonl").write_text("".join(json.dumps(row) + "\n" for row in pope))
    folders = {"/models/siglip-base-patch16-224": siglip, "/data/llava": inputs["images"], "/data/coco/val2014": inputs["images"]}

    results, here = [], os.getcwd()
    os.chdir(user)
    try:
        for argv in COMMANDS:
            argv = [str(folders.get(a, a)) for a in argv]
            unmapped = [a for a in argv if a.startswith("/") and not a.startswith(str(root))]
            assert not unmapped, f"{shlex.join(argv)}: no tiny stand-in for {unmapped}"
            if argv[0] == "lightning-vlm" and "--ckpt" in argv and "real_fsdp" in argv[argv.index("--ckpt") + 1]:
                # the page exports the FSDP run's checkpoint once made one file; test_strategies consolidates a real
                # sharded one, so the one-process run's single-file checkpoint stands in for it here
                Path("runs/real_fsdp").mkdir(parents=True, exist_ok=True)
                shutil.copy("runs/real_single/last.ckpt", "runs/real_fsdp/last.ckpt")
            results.append(run_command(argv))
    finally:
        os.chdir(here)
    return {"user": user, "results": results}


def run_command(argv: list[str]) -> tuple[int, str]:
    """(exit code, what it printed) of `lightning-vlm ...` (the CLI, in this process) or `python -c ...`."""
    out = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            if argv[0] == "lightning-vlm":
                if argv[1] in ("fit", "test"):
                    argv = [*argv, "--config", "toy.yaml"]
                cli_main(argv[1:])
            else:
                assert argv[:2] == ["python", "-c"], argv
                scope: dict = {}
                exec(compile(argv[2], "<docs/real_data.md>", "exec"), scope)
                print("python -c bound:", ", ".join(f"{k}={type(v).__name__}" for k, v in scope.items() if not k.startswith("__")))
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            if not isinstance(done.code, int) and done.code is not None:
                print(done.code)
        except Exception as exc:
            code = 1
            print(f"{type(exc).__name__}: {exc}")
    return code, out.getvalue()


def test_the_page_has_commands_to_run():
    verbs = [" ".join(c[:2]) for c in COMMANDS]
    assert verbs[0] == "lightning-vlm data"  # the import comes first
    assert {"lightning-vlm fit", "lightning-vlm test", "lightning-vlm export", "lightning-vlm eval", "python -c"} <= set(verbs)


@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[" ".join(c[:3])[:40] for c in COMMANDS])
def test_each_command_runs_in_the_pages_order(walkthrough, index):
    code, output = walkthrough["results"][index]
    assert code == 0, f"{shlex.join(COMMANDS[index])}\n{output[-3000:]}"


def test_the_multi_process_lines_are_the_presets_test_strategies_runs():
    tested = {name for configs in PRESET.values() for name in configs}
    named = {Path(a).stem for c in page_commands() if is_multi_process(c) for a in c if a.startswith("configs/real/")} - {"single_gpu"}
    assert named == tested


def test_the_fit_leaves_a_last_checkpoint_at_its_final_step(walkthrough):
    checkpoint = torch.load(walkthrough["user"] / "runs/real_single/last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == TOY["trainer"]["max_steps"]


def test_the_merged_export_loads_as_the_page_says(walkthrough):
    assert "vlm=VLM" in walkthrough["results"][[c[:2] for c in COMMANDS].index(["python", "-c"])][1]


def test_the_chat_format_run_trains_in_its_own_folder(walkthrough):
    assert (walkthrough["user"] / "runs/real_chat/last.ckpt").is_file()


def test_the_adapter_only_export_holds_peft_adapters(walkthrough):
    assert (walkthrough["user"] / "runs/real_single/adapter/adapter/adapter_config.json").is_file()


def test_the_benchmark_evaluation_scores_the_questions(walkthrough):
    scores = json.loads((walkthrough["user"] / "runs/real_single/pope/scores.json").read_text())
    assert scores["answered"] == 3
