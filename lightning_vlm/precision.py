"""Which precision a CPU run gets when its config asks for bf16-mixed.

The packaged defaults train in bf16-mixed: on GPUs and on CPUs with native bf16 kernels
(AVX512-BF16 or AMX) it is the faster choice. On CPUs without them (AVX2 only, as on many
laptops and some cloud VMs, and AVX-512 CPUs without the BF16 extension) autocast's bf16 convolutions and matrix products fall back to
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
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX on x86, SVE on Arm).

    oneDNN's own check (`torch.ops.mkldnn._is_mkldnn_bf16_supported`) is not enough: it is true on
    any AVX-512 CPU, where oneDNN emulates bf16; on an Intel Xeon with AVX-512 but without
    AVX512-BF16 that ran the VQ tokenizer step at 0.32x and the tiny backbone at 0.38x fp32's speed.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "SVE256":
        return True
    if capability != "AVX512":  # AVX2, NO AVX, DEFAULT: no vector bf16
        return False
    return cpu_has_bf16_instructions()


def cpu_has_bf16_instructions() -> bool:
    """x86: the CPU reports AVX512-BF16 or AMX tiles (torch's cpuinfo reading)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch without these probes: fall back to oneDNN's check
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 path either
            return False


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what `platform` knows), printed beside speed figures."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor() or "unknown CPU")
    except OSError:
        return platform.processor() or "unknown CPU"


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
    if capability == "AVX512":
        capability = "AVX512 without AVX512-BF16"
    return "32-true", (
        f"precision {asked} -> 32-true: this CPU ({capability}) has no native bf16 kernels: bf16 runs "
        f"many times slower than fp32 there (benchmarks/precision_kernels.py); {KEEP_BF16_ENV}=1 keeps {asked}"
    )
