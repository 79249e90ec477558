"""The multi-process presets (configs/real/ddp.yaml, fsdp.yaml) run for real on 2 CPU processes (gloo).

Each run is `lightning-vlm fit` with the preset, a tiny Llama + LoRA and tiny LLaVA data
(`strategy_fit_script.py`, which prints one line per event and rank). DDP runs as the preset
says. Lightning's FSDPStrategy refuses a CPU and torch's FSDP needs `device_id=cpu` there, so FSDP
runs as the preset's `VLMFSDPStrategy` with that one change (and torch's GPU-only check of
`sync_module_states` lifted); `test_fsdp_preset_resolves_for_gpus` checks the objects a GPU run gets.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from test_llava_import import OPTIONS, SIZE, make_inputs  # noqa: E402
from test_real_models import save_tiny_lm  # noqa: E402
from tiny_encoders import export_tiny_encoders  # noqa: E402

from lightning_vlm.data.llava import import_llava  # noqa: E402

ROOT = Path(__file__).parents[1]
SCRIPT = Path(__file__).with_name("strategy_fit_script.py")
CLIP = 0.05  # far below the tiny model's gradient norms (3 to 12): every step is clipped


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny Llama with its tokenizer, a tiny VQ encoder (both sides) and an imported LLaVA dataset."""
    root = tmp_path_factory.mktemp("strategies")
    save_tiny_lm(root / "lm")
    import_llava(out=root / "data", progress=False, **make_inputs(root / "in"), **OPTIONS)
    return {"root": root, "lm": root / "lm", "vq": export_tiny_encoders(root, image_size=SIZE)["vq"], "data": root / "data"}


def overlay(world, run: Path, weights_on_rank0: bool) -> Path:
    """The preset at toy scale: 3 steps, a checkpoint at step 2, one validation (answers and images) at step 2."""
    llm = f"hf:{world['lm']}"
    overrides = {"gradient_checkpointing": True, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    if weights_on_rank0:
        overrides["weights_on_rank0"] = True  # as configs/real/fsdp.yaml
    config = {
        "trainer": {"default_root_dir": str(run), "max_steps": 3, "max_epochs": -1, "accumulate_grad_batches": 1,
                    "log_every_n_steps": 1, "val_check_interval": 2, "check_val_every_n_epoch": None, "limit_val_batches": 2,
                    "num_sanity_val_steps": 0, "gradient_clip_val": CLIP, "enable_progress_bar": False, "enable_model_summary": False,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(run / "ckpt"), "filename": "{step}", "every_n_train_steps": 2,
                                                 "save_top_k": -1, "enable_version_counter": False}}]},
        "model": {"init_args": {"tokenizer_path": llm, "backbone": llm, "backbone_overrides": overrides, "input_encoder": str(world["vq"]),
                                "output_encoder": str(world["vq"]), "max_new_tokens": 4, "grid_images": 2}},
        "data": {"init_args": {"data_dir": str(world["data"]), "tokenizer": llm, "batch_size": 2, "eval_batch_size": 4, "num_workers": 0,
                               "epoch_samples": 16,  # the checkpoint at step 2 falls inside an epoch on every rank
                               "image_tokens_in": 16, "image_tokens_out": 16, "eval_tasks": ["vqa", "generation"],
                               "val_split": "test"}},  # the tiny val split has no generation rows; test has both
    }
    run.mkdir(parents=True, exist_ok=True)
    path = run / "overlay.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(mode: str, config: Path, *extra: str, timeout: int = 300) -> SimpleNamespace:
    """Runs the script in a session of its own (Lightning starts rank 1 from rank 0): a hang is killed whole."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on a small CPU
    proc = subprocess.Popen([sys.executable, str(SCRIPT), mode, str(config), *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=SCRIPT.parent, env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return SimpleNamespace(returncode=None, out=out, **events(out))
    return SimpleNamespace(returncode=proc.returncode, out=out, **events(out))


def events(out: str) -> dict:
    """{loss, keys, norm, val, val_local, drew, meta}: per rank, what the script printed."""
    found = {k: {} for k in ("loss", "keys", "norm", "val", "val_local", "drew", "meta")}
    for rank, step, loss, keys in re.findall(r"RANK (\d) STEP (\d+) LOSS (\S+) EPOCH \d+ KEYS (\S+)", out):
        found["loss"].setdefault(int(rank), {})[int(step)] = float(loss)
        found["keys"].setdefault(int(rank), {})[int(step)] = keys
    for rank, kind, norm in re.findall(r"RANK (\d) GRADNORM (\w+) (\S+)", out):
        found["norm"].setdefault(int(rank), []).append((kind, float(norm)))
    for rank, val, und, gen in re.findall(r"RANK (\d) VAL (\S+) DREW (\d) (\d)", out):
        found["val"][int(rank)], found["drew"][int(rank)] = float(val), (und, gen) == ("1", "1")
    for rank, val in re.findall(r"RANK (\d) VALLOCAL (\S+)", out):
        found["val_local"][int(rank)] = float(val)
    for rank, meta in re.findall(r"RANK (\d) META (\w+)", out):
        found["meta"][int(rank)] = meta == "True"
    return found


def finished(run: SimpleNamespace, ranks: int = 2) -> None:
    assert run.returncode == 0 and run.out.count("FINISHED") == ranks, run.out[-6000:]


def fit_and_resume(world, folder: Path, mode: str) -> tuple[SimpleNamespace, SimpleNamespace, Path]:
    """3 steps from scratch, then the same fit resumed from its step-2 checkpoint."""
    config = overlay(world, folder, weights_on_rank0=mode == "fsdp")
    whole = launch(mode, config)
    finished(whole)
    ckpt = folder / "ckpt" / "step=2.ckpt"
    resumed = launch(mode, config, "--ckpt_path", str(ckpt))
    finished(resumed)
    return whole, resumed, ckpt


@pytest.fixture(scope="module")
def fsdp(world):
    whole, resumed, ckpt = fit_and_resume(world, world["root"] / "fsdp", "fsdp")
    return SimpleNamespace(whole=whole, resumed=resumed, ckpt=ckpt)


def test_ddp_preset_fits_resumes_and_ranks_agree(world):
    """Different training batches per rank, the same validation batches: each rank's own validation loss
    equals the other's only if DDP averaged the gradients; the resumed step equals the uninterrupted one."""
    whole, resumed, _ = fit_and_resume(world, world["root"] / "ddp", "ddp")
    assert whole.loss[0][1] != pytest.approx(whole.loss[1][1])  # the ranks read different samples
    assert whole.val_local[0] == pytest.approx(whole.val_local[1], rel=1e-6) == whole.val[0]
    assert whole.drew == {0: True, 1: True}  # answers and images generated on both ranks
    norms = {r: [n for _, n in whole.norm[r]] for r in (0, 1)}
    assert norms[0] == pytest.approx(norms[1], rel=1e-6) and len(norms[0]) == 3
    for rank in (0, 1):
        assert sorted(resumed.loss[rank]) == [3] and resumed.keys[rank][3] == whole.keys[rank][3]
        assert resumed.loss[rank][3] == pytest.approx(whole.loss[rank][3], rel=1e-5)


def test_fsdp_preset_fits_resumes_and_ranks_agree(fsdp):
    """Rank 1 builds the LM on the meta device and gets rank 0's weights; with the same batches on both
    ranks every loss agrees, and the run resumed from the sharded checkpoint repeats step 3."""
    whole, resumed = fsdp.whole, fsdp.resumed
    assert whole.meta == {0: False, 1: True} and re.search(r"leave out the \d+ frozen weights", whole.out)
    for step in (1, 2, 3):
        assert whole.loss[0][step] == pytest.approx(whole.loss[1][step], rel=1e-6)
    assert whole.val_local[0] == pytest.approx(whole.val_local[1], rel=1e-6)
    assert whole.drew == {0: True, 1: True}
    for rank in (0, 1):
        assert sorted(resumed.loss[rank]) == [3] and resumed.keys[rank][3] == whole.keys[rank][3]
        assert resumed.loss[rank][3] == pytest.approx(whole.loss[rank][3], rel=1e-5)
    assert "Did not find param" not in resumed.out  # the frozen weights are left out on purpose, silently


def test_fsdp_clipping_matches_one_process(fsdp, world):
    """The FSDP root's clip_grad_norm_ sees the global norm a single process sees, and clips the same
    update: with the same batches, every step's norm and the losses after clipped steps match."""
    single = launch("single", overlay(world, world["root"] / "single", weights_on_rank0=True))
    finished(single, ranks=1)
    reference = [n for kind, n in single.norm[0] if kind == "torch"]
    assert len(reference) == 3 and min(reference) > CLIP  # every step clipped
    for rank in (0, 1):
        assert [kind for kind, _ in fsdp.whole.norm[rank]] == ["fsdp"] * 3  # the root's clip_grad_norm_, not torch's
        assert [n for _, n in fsdp.whole.norm[rank]] == pytest.approx(reference, rel=1e-5)
        assert [fsdp.whole.loss[rank][s] for s in (1, 2, 3)] == pytest.approx([single.loss[0][s] for s in (1, 2, 3)], rel=1e-5)


def test_fsdp_sharded_checkpoint_holds_trainable_weights_only(fsdp):
    """The checkpoint is a folder of per-rank shards without the frozen LM; consolidated, it loads as a VLM."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint
    from lightning.pytorch.utilities.consolidate_checkpoint import _format_checkpoint
    from torch.distributed.checkpoint import FileSystemReader

    from lightning_vlm.models.checkpoints import load_vlm

    keys = set(FileSystemReader(fsdp.ckpt).read_metadata().state_dict_metadata)
    weights = {k[len("model."):] for k in keys if k.startswith("model.")}
    assert any("lora_B" in k for k in weights) and any(k.startswith("optimizer_0") for k in keys)
    assert not any("base_layer" in k or "embed_tokens" in k or k.endswith("layernorm.weight") for k in weights)
    meta = torch.load(fsdp.ckpt / "meta.pt", weights_only=False)
    assert "model.text_embeddings.base.weight" in meta["frozen_backbone"]["dropped"]
    with pytest.raises(ValueError, match="consolidate_checkpoint"):
        load_vlm(fsdp.ckpt)
    single_file = fsdp.ckpt.with_name("step=2.consolidated.ckpt")
    torch.save(_format_checkpoint(_load_distributed_checkpoint(fsdp.ckpt)), single_file)
    state = torch.load(single_file, weights_only=False)["state_dict"]
    vlm = load_vlm(single_file)  # frozen weights from the model folder, the trained ones from the checkpoint
    lora = next(k for k in state if "lora_B" in k)
    assert torch.equal(vlm.state_dict()[lora], state[lora]) and state[lora].abs().sum() > 0


def test_rank_zero_only_generation_is_caught(world):
    """The former val examples (generated by rank 0 alone) under FSDP: rank 0 waits in a collective rank 1
    never joins. A 10 s process-group timeout from validation on (`RankZeroExamples`) turns that hang into
    a failure, and the 240 s limit of the whole run keeps the suite from waiting forever."""
    run = launch("fsdp-rank0-examples", overlay(world, world["root"] / "rank0", weights_on_rank0=True), timeout=240)
    assert "RANK 0 GENERATES ALONE" in run.out, run.out[-4000:]
    assert "GENERATED ALONE" not in run.out and "FINISHED" not in run.out
    assert run.returncode != 0 and "Timed out waiting" in run.out  # gloo gave up on the collective


def test_fsdp_preset_resolves_for_gpus(world, monkeypatch):
    """What `fit --config single_gpu.yaml --config fsdp.yaml` builds on 8 GPUs (CUDA faked: nothing runs)."""
    from lightning.pytorch.accelerators import CUDAAccelerator
    from lightning.pytorch.plugins.precision import FSDPPrecision
    from lightning.pytorch.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.utilities.model_helpers import is_overridden
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from lightning_vlm.cli import cli_class, run_cli
    from lightning_vlm.training.strategies import VLMFSDPStrategy

    class Resolved(Exception):
        pass

    class ResolveOnly(cli_class()):
        def instantiate_classes(self):
            super().instantiate_classes()
            raise Resolved(self.trainer, self.model)

    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: True))
    monkeypatch.setattr("lightning.fabric.utilities.device_parser._get_all_available_gpus", lambda **kw: list(range(8)))
    paths = overlay(world, world["root"] / "resolve", weights_on_rank0=True)
    config = yaml.safe_load(paths.read_text())
    paths.write_text(yaml.safe_dump({"model": config["model"], "data": config["data"]}))  # the tiny model; the preset's trainer
    with pytest.raises(Resolved) as resolved:
        run_cli(["fit", "--config", str(ROOT / "configs/real/single_gpu.yaml"), "--config", str(ROOT / "configs/real/fsdp.yaml"),
                 "--config", str(paths), "--trainer.default_root_dir", str(world["root"] / "resolve")], ResolveOnly)
    trainer, model = resolved.value.args
    strategy = trainer.strategy
    assert type(strategy) is VLMFSDPStrategy and isinstance(trainer.accelerator, CUDAAccelerator) and strategy.num_processes == 8
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD and strategy._state_dict_type == "sharded"
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {LlamaDecoderLayer}
    assert strategy.kwargs["use_orig_params"] and strategy.kwargs["sync_module_states"]
    assert strategy.kwargs["param_init_fn"] == strategy.allocate_meta_weights
    assert model.hparams.backbone_overrides["weights_on_rank0"]
    precision = trainer.precision_plugin
    assert isinstance(precision, FSDPPrecision) and precision.mixed_precision_config.param_dtype == torch.bfloat16
    assert trainer.gradient_clip_val == 1.0 and trainer.gradient_clip_algorithm is None and trainer.accumulate_grad_batches == 6
    with pytest.raises(MisconfigurationException, match="not supported"):
        precision.clip_gradients(None, 1.0)  # Lightning's own norm clipping under FSDP, which the module replaces
    assert is_overridden("configure_gradient_clipping", model)
    checkpoint = next(c for c in trainer.callbacks if type(c).__name__ == "ModelCheckpoint")
    assert checkpoint._every_n_train_steps == 100 and checkpoint.save_last


def test_meta_weights_need_a_strategy_that_fills_them():
    """A rank that built its LM on the meta device fails early with any strategy that would not copy rank 0's."""
    from lightning.pytorch.strategies import DDPStrategy

    from lightning_vlm.training.strategies import VLMFSDPStrategy, check_meta_weights

    with torch.device("meta"):
        module = torch.nn.Linear(2, 2)
    for strategy, ok in ((DDPStrategy(), False), (VLMFSDPStrategy(sync_module_states=False), False), (VLMFSDPStrategy(), True)):
        module.trainer, module.global_rank = SimpleNamespace(strategy=strategy), 1
        if ok:
            check_meta_weights(module)
        else:
            with pytest.raises(ValueError, match="weights_on_rank0"):
                check_meta_weights(module)
