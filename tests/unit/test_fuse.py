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


def test_relus_backward_compare_select_and_the_mac_before_become_one_stage_with_the_same_numbers():
    before = _quantized_mlp()
    after = fuse.run(copy.deepcopy(before))
    stages = after.programs["train_step"].stages
    ops = [st.op for st in stages]
    # where(h <= 0, 0, g @ w): the comparison and its select fuse (le_select), which then fuses with the mac
    # producing g @ w: one stage, no mask, no unmasked gradient
    assert "le_select" not in ops and "le" not in ops
    compare = next(st for st in before.programs["train_step"].stages if st.op == "le")
    select = next(st for st in before.programs["train_step"].stages if st.op == "select"
                  and st.ins[0].buffer == compare.out.buffer)
    mac = next(st for st in before.programs["train_step"].stages if st.out.buffer == select.ins[2].buffer)
    fused = next(st for st in stages if st.name == mac.name)
    assert fused.attrs == {"then": "relu_mask"} and fused.out == select.out
    assert fused.ins == (*mac.ins, compare.ins[0])  # the gate h, read at the result's point
    assert compare.out.buffer not in after.buffers and mac.out.buffer not in after.buffers
    assert mac.name in after.meta["fused_decisions"] and select.name not in after.meta["fused_decisions"]
    # eq's one-hot mask is read by two selects: it stays
    assert "eq" in ops and sum(op == "select" for op in ops) == 2
    assert ops.count("msub") >= 2  # p - lr * g, where the update was not folded into the gradient's reduction
    relu_macs = [st for st in stages if st.attrs.get("then") in ("relu", "relu_mask")]
    # each fusion takes a stage: the comparison, the products subtracted, the select and the ReLU into their macs
    assert len(ops) == len(before.programs["train_step"].stages) - 1 - ops.count("msub") - len(relu_macs)
    _assert_same_numbers(before, after)


def test_relus_backward_stays_a_stage_where_its_format_is_not_the_macs():
    k = _quantized_mlp()
    compare = next(st for st in k.programs["train_step"].stages if st.op == "le")
    select = next(st for st in k.programs["train_step"].stages if st.op == "select"
                  and st.ins[0].buffer == compare.out.buffer)
    k.buffers[select.out.buffer].fmt = Fixed.parse("fixed<12,4>")
    stages = fuse.run(copy.deepcopy(k)).programs["train_step"].stages
    assert [st.op for st in stages].count("le_select") == 1
    assert not any(st.attrs.get("then") == "relu_mask" for st in stages)


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
