"""passes/overlap.py: each stage phase starts as early as every buffer element's order and the banks' write
ports allow, checked here against an exhaustive search over every request of every phase (not only the
tails and heads the pass enumerates), on kernels with lanes, reductions, model groups and a convolution."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fx2fpga
from fx2fpga.passes import overlap, schedule, streams


def _all_requests(ph, memories):
    return schedule.phase_requests(ph, memories, np.arange(ph.iterations))


def _fits(earlier, later, d: int) -> bool:
    """Every element's requests in order and no bank written twice in a cycle, the later phase ``d`` cycles
    after the earlier (both as every request of the phase)."""
    pairs = [(earlier.writes, later.reads), (earlier.writes, later.writes), (earlier.reads, later.writes)]
    for first, second in pairs:
        for buf, (keys, times, *_) in first.items():
            if buf not in second:
                continue
            lkeys, ltimes = second[buf][0], second[buf][1]
            for key in np.intersect1d(keys, lkeys):
                if ltimes[lkeys == key].min() + d <= times[keys == key].max():
                    return False
    return not overlap._write_clash(earlier, later, d)


def _exhaustive_starts(phases, memories, delayable: bool = False) -> list[int]:
    """Each phase's setup cycle by the rules of passes/overlap.py, searched over every request (``delayable``: the
    rules hold at every later setup too, up to the last write in flight: a side phase's wait may delay it)."""
    starts, done_at = [], []
    reqs = [_all_requests(ph, memories) if ph.kind == "stage" else None for ph in phases]
    for j, ph in enumerate(phases):
        if j == 0:
            starts.append(0)
        else:
            prev = phases[j - 1]
            low = starts[-1] + 1 + prev.iterations
            done = max(done_at)
            s = done
            if ph.kind == "stage" and prev.kind == "stage":
                s = next(c for c in range(low, done + 1)
                         if all(_fits(reqs[i], reqs[j], t - starts[i])
                                for t in range(c, done + 1 if delayable else c + 1)
                                for i in range(j) if reqs[i] is not None and starts[i] + phases[i].cycles > t))
            starts.append(s)
        done_at.append(starts[-1] + ph.cycles)
    return starts


def _kernels():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    y = torch.tensor([0, 1, 2, 0])
    yield "mlp", fx2fpga.compile(mlp, (torch.randn(4, 8),), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1),
                                 lanes=2)
    models = [copy.deepcopy(mlp) for _ in range(4)]
    yield "groups", fx2fpga.compile(models, (torch.randn(4, 8),), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1),
                                    lanes=2, model_lanes=2)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 5 * 5, 3))
    yield "cnn", fx2fpga.compile(cnn, (torch.randn(2, 1, 5, 5),), train=fx2fpga.SGD(F.cross_entropy, y[:2], lr=0.1),
                                 lanes=3)


@pytest.mark.parametrize("name", ["mlp", "groups", "cnn"])
def test_drains_are_the_earliest_starts_an_exhaustive_search_finds(name):
    design = dict(_kernels())[name]
    s = schedule.run(design.kernel, side=False)  # one stream (the side stream: test_streams.py)
    overlapped = 0
    for cmd, phases in s.commands.items():
        starts = _exhaustive_starts(phases, s.memories)
        for j, ph in enumerate(phases[:-1]):
            assert ph.drain == starts[j + 1] - starts[j] - 1 - ph.iterations, (cmd, ph.name)
            assert 0 <= ph.drain_cycles
            overlapped += ph.drain_cycles < ph.write_delay
        last = phases[-1]  # the command ends when every write has landed
        ends = [st + p.cycles for st, p in zip(starts, phases, strict=True)]
        assert starts[-1] + last.advance == max(ends), cmd
    assert overlapped >= 3  # the kernel gains from it at all
    assert s.call_cycles("train_step") < 1 + sum(p.cycles * p.groups for p in s.commands["train_step"])


def test_a_reader_of_the_last_write_waits_for_it_and_transfers_are_barriers():
    design = dict(_kernels())["mlp"]
    s = schedule.run(design.kernel, side=False)
    phases = s.commands["train_step"]
    waits = 0
    for ph, nxt in zip(phases, phases[1:], strict=False):
        if ph.kind != "stage" or nxt.kind != "stage":
            assert ph.drain_cycles >= ph.write_delay, ph.name  # a transfer waits for every write in flight
            continue
        tail = schedule.phase_requests(ph, s.memories, np.array([ph.iterations - 1]))
        head = schedule.phase_requests(nxt, s.memories, np.array([0]))
        if any(np.intersect1d(w[0], head.reads[b][0]).size for b, w in tail.writes.items() if b in head.reads):
            # its first read 1 + RAM_TAP cycles after its setup, one after the last write: drain = delay - 3
            assert ph.drain_cycles == ph.write_delay - schedule.RAM_TAP - 1, ph.name
            waits += 1
    assert waits >= 1


@pytest.mark.parametrize("name", ["mlp", "groups"])
def test_side_stream_drains_are_the_earliest_starts_that_stay_safe_after_a_wait(name):
    """The side stream overlaps its phases too (session 29): each side phase sets up, in the side stream's order, as
    early as the rules allow at that offset and at every later one (its wait for a main phase may delay its first
    issue past the planned setup, and a write clash is not monotone in the offset); the last one drains every write
    (the pass ends when the side stream is idle)."""
    design = dict(_kernels())[name]
    phases = design.schedule.commands["train_step"]
    side = [phases[i] for i in streams.side_order(phases)]
    assert len(side) >= 4
    starts = _exhaustive_starts(side, design.schedule.memories, delayable=True)
    for j, ph in enumerate(side[:-1]):
        assert ph.drain == starts[j + 1] - starts[j] - 1 - ph.iterations, ph.name
    ends = [st + p.cycles for st, p in zip(starts, side, strict=True)]
    assert starts[-1] + side[-1].advance == max(ends)
    assert sum(ph.drain_cycles < ph.write_delay for ph in side[:-1]) >= 2  # it gains at all
