"""Which precision a CPU run gets when its config asks for bf16-mixed.

The packaged defaults train in bf16-mixed: on GPUs and on CPUs with native bf16 kernels
(AVX-512 or AMX) it is the faster choice. On CPUs without them (AVX2 only, as on many
laptops and some cloud VMs) autocast's bf16 convolutions and matrix products fall back to
reference kernels that run many times slower than fp32 (`benchmarks/precision_kernels.py`;
benchmarks/RESULTS.md, "CPUs without native bf16"). There a run silently taking 10x longer
is worse than a run in fp32, so the CLI switches such a run to 32-true and says so in one line.
"""

from __future__ import annotations

import functools
import os

import torch

KEEP_BF16_ENV = "LIGHTNING_VLM_CPU_BF16"  # =1 keeps bf16-mixed on any CPU (e.g. to reproduce a bf16 run bit for bit)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls and convolutions in vectorised kernels (oneDNN's test)."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "SVE256"):  # AVX2, NO AVX, DEFAULT: none
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 path either
        return False


def runs_on_cpu(accelerator) -> bool:
    """A trainer's accelerator setting resolves to the CPU ("auto" without a GPU included)."""
    name = str(accelerator or "auto").lower()
    if name == "cpu":
        return True
    return name == "auto" and not torch.cuda.is_available() and not torch.backends.mps.is_available()


def cpu_precision(precision, accelerator) -> tuple[object, str | None]:
    """(precision to use, a one-line reason when it differs from the one asked for)."""
    asked = str(precision)
    if not asked.startswith("bf16") or not runs_on_cpu(accelerator) or cpu_has_native_bf16():
        return precision, None
    if os.environ.get(KEEP_BF16_ENV) == "1":
        return precision, None
    capability = torch.backends.cpu.get_cpu_capability()
    return "32-true", (
        f"precision {asked} -> 32-true: this CPU ({capability}) has no native bf16 kernels: bf16 runs "
        f"many times slower than fp32 there (benchmarks/precision_kernels.py); {KEEP_BF16_ENV}=1 keeps {asked}"
    )
