"""Plain SGD's update folded into its gradient's reduction (``fx2fpga/lower/update_fold.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

import fx2fpga

SCALED = {"train_step_neg_lr_train_where_2": "train_where_2", "train_step_neg_lr_train_sub_2": "train_sub_2"}


@pytest.fixture(scope="module")
def folded(mlp_example):
    """The digits MLP, its temporaries in arrays of their own (the test reads them by name after a step)."""
    sgd = fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, mlp_example.lr)
    return fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd, share_memory=False)


def test_each_update_is_its_gradients_reduction_started_from_the_parameter(folded):
    k = folded.kernel
    stages = k.programs["train_step"].stages
    updates = {s.out.buffer: s for s in stages if s.out.buffer in k.params}
    assert {p: s.op for p, s in updates.items()} == {"fc1_weight": "mac", "fc1_bias": "sum", "fc2_weight": "mac",
                                                     "fc2_bias": "sum"}
    for s in updates.values():
        assert s.ins[-1] == s.out  # in place: the parameter is the accumulator's initial value
        assert s.ins[0].buffer in SCALED  # one operand is -lr times the layer's output gradient
    # one scaling per layer serves its weight and its bias: 16 x 32 and 16 x 10 values, not 32 x 64 and 10 x 32
    scalings = [s for s in stages if s.out.buffer in SCALED]
    assert sorted((s.op, s.ins[1].buffer, s.ins[2].buffer) for s in scalings) == [
        ("msub", "train_sub_2", "lr"), ("msub", "train_where_2", "lr")]
    assert not [b for b, buf in k.buffers.items() if buf.role == "temp" and buf.shape in ((32, 64), (10, 32))]
    # the scaled operand holds what its source's format times the learning rate register can hold
    lr = k.buffers["lr"].fmt
    for scaled, source in SCALED.items():
        src = k.buffers[source].fmt
        assert (k.buffers[scaled].fmt.width, k.buffers[scaled].fmt.int_bits) == (src.width,
                                                                                  src.int_bits + lr.int_bits - 1)


def test_one_step_is_the_exact_sum_rounded_once_and_within_its_roundings_of_sgd(folded, mlp_example, digits_data):
    """After a step: fc1's weights are round(w + sum_k s[k, i] x[k, j]) of the kernel's own values, bit for bit, and
    that is w - lr * sum_k g[k, i] x[k, j] (g: the output gradient) within half an ulp of the weight plus the
    scaling's rounding carried through the sum."""
    k = folded.kernel
    x_train, y_train, _, _ = digits_data
    emu = folded.load("emu")
    w0 = emu.get_params()["fc1.weight"]
    emu.train_step(x_train[:16], y_train[:16])
    mem = emu.backend.emulator.mem
    w1 = emu.get_params()["fc1.weight"]
    fw, fs, fx = (k.buffers[b].fmt for b in ("fc1_weight", "train_step_neg_lr_train_where_2", "train_x"))
    s, x = (np.asarray(mem[b], dtype=np.int64) for b in ("train_step_neg_lr_train_where_2", "train_x"))
    exact = (fw.quantize(w0).astype(np.int64) << (fs.frac_bits + fx.frac_bits - fw.frac_bits)) + s.T @ x
    assert np.array_equal(fw.quantize(w1), fw.quantize(np.ldexp(exact.astype(np.float64),
                                                                -(fs.frac_bits + fx.frac_bits))))
    g = k.buffers["train_where_2"].fmt.to_float(mem["train_where_2"])
    lr = k.buffers["lr"].fmt.to_float(k.buffers["lr"].init[0])
    sgd = w0 - lr * (g.T @ fx.to_float(x))
    bound = fw.ulp / 2 + np.abs(fx.to_float(x)).sum(axis=0)[None, :] * fs.ulp / 2
    assert np.all(np.abs(w1 - sgd) <= bound)
    assert np.abs(w1 - w0).max() > 100 * bound.max()  # the step is large enough for the bound to bite


@pytest.mark.parametrize("setting", [{"momentum": 0.9}, {"weight_decay": 1e-3}])
def test_sgd_that_reads_its_gradient_again_keeps_it(mlp_example, setting):
    """Momentum and weight decay read the gradient (or the weight) again: their updates stay as they were."""
    sgd = fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, mlp_example.lr, **setting)
    k = fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd, until="fuse")
    updates = [s for s in k.programs["train_step"].stages if s.out.buffer in k.params and s.out.buffer != "lr"]
    assert updates and not [s for s in updates if s.reduce]
    assert "train_mm_2" in k.buffers  # fc1's weight gradient, in its own buffer


def test_the_folded_kernel_trains_as_well_as_the_unfolded(mlp_example, digits_data):
    """300 steps of the digits MLP in emu, folded and not: held-out accuracy within a point of each other."""
    x_train, y_train, x_test, y_test = digits_data
    sgd = fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, mlp_example.lr)
    accuracy = {}
    for fold in (True, False):
        emu = fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd, fold_updates=fold).load("emu")
        for xb, yb in mlp_example.batches(x_train, y_train, 300):
            emu.train_step(xb, yb)
        accuracy[fold] = mlp_example.accuracy(emu.infer, x_test, y_test)
    assert accuracy[True] > 0.9 and abs(accuracy[True] - accuracy[False]) <= 0.01, accuracy
