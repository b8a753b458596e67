"""Gradient descent on functions (``fx2fpga.GD``): Sphere, Rosenbrock and Rastrigin in 2 and 10
dimensions, 200 steps in fixed point against the float64 trajectory from the same start.

Formats (``examples/functions.PRECISION``): the point ``x`` fixed<28,6>, f and its terms
fixed<24,8>, gradients fixed<28,8>, integer parts widened to 8x the start's values.

Stated tolerances, checked for every function and dimension:

- the fixed-point point ends within ``X_TOL = 1e-4`` (max norm) of the float point;
- the final value of f differs from the float one by at most the evaluation error of the
  kernel's ``infer`` program at its own point (derived from the formats by
  ``error_bounds.propagate``) plus ``X_TOL`` times the 1-norm of the gradient at the float point
  (first order), plus a second-order margin ``X_TOL**2 * max|H|``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fx2fpga
from fx2fpga.cli import main as cli_main
from fx2fpga.handoffs import graph_info, placeholder

from ..conftest import load_example
from ..error_bounds import propagate

STEPS, X_TOL = 200, 1e-4
fn = load_example("functions")


def _float_descent(f, x0: torch.Tensor, lr: float, steps: int) -> torch.Tensor:
    x = x0.double().clone()
    for _ in range(steps):
        xr = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(f(xr), xr)
        x = x - lr * g
    return x


@pytest.mark.parametrize("dim", [2, 10])
@pytest.mark.parametrize("name", ["sphere", "rosenbrock", "rastrigin"])
def test_200_steps_end_within_tolerance_of_float(name, dim):
    f, lr, x0 = fn.FUNCTIONS[name], fn.LEARNING_RATES[name], fn.start(name, dim)
    design = fx2fpga.compile(f, (x0,), train=fx2fpga.GD(lr=lr), precision=fn.PRECISION)
    k = design.kernel
    emu = design.load("emu")
    first = [emu.train_step() for _ in range(STEPS)][0]
    x_fixed, f_fixed = emu.get_params()["x"], float(emu.infer())
    x_float = _float_descent(f, x0, lr, STEPS)
    f_float = f(x_float).item()

    assert np.abs(x_fixed - x_float.numpy()).max() <= X_TOL
    xr = x_float.clone().requires_grad_()
    (g,) = torch.autograd.grad(f(xr), xr, create_graph=True)
    hess = torch.stack([torch.autograd.grad(g[i], xr, retain_graph=True)[0] for i in range(dim)])
    _, err = propagate(k, "infer", {k.params[0]: x_fixed})
    eval_err = float(err[k.programs["infer"].outputs[0]])
    tol = eval_err + X_TOL * g.abs().sum().item() + X_TOL**2 * dim * hess.abs().max().item()
    assert abs(f_fixed - f_float) <= tol, (f_fixed, f_float, tol)
    assert f_float < 0.7 * f(x0.double()).item() and abs(first - f(x0.double()).item()) < 0.01 * first
    assert tol < 1e-2 * max(1.0, f_float)  # the tolerance is small next to the value itself


def test_gd_api_point_value_and_one_step():
    """infer() and train_step() take no inputs; train_step returns f before its step; x is a parameter."""
    f, x0 = fn.rosenbrock, torch.tensor([-1.25, 1.0, 0.5])
    design = fx2fpga.compile(f, (x0,), train=fx2fpga.GD(lr=0.001), precision=fn.PRECISION)
    k = design.kernel
    gm = fx2fpga.trace(f, (x0,), fx2fpga.GD(lr=0.001))
    assert [placeholder(n).role for n in gm.graph.nodes if n.op == "placeholder"] == ["param", "hyper"]
    assert [str(r) for r in graph_info(gm).outputs] == ["loss", "param:x"]
    assert k.programs["infer"].inputs == [] and k.programs["train_step"].inputs == []
    assert [k.param_names[b] for b in k.params] == ["x", "lr"]  # the point and the learning rate register
    emu = design.load("emu")
    assert np.array_equal(emu.get_params()["x"], x0.numpy())
    value = float(emu.infer())
    _, err = propagate(k, "infer", {k.params[0]: x0.double().numpy()})
    assert abs(value - f(x0.double()).item()) <= err[k.programs["infer"].outputs[0]]
    assert emu.train_step() == value  # f at the point before the step
    _, err = propagate(k, "train_step", {k.params[0]: x0.double().numpy()})
    xr = x0.double().clone().requires_grad_()
    (g,) = torch.autograd.grad(f(xr), xr)
    expected = (x0.double() - 0.001 * g).numpy()
    moved = emu.get_params()["x"]
    assert np.all(np.abs(moved - expected) <= err[k.params[0]]) and np.abs(moved - x0.numpy()).min() > 1e-3
    emu.set_params({"x": np.ones(3)})  # the minimum of Rosenbrock
    assert float(emu.infer()) == 0.0 and emu.train_step() == 0.0
    assert np.array_equal(emu.get_params()["x"], np.ones(3))


def test_gd_with_momentum_follows_torch_sgd():
    """GD(lr, momentum) is torch.optim.SGD(momentum) on the point: 200 steps on Rosenbrock in 2-D."""
    f, x0, lr, m = fn.rosenbrock, fn.start("rosenbrock", 2), 0.0005, 0.9
    # the velocity's bound |g| / (1 - m) = 2150 with 3 margin bits would need 36 bits: give it a format by name
    precision = {**fn.PRECISION, "overrides": {"momentum:x": "fixed<32,12>"}}
    design = fx2fpga.compile(f, (x0,), train=fx2fpga.GD(lr=lr, momentum=m), precision=precision)
    emu = design.load("emu")
    x = torch.nn.Parameter(x0.double().clone())
    opt = torch.optim.SGD([x], lr=lr, momentum=m)
    for _ in range(STEPS):
        emu.train_step()
        opt.zero_grad()
        f(x).backward()
        opt.step()
    got = emu.get_params()
    assert np.abs(got["x"] - x.detach().numpy()).max() <= X_TOL
    v = opt.state[x]["momentum_buffer"].numpy()  # gradient-sized: Rosenbrock's curvature is ~1000
    assert np.abs(got["momentum:x"] - v).max() <= 1e-3 * max(1.0, np.abs(v).max())
    assert f(x).item() < 0.5 * f(x0.double()).item()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim", "rtl"])
def test_rastrigin_equals_emu(tmp_path, backend):
    """sin/cos range reduction and tables, slice-free: 30 steps on csim (rtl) and emu, bit for bit."""
    f, x0 = fn.rastrigin, fn.start("rastrigin", 10)
    design = fx2fpga.compile(f, (x0,), train=fx2fpga.GD(lr=0.002), precision=fn.PRECISION,
                             out_dir=tmp_path / "rastrigin")
    emu, csim = design.load("emu"), design.load(backend)
    try:
        for _ in range(30):
            assert emu.train_step() == csim.train_step()
        assert np.array_equal(emu.get_params_raw()[design.kernel.params[0]],
                              csim.get_params_raw()[design.kernel.params[0]])
        assert emu.infer() == csim.infer()
    finally:
        csim.close()
    assert cli_main(["sim", str(tmp_path / "rastrigin"), "--sim", backend]) == 0  # the golden vectors replay
