"""Scheduling for the RTL backend: loop nests -> phases on shared counters, banked memories.

A kernel command (``load_params``, ``read_params``, ``infer``, ``train_step``) runs as a
sequence of **phases** under one controller FSM:

- ``unpack``: one input word (or a packed unit of two) per cycle from the host stream into a buffer (row-major);
- ``stage``: one stage of the program, one loop-body issue per cycle (``lanes`` outputs at once);
- ``pack``: one word per cycle from a buffer to the host stream;
- ``nop``: a single idle cycle for a command that moves nothing.

Every phase is a loop nest over the controller's shared counters ``c0, c1, ...`` (outermost
first). A stage's nest is its kept loops, then its reduced loops (the emulator's accumulation
order); the lane loop counts its base in steps of ``lanes``. Each memory request of a phase
is a ``Port``: a buffer, an affine index over the counters, and the cycle offset (``tap``) from
issue at which it happens. Reads are issued at tap 0 (their data reaches the datapath at
``OPERAND_TAP``); a phase's writes
happen ``write_delay`` cycles after issue, when the datapath's pipeline delivers them. The next
stage phase's setup comes as soon as nothing forbids it (``overlap.py``: the order of every buffer
element's reads and writes, one write per bank and cycle), so it issues while the phase before
drains; issue windows of one stream never overlap (its counters are shared). Elementwise and reduction
phases that share no memory with the main phases beside them run on a second issue stream
(``streams.py``), whose model then gives a command's cycles; with one stream:

    cycles(phase) = 1 + iterations + write_delay,    advance(phase) = 1 + iterations + drain,
    cycles(command) = 1 + sum over its phases of advance

with ``drain`` between 0 and the write delay (more for a phase that waits for every write in flight:
a command's last, a model group's last stage, transfers). A phase's 1 is its setup cycle, in which
the controller loads the phase's loop limits; the command's 1 is the cycle in which the idle FSM
accepts the command. Every request is pipelined
(``ADDR_TAP``, ``RAM_TAP``, ``OPERAND_TAP`` below) so that no register-to-register path holds
more than one adder, multiplier or RAM access. These are exact: the Verilator
model of the generated RTL measures the same numbers.

A guarded read (``ir.Guard``: padding, transposed convolutions) and every lane past the end of a
loop in its last, partial lane group carry a ``guard`` over the counters: where it fails there is
no request (no RAM port is taken, the datapath sees 0, or skips the point of a max/argmax).

Buffers whose dims are indexed by a lane variable are split cyclically into banks (the lane
count, or the least common multiple of the lane counts of the stages using that dim), one RAM
per bank, so the lanes read and write in the same cycle. Every request of every phase is
enumerated here to check its indices are in range and that no two requests of one cycle need
different words of the same bank; a kernel that would need that is refused with a clear error.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from fx2fpga_runtime import interface, stochastic
from fx2fpga_runtime.ir import GROUP_VAR, Affine, Guard, Kernel, Stage, stage_lag
from fx2fpga_runtime.ops import OPS_TABLE

from ..backends import drains
from ..backends.common import buffer_banking
from ..errors import Fx2fpgaError
from . import overlap, placement, streams
from .overlap import Requests

SETUP_CYCLES = 1  # a phase's first cycle loads its loop limits into the controller; no issue
# A request's pipeline, in cycles after its issue (every stage ends in a register, so no path
# crosses more than one adder, multiplier or RAM access: the Fmax of docs/ecp5.md):
ADDR_TAP = 1  # the request's address, bank and guard
RAM_TAP = 2  # each bank's read (write) port: the address multiplexed over the requests
OPERAND_TAP = 5  # RAM data (3) -> its copy in fabric (4) -> the bank select: the unit's operands
# a datapath unit's latency, from its operands to its registered result (templates/rtl/unit.sv.j2),
# is the op table's ``unit_latency`` (fx2fpga_runtime/ops.py): mac 8 (guarded operands -> shared
# multiplier (5) -> accumulator -> converted result), mul 7, sum/max/argmax 4 (operands -> term ->
# accumulator -> converted result), table 12 (operand -> clip -> (index, t) -> ROM -> its copy ->
# difference -> product (4) -> sum -> converted), every other op 3 (operands -> exact result ->
# converted result). A multiply's operands go to the kernel's shared multiplier of their lane
# (operands ORed over the stages -> partial products -> product: backends/rtl/emit.py
# `multiplier_pool`; the block has a register of its own on each side, so nothing else shares its paths).
WRITE_STAGE = 1  # the write-data multiplexer's register, in step with the write port
UNPACK_DELAY = RAM_TAP  # the input word waits for its registered write address
PACK_DELAY = OPERAND_TAP + 1  # the word read at issue leaves on the output stream (a register)


def unit_latency(op: str) -> int:
    """Cycles from a stage's operands to its unit's registered result."""
    return OPS_TABLE[op].unit_latency


def write_delay(op: str) -> int:
    """Cycles from a stage's issue to its write: the read pipeline, the unit, the write-data register."""
    return OPERAND_TAP + unit_latency(op) + WRITE_STAGE


class ScheduleError(Fx2fpgaError, ValueError):
    """A kernel the RTL scheduler cannot map to hardware; the message says what to change."""


def bits(n: int) -> int:
    """Bits of an unsigned number ``n`` (at least 1)."""
    return max(1, int(n).bit_length())


@dataclass(frozen=True)
class Counter:
    """One loop of a phase on shared counter ``c<k>``, which counts 0 .. count-1.

    A lane loop (``step`` = lanes) counts lane groups: its variable is ``step * c<k> + lane``.
    """

    var: str
    extent: int
    step: int = 1

    @property
    def count(self) -> int:
        return -(-self.extent // self.step)  # a last, partial lane group when lanes do not divide


@dataclass
class Memory:
    """A buffer as banked RAMs: dim ``d`` split cyclically into ``factors[d]`` banks."""

    buffer: str
    shape: tuple[int, ...]
    width: int
    signed: bool
    factors: tuple[int, ...]
    read_only: bool
    init: tuple[int, ...] | None

    @property
    def banks(self) -> int:
        return math.prod(self.factors)

    @property
    def bank_shape(self) -> tuple[int, ...]:
        return tuple(-(-s // f) for s, f in zip(self.shape, self.factors, strict=True))

    @property
    def depth(self) -> int:
        return math.prod(self.bank_shape)

    @property
    def addr_bits(self) -> int:
        return bits(self.depth - 1)

    @property
    def bank_bits(self) -> int:
        return bits(self.banks - 1)

    def locate(self, index: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(bank, address) arrays of element indices (one array per dim)."""
        bank = np.zeros_like(index[0]) if index else np.zeros(1, dtype=np.int64)
        addr = bank.copy()
        for idx, f, rows in zip(index, self.factors, self.bank_shape, strict=True):
            bank = bank * f + idx % f
            addr = addr * rows + idx // f
        return bank, addr

    def bank_init(self) -> list[list[int]]:
        """Raw init values of each bank in address order (zeros past the buffer's end)."""
        out = [[0] * self.depth for _ in range(self.banks)]
        if self.init is None:
            return out
        grids = np.meshgrid(*[np.arange(s) for s in self.shape], indexing="ij")
        bank, addr = self.locate([g.reshape(-1) for g in grids])
        for b, a, v in zip(bank.tolist(), addr.tolist(), self.init, strict=True):
            out[b][a] = int(v)
        return out


@dataclass
class Port:
    """One memory request of a phase: ``buffer[index]`` at ``tap`` cycles after issue."""

    buffer: str
    index: tuple[Affine, ...]  # over the counters c0, c1, ... of the phase
    tap: int
    lane: int = 0
    operand: int = 0  # reads: which stage input (pack: 0); writes: 0
    last_only: bool = False  # writes of a reduction: only at its last point
    guard: tuple[Guard, ...] = ()  # over the counters: the request happens only where all hold (ir.Guard)
    banks: tuple[int, ...] = ()  # the banks it can hit (filled by the enumeration)
    dim_bits: tuple[int, ...] = ()  # per index: bits of its largest value before div/mod (enumerated)
    served: tuple[int, ...] = (0,)  # reads: the lanes whose operand this request's data is
    point: Affine | None = None  # writes of a stage rounding SR: the lane's point over the counters (stochastic.py)
    field: int | None = None  # writes of the input stream: the word's field written (unpack: its lane)


@dataclass
class Phase:
    """One step of a command: a loop nest with its memory requests (see the module doc)."""

    name: str
    kind: str  # unpack | stage | pack | nop
    counters: tuple[Counter, ...]
    write_delay: int
    reads: list[Port] = field(default_factory=list)
    writes: list[Port] = field(default_factory=list)
    reduce: tuple[int, ...] = ()  # counter positions of the reduced loops
    stage: Stage | None = None
    buffer: str | None = None  # unpack / pack: the buffer moved
    lanes: int = 1
    groups: int = 1  # model groups: the phase runs once per pass (a group's), the group counter c<group_counter> fixed
    group_counter: int | None = None
    # pipelined groups (passes/pipeline_groups.py): the passes the phase lags (its group: the pass less this, its
    # GROUP_VAR the counter after the group counter for a lag of 1); None for a program not pipelined
    lag: int | None = None
    drain: int | None = None  # cycles from its last issue to the next phase's setup (overlap.py; None: write_delay)
    # a stage fused with an unpack (``fuse_input_stream``): its operands taken from the input word as it arrives,
    # (operand, lanes served, word field); its issues wait for the stream's words as an unpack's do
    streamed: tuple[tuple[int, tuple[int, ...], int], ...] = ()
    in_words: int = 1  # an unpack (or a stage fused with one): the input words an issue takes (a packed unit's)
    stream: int = 0  # the controller's issue stream: 0 the main one, 1 the side stream (streams.py)
    wait: int | None = None  # the phase (index in its command) of the other stream whose done flag it waits for
    barrier: bool = False  # its setup waits for every write in flight (a main phase whose wait may stall it)
    side_rank: int | None = None  # a side phase's place in the side stream's order (streams.py)
    # a pipelined phase in the pass where it has no group (``idle_in``): one issue (its writes off), then this many
    # cycles until every write in flight has landed (its command's largest write delay: a barrier); 0: it runs in full
    idle_drain: int = 0
    serial_init: bool = False  # a fused update reading its initial values in its lanes' slots (backends/drains.py)

    @property
    def iterations(self) -> int:
        return math.prod(c.count for c in self.counters)

    @property
    def late_writes(self) -> int:
        """How many cycles its last writes land after its first ones: a serialized drain's slots less one
        (backends/drains.py); 0 where every lane writes at once."""
        taps = [w.tap for w in self.writes if w.field is None]  # (not an input stream's words)
        return max(taps) - min(taps) if taps else 0

    @property
    def groupless_pass(self) -> int | None:
        """Pipelined groups: the pass in which the phase has no group (a lagging phase's first, a leading one's
        last; its writes are off there); None for a phase not pipelined."""
        if self.lag is None:
            return None
        return 0 if self.lag else self.groups - 1

    def idle_in(self, pass_: int) -> bool:
        """Whether the phase idles in this pass: its ``groupless_pass``, where a barrier after one issue is shorter
        than its issues and drain (``idle_drain`` set: ``streams._set_idle_drains``)."""
        return bool(self.idle_drain) and pass_ == self.groupless_pass

    def issues_in(self, pass_: int) -> int:
        """Its issues in a pass (``idle_in``: one)."""
        return 1 if self.idle_in(pass_) else self.iterations

    def drain_in(self, pass_: int) -> int:
        """``drain_cycles`` in a pass (``idle_in``: ``idle_drain``)."""
        return self.idle_drain if self.idle_in(pass_) else self.drain_cycles

    def advance_in(self, pass_: int) -> int:
        """``advance`` in a pass."""
        return SETUP_CYCLES + self.issues_in(pass_) + self.drain_in(pass_)

    def group_in(self, pass_: int) -> int:
        """The group whose indices the phase's requests take in a pass: the pass, less the lag of a pipelined
        phase (the nearest group in a pass where it has none: its writes are off there, its reads unused; lags are
        of one pass, so the last group is ``groups - 2``)."""
        if self.lag is None:
            return pass_
        return min(max(pass_ - self.lag, 0), self.groups - 2)

    @property
    def setup_cycles(self) -> int:
        """Cycles from its setup to its first issue when nothing stalls it."""
        return SETUP_CYCLES

    @property
    def cycles(self) -> int:
        """Its own span: the setup, the issues and the drain until its last write."""
        return SETUP_CYCLES + self.iterations + self.write_delay

    @property
    def drain_cycles(self) -> int:
        """Cycles after its last issue until the next phase's setup (or the command's end)."""
        return self.write_delay if self.drain is None else self.drain

    @property
    def advance(self) -> int:
        """Cycles from its setup to the next phase's setup: ``cycles`` less the drain the next phase overlaps
        (or more, when a phase before it is still writing at the end of the command)."""
        return SETUP_CYCLES + self.iterations + self.drain_cycles


@dataclass
class Schedule:
    """Phases of every command plus the memory layout; the RTL generator's input."""

    kernel: Kernel
    memories: dict[str, Memory]
    commands: dict[str, list[Phase]]  # command -> phases in order
    codes: dict[str, int]

    def phases(self) -> list[Phase]:
        return [p for phases in self.commands.values() for p in phases]

    def call_cycles(self, command: str) -> int:
        """Clock cycles of one call, from the cycle the command is accepted until idle again (a program of
        model groups runs its stage phases once per group; side-stream phases run beside the others:
        ``streams.command_cycles``)."""
        return streams.command_cycles(self.commands[command])

    def cycles(self) -> dict[str, int]:
        """Clock cycles of one call of each command (``call_cycles``)."""
        return {c: self.call_cycles(c) for c in self.commands}

    def counter_count(self) -> int:
        return max([len(p.counters) for p in self.phases()] + [1])

    def counter_bits(self) -> int:
        return bits(max([c.count - 1 for p in self.phases() for c in p.counters] + [0]))


def mac_utilization(phase: Phase) -> float:
    """Useful multiply-accumulates / (lanes x cycles) of a stage phase."""
    return phase.stage.iterations / (phase.lanes * phase.cycles) if phase.stage is not None else 0.0


# ----- building the phases ----------------------------------------------------------------------------

def _rebase(a: Affine, slots: dict[str, int], steps: dict[str, int], offsets: dict[str, int], drop=()) -> Affine:
    """``a`` over counters: each loop variable becomes ``c<k>``; a lane variable ``lanes*c<k> + lane``
    (``steps``: lanes per lane variable, ``offsets``: this lane's offset on each); ``GROUP_VAR`` the group
    counter (``slots[GROUP_VAR]``)."""
    terms, const = [], a.const
    for var, coeff in a.terms:
        if var in drop:
            continue
        if var in steps:
            const += coeff * offsets[var]
            coeff *= steps[var]
        terms.append((f"c{slots[var]}", coeff))
    return Affine(tuple(terms), const, a.div, a.mod)


def _rebase_guards(guards, slots, steps, offsets) -> tuple[Guard, ...]:
    return tuple(Guard(_rebase(g.expr, slots, steps, offsets), g.bound, g.step) for g in guards)


def streamed_operands(st: Stage) -> int:
    """How many of a stage's inputs are read at every loop point; a reduction's further input (its
    initial value) is read once, at the first point of the reduction."""
    spec = OPS_TABLE[st.op]
    return spec.arity if spec.reduction else len(st.ins)


def _stage_phase(st: Stage, kernel: Kernel, where: str, groups: int = 1, group_counter: int = 0,
                 pipelined: bool = False, drain_slots: tuple[int, ...] | None = None) -> Phase:
    """A stage's phase: its counters and each lane's requests (``drain_slots``: each lane's write a serialized drain's
    slot cycles after the stage's write delay, ``backends/drains.py``; None: every lane at the write delay)."""
    extents = {lp.var: lp.extent for lp in st.loops}
    if st.lanes > 1 and (st.lane_var not in extents or st.lane_var in st.reduce):
        raise ScheduleError(f"{where}: lanes={st.lanes} needs lane_var to be a loop that is not reduced")
    if st.outer_lanes > 1 and (st.outer_lane_var not in extents or st.outer_lane_var in st.reduce):
        raise ScheduleError(f"{where}: outer_lanes={st.outer_lanes} needs outer_lane_var to be a loop that is not "
                            f"reduced")
    steps = dict(st.lane_loops())  # lane variable -> its lanes (the model loop first)
    # lane L of the phase is one offset per lane variable, row-major: (model lane, outer lane, lane) -> L
    lane_offsets = [dict(zip(steps, combo, strict=True)) for combo in itertools.product(*map(range, steps.values()))]
    lanes = len(lane_offsets)
    order = [lp for lp in st.loops if lp.var not in st.reduce] + [lp for lp in st.loops if lp.var in st.reduce]
    counters = tuple(Counter(lp.var, lp.extent, steps.get(lp.var, 1)) for lp in order)
    slots = {c.var: k for k, c in enumerate(counters)}
    reduce = tuple(slots[v] for v in st.reduce)
    lag = stage_lag(st) if pipelined else None
    slots[GROUP_VAR] = group_counter + (lag or 0)
    delay = write_delay(st.op)
    drain_slots = drain_slots or (0,) * len(lane_offsets)
    phase = Phase(st.name, "stage", counters, delay + max(drain_slots), reduce=reduce, stage=st, lanes=lanes,
                  groups=groups, group_counter=group_counter if groups > 1 else None, lag=lag)
    operands = streamed_operands(st)
    own_init = drains.own_init(st) if max(drain_slots) else None
    phase.serial_init = own_init is not None
    at_point = _reduction_point(counters, reduce) if own_init is not None else None

    def lane_guard(offsets: dict[str, int]) -> tuple[Guard, ...]:
        """Lanes past a lane loop's end in its last, partial group: no request."""
        out = []
        for var, n in steps.items():
            k = slots[var]
            if n * (counters[k].count - 1) + offsets[var] >= extents[var]:
                out.append(Guard(Affine(((f"c{k}", n),), offsets[var]), extents[var]))
        return tuple(out)

    for o, acc in enumerate(st.ins):
        drop = st.reduce if o >= operands else ()  # a reduction's init is read at its first point
        used = {v for ix in (*acc.index, *(g.expr for g in acc.guard)) for v in ix.vars()}
        varying = [v for v in steps if v in used]  # a lane variable the read depends on: one request per lane
        ports: dict[tuple, Port] = {}
        for lane, offsets in enumerate(lane_offsets):
            key = tuple(offsets[v] for v in varying)
            if key in ports:
                ports[key].served += (lane,)  # the same word as an earlier lane's request: its data, shared
                continue
            mine = {v: (offsets[v] if v in varying else 0) for v in steps}
            index = tuple(_rebase(ix, slots, steps, mine, drop) for ix in acc.index)
            guard = _rebase_guards(acc.guard, slots, steps, mine) + lane_guard(mine)
            if acc is own_init:  # a fused update's initial value: read at the lane's slot, its output's bank free
                guard += (Guard(Affine(at_point.terms, -drain_slots[lane]), 1),)
            ports[key] = Port(acc.buffer, index, 0, lane, o, guard=guard, served=(lane,))
        phase.reads += ports.values()
    point = stochastic.point_affine(st) if stochastic.rounds_stochastic(st, kernel) else None
    for lane, offsets in enumerate(lane_offsets):
        index = tuple(_rebase(ix, slots, steps, offsets, st.reduce) for ix in st.out.index)
        phase.writes.append(Port(st.out.buffer, index, delay + drain_slots[lane], lane, 0, last_only=bool(st.reduce),
                                 guard=lane_guard(offsets), served=(lane,),
                                 point=None if point is None else _rebase(point, slots, steps, offsets)))
    return phase


def _reduction_point(counters: tuple[Counter, ...], reduce: tuple[int, ...]) -> Affine:
    """The point of a reduction over the phase's counters, row-major over its reduced ones (the last counters:
    its points issue one after another)."""
    terms, stride = [], 1
    for k in reversed(reduce):
        terms.append((f"c{k}", stride))
        stride *= counters[k].count
    return Affine(tuple(reversed(terms)), 0)


def _index_values(port: Port, grid: list[np.ndarray], n: int) -> list[np.ndarray]:
    """The element a request names at each of ``n`` issues, one array per index (after div/mod)."""
    return [_eval(a, grid, n, np.ones(n, dtype=bool))[0] for a in port.index]


def _stream_fields(unpack: Phase, stage: Phase) -> list[tuple[Port, int]] | None:
    """Each read of ``unpack``'s buffer by ``stage`` with the word field it reads at every issue, where ``stage``
    reads the buffer in the very order the stream brings it (one word per issue, every field read, no guard, one
    model group); else None."""
    reads = [p for p in stage.reads if p.buffer == unpack.buffer]
    if (not reads or stage.groups > 1 or stage.iterations != unpack.iterations or len(reads) != len(unpack.writes)
            or any(p.guard or p.operand >= streamed_operands(stage.stage) for p in reads)
            or any(w.guard for w in unpack.writes)):
        return None
    n = stage.iterations
    sg, ug = _grid(stage), _grid(unpack)
    fields = {w.field: _index_values(w, ug, n) for w in unpack.writes}
    out: list[tuple[Port, int]] = []
    for p in reads:
        mine = _index_values(p, sg, n)
        field = next((f for f, v in fields.items() if all(np.array_equal(a, b) for a, b in zip(mine, v, strict=True))),
                     None)
        if field is None or field in [f for _, f in out]:
            return None
        out.append((p, field))
    return out


def fuse_input_stream(phases: list[Phase]) -> list[Phase]:
    """A command's phases with its first stage fused with an unpack whose buffer it reads in the stream's order:
    the stage takes those operands from the input word as it arrives (``Phase.streamed``) and writes the word to
    the buffer as the unpack did (for the stages after it), so the batch's transfer and the first stage overlap.
    The fused phase takes the unpack's place; unpacks after it follow it (the stage reads none of them), the
    stream's word order unchanged. Unchanged where no unpack fits (``_stream_fields``)."""
    stage = next((p for p in phases if p.kind == "stage"), None)
    unpacks = [p for p in phases if p.kind == "unpack"]
    if stage is None or phases[len(unpacks)] is not stage or stage.serial_init:  # (its issues must not stall)
        return phases
    for k, unpack in enumerate(unpacks):
        later = {u.buffer for u in unpacks[k + 1:]}
        got = _stream_fields(unpack, stage)
        if got is None or any(p.buffer in later for p in stage.reads):
            continue
        writes = [Port(unpack.buffer, p.index, UNPACK_DELAY, field, field=field) for p, field in got]
        fused = Phase(stage.name, "stage", stage.counters, stage.write_delay,
                      reads=[p for p in stage.reads if p.buffer != unpack.buffer], writes=writes + stage.writes,
                      reduce=stage.reduce, stage=stage.stage, lanes=stage.lanes,
                      streamed=tuple((p.operand, p.served, field) for p, field in got), in_words=unpack.in_words)
        return unpacks[:k] + [fused] + unpacks[k + 1:] + phases[len(unpacks) + 1:]
    return phases


def word_packing(kernel: Kernel, banking: dict) -> dict[str, list[int]]:
    """``{buffer: [dim, values per word]}``: each program input that several values fit in one packed unit (up
    to two interface words: the RTL's bus beat) and one of whose dims is split into banks takes that many values
    per unit along that dim (as many as fit, dividing the dim and its banks: they land in different banks, one
    cycle per unit; see ``interface.py``). The dim allowing the most, the outermost of equals."""
    out = {}
    for name in sorted({b for p in kernel.programs.values() for b in p.inputs} - set(kernel.params)):
        buf = kernel.buffers[name]
        fit = interface.MAX_UNIT_BITS // buf.fmt.width if buf.fmt.width <= interface.MAX_PORT_WIDTH // 2 else 0
        best = [0, 1]
        for d, (n, banks) in enumerate(zip(buf.shape, banking[name].factors, strict=True)):
            per_word = max(k for k in range(1, fit + 1) if banks % k == 0 and n % k == 0) if fit else 1
            if per_word > best[1]:
                best = [d, per_word]
        if best[1] > 1:
            out[name] = best
    return out


def _transfer_phase(kernel: Kernel, name: str, kind: str) -> Phase:
    buf = kernel.buffers[name]
    if kind == "unpack":
        dim, per_word = interface.word_packing(kernel).get(name, (0, 1))
        counters = tuple(Counter(f"d{d}", n, per_word if d == dim else 1) for d, n in enumerate(buf.shape))
        writes = [Port(name, tuple(Affine(((f"c{d}", per_word),), lane) if d == dim else Affine.var(f"c{d}")
                                   for d in range(len(buf.shape))), UNPACK_DELAY, lane, field=lane)
                  for lane in range(per_word)]  # lane l: field l of the word
        return Phase(f"unpack_{name}", kind, counters, UNPACK_DELAY, writes=writes, buffer=name, lanes=per_word,
                     in_words=interface.unit_words(kernel, name))
    counters = tuple(Counter(f"d{d}", n) for d, n in enumerate(buf.shape))
    index = tuple(Affine.var(f"c{d}") for d in range(len(buf.shape)))
    return Phase(f"pack_{name}", kind, counters, PACK_DELAY, reads=[Port(name, index, 0)], buffer=name)


# ----- enumeration: ranges, banks, conflicts ---------------------------------------------------------------

def _issue_grid(phase: Phase, issues: np.ndarray, group: int) -> list[np.ndarray]:
    """The counters' values at the given issues (indices in issue order) of one model group's pass."""
    counts = [c.count for c in phase.counters]
    grid = [v.astype(np.int64) for v in np.unravel_index(issues, counts)] if counts else []
    if phase.group_counter is not None:
        grid += [np.zeros(len(issues), dtype=np.int64)] * (phase.group_counter - len(grid))
        # (a lagging phase's group is the counter after the group counter, as in the controller)
        values = [group, phase.group_in(group)] if phase.lag else [phase.group_in(group)]
        grid += [np.full(len(issues), v, dtype=np.int64) for v in values]
    return grid


def _grid(phase: Phase) -> list[np.ndarray]:
    """The counters' values at every issue of the phase, one group's pass after another (the group counter at its
    index)."""
    passes = [_issue_grid(phase, np.arange(phase.iterations), g) for g in range(phase.groups)]
    return [np.concatenate(axis) for axis in zip(*passes, strict=True)]


def _last_points(phase: Phase, grid: list[np.ndarray], n: int) -> np.ndarray:
    """Where every reduced loop is at its last point (a reduction's write), over the grid's ``n`` issues."""
    last = np.ones(n, dtype=bool)
    for k in phase.reduce:
        last &= grid[k] == phase.counters[k].count - 1
    return last


def _affine_values(a: Affine, grid: list[np.ndarray], n: int) -> np.ndarray:
    """``sum(coeff * c<k>) + const`` over the phase's iterations (before div/mod)."""
    v = np.full(n, a.const, dtype=np.int64)
    for var, coeff in a.terms:
        v = v + coeff * grid[int(var[1:])]
    return v


def guard_mask(guards: tuple[Guard, ...], grid: list[np.ndarray], n: int) -> np.ndarray:
    """Where every guard holds, over the phase's iterations."""
    mask = np.ones(n, dtype=bool)
    for g in guards:
        e = _affine_values(g.expr, grid, n)
        mask &= (e >= 0) & (e < g.bound) & (e % g.step == 0)
    return mask


def _eval(a: Affine, grid: list[np.ndarray], n: int, mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Values of an index where ``mask`` holds, and the largest value before div/mod."""
    v = _affine_values(a, grid, n)[mask]
    top = int(v.max()) if v.size else 0
    if a.div != 1:
        if v.size and v.min() < 0:
            raise ScheduleError(f"index {a.c_expr()} is negative before '/'")
        v = v // a.div
    if a.mod:
        if v.size and v.min() < 0:
            raise ScheduleError(f"index {a.c_expr()} is negative before '%'")
        v = v % a.mod
    return v, top


def _check_ports(phase: Phase, memories: dict[str, Memory], where: str) -> None:
    """Check every port's indices against its buffer's shape, set its banks and index widths, and
    reject two ports of one phase that need different words of one bank in the same cycle."""
    grid = _grid(phase)
    n = len(grid[0]) if grid else phase.iterations
    located = {id(port): _locate_port(port, memories[port.buffer], grid, n, where)
               for port in phase.reads + phase.writes}
    _check_bank_clashes(phase, located, grid, n, where)


def request_locations(port: Port, mem: Memory, grid, n: int, where: str):
    """(bank, address) of ``port`` at each of the ``n`` issues of ``grid`` (-1: no request then), and each
    index's width in bits (of its largest value before div/mod)."""
    if len(port.index) != len(mem.shape):
        raise ScheduleError(f"{where}: {port.buffer} has shape {mem.shape}, indexed with {len(port.index)} indices")
    mask = guard_mask(port.guard, grid, n)
    idx, widths = [], []
    for d, a in enumerate(port.index):
        v, top = _eval(a, grid, n, mask)
        widths.append(bits(top) if a.div != 1 or a.mod else bits(int(v.max()) if v.size else 0))
        if v.size and (v.min() < 0 or v.max() >= mem.shape[d]):
            raise ScheduleError(f"{where}: index {d} of {port.buffer} spans {v.min()}..{v.max()}, "
                                f"outside 0..{mem.shape[d] - 1}")
        idx.append(v)
    m = int(mask.sum())
    bank, addr = mem.locate(idx) if idx else (np.zeros(m, dtype=np.int64), np.zeros(m, dtype=np.int64))
    full_bank, full_addr = np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
    full_bank[mask], full_addr[mask] = bank, addr  # -1: no request at that iteration
    return full_bank, full_addr, tuple(widths)


def _locate_port(port: Port, mem: Memory, grid, n: int, where: str):
    """``request_locations`` of every issue of the phase; sets ``port.banks`` and ``port.dim_bits``."""
    full_bank, full_addr, widths = request_locations(port, mem, grid, n, where)
    requested = full_bank[full_bank >= 0]
    port.banks = tuple(int(b) for b in np.unique(requested)) or (0,)  # (0,): a request that never happens
    port.dim_bits = widths
    return full_bank, full_addr


def phase_requests(phase: Phase, memories: dict[str, Memory], issues: np.ndarray) -> Requests:
    """Every request of the given issues of ``phase`` in every model group (``overlap.Requests``: times after the
    phase's setup; a reduction's write only at its last point; guarded-off requests left out)."""
    reads: dict[str, list] = {}
    writes: dict[str, list] = {}
    n = len(issues)
    for group in range(phase.groups):
        grid = _issue_grid(phase, issues, group)
        last = _last_points(phase, grid, n)
        for port, is_write in [(p, False) for p in phase.reads] + [(p, True) for p in phase.writes]:
            mem = memories[port.buffer]
            bank, addr, _ = request_locations(port, mem, grid, n, phase.name)
            hit = (bank >= 0) & (last if is_write and port.last_only else True)
            bank = group * mem.banks + bank[hit]
            key, time = bank * mem.depth + addr[hit], SETUP_CYCLES + issues[hit] + (port.tap if is_write else RAM_TAP)
            if is_write:
                writes.setdefault(port.buffer, []).append((key, time, bank))
            else:
                reads.setdefault(port.buffer, []).append((key, time))
    return Requests({b: _joined(v) for b, v in reads.items()}, {b: _joined(v) for b, v in writes.items()})


def _joined(parts: list[tuple]) -> tuple:
    return tuple(np.concatenate(a) for a in zip(*parts, strict=True))


def _check_bank_clashes(phase: Phase, located: dict, grid, n: int, where: str) -> None:
    """Raise when two reads (or two writes) of one buffer need different words of one bank in the same cycle."""
    last = _last_points(phase, grid, n)
    for kind, ports in (("reads", phase.reads), ("writes", phase.writes)):
        for i, p in enumerate(ports):
            for q in ports[i + 1:]:
                if p.buffer != q.buffer:
                    continue
                (b1, a1), (b2, a2) = located[id(p)], located[id(q)]
                if kind == "writes" and p.tap != q.tap:
                    continue  # a serialized drain's slots: other cycles (backends/drains.py)
                clash = (b1 == b2) & (b1 >= 0) & ((a1 != a2) if kind == "reads" else True)
                if kind == "writes" and p.last_only:
                    clash &= last
                if clash.any():
                    raise ScheduleError(
                        f"{where}: two {kind} of {p.buffer} (operands {p.operand} and {q.operand}, lanes {p.lane} "
                        f"and {q.lane}) need different words of one memory bank in the same cycle; each bank has "
                        "one read and one write port and buffers are banked cyclically by the lane count, so "
                        "such a stage needs lanes=1 and one access per buffer (copying the buffer is not "
                        "automatic yet)")


# ----- the pass -------------------------------------------------------------------------------------------

def _plan_drains(phases: list[Phase], memories: dict[str, Memory], cache: dict) -> None:
    """Each phase's drain for the streams as assigned, from ``overlap.plan`` on each stream's phases in the order it
    runs them (the side stream's ``delayable``: a wait may delay a side phase past its planned setup, streams.py).
    ``cache``: the requests of a phase's head or tail already enumerated (the same for every assignment tried)."""
    def requests(ph: Phase, issues: np.ndarray) -> Requests:
        key = (id(ph), int(issues[0]) if len(issues) else 0, len(issues))
        if key not in cache:
            cache[key] = phase_requests(ph, memories, issues)
        return cache[key]
    overlap.plan([ph for ph in phases if ph.stream == streams.MAIN], requests)
    side = sorted((ph for ph in phases if ph.stream == streams.SIDE), key=lambda ph: ph.side_rank)
    if side:
        overlap.plan(side, requests, delayable=True)


def run(kernel: Kernel, side: bool = True) -> Schedule:
    """The schedule of every command of ``kernel`` (raises ``ScheduleError`` when it cannot map); ``side=False``:
    every phase on the main stream (streams.py), one after another."""
    refusal = placement.rtl_refusal(kernel)
    if refusal:  # no load/store phases yet (docs/offchip.md)
        raise ScheduleError(refusal)
    banking = buffer_banking(kernel)  # the one rule the estimate and the HLS pragmas read too
    kernel.meta.pop("word_packing", None)
    packing = word_packing(kernel, banking)
    if packing:  # (a kernel without: kernel.json unchanged)
        kernel.meta["word_packing"] = packing
    codes = interface.commands_of(kernel)
    fewest = drains.fewest_points(kernel)  # (each reduction's drain slots: drains.slot_limit)
    # the group counter (model groups) follows the shared counters: as many as the longest loop nest
    group_counter = max([len(st.loops) for st in kernel.stages()] + [len(b.shape) for b in kernel.buffers.values()]
                        + [1])
    commands: dict[str, list[Phase]] = {}
    for cmd in sorted(codes, key=codes.get):
        ins, outs = interface.command_buffers(kernel, cmd)
        phases = [_transfer_phase(kernel, b, "unpack") for b in ins]
        if cmd in kernel.programs:
            prog = kernel.programs[cmd]
            pipelined = prog.passes > prog.groups
            for st in prog.stages:
                slots = drains.write_slots(st, kernel, banking[st.out.buffer].factors, fewest)
                phases.append(_stage_phase(st, kernel, f"stage {st.name!r} of {cmd}", prog.passes, group_counter,
                                           pipelined, slots))
        phases = fuse_input_stream(phases)
        phases += [_transfer_phase(kernel, b, "pack") for b in outs]
        commands[cmd] = phases or [Phase("nop", "nop", (), 0)]
    used = {p.buffer for ph in commands.values() for ph_ in ph for p in ph_.reads + ph_.writes}
    written = {p.buffer for ph in commands.values() for ph_ in ph for p in ph_.writes}
    memories = {}
    for name in kernel.buffers:
        if name not in used:
            continue
        buf = kernel.buffers[name]
        read_only = name not in written
        if buf.role == "const" and not read_only:
            raise ScheduleError(f"buffer {name} is a constant but a stage writes it")
        memories[name] = Memory(name, tuple(buf.shape), buf.fmt.width, buf.fmt.signed, banking[name].factors,
                                read_only, buf.init)
    for cmd, phases in commands.items():
        for ph in phases:
            try:
                _check_ports(ph, memories, f"{ph.kind} {ph.name!r} of {cmd}")
            except ScheduleError as e:
                e.stage = ph.stage  # the tile pass narrows a stage whose lanes clash
                raise
    free = streams.free_buffers(memories, commands)  # (each read's banks known: after every phase's check)
    for phases in commands.values():
        cache: dict = {}
        streams.assign(phases, kernel, lambda phases=phases, cache=cache: _plan_drains(phases, memories, cache),
                       free, side)
    return Schedule(kernel, memories, commands, codes)
