"""Serialized drains: a reduction's lanes write their results over several cycles, one bank at a time.

A reduction of ``K`` points on ``L`` lanes has every lane's result at its last point. Written in that one cycle,
the ``L`` results need ``L`` banks of the output buffer, however few its readers need (the 30 digits MLPs' hidden
activations: 128 banks of 8 words for a forward at 128 lanes, which its readers read 32 at a time). Instead each
lane's result waits in its unit's result register, which takes a value only at a reduction's last point
(``templates/rtl/engine.sv.j2``, ``unit.sv.j2``), and is written in the lane's *slot*: ``slot`` cycles after the
stage's write tap. Lanes whose results fall in one bank take distinct slots, so the output is banked for the
other accesses alone (``common.buffer_banking``).

Exact because:

- a lane's bank is the same at every issue: with cyclic banks and a plain affine index (no ``/`` or ``%`` on a lane
  variable) two lanes' elements differ by a constant, their banks by that constant modulo the factors, whatever
  the counters; so one slot per lane serves every issue (``lane_slots``);
- a held result is written before the register takes the next one: slots are fewer than the reduction's points
  (the next last point is that many issues later) and than those of every reduction of its op (``slot_limit``):
  a phase sharing the unit (or the MAC engine's result registers) issues after this one's last issue, and
  captures its first result at least its own points later.

A fused update (``p - lr * g``: a reduction whose initial value is its own output element) reads that value at
the first point in every lane, which would bank the output for all lanes again; its lanes read it in their slots
instead (``own_init``: the read guarded to the lane's point ``slot`` of the reduction). The unit's initial-value
register ORs what arrives from the first point on (a lane's read is 0 at the other points), and the first product
meets it ``unit_latency - 3`` points in: so the slots stay below that (``init_slot_limit``), and every reduction of
the op takes at least as many points (the register is not reloaded before it is used).

A reduction rounding stochastically keeps one write cycle (its random bits are drawn for the point that cycle
converts). The HLS backend keeps the lanes' banks: its pipelined loop writes every lane in the last point's
iteration, and fewer banks would raise that loop's initiation interval.
"""

from __future__ import annotations

import functools
import itertools

from fx2fpga_runtime import stochastic
from fx2fpga_runtime.ir import Access, Affine, Kernel, Stage
from fx2fpga_runtime.ops import OPS_TABLE


def serializable(st: Stage, kernel: Kernel) -> bool:
    """Whether the stage's results may be written over several cycles: a reduction of two points or more, not
    rounding stochastically, its output index plain (no ``/`` or ``%``) in every lane variable."""
    if not st.reduce or st.reduction_points < 2 or stochastic.rounds_stochastic(st, kernel):
        return False
    lane_vars = {var for var, _ in st.lane_loops()}
    return not any(ix.div != 1 or ix.mod for ix in st.out.index if lane_vars & set(ix.vars()))


def fewest_points(kernel: Kernel) -> dict[str, int]:
    """The fewest points of any reduction of each op in the kernel."""
    out: dict[str, int] = {}
    for s in kernel.stages():
        if s.reduce:
            out[s.op] = min(out.get(s.op, s.reduction_points), s.reduction_points)
    return out


def slot_limit(st: Stage, kernel: Kernel, fewest: dict[str, int] | None = None) -> int:
    """The most slots the stage's drain may take: the fewest points of any reduction of its op (its own included),
    as any of them may run on the same unit and take its result registers next (``fewest``: ``fewest_points`` of
    the kernel, where the caller has it)."""
    return (fewest or fewest_points(kernel))[st.op]


def own_init(st: Stage) -> Access | None:
    """The stage's initial value where it is its own output element (a fused update), else None."""
    spec = OPS_TABLE[st.op]
    if not spec.reduction:
        return None
    return next((a for a in st.ins[spec.arity:] if a.buffer == st.out.buffer and a.index == st.out.index), None)


def init_slot_limit(st: Stage, kernel: Kernel, fewest: dict[str, int] | None = None) -> int:
    """The most slots a fused update's initial values may take: they meet the first product ``unit_latency - 3``
    points after it issued; 1 (no serializing) where a reduction of the op is shorter than that."""
    reach = OPS_TABLE[st.op].unit_latency - 3
    return reach if slot_limit(st, kernel, fewest) >= reach else 1


def lane_slots(st: Stage, factors: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Each lane's slot (lanes in ``Stage.lane_loops`` order, row-major) when its output is banked by ``factors``:
    its rank among the earlier lanes whose element falls in the same bank."""
    return _lane_slots(st.lane_loops(), st.out.index, tuple(factors))


@functools.lru_cache(maxsize=4096)  # (the explorer prices the same few layouts over and over)
def _lane_slots(lane_loops: tuple[tuple[str, int], ...], index: tuple[Affine, ...],
                factors: tuple[int, ...]) -> tuple[int, ...]:
    steps = dict(lane_loops)
    taken: dict[tuple[int, ...], int] = {}
    slots = []
    for combo in itertools.product(*map(range, steps.values())):
        offsets = dict(zip(steps, combo, strict=True))
        bank = tuple(sum(c * offsets.get(v, 0) for v, c in ix.terms) % f
                     for ix, f in zip(index, factors, strict=True))
        slots.append(taken.get(bank, 0))
        taken[bank] = slots[-1] + 1
    return tuple(slots)


def write_slots(st: Stage, kernel: Kernel, factors, fewest: dict[str, int] | None = None) -> tuple[int, ...] | None:
    """The lanes' slots of a stage whose drain is serialized under its output's banking ``factors``; None where its
    results are written at once (not ``serializable``, or more slots than ``slot_limit``, or for a fused update
    than ``init_slot_limit``; ``fewest``: ``fewest_points`` of the kernel, where the caller has it)."""
    return fitting_slots(st, kernel, factors, fewest) if serializable(st, kernel) else None


def fitting_slots(st: Stage, kernel: Kernel, factors, fewest: dict[str, int] | None = None) -> tuple[int, ...] | None:
    """``write_slots`` of a stage known to be ``serializable``."""
    fewest = fewest or fewest_points(kernel)
    slots = lane_slots(st, factors)
    limit = slot_limit(st, kernel, fewest)
    if own_init(st) is not None:
        limit = min(limit, init_slot_limit(st, kernel, fewest))
    return slots if max(slots, default=0) < limit else None
