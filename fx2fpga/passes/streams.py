"""A second issue stream: stage phases that run beside the phases they share nothing with (``Phase.stream`` 1).

Until session 20 a command's phases issued one after another on one set of counters, so the ~20 short
elementwise and reduction phases of a training step (the softmax chain, the loss, the bias gradients) took
their cycles on top of the multiply-accumulates. The controller now has a second set of counters, its own
phase register and issue delay line: the **side stream**. A stage phase goes there when

- it does not multiply-accumulate (the MAC engine serves one phase at a time; an elementwise product, ``mul`` or
  ``msub``, multiplies on its own multipliers there, the shared ones serving the main stream: DSP blocks are the
  pynq-z1's plentiful part), is not fused with the input stream and does not round stochastically (its random
  bits are counted per call);
- some phase of the main stream can run beside it: its **window**, the main-stream phases after the last one
  before it that touches (reads or writes) one of its buffers and before the first one after it that does,
  is not empty. The phases of its window touch none of its memories, so the two streams never meet at a
  memory port, a bank's write data or a read multiplexer.

It then waits before its first issue until every main-stream phase up to the last one before it that touches its
buffers has written its last result (``Phase.wait``: the index of that phase), and the first main-stream phase after
it that touches its buffers waits for it (and so for every side phase the side stream runs before it: it runs its
phases one after another, each after the last write of the one before, the one a main phase needs first among those
ready, ``Phase.side_rank``, ``_set_waits``). The waits are flags in the controller, set a cycle after a phase's last
write lands, so the order holds whatever the input stream's pace. A main phase whose wait may delay its first issue
in the model sets up only after every write of the phases before it (``Phase.barrier``: a stalled issue could
otherwise meet a write at one bank in one cycle); only the input stream stalls, and it delays the main stream alone,
so a wait the model says never blocks never does. Side phases overlap as main ones do (``overlap.plan`` on the side
stream's order, ``delayable``: safe at any later setup, since a wait may delay a side phase's first issue), the last
draining every write.
The side stream starts with each pass of the program's first main-stream stage phase (each model group's pass) and
the pass's last stage phase ends only when the side stream is idle.

``command_cycles`` is the exact model of the controller (``backends/rtl/circt_child.py``): the cycles from the
cycle a command is accepted to the cycle it is idle again, with the input words arriving every cycle.
Without side phases it is the one-stream formula ``1 + sum of advances`` (each pass's: a pipelined phase issues
once in the pass where it has no group, ``Phase.idle_in``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fx2fpga_runtime import stochastic
from fx2fpga_runtime.ops import OPS_TABLE

if TYPE_CHECKING:
    from .schedule import Phase

MAIN, SIDE = 0, 1


def buffers_of(ph: Phase, free: frozenset[str] = frozenset()) -> set[str]:
    """The buffers (memories) a phase reads or writes, less ``free`` ones (read-only, one word a bank: every
    request of every phase reads the same word, so two streams may read them at once)."""
    return {p.buffer for p in ph.reads + ph.writes} - free


def free_buffers(memories: dict, commands: dict) -> frozenset[str]:
    """The memories two streams may read at once: read-only, one word in each bank (a constant's), and every read
    of them hits one bank it knows at compile time (no read multiplexer, which phases share)."""
    multi = {p.buffer for phases in commands.values() for ph in phases for p in ph.reads if len(p.banks) > 1}
    return frozenset(n for n, m in memories.items() if m.read_only and m.depth == 1 and n not in multi)


def eligible(ph: Phase, kernel) -> bool:
    """Whether a phase may run in the side stream (see the module doc)."""
    return ph.kind == "stage" and not ph.streamed and side_runnable(ph.stage, kernel)


def side_runnable(st, kernel) -> bool:
    """Whether the side stream may run the stage: not a multiply-accumulate, not rounding stochastically."""
    return not shares_the_engine(st) and not stochastic.rounds_stochastic(st, kernel)


def shares_the_engine(st) -> bool:
    """A multiply-accumulate: the MAC engine and the shared multipliers serve one of them at a time, on the main
    stream (an elementwise product on the side stream multiplies on its own multipliers: backends/rtl/emit.py)."""
    spec = OPS_TABLE[st.op]
    return spec.multiplies and spec.reduction


def _touching(phases: list[Phase], mine: set[str], indices, free: frozenset[str], stream: int = MAIN) -> list[int]:
    """The phases of ``stream`` among ``indices`` that read or write one of the buffers ``mine``."""
    return [j for j in indices if phases[j].stream == stream and buffers_of(phases[j], free) & mine]


def _set_waits(phases: list[Phase], free: frozenset[str], order: str) -> None:
    """Each phase's ``wait`` for the side phases chosen (``stream``) and the side stream's order (``side_rank``):
    a side phase waits for the main phases up to the last one before it touching its buffers; the side stream
    runs, of the phases ready, the one due first (``_due``; ``order`` "waits": not looked at), then the one whose
    wait ends first; a phase is ready after every side phase before it that writes a buffer it touches or touches
    one it writes (two reads commute); a main phase waits for the latest, in that order, of the side phases before
    it touching its buffers (and so for every side phase before that one). No wait is circular: in deadline order
    a side phase waiting for a main phase is due after it, and every side phase that main phase waits for is due
    no later than it; in the waits' order none waits for a main phase after one that waits for it."""
    for j, ph in enumerate(phases):
        ph.side_rank = None
        if ph.stream == SIDE:
            touching = _touching(phases, buffers_of(ph, free), range(j), free)
            ph.wait = touching[-1] if touching else None
    left = [i for i, ph in enumerate(phases) if ph.stream == SIDE]
    due = _due(phases, free)
    rank = 0
    while left:
        ready = [i for i in left if not any(k < i and _hazard(phases[k], phases[i], free) for k in left)]
        i = min(ready, key=lambda i: ((due[i],) if order == "deadline" else ())
                + (-1 if phases[i].wait is None else phases[i].wait, i))
        phases[i].side_rank, rank = rank, rank + 1
        left.remove(i)
    for j, ph in enumerate(phases):
        if ph.stream == MAIN:
            touching = _touching(phases, buffers_of(ph, free), range(j), free, SIDE)
            ph.wait = max(touching, key=lambda i: phases[i].side_rank) if touching else None


def _hazard(earlier: Phase, later: Phase, free: frozenset[str]) -> bool:
    """Whether ``later`` must stay after ``earlier`` in one stream: one writes a buffer the other touches."""
    def writes(ph):
        return {p.buffer for p in ph.writes} - free
    return bool(writes(earlier) & buffers_of(later, free) or writes(later) & buffers_of(earlier, free))


def _due(phases: list[Phase], free: frozenset[str]) -> dict[int, int]:
    """Each side phase's deadline: the first main-stream phase after it that touches its buffers or waits, through
    side phases after it that must follow it (``_hazard``), for it (the loss's own sum, which only the output
    reads, is due at the end; the softmax chain before the backward's first product). The side stream runs, of the
    phases ready, the one due first (session 27: the loss after the gradient's chain, which then fits beside the
    next group's forward)."""
    due: dict[int, int] = {}
    for i in reversed(range(len(phases))):
        if phases[i].stream != SIDE:
            continue
        mine = buffers_of(phases[i], free)
        later = _touching(phases, mine, range(i + 1, len(phases)), free)
        side = [due[k] for k in range(i + 1, len(phases))
                if phases[k].stream == SIDE and _hazard(phases[i], phases[k], free)]
        due[i] = min([*later[:1], *side], default=len(phases))
    return due


def side_order(phases: list[Phase]) -> list[int]:
    """The side phases (indices in the command) in the order the side stream runs them."""
    return sorted((i for i, ph in enumerate(phases) if ph.stream == SIDE), key=lambda i: phases[i].side_rank)


def _has_window(phases: list[Phase], i: int, last_stage: int, free: frozenset[str]) -> bool:
    """Whether some main-stream stage phase can run beside phase i (see the module doc)."""
    mine = buffers_of(phases[i], free)
    before = _touching(phases, mine, range(i), free)
    after = _touching(phases, mine, range(i + 1, len(phases)), free)
    p = before[-1] if before else -1
    c = after[0] if after else last_stage + 1
    return any(j != i and phases[j].stream == MAIN and phases[j].kind == "stage"
               for j in range(p + 1, min(c, last_stage + 1)))


def _settle(phases: list[Phase], plan: Callable[[], None]) -> int:
    """Plan the drains with a main phase a barrier only where its wait may stall it, and the command's cycles with
    every pass a full one (the assignment's measure: pipelined groups spend most passes so, and the first and last
    passes' idle phases, ``Phase.idle_in``, would make the greedy's choices follow them): a wait that the model
    says never blocks (its flag is set by the phase's first issue) leaves the phase overlapping the one before;
    one that may block, in any pass, makes it a barrier (see the module doc)."""
    for ph in phases:
        ph.barrier = False
    while True:
        plan()
        _set_idle_drains(phases)
        _, stalled = timeline(phases)
        late = [j for j in stalled if not phases[j].barrier]
        if not late:
            return timeline(phases, idle=False)[0]
        for j in late:
            phases[j].barrier = True


def _set_idle_drains(phases: list[Phase]) -> None:
    """A pipelined phase's drain in the pass where it has no group (``Phase.idle_drain``): the command's largest
    write delay, a barrier after its one issue; 0 (it then runs in full) where that would not be shorter."""
    barrier = max(ph.write_delay for ph in phases)
    for ph in phases:
        if ph.lag is not None:
            ph.idle_drain = barrier if 1 + barrier < ph.iterations + ph.drain_cycles else 0


ORDERS = ("waits", "deadline")  # the side stream's orders ``assign`` tries (``_set_waits``), the preferred last


def assign(phases: list[Phase], kernel, plan: Callable[[], None], free: frozenset[str],
           side: bool = True) -> None:
    """Move stage phases of one command (its phases in order) to the side stream where that makes the command
    shorter, and set every phase's ``wait`` and ``barrier`` (see the module doc). ``plan()`` sets the phases'
    drains for the streams as they are (``overlap.plan`` on the main stream). Greedy: a phase moves when it is
    eligible, has a window, and the command's cycles fall; a sweep in program order, then one back from the last
    phase (a move can open another's window). The greedy runs with each of the side stream's ``ORDERS`` and keeps
    the shorter command (the deadline order's, on a tie): the deadline order takes the 30-MLP step's loss chain off
    the main stream, the waits' order is 569 cycles shorter for the 30 digits CNNs (session 27). ``free``:
    ``free_buffers``; ``side=False``: none moves."""
    candidates = [j for j, ph in enumerate(phases) if ph.kind == "stage" and side and eligible(ph, kernel)]
    if not candidates:
        _settle(phases, plan)
        return
    tried = [_greedy(phases, plan, free, candidates, order) for order in ORDERS]
    if tried[0] < tried[-1]:  # (the phases are as the last greedy left them)
        _greedy(phases, plan, free, candidates, ORDERS[0])


def _greedy(phases: list[Phase], plan: Callable[[], None], free: frozenset[str], candidates: list[int],
            order: str) -> int:
    """``assign``'s greedy from every phase on the main stream, the side stream in ``order``: the cycles."""
    for ph in phases:
        ph.stream = MAIN
    last_stage = max(j for j, ph in enumerate(phases) if ph.kind == "stage")
    _set_waits(phases, free, order)
    best = _settle(phases, plan)
    for sweep in range(2):
        moved = False
        for i in (candidates if sweep == 0 else reversed(candidates)):
            if phases[i].stream == SIDE or not _has_window(phases, i, last_stage, free):
                continue
            phases[i].stream = SIDE
            _set_waits(phases, free, order)
            cycles = _settle(phases, plan)
            if cycles < best:
                best, moved = cycles, True
            else:
                phases[i].stream = MAIN
        _set_waits(phases, free, order)
        best = _settle(phases, plan)
        if not moved:
            break
    return best


def concurrent(phases: list[Phase]) -> set[frozenset[int]]:
    """Pairs of phases (indices in the command) that may issue at once: a side phase and each main stage phase
    after its wait and before the first main phase that waits for it or a side phase after it (two side phases
    never do: the side stream runs one at a time)."""
    main = [j for j, ph in enumerate(phases) if ph.stream == MAIN and ph.kind == "stage"]
    out = set()
    for i, ph in enumerate(phases):
        if ph.stream != SIDE:
            continue
        start = -1 if ph.wait is None else ph.wait
        end = next((j for j in main if j > start and phases[j].wait is not None
                    and phases[phases[j].wait].side_rank >= ph.side_rank), len(phases))
        out |= {frozenset((i, j)) for j in main if start < j < end}
    return out


def has_side(phases: list[Phase]) -> bool:
    """Whether a command's phases use the side stream."""
    return any(ph.stream == SIDE for ph in phases)


def flag_delay(ph: Phase) -> int:
    """Cycles from a phase's last issue to the first cycle its done flag is set: its last write, a register."""
    return ph.write_delay + 1


def command_cycles(phases: list[Phase]) -> int:
    """Exact cycles of one call of a command (see the module doc): from the cycle it is accepted until idle."""
    return timeline(phases)[0]


def timeline(phases: list[Phase], idle: bool = True) -> tuple[int, list[int]]:
    """``command_cycles`` and the main phases whose wait delays their first issue (in some model group's pass);
    ``idle=False``: every pipelined phase runs in full in every pass (``_settle``'s measure)."""
    if not has_side(phases):
        return 1 + sum(ph.advance_in(p if idle else -1) for ph in phases for p in range(ph.groups)), []
    t = _Timeline(phases, idle)
    main = t.main
    stage_main = [j for j in main if phases[j].kind == "stage"]
    first, last = stage_main[0], stage_main[-1]
    setup = 1  # the first phase's setup cycle (the command is accepted in cycle 0)
    for j in main[:main.index(first)]:
        setup = t.run_main(j, setup)
    for pass_ in range(phases[first].groups):
        t.pass_ = pass_ if idle else -1  # (-1: no pass, in which no phase idles)
        body = [j for j in main if first <= j <= last]  # (an unpack after a stage fused with the input stream)
        for j in body + t.side:
            t.flag.pop(j, None)
        t.side_idle = setup + 1  # the side stream starts with the first stage phase's setup
        t.pending[:] = t.side
        for j in body:
            t.run_side(j)
            if j == last:  # its issues set its flag, which the side phases left may wait for; it ends when they end
                after = t.run_main(j, setup)
                t.run_side(None)
                setup = max(after, t.side_idle + 1)
            else:
                setup = t.run_main(j, setup)
    for j in main[main.index(last) + 1:]:
        setup = t.run_main(j, setup)
    return setup, sorted(t.stalled)


class _Timeline:
    """The state of ``timeline`` as it runs a command's passes: the done flags set so far, the side stream."""

    def __init__(self, phases: list[Phase], idle: bool):
        self.phases = phases
        self.main = [j for j, ph in enumerate(phases) if ph.stream == MAIN]
        self.side = side_order(phases)
        self.pass_ = 0 if idle else -1
        self.flag: dict[int, int] = {}  # phase index -> the first cycle its done flag is set (this pass)
        self.stalled: set[int] = set()
        self.after_idle = False  # the main phase before idled in its pass: every write had landed at this one's setup
        self.pending: list[int] = []  # the side phases of this pass not run yet, in the side stream's order
        self.side_idle = 0  # the cycle the side stream is free for its next phase (its last write landed)

    def run_main(self, j: int, setup: int) -> int:
        """Phase j of the main stream from its setup; the next phase's setup."""
        ph = self.phases[j]
        idles = ph.idle_in(self.pass_)
        issue = setup + ph.setup_cycles
        if ph.wait is not None and self.flag[ph.wait] > issue:
            issue = self.flag[ph.wait]
            if not idles and not self.after_idle:  # (a stall then meets no write: an idle phase writes nothing)
                self.stalled.add(j)
        self.after_idle = idles
        last_issue = issue + ph.issues_in(self.pass_) - 1
        self.flag[j] = last_issue + flag_delay(ph)
        return last_issue + ph.drain_in(self.pass_) + 1

    def run_side(self, before: int | None) -> None:
        """The pending side phases whose waits are before main phase ``before`` (None: all): their flags are known."""
        phases, pending = self.phases, self.pending
        while pending and (before is None or phases[pending[0]].wait is None or phases[pending[0]].wait < before):
            ph = phases[pending[0]]
            issue = self.side_idle + ph.setup_cycles
            if ph.wait is not None:
                issue = max(issue, max(self.flag[q] for q in self.main if q <= ph.wait))
            last_issue = issue + ph.issues_in(self.pass_) - 1
            self.flag[pending.pop(0)] = last_issue + flag_delay(ph)
            self.side_idle = last_issue + ph.drain_in(self.pass_) + 1
