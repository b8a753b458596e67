"""Serialized drains (backends/drains.py): a reduction's lanes write their results over several cycles, so its output
is banked for its readers only; the RTL stays bit for bit the emulator's and its cycles the schedule's."""

from __future__ import annotations

import numpy as np
import pytest
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Access, Affine, Buffer, Kernel, Loop, Program, Stage

from fx2fpga.backends import drains
from fx2fpga.backends.common import buffer_banking
from fx2fpga.passes import schedule as sched

from ..conftest import assert_backend_equals_emu, exact_cycles, small_mlp
from ..fuzz.harness import run_kernel

# the backward product (on the MAC engine, masked by ReLU's gate), the softmax's max (a max unit) and its sum (a
# sum unit) at two lanes each, read by one-lane stages: each writes its two lanes in two cycles
LANES = {"train_mm": [1, 2, "j"], "train_amax": [1, 2, "i"], "train_sum_1": [1, 2, "i"]}
SERIAL = ("train_mm", "train_amax", "train_sum_1")


@pytest.fixture(scope="module")
def mlp():
    return small_mlp(LANES)


def _phases(design) -> dict:
    return {ph.name: ph for ph in design.schedule.commands["train_step"] if ph.kind == "stage"}


def test_two_lanes_write_one_bank_in_turn(mlp):
    design, _, _ = mlp
    phases = _phases(design)
    for name in SERIAL:
        ph = phases[name]
        delay = sched.write_delay(ph.stage.op)
        assert ph.lanes == 2 and ph.stage.reduction_points == 3
        assert sorted(w.tap - delay for w in ph.writes) == [0, 1]  # lane 0 in slot 0, lane 1 a cycle later
        assert ph.write_delay == delay + 1
        # one bank: the readers take one element a cycle; the HLS pragmas keep the lanes' two
        assert buffer_banking(design.kernel)[ph.stage.out.buffer].factors == (1, 1)
        assert buffer_banking(design.kernel, serial_drains=False)[ph.stage.out.buffer].factors != (1, 1)
    # every other stage writes in its write delay
    for name, ph in phases.items():
        if name not in SERIAL:
            assert ph.write_delay == sched.write_delay(ph.stage.op), name


def test_slots_stay_under_every_reduction_of_the_op():
    """A drain takes fewer slots than the points of any reduction of its op (one may share its unit next):
    the backward product at 6 lanes, read by one lane, would need 6 slots of its 3 points, so it banks its output
    by its own lanes and writes at once."""
    design, _, _ = small_mlp({"train_mm": [1, 2, "i", 3, "j"]}, until="schedule")
    mm = next(ph for ph in design.commands["train_step"] if ph.name == "train_mm")
    assert drains.slot_limit(mm.stage, design.kernel) == 3
    assert drains.write_slots(mm.stage, design.kernel, (1, 1)) is None  # 6 slots wanted
    assert design.memories[mm.stage.out.buffer].factors == (2, 3)
    assert mm.write_delay == sched.write_delay("mac")


def test_lane_slots_follow_the_banks():
    """Lanes (j, i) = 4 j + i over out[i, j]: banked 4 x 1 the four i-lanes of one j hit four banks (slot j);
    banked 2 x 1, lanes i and i + 2 share a bank."""
    design, _, _ = small_mlp({"train_addmm": [1, 4, "i", 2, "j"]}, until="tile")
    fwd = next(st for st in design.stages() if st.name == "train_addmm")
    assert fwd.lane_loops() == (("j", 2), ("i", 4))
    assert drains.lane_slots(fwd, (4, 1)) == (0, 0, 0, 0, 1, 1, 1, 1)
    assert drains.lane_slots(fwd, (2, 1)) == (0, 0, 1, 1, 2, 2, 3, 3)
    assert drains.lane_slots(fwd, (4, 2)) == (0,) * 8


@pytest.mark.slow
def test_rtl_equals_emu_with_serialized_drains(mlp):
    design, x, y = mlp
    emu = assert_backend_equals_emu(design, "rtl", [("train_step", [x, y])] * 2 + [("infer", [x])],
                                    after_call=exact_cycles(design))
    assert np.isfinite(emu.train_step(x, y))
    top = "\n".join(t for p, t in design.files().items() if p.endswith(".sv"))
    assert ".last(" in top and "if (last_d[" in top  # the result registers hold from a reduction's last point


def _accumulating_kernel() -> Kernel:
    """``s[i, j] += sum_k x[k, i] * w[k, j]`` at 4 lanes over ``j`` (the kernel's only multiply-accumulate: its own
    unit, no MAC engine), then ``y = s`` at one lane: ``s`` has one bank, so the update reads and writes its 4
    lanes in 4 slots."""
    fmt = Fixed.parse("fixed<16,6>")
    i, j, k = Affine.var("i"), Affine.var("j"), Affine.var("k")
    buffers = {"x": Buffer("x", (8, 4), fmt, "input"), "w": Buffer("w", (8, 4), fmt, "input"),
               "s": Buffer("s", (4, 4), Fixed.parse("fixed<24,10>"), "param"),
               "y": Buffer("y", (4, 4), Fixed.parse("fixed<24,10>"), "output")}
    update = Stage("update", "mac", (Loop("i", 4), Loop("j", 4), Loop("k", 8)), Access("s", (i, j)),
                   (Access("x", (k, i)), Access("w", (k, j)), Access("s", (i, j))), reduce=("k",),
                   acc=Fixed.parse("fixed<40,14>"), lanes=4, lane_var="j")
    copy = Stage("copy", "copy", (Loop("i", 4), Loop("j", 4)), Access("y", (i, j)), (Access("s", (i, j)),))
    return Kernel("serial_init", buffers, {"infer": Program("infer", ["x", "w"], ["y"], [update, copy])}, ["s"])


def test_a_fused_update_reads_its_initial_values_in_the_slots():
    k = _accumulating_kernel()
    phase = next(ph for ph in sched.run(k).commands["infer"] if ph.name == "update")
    assert phase.serial_init and buffer_banking(k)["s"].factors == (1, 1)
    delay = sched.write_delay("mac")
    assert [w.tap - delay for w in phase.writes] == [0, 1, 2, 3]
    init_reads = [r for r in phase.reads if r.operand == 2]
    assert len(init_reads) == 4  # each lane's read guarded to the point of its slot
    assert [r.guard[-1].expr.const for r in init_reads] == [0, -1, -2, -3]


@pytest.mark.slow
def test_rtl_of_an_own_unit_with_serialized_initial_values(tmp_path):
    """Three calls (``s`` carried from one to the next): Verilator equals the emulator word for word, its cycles the
    schedule's."""
    result = run_kernel(_accumulating_kernel(), tmp_path, backends=("rtl",), calls=3)
    assert result.mismatches == []


@pytest.fixture(scope="module")
def fused_update_mlp():
    """The first layer's update (its SGD step folded into the gradient's reduction over the batch of 8) at 2 x 4
    lanes; its weight read by the forward at 2 lanes over its rows: banked 2 x 1, so the update reads and writes
    each bank's 4 lanes in 4 slots, on the MAC engine."""
    return small_mlp({"train_addmm": [1, 2, "j"], "train_update_b_0_weight": [1, 2, "i", 4, "j"]}, sizes=(8, 6, 5),
                     batch=8)


def test_the_weight_is_banked_for_its_forward(fused_update_mlp):
    design, _, _ = fused_update_mlp
    update = _phases(design)["train_update_b_0_weight"]
    assert update.serial_init and update.lanes == 8
    assert design.schedule.memories["b_0_weight"].factors == (2, 1)  # the lanes' own: (2, 4)
    assert sorted(w.tap - sched.write_delay("mac") for w in update.writes) == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.slow
def test_rtl_equals_emu_with_serialized_initial_values_on_the_engine(fused_update_mlp):
    design, x, y = fused_update_mlp
    assert_backend_equals_emu(design, "rtl", [("train_step", [x, y])] * 3 + [("infer", [x])],
                              after_call=exact_cycles(design))
    engine = next(t for p, t in design.files().items() if p.endswith("_mac_engine.sv"))
    assert "(init_0_h | init_0)" in engine  # the held initial value ORs the lanes' reads
