"""passes/pipeline_groups.py: a training step's model groups pipelined, the loss chain of one group beside the next
group's forward. Each model computes what it computes with its groups one after another, bit for bit (emu, csim,
Verilator); Verilator's cycles equal the model; a pass is shorter than a plain pass by the chain the side stream
hides; bad requests get a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.ir import GROUP_VAR
from torch import nn

import fx2fpga
from fx2fpga.passes import pipeline_groups, schedule, streams

pytestmark = pytest.mark.slow

X = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 2, 3, 1, 0])
LRS = [0.05, 0.1, 0.15, 0.2]
# the forward's multiply-accumulates longer than the loss chain, which one lane computes; the gradient's 24 x 24-bit
# products (train_mm) on half the lanes of the 24 x 16-bit ones
LANES = {"train_addmm": [1, 8, "j"], "train_addmm_1": [1, 4, "j"], "train_mm": [1, 8, "j"],
         "train_update_b_0_weight": [1, 16, "i"], "train_update_b_2_weight": [1, 4, "i"]}


def _models():
    out = []
    for k in range(4):
        torch.manual_seed(k)
        out.append(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)))
    return out


def _compile(cut, outputs="both"):
    return fx2fpga.compile(_models(), (X,), train=fx2fpga.SGD(F.cross_entropy, Y, lr=LRS), lanes=LANES,
                           model_lanes=1, pipeline_groups=cut, outputs=outputs)


@pytest.fixture(scope="module")
def designs():
    """4 MLPs in groups of 1, their groups one after another and pipelined at the end of the forward."""
    plain = _compile(None)
    cut = pipeline_groups.loss_cut(plain.kernel, "train_step")
    return {"plain": plain, "pipelined": _compile(cut), "cut": cut}


def _train(design, backend, steps):
    runner = design.load(backend)
    losses = [np.asarray(runner.train_step(X, Y)) for _ in range(steps)]
    return runner, losses, runner.get_params()


def _same_params(a, b) -> bool:
    return all(np.array_equal(np.asarray(pa[n]), np.asarray(pb[n])) for pa, pb in zip(a, b, strict=True) for n in pa)


def _same_training(one: tuple, other: tuple) -> bool:
    """Two ``_train`` results: the same losses at every step and the same parameters after."""
    return (all(np.array_equal(a, b) for a, b in zip(one[1], other[1], strict=True))
            and _same_params(one[2], other[2]))


def test_the_kernel_lags_the_loss_and_the_backward_and_double_buffers_what_both_parts_touch(designs):
    k, cut = designs["pipelined"].kernel, designs["cut"]
    prog = k.programs["train_step"]
    plain = designs["plain"].kernel.programs["train_step"]
    assert plain.stages[cut - 1].op == "mac" and plain.stages[cut].op != "mac"
    assert {"train_addmm", "train_addmm_1"} <= {st.name for st in plain.stages[:cut]}  # the forward leads
    assert prog.groups == 4 and prog.passes == 5
    lagging = {st.name for st in prog.stages if st.attrs.get("lag") == 1}
    assert lagging == {st.name for st in plain.stages[cut:]}
    # the lagging stages the side stream may run (no multiply-accumulate) that nothing lagging before them feeds go
    # first, the loss's product and the gradient's multiply-subtract too; no parameter's update (the forward reads it)
    first_lead = next(i for i, st in enumerate(prog.stages) if not st.attrs.get("lag"))
    front = prog.stages[:first_lead]
    assert all(st.op != "mac" and st.attrs.get("lag") == 1 for st in front)
    assert "train_amax" in {st.name for st in front}
    assert not {st.out.buffer for st in front} & set(k.params)
    doubled = k.meta["pipelined"]["train_step"]["double_buffered"]
    assert doubled
    for name in doubled:
        assert k.buffers[name].shape[0] == 2
        for st in prog.stages:
            for a in (st.out, *st.ins):
                if a.buffer == name:
                    assert a.index[0] == pipeline_groups.PARITY and GROUP_VAR in a.index[0].vars()


def test_the_report_says_which_stages_lag_and_what_is_double_buffered(designs):
    from fx2fpga.project import report

    text = "\n".join(report._models_section(designs["pipelined"].kernel))
    doubled = designs["pipelined"].kernel.meta["pipelined"]["train_step"]["double_buffered"]
    assert "groups are pipelined" in text and "4 groups take 5 passes" in text
    assert all(f"`{b}`" in text for b in doubled)
    assert "pipelined" not in "\n".join(report._models_section(designs["plain"].kernel))


def test_the_emulator_gives_each_model_what_its_groups_one_after_another_give(designs):
    plain = _train(designs["plain"], "emu", 4)
    assert _same_training(plain, _train(designs["pipelined"], "emu", 4))
    assert not np.array_equal(plain[1][0], plain[1][-1])  # (the models learn)


def test_verilator_equals_the_emulator_and_its_cycles_the_model(designs):
    design = designs["pipelined"]
    emu, emu_losses, emu_params = _train(design, "emu", 2)
    rtl = design.load("rtl")
    for expected in emu_losses:
        assert np.array_equal(np.asarray(rtl.train_step(X, Y)), expected)
        assert rtl.backend.last_cycles == design.schedule.call_cycles("train_step")
    assert _same_params(emu_params, rtl.get_params())
    assert np.array_equal(np.asarray(emu.infer(X)), np.asarray(rtl.infer(X)))


def test_csim_equals_the_emulator(designs):
    assert _same_training(_train(designs["pipelined"], "emu", 2), _train(designs["pipelined"], "csim", 2))


def test_a_pass_hides_the_loss_chain_on_the_side_stream(designs):
    pipelined, plain = designs["pipelined"].schedule, designs["plain"].schedule
    phases = pipelined.commands["train_step"]
    side = {ph.name for ph in phases if ph.stream == streams.SIDE}
    assert {"train_amax", "train_exp", "train_sum_1", "train_sub_2"} <= side
    # the side stream's multiply-subtract multiplies on its own multipliers; the main stream's share the pool
    plan = designs["pipelined"].rtl_plan()
    own = {u["stage"].name for u in plan.units if u["own_product"]}
    assert "train_sub_2" in own and not own & {u["stage"].name for u in plan.pool["users"]}
    per_pass = pipelined.call_cycles("train_step") / 5
    assert per_pass < 0.95 * plain.call_cycles("train_step") / 4
    # the same program with one stream: as long as its groups one after another, plus a pass
    one_stream = schedule.run(designs["pipelined"].kernel, side=False).call_cycles("train_step")
    assert one_stream > pipelined.call_cycles("train_step")


def test_the_side_stream_runs_the_gradients_chain_before_the_losss_own_stages(designs):
    """Of the phases ready, the side stream runs the one a main phase needs first (``streams._due``): the softmax
    chain up to the gradient of the logits and its -lr scaling, which the backward's first product (train_mm) waits
    for, then the bias gradient and the hidden layer's scaling, and the loss's own gather and sums (only the loss
    output reads them) last: train_mm does not wait for them."""
    phases = designs["pipelined"].schedule.commands["train_step"]
    order = [phases[i].name for i in streams.side_order(phases)]
    mm = next(ph for ph in phases if ph.name == "train_mm")
    waited = phases[mm.wait].name
    assert waited in {"train_sub_2", "train_step_neg_lr_train_sub_2"}
    loss_own = {"train_where", "train_sum_2", "train_sum_3", "train_loss"}
    assert min(order.index(n) for n in loss_own) > order.index(waited)
    assert order.index("train_step_neg_lr_train_where_2") < min(order.index(n) for n in loss_own)
    # the ranks follow the deadlines among the phases ready: no phase runs before one due earlier that it could follow
    due = streams._due(phases, streams.free_buffers(designs["pipelined"].schedule.memories,
                                                    designs["pipelined"].schedule.commands))
    ranked = streams.side_order(phases)
    assert [due[i] for i in ranked if phases[i].wait is None] == sorted(due[i] for i in ranked
                                                                          if phases[i].wait is None)


def test_the_side_streams_assignment_keeps_the_shorter_of_its_two_orders(designs):
    """``streams.assign`` runs its greedy with the side stream in deadline order and in the waits' order and keeps
    the shorter command (every pass full: the greedy's measure), the deadline order on a tie."""
    import copy

    s = copy.deepcopy(designs["pipelined"].schedule)
    phases, cache = s.commands["train_step"], {}
    free = streams.free_buffers(s.memories, s.commands)
    candidates = [j for j, ph in enumerate(phases) if ph.kind == "stage" and streams.eligible(ph, s.kernel)]
    cycles = {order: streams._greedy(phases, lambda: schedule._plan_drains(phases, s.memories, cache), free,
                                     candidates, order) for order in streams.ORDERS}
    chosen = designs["pipelined"].schedule.commands["train_step"]
    assert streams.timeline(chosen, idle=False)[0] == min(cycles.values())  # (the greedy's measure: full passes)
    # here a tie (6,570 cycles, every pass full; 6,595 before the side phases overlapped, session 29): the deadline
    # order is kept, the phases as its greedy left them
    assert cycles["deadline"] == cycles["waits"]
    assert [ph.side_rank for ph in chosen] == [ph.side_rank for ph in phases]  # (the copy's last greedy: deadline)


def test_the_first_and_last_passes_idle_the_phases_without_a_group(designs):
    """In the first pass the lagging phases have no group, in the last the leading ones: each issues once (its writes
    off) and drains as a barrier, so the 5 passes take 6,570 - 5,731 = 839 cycles less than 5 full passes (Verilator's
    cycles equal the model: above). A phase too short to gain runs in full (train_sum_3, train_loss)."""
    phases = designs["pipelined"].schedule.commands["train_step"]
    lagging = [ph for ph in phases if ph.lag == 1]
    leading = [ph for ph in phases if ph.lag == 0]
    assert {ph.name for ph in phases if ph.idle_in(0)} == {ph.name for ph in lagging if ph.idle_drain}
    assert {ph.name for ph in phases if ph.idle_in(4)} == {ph.name for ph in leading if ph.idle_drain}
    assert {"train_addmm", "train_addmm_1"} <= {ph.name for ph in phases if ph.idle_in(4)}
    assert {"train_mm", "train_update_b_0_weight"} <= {ph.name for ph in phases if ph.idle_in(0)}
    assert not any(ph.idle_in(p) for ph in phases for p in (1, 2, 3))
    barrier = max(ph.write_delay for ph in phases)
    for ph in phases:
        if ph.lag is not None:
            assert (ph.idle_drain == barrier) == (1 + barrier < ph.iterations + ph.drain_cycles)
    full = streams.timeline(phases, idle=False)[0]
    assert designs["pipelined"].schedule.call_cycles("train_step") < full - 700


def test_a_shared_multiplier_lane_is_as_wide_as_the_stages_reaching_it(designs):
    """Lanes 0-7 of the pool multiply train_mm's 24 x 24 bits (two DSP48E1 blocks: 25 x 18 each); lanes 8-15 only
    the first layer's weight gradient's 24 x 16 bits (one block), so they multiply and accumulate in that block
    (``fx2fpga_mac``: the MAC engine's sum in its P register, at most 48 bits). Verilator's equality above covers
    them."""
    plan = designs["pipelined"].rtl_plan()
    widths = {u["stage"].name: (u["ma_width"], u["mb_width"], u["lanes"]) for u in plan.pool["users"]}
    assert widths["train_mm"] == (24, 24, 8) and widths["train_update_b_0_weight"] == (24, 16, 16)
    assert [len(lp["product"]["parts"]) for lp in plan.pool["lane_plans"]] == [2] * 8 + [1] * 8
    assert [(lp["wa"], lp["wb"]) for lp in plan.pool["lane_plans"][8:]] == [(24, 16)] * 8
    own = sum(u["lanes"] * len(u["pool"]["product"]["parts"]) for u in plan.units if u["own_product"])
    tables = sum(u["lanes"] * len(u["product"]["parts"]) for u in plan.units if u["kind"] in ("table", "normalized"))
    assert plan.dsp_blocks == 8 * 2 + 8 * 1 + own + tables
    rtl, name = designs["pipelined"].out_dir / "rtl", designs["pipelined"].kernel.name
    top, engine = (rtl / f"{name}_top.sv").read_text(), (rtl / f"{name}_mac_engine.sv").read_text()
    assert plan.engine["dsp_acc"] == [False] * 8 + [True] * 8
    assert max(plan.engine["lane_widths"][8:]) <= 48 < plan.engine["lane_widths"][0]
    assert top.count("pool_part_9_m") == 0 and top.count("pool_part_0_m") == 2
    assert engine.count("fx2fpga_mac #(") == 8 and "mac_8 (" in engine and "mac_7 (" not in engine


def test_bad_requests_are_refused_clearly():
    with pytest.raises(ValueError, match="may lag from one of"):
        _compile(0, outputs="rtl")
    one = nn.Sequential(nn.Linear(16, 4))
    with pytest.raises(ValueError, match="2 groups of models or more"):
        fx2fpga.compile(one, (X,), train=fx2fpga.SGD(F.cross_entropy, Y, lr=0.1), lanes=2, pipeline_groups=1)
