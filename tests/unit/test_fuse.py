"""passes/fuse.py: fused stages compute what the pairs they replace computed, bit for bit (the emulator on the
kernel before and after the pass), and only pairs linked by a temporary nothing else reads fuse."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from fx2fpga_runtime.emulator import Emulator
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
    assert len(ops) == len(before.programs["train_step"].stages) - ops.count("le_select") - ops.count("msub")

    rng = np.random.default_rng(0)
    emus = [Emulator(before), Emulator(after)]
    x_fmt, y_fmt = (before.buffers[n].fmt for n in before.programs["train_step"].inputs)
    for _ in range(4):
        raw = {"train_x": rng.integers(x_fmt.raw_min // 4, x_fmt.raw_max // 4, size=(6, 8)),
               "train_y": y_fmt.quantize(rng.integers(0, 3, size=6).astype(float))}
        got = [e.run("train_step", dict(raw)) for e in emus]
        assert got[0].keys() == got[1].keys()
        for name in got[0]:
            np.testing.assert_array_equal(got[0][name], got[1][name])
        for p in before.params:
            np.testing.assert_array_equal(emus[0].mem[p], emus[1].mem[p])
