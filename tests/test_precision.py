"""bf16-mixed on a CPU without native bf16 kernels becomes 32-true, with one line saying why."""

import pytest
import torch
from jsonargparse import Namespace

from lightning_vlm import precision
from lightning_vlm.cli import choose_cpu_precision


@pytest.fixture
def capability(monkeypatch):
    """Pretend this CPU has the given torch capability (the rule's cache cleared before and after)."""
    def set_capability(name: str):
        precision.cpu_has_native_bf16.cache_clear()
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: name)
    yield set_capability
    precision.cpu_has_native_bf16.cache_clear()


def test_avx2_cpu_trains_bf16_configs_in_fp32(capability, monkeypatch):
    capability("AVX2")
    monkeypatch.delenv(precision.KEEP_BF16_ENV, raising=False)
    chosen, reason = precision.cpu_precision("bf16-mixed", "cpu")
    assert chosen == "32-true" and "AVX2" in reason and precision.KEEP_BF16_ENV in reason
    if not torch.cuda.is_available():
        assert precision.cpu_precision("bf16-mixed", "auto")[0] == "32-true"
    assert precision.cpu_precision("bf16-mixed", "gpu") == ("bf16-mixed", None)  # GPUs keep it
    assert precision.cpu_precision("32-true", "cpu") == ("32-true", None)  # only bf16 is changed
    assert precision.cpu_precision("16-mixed", "cpu") == ("16-mixed", None)
    monkeypatch.setenv(precision.KEEP_BF16_ENV, "1")
    assert precision.cpu_precision("bf16-mixed", "cpu") == ("bf16-mixed", None)


def test_cpu_without_vector_units_never_counts_as_bf16_capable(capability):
    for name in ("AVX2", "NO AVX", "DEFAULT"):
        capability(name)
        assert not precision.cpu_has_native_bf16()


def test_cli_rewrites_the_trainer_precision_and_says_so(capability, monkeypatch, capsys):
    capability("AVX2")
    monkeypatch.delenv(precision.KEEP_BF16_ENV, raising=False)
    config = Namespace(trainer=Namespace(accelerator="cpu", precision="bf16-mixed"))
    choose_cpu_precision(config)
    assert config.trainer.precision == "32-true"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bf16-mixed -> 32-true" in err
    config = Namespace(trainer=Namespace(accelerator="cpu", precision="32-true"))
    choose_cpu_precision(config)
    assert config.trainer.precision == "32-true" and capsys.readouterr().err == ""


def test_avx512_cpu_without_the_bf16_extension_trains_in_fp32(capability, monkeypatch):
    capability("AVX512")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.delenv(precision.KEEP_BF16_ENV, raising=False)
    assert precision.cpu_precision("bf16-mixed", "cpu")[0] == "32-true"


def test_avx512_cpu_with_the_bf16_extension_keeps_bf16(capability, monkeypatch):
    capability("AVX512")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert precision.cpu_precision("bf16-mixed", "cpu") == ("bf16-mixed", None)
