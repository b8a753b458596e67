"""passes/model_groups.py and passes/allocate.py on a small stacked kernel: shapes and indices of groups,
exact stage cycles, memories as the RTL plan banks them."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.ir import GROUP_VAR, MODEL_VAR, Affine
from torch import nn

import fx2fpga
from fx2fpga.backends.rtl import emit as verilog
from fx2fpga.passes import allocate, model_groups, resources, schedule, tile


@pytest.fixture(scope="module")
def stacked():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)) for _ in range(6)]
    y = torch.tensor([0, 1, 2, 0])
    return fx2fpga.compile(models, (torch.randn(4, 8),), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1),
                           until="share memory")


def test_regroup_keeps_parameters_and_outputs_whole(stacked):
    k = model_groups.regroup(copy.deepcopy(stacked), 2)
    assert model_groups.model_count(k) == 6 and model_groups.group_size(k) == 2
    assert {p.groups for p in k.programs.values()} == {3}
    for b in k.buffers.values():
        if b.role in ("param", "output"):
            assert b.shape[0] == 6, b.name
    assert k.buffers["b_0_weight"].shape == (6, 6, 8)
    update = next(st for st in k.programs["train_step"].stages if st.out.buffer == "b_0_weight")
    assert update.out.index[0] == Affine(((GROUP_VAR, 2), (MODEL_VAR, 1)))
    temps = [b for b in k.buffers.values() if b.role == "temp" and b.shape and b.shape[0] == 2]
    assert temps and not [b for b in k.buffers.values() if b.role == "temp" and b.shape and b.shape[0] == 6]
    assert all(lp.extent == 2 for st in k.stages() for lp in st.loops if lp.var == MODEL_VAR)
    with pytest.raises(ValueError, match="must split evenly"):
        model_groups.regroup(copy.deepcopy(stacked), 4)


def test_stage_cycles_are_the_schedules(stacked):
    k = copy.deepcopy(stacked)
    tile.assign_lanes(k, 1, None, 3)
    for st in k.programs["train_step"].stages:
        loop = tile._lane_loop(st)
        ln = 2 if loop is not None and loop.extent % 2 == 0 else 1
        tile.set_stage_lanes(st, 3 if st.loops[0].var == MODEL_VAR else 1, ln)
    sched = schedule.run(k)
    for ph in sched.commands["train_step"]:
        if ph.stage is not None:
            loop = tile._lane_loop(ph.stage)
            got = allocate.stage_cycles(ph.stage, ph.stage.model_lanes, ph.stage.lanes,
                                        loop.var if loop is not None else None)
            assert got + ph.late_writes == ph.cycles, ph.name  # (the allocation leaves a drain's slots out)
    one = schedule.run(k, side=False)  # one stream: each phase's own span, a call overlaps their drains (overlap.py)
    phases = one.commands["train_step"]
    assert one.call_cycles("train_step") == 1 + sum(p.advance * p.groups for p in phases) \
        < 1 + sum(p.cycles * p.groups for p in phases)
    assert sched.call_cycles("train_step") < one.call_cycles("train_step")  # with the side stream (streams.py)


def test_memory_cost_is_the_plans(stacked):
    """The allocation's memory model banks and maps every buffer as the RTL plan does (table ROMs aside)."""
    k = copy.deepcopy(stacked)
    tile.assign_lanes(k, 2, None, 2)
    plan = verilog.plan(k, "k", "DSP48E1", schedule.run(k))
    features = resources.rtl_features(plan)
    tables = sum(u["lanes"] * resources.table_mapping(u["depth"], u["table_width"]).bram36
                 for u in plan.units if u["kind"] == "table")
    assert allocate.memory_cost(k, resources.load_costs())["bram36"] == features["bram36"] - tables


def test_lanes_assigned_again_keep_the_groups_and_drop_the_earlier_lanes(stacked):
    """The tile step retries 4, 2, then 1 lane a stage when over budget: a kernel in groups already stays in them,
    and one lane a stage means one (not the earlier try's)."""
    k = copy.deepcopy(stacked)
    tile.assign_lanes(k, 4, None, 2)
    assert max(st.lanes for st in k.stages()) > 1
    tile.assign_lanes(k, 1, None, 2)
    assert model_groups.group_size(k) == 2 and {p.groups for p in k.programs.values()} == {3}
    assert {st.lanes for st in k.stages()} == {1}
