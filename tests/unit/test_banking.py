"""One banking rule (``backends.common.buffer_banking``): the estimate, the HLS pragmas and the RTL
memories read it, and agree where stages give one buffer different lane counts or strides."""

from __future__ import annotations

import re

import pytest
import torch
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Access, Affine, Buffer, Kernel, Loop, Program, Stage
from torch import nn

import fx2fpga
from fx2fpga.backends.common import buffer_banking, command_table, lane_span
from fx2fpga.backends.hls import emit as hls
from fx2fpga.passes import estimate, schedule

FMT = Fixed.parse("fixed<16,6>")


def _copy(name: str, src: str, dst: str, n: int, lanes: int, coeff: int = 1) -> Stage:
    """``dst[i] = src[coeff * i]`` over ``i < n`` with ``lanes`` lanes."""
    i = Affine.var("i")
    return Stage(name, "copy", (Loop("i", n),), Access(dst, (i,)), (Access(src, (Affine.var("i", coeff),)),),
                 lanes=lanes, lane_var="i")


def _kernel(stages: list[Stage], bufs: dict[str, int]) -> Kernel:
    buffers = {n: Buffer(n, (size,), FMT, "temp") for n, size in bufs.items()}
    buffers["x"].role, buffers["y"].role = "input", "output"
    return Kernel("banks", buffers, {"infer": Program("infer", ["x"], ["y"], stages)}, [])


def _pragmas(kernel: Kernel) -> dict[tuple[str, int], str]:
    cpp = hls.generate(kernel, "test")["src/banks.cpp"]
    found = re.findall(r"ARRAY_PARTITION variable=(\w+) (cyclic factor=\d+|complete) dim=(\d+)", cpp)
    return {(b, int(d)): kind for b, kind, d in found}


def test_lanes_3_and_4_on_one_buffer_bank_it_by_their_lcm():
    """``t`` is written by 3 lanes and read by 4: 12 banks in the estimate, the pragmas and the RTL
    (the old estimate said max(3, 4) = 4)."""
    k = _kernel([_copy("a", "x", "t", 24, 3), _copy("b", "t", "y", 24, 4)], {"x": 24, "t": 24, "y": 24})
    spec = buffer_banking(k)["t"]
    assert spec.factors == (12,) and spec.banks == 12
    assert estimate.buffer_banks(k) == {"x": 3, "t": 12, "y": 4}
    assert _pragmas(k) == {("x", 1): "cyclic factor=3", ("t", 1): "cyclic factor=12", ("y", 1): "cyclic factor=4"}
    assert schedule.run(k).memories["t"].factors == (12,)


def test_strided_lanes_bank_by_stride_times_lanes_everywhere():
    """3 lanes reading ``x[2 i]``: 6 banks (one read port each) in the RTL, the estimate and the HLS
    pragma; a factor reaching the dim's size is a complete split."""
    k = _kernel([_copy("a", "x", "y", 6, 3, coeff=2)], {"x": 12, "y": 6})
    spec = buffer_banking(k)["x"]
    assert spec.factors == (6,)
    assert schedule.run(k).memories["x"].factors == spec.factors
    assert estimate.buffer_banks(k) == {"x": 6, "y": 3}
    assert _pragmas(k) == {("x", 1): "cyclic factor=6", ("y", 1): "cyclic factor=3"}
    wide = _kernel([_copy("a", "x", "y", 6, 6, coeff=4)], {"x": 24, "y": 6})  # 6 lanes x stride 4, clipped
    assert buffer_banking(wide)["x"].factors == (24,) and schedule.run(wide).memories["x"].factors == (24,)
    assert _pragmas(wide) == {("x", 1): "complete", ("y", 1): "complete"}


def test_lane_span():
    st = _copy("a", "x", "y", 6, 4, coeff=-3)
    assert lane_span(st, Affine.var("i", -3)) == 12
    assert lane_span(st, Affine((("i", 2),), 0, div=2)) == 4  # under a '/': the lanes alone
    st.lanes = 8  # more lanes than the loop has iterations: only 6 are active
    assert lane_span(st, Affine.var("i")) == 6


@pytest.fixture(scope="module")
def strided_conv():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(16, 3))
    return fx2fpga.compile(model, (torch.randn(2, 2, 8, 8),), lanes=4, precision="fixed<16,6>")


def test_strided_conv_input_three_consumers_agree(strided_conv):
    """A stride-2 convolution and a 2x2 pool: every RTL memory is banked as the rule says, the HLS
    pragmas split by the rule's factors without serialized drains, and the estimate counts those banks."""
    k = strided_conv.kernel
    rtl = buffer_banking(k)
    banking = buffer_banking(k, serial_drains=False)
    strided = [n for n, s in banking.items() if any(f % 4 == 0 and f > 4 for f in s.factors)]
    assert strided  # the conv input and the pool input are read by strided lanes: stride x 4 lanes
    for name, mem in schedule.run(k).memories.items():
        assert mem.factors == rtl[name].factors, name
        assert banking[name].banks == estimate.buffer_banks(k)[name], name
    # the RTL writes the convolution's, the pool's and the linear layer's lanes over several cycles into the banks
    # their readers need (the pool's output one bank: the linear layer reads it in one lane)
    serial = {n: rtl[n].factors for n in rtl if rtl[n].factors != banking[n].factors}
    assert serial == {"infer_relu": (1, 4, 1, 1), "infer_max_pool2d_with_indices": (1, 1, 1, 1), "infer_output": (1, 1)}
    cpp = hls.generate(k, "test")[f"src/{k.name}.cpp"]
    found = re.findall(r"ARRAY_PARTITION variable=(\w+) (?:cyclic factor=(\d+)|complete) dim=(\d+)", cpp)
    want = {(n, d, f) for n, s in banking.items() for d, f in s.partitions()}
    got = {(b, int(d), int(f) if f else banking[b].shape[int(d) - 1]) for b, f, d in found}
    assert got == want and want


def test_command_table():
    k = _kernel([_copy("a", "x", "y", 6, 1)], {"x": 6, "y": 6})
    (load, read, infer) = command_table(k)
    assert (load.name, load.code, load.ins, load.program) == ("load_params", 1, (), "")
    assert (infer.name, infer.code, infer.const, infer.program) == ("infer", 3, "CMD_INFER", "infer")
    assert (infer.in_words, infer.out_words, infer.ins[0].buffer, infer.ins[0].offset) == (6, 6, "x", 0)
    assert read.out_words == 0 and [c.name for c in command_table(k, {"infer": 3})] == ["infer"]
