"""Lanes per stage under a resource budget: a greedy allocation on per-lane costs from the RTL model.

Uniform lane requests give every stage the same lanes, though a training step's cycles sit in a few
stages (the matmuls and the weight update) while a lane of any stage costs about the same logic. This
pass starts every stage at one lane (one model at a time) and repeatedly widens the stage that saves
the most cycles of the kernel's main program per unit of the budget it spends, to its next lane count
over models (``model_lanes``) or over its lane loop (``lanes``), while the predicted total stays
within the budget:

- a stage's cycles are the schedule's exact phase formula (``passes/schedule.py``);
- a lane's cost is its datapath unit's LUT/FF/DSP/BRAM per lane from the calibrated RTL model
  (``passes/resources.py``), read off the plan of the one-lane kernel, plus its memory requests'
  address and data registers; a multiplying stage wider than the shared multiplier pool also pays
  for the pool's new lanes, and a stage of the MAC engine (``emit.mac_engine``) wider than the
  engine for the engine's.

After the greedy, trades of lanes between two stages where they save cycles and fit (``_Allocation``), and the
other programs' twins of the stages take their lanes (``tile.mirror_twin_lanes``). The result is checked by a full
plan in ``passes/explore.py`` (memories, banks and the controller grow too): over the budget, the allocation is
redone with a proportionally smaller budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from fx2fpga_runtime.ir import MODEL_VAR, Kernel, Stage
from fx2fpga_runtime.ops import OPS_TABLE

from ..backends.common import buffer_banking
from . import resources, schedule, tile

RESOURCES = resources.RESOURCES
ALTERNATIVES = 4  # further choices of a stage tried when its next one does not fit


@dataclass
class LaneCost:
    """What one more lane of a stage adds: LUT, FF, DSP, BRAM36 (its unit's lane and its requests)."""

    lut: float
    ff: float
    dsp: float
    bram36: float


def stage_cycles(st: Stage, model_lanes: int, lanes: int, lane_var: str | None, outer_lanes: int = 1,
                 outer_lane_var: str | None = None) -> int:
    """Cycles of the stage's phase at those lanes: setup, one issue per lane group, the drain (exact but for a
    serialized drain's slots, ``backends/drains.py``: a few cycles, mostly overlapped by the next phase)."""
    steps = {MODEL_VAR: model_lanes, lane_var: lanes, outer_lane_var: outer_lanes}
    n = 1
    for lp in st.loops:
        n *= -(-lp.extent // steps.get(lp.var, 1))
    return schedule.SETUP_CYCLES + n + schedule.write_delay(st.op)


def lane_costs(plan, costs: dict) -> dict[str, LaneCost]:
    """Per stage name, the cost of one lane of its unit, from a plan's units (``resources`` features)."""
    lut, ff = costs["lut"], costs["ff"]
    out = {}
    for u in plan.units:
        adder = resources._unit_adder_bits(u)
        dsp, bram = 0.0, 0.0
        rom = resources.unit_rom(u)
        if rom is not None:  # a table's or a division's ROM and product
            adder += u["product"]["width"] * (len(u["product"]["parts"]) - 1)
            dsp = len(u["product"]["parts"])
            bram = rom[0].bram36
        elif u.get("own_product"):  # a side-stream product on its own multipliers (not the pool's)
            dsp = len(u["pool"]["product"]["parts"])
        reg = resources._unit_reg_bits(u)
        data_bits = sum(o["width"] for o in u["ops"]) + u["out_width"]
        logic = adder * lut["adder_bits"] + resources.unit_sr_bits(u) * lut["sr_bits"]
        for phase, st in resources.unit_stages(u):  # a stage running on another's unit is priced as if its own
            ports = [r for r in plan.spec["reads"] + plan.spec["writes"] if r["phase"] == phase]
            addr_bits = sum(sum(p["dim_bits"]) for p in ports)
            out[st.name] = LaneCost(
                lut=logic + addr_bits * lut["ctrl_bits"],
                ff=reg * ff["unit_reg_bits"] + data_bits * ff["mem_reg_bits"],
                dsp=dsp, bram36=bram)
    return out


@dataclass
class SharedLanes:
    """Lanes several stages share (the MAC engine): a stage wider than ``lanes`` pays ``cost`` for each new one."""

    cost: LaneCost
    stages: frozenset[str]
    lanes: int = 1

    def added(self, st: Stage, total: int) -> dict[str, float]:
        """The resources the new shared lanes of ``st`` at ``total`` lanes add."""
        grow = max(0, total - self.lanes) if st.name in self.stages else 0
        return {r: grow * getattr(self.cost, r) for r in RESOURCES}

    def take(self, st: Stage, total: int) -> None:
        """``st`` now has ``total`` lanes."""
        if st.name in self.stages:
            self.lanes = max(self.lanes, total)

    def state(self) -> int:
        return self.lanes

    def restore(self, state: int) -> None:
        self.lanes = state


@dataclass
class PoolLanes:
    """The shared multipliers (``emit.multiplier_pool``) priced lane by lane: lane ``l`` multiplies as wide as the
    widest operands of the pooled stages with more than ``l`` lanes (``emit._lane_plan``), so a lane only narrow
    stages reach takes fewer DSP blocks (24 x 16 bits: one DSP48E1; 24 x 24: two). With ``by_lane`` False every
    lane is priced at the widest stage's multiplier (an upper bound, the greedy's pricing but in the seeded
    allocation: priced so, the 30 MLPs' fc1 forward and weight update, 24 x 16 bits, cannot widen past the 64 lanes
    fc2's backward, 24 x 24, reaches)."""

    widths: dict[str, tuple[int, int]]  # pooled stage -> its (wider, narrower) operand bits
    parts: Callable[[int, int], list]  # (wa, wb) -> the DSP-sized partial products (emit.product_plan's parts)
    ff_per_bit: float
    by_lane: bool = True  # False: every lane at the widest stage's multiplier
    lanes: dict[str, int] = field(default_factory=dict)  # pooled stage -> its lanes now (1 where not given)

    _now: dict | None = field(default=None, init=False, repr=False, compare=False)  # ``cost(lanes)`` until they change

    def cost(self, lanes: dict[str, int]) -> dict[str, float]:
        """DSP blocks and registers (operands, partial products, product) of the pool for the stages at ``lanes``.
        Lanes ``[a, b)`` between two stages' lane counts are reached by the same stages, so each such run of lanes
        is priced once (the greedy prices every move: lane by lane, half the explorer's time in session 26)."""
        counts = {n: lanes.get(n, 1) for n in self.widths}
        dsp = ff = 0.0
        start = 0
        for end in sorted(set(counts.values())):
            ws = [w for n, w in self.widths.items() if counts[n] >= end or not self.by_lane]
            wa, wb = max(w[0] for w in ws), max(w[1] for w in ws)
            parts = self.parts(wa, wb)
            dsp += (end - start) * len(parts)
            ff += (end - start) * (2 * (wa + wb) + sum(p[2] for p in parts))
            start = end
        return {"lut": 0.0, "ff": ff * self.ff_per_bit, "dsp": dsp, "bram36": 0.0}

    def added(self, st: Stage, total: int) -> dict[str, float]:
        """What ``st`` at ``total`` lanes adds to the pool: lanes widened for it, and new ones."""
        if st.name not in self.widths:
            return dict.fromkeys(RESOURCES, 0.0)
        if self._now is None:
            self._now = self.cost(self.lanes)
        after = self.cost({**self.lanes, st.name: total})
        return {r: after[r] - self._now[r] for r in RESOURCES}

    def take(self, st: Stage, total: int) -> None:
        """``st`` now has ``total`` lanes."""
        if st.name in self.widths:
            self.lanes[st.name] = total
            self._now = None

    def state(self) -> dict[str, int]:
        return dict(self.lanes)

    def restore(self, state: dict[str, int]) -> None:
        self.lanes, self._now = dict(state), None


def engine_lane_cost(plan, costs: dict) -> LaneCost:
    """One more lane of the MAC engine (``resources.engine_features`` of the plan's engine, per lane)."""
    if plan.engine is None:
        return LaneCost(0, 0, 0, 0)
    f = resources.engine_features(plan.engine)
    lanes = plan.engine["lanes"]
    lut = sum(costs["lut"].get(k, 0.0) * f[k] for k in ("adder_bits", "cvt_bits", "select_bits")) / lanes
    return LaneCost(lut=lut, ff=costs["ff"].get("unit_reg_bits", 0.0) * f["unit_reg_bits"] / lanes, dsp=0, bram36=0)


def shared_lanes(plan, costs: dict, pool_by_lane: bool) -> list:
    """The multiplier pool (``PoolLanes``: the main stream's multiplying stages; ``pool_by_lane``: its lanes priced
    each at its own width) and the MAC engine (its users) of a one-lane plan."""
    from ..backends.rtl import emit  # (the backend imports the passes, not the reverse, at load)

    users = frozenset(st.name for u in plan.engine["users"] for _, st in resources.unit_stages(u)) if plan.engine \
        else frozenset()
    kind = plan.pool["dsp_kind"] if plan.pool else "DSP48E1"
    widths = {st.name: (u["ma_width"], u["mb_width"]) for u in (plan.pool["users"] if plan.pool else ())
              for _, st in resources.unit_stages(u)}
    pool = PoolLanes(widths, cache(lambda wa, wb: emit.product_plan(wa, wb, kind)["parts"]),
                     costs["ff"]["pool_reg_bits"], pool_by_lane)
    return [pool, SharedLanes(engine_lane_cost(plan, costs), users)]


# (model lanes, lanes, the loop the lanes run over: None for one lane, outer lanes, their loop: None for one)
Option = tuple[int, int, str | None, int, str | None]


def total(option: Option) -> int:
    """All the lanes of a choice."""
    return option[0] * option[1] * option[3]


def _options(st: Stage) -> list[Option]:
    """The stage's choices, fewest lanes in all first (model lanes: divisors of its group; lanes: divisors of any
    of its free loops, so that a stage may run its lanes over the dim its buffers are banked by already; on a
    multiplying stage also lanes over two of its free loops, where no dim of its accesses uses both, when it has
    no lanes over models: those are a second dim already)."""
    models = next((lp.extent for lp in st.loops if lp.var == MODEL_VAR), 1)
    free = tile.free_loops(st)
    lanes = {(1, None, 1, None)} | {(ln, lp.var, 1, None) for lp in free for ln in tile.divisors(lp.extent) if ln > 1}
    if OPS_TABLE[st.op].multiplies:
        for i, outer in enumerate(free):
            for inner in free[i + 1:]:
                if _separable(st, outer.var, inner.var):
                    lanes |= {(ln, inner.var, on, outer.var) for ln in tile.divisors(inner.extent)[1:]
                              for on in tile.divisors(outer.extent)[1:]}
    return sorted({(m, ln, var, on, ovar) for m in tile.divisors(models) for ln, var, on, ovar in lanes
                   if m == 1 or on == 1},  # lanes over models are a second dim already
                  key=lambda o: (total(o), -o[0], o[2] or "", -o[1], o[4] or ""))


def _same_lanes(a: Option, b: Option) -> bool:
    """Two choices with the same model lanes and the same lanes over the same loops (either as the outer)."""
    return a[0] == b[0] and {(a[1], a[2]), (a[3], a[4])} == {(b[1], b[2]), (b[3], b[4])}


def _separable(st: Stage, a: str, b: str) -> bool:
    """No index of the stage's accesses (guards included) uses both loop variables: lanes over both reach
    banks of separate dims."""
    for acc in (st.out, *st.ins):
        for ix in (*acc.index, *(g.expr for g in acc.guard)):
            if {a, b} <= set(ix.vars()):
                return False
    return True


def _banks_reached(st: Stage, acc, factors: tuple[int, ...]) -> int:
    """How many banks one lane's request of ``acc`` may reach over the stage's loop counters (1: a bank fixed by
    the lane, wired; more: a multiplexer the RTL registers). Per banked dim, the index modulo the dim's banks
    takes ``banks / gcd(banks, each counter's step)`` values (a lane variable's counter steps by its lanes; the
    group counter by its coefficient); an index under ``/`` or ``%`` may reach every bank of its dim. The
    schedule's enumeration (``schedule._locate_port``) is exact; this is its estimate for the allocation."""
    steps = dict(st.lane_loops())
    extents = {lp.var: lp.extent for lp in st.loops}
    n = 1
    for f, ix in zip(factors, acc.index, strict=True):
        if f == 1:
            continue
        if ix.div != 1 or ix.mod:
            n *= f
            continue
        g = f
        for var, coeff in ix.terms:
            step = steps.get(var, 1)
            if var in extents and -(-extents[var] // step) == 1:
                continue  # one lane group: the counter is 0
            g = math.gcd(g, coeff * step)
        n *= f // g
    return n


def _ports(st: Stage, acc) -> int:
    """Read or write requests of ``acc`` per issue: one per combination of the lane variables it uses."""
    used = {v for ix in acc.index for v in ix.vars()}
    return math.prod(n for var, n in st.lane_loops() if var in used)


class MemoryCost:
    """LUT, FF and BRAM36 of the kernel's memories as banked by its current lanes (``buffer_banking``), buffer by
    buffer: each bank where Yosys maps it (``resources.bank_mapping``; under "block", what its banks save in block
    RAM: ``resources.block_ram_candidate``), its read and write-data registers, its ports' registered addresses
    (the controller's, ``resources._ctrl_bits``), and
    the multiplexers between banks and lanes: a read request whose bank is known only at run time gets a
    registered multiplexer over the banks it reaches (``_banks_reached``), a bank written by several requests
    (the host's words included) a multiplexer over them (``rtl.emit``'s ``muxes`` and write ``sources``).
    ``after(stage)`` costs the buffers a stage touches again, so a move of one stage is priced without the
    whole kernel. ``muxes=False`` leaves the multiplexers out (the explorer runs the greedy both ways)."""

    def __init__(self, kernel: Kernel, costs: dict, muxes: bool = True):
        self.kernel, self.costs, self.muxes = kernel, costs, muxes
        self.accesses: dict[str, list] = {}  # buffer -> (stage, access, is a write)
        for st in kernel.stages():
            self.accesses.setdefault(st.out.buffer, []).append((st, st.out, True))
            for acc in st.ins:
                self.accesses.setdefault(acc.buffer, []).append((st, acc, False))
        self.written = {st.out.buffer for st in kernel.stages()}
        self.from_host = {b for p in kernel.programs.values() for b in p.inputs} | set(kernel.params)
        used = set(self.accesses) | self.from_host | {b for p in kernel.programs.values() for b in p.outputs}
        tables = {st.attrs[k] for st in kernel.stages() for k in ("table", "rom") if k in st.attrs}  # units' ROMs
        self.names = sorted(used - tables)
        self._known: dict[tuple, dict[str, float]] = {}  # (buffer, its stages' lane loops) -> its costs
        self.per_buffer = self._costs(self.names)

    def total(self) -> dict[str, float]:
        """The memories' resources in all."""
        return {r: sum(c[r] for c in self.per_buffer.values()) for r in RESOURCES}

    def after(self, st: Stage) -> dict[str, dict[str, float]]:
        """The costs of the buffers ``st`` touches, at the lanes it has now."""
        return self._costs(sorted({a.buffer for a in (st.out, *st.ins)} & set(self.per_buffer)))

    def _costs(self, names: list[str]) -> dict[str, dict[str, float]]:
        """The costs of buffers ``names`` at the lanes their stages have now (kept per buffer and those lanes: the
        greedy prices the same few layouts of a buffer over and over)."""
        keys = {name: tuple(st.lane_loops() for st, _, _ in self.accesses.get(name, ())) for name in names}
        missing = [name for name in names if (name, keys[name]) not in self._known]
        for name, cost in (self._priced(missing) if missing else {}).items():
            self._known[name, keys[name]] = cost
        return {name: self._known[name, keys[name]] for name in names}

    def _priced(self, names: list[str]) -> dict[str, dict[str, float]]:
        lut, ff = self.costs["lut"], self.costs["ff"]
        out = {}
        for name, spec in buffer_banking(self.kernel, names).items():
            buf = self.kernel.buffers[name]
            depth = math.prod(-(-s_ // f) for s_, f in zip(buf.shape, spec.factors, strict=True))
            read_only = name not in self.written and buf.role == "const"
            m = resources.bank_mapping(depth, buf.fmt.width, read_only)
            select, regs = self._mux_bits(name, spec) if self.muxes else (0.0, 0.0)
            # the banks' one read address (emit._share_read_addresses, as most memories), each bank's write address
            # (most memories share that one too, emit._share_write_addresses; priced as one in session 25, the greedy's
            # sums fell short of the full plan's, 85% aimed at -> 93% planned, and 30 MLPs got slower: 48,762 cycles
            # against 47,346, so the extra addresses stay as a margin)
            ports = (1 + (0 if read_only else spec.banks)) * schedule.bits(depth - 1)
            out[name] = {"bram36": spec.banks * m.bram36,
                         "lut": spec.banks * m.luts * lut["lutram_luts"] + select * lut["select_bits"]
                         + ports * lut["ctrl_bits"],
                         "ff": (spec.banks * buf.fmt.width * 2 + regs) * ff["mem_reg_bits"] + ports * ff["ctrl_bits"],
                         "dsp": 0.0,
                         "block": resources.block_ram_candidate(name, spec.banks, m, depth, buf.fmt.width, self.costs)}
        return out

    def _mux_bits(self, name: str, spec) -> tuple[float, float]:
        width = self.kernel.buffers[name].fmt.width
        select, regs, writers = 0.0, 0.0, spec.banks if name in self.from_host else 0
        for st, acc, write in self.accesses.get(name, ()):
            reached = _banks_reached(st, acc, spec.factors)
            if write:
                writers += _ports(st, acc) * reached
            elif reached > 1:
                select += _ports(st, acc) * width * (reached - 1)
                regs += _ports(st, acc) * width
        return select + width * max(0, writers - spec.banks), regs


def memory_cost(kernel: Kernel, costs: dict) -> dict[str, float]:
    """LUT, FF and BRAM36 of the kernel's memories as banked by its current lanes (``MemoryCost``)."""
    return MemoryCost(kernel, costs).total()


def weight_pair(kernel: Kernel, main: str) -> tuple[Stage, Stage] | None:
    """The multiply-accumulate stages of program ``main`` that read and that write its largest parameter written by
    one (a layer's forward and its weight update), or None."""
    mac = [st for st in kernel.programs[main].stages if OPS_TABLE[st.op].multiplies and OPS_TABLE[st.op].reduction]
    pairs = [(r, w) for p in sorted(kernel.params, key=lambda p: -math.prod(kernel.buffers[p].shape))
             for w in mac if w.out.buffer == p for r in mac if r is not w and any(a.buffer == p for a in r.ins)]
    return pairs[0] if pairs else None


def aligned_pair(kernel: Kernel, target, main: str, width: int) -> dict[str, Option] | None:
    """A seed for the allocation (``allocate``'s ``pinned``): the stages of program ``main`` that read and that write
    its largest parameter (``weight_pair``: a layer's forward and its weight update), each at ``width``
    lanes in all, over the loops that bank the parameter the cheapest (``MemoryCost``: its banks, multiplexers and
    addresses), which is where the two agree (the forward's lanes along a dim the update banks too). Each alone
    pays for the MAC engine's new lanes and saves only its own cycles, so the greedy does not widen them past the
    engine; and it prices each on the banking the other left, so it seldom gives them one layout (the 30 MLPs'
    fc1 forward at 32 out x 4 batch and its update at 4 in x 32 out, the weight banked 32 x 4: the explorer's
    39,408 cycles against the greedy's 42,926, session 26). None without such a pair or a choice of ``width`` lanes
    for both."""
    pair = weight_pair(kernel, main)
    if pair is None:
        return None
    read, write = pair
    name = write.out.buffer
    memory = MemoryCost(kernel, resources.load_costs())
    saved = [(st, st.model_lanes, st.lanes, st.lane_var, st.outer_lanes, st.outer_lane_var) for st in (read, write)]
    best = None
    for a in (o for o in _options(read) if total(o) == width and o[0] == 1):
        for b in (o for o in _options(write) if total(o) == width and o[0] == 1):
            tile.set_stage_lanes(read, *a)
            tile.set_stage_lanes(write, *b)
            cost = memory._costs([name])[name]
            share = cost["bram36"] / target.bram36 + cost["lut"] / target.lut
            best = (share, a, b) if best is None or share < best[0] else best
    for st, *lanes in saved:
        tile.set_stage_lanes(st, *lanes)
    return None if best is None else {read.name: best[1], write.name: best[2]}


def allocate(kernel: Kernel, target, plan_1x1, budget: float, main: str, price_muxes: bool = True,
             pinned: dict[str, Option] | None = None, pool_by_lane: bool = False) -> dict[str, Option]:
    """Give the stages of program ``main`` of the one-lane ``kernel`` (whose plan is ``plan_1x1``) their lanes:
    the greedy allocation within ``budget`` (a share of each resource's allowance on ``target``,
    ``resources.allowance``), then trades of lanes
    between stages (``_Allocation.trade_lanes``, ``_Allocation.widen_by_narrowing``); a stage of another program
    takes the lanes of its twin in ``main`` (``tile.mirror_twin_lanes``: a training kernel's ``infer``), others keep
    one lane; ``price_muxes``: count the multiplexers between banks and lanes in each move (``MemoryCost``);
    ``pinned``: stages given these lanes first, which nothing moves after (``tile.stream_lanes``).
    Returns the ``Option`` chosen per stage name of ``main``."""
    state = greedy(kernel, target, plan_1x1, budget, main, price_muxes, pinned, pool_by_lane)
    state.trade_lanes()
    state.widen_by_narrowing()
    tile.mirror_twin_lanes(kernel, main)
    return {n: state.options[n][state.choice[n]] for n in state.stages}


def greedy(kernel: Kernel, target, plan_1x1, budget: float, main: str, price_muxes: bool = True,
           pinned: dict[str, Option] | None = None, pool_by_lane: bool = False) -> _Allocation:
    """The greedy part of ``allocate``: the stages of ``kernel`` get its lanes (``pinned`` ones theirs, first, and
    no other choice after); the state it ends in."""
    costs = resources.load_costs()
    base = resources.rtl_resources(plan_1x1, target, block_ram=False)  # (``fits`` moves banks to block RAM)
    stages = {st.name: st for st in kernel.programs[main].stages}
    state = _Allocation(kernel, target, stages, options={n: _options(st) for n, st in stages.items()},
                        choice=dict.fromkeys(stages, 0), per_lane=lane_costs(plan_1x1, costs),
                        shared=shared_lanes(plan_1x1, costs, pool_by_lane),
                        memory=MemoryCost(kernel, costs, price_muxes), costs=costs,
                        used={"lut": base.lut, "ff": base.ff, "dsp": base.dsp, "bram36": base.bram36},
                        limit={r: budget * cap for r, cap in resources.allowance(target).items()})
    options, choice = state.options, state.choice
    frozen: set[str] = set()

    def moves(n, js):
        """(gain, resources added, memories after, choice) of moving stage ``n`` to each choice of ``js``."""
        return [_move(kernel, stages[n], options[n][choice[n]], options[n][j], state.per_lane[n], state.shared,
                      target, state.memory, costs) + (j,) for j in js]

    for n, want in (pinned or {}).items():
        j = next((k for k, o in enumerate(options[n]) if _same_lanes(o, want)), None)
        if j is None:  # not a choice of the stage's: not pinned
            continue
        _, delta, mem, _ = moves(n, [j])[0]
        state.apply(n, j, delta, mem)
        options[n], choice[n] = [options[n][j]], 0
    while True:
        best = None
        for n in stages:
            if n in frozen or choice[n] + 1 >= len(options[n]):
                continue
            for move in moves(n, _next(options[n], choice[n])):
                if move[0] > 0 and (best is None or move[0] > best[1][0]):
                    best = (n, move)
        if best is None:
            break
        n, (_, delta, mem, j) = best
        if not state.fits((delta, mem)):  # the best next choice does not fit: another, or a few further ones may (other
            ok = [a for a in moves(n, [k for k in state.larger(n) if k != j])  # banks), else freeze
                  if a[0] > 0 and state.fits((a[1], a[2]))]
            if not ok:
                frozen.add(n)
                continue
            _, delta, mem, j = max(ok, key=lambda a: a[0])
        state.apply(n, j, delta, mem)
    return state


SWAP_ROUNDS = 40  # trades of lanes between two stages tried after the greedy, at most
WIDEN_ROUNDS = 4  # one stage widened at the cost of several narrower ones, at most this many times
WIDEN_TRIED = 2  # ... trying the stages whose next choice saves the most cycles, this many per round


@dataclass
class _Allocation:
    """The greedy's outcome, for the trades after it: ``choice`` (index into ``options``) per stage, the predicted
    resources ``used`` (every bank where Yosys alone puts it; ``relieved``: with idle block RAM taking banks) against
    ``limit``, the memories' costs and the shared lanes as the greedy left them."""

    kernel: Kernel
    target: object
    stages: dict[str, Stage]
    options: dict[str, list[Option]]
    choice: dict[str, int]
    per_lane: dict[str, LaneCost]
    shared: list  # PoolLanes, SharedLanes
    memory: MemoryCost
    costs: dict
    used: dict[str, float]
    limit: dict[str, float]
    refused: set = field(default_factory=set)  # trades that did not fit once made (``trade_lanes``)

    def fits(self, *moves: tuple[dict[str, float], dict]) -> bool:
        """The predicted resources with the moves made (``relieved``) stay within the limit."""
        used = self.relieved(*moves)
        return all(used[r] <= self.limit[r] for r in RESOURCES)

    def relieved(self, *moves: tuple[dict[str, float], dict]) -> dict[str, float]:
        """The predicted resources with the moves made (each: the resources it adds, the costs of the buffers it
        touches after it), once idle block RAM has taken the LUT-RAM banks it relieves
        (``resources.balance_block_ram``, as the plan's ``assign_block_ram`` does)."""
        used = dict(self.used)
        buffers = dict(self.memory.per_buffer)
        for delta, mem in moves:
            for r in RESOURCES:
                used[r] += delta[r]  # (in this order, as each move would add it)
            buffers.update(mem)
        candidates = [c["block"] for c in buffers.values() if c["block"] is not None]
        return resources.balance_block_ram(used, candidates, self.target)[1]

    def trade_lanes(self) -> None:
        """Take lanes from one stage and give them to another where that saves cycles and fits. The greedy
        widens the best stage per budget share at each step and stops at the first move nothing fits, so where
        it lands depends on its path (docs/architecture.md); a trade undoes one of its earlier moves for a
        move it could not afford. Each round takes the trade that saves the most cycles; the shared
        multiplier pool and MAC engine keep their lanes (a narrower stage frees only its own). A trade that no
        longer fits once the wider stage is priced on the memories the narrower one left (they may share a buffer)
        is refused (``refused``) and the next best taken."""
        for _ in range(SWAP_ROUNDS):
            best = self.best_trade()
            if best is None:
                return
            if not self._apply_pair(best[1], best[2]):
                self.refused.add(_trade_key(best))

    def widen_by_narrowing(self) -> None:
        """Widen one stage to a next choice that does not fit, and narrow other stages, a step each, the fewest
        cycles lost per share of the over-budget resources freed first, until it fits; kept where the step
        takes fewer cycles in all. The greedy spends the budget on many small stages before a big stage's next
        step (a matmul's 32 -> 64 lanes), and a trade of one step for one step frees too little for it."""
        for _ in range(WIDEN_ROUNDS):
            before = self.cycles()
            ups = sorted((u for n in self.stages for u in self._moves(n, _next(self.options[n], self.choice[n]))
                          if u[1] < 0),
                         key=lambda u: (u[1], u[0]))[:WIDEN_TRIED]
            for up in ups:
                saved = self._snapshot()
                self.apply(up[0], up[4], up[2], up[3])
                while not self.fits() and self._narrow_one(up[0]):
                    pass
                if self.fits() and self.cycles() < before:
                    break
                self._restore(saved)
            else:
                return

    def _narrow_one(self, widened: str) -> bool:
        """Narrow one stage other than ``widened`` by a step: the step that loses the fewest cycles per share of
        the resources over the limit it frees. False when no step frees any."""
        over = [r for r, x in self.relieved().items() if r in self.limit and x > self.limit[r]]
        best = None
        for d in (d for n in self.stages if n != widened for d in self._moves(n, _previous(self.options[n],
                                                                                         self.choice[n]))):
            freed = sum(max(0.0, -d[2][r]) / getattr(self.target, r) for r in over)
            if freed > 0 and (best is None or d[1] / freed < best[0]):
                best = (d[1] / freed, d)
        if best is None:
            return False
        d = best[1]
        self.apply(d[0], d[4], d[2], d[3])
        return True

    def cycles(self) -> int:
        """The stages' exact cycles at their choices (what the allocation minimizes)."""
        return sum(stage_cycles(st, *self.options[n][self.choice[n]]) for n, st in self.stages.items())

    def _snapshot(self) -> tuple:
        return (dict(self.used), dict(self.memory.per_buffer), dict(self.choice), [sh.state() for sh in self.shared])

    def _restore(self, saved: tuple) -> None:
        self.used, self.memory.per_buffer, choice, lanes = dict(saved[0]), dict(saved[1]), saved[2], saved[3]
        for n, j in choice.items():
            if self.choice[n] != j:
                tile.set_stage_lanes(self.stages[n], *self.options[n][j])
        self.choice.update(choice)  # (in place: the greedy holds the dict)
        for sh, state in zip(self.shared, lanes, strict=True):
            sh.restore(state)

    def best_trade(self) -> tuple | None:
        """(cycles saved, the narrower stage's move, the wider one's) of the trade that saves the most and fits,
        each move one step of its stage's choices, not one ``refused``; None when none does."""
        best = None
        downs = [d for n in self.stages for d in self._moves(n, _previous(self.options[n], self.choice[n]))]
        ups = [u for n in self.stages for u in self._moves(n, self.larger(n))]
        for d in downs:
            for u in ups:
                net = -(u[1] + d[1])  # cycles: the up move's change is negative, the down move's positive
                if u[0] == d[0] or net <= 0 or (best is not None and net <= best[0]):
                    continue
                if _trade_key((net, d, u)) not in self.refused and self.fits((d[2], d[3]), (u[2], u[3])):
                    best = (net, d, u)
        return best

    def larger(self, n: str) -> list[int]:
        """The stage's next choices, and a few beyond (``ALTERNATIVES``)."""
        nxt = _next(self.options[n], self.choice[n])
        return nxt + list(range(nxt[-1] + 1, len(self.options[n])))[:ALTERNATIVES] if nxt else []

    def _moves(self, n: str, js: list[int]) -> list[tuple]:
        """(stage, cycles changed, resources added, memories after, choice) of each choice ``js`` of stage ``n``."""
        st, now = self.stages[n], self.options[n][self.choice[n]]
        out = []
        for j in js:
            to = self.options[n][j]
            _, delta, mem = _move(self.kernel, st, now, to, self.per_lane[n], self.shared, self.target,
                                  self.memory, self.costs)
            out.append((n, stage_cycles(st, *to) - stage_cycles(st, *now), delta, mem, j))
        return out

    def apply(self, n: str, j: int, delta: dict[str, float], mem: dict) -> None:
        """Move stage ``n`` to its choice ``j``, which adds ``delta`` and leaves its memories costing ``mem``."""
        self.used = {r: self.used[r] + delta[r] for r in RESOURCES}
        self.memory.per_buffer.update(mem)
        self.choice[n] = j
        tile.set_stage_lanes(self.stages[n], *self.options[n][j])
        for sh in self.shared:
            sh.take(self.stages[n], total(self.options[n][j]))

    def _apply_pair(self, down: tuple, up: tuple) -> bool:
        """Make the trade: the narrower stage first, then the wider one priced again on the memories as they
        are then (two stages may share a buffer); undone when it no longer fits or saves nothing."""
        saved = self._snapshot()
        self.apply(down[0], down[4], down[2], down[3])
        (again,) = self._moves(up[0], [up[4]])
        if again[1] + down[1] < 0 and self.fits((again[2], again[3])):
            self.apply(again[0], again[4], again[2], again[3])
            return True
        self._restore(saved)
        return False


def _trade_key(trade: tuple) -> tuple:
    """A trade of ``best_trade`` as (stage, choice) of its narrower and its wider move, from the choices now."""
    _, d, u = trade
    return d[0], d[4], u[0], u[4]


def _next(opts: list[Option], i: int) -> list[int]:
    """The choices with the next larger number of lanes in all (several share a total: models side by side, or
    lanes over another loop)."""
    now = total(opts[i])
    larger = [j for j in range(i + 1, len(opts)) if total(opts[j]) > now]
    return [j for j in larger if total(opts[j]) == total(opts[larger[0]])] if larger else []


def _previous(opts: list[Option], i: int) -> list[int]:
    """The choices with the next smaller number of lanes in all (any loop)."""
    now = total(opts[i])
    smaller = [j for j in range(i) if total(opts[j]) < now]
    return [j for j in smaller if total(opts[j]) == total(opts[smaller[-1]])] if smaller else []


def _move(kernel, st: Stage, now: Option, to: Option, cost: LaneCost, shared: list, target,
          memory: MemoryCost, costs):
    """(cycles saved per share of the budget spent, resources added, the costs of the buffers it touches after)
    of moving ``st`` from choice ``now`` to ``to`` (its memories re-banked: tried on the stage, then undone)."""
    saved = stage_cycles(st, *now) - stage_cycles(st, *to)
    extra = total(to) - total(now)
    delta = {r: extra * getattr(cost, r) for r in RESOURCES}
    for sh in shared:
        added = sh.added(st, total(to))
        delta = {r: delta[r] + added[r] for r in RESOURCES}
    tile.set_stage_lanes(st, *to)
    mem = memory.after(st)
    tile.set_stage_lanes(st, *now)
    delta = {r: delta[r] + sum(c[r] - memory.per_buffer[b][r] for b, c in mem.items()) for r in RESOURCES}
    spent = max(max(0.0, delta[r]) / getattr(target, r) for r in RESOURCES)
    return (saved / spent if spent > 0 else math.inf), delta, mem
