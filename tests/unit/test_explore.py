"""passes/explore.py: design points on exact cycles and the calibrated RTL model; "auto" keeps the fastest
that fits; the Pareto front."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime import interface
from fx2fpga_runtime import ops as fx2fpga_ops

import fx2fpga
from fx2fpga.passes import allocate, explore, resources, tile


@pytest.fixture(scope="module")
def auto_mlp(mlp_example):
    sgd = fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, 0.1)
    return fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd, lanes="auto")


def test_auto_keeps_the_fastest_point_that_fits(auto_mlp):
    result = auto_mlp.context.exploration
    chosen = result.chosen
    uniform = [p for p in result.points if not p.allocation]
    assert [p.lanes for p in uniform] == [1, 2, 4, 8, 16]  # 16 is over 100% of the LUTs: 32 is not evaluated
    assert result.skipped == [(1, 32)]
    per_stage = [p for p in result.points if p.allocation]
    # the fastest at 100% refined on the exact schedule (passes/refine.py: 1,173 -> 1,093 cycles here): fc2's input
    # gradient at twice its lanes (24-bit by 24-bit products: two DSP blocks a lane), paid for by the side chain
    assert [p.label for p in per_stage] == ["per-stage@100%", "per-stage@100%/refined", "per-stage@20%",
                                            "per-stage@40%", "per-stage@60%"]
    assert per_stage[1].model_steps_per_s > per_stage[0].model_steps_per_s and per_stage[1].fits

    def lanes(point, stage):
        m, ln, *rest = point.stage_lanes[stage]
        return m * ln * (rest[1] if len(rest) == 3 else 1)
    assert lanes(per_stage[1], "train_mm") == 2 * lanes(per_stage[0], "train_mm")
    # fc1's forward takes the batch as it arrives, a unit of four 16-bit values (two words) a cycle, at 32 x 4 lanes
    assert chosen.stage_lanes["train_addmm"] == [1, 32, "j", 4, "i"]
    first = auto_mlp.schedule.commands["train_step"][0]
    assert first.streamed and first.in_words == 2 and first.iterations == 16 * 64 // 4
    # lanes where the cycles are: per stage beats every uniform request that fits, by at least 2x here
    assert chosen.allocation and chosen.model_steps_per_s > 2 * max(p.model_steps_per_s for p in uniform if p.fits)
    assert chosen.fits and chosen.load <= explore.AUTO_BUDGET
    assert all(not p.fits for p in result.points if p.model_steps_per_s > chosen.model_steps_per_s)
    assert sum(p.chosen for p in result.points) == 1
    # the point is what the design is: its exact cycles and its predicted resources
    assert auto_mlp.rtl_cycles()["train_step"] == chosen.cycles
    pred = resources.rtl_resources(auto_mlp, auto_mlp.target)
    assert (pred.lut, pred.ff, pred.dsp, pred.bram36) == (chosen.lut, chosen.ff, chosen.dsp, chosen.bram36)
    t = auto_mlp.target
    steps = t.clock_mhz * 1e6 / (chosen.cycles + chosen.bus_cycles)
    assert chosen.model_steps_per_s == pytest.approx(steps)
    # the bus: the batch (16 x 64 inputs of 16 bits, four to a unit of two words: their dim 0 is banked; the 16
    # targets, as many to a unit as their banks take) comes in at 800 MB/s (the HP port's 64-bit beats), no slower
    # than the core takes it (a unit a cycle): no wait; the output words go out two a beat
    packing = auto_mlp.kernel.meta["word_packing"]
    assert packing["train_x"] == packing["infer_x"] == [0, 4] and set(packing) <= {"train_x", "train_y", "infer_x"}
    per_y = packing.get("train_y", [0, 1])[1]
    units = 16 * 64 // 4 + 16 // per_y
    words_in = 16 * 64 // 2 + 16 // per_y * (2 if per_y * 16 > 32 else 1)
    assert np.ceil(4 * words_in / 800e6 * 100e6) <= units
    outs = interface.command_buffers(auto_mlp.kernel, "train_step")[1]
    assert chosen.bus_cycles == -(-interface.word_count(auto_mlp.kernel, outs) // 2) + explore.AXI_CALL_CYCLES


def test_a_per_stage_point_compiles_again_from_its_stage_lanes(auto_mlp, mlp_example):
    """The chosen point's lanes per stage (explore.json's ``stage_lanes``) given back to compile: the same design
    (cycles, predicted resources); a stage the kernel lacks, or lanes that do not divide its loop, is an error."""
    chosen = auto_mlp.context.exploration.chosen
    # the most lanes of any stage, in all (model lanes x lanes x outer lanes)
    assert chosen.stage_lanes and max(v[0] * v[1] * (v[3] if len(v) == 5 else 1)
                                      for v in chosen.stage_lanes.values()) == chosen.lanes
    sgd = fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, 0.1)
    again = fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd, lanes=chosen.stage_lanes,
                            model_lanes=chosen.group_size)
    assert again.context.exploration is None
    assert again.rtl_cycles()["train_step"] == chosen.cycles
    assert resources.rtl_resources(again, again.target) == chosen.resources
    with pytest.raises(ValueError, match="train_nope"):
        fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd, lanes={"train_nope": [1, 2]},
                        until="tile")
    with pytest.raises(ValueError, match="train_addmm: \\[1, 3\\] lanes do not divide"):
        fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd, lanes={"train_addmm": [1, 3]},
                        until="tile")


def test_lanes_may_run_over_any_free_loop(auto_mlp, mlp_example):
    """The allocation picks each stage's lane loop, not only its longest: a stage is offered lanes over a loop they
    divide where they would not divide its longest (the label comparisons, 16 rows x 10 classes: 10 lanes over the
    classes, one row a cycle, where lanes over the rows would leave 6 of 16 idle in the last issue), and at the
    chosen point some stage runs its lanes over a loop that is not its longest; a point names the loop and compile
    takes it back; a loop lanes cannot use is a clear error."""
    chosen = auto_mlp.context.exploration.chosen
    stages = {st.name: st for st in auto_mlp.kernel.stages()}
    assert tile._lane_loop(stages["train_eq"]).var == "i"
    assert (1, 10, "j", 1, None) in allocate._options(stages["train_eq"])
    assert any(v[1] > 1 and v[2] != tile._lane_loop(stages[n]).var for n, v in chosen.stage_lanes.items()), \
        chosen.stage_lanes
    assert all(stages[n].lane_var == v[2] for n, v in chosen.stage_lanes.items() if len(v) == 3)
    sgd = fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, 0.1)
    k = fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd, until="tile",
                        lanes={"train_update_fc1_weight": [1, 8, "i"], "train_mm": [1, 4]})
    st = {s.name: s for s in k.stages()}
    assert (st["train_update_fc1_weight"].lanes, st["train_update_fc1_weight"].lane_var) == (8, "i")
    assert (st["train_mm"].lanes, st["train_mm"].lane_var) == (4, "j")  # by default the longest loop (32)
    with pytest.raises(ValueError, match="train_mm: lanes cannot run over 'k' \\(its loops that may: i, j\\)"):
        fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd, until="tile",
                        lanes={"train_mm": [1, 4, "k"]})


def test_matmuls_take_lanes_in_two_loops(auto_mlp):
    """The allocation may give a multiplying stage lanes over two of its loops (batch rows and output columns):
    the point records both, the stage has them, and its phase takes the cycles the allocation counted."""
    chosen = auto_mlp.context.exploration.chosen
    two = {n: v for n, v in chosen.stage_lanes.items() if len(v) == 5}
    assert two, chosen.stage_lanes
    stages = {st.name: st for st in auto_mlp.kernel.stages()}
    phases = {p.name: p for cmd in ("train_step", "infer") for p in auto_mlp.context.schedule.commands[cmd]}
    for name, (m, ln, var, outer, outer_var) in two.items():
        st = stages[name]
        assert fx2fpga_ops.OPS_TABLE[st.op].multiplies
        assert (st.lanes, st.lane_var, st.outer_lanes, st.outer_lane_var) == (ln, var, outer, outer_var)
        assert var != outer_var and phases[name].lanes == m * ln * outer
        # (the allocation leaves a serialized drain's slots out: backends/drains.py)
        assert phases[name].cycles == allocate.stage_cycles(st, m, ln, var, outer, outer_var) + phases[name].late_writes


def test_pareto_front(auto_mlp):
    points = auto_mlp.context.exploration.points
    front = [p for p in points if p.pareto]
    assert front and all(p in front for p in points if p.chosen)
    for p in points:
        dominated = any(q.model_steps_per_s >= p.model_steps_per_s and q.load <= p.load and
                        (q.model_steps_per_s, q.load) != (p.model_steps_per_s, p.load) for q in points)
        assert p.pareto == (not dominated)
    # the smallest point and the fastest are on it whatever the costs; per stage beats most of the uniform points
    uniform = [p.label for p in front if not p.allocation]
    assert uniform[0] == "1x1" and len(uniform) <= 3
    assert max(points, key=lambda p: p.model_steps_per_s) in front


def test_models_side_by_side_are_explored(mlp_example):
    """4 MLPs stacked on a model axis at lanes 2: 1, 2 or 4 models at once, each point's cycles exact."""
    models = []
    for seed in range(4):
        torch.manual_seed(seed)
        models.append(mlp_example.DigitsMLP(8))
    d = fx2fpga.compile(models, mlp_example.example_inputs, lanes=2,
                        train=fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, 0.1))
    points = d.context.exploration.points
    assert not any(p.allocation for p in points)  # a number of lanes: no per-stage allocation
    assert [(p.model_lanes, p.lanes) for p in points] == [(1, 2), (2, 2), (4, 2)]
    cycles = [p.cycles for p in points]
    assert cycles[0] > 1.9 * cycles[1] > 3.6 * cycles[2] / 2  # models side by side: nearly linear
    assert [p.dsp for p in points] == sorted(p.dsp for p in points)
    # more models at once cost more logic; the choice is the fastest point within every resource's allowance
    assert [p.lut for p in points] == sorted(p.lut for p in points) and points[2].lut > 1.5 * points[1].lut
    assert all(p.fits == (p.load <= explore.AUTO_BUDGET) for p in points)
    chosen = d.context.exploration.chosen
    assert chosen is max((p for p in points if p.fits), key=lambda p: p.model_steps_per_s)
    assert {s.model_lanes for s in d.kernel.stages()} == {chosen.model_lanes}


def test_model_lanes_given_limit_the_per_stage_group_size():
    """``lanes="auto"`` with ``model_lanes`` a number: the per-stage allocation runs in groups of that many models
    only, as the uniform points do (``"auto"``: every divisor of the model count)."""
    torch.manual_seed(0)
    models = [torch.nn.Linear(8, 3) for _ in range(4)]
    d = fx2fpga.compile(models, (torch.randn(2, 8),), lanes="auto", model_lanes=2)
    points = d.context.exploration.points
    assert {p.group_size for p in points if p.allocation} == {2}
    assert {p.model_lanes for p in points if not p.allocation} == {2}
    assert d.context.exploration.chosen.group_size == 2
    assert explore.group_sizes(d.kernel, "auto") == [1, 2, 4] and explore.group_sizes(d.kernel, 3) == [2]


def test_nothing_fits_is_a_budget_error(mlp_example):
    sgd = fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, 0.1)
    big = torch.nn.Sequential(torch.nn.Linear(64, 1280), torch.nn.ReLU(), torch.nn.Linear(1280, 10))
    with pytest.raises(fx2fpga.errors.ResourceBudgetError, match="No design point fits the explorer's allowance "
                       r"\(85% of the LUT, 85% of the FF, 100% of the DSP, 98% of the BRAM36") as err:
        fx2fpga.compile(big, mlp_example.example_inputs, train=sgd, lanes="auto")
    assert [r for r, *_ in err.value.over] == ["BRAM36"]  # the resource over its allowance, against the board's
    assert err.value.over[0][1] > 0.98 * err.value.over[0][2]


def test_trades_of_lanes_after_the_greedy(mlp_example):
    """At 26% of the allowance (multiplexers unpriced) the digits MLP's greedy allocation ends where a trade of lanes
    between two stages saves cycles within it (432 here, with session 26's allowances; at 22% of the budget, 432 on
    the session-24 fit; 432 at 23% with the side
    stream's controller priced; 192 at
    22% on the fit with ``srl_bits`` and ReLU's backward fused into its gradient's multiply-accumulate; 1,728 at
    20% before both, with fc1's ReLU fused into its multiply-accumulate; 192 before that, 1,792 at 25% before the
    inference ran on its training twins' units);
    ``allocate`` makes such trades until none is left, and every one saves."""
    import copy

    sgd = fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, 0.1)
    design = fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd, lanes=1, outputs="rtl")
    target = design.target
    one = copy.deepcopy(design.kernel)
    base, _, _ = explore.measure(one, target, "k", 1, 1)

    state = allocate.greedy(copy.deepcopy(one), target, base.plan, 0.26, "train_step", price_muxes=False)
    trade = state.best_trade()
    assert trade is not None and trade[0] > 0
    before = state.cycles()
    state.trade_lanes()
    assert state.best_trade() is None
    assert state.cycles() <= before - trade[0]
    assert all(state.relieved()[r] <= state.limit[r] for r in allocate.RESOURCES)
    # allocate is the greedy, the trades and the widening: its choices are that state's
    state.widen_by_narrowing()
    k = copy.deepcopy(one)
    assert allocate.allocate(k, target, base.plan, 0.26, "train_step", price_muxes=False) == {
        n: state.options[n][state.choice[n]] for n in state.stages}


def test_a_stage_widened_at_the_cost_of_several_narrower_ones(mlp_example):
    """At 32% of the budget (multiplexers unpriced) the digits MLP's greedy and its one-for-one trades leave a stage
    whose next step does not fit, and no single step of another stage frees enough (5,970 cycles instead of 6,178
    here, with the side stream's products on their own multipliers; 5,950 instead of 6,190 at 31% on the fit with
    ``srl_bits`` and ReLU's backward fused; 6,176 instead of 6,688 at 32% before both, with
    fc1's ReLU fused into its multiply-accumulate; at 35% before that, 6,030 instead of 6,542).
    ``widen_by_narrowing`` takes the step and narrows several small stages until it fits: fewer cycles, within
    the limit, and the full plan is faster than one lane."""
    import copy

    sgd = fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, 0.1)
    design = fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd, lanes=1, outputs="rtl")
    target = design.target
    one = copy.deepcopy(design.kernel)
    base, _, _ = explore.measure(one, target, "k", 1, 1)
    k = copy.deepcopy(one)
    state = allocate.greedy(k, target, base.plan, 0.32, "train_step", price_muxes=False)
    state.trade_lanes()
    before, choice = state.cycles(), dict(state.choice)
    state.widen_by_narrowing()
    after = state.cycles()
    assert after < before, (before, after)
    widened = [n for n in state.stages if allocate.total(state.options[n][state.choice[n]])
               > allocate.total(state.options[n][choice[n]])]
    narrowed = [n for n in state.stages if allocate.total(state.options[n][state.choice[n]])
                < allocate.total(state.options[n][choice[n]])]
    assert len(widened) >= 1 and len(narrowed) >= 2, (widened, narrowed)
    assert state.fits() and all(state.relieved()[r] <= state.limit[r] for r in allocate.RESOURCES)
    tile.mirror_twin_lanes(k, "train_step")
    most = max(st.total_lanes for st in k.programs["train_step"].stages)
    point, _, _ = explore.measure(k, target, "k", max(st.model_lanes for st in k.stages()), most, allocation="x")
    assert point.cycles < base.cycles


def test_inference_stages_take_their_training_twins_lanes(auto_mlp):
    """The training kernel's ``infer`` runs the forward pass the training step runs first: each of its stages takes
    the lanes of its twin (same op, loops and parameters), so its reads hit the banks those lanes banked the
    parameters by (no select among 32 banks of one lane) and it takes far fewer cycles than with one lane."""
    k = auto_mlp.kernel
    infer, train = k.programs["infer"].stages, k.programs["train_step"].stages
    twins = {"infer_addmm": "train_addmm", "infer_output": "train_addmm_1"}
    by_name = {st.name: st for st in train}

    def lanes(st):
        loops = [lp.var for lp in st.loops]
        return (st.model_lanes, st.lanes, st.outer_lanes,
                loops.index(st.lane_var) if st.lane_var else None,
                loops.index(st.outer_lane_var) if st.outer_lane_var else None)
    assert [st.name for st in infer] == list(twins)
    assert all(lanes(st) == lanes(by_name[twins[st.name]]) for st in infer)
    assert max(st.total_lanes for st in infer) > 1
    assert auto_mlp.rtl_cycles()["infer"] < auto_mlp.rtl_cycles()["train_step"]


def test_block_ram_takes_lut_ram_banks_at_the_chosen_point(auto_mlp):
    """The digits MLP's chosen point uses more than half the pynq-z1's LUT allowance, and a larger share of it than of
    its block RAM's, so LUT-RAM banks move (resources.assign_block_ram). The top asks for block RAM on exactly those
    banks (the first ones of their memories), and the model's BRAM36 and LUT change by exactly what they take
    and save."""
    design = auto_mlp
    p, target = design.rtl_plan(), design.target
    moved = {m["name"]: m["block_banks"] for m in p.memories if m["block_banks"]}
    assert moved, "no bank moved"
    top = design.files()[f"rtl/{design.name}_top.sv"]
    asked = sorted(re.findall(r"\.BLOCK\(1\)\) mem_(\w+)_(\d+) \(", top))
    assert asked == sorted((n, str(b)) for n, k in moved.items() for b in range(k))
    costs = resources.load_costs()
    with_block, without = resources.rtl_resources(p, target), resources.rtl_resources(p, target, block_ram=False)
    mems = {m["name"]: m for m in p.memories}
    own = {n: resources.bank_mapping(mems[n]["depth"], mems[n]["width"], False) for n in moved}
    assert own and all(m.kind == "lutram" for m in own.values())
    took = sum(k * resources.bram36_for(max(2, mems[n]["depth"]), mems[n]["width"]) for n, k in moved.items())
    assert with_block.bram36 == without.bram36 + took
    saved = sum(k * own[n].luts for n, k in moved.items()) * -costs["lut"]["block_lutram_luts"]  # (held at -1)
    assert without.lut - with_block.lut == pytest.approx(saved, abs=1)
    cap = resources.allowance(target)
    load = {r: getattr(with_block, r) / cap[r] for r in cap}
    before = {r: getattr(without, r) / cap[r] for r in cap}  # (shares of each resource's allowance)
    assert load["bram36"] < max(before["lut"], before["ff"]) and max(before["lut"], before["ff"]) > 0.5


def test_the_explorer_pipelines_only_an_allocation_without_lanes_over_models():
    """The cut is found on the one-lane kernel, but the allocation may then give a stage lanes over models, which
    ``compile(pipeline_groups=)`` refuses (session 24: the explorer had pipelined such a 30-MLP point, a kernel
    no backend had run): the allocated kernel is checked again."""
    torch.manual_seed(0)
    models = [torch.nn.Linear(8, 3) for _ in range(8)]
    d = fx2fpga.compile(models, (torch.randn(2, 8),), lanes=1, model_lanes=2, outputs="hls",
                        train=fx2fpga.SGD(F.cross_entropy, torch.tensor([0, 2]), 0.1))
    kernel, program = d.kernel, explore.main_program(d.kernel)
    assert kernel.programs[program].groups == 4
    for st in kernel.stages():  # an allocation of one lane everywhere, in groups of two
        tile.set_stage_lanes(st, 1, 1)
    cut = explore.pipeline_cut(kernel)
    assert cut is not None
    pipelined, did = explore.pipelined_if_allowed(copy.deepcopy(kernel), program, cut)
    assert did and pipelined.meta["pipelined"][program]["cut"] == cut
    tile.set_stage_lanes(kernel.programs[program].stages[cut], 2, 1)  # a lagging stage on both models of a group
    same, did = explore.pipelined_if_allowed(kernel, program, cut)
    assert not did and same is kernel and "pipelined" not in kernel.meta


def test_pool_lanes_are_priced_at_the_widest_stage_reaching_each():
    """The shared multipliers lane by lane (allocate.PoolLanes, as emit._lane_plan builds them): a 24 x 24-bit stage
    on 2 lanes and a 24 x 16-bit one on 4 take two DSP48E1 on the first two lanes and one on the other two; priced
    at the widest everywhere (before session 26, and the greedy's other pricing), eight."""
    from fx2fpga.backends.rtl import emit

    parts = lambda wa, wb: emit.product_plan(wa, wb, "DSP48E1")["parts"]  # noqa: E731
    assert (len(parts(24, 24)), len(parts(24, 16))) == (2, 1)
    st = lambda name: type("S", (), {"name": name})()  # noqa: E731
    pool = allocate.PoolLanes({"bwd": (24, 24), "fwd": (24, 16)}, parts, 1.0, lanes={"bwd": 2})
    assert pool.added(st("fwd"), 4)["dsp"] == 2 + 2 - 2  # lanes 2 and 3 new, one block each (lane 0-1 are bwd's)
    pool.take(st("fwd"), 4)
    assert pool.cost(pool.lanes)["dsp"] == 6 and pool.added(st("bwd"), 4)["dsp"] == 2  # bwd widens lanes 2, 3
    assert allocate.PoolLanes(pool.widths, parts, 1.0, by_lane=False).cost(pool.lanes)["dsp"] == 8
    assert pool.added(st("other"), 64) == dict.fromkeys(allocate.RESOURCES, 0.0)  # not pooled: nothing


def test_the_largest_weights_forward_and_update_seeded_alike(mlp_example):
    """allocate.aligned_pair: fc1's forward (reads the weight) and its update (writes it) at 128 lanes each, over
    loops that agree on the weight: the forward's lanes bank it along a dim the update banks it too (the forward
    reduces over the other). The update alone banks it by its 128 lanes (into the forward's one bank its drain would
    take more slots than its reduction has points); beside the forward its drain is serialized (backends/drains.py):
    the pair's banks are the forward's, 32, each written and read by 4 of the update's lanes in turn."""
    from fx2fpga.backends.common import buffer_banking

    sgd = fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, 0.1)
    design = fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd, lanes=1)
    k = copy.deepcopy(design.kernel)
    seed = allocate.aligned_pair(k, design.target, "train_step", 128)
    assert set(seed) == {"train_addmm", "train_update_fc1_weight"}
    assert all(allocate.total(o) == 128 and o[0] == 1 for o in seed.values())
    stages = {st.name: st for st in k.stages()}
    alone = {}
    for name, option in seed.items():
        tile.set_stage_lanes(stages[name], *option)
        alone[name] = buffer_banking(k, ["fc1_weight"])["fc1_weight"].factors
        tile.set_stage_lanes(stages[name], 1, 1)
    for name, option in seed.items():
        tile.set_stage_lanes(stages[name], *option)
    both = buffer_banking(k, ["fc1_weight"])["fc1_weight"].factors
    assert alone == {"train_addmm": (32, 1), "train_update_fc1_weight": (32, 4)} and both == (32, 1)
    assert buffer_banking(k, ["fc1_weight"], serial_drains=False)["fc1_weight"].factors == (32, 4)
    assert allocate.aligned_pair(k, design.target, "train_step", 3) is None  # no choice of 3 lanes in all for both
