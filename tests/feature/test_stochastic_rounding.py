"""Issue 16, item 4's must-show: stochastic rounding trains the digits MLP at 8-bit weights within 3 accuracy points
of PyTorch float training, and at 16-bit weights, activations and gradients within 1 point, where round-to-nearest
at 8-bit weights stalls (its updates round to 0). Same initialisation, batches and lr as float; 300 SGD steps in
the emulator (measured: float 0.926; 8-bit SR 0.935, RND 0.179; 16-bit SR 0.924)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import fx2fpga

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # the 8-bit formats' quantization warnings

STEPS = 300
WEIGHT8_SR = {"weight": "fixed<8,2,SR,SAT>"}
WEIGHT8_RND = {"weight": "fixed<8,2>"}
ALL16_SR = {"weight": "fixed<16,4,SR,SAT>", "activation": "fixed<16,6>", "gradient": "fixed<16,4,SR,SAT>"}


@pytest.fixture(scope="module")
def run(mlp_example, digits_data):
    """``run(precision)``: held-out accuracy after STEPS steps (``None``: PyTorch float32, torch.optim.SGD)."""
    ex = mlp_example
    x_train, y_train, x_test, y_test = digits_data
    torch.manual_seed(0)
    start = ex.DigitsMLP()

    def train(precision) -> float:
        model = copy.deepcopy(start)
        if precision is None:
            opt = torch.optim.SGD(model.parameters(), lr=ex.lr)
            for xb, yb in ex.batches(x_train, y_train, STEPS):
                opt.zero_grad()
                F.cross_entropy(model(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
                opt.step()
            return ex.accuracy(lambda xb: model(torch.from_numpy(xb)).detach().numpy(), x_test, y_test)
        design = fx2fpga.compile(model, ex.example_inputs, target="pynq-z1", precision=precision,
                                 train=fx2fpga.SGD(ex.loss_fn, ex.example_targets, lr=ex.lr))
        kernel = design.load("emu")
        for xb, yb in ex.batches(x_train, y_train, STEPS):
            kernel.train_step(xb, yb)
        return ex.accuracy(kernel.infer, x_test, y_test)

    return train


@pytest.fixture(scope="module")
def float_accuracy(run):
    return run(None)


def test_8_bit_weights_with_sr_train_within_3_points_of_float(run, float_accuracy):
    assert float_accuracy > 0.9
    assert abs(run(WEIGHT8_SR) - float_accuracy) <= 0.03


def test_16_bit_formats_with_sr_train_within_1_point_of_float(run, float_accuracy):
    assert abs(run(ALL16_SR) - float_accuracy) <= 0.01


def test_8_bit_weights_rounding_to_nearest_do_not_train(run, float_accuracy):
    """The same format rounding to nearest: the updates (lr * gradient, mostly under half an ulp) vanish."""
    rnd = run(WEIGHT8_RND)
    assert rnd < float_accuracy - 0.3
    assert rnd < run(WEIGHT8_SR) - 0.3
