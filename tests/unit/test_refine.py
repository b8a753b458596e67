"""passes/refine.py: the explorer's point refined on the exact schedule, a wider main-stream stage paid for by
narrower side-stream ones; every point it returns fits and is no slower, its cycles the schedule's."""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

import fx2fpga
from fx2fpga.passes import explore, pipeline_groups, refine, schedule, streams, tile
from fx2fpga.targets import load_target

X = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 2, 3, 1, 0])
# the loss chain's elementwise stages wide (8 lanes over the batch and the classes), the forward narrow
SIDE_WIDE = {"train_addmm": [1, 4, "j"], "train_addmm_1": [1, 2, "j"], "train_mm": [1, 4, "j"],
             "train_update_b_0_weight": [1, 8, "i"], "train_update_b_2_weight": [1, 4, "i"],
             "train_sub": [1, 4, "j"], "train_exp": [1, 4, "j"], "train_sub_1": [1, 4, "j"], "train_exp_1": [1, 4, "j"],
             "train_sub_2": [1, 4, "j"], "train_where_1": [1, 4, "j"], "train_where": [1, 4, "j"]}


@functools.cache
def _start():
    """Four MLPs in pipelined groups of one at ``SIDE_WIDE``: ``(DesignPoint, kernel, schedule)`` and the target."""
    models = []
    for k in range(4):
        torch.manual_seed(k)
        models.append(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)))
    k0 = fx2fpga.compile(models, (X,), train=fx2fpga.SGD(F.cross_entropy, Y, lr=0.1), lanes=SIDE_WIDE,
                         model_lanes=1, outputs="rtl", until="place")
    k = copy.deepcopy(k0)
    tile.assign_stage_lanes(k, SIDE_WIDE, 1)
    tile.mirror_twin_lanes(k, "train_step")
    k = pipeline_groups.pipeline(k, "train_step", pipeline_groups.loss_cut(k, "train_step"))
    target = load_target("pynq-z1")
    return explore._measure_allocated(k, target, "kernel", "per stage, test"), target


def test_trims_halve_a_stage_on_its_loops_and_widenings_stay_within_twice():
    (_, k, _), _ = _start()
    stages = {st.name: st for st in k.programs["train_step"].stages}
    assert refine.trims(stages["train_exp"]) == [(1, 2, "j", 1, None)]
    mm = stages["train_addmm"]
    wider = refine.widenings(mm)
    assert (1, 8, "j", 1, None) in wider
    assert all(4 < o[0] * o[1] * o[3] <= 8 and "j" in {o[2], o[4]} for o in wider)
    assert refine.trims(stages["train_log"]) == []  # one lane: nothing to halve
    # the nearest shapes first: halving one loop's lanes re-banks less than moving them all to another loop
    assert refine.reshaping((1, 4, "j", 8, "i"), (1, 8, "j", 8, "i")) == 1
    assert refine.reshaping((1, 32, "j", 1, None), (1, 8, "j", 8, "i")) == 5
    assert [refine.reshaping(o, refine.option_of(mm)) for o in wider] == sorted(
        refine.reshaping(o, refine.option_of(mm)) for o in wider)


def test_a_wider_main_stage_is_paid_for_by_narrower_side_stages():
    """At a share of the allowance the start point uses exactly, no stage can widen alone: the refinement trims
    side stages to pay for a wider multiply-accumulate, and the result fits, is faster, and its cycles are what
    the schedule of its kernel gives."""
    start, target = _start()
    share = start[0].load  # the start point exactly at the limit
    got = refine.refine(start, "train_step", target, share, lambda k: explore._measure_allocated(
        k, target, "kernel", "per stage, test, refined"))
    point, kernel, sched = got
    assert point.load <= share + 1e-9
    assert point.cycles < start[0].cycles
    before = {st.name: st.total_lanes for st in start[1].programs["train_step"].stages}
    after = {st.name: st.total_lanes for st in kernel.programs["train_step"].stages}
    side = {ph.stage.name for ph in start[2].commands["train_step"] if ph.stream == streams.SIDE}
    assert any(after[n] > before[n] for n in before if n not in side)  # a main stage wider
    assert any(after[n] < before[n] for n in side)  # paid for by side stages
    assert schedule.run(copy.deepcopy(kernel)).call_cycles("train_step") == point.cycles == sched.call_cycles(
        "train_step")
