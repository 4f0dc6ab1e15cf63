"""``benchmarks.throughput`` on tiny inputs: exact FLOP counts, pixel counts, fractions, the JSON line, n/a cells."""

import contextlib
import io
import json

import pytest
import torch
from torch import nn

import benchmarks.common
import benchmarks.throughput as tp
from benchmarks.common import PEAK_PATHS
from lightning_modules.core.precision import INFERENCE_PATHS

PEAK = 32
BANK, SLOTS, EXPERT = 12, 8, 12
ISE_SIZE, ISE_BATCH = 56, 2
ARGS = [
    "--networks", "expert_bank,expert,ise", "--peak-size", str(PEAK), "--repeats", "3", "--threads", "1",
    "--device", "cpu", "--bank-size", str(BANK), "--slots", str(SLOTS), "--expert-size", str(EXPERT),
    "--ise-size", str(ISE_SIZE), "--ise-batch", str(ISE_BATCH), "--paths", ",".join(INFERENCE_PATHS),
]  # fmt: skip


def run(argv: list[str]) -> tuple[dict, str]:
    out = io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out):
            result = tp.main(argv)
    finally:
        torch.set_num_threads(threads)
    return result, out.getvalue()


@pytest.fixture(scope="module")
def bench() -> tuple[dict, str]:
    return run(ARGS)


def vdsr_stage_flops(hr_side: int, layers: int = 12, channels: int = 64) -> int:
    """2 * Cin * Cout * 9 per output pixel, summed over one VDSR stage's convolutions (3 -> 64 ... 64 -> 3)."""
    widths = [3] + [channels] * (layers - 1) + [3]
    return sum(2 * a * b * 9 * hr_side * hr_side for a, b in zip(widths[:-1], widths[1:], strict=True))


def ise_flops(side: int) -> int:
    """ISE's six unpadded 3x3 convolutions (strides 1, 2, 2, 2, 1, 1) on a 6-channel ``side`` x ``side`` input."""
    widths, total = (6, 64, 64, 128, 256, 512, 1), 0
    for a, b, stride in zip(widths[:-1], widths[1:], (1, 2, 2, 2, 1, 1), strict=True):
        side = (side - 3) // stride + 1
        total += 2 * a * b * 9 * side * side
    return total


def test_peak_conv_flops_are_exact_and_the_peak_is_the_best_path(bench):
    result, _ = bench
    peak = result["peak"]
    assert peak["flops"] == peak["flops_counted"] == 2 * 64 * 64 * 9 * PEAK * PEAK
    assert set(INFERENCE_PATHS) <= set(peak["gflops"]) <= set(PEAK_PATHS)  # bf16 NCHW: where native (test below)
    assert result["peak_gflops"] > 0


def test_expert_flops_equal_the_sum_over_their_convolutions(bench):
    rows = bench[0]["networks"]
    hr = 2 * BANK
    assert rows["expert_bank"]["flops"] == SLOTS * vdsr_stage_flops(hr)  # one grouped conv per layer, all slots
    assert rows["expert_bank"]["pixels"] == SLOTS * hr * hr
    assert rows["expert"]["flops"] == vdsr_stage_flops(2 * EXPERT)
    assert rows["expert"]["pixels"] == (2 * EXPERT) ** 2
    # the same architecture: the same FLOPs per output pixel, batched or not
    assert rows["expert_bank"]["flops_per_pixel"] == rows["expert"]["flops_per_pixel"] == vdsr_stage_flops(1)


def test_ise_flops_are_per_input_pixel(bench):
    row = bench[0]["networks"]["ise"]
    assert row["per"] == "in px"
    assert row["flops"] == ISE_BATCH * ise_flops(ISE_SIZE)
    assert row["pixels"] == ISE_BATCH * ISE_SIZE * ISE_SIZE


def test_every_network_runs_in_every_path_at_a_sane_fraction_of_the_peak(bench):
    result, _ = bench
    for name, row in result["networks"].items():
        assert set(row["gflops"]) == set(INFERENCE_PATHS) and not row["errors"], row["errors"]
        # Not bounded by 1 in principle (layers other than 64->64 on a 32-px map may run faster than the reference),
        # so only a sanity bound that a unit slip (x1000) or a wrong FLOP count would break.
        assert 0 < result[f"{name}_peak_fraction"] < 3, (name, result[f"{name}_peak_fraction"])


def test_json_line_is_the_returned_headline(bench):
    result, text = bench
    line = json.loads(text.strip().splitlines()[-1])
    for key in ("peak_gflops", "peak_path", "expert_bank_peak_fraction", "ise_peak_fraction", "expert_peak_fraction",
                "threads", "device", "scale"):  # fmt: skip
        assert key in line, key
    assert line == {k: v for k, v in result.items() if k not in ("peak", "networks")}
    assert line["threads"] == 1 and line["scale"] == 2 and line["failed"] == {}
    assert "expert_bank" in text and "best/peak" in text


def test_x4_expert_runs_two_stages():
    result, _ = run(["--scale", "4", "--networks", "expert", "--expert-size", "6", "--peak-size", "16", "--repeats",
                     "1", "--threads", "1", "--device", "cpu"])  # fmt: skip
    row = result["networks"]["expert"]
    assert row["flops"] == vdsr_stage_flops(12) + vdsr_stage_flops(24)
    assert row["pixels"] == 24 * 24


class _NCHWOnly(nn.Module):
    """A convolution that refuses channels-last inputs (so fails in two of the three paths)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_contiguous():
            raise RuntimeError("no channels-last kernel\nsecond line")
        return self.conv(x)


def test_a_failing_path_is_reported_not_raised(monkeypatch):
    def fake_cases(args, device):
        return {"nchw_only": tp.Case(lambda: (_NCHWOnly(), (torch.rand(1, 4, 8, 8),)), "1x4x8x8")}

    monkeypatch.setattr(tp, "cases", fake_cases)
    result, text = run(["--networks", "nchw_only", "--peak-size", "16", "--repeats", "1", "--threads", "1",
                        "--device", "cpu", "--paths", "channels_last,bf16"])  # fmt: skip
    row = result["networks"]["nchw_only"]
    assert set(row["errors"]) == {"channels_last", "bf16"}
    assert row["errors"]["bf16"] == "RuntimeError: no channels-last kernel"
    assert row["best_path"] == "fp32" and set(row["gflops"]) == {"fp32"}
    assert row["flops"] == 2 * 4 * 4 * 9 * 8 * 8
    assert result["failed"] == {f"nchw_only/{p}": "RuntimeError: no channels-last kernel" for p in row["errors"]}
    assert "n/a (RuntimeError)" in text


def test_unknown_network_is_an_argument_error():
    with pytest.raises(SystemExit):
        run(["--networks", "expert,nope", "--device", "cpu"])


@pytest.mark.parametrize("native", [True, False], ids=["native", "emulated"])
def test_default_paths_time_bf16_only_where_bfloat16_is_native(monkeypatch, native):
    for module in (tp, benchmarks.common):
        monkeypatch.setattr(module, "native_bf16", lambda device: native)
    result, text = run(["--networks", "expert", "--expert-size", "6", "--peak-size", "16", "--repeats", "1",
                        "--threads", "1", "--device", "cpu"])  # fmt: skip
    paths = set(INFERENCE_PATHS) if native else {"fp32", "channels_last"}
    assert set(result["networks"]["expert"]["gflops"]) == paths and set(result["paths"]) == paths
    assert set(result["peak"]["gflops"]) == set(PEAK_PATHS if native else INFERENCE_PATHS)  # bf16's cost shown
    assert ("bf16 s" in text) == native
