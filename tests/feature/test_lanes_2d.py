"""Lanes in two loops of one stage (``Stage.outer_lanes`` over ``outer_lane_var``, beside ``lanes``).

A matmul with lanes over its batch rows and its output columns at once reads each weight word once for every
row's lane and each input word once for every column's lane (``Port.served``); its output is banked in both
dims. The RTL must equal the emulator bit for bit, its cycles must be the schedule's, and the kernel must
round-trip through kernel.json.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.ir import Kernel
from torch import nn

import fx2fpga
from fx2fpga.backends.common import buffer_banking
from fx2fpga.passes import schedule as sched

from ..conftest import assert_backend_equals_emu, small_mlp

# the forward and the weight update (its gradient, 6 x 8 over the batch, folded in) of the first layer in two loops;
# the second layer's forward in one
LANES = {"train_addmm": [1, 4, "i", 2, "j"], "train_update_b_0_weight": [1, 2, "j", 3, "i"],
         "train_addmm_1": [1, 4, "i"]}


@pytest.fixture(scope="module")
def two_dim_mlp():
    return small_mlp(LANES)


def test_stages_take_lanes_in_two_loops(two_dim_mlp):
    design, _, _ = two_dim_mlp
    st = {s.name: s for s in design.kernel.stages()}
    fwd = st["train_addmm"]
    assert (fwd.outer_lanes, fwd.outer_lane_var, fwd.lanes, fwd.lane_var) == (2, "j", 4, "i")
    assert fwd.lane_loops() == (("j", 2), ("i", 4)) and fwd.total_lanes == 8
    phase = next(p for p in design.context.schedule.commands["train_step"] if p.name == "train_addmm")
    assert phase.lanes == 8
    # 4 x 6 outputs over 8 inputs, 8 lanes: 3 issues per reduction point
    assert phase.cycles == 1 + (4 // 4) * (6 // 2) * 8 + phase.write_delay
    # the input x[i, k] is read once per row lane (4 requests), the weight w[j, k] once per column lane (2)
    reads = {}
    for port in phase.reads:
        reads.setdefault(port.buffer, []).append(len(port.served))
    assert sorted(reads[fwd.ins[0].buffer]) == [2, 2, 2, 2]
    assert sorted(reads[fwd.ins[1].buffer]) == [4, 4]
    # the output is banked for its readers (4 rows), not for this stage's 4 x 2 lanes: the drain writes the two
    # columns of each row in turn (backends/drains.py), lane (j, i) = 4 j + i in slot j
    assert buffer_banking(design.kernel)[fwd.out.buffer].factors == (4, 1)
    assert buffer_banking(design.kernel, serial_drains=False)[fwd.out.buffer].factors == (4, 2)
    assert [(w.lane, w.tap - sched.write_delay(fwd.op)) for w in phase.writes] == [(k, k // 4) for k in range(8)]
    assert phase.write_delay == sched.write_delay(fwd.op) + 1
    # one row per slot: the banks share one write address per tap (the two taps never write in one cycle)
    by_phase = {}
    for w in design.rtl_plan().spec["writes"]:
        if w["memory"] == fwd.out.buffer:
            by_phase.setdefault(w["phase"], []).append(w)
    (serial,) = [ws for ws in by_phase.values() if len({w["tap"] for w in ws}) == 2]
    assert len(serial) == 8 and all(w["any_bank"] for w in serial)


def test_kernel_json_keeps_the_second_lane_loop(two_dim_mlp):
    design, _, _ = two_dim_mlp
    again = Kernel.from_json(design.kernel.to_json())
    assert again.to_json() == design.kernel.to_json()
    st = {s.name: s for s in again.stages()}
    assert (st["train_update_b_0_weight"].outer_lanes, st["train_update_b_0_weight"].outer_lane_var) == (3, "i")
    # only the two stages with lanes in two loops write the keys: a kernel without them has the kernel.json it had
    assert design.kernel.to_json().count('"outer_lanes"') == 2


def test_a_second_lane_loop_must_be_another_free_loop(two_dim_mlp):
    design, x, y = two_dim_mlp
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    sgd = fx2fpga.SGD(F.cross_entropy, torch.from_numpy(y), lr=0.1)
    with pytest.raises(ValueError, match="its outer lanes need a loop other than 'i'"):
        fx2fpga.compile(model, (torch.from_numpy(x),), train=sgd, until="tile",
                        lanes={"train_addmm": [1, 4, "i", 2, "i"]})
    with pytest.raises(ValueError, match="lanes do not divide its 1 models of a group and its lane loops of 4 and 6"):
        fx2fpga.compile(model, (torch.from_numpy(x),), train=sgd, until="tile",
                        lanes={"train_addmm": [1, 4, "i", 4, "j"]})


def test_csim_equals_emu_with_lanes_in_two_loops(two_dim_mlp):
    """The HLS C++ runs a stage's outer lanes as an ordinary loop (as it does model lanes); its partitions follow
    the banking of both lane loops."""
    design, x, y = two_dim_mlp
    assert_backend_equals_emu(design, "csim", [("train_step", [x, y])] * 2 + [("infer", [x])])
    hls = "\n".join(t for p, t in design.files().items() if p.endswith(".cpp"))
    assert "ARRAY_PARTITION" in hls


@pytest.mark.slow
def test_rtl_equals_emu_with_lanes_in_two_loops(two_dim_mlp):
    design, x, y = two_dim_mlp
    emu = assert_backend_equals_emu(design, "rtl", [("train_step", [x, y])] * 2 + [("infer", [x])])
    assert np.isfinite(emu.train_step(x, y))
    with design.load("rtl") as rtl:
        rtl.train_step(x, y)
        assert rtl.backend.last_cycles == design.rtl_cycles()["train_step"]
