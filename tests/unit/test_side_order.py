"""passes/side_order.py: stages the side stream may run move up, a multiply-accumulate is pulled in after them.
Every pair of stages touching one memory keeps its order (property test over random programs), the first stage
stays first, the emulator's results do not change, and the digits MLP's step gets shorter."""

from __future__ import annotations

import copy

import numpy as np
import torch.nn.functional as F
from fx2fpga_runtime.emulator import Emulator
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Access, Affine, Buffer, Kernel, Loop, Program, Stage
from hypothesis import given, settings
from hypothesis import strategies as st

import fx2fpga
from fx2fpga.passes import schedule, side_order

BUFFERS = [f"b{i}" for i in range(6)]


def _stage(i: int, op: str, out: str, ins: list[str]) -> Stage:
    index = (Affine.var("i"),)
    return Stage(f"s{i}", op, (Loop("i", 4),), Access(out, index), tuple(Access(b, index) for b in ins))


programs = st.lists(st.tuples(st.sampled_from(["add", "mac", "msub", "sum"]), st.sampled_from(BUFFERS),
                              st.lists(st.sampled_from(BUFFERS), min_size=1, max_size=3)), min_size=2, max_size=10)


@settings(max_examples=200, deadline=None)
@given(programs)
def test_no_two_stages_touching_one_memory_swap(spec):
    stages = [_stage(i, op, out, ins) for i, (op, out, ins) in enumerate(spec)]
    kernel = Kernel("k", {b: Buffer(b, (4,), Fixed(16, 4)) for b in BUFFERS},
                    {"p": Program("p", [], [], list(stages))}, [])
    got = side_order.ordered(stages, kernel)
    assert sorted(s.name for s in got) == sorted(s.name for s in stages) and got[0] is stages[0]
    where = {s.name: k for k, s in enumerate(got)}
    for a in range(len(stages)):
        for b in range(a + 1, len(stages)):
            if side_order.must_follow(stages[b], stages[a]):
                assert where[stages[a].name] < where[stages[b].name]


def test_the_digits_mlp_trains_the_same_in_fewer_cycles(mlp_example):
    sgd = fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, 0.1)
    design = fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd, lanes=4, outputs="rtl")
    ordered = design.kernel
    before = copy.deepcopy(fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd, lanes=4,
                                           until="share memory"))
    names = [s.name for s in ordered.programs["train_step"].stages]
    assert names != [s.name for s in before.programs["train_step"].stages]
    # the same stages and lanes in the lowering's order: the schedule as before this pass
    by_name = {s.name: s for s in ordered.programs["train_step"].stages}
    plain = copy.deepcopy(ordered)
    plain.programs["train_step"].stages = [copy.deepcopy(by_name[s.name])
                                           for s in before.programs["train_step"].stages]
    assert schedule.run(ordered).call_cycles("train_step") < schedule.run(plain).call_cycles("train_step")
    rng = np.random.default_rng(0)
    x = rng.integers(-2000, 2000, size=ordered.buffers["train_x"].shape)
    y = rng.integers(0, 10, size=ordered.buffers["train_y"].shape) << ordered.buffers["train_y"].fmt.frac_bits
    runs = []
    for k in (ordered, plain):
        emu = Emulator(k)
        for name in k.params:
            if k.buffers[name].init is not None:
                emu.write(name, np.array(k.buffers[name].init).reshape(k.buffers[name].shape))
        losses = [emu.run("train_step", {"train_x": x, "train_y": y})["train_loss"] for _ in range(3)]
        runs.append((losses, [emu.read(n) for n in k.params]))
    for a, b in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1], strict=True):
        assert np.array_equal(a, b)
