"""Design-space exploration: lanes and models side by side, chosen under the target's real budget.

A design point is a lane request for every stage (``lanes``) and, on a kernel stacked on a model
axis, how many models each stage computes at once (``model_lanes``). Each point is scheduled
(exact RTL cycles, ``passes/schedule.py``) and planned (``backends/rtl/emit.py``), and its LUT, FF,
DSP and BRAM36 come from the RTL resource model calibrated against Yosys (``passes/resources.py``),
not from the HLS-style multiplier-per-stage estimate (the RTL shares its multipliers).

Its speed is model throughput: models trained (or run) per second, one call of the kernel's main
program (``train_step``, else ``infer``) costing its exact RTL cycles plus what the bus adds to them
(``bus_cycles``: the output words' write-back, two a beat, the AXI wrapper's start and finish, and any wait for
input words where the target's bus rate, ``bus_mbytes_per_s``, is below what the core takes: a word, or a packed
unit of two, a cycle).

The per-stage points come from the greedy allocation (``passes/allocate.py``); the fastest of them that fits is
then refined on the exact schedule (``passes/refine.py``: narrower stages paying for a wider main-stream one).
``lanes="auto"`` keeps the fastest point whose every resource is within its allowance on the target
(``resources.ALLOWED_SHARE``: a margin for the model's error on LUT and FF, none on the exact DSP count, the
block RAM's error on block RAM; docs/rtl.md, "Resource model"); ``fx2fpga explore``
writes every point, the Pareto front (resources against model-steps/s) and the chosen one as
JSON and a PNG.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields

from fx2fpga_runtime import interface
from fx2fpga_runtime.ir import Kernel

from . import allocate, model_groups, pipeline_groups, refine, resources, schedule, tile

AUTO_BUDGET = 1.0  # share of each resource's allowance (resources.ALLOWED_SHARE) the chosen point may use (until
# session 26: 0.85 of each resource itself, the LUT model's margin on the exact DSP and block RAM counts too)
LANE_REQUESTS = (1, 2, 4, 8, 16, 32)  # the per-stage lane requests tried


@dataclass
class DesignPoint:
    """One point of the design space: its knobs, exact cycles, predicted resources and throughput."""

    model_lanes: int
    lanes: int
    models: int
    program: str  # the program whose calls count as model steps
    cycles: int  # exact RTL cycles of one call of ``program``
    bus_cycles: int  # what the bus adds to a call beyond its exact cycles (bus_cycles)
    lut: int
    ff: int
    dsp: int
    bram36: float
    model_steps_per_s: float
    usage: float  # the largest share of any of the target's resources it uses
    load: float  # the largest share of any resource's allowance it uses (resources.allowance)
    fits: bool  # every resource within AUTO_BUDGET of its allowance
    allocation: str = ""  # "" for a uniform lane request; "per stage, <budget>" for passes/allocate.py
    group_size: int = 1  # models per group (the program runs once per group)
    pipeline_cut: int | None = None  # the groups pipelined, the stages from this one a pass behind
    # (passes/pipeline_groups.py; compile(pipeline_groups=pipeline_cut) makes the point)
    stage_lanes: dict = field(default_factory=dict)  # per-stage points: stage -> [model lanes, lanes, lane loop]
    # of the main program's stages with more than one lane (the loop only with lanes > 1;
    # compile(lanes=stage_lanes, model_lanes=group_size) makes the point)
    pareto: bool = False  # no other point is as fast with as small a load
    chosen: bool = False

    plan: object = field(default=None, repr=False, compare=False)  # its RtlPlan (not in the JSON)

    @property
    def resources(self) -> resources.PredictedResources:
        """Its predicted LUT, FF, DSP and BRAM36."""
        return resources.PredictedResources(self.lut, self.ff, self.dsp, self.bram36)

    @property
    def label(self) -> str:
        if self.allocation:
            return (self.allocation.replace("per stage, ", "per-stage@").replace(", groups of ", "/g")
                    .replace(", pipelined", "/pipelined").replace(", refined", "/refined"))
        return f"{self.model_lanes}x{self.lanes}"


@dataclass
class Exploration:
    """Every point evaluated, and the one chosen (None when none fits)."""

    target: str
    clock_mhz: float
    budget: float
    points: list[DesignPoint] = field(default_factory=list)
    skipped: list[tuple[int, int]] = field(default_factory=list)  # not evaluated: more lanes than one over 100%
    # of the LUTs, FFs or DSPs (each grows with lanes)

    @property
    def chosen(self) -> DesignPoint | None:
        return next((p for p in self.points if p.chosen), None)

    def to_dict(self) -> dict:
        return {"target": self.target, "clock_mhz": self.clock_mhz, "budget": self.budget,
                "chosen": self.chosen.label if self.chosen else None,
                "points": [{f.name: getattr(p, f.name) for f in fields(p) if f.name != "plan"} | {"label": p.label}
                           for p in self.points],
                "skipped": [f"{m}x{ln}" for m, ln in self.skipped]}


def main_program(kernel: Kernel) -> str:
    """The program whose calls are model steps: ``train_step`` in a training kernel, else ``infer``."""
    return "train_step" if "train_step" in kernel.programs else next(iter(kernel.programs))


# Cycles from the ``ap_start`` write to the interrupt beyond the core's own and its output words, at most:
# the AXI wrapper's start and its last write response (benchmarks/results/axi_overhead.json, ideal memory:
# load_params +4, infer +8 and train_step +8 beyond their output words; docs/rtl.md "AXI-Lite register file").
AXI_CALL_CYCLES = 9


def bus_cycles(kernel: Kernel, program: str, target) -> int:
    """Clock cycles the bus adds to one call of ``program`` beyond the core's exact cycles (0 without a bus).

    Through ``<name>_axi`` the core's unpack phases take the input words as the bus delivers them (a word, or a
    packed unit of two, per cycle), so the bus adds only what it cannot hide: the wait where it delivers the
    input words slower than the core takes them (the target's ``bus_mbytes_per_s``), the write-back of the output
    words after the core (two a beat, a beat per cycle) and the wrapper's start and finish (``AXI_CALL_CYCLES``)."""
    rate = getattr(target, "bus_mbytes_per_s", None)
    if not rate:
        return 0
    ins, outs = interface.command_buffers(kernel, program)
    in_words, out_words = interface.word_count(kernel, ins), interface.word_count(kernel, outs)
    taking = sum(interface.buffer_words(kernel, b) // interface.unit_words(kernel, b) for b in ins)
    delivery = math.ceil(round(4 * in_words * target.clock_mhz / rate, 9))  # (rounded: 260.00000000000003 is 260)
    return max(0, delivery - taking) + -(-out_words // 2) + AXI_CALL_CYCLES


def candidates(kernel: Kernel, lanes, model_lanes) -> list[tuple[int, int]]:
    """``(model_lanes, lanes)`` pairs to try: the given ones, or every divisor of the model count and
    every lane request up to the longest loop for ``"auto"``."""
    n = model_groups.model_count(kernel)
    widest = max((lp.extent for st in kernel.stages() for lp in st.loops), default=1)
    mls = tile.divisors(n) if model_lanes == "auto" else [model_lanes]
    ls = [r for r in LANE_REQUESTS if r <= widest] if lanes == "auto" else [lanes]
    return [(m, ln) for m in mls for ln in ls]


def evaluate(kernel: Kernel, target, model_lanes: int, lanes: int, name: str = "kernel"):
    """The uniform point ``(model_lanes, lanes)`` of ``kernel`` (not changed): ``(DesignPoint, tiled kernel,
    schedule)``; ``(None, None, None)`` when the RTL cannot map it."""
    k = copy.deepcopy(kernel)
    tile.assign_lanes(k, lanes, target, model_lanes)
    return measure(k, target, name, model_lanes, lanes)


def measure(k: Kernel, target, name: str, model_lanes: int, lanes: int, allocation: str = ""):
    """Schedule, plan and predict the tiled kernel ``k``: ``(DesignPoint, k, schedule)`` or Nones."""
    from ..backends.rtl import emit as verilog  # (the backend imports the passes, not the reverse, at load)

    try:
        sched = tile.keep_banks_mappable(k)
        plan = verilog.plan(k, name, target.dsp_kind, sched, target)
    except (schedule.ScheduleError, verilog.RtlCodegenError):
        return None, None, None
    res = resources.rtl_resources(plan, target)
    program = main_program(k)
    cycles, bus = sched.call_cycles(program), bus_cycles(k, program, target)
    n = model_groups.model_count(k)
    usage, load = max(res.shares(target).values()), res.load(target)
    stage_lanes = {st.name: [st.model_lanes, st.lanes] + ([st.lane_var] if st.lanes > 1 else [])
                   + ([st.outer_lanes, st.outer_lane_var] if st.outer_lanes > 1 else [])
                   for st in k.stages() if st.total_lanes > 1} if allocation else {}
    point = DesignPoint(model_lanes, lanes, n, program, cycles, bus, res.lut, res.ff, res.dsp, res.bram36,
                        n * target.clock_mhz * 1e6 / (cycles + bus), usage, load, load <= AUTO_BUDGET,
                        allocation=allocation,
                        group_size=model_groups.group_size(k), stage_lanes=stage_lanes,
                        pipeline_cut=k.meta.get("pipelined", {}).get(program, {}).get("cut"))
    point.plan = plan
    return point, k, sched


PER_STAGE_BUDGETS = (0.2, 0.4, 0.6)  # further budgets the per-stage allocation is run for (besides AUTO_BUDGET)
PLAN_RETRIES = 8  # allocations redone with a smaller budget while the full plan is over the share (6 until session
# 26: the seeded 30-MLP allocation fits at 39,420 cycles on the 7th, its 6th at 1% over)
RETRY_MARGIN = 0.98  # ... each aiming that much below the proportional budget (the greedy lands close to its aim)
FULL_ENOUGH = 0.97  # a first aim whose plan uses less than this share of the budget is followed by a higher one
AIMS_BELOW = (0.985, 0.97, 0.955)  # after the bisection: the largest fitting aim times these, tried too


def per_stage_point(kernel: Kernel, target, name: str, size: int, share: float):
    """The greedy per-stage allocation (``passes/allocate.py``) of ``kernel`` in groups of ``size`` models
    within ``share`` of the budget, checked by a full plan: while over, redone with a proportionally smaller
    budget; once one fits, the budget is bisected between the largest that fits and the smallest that does not
    (the full plan grows faster than the per-lane sums, and not smoothly). The greedy runs twice, with the
    multiplexers between banks and lanes priced in each move and without (its choices differ, and neither is
    always faster); a third pins the first stage at the shape that takes the input as it arrives
    (``tile.stream_lanes``); the last pins the largest weight's forward and update at twice the lanes the best of
    those gave them (``allocate.aligned_pair``). ``(DesignPoint, kernel, schedule)`` of the fastest allocation that
    fits (else the unpriced one), or Nones."""
    one = copy.deepcopy(kernel)
    tile.assign_stage_lanes(one, {}, size)  # groups of ``size``, one lane everywhere
    base, _, _ = measure(one, target, name, 1, 1)
    if base is None or base.load > share:  # one lane everywhere is already over: nothing to allocate
        return None, None, None
    # groups pipelined where the program allows (the loss chain of one group beside the next one's forward), and
    # one allocation of them run one after another to compare (pipelining adds a pass: worth it for many groups)
    cut = pipeline_cut(one)
    got = [_allocated_point(one, base, target, name, size, share, priced, cut=cut) for priced in (True, False)]
    # the first stage at the lanes that take the input as its units arrive (two words a cycle where that shape
    # applies, else one), the others allocated around it (the greedy prices stages alone: it does not see the
    # transfer that shape hides, schedule.fuse_input_stream)
    pinned = next(filter(None, (tile.stream_lanes(one, main_program(one), bits)
                                for bits in (interface.MAX_UNIT_BITS, interface.MAX_PORT_WIDTH))), None)
    if pinned:
        got.append(_allocated_point(one, base, target, name, size, share, True, pinned, cut=cut))
    if cut is not None:
        got.append(_allocated_point(one, base, target, name, size, share, True))
    # seeded with the largest parameter's forward and update at twice the lanes the best of those gave them, on
    # loops that agree on its banks (allocate.aligned_pair), the shared multipliers priced lane by lane
    # (allocate.PoolLanes: the seed's narrow products take one DSP block each)
    program, fitting = main_program(one), [g for g in got if g[0] is not None and g[0].load <= share]
    pair = allocate.weight_pair(one, program)
    if fitting and pair:
        lanes = {st.name: st.total_lanes for st in max(fitting, key=lambda g: g[0].model_steps_per_s)[1].stages()}
        seed = allocate.aligned_pair(one, target, program, 2 * max(lanes[st.name] for st in pair))
        if seed:
            got.append(_allocated_point(one, base, target, name, size, share, True, seed, cut=cut, pool_by_lane=True))
    fitting = [g for g in got if g[0] is not None and g[0].load <= share]
    return max(fitting, key=lambda g: g[0].model_steps_per_s) if fitting else got[1]


PIPELINED_GROUPS = 4  # the fewest groups the explorer pipelines: the extra pass costs 1/groups of the step, and a
# pass saves the loss chain's share (15-20% for the digits MLP), so 2 or 3 groups seldom gain and cost exploring time


def pipeline_cut(kernel: Kernel) -> int | None:
    """Where the main program's groups would be pipelined (``passes/pipeline_groups.py``: the lagging part from the
    loss chain on, ``loss_cut``), or None where they are not (fewer than ``PIPELINED_GROUPS`` groups, ...)."""
    program = main_program(kernel)
    if (not pipeline_groups.pipelinable(kernel, program)
            or kernel.programs[program].groups < PIPELINED_GROUPS):
        return None
    return pipeline_groups.loss_cut(kernel, program)


def pipelined_if_allowed(kernel: Kernel, program: str, cut: int | None) -> tuple[Kernel, bool]:
    """``kernel`` with the groups of ``program`` pipelined at ``cut`` where the kernel as allocated allows it
    (``pipeline_groups.pipelinable``: an allocation may give stages lanes over models, which it refuses), and
    whether it did. The explorer checks the allocated kernel, not the one-lane one it found the cut on."""
    if cut is None or not pipeline_groups.pipelinable(kernel, program):
        return kernel, False
    return pipeline_groups.pipeline(kernel, program, cut), True


def _allocated_point(one: Kernel, base, target, name: str, size: int, share: float, price_muxes: bool,
                     pinned: dict | None = None, cut: int | None = None, pool_by_lane: bool = False):
    """``per_stage_point``'s allocation with or without the multiplexers priced: the budget it aims at raised
    while the full plan leaves room (``FULL_ENOUGH``), bisected once a plan is over, then a few aims below the
    largest that fits (``AIMS_BELOW``: the greedy's outcome is erratic in its aim); the fastest that fits is kept.
    ``cut``: each allocation's groups then pipelined there; ``pool_by_lane``: ``allocate.allocate``'s."""
    program, aim, got, best = main_program(one), share, (None, None, None), None
    fits, over = 0.0, None  # the largest aim whose plan fits, the smallest whose plan is over
    label = f"per stage, {share:.0%}" + (f", groups of {size}" if size > 1 else "")

    def run(aim):
        k = copy.deepcopy(one)
        allocate.allocate(k, target, base.plan, aim, program, price_muxes, pinned,  # (the kernel keeps its lanes)
                          pool_by_lane)
        k, pipelined = pipelined_if_allowed(k, program, cut)
        return _measure_allocated(k, target, name, label + (", pipelined" if pipelined else ""))

    def faster(got, best):
        return got[0] is not None and got[0].load <= share and (
            best is None or got[0].model_steps_per_s > best[0].model_steps_per_s)

    for _ in range(PLAN_RETRIES):
        before, got = got, run(aim)
        if got[0] is None:
            break
        if got[0].load <= share:
            best = got if faster(got, best) else best
            fits = aim
            if over is None:  # nothing larger refused yet: aim higher while the plan leaves room (the greedy's
                # sums over-predict it) and a higher aim still buys lanes
                if got[0].load >= share * FULL_ENOUGH or (before[0] and got[0].load <= before[0].load):
                    break
                aim *= share / got[0].load
                continue
        else:
            over = aim
        aim = (fits + over) / 2 if fits else aim * share / got[0].load * RETRY_MARGIN
    for below in AIMS_BELOW if fits else ():
        again = run(fits * below)
        best = again if faster(again, best) else best
    return best or got


def _measure_allocated(k: Kernel, target, name: str, allocation: str):
    """``measure`` of a kernel with lanes per stage (its most lanes and model lanes as the point's)."""
    program = main_program(k)
    most = max(st.total_lanes for st in k.programs[program].stages)
    return measure(k, target, name, max(st.model_lanes for st in k.stages()), most, allocation=allocation)


def group_sizes(kernel: Kernel, model_lanes) -> list[int]:
    """The group sizes (models side by side) the per-stage allocation tries: every divisor of the model count
    for ``"auto"``, else the one ``model_lanes`` makes (rounded down to a divisor, as ``tile.assign_model_lanes``
    rounds it)."""
    n = model_groups.model_count(kernel)
    return tile.divisors(n) if model_lanes == "auto" else [tile.lane_count(n, model_lanes)]


def per_stage_points(kernel: Kernel, target, name: str, progress=None, model_lanes="auto"):
    """Per-stage allocations at ``AUTO_BUDGET`` for each group size (``group_sizes``: every divisor of the model
    count, or the one ``model_lanes`` asks for), then at ``PER_STAGE_BUDGETS`` for the best group size:
    ``[(DesignPoint, kernel, schedule)]``."""
    out = []
    for size in group_sizes(kernel, model_lanes):
        if progress:
            progress(f"explore: lanes per stage, groups of {size} model{'s' if size > 1 else ''}")
        got = per_stage_point(kernel, target, name, size, AUTO_BUDGET)
        if got[0] is not None:
            out.append(got)
    fitting = [g for g in out if g[0].fits]
    if fitting:
        best = max(fitting, key=lambda g: g[0].model_steps_per_s)
        size = model_groups.group_size(best[1])
        if progress:
            progress("explore: the fastest point refined on the exact schedule")
        label = best[0].allocation + ", refined"
        got = refine.refine(best, main_program(best[1]), target, AUTO_BUDGET,
                            lambda k: _measure_allocated(k, target, name, label))
        if got is not best:
            out.append(got)
        for share in PER_STAGE_BUDGETS:
            got = per_stage_point(kernel, target, name, size, share)
            if got[0] is not None:
                out.append(got)
    return out


def explore(kernel: Kernel, target, lanes="auto", model_lanes="auto", name: str = "kernel", progress=None):
    """Evaluate every candidate point; mark the Pareto front and the fastest point that fits.
    Returns ``(Exploration, tiled kernel of the chosen point, its schedule)`` (None, None without one)."""
    result = Exploration(target.name, target.clock_mhz, AUTO_BUDGET)
    best = (None, None, None)
    todo = candidates(kernel, lanes, model_lanes)
    too_big: list[tuple[int, int]] = []  # over the LUT, FF or DSP: every point with more of both lanes is too
    for i, (m, ln) in enumerate(todo):
        if any(m >= m0 and ln >= l0 for m0, l0 in too_big):
            result.skipped.append((m, ln))
            continue
        point, k, sched = evaluate(kernel, target, m, ln, name)
        if progress:
            progress(f"explore {i + 1}/{len(todo)}: {m} model lanes x {ln} lanes"
                     + (f": {point.model_steps_per_s:,.0f} model-steps/s, {point.load:.0%} of the allowance"
                        if point else ": does not map"))
        if point is None:
            continue
        result.points.append(point)
        shares = point.resources.shares(target)
        if max(shares["lut"], shares["ff"], shares["dsp"]) > 1.0:
            too_big.append((m, ln))  # (not for block RAM: more banks may move small ones into LUT-RAM)
        if point.fits and (best[0] is None or point.model_steps_per_s > best[0].model_steps_per_s):
            best = (point, k, sched)
    if lanes == "auto":
        if progress:
            progress("explore: lanes per stage (greedy on the calibrated model)")
        for point, k, sched in per_stage_points(kernel, target, name, progress, model_lanes):
            result.points.append(point)
            if point.fits and (best[0] is None or point.model_steps_per_s > best[0].model_steps_per_s):
                best = (point, k, sched)
    _mark_pareto(result.points)
    if best[0] is not None:
        best[0].chosen = True
    return result, best[1], best[2]


def _mark_pareto(points: list[DesignPoint]) -> None:
    """A point is on the front when no other is at least as fast with at most its load (the largest share of a
    resource's allowance), and better in one of the two."""
    for p in points:
        p.pareto = not any(q.model_steps_per_s >= p.model_steps_per_s and q.load <= p.load
                           and (q.model_steps_per_s, q.load) != (p.model_steps_per_s, p.load) for q in points)
