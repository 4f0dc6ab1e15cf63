"""``inference_path="auto"`` and the bf16 warning: bfloat16 only where the hardware computes it.

``core.precision.native_bf16`` is replaced by a stub in each case, so both kinds of machine are tested on whichever
runs the suite (the real answer on CPUs without AVX-512 by the one test that does not replace it).
"""

import warnings
from pathlib import Path

import pytest
import torch

from lightning_modules.baselines.single_net import SingleNetSR
from lightning_modules.core import precision


@pytest.fixture(params=[True, False], ids=["native", "emulated"])
def native(request, monkeypatch) -> bool:
    monkeypatch.setattr(precision, "native_bf16", lambda device: request.param)
    return request.param


def test_auto_runs_bf16_only_where_bfloat16_is_native(native):
    model = SingleNetSR(num_layers=3, channels=4, scale=2, inference_path="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never picks a path that warns
        model.apply_inference_layout()
    assert model.inference_path_choice == "auto"
    assert model.inference_path == ("bf16" if native else "channels_last")
    assert model.net[0].body[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        sr = model._tiled(torch.rand(1, 3, 8, 8))
    assert sr.shape == (1, 3, 16, 16) and sr.dtype == torch.float32


def test_auto_off_the_cpu_without_bfloat16_is_float32(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert precision.resolve_path("auto", "cuda") == "fp32"
    assert precision.resolve_path("auto", "cpu") == "channels_last"
    assert precision.resolve_path("auto", "cpu", training=True) == "fp32"  # channels-last backward: slower there
    assert precision.resolve_path("channels_last", "cpu", training=True) == "channels_last"
    assert precision.resolve_path("bf16", "cpu") == "bf16"  # an explicit choice is kept


def test_bf16_warns_only_where_bfloat16_is_emulated(native):
    model = SingleNetSR(num_layers=3, channels=4, scale=2, inference_path="bf16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.apply_inference_layout()
    messages = [str(w.message) for w in caught if "inference_path bf16" in str(w.message)]
    if native:
        assert messages == []
    else:
        assert len(messages) == 1 and "emulated" in messages[0] and "channels_last or auto" in messages[0]


def test_a_cpu_without_bfloat16_instructions_has_no_native_bfloat16():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    flags = set(cpuinfo.read_text().split())
    if flags & {"avx512_bf16", "amx_bf16"}:
        pytest.skip("this CPU has AVX512-BF16 or AMX-BF16")
    assert not precision.native_bf16("cpu")
    assert precision.resolve_path("auto", "cpu") == "channels_last"


def test_the_choices_are_named_when_one_is_unknown():
    with pytest.raises(ValueError, match="inference_path 'fp16'; choose from fp32, channels_last, bf16, auto"):
        SingleNetSR(num_layers=2, channels=4, inference_path="fp16")
