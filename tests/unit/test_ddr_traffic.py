"""DDR traffic per call (``passes/ddr_traffic.py``): each access of a DDR buffer's element counted as the untiled HLS
C++ makes it, on kernels small enough to count by hand."""

from __future__ import annotations

import dataclasses

import pytest
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import DDR, Access, Affine, Buffer, Guard, Kernel, Loop, Program, Stage

from fx2fpga.passes import ddr_traffic
from fx2fpga.project import roofline
from fx2fpga.targets import load_target


def _matmul_kernel(groups: int = 1, lanes: int = 1) -> Kernel:
    """out[i, j] = b[j] + sum_k a[i, k] * w[k, j] (a 2x3 input, a 3x4 weight of 24 bits: 4 bytes a value in DDR, its
    m_axi array's element, a bias of 4 values at 16 bits: 2 bytes), with ``w`` and ``b`` in DDR."""
    i, j, k = (Affine.var(v) for v in "ijk")
    bufs = {"a": Buffer("a", (2, 3), Fixed(16, 6), "input"), "w": Buffer("w", (3, 4), Fixed(24, 8), "param", place=DDR),
            "b": Buffer("b", (4,), Fixed(16, 6), "param", place=DDR),
            "out": Buffer("out", (2, 4), Fixed(16, 6), "output")}
    st = Stage("mm", "mac", (Loop("i", 2), Loop("j", 4), Loop("k", 3)), Access("out", (i, j)),
               (Access("a", (i, k)), Access("w", (k, j)), Access("b", (j,))), reduce=("k",), acc=Fixed(48, 20),
               lanes=lanes, lane_var="j" if lanes > 1 else None)
    return Kernel("mm", bufs, {"infer": Program("infer", ["a"], ["out"], [st], groups=groups)}, ["w", "b"])


def test_a_matmul_reads_its_ddr_weight_at_every_point_and_its_init_once_per_output():
    infer = ddr_traffic.command_traffic(_matmul_kernel(), "infer")
    w, b = infer.buffers
    assert (w.buffer, w.reads, w.writes, w.read_bytes) == ("w", 2 * 4 * 3, 0, 24 * 4)  # every (i, j, k)
    assert (b.buffer, b.reads, b.read_bytes) == ("b", 2 * 4, 8 * 2)  # acc = b[j] once per (i, j)
    assert (infer.read_bytes, infer.write_bytes, infer.bytes) == (112, 0, 112)
    assert infer.min_cycles(load_target("pynq-z1").ddr) == 14  # 112 bytes at 8 bytes a cycle


def test_lanes_change_no_count_and_model_groups_multiply_it():
    base = ddr_traffic.command_traffic(_matmul_kernel(), "infer")
    assert ddr_traffic.command_traffic(_matmul_kernel(lanes=3), "infer") == base  # 4 columns in lanes of 3
    assert ddr_traffic.command_traffic(_matmul_kernel(groups=2), "infer").bytes == 2 * base.bytes


def test_load_and_read_params_move_each_ddr_value_once():
    traffic = {t.command: t for t in ddr_traffic.kernel_traffic(_matmul_kernel())}
    assert list(traffic) == ["load_params", "read_params", "infer"]  # command-code order
    assert [(t.buffer, t.writes, t.write_bytes) for t in traffic["load_params"].buffers] == [("w", 12, 48), ("b", 4, 8)]
    assert [(t.buffer, t.reads, t.writes) for t in traffic["read_params"].buffers] == [("w", 12, 0), ("b", 4, 0)]


def test_a_kernel_wholly_on_chip_has_no_ddr_traffic():
    k = _matmul_kernel()
    for name in ("w", "b"):
        k.buffers[name] = dataclasses.replace(k.buffers[name], place="chip")
    assert ddr_traffic.kernel_traffic(k) == []


@pytest.mark.parametrize("size, step, held", [(4, 1, 3 * 4 - 2), (8, 1, 3 * 8 - 2), (8, 2, 4 + 4 + 3)])
def test_a_guarded_read_counts_only_where_its_guard_holds(size, step, held):
    """A 3-tap window with padding 1 over ``size`` positions: ``h + r - 1`` is in range at 3 * size - 2 of the
    3 * size points (the first and last tap miss one each); with step 2 only the even positions read (per tap
    r, h + r - 1 even and in range: 4, 4 and 3 of 8)."""
    access = Access("x", (Affine((("h", 1), ("r", 1)), -1),), (Guard(Affine((("h", 1), ("r", 1)), -1), size, step),))
    assert ddr_traffic.guarded_points(access, {"n": 5, "h": size, "r": 3}, groups=2) == 2 * 5 * held


def test_the_roofline_puts_a_ddr_kernel_against_the_ddr_roof():
    """No RTL cycles: the point's time is the HLS estimate or the DDR bytes at the port's peak, whichever is longer."""
    t = load_target("pynq-z1")
    roofs = roofline.target_roofs(t)
    assert roofs.ddr_bytes_per_s == pytest.approx(8 * 100e6) and "S_AXI_HP0" in roofs.ddr_source
    assert roofline.target_roofs(load_target("ulx3s")).ddr_bytes_per_s is None
    p, = roofline.program_points(_matmul_kernel(), {}, t.clock_mhz, t.ddr)
    assert (p.ddr_bytes, p.cycles_from) == (112, "hls estimate") and p.cycles > 14  # 24 points, one lane
    assert p.ddr_intensity == pytest.approx(24 / 112)
    big = dataclasses.replace(t.ddr, bytes_per_cycle=1)  # 112 cycles at a byte a cycle: longer than the estimate
    p, = roofline.program_points(_matmul_kernel(), {}, t.clock_mhz, big)
    assert (p.cycles, p.cycles_from) == (112, "ddr bytes at the port's peak")
    p, = roofline.program_points(_matmul_kernel(), {"infer": 500}, t.clock_mhz, t.ddr)
    assert (p.cycles, p.cycles_from, p.ddr_bytes) == (500, "rtl", 112)  # RTL cycles, where they exist, win
