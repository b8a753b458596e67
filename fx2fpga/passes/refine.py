"""Refining the explorer's point on the exact schedule: narrower stages paying for a wider main-stream one.

The greedy allocation (``allocate.py``) prices each stage by its phase's cycles as if the phases ran one after
another. On a program with a side stream (``streams.py``), and most of all with pipelined model groups, whose loss
chain runs beside the next group's forward, those side phases' cycles are mostly hidden: the greedy's last lanes
go to them, where they buy a few cycles, while a main-stream multiply-accumulate one option wider would buy
hundreds but no longer fits (the 30 digits MLPs of session 29: the side chain at 16 lanes, fc2's forward at 20).
This pass measures instead, each move scheduled exactly and planned in full (``explore.measure``):

- *trims*: each side-stream stage, and each of the widest main-stream ones, at half its lanes (on the loops it
  has, the nearest shape: ``reshaping``) is measured once; one that is no slower and uses less of something and
  more of nothing is kept at once, the others are kept as offers (their cycles and resources against the
  point's). A main stage's trim costs cycles where a side stage's are hidden, but can free what the side's cannot:
  the one MLP with a 32-bit bus (session 30), whose fc2 input gradient (24-bit by 24-bit products, two DSP blocks
  a lane) at half its 64 lanes paid for fc1's weight gradient at 128;
- *widenings*: each of the slowest main-stream stages at its next lane choices on its loops (up to twice the
  lanes, the shapes nearest its own) is measured; one that fits and is faster is kept; one over the allowance is
  paid for with the offers (not its own) that free what it is over by at the fewest cycles (assumed additive, then
  measured together, once more with the next offer while still over) and kept when it then fits and is faster;
- rounds of both until a round keeps nothing or ``MAX_EVALUATIONS`` are spent.

The result is a point like the others (``DesignPoint.allocation`` ends in ", refined"); the explorer keeps the
fastest that fits, so this can only add a faster point.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

from fx2fpga_runtime.ir import Kernel, Stage

from . import allocate, resources, streams, tile

MAX_EVALUATIONS = 48  # full plans measured per refinement (~5 s each for 30 digits MLPs)
WIDENED_STAGES = 5  # the slowest main-stream stage phases tried wider in a round
WIDENINGS_TRIED = 2  # ... at the nearest of their wider shapes (``reshaping``; the far ones re-bank everything)
TRIMMED_MAIN = 5  # the widest main-stream stage phases (most lanes) offered at half their lanes in a round
PAYMENTS = 2  # measurements of a widening with offers paying for it (the second adds offers for what is still over)
RESOURCES = ("lut", "ff", "dsp", "bram36")

Option = tuple  # (model lanes, lanes, lane loop, outer lanes, outer loop), as allocate's


@dataclass
class _Offer:
    """A measured trim: the stage, its narrower choice, and what it changes against the point (cycles added,
    resources freed: positive where it frees)."""

    stage: str
    option: Option
    cycles: int
    freed: dict[str, float]


def option_of(st: Stage) -> Option:
    """A stage's lanes as an ``allocate`` choice."""
    return st.model_lanes, st.lanes, st.lane_var, st.outer_lanes, st.outer_lane_var


def _per_loop(option: Option) -> dict[str, int]:
    return {v: n for n, v in ((option[1], option[2]), (option[3], option[4])) if n > 1}


def _loops(option: Option) -> set[str]:
    return set(_per_loop(option))


def reshaping(a: Option, b: Option) -> float:
    """How far apart two choices' shapes are: the factors of two by which their lanes differ, loop by loop. A
    choice's banks follow its shape, so the nearest choices re-bank the least (halving one loop's lanes rather
    than moving them all to another loop)."""
    pa, pb = _per_loop(a), _per_loop(b)
    return sum(abs(math.log2(pa.get(v, 1) / pb.get(v, 1))) for v in set(pa) | set(pb))


def trims(st: Stage) -> list[Option]:
    """The stage's choices with half its lanes, over loops it has lanes on already and the same model lanes,
    the nearest shapes first."""
    now = option_of(st)
    return sorted((o for o in allocate._options(st) if 2 * allocate.total(o) == allocate.total(now)
                   and _loops(o) <= _loops(now) and o[0] == now[0]), key=lambda o: reshaping(o, now))


def widenings(st: Stage) -> list[Option]:
    """The stage's choices with more lanes, up to twice, over the loops it has lanes on (and maybe one more) and
    the same model lanes, the nearest shapes first."""
    now = option_of(st)
    t = allocate.total(now)
    return sorted((o for o in allocate._options(st) if t < allocate.total(o) <= 2 * t
                   and _loops(o) >= _loops(now) and o[0] == now[0]), key=lambda o: reshaping(o, now))


def _values(point) -> dict[str, float]:
    return {r: float(getattr(point, r)) for r in RESOURCES}


class _Search:
    """The refinement's state: the point kept so far, its kernel and schedule, and the evaluations left."""

    def __init__(self, measure: Callable[[Kernel], tuple], start: tuple, program: str, allowed: dict[str, float]):
        self.measure, self.program, self.allowed = measure, program, allowed
        self.point, self.kernel, self.schedule = start
        self.left = MAX_EVALUATIONS
        self.measured: dict[tuple, tuple] = {}  # every stage's lanes -> what they measured (rounds repeat moves)

    def stages(self) -> dict[str, Stage]:
        return {st.name: st for st in self.kernel.programs[self.program].stages}

    def evaluate(self, changes: dict[str, Option]) -> tuple:
        """The point with ``changes`` (stage -> choice) made to the kept one's lanes: ``(point, kernel,
        schedule)``, Nones where the RTL cannot map it. Lanes measured before are not measured again."""
        lanes = {name: option_of(st) for name, st in self.stages().items()} | changes
        key = tuple(sorted(lanes.items(), key=lambda kv: kv[0]))
        if key not in self.measured:
            self.left -= 1
            k = copy.deepcopy(self.kernel)
            stages = {st.name: st for st in k.programs[self.program].stages}
            for name, (m, ln, var, on, ovar) in changes.items():
                tile.set_stage_lanes(stages[name], m, ln, var, on, ovar)
            tile.mirror_twin_lanes(k, self.program)
            self.measured[key] = self.measure(k)
        return self.measured[key]

    def over(self, point) -> dict[str, float]:
        """What ``point`` uses beyond the allowance, per resource (only those over)."""
        return {r: v - self.allowed[r] for r, v in _values(point).items() if v > self.allowed[r]}

    def fits(self, point) -> bool:
        return point is not None and not self.over(point)

    def keep(self, got: tuple) -> None:
        self.point, self.kernel, self.schedule = got

    def phases(self, stream: int) -> list:
        return [ph for ph in self.schedule.commands[self.program]
                if ph.kind == "stage" and ph.stream == stream and ph.stage is not None]

    def probe_trims(self) -> list[_Offer]:
        """Measure each side stage and the widest main ones at half their lanes: keep a pure gain at once, offer
        the rest."""
        offers = []
        widest = lambda phases: sorted(phases, key=lambda ph: -ph.lanes)  # noqa: E731
        for ph in widest(self.phases(streams.SIDE)) + widest(self.phases(streams.MAIN))[:TRIMMED_MAIN]:
            options = trims(self.stages()[ph.stage.name])  # (none for a stage at one lane)
            if not options:
                continue
            if self.left <= 0:
                return offers
            got = self.evaluate({ph.stage.name: options[0]})
            if got[0] is None:
                continue
            now, new = _values(self.point), _values(got[0])
            freed = {r: now[r] - new[r] for r in RESOURCES}
            added = got[0].cycles - self.point.cycles
            if added <= 0 and min(freed.values()) >= 0 and max(freed.values()) > 0 and self.fits(got[0]):
                self.keep(got)
                offers = [o for o in offers if o.stage != ph.stage.name]
            else:
                offers.append(_Offer(ph.stage.name, options[0], added, freed))
        return offers

    def pay_for(self, over: dict[str, float], offers: list[_Offer], taken: list[_Offer], widened: str) -> list[_Offer]:
        """Offers not ``taken`` yet, nor of the stage ``widened``, that free what is ``over`` (assumed additive):
        each time the one freeing the most of what is left, as shares of the allowance, per cycle it adds; none
        where they cannot free it all."""
        left, chosen = dict(over), []

        def value(o: _Offer) -> float:
            return sum(min(o.freed[r], need) / self.allowed[r] for r, need in left.items() if need > 0) / (
                max(o.cycles, 0) + 1)
        while any(need > 0 for need in left.values()):
            useful = [o for o in offers if o not in taken and o not in chosen and o.stage != widened
                      and value(o) > 0]
            if not useful:
                break
            best = max(useful, key=value)
            chosen.append(best)
            left = {r: need - best.freed[r] for r, need in left.items()}
        return [] if any(need > 0 for need in left.values()) else chosen

    def widen(self, offers: list[_Offer]) -> bool:
        """Try the slowest main stages wider (see the module doc); whether one was kept."""
        tried = []
        for ph in sorted(self.phases(streams.MAIN), key=lambda ph: -ph.cycles)[:WIDENED_STAGES]:
            st = self.stages()[ph.stage.name]
            for option in widenings(st)[:WIDENINGS_TRIED]:
                if self.left <= 0:
                    break
                got = self.evaluate({st.name: option})
                if got[0] is not None and got[0].cycles < self.point.cycles:
                    tried.append((got, st.name, option))
        for got, name, option in sorted(tried, key=lambda t: t[0][0].cycles):
            taken: list[_Offer] = []
            for payment in range(PAYMENTS + 1):
                if self.fits(got[0]):
                    self.keep(got)
                    return True
                more = self.pay_for(self.over(got[0]), offers, taken, name) if payment < PAYMENTS else []
                if not more or self.left <= 0:
                    break
                taken += more
                got = self.evaluate({name: option, **{o.stage: o.option for o in taken}})
                if got[0] is None or got[0].cycles >= self.point.cycles:
                    break
        return False


def refine(start: tuple, program: str, target, share: float, measure: Callable[[Kernel], tuple]) -> tuple:
    """The point ``start`` = ``(DesignPoint, tiled kernel, schedule)`` of ``program`` refined on the exact schedule
    (see the module doc) within ``share`` of each resource's allowance on ``target``; ``measure(kernel)`` plans a
    tiled kernel (``explore.measure``). Returns the refined ``(DesignPoint, kernel, schedule)``, or ``start``."""
    allowed = {r: share * v for r, v in resources.allowance(target).items()}
    search = _Search(measure, start, program, allowed)
    if not search.fits(search.point) or not streams.has_side(search.schedule.commands[program]):
        return start
    while search.left > 0:
        offers = search.probe_trims()
        if not search.widen(offers):
            break
    return (search.point, search.kernel, search.schedule) if search.point is not start[0] else start
