"""Test metrics inside a running fit: the evaluator, loader, seed and precision of `lightning-vlm test`.

A study scores each fraction checkpoint on val and test. As a `lightning-vlm test` process per
checkpoint and split, that costs a process start, imports and a model load each time (8 per
run at the CPU scale); here the weights being trained are scored where they are, with the same
code path as `UnifiedVLM.test_step`, so the metrics equal those of testing the saved checkpoint
(tests/test_study.py checks it).
"""

from __future__ import annotations

import torch

from .evaluator import VLMEvaluator


@torch.no_grad()
def evaluate_split(trainer, module, split: str, tasks: list[str] | None = None) -> dict[str, float]:
    """{"test/<metric>": value} of `module` (a `UnifiedVLM`) on `split` of the trainer's data module.

    Every rank must call it (the metrics sync across ranks). Modules keep their train/eval modes:
    frozen encoders stay in eval mode, the trained ones go back to training.
    """
    dm = trainer.datamodule
    evaluator = VLMEvaluator(dm.scorer(), module.generation_settings()).to(module.device)
    generator = torch.Generator().manual_seed(0)  # as UnifiedVLM.on_test_epoch_start
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with trainer.precision_plugin.test_step_context():
            for batch in dm.eval_dataloader(split, tasks):
                batch = trainer.strategy.batch_to_device(batch, module.device)
                evaluator.update(module.model, batch, generator)
        return {f"test/{k}": v for k, v in evaluator.compute().items()}
    finally:
        for m, training in modes.items():
            m.training = training
