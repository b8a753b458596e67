"""Overlapping consecutive stage phases: the next phase issues while this one drains (``Phase.drain``).

A stage phase's writes land ``write_delay`` cycles (9 to 19) after their issue. Until session 15 the
next phase waited for the last of them; now its setup comes as early as nothing forbids it:

- its issues come after the last issue before it (the controller's counters are shared);
- every buffer element keeps the order the emulator gives it: a read comes after the writes before it
  (RAW), a write after the reads (WAR) and the writes (WAW) before it, each at least a cycle later (a
  RAM port reads the old word in the cycle it is written);
- no memory bank takes two writes in one cycle (it has one write port);
- every phase still writing counts, not only the one just before.

Only a stage phase following a stage phase overlaps. The others are barriers, waiting for every write
in flight: transfers (their stream handshakes), the last phase of a command, the last stage phase of a
model group's pass (the group counter steps after it, and the in-flight requests read it), and a phase whose
wait for the side stream may stall it (``Phase.barrier``, streams.py). With a side stream this runs on each
stream's phases, the side stream's in the order it runs them and *delayable* (session 29: a side phase's wait
for a main phase may delay it past its planned setup, so its setup must be clear of a write clash at every later
offset too; an element's order only loosens then). The schedule
stays exact: the controller tags every tap of its issue delay line with the phase that issued it
(``backends/rtl/circt_child.py``), so the requests in flight keep their phase. The other shared parts are
used at one fixed tap after the issue by every stage that uses them (the pooled multipliers, the MAC
engine's accumulators, the shared read multiplexers), so disjoint issue windows keep them disjoint.

Only a phase's last issues (its tail: those whose requests can come after the next phase's first) and the
next phase's first (its head) are enumerated, per model group, so this costs little next to the
schedule's full enumeration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .schedule import Phase


@dataclass
class Requests:
    """Requests of some issues of a phase (``schedule.phase_requests``): per buffer, reads as (element key,
    time) arrays and writes as (element key, time, bank), times in cycles after the phase's setup, element keys
    and banks unique across model groups."""

    reads: dict[str, tuple[np.ndarray, np.ndarray]]
    writes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def _order_bound(earlier: tuple, later: tuple) -> int:
    """The least offset ``d`` of the later phase's setup after the earlier phase's (times relative to each)
    with every later request of a shared element strictly after the earlier one's: max(t - t' + 1)."""
    keys, times = earlier[0], earlier[1]
    lkeys, ltimes = later[0], later[1]
    if not len(keys) or not len(lkeys):
        return -(1 << 40)
    common = np.intersect1d(keys, lkeys)
    if not len(common):
        return -(1 << 40)
    last = np.full(len(common), -(1 << 40), dtype=np.int64)
    first = np.full(len(common), 1 << 40, dtype=np.int64)
    m = np.isin(keys, common)
    np.maximum.at(last, np.searchsorted(common, keys[m]), times[m])
    m = np.isin(lkeys, common)
    np.minimum.at(first, np.searchsorted(common, lkeys[m]), ltimes[m])
    return int((last - first).max()) + 1


def _write_clash(earlier: Requests, later: Requests, d: int) -> bool:
    """Whether a bank takes a write of both phases in one cycle, the later phase's setup ``d`` cycles after."""
    for buf, (_, ltimes, lbanks) in later.writes.items():
        if buf not in earlier.writes:
            continue
        _, times, banks = earlier.writes[buf]
        span = int(max(times.max(initial=0), ltimes.max(initial=0) + d)) + 1
        if np.isin(banks * span + times, lbanks * span + ltimes + d).any():
            return True
    return False


def _earliest(tail: Requests, head: Requests, low: int, high: int, delayable: bool = False) -> int:
    """The least offset in ``low .. high`` of the head's phase setup after the tail's at which neither
    an element's order nor a write port says no (``high``: every write of the tail is done); ``delayable``: nor at
    any later offset (an element's order only loosens as the head comes later)."""
    d = low
    for buf, (keys, times, _) in tail.writes.items():
        if buf in head.reads:
            d = max(d, _order_bound((keys, times), head.reads[buf]))
        if buf in head.writes:
            d = max(d, _order_bound((keys, times), head.writes[buf][:2]))
    for buf, (keys, times) in tail.reads.items():
        if buf in head.writes:
            d = max(d, _order_bound((keys, times), head.writes[buf][:2]))
    if delayable:  # clear of a clash at every later offset too (a wait may delay the head's first issue)
        d = max([d] + [x + 1 for x in range(d, high) if _write_clash(tail, head, x)])
    else:
        while d < high and _write_clash(tail, head, d):
            d += 1
    return min(d, high)


def plan(phases: list[Phase], requests: Callable[[Phase, np.ndarray], Requests], delayable: bool = False) -> None:
    """Set ``drain`` of each phase of one command (its phases in order; or of one stream's phases in the order it
    runs them); ``requests(phase, issues)``: the requests of those issues of the phase
    (``schedule.phase_requests``); ``delayable``: a phase may set up later than planned (the side stream's, whose
    wait for a main phase may delay it), so each setup is clear of a write clash at every later offset too."""
    starts: list[int] = []
    flight: list[tuple[int, int, Requests]] = []  # stage phases still writing: (setup, last write, tail)
    for j, ph in enumerate(phases):
        if j == 0:
            starts.append(0)
        else:
            prev = phases[j - 1]
            low = starts[-1] + prev.cycles - prev.write_delay  # after its setup and its last issue
            done = max([starts[-1] + prev.cycles] + [last + 1 for _, last, _ in flight])  # every write done
            s = done
            if ph.kind == "stage" and prev.kind == "stage" and not ph.barrier:
                head = requests(ph, np.arange(min(ph.iterations, done - low)))
                s, before = low, None
                while s != before:  # a write clash is not monotone in the offset: until no phase moves it
                    before = s
                    for start, last, tail in flight:
                        if last >= s:
                            s = max(s, start + _earliest(tail, head, s - start, last + 1 - start, delayable))
            prev.drain = s - low
            starts.append(s)
        flight = [f for f in flight if f[1] >= starts[-1]]
        if ph.kind == "stage":
            tail = np.arange(max(0, ph.iterations - ph.write_delay - 1), ph.iterations)
            flight.append((starts[-1], starts[-1] + ph.cycles - 1, requests(ph, tail)))
    last = phases[-1]
    done = max([starts[-1] + last.cycles] + [end + 1 for _, end, _ in flight])
    last.drain = done - (starts[-1] + last.cycles - last.write_delay)
