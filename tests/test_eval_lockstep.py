"""Test-time evaluation when the model is sharded (FSDP): every rank makes the same generation calls.

Two gloo processes evaluate one VQA batch and one generation batch. Rank 1's copies are padding only,
as at the end of a split. With the model counted as sharded, each decoding step is a collective, so a
rank that skipped its batch would leave the other waiting (a 30 s timeout turns that into a failure).
The synced metrics must equal one process scoring the real rows alone.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_vlm.data.datamodule import VLMDataModule
from lightning_vlm.eval.evaluator import VLMEvaluator
from lightning_vlm.training import UnifiedVLM

BACKBONE = {"n_layers": 1, "dim": 32, "n_heads": 2, "n_kv_heads": 1, "mlp_hidden": 64}


def first_batches(data: str) -> list[dict]:
    """The first understanding batch and the first generation batch of the test split."""
    dm = VLMDataModule(data, eval_batch_size=4, num_workers=0, image_tokens_in=16, image_tokens_out=16)
    picked = {}
    for batch in dm.test_dataloader():
        kind = "generation" if batch["meta"][0]["task"] == "generation" else "understanding"
        picked.setdefault(kind, batch)
        if len(picked) == 2:
            return [picked["understanding"], picked["generation"]]
    raise AssertionError("the tiny test split lacks a task")


def evaluate(data: str, vq: str, batches: list[dict], padding_only: bool, sharded: bool) -> dict[str, float]:
    torch.manual_seed(0)
    module = UnifiedVLM(tokenizer_path=str(Path(data) / "tokenizer.json"), input_encoder=vq, output_encoder=vq, backbone="tiny",
                        backbone_overrides=BACKBONE, max_new_tokens=3)
    model = module.model.eval()
    evaluator = VLMEvaluator(VLMDataModule(data, num_workers=0).scorer(), module.generation_settings())
    if sharded:  # counted as FSDP: the evaluator and the decoder loop then act in lockstep over the ranks
        import lightning_vlm.eval.evaluator as evaluator_module
        import lightning_vlm.models.generation as generation_module

        evaluator_module.sharded = generation_module.sharded = lambda model: True
    for batch in batches:
        if padding_only:
            batch["is_padding"] = torch.ones_like(batch["is_padding"])
        evaluator.update(model, batch, torch.Generator().manual_seed(0))
    return evaluator.compute()


def rank_main(rank: int, data: str, vq: str, port: int, out: str) -> None:
    batches = first_batches(data)  # before the process group: both ranks read the same rows, as one process does
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=30))
    try:
        metrics = evaluate(data, vq, batches, padding_only=rank == 1, sharded=True)
        Path(out, f"rank{rank}.json").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tiny_data, encoders, tmp_path_factory):
    out = tmp_path_factory.mktemp("lockstep")
    mp.spawn(rank_main, args=(str(tiny_data), str(encoders["vq"]), free_port(), str(out)), nprocs=2, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_a_rank_of_padding_only_keeps_step_with_the_other(two_ranks):
    assert two_ranks[0] == two_ranks[1]  # both finished, with the same synced metrics


def test_the_stand_in_calls_are_not_scored(two_ranks, tiny_data, encoders):
    alone = evaluate(str(tiny_data), str(encoders["vq"]), first_batches(str(tiny_data)), padding_only=False, sharded=False)
    assert two_ranks[0] == pytest.approx(alone, rel=1e-6)

