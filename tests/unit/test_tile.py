"""Lanes: a number per matmul stage, or 'auto' under the target's budget; results never change."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

import fx2fpga
from fx2fpga.passes import estimate
from fx2fpga.passes.tile import AUTO_BUDGET, lane_count


def test_lane_count_divides_the_extent():
    assert [lane_count(10, r) for r in (1, 2, 3, 4, 5, 6, 16)] == [1, 2, 2, 2, 5, 5, 10]
    assert lane_count(64, 32) == 32 and lane_count(7, 4) == 1


def test_auto_lanes_on_an_ecp5_fill_the_estimate_and_keep_results(mlp_example, digits_data):
    """Without a calibrated RTL model for the target (ECP5), "auto" widens the slowest stage while the
    estimate fits."""
    x_train, y_train, x_test, _ = digits_data
    sgd = fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, 0.1)
    fixed = fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd, lanes=4, target="ulx3s")
    auto = fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd, lanes="auto", target="ulx3s")
    assert auto.context.exploration is None
    target = auto.target
    res = estimate.resources(auto.kernel, target)
    assert res.dsp <= AUTO_BUDGET * target.dsp and res.bram36 <= AUTO_BUDGET * target.bram36
    assert res.dsp > 0.75 * AUTO_BUDGET * target.dsp  # it widened until the estimate was nearly full
    assert estimate.program_cycles(auto.kernel, "train_step") < 0.8 * estimate.program_cycles(fixed.kernel,
                                                                                               "train_step")
    for s in auto.kernel.stages():
        if s.lanes > 1:
            extent = next(lp.extent for lp in s.loops if lp.var == s.lane_var)
            assert extent % s.lanes == 0 and s.op != "argmax"
    assert {s.op for s in auto.kernel.stages() if s.lanes > 1} >= {"mac", "eq", "sum"}  # not only matmuls
    a, b = fixed.load("emu"), auto.load("emu")
    for xb, yb in mlp_example.batches(x_train, y_train, 5):
        assert a.train_step(xb, yb) == b.train_step(xb, yb)
    assert np.array_equal(a.infer(x_test[:16]), b.infer(x_test[:16]))


def test_bad_lanes_are_refused():
    import torch

    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        fx2fpga.compile(torch.nn.Linear(4, 2), (torch.randn(1, 4),), lanes=0)
