"""The digits MLP end to end: csim == emu bit for bit; emu vs PyTorch float within derived bounds."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.fixed import Fixed

import fx2fpga

from ..conftest import float_params

pytestmark = pytest.mark.slow


def _train_float(model, x, y, steps: int = 200, lr: float = 0.1, batch: int = 16):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rng = np.random.default_rng(5)
    for _ in range(steps):
        idx = rng.choice(len(x), batch, replace=False)
        opt.zero_grad()
        F.cross_entropy(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx])).backward()
        opt.step()
    return model


def layer_error_bounds(model, x: np.ndarray, act: Fixed, weight: Fixed) -> tuple[float, float]:
    """First-order bound on |emu - float| of the MLP's logits, from the formats.

    Each quantization (inputs, weights, biases, layer outputs) contributes half an ulp of
    its format, propagated through the layers by the absolute weights (ReLU is 1-Lipschitz);
    the accumulators are exact (products at full precision).
    """
    w1, b1 = model.fc1.weight.detach().double().numpy(), model.fc1.bias.detach().double().numpy()
    w2 = model.fc2.weight.detach().double().numpy()
    ha, hw = act.ulp / 2, weight.ulp / 2
    h1 = np.maximum(x @ w1.T + b1, 0)
    d1 = np.abs(w1).sum(1) * ha + np.abs(x).sum(1, keepdims=True) * hw + hw + ha
    d2 = d1 @ np.abs(w2).T + np.abs(h1).sum(1, keepdims=True) * hw + hw + ha
    return float(d1.max()), float(d2.max())


def logit_error_bound(model, x: np.ndarray, act: Fixed, weight: Fixed) -> float:
    return layer_error_bounds(model, x, act, weight)[1]


def test_inference_csim_equals_emu_and_classes_match_float(mlp_example, digits_data, tmp_path):
    """200 digits at fixed<16,6>: csim == emu bit for bit; >= 98% same class as float."""
    x_train, y_train, x_test, _ = digits_data
    torch.manual_seed(1)
    model = _train_float(mlp_example.DigitsMLP(), x_train, y_train)
    batch = 40
    design = fx2fpga.compile(model, (torch.from_numpy(x_test[:batch]),), precision="fixed<16,6>",
                             out_dir=tmp_path / "infer")
    x = x_test[:200]
    with design.load("emu") as emu, design.load("csim") as csim:
        raw_emu = [emu.call_raw("infer", emu._quantize_inputs("infer", [x[i:i + batch]]))
                   for i in range(0, 200, batch)]
        raw_csim = [csim.call_raw("infer", csim._quantize_inputs("infer", [x[i:i + batch]]))
                    for i in range(0, 200, batch)]
        out_emu = np.concatenate([emu.infer(x[i:i + batch]) for i in range(0, 200, batch)])
    for a, b in zip(raw_emu, raw_csim, strict=True):
        assert np.array_equal(a["infer_output"], b["infer_output"])
    ref = model(torch.from_numpy(x)).detach().numpy()
    agree = np.mean(np.argmax(out_emu, 1) == np.argmax(ref, 1))
    assert agree >= 0.98, agree
    bound = logit_error_bound(model, x, Fixed(16, 6), Fixed(16, 6))
    assert np.abs(out_emu - ref).max() <= bound


def test_one_training_step_bit_exact_and_within_bounds(mlp_train_design, mlp_train_csim, digits_data):
    model, design = mlp_train_design
    x_train, y_train, _, _ = digits_data
    x, y = x_train[16:32], y_train[16:32]
    init = float_params(model)
    emu = design.load("emu")
    emu.set_params(init)
    mlp_train_csim.set_params(init)
    loss_emu = emu.train_step(x, y)
    loss_csim = mlp_train_csim.train_step(x, y)
    assert loss_emu == loss_csim
    p_emu, p_csim = emu.get_params_raw(), mlp_train_csim.get_params_raw()
    for name in p_emu:
        assert np.array_equal(p_emu[name], p_csim[name]), name

    # float reference of the same step
    ref = copy.deepcopy(model)
    loss = F.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    prec = design.precision
    dh, dz = layer_error_bounds(model, x, prec.activation, prec.weight)
    # cross-entropy is 2-Lipschitz in the logits (max norm); the exp/log tables add at most
    # their interpolation error plus one output ulp per value, over the 10 classes
    table_err = 10 * 2 * prec.activation.ulp
    assert abs(loss_emu - loss.item()) <= 2 * dz + table_err + prec.activation.ulp
    # dL/dlogits = (softmax - onehot) / B: softmax moves at most by e^(2dz+table)-1 per class
    b = len(x)
    d_delta = (np.expm1(2 * dz + table_err) + prec.gradient.ulp) / b
    h1 = torch.relu(model.fc1(torch.from_numpy(x))).detach().double().numpy()
    got = emu.get_params()
    lr = design.train.lr
    for name, p in ref.named_parameters():
        new = (p - lr * p.grad).detach().double().numpy()
        if name == "fc2.weight":
            dg = d_delta * np.abs(h1).sum(0).max() + dh  # sum_b |delta_b| <= 1 times the error of h
        elif name == "fc2.bias":
            dg = d_delta * b
        else:  # back through W2 and the ReLU mask to the first layer
            w2 = np.abs(model.fc2.weight.detach().double().numpy()).sum(0).max()
            xsum = np.abs(x).sum(0).max() if name == "fc1.weight" else b
            dg = d_delta * w2 * xsum + prec.gradient.ulp * xsum
        bound = prec.weight.ulp + lr * dg + prec.gradient.ulp
        assert np.abs(got[name] - new).max() <= bound, (name, np.abs(got[name] - new).max(), bound)


def _float_training(model, batches, lr):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for xb, yb in batches:
        opt.zero_grad()
        F.cross_entropy(model(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
        opt.step()
    return model


def test_300_steps_emu_and_csim_match_float_accuracy(mlp_example, mlp_train_design, mlp_train_csim, digits_data):
    model, design = mlp_train_design
    x_train, y_train, x_test, y_test = digits_data
    batches = list(mlp_example.batches(x_train, y_train, 300))
    init = float_params(model)
    emu = design.load("emu")
    for runner in (emu, mlp_train_csim):
        runner.set_params(init)
        for xb, yb in batches:
            runner.train_step(xb, yb)
    p_emu, p_csim = emu.get_params_raw(), mlp_train_csim.get_params_raw()
    for name in p_emu:  # the whole trajectory is bit-exact
        assert np.array_equal(p_emu[name], p_csim[name]), name
    acc_emu = mlp_example.accuracy(emu.infer, x_test, y_test)
    acc_csim = mlp_example.accuracy(mlp_train_csim.infer, x_test, y_test)
    ref = _float_training(copy.deepcopy(model), batches, design.train.lr)
    acc_float = mlp_example.accuracy(lambda xb: ref(torch.from_numpy(xb)).detach().numpy(), x_test, y_test)
    assert acc_emu == acc_csim
    assert acc_float > 0.85
    assert abs(acc_emu - acc_float) <= 0.03, (acc_emu, acc_float)


class Regressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 16)
        self.fc2 = torch.nn.Linear(16, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_mse_regression_trains_like_float():
    """An MSE model: 300 emu steps reach a loss within 20% (+0.002) of float training."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (512, 4)).astype(np.float32)
    y = (np.sin(2 * x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]).astype(np.float32)
    torch.manual_seed(0)
    model = Regressor()
    design = fx2fpga.compile(model, (torch.from_numpy(x[:32]),),
                             train=fx2fpga.SGD(F.mse_loss, torch.from_numpy(y[:32]), lr=0.1))
    emu = design.load("emu")
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    first = None
    for _ in range(300):
        idx = rng.choice(512, 32, replace=False)
        loss = emu.train_step(x[idx], y[idx])
        first = first if first is not None else loss
        opt.zero_grad()
        F.mse_loss(ref(torch.from_numpy(x[idx])), torch.from_numpy(y[idx])).backward()
        opt.step()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    float_mse = F.mse_loss(ref(xt), yt).item()
    out = np.concatenate([emu.infer(x[i:i + 32]) for i in range(0, 512, 32)])
    emu_mse = float(np.mean((out - y) ** 2))
    assert emu_mse < 0.5 * first
    assert emu_mse <= 1.2 * float_mse + 0.002, (emu_mse, float_mse)
