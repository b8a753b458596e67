"""passes/fuse.py: fused stages compute what the pairs they replace computed, bit for bit (the emulator on the
kernel before and after the pass), and only pairs linked by a temporary nothing else reads fuse."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from fx2fpga_runtime.emulator import Emulator
from fx2fpga_runtime.fixed import Fixed
from torch import nn

import fx2fpga
from fx2fpga.passes import fuse


def _quantized_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    y = torch.tensor([0, 1, 2, 0, 2, 1])
    return fx2fpga.compile(model, (torch.randn(6, 8),), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1),
                           until="quantize")


def test_relus_backward_compare_and_select_become_one_stage_with_the_same_numbers():
    before = _quantized_mlp()
    after = fuse.run(copy.deepcopy(before))
    ops = [st.op for st in after.programs["train_step"].stages]
    assert "le_select" in ops and "le" not in ops  # where(h <= 0, 0, g): one stage, no mask
    fused = next(st for st in after.programs["train_step"].stages if st.op == "le_select")
    compare = next(st for st in before.programs["train_step"].stages if st.op == "le")
    assert compare.out.buffer not in after.buffers and fused.ins[:2] == compare.ins
    # eq's one-hot mask is read by two selects: it stays
    assert "eq" in ops and sum(op == "select" for op in ops) == 2
    assert ops.count("msub") >= 2  # p - lr * g, where the update was not folded into the gradient's reduction
    relu_macs = [st for st in after.programs["train_step"].stages if st.attrs.get("then") == "relu"]
    assert len(ops) == (len(before.programs["train_step"].stages) - ops.count("le_select") - ops.count("msub")
                        - len(relu_macs))
    _assert_same_numbers(before, after)


def test_a_linear_layer_and_its_relu_become_one_stage_with_the_same_numbers():
    before = _quantized_mlp()
    after = fuse.run(copy.deepcopy(before))
    for prog in ("infer", "train_step"):
        was = [st.op for st in before.programs[prog].stages]
        stages = after.programs[prog].stages
        assert was.count("relu") == 1 and [st.op for st in stages].count("relu") == 0
        relu = next(st for st in before.programs[prog].stages if st.op == "relu")
        mac = next(st for st in before.programs[prog].stages if st.out.buffer == relu.ins[0].buffer)
        fused = next(st for st in stages if st.name == mac.name)
        assert fused.op == "mac" and fused.attrs == {"then": "relu"} and fused.out == relu.out
        assert mac.out.buffer not in after.buffers  # the pre-activation is never stored
    _assert_same_numbers(before, after)


def test_a_relu_in_another_format_than_its_linear_layer_stays_a_stage():
    k = _quantized_mlp()
    relu = next(st for st in k.programs["infer"].stages if st.op == "relu")
    k.buffers[relu.out.buffer].fmt = Fixed.parse("fixed<12,4>")  # its assignment would round: not fused
    after = fuse.run(copy.deepcopy(k))
    assert [st.op for st in after.programs["infer"].stages].count("relu") == 1
    assert [st.op for st in after.programs["train_step"].stages].count("relu") == 0


def _assert_same_numbers(before, after):
    """Both kernels' emulators (the fused one's fast path and its reference) give the same outputs and parameters
    over 4 training steps, and the same inference after each."""
    rng = np.random.default_rng(0)
    emus = [Emulator(before), Emulator(after), Emulator(after, fast=False)]
    x_fmt, y_fmt = (before.buffers[n].fmt for n in before.programs["train_step"].inputs)
    for _ in range(4):
        raw = {"train_x": rng.integers(x_fmt.raw_min // 4, x_fmt.raw_max // 4, size=(6, 8)),
               "train_y": y_fmt.quantize(rng.integers(0, 3, size=6).astype(float))}
        for prog, inputs in (("train_step", raw), ("infer", {before.programs["infer"].inputs[0]: raw["train_x"]})):
            got = [e.run(prog, dict(inputs)) for e in emus]
            for other in got[1:]:
                assert got[0].keys() == other.keys()
                for name in got[0]:
                    np.testing.assert_array_equal(got[0][name], other[name])
        for p in before.params:
            for e in emus[1:]:
                np.testing.assert_array_equal(emus[0].mem[p], e.mem[p])
