"""The learning rate as a register on chip: ``set_lr`` changes the update without a recompile, in every
backend; ``fit(lr_schedule=...)`` follows a ``StepLR`` schedule as PyTorch does."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.fixed import Fixed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fx2fpga


@pytest.fixture(scope="module")
def small():
    """Linear(8, 4) -> ReLU -> Linear(4, 3), batch 8, SGD at lr 0.1: one build per simulator."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    x, y = torch.randn(8, 8), torch.randint(0, 3, (8,))
    return model, x, y, fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1))


def test_set_lr_scales_the_update_within_the_rounding_of_its_formats(small):
    _, x, y, design = small
    compiled, changed = design.load("emu"), design.load("emu")
    changed.set_lr(0.025)
    l1, l2 = compiled.get_lr(), changed.get_lr()
    ulp = design.kernel.buffers["lr"].fmt.ulp
    assert abs(l1 - 0.1) <= ulp / 2 and abs(l2 - 0.025) <= ulp / 2
    before = compiled.get_params()
    compiled.train_step(x.numpy(), y.numpy())
    changed.train_step(x.numpy(), y.numpy())
    ratio = l2 / l1  # the same gradient (same start, same batch) times the two rates
    k = design.kernel
    updates = {s.out.buffer: s for s in k.programs["train_step"].stages if s.op == "msub" and s.out.buffer in k.params}
    for buf, stage in updates.items():
        name = k.param_names[buf]
        d1, d2 = before[name] - compiled.get_params()[name], before[name] - changed.get_params()[name]
        # each step: p - round_w(p - round_mid(g * lr)) is g * lr within half an ulp of both formats
        r = Fixed.parse(stage.attrs["mid"]).ulp / 2 + k.buffers[buf].fmt.ulp / 2
        assert np.all(np.abs(d2 - ratio * d1) <= r * (1 + ratio)), name
        assert np.abs(d1).max() > 10 * r * (1 + ratio)  # the updates are large enough for the check to bite


def test_set_lr_refuses_a_rate_outside_the_register(small):
    _, _, _, design = small
    k = design.load("emu")
    fmt = design.kernel.buffers["lr"].fmt
    assert fmt.max_value >= 4 * 0.1  # a rate may grow 4x over the compiled one (a warm-up)
    for bad in (0.0, -0.1, fmt.max_value * 1.01, fmt.ulp / 4):
        with pytest.raises(ValueError, match="outside its register's range"):
            k.set_lr(bad)
    k.set_lr(0.4)
    assert abs(k.get_lr() - 0.4) <= fmt.ulp / 2


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim", "rtl"])
def test_set_lr_in_every_backend_equals_the_emulator(small, backend):
    _, x, y, design = small
    emu = design.load("emu")
    with design.load(backend) as other:
        for lr in (0.03, 0.37):
            emu.set_lr(lr)
            other.set_lr(lr)
            assert emu.train_step(x.numpy(), y.numpy()) == other.train_step(x.numpy(), y.numpy())
            want, got = emu.get_params_raw(), other.get_params_raw()
            assert all(np.array_equal(want[b], got[b]) for b in want)


def test_models_get_a_learning_rate_each(mlp_example):
    torch.manual_seed(0)
    models = [mlp_example.DigitsMLP(), mlp_example.DigitsMLP()]
    sgd = fx2fpga.SGD(mlp_example.loss_fn, mlp_example.example_targets, [0.1, 0.05])
    k = fx2fpga.compile(models, mlp_example.example_inputs, train=sgd, outputs="hls").load("emu")
    assert np.allclose(k.get_lr(), [0.1, 0.05], atol=2 ** -17)
    k.set_lr([0.02, 0.3])
    assert np.allclose(k.get_lr(), [0.02, 0.3], atol=2 ** -17)
    k.set_lr(0.07)
    assert np.allclose(k.get_lr(), [0.07, 0.07], atol=2 ** -17)
    with pytest.raises(ValueError, match="a list of 2"):
        k.set_lr([0.1, 0.1, 0.1])


def test_fit_follows_a_step_lr_schedule_as_pytorch_does(mlp_example, digits_data):
    torch.manual_seed(5)
    model = mlp_example.DigitsMLP()
    x, y = digits_data[0][:320], digits_data[1][:320]
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=16)
    sgd = fx2fpga.SGD(mlp_example.loss_fn, mlp_example.example_targets, 0.2)
    fpga = fx2fpga.FPGAModule(fx2fpga.compile(model, mlp_example.example_inputs, train=sgd, outputs="hls"))
    history = fx2fpga.fit(fpga, loader, epochs=6, progress=False, lr_schedule=lambda e: 0.2 * 0.5 ** (e // 2))

    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    torch_lrs, torch_loss = [], []
    for _ in range(6):
        torch_lrs.append(opt.param_groups[0]["lr"])
        losses = []
        for xb, yb in loader:
            opt.zero_grad()
            loss = F.cross_entropy(ref(xb), yb)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        torch_loss.append(np.mean(losses))
        sched.step()
    assert np.allclose(history["lr"], torch_lrs, atol=2 ** -17)  # within the register's rounding
    assert torch_lrs[-1] == 0.05 and history["steps"] == 120
    assert abs(history["epoch_loss"][-1] - torch_loss[-1]) <= 0.1 * torch_loss[-1]
    assert history["epoch_loss"][-1] < 0.5 * history["epoch_loss"][0]  # it trained
