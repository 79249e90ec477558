"""fp32 vs bf16 autocast on this CPU, side by side: a VQ tokenizer step and a transformer step.

The CLI turns bf16-mixed into 32-true on CPUs without native bf16 kernels
(lightning_vlm/precision.py); this prints the measurement behind that rule for this machine.

    python benchmarks/precision_kernels.py
"""

from __future__ import annotations

import statistics
import time

import torch
from step_efficiency import cpu_model  # benchmarks/step_efficiency.py

from lightning_vlm.encoders.vq import VQEncoder
from lightning_vlm.models.backbone import Backbone, BackboneConfig
from lightning_vlm.precision import cpu_has_native_bf16, cpu_precision


def step_seconds(step, bf16: bool, repeats: int = 2) -> float:
    """Median seconds of one forward + backward of `step`, after one warm-up call."""
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = step()
        loss.float().backward()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    name, amx = cpu_model()
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"CPU: {name} (AMX: {amx}, torch capability {capability}, native bf16: {cpu_has_native_bf16()}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    vq = VQEncoder(channels=[32, 64, 128])  # configs/encoders/vq.yaml
    images = torch.rand(32, 3, 64, 64)
    backbone = Backbone(BackboneConfig.preset("tiny"))  # the quickstart's backbone
    tokens = torch.randn(8, 160, 256)
    cases = {
        "VQ tokenizer step (batch 32, 64 px)": lambda: vq(images)[0].float().square().mean(),
        "tiny backbone step (batch 8 x 160 tokens)": lambda: backbone(tokens).float().square().mean(),
    }
    for label, step in cases.items():
        fp32, bf16 = step_seconds(step, False), step_seconds(step, True)
        print(f"{label}: fp32 {1e3 * fp32:.0f} ms, bf16 autocast {1e3 * bf16:.0f} ms -> bf16 is {fp32 / bf16:.2f}x fp32's speed")
    chosen, reason = cpu_precision("bf16-mixed", "cpu")
    print(f"the CLI runs a bf16-mixed config here in: {chosen}" + (f" ({reason})" if reason else ""))


if __name__ == "__main__":
    main()
