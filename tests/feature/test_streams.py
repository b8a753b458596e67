"""passes/streams.py and the controller's side stream: elementwise and reduction phases run on a second set of
counters beside the main phases they share no memory with. Verilator equals the emulator bit for bit, its
cycles equal the two-stream model, and that model is shorter than one stream; the assignment keeps its rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.ops import OPS_TABLE
from torch import nn

import fx2fpga
from fx2fpga.passes import schedule, streams

pytestmark = pytest.mark.slow


def _mlp(hidden: int = 12):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 4))


X = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 2, 3, 1, 0])


@pytest.fixture(scope="module")
def designs(tmp_path_factory):
    """One MLP at 2 lanes, and 4 MLPs in 2 model groups, with their RTL."""
    out = {}
    one = fx2fpga.compile(_mlp(), (X,), train=fx2fpga.SGD(F.cross_entropy, Y, lr=0.1), lanes=2)
    out["one"] = one
    models = [_mlp() for _ in range(4)]
    for k, m in enumerate(models):
        with torch.no_grad():
            m[0].weight.mul_(1 + 0.1 * k)
    out["groups"] = fx2fpga.compile(models, (X,), train=fx2fpga.SGD(F.cross_entropy, Y, lr=[0.05, 0.1, 0.15, 0.2]),
                                    lanes=2, model_lanes=2)
    return out


@pytest.mark.parametrize("name", ["one", "groups"])
def test_verilator_equals_the_emulator_and_the_two_stream_model(designs, name):
    design = designs[name]
    phases = design.schedule.commands["train_step"]
    assert streams.has_side(phases)
    one_stream = schedule.run(design.kernel, side=False)
    assert design.schedule.call_cycles("train_step") < one_stream.call_cycles("train_step")
    emu, rtl = design.load("emu"), design.load("rtl")
    for _ in range(2):
        losses = [emu.train_step(X, Y), rtl.train_step(X, Y)]
        assert np.array_equal(np.asarray(losses[0]), np.asarray(losses[1]))
        assert rtl.backend.last_cycles == design.schedule.call_cycles("train_step")
    a, b = emu.get_params(), rtl.get_params()
    for pa, pb in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b], strict=True):
        for n in pa:
            assert np.array_equal(np.asarray(pa[n]), np.asarray(pb[n])), n
    assert np.array_equal(np.asarray(emu.infer(X)), np.asarray(rtl.infer(X)))


@pytest.mark.parametrize("name", ["one", "groups"])
def test_side_phases_keep_the_rules(designs, name):
    design = designs[name]
    s = design.schedule
    free = streams.free_buffers(s.memories, s.commands)
    for phases in s.commands.values():
        for i, ph in enumerate(phases):
            if ph.stream == streams.MAIN:
                if ph.wait is not None:  # it waits for a side phase that touches its buffers
                    assert phases[ph.wait].stream == streams.SIDE
                    assert streams.buffers_of(phases[ph.wait], free) & streams.buffers_of(ph, free)
                continue
            # no multiply-accumulate (the MAC engine is the main stream's); an elementwise product multiplies alone
            assert not (OPS_TABLE[ph.stage.op].multiplies and OPS_TABLE[ph.stage.op].reduction) and not ph.streamed
            mine = streams.buffers_of(ph, free)
            # the main phases from its wait to the first main phase after it touching its buffers touch none
            consumer = next((j for j in range(i + 1, len(phases)) if phases[j].stream == streams.MAIN
                             and streams.buffers_of(phases[j], free) & mine), len(phases))
            start = -1 if ph.wait is None else ph.wait
            assert start < i < consumer
            beside = [j for j in range(start + 1, consumer) if phases[j].stream == streams.MAIN]
            assert beside and not any(streams.buffers_of(phases[j], free) & mine for j in beside)
            if consumer < len(phases):  # it waits for this side phase or one the side stream runs later
                assert phases[consumer].wait is not None and phases[phases[consumer].wait].side_rank >= ph.side_rank


@pytest.mark.parametrize("name", ["one", "groups"])
def test_a_wait_that_may_stall_makes_a_barrier(designs, name):
    """A main phase whose wait delays its first issue in the model sets up only after every write in flight (a
    stall must not meet a write of the phase before at one bank in one cycle)."""
    phases = designs[name].schedule.commands["train_step"]
    _, stalled = streams.timeline(phases)
    main = [ph for ph in phases if ph.stream == streams.MAIN]
    for j in stalled:
        assert phases[j].barrier
        prev = main[main.index(phases[j]) - 1]
        assert prev.drain_cycles >= prev.write_delay, prev.name
    assert streams.command_cycles(phases) == designs[name].schedule.call_cycles("train_step")
