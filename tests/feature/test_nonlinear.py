"""Sigmoid, tanh, softmax, log_softmax, nll, sin/cos and division on chip: emu vs PyTorch float
within bounds derived from the formats (``error_bounds.propagate``), csim == emu bit for bit,
and the clear error for what is not supported."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.fixed import Fixed
from torch import nn

import fx2fpga
from fx2fpga.errors import TraceError, UnsupportedOpError

from ..error_bounds import model_params, propagate

ACTIVATIONS = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softmax": lambda z: F.softmax(z, dim=1),
    "log_softmax": lambda z: F.log_softmax(z, dim=1),
}


class Head(nn.Module):
    """Linear(4, 3) then one activation (or any function of the layer's output)."""

    def __init__(self, act):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.act = act

    def forward(self, x):
        return self.act(self.fc(x))


class AllOps(nn.Module):
    """Every function of this file in one kernel."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.sigmoid(self.fc1(x))
        h = torch.tanh(self.fc2(h)) + 0.25 * torch.cos(3 * h[:, :6])
        return F.log_softmax(self.fc3(F.softmax(h, dim=1)), dim=1)


def on_grid(t: torch.Tensor, fmt: Fixed) -> torch.Tensor:
    """``t`` rounded to ``fmt``: values the fixed-point side holds exactly."""
    return torch.from_numpy(fmt.to_float(fmt.quantize(t.detach().double().numpy()))).to(t.dtype)


def _problem(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = Head(ACTIVATIONS[name])
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(on_grid(p, Fixed(24, 8)))  # the default weight format
    x = on_grid(torch.randn(8, 4) * 1.5, Fixed(16, 6))
    if name == "log_softmax":
        y, loss = torch.tensor([0, 1, 2, 1, 0, 2, 2, 1]), F.nll_loss
    else:
        y, loss = on_grid(torch.rand(8, 3), Fixed(16, 6)), F.mse_loss
    return model, x, y, loss


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_forward_and_one_training_step_within_derived_bounds(name):
    model, x, y, loss_fn = _problem(name)
    lr = 0.5
    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(loss_fn, y, lr=lr))
    k = design.kernel
    ref = copy.deepcopy(model).double()
    params = model_params(k, ref)
    emu = design.load("emu")

    infer = k.programs["infer"]
    _, err = propagate(k, "infer", {**params, infer.inputs[0]: x.double().numpy()})
    got, want = emu.infer(x.numpy()), ref(x.double()).detach().numpy()
    bound = err[infer.outputs[0]]
    assert np.all(np.abs(got - want) <= bound + 1e-12), (np.abs(got - want).max(), bound.max())
    assert bound.max() < 0.02  # the bound itself is tight enough to mean something

    step = k.programs["train_step"]
    vals, err = propagate(k, "train_step", {**params, step.inputs[0]: x.double().numpy(),
                                            step.inputs[1]: y.double().numpy()})
    loss = emu.train_step(x.numpy(), y.numpy())
    ref_loss = loss_fn(ref(x.double()), y if name == "log_softmax" else y.double())
    ref_loss.backward()
    assert abs(loss - ref_loss.item()) <= err[step.outputs[0]] + 1e-12
    new = emu.get_params()
    for b in params:
        p = ref.get_parameter(k.param_names[b])
        expected = (p - lr * p.grad).detach().numpy()
        assert np.all(np.abs(new[k.param_names[b]] - expected) <= err[b] + 1e-12), k.param_names[b]
        assert np.abs(vals[b] - expected).max() < 1e-6  # PyTorch's values, but for rounded constants
        # the step moves the parameter by more than the error bound: the comparison has teeth
        assert np.abs(expected - p.detach().numpy()).max() > 3 * err[b].max(), k.param_names[b]


def test_nll_loss_is_lowered_by_our_decomposition():
    """F.nll_loss on log-probabilities: a one-hot select times -1/N, no division, no ignore_index count."""
    model, x, y, _ = _problem("log_softmax")
    gm = fx2fpga.trace(model, (x,), fx2fpga.SGD(F.nll_loss, y))
    ops = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert "aten.nll_loss_forward.default" not in ops and "aten.eq.Tensor" in ops
    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.nll_loss, y, lr=0.1))
    loss = design.load("emu").train_step(x.numpy(), y.numpy())
    assert abs(loss - F.nll_loss(model(x), y).item()) < 2e-3


@pytest.mark.parametrize("fn", [torch.sin, torch.cos])
def test_sin_cos_over_many_periods(fn):
    """Range reduction k = round(x / 2pi), r = x - 2pi k, then the table: within 2.5 ulp anywhere."""
    x = on_grid(torch.linspace(-30.0, 30.0, 997), Fixed(16, 6))
    design = fx2fpga.compile(fn, (x,))
    k = design.kernel
    got = design.load("emu").infer(x.numpy())
    want = fn(x.double()).numpy()
    _, err = propagate(k, "infer", {k.programs["infer"].inputs[0]: x.double().numpy()})
    bound = err[k.programs["infer"].outputs[0]]
    assert np.all(np.abs(got - want) <= bound)
    ulp = k.buffers[k.programs["infer"].outputs[0]].fmt.ulp
    assert bound.max() <= 2.5 * ulp and np.abs(got - want).max() <= 1.5 * ulp, np.abs(got - want).max() / ulp


def test_division_by_a_tensor_on_chip():
    """a / b = a * reciprocal(b); the table covers [min(b) / 2, b's format max] of the example."""
    def ratio(x):
        return x / (x * x + 0.5)

    x = on_grid(torch.linspace(-4.0, 4.0, 301), Fixed(16, 6))
    design = fx2fpga.compile(ratio, (x,))
    k = design.kernel
    table = next(s for s in k.programs["infer"].stages if s.attrs.get("fn") == "reciprocal")
    assert table.attrs["x_min"] == pytest.approx(0.25, rel=1e-3)  # min of x*x + 0.5 is 0.5
    got = design.load("emu").infer(x.numpy())
    _, err = propagate(k, "infer", {k.programs["infer"].inputs[0]: x.double().numpy()})
    bound = err[k.programs["infer"].outputs[0]]
    assert np.all(np.abs(got - ratio(x.double()).numpy()) <= bound)
    assert bound.max() < 0.01


def test_all_ops_kernel_csim_equals_emu(tmp_path):
    """sigmoid, tanh, cos, softmax (with its division), log_softmax and nll in one kernel: csim == emu."""
    torch.manual_seed(3)
    model = AllOps()
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 1, 0, 2, 2, 1])
    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.nll_loss, y, lr=0.5), out_dir=tmp_path / "allops")
    fns = {s.attrs.get("fn") for s in design.kernel.stages() if s.op == "table"}
    assert {"sigmoid", "tanh", "cos", "sin", "exp", "log", "reciprocal"} <= fns
    emu, csim = design.load("emu"), design.load("csim")
    try:
        for runner in (emu, csim):
            runner.last = [runner.call_raw("infer", runner._quantize_inputs("infer", [x.numpy()]))]
            for _ in range(3):
                runner.last.append(runner.call_raw("train_step", runner._quantize_inputs(
                    "train_step", [x.numpy(), y.numpy()])))
            runner.last.append(runner.get_params_raw())
        for a, b in zip(emu.last, csim.last, strict=True):
            assert a.keys() == b.keys()
            for name in a:
                assert np.array_equal(a[name], b[name]), name
        ref = copy.deepcopy(model)
        opt = torch.optim.SGD(ref.parameters(), lr=0.5)
        for _ in range(3):
            opt.zero_grad()
            F.nll_loss(ref(x), y).backward()
            opt.step()
        last_loss = float(design.kernel.buffers[design.kernel.programs["train_step"].outputs[0]].fmt.to_float(
            emu.last[3][design.kernel.programs["train_step"].outputs[0]]))
        assert abs(last_loss - F.nll_loss(model(x), y).item()) > 0.005  # training moved (float: by 0.0098)
        assert abs(emu.infer(x.numpy()) - ref(x).detach().numpy()).max() < 0.05
    finally:
        csim.close()


# ----- what is not supported raises the clear error -----------------------------------------

@pytest.mark.parametrize("fn, pattern", [
    (lambda h: h / (h.sum() - 100.0), "not positive"),
    (lambda h: (h * h) ** 0.5, "exponents 1, 2, 3 and 4"),
    (lambda h: torch.atan(h), "aten.atan"),
])
def test_unsupported_ops_raise(fn, pattern):
    with pytest.raises(UnsupportedOpError, match=pattern):
        fx2fpga.compile(Head(fn), (torch.randn(2, 4),))


def test_nll_on_3d_inputs_and_unreduced_nll_raise():
    model = nn.Conv1d(3, 4, 1)
    x, y = torch.randn(2, 3, 5), torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(UnsupportedOpError, match="nll_loss"):
        fx2fpga.compile(model, (x,), train=fx2fpga.SGD(lambda o, t: F.nll_loss(F.log_softmax(o, 1), t), y))
    lin, y2 = nn.Linear(4, 3), torch.tensor([0, 2])
    with pytest.raises(UnsupportedOpError, match="reduction='none'"):
        fx2fpga.compile(lin, (torch.randn(2, 4),),
                        train=fx2fpga.SGD(lambda o, t: F.nll_loss(o, t, reduction="none").sum(), y2))
    with pytest.raises(UnsupportedOpError, match="class weights"):
        fx2fpga.compile(lin, (torch.randn(2, 4),),
                        train=fx2fpga.SGD(lambda o, t: F.nll_loss(o, t, weight=torch.ones(3)), y2))


def test_gd_function_must_return_a_scalar():
    with pytest.raises(TraceError, match="scalar"):
        fx2fpga.compile(lambda x: x * x, (torch.ones(3),), train=fx2fpga.GD(lr=0.1))
    assert math.isfinite(fx2fpga.GD(lr=0.1).lr)
