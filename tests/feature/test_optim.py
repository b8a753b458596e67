"""SGD with momentum and weight decay: the velocities are on-chip parameters ``momentum:<name>``,
updated in place; 100 emu steps follow ``torch.optim.SGD`` within a bound derived from the
formats; csim == emu bit for bit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.fixed import Fixed
from torch import nn

import fx2fpga

from ..error_bounds import propagate

LR, MOMENTUM, WD = 0.0625, 0.875, 2.0**-7  # exact in the constant formats: the bound needs no rounding of them


def on_grid(t: torch.Tensor, fmt: Fixed) -> torch.Tensor:
    return torch.from_numpy(fmt.to_float(fmt.quantize(t.detach().double().numpy()))).to(t.dtype)


def test_options_are_checked():
    for bad in ({"momentum": 1.0}, {"momentum": -0.1}, {"weight_decay": -1e-3}, {"lr": 0.0}):
        with pytest.raises(ValueError):
            fx2fpga.SGD(F.mse_loss, torch.zeros(2, 1), **{"lr": 0.1, **bad})
    with pytest.raises(ValueError):
        fx2fpga.GD(lr=-0.1)
    with pytest.raises(ValueError, match="nesterov=True.*momentum > 0"):
        fx2fpga.SGD(F.mse_loss, torch.zeros(2, 1), lr=0.1, nesterov=True)


def test_velocities_are_persistent_parameters_updated_in_place():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    plain = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.mse_loss, y, lr=0.1, weight_decay=0.01))
    assert sorted(plain.kernel.param_names.values()) == ["0.bias", "0.weight", "2.bias", "2.weight", "lr"]
    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.mse_loss, y, lr=0.1, momentum=0.9))
    k = design.kernel
    names = [k.param_names[b] for b in k.params]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias",
                     "momentum:0.weight", "momentum:0.bias", "momentum:2.weight", "momentum:2.bias", "lr"]
    for b in k.params[4:8]:
        buf = k.buffers[b]
        assert buf.role == "param" and buf.kind == "gradient" and set(buf.init) == {0}
        writers = [s for s in k.programs["train_step"].stages if s.out.buffer == b]
        assert len(writers) == 1 and writers[0].op == "add"  # v = m*v + g written in place, no copy stage
    runner = design.load("emu")
    params = runner.get_params()
    assert set(params) == set(names) - {"lr"} and not params["momentum:2.bias"].any()  # lr: get_lr()
    runner.set_params({"momentum:2.bias": np.array([0.5, -0.25])}, partial=True)
    assert np.array_equal(runner.get_params()["momentum:2.bias"], [0.5, -0.25])
    runner.set_params({"momentum:2.bias": np.zeros(2)}, partial=True)
    runner.train_step(x.numpy(), y.numpy())
    ref = copy.deepcopy(model)
    F.mse_loss(ref(x), y).backward()
    for name, p in ref.named_parameters():  # the first velocity is the gradient (torch: buf = clone(g))
        assert np.abs(runner.get_params()[f"momentum:{name}"] - p.grad.numpy()).max() < 2e-3, name


def _iteration_matrix(xt: np.ndarray, n_out: int, nesterov: bool = False) -> np.ndarray:
    """The exact map (theta, v) -> (theta', v') of one output row of linear MSE regression with SGD
    (g = H theta + c, v' = m v + g; theta' = theta - lr v', or with Nesterov theta - lr (g + m v'))."""
    n, d = xt.shape
    h = 2.0 / (n * n_out) * xt.T @ xt + WD * np.eye(d)
    eye = np.eye(d)
    if nesterov:
        return np.block([[eye - LR * (1 + MOMENTUM) * h, -LR * MOMENTUM**2 * eye], [h, MOMENTUM * eye]])
    return np.block([[eye - LR * h, -LR * MOMENTUM * eye], [h, MOMENTUM * eye]])


@pytest.mark.parametrize("nesterov", [False, True])
def test_100_steps_follow_torch_sgd_within_the_derived_bound(nesterov):
    """Linear regression, full batch, 100 steps with momentum and weight decay.

    The error e_t = emu - exact obeys e_{t+1} = A e_t + d_t: A is the exact (linear) map of one
    step, d_t the local error of the fixed-point step from the emu's own state, bounded from the
    formats by ``propagate`` at every step; so |e_T| <= sum_k |A^k| max_t d_t, componentwise.
    """
    torch.manual_seed(1)
    act = Fixed(16, 6)
    x = on_grid(torch.randn(32, 4), act)
    y = on_grid(x @ torch.tensor([[0.5, -1.0], [1.5, 0.25], [-0.75, 0.5], [0.0, 1.0]]) + 0.3
                + 0.1 * torch.randn(32, 2), act)
    model = nn.Linear(4, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(on_grid(p, Fixed(24, 8)))
    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.mse_loss, y, lr=LR, momentum=MOMENTUM,
                                                            weight_decay=WD, nesterov=nesterov))
    k = design.kernel
    step = k.programs["train_step"]
    emu = design.load("emu")
    ref = copy.deepcopy(model).double()
    opt = torch.optim.SGD(ref.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD, nesterov=nesterov)
    by_name = {k.param_names[b]: b for b in k.params}
    local = {b: np.zeros(k.buffers[b].shape) for b in k.params}
    losses = []
    for _ in range(100):
        state = emu.get_params()
        feed = {by_name[n]: v for n, v in state.items()} | {step.inputs[0]: x.double().numpy(),
                                                             step.inputs[1]: y.double().numpy()}
        _, err = propagate(k, "train_step", feed)
        for b in k.params:
            local[b] = np.maximum(local[b], err[b])
        losses.append(emu.train_step(x.numpy(), y.numpy()))
        opt.zero_grad()
        F.mse_loss(ref(x.double()), y.double()).backward()
        opt.step()
    assert losses[-1] < 0.2 * losses[0]

    xt = np.hstack([x.double().numpy(), np.ones((32, 1))])
    a = _iteration_matrix(xt, 2, nesterov)
    acc, power = np.zeros_like(a), np.eye(len(a))
    for _ in range(100):
        acc += np.abs(power)
        power = a @ power
    got = emu.get_params()
    w, b = by_name["weight"], by_name["bias"]
    vw, vb = by_name["momentum:weight"], by_name["momentum:bias"]
    d = np.hstack([local[w], local[b][:, None], local[vw], local[vb][:, None]])  # per output row
    bound = d @ acc.T  # row i: sum_k |A^k| d_i
    theta_bound, v_bound = bound[:, :5], bound[:, 5:]
    theta = np.hstack([got["weight"], got["bias"][:, None]])
    velocity = np.hstack([got["momentum:weight"], got["momentum:bias"][:, None]])
    ref_theta = np.hstack([ref.weight.detach().numpy(), ref.bias.detach().numpy()[:, None]])
    ref_v = np.hstack([opt.state[ref.weight]["momentum_buffer"].numpy(),
                       opt.state[ref.bias]["momentum_buffer"].numpy()[:, None]])
    assert np.all(np.abs(theta - ref_theta) <= theta_bound + 1e-9), (np.abs(theta - ref_theta).max(), theta_bound)
    assert np.all(np.abs(velocity - ref_v) <= v_bound + 1e-9), (np.abs(velocity - ref_v).max(), v_bound)
    start = np.hstack([model.weight.detach().numpy(), model.bias.detach().numpy()[:, None]])
    assert theta_bound.max() < 0.01 < np.abs(ref_theta - start).max()  # the bound is far below the distance moved


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim", "rtl"])
def test_two_steps_equal_emu(tmp_path, backend):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1, momentum=0.9,
                                                            weight_decay=1e-3), out_dir=tmp_path / "mom")
    emu, csim = design.load("emu"), design.load(backend)
    try:
        for _ in range(2):
            assert emu.train_step(x.numpy(), y.numpy()) == csim.train_step(x.numpy(), y.numpy())
        a, b = emu.get_params_raw(), csim.get_params_raw()
        assert a.keys() == b.keys() and any(n.startswith("momentum") for n in a)
        for n in a:
            assert np.array_equal(a[n], b[n]), n
        assert np.abs(emu.get_params()["momentum:2.bias"]).max() > 0.01  # the velocity is live
    finally:
        csim.close()
