"""Pooling and BatchNorm in every backend: overlapping and padded max/avg pooling against
PyTorch (first-maximum ties included), BatchNorm with a residual add in training mode (batch
statistics, running stats kept on chip) and eval mode, within bounds derived from the formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fx2fpga
from fx2fpga.frontend import trace

from .._replay import graph_args, replay_layers
from ..conftest import assert_backend_equals_emu
from ..error_bounds import GraphBounds
from .test_conv import _float_params, check_against_float

# ----- pooling: overlapping, padded, counted without padding, adaptive ----------------------------------------


class PoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x))  # (N, 2, 8, 8), many exact zeros
        a = F.max_pool2d(h, 3, stride=2, padding=1)  # overlapping windows, padding skipped
        b = F.avg_pool2d(h, 3, stride=2, padding=1, count_include_pad=False)  # 1/4, 1/6, 1/9 by position
        c = F.adaptive_avg_pool2d(h, 4)
        return self.fc((a + b + c).flatten(1))


def _train_on_digit_images(make_model, seed: int, digits_data, folder):
    """(model, x, y, design): ``make_model()`` seeded, compiled with SGD on 16 digit images."""
    x_train, y_train, _, _ = digits_data
    torch.manual_seed(seed)
    model = make_model()
    x, y = torch.from_numpy(x_train[:16].reshape(-1, 1, 8, 8)), torch.from_numpy(y_train[:16])
    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1), out_dir=folder,
                             share_memory=False, fold_updates=False)  # the tests read every tensor by name
    return model, x, y, design


@pytest.fixture(scope="module")
def pool(tmp_path_factory, digits_data):
    return _train_on_digit_images(PoolNet, 5, digits_data, tmp_path_factory.mktemp("pool") / "pool")


def test_pools_equal_pytorch_on_the_kernels_own_values(pool):
    """Max pooling and its backward equal PyTorch bit for bit on the same inputs (PyTorch's
    first-maximum choice among ties included); average pooling within one ulp (1/6 and 1/9 are
    constants of the format, PyTorch divides exactly)."""
    model, x, y, design = pool
    gm = trace(model, (x,), design.train)
    emu = design.load("emu")
    emu.train_step(x.numpy(), y.numpy())
    mem = emu.backend.emulator.mem
    replay = replay_layers(design.kernel, gm, graph_args(design.kernel, gm, x, y), mem)
    names = set(replay.checked)
    assert {"train_max_pool2d_with_indices", "train_max_pool2d_with_indices_backward", "train_avg_pool2d",
            "train_avg_pool2d_backward", "train__adaptive_avg_pool2d", "train__adaptive_avg_pool2d_backward",
            "train_relu", "train_convolution_backward_dw"} <= names, sorted(names)  # the conv, through its fused ReLU
    exact = {n: d for n, d in replay.mismatch.items() if "avg_pool2d" not in n or "adaptive" in n}
    assert exact == {}
    assert all(d <= 1 for d in replay.mismatch.values()), replay.mismatch
    h = mem["train_relu"]
    padded = np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=h.min() - 1)
    wins = np.stack([padded[:, :, r:r + 8:2, s:s + 8:2] for r in range(3) for s in range(3)], -1)
    assert ((wins == wins.max(-1, keepdims=True)).sum(-1) > 1).sum() > 20  # tied windows were routed
    assert len(np.unique(mem["train_max_pool2d_with_indices_argmax"])) > 3


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim", "rtl"])
def test_pools_equal_emu(pool, backend):
    model, x, y, design = pool
    assert_backend_equals_emu(design, backend, [("train_step", [x.numpy(), y.numpy()]),
                                                ("infer", [x.numpy()[::-1].copy()])])


# ----- BatchNorm with a residual add -----------------------------------------------------------------------


class ResBN(nn.Module):
    """Conv2d -> BatchNorm2d -> ReLU, plus the conv's output (residual), AvgPool 2, Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        h = self.conv(x)
        h = torch.relu(self.bn(h)) + h
        return self.fc(F.avg_pool2d(h, 2).flatten(1))


class MlpBN(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear (BatchNorm1d's stages are BatchNorm2d's over one
    dimension less: emu only)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.bn1 = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn1(self.fc1(x))))


@pytest.fixture(scope="module")
def resbn(tmp_path_factory, digits_data):
    return _train_on_digit_images(ResBN, 6, digits_data, tmp_path_factory.mktemp("resbn") / "resbn")


def test_running_stats_are_params_kept_on_chip(resbn):
    model, x, y, design = resbn
    k = design.kernel
    stats = {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    names = {k.param_names[b]: b for b in k.params}
    assert stats <= set(names)
    assert k.buffers[names["bn.num_batches_tracked"]].kind == "integer"
    assert k.buffers[names["bn.running_var"]].kind == "activation"
    assert all(k.buffers[names[s]].role == "param" for s in stats)
    written = {s.out.buffer for s in k.programs["train_step"].stages}
    assert {names[s] for s in stats} <= written  # updated in place by the training step
    assert not {names[s] for s in stats} & {s.out.buffer for s in k.programs["infer"].stages}
    read = {a.buffer for s in k.programs["infer"].stages for a in s.ins}
    assert {names["bn.running_mean"], names["bn.running_var"]} <= read  # eval mode normalizes with them


def test_batchnorm_forward_and_step_within_derived_bounds(resbn):
    """Eval-mode forward and one training step (loss, parameters, running stats) against float."""
    model, x, y, design = resbn
    emu = design.load("emu")
    fwd = check_against_float(design, model, x, y, train=False, runner=emu)
    step = check_against_float(design, model, x, y, train=True, runner=emu)
    assert {"buffer:bn.running_mean", "buffer:bn.running_var"} <= set(step)
    assert 0 < fwd["output"] <= 1 and all(0 < r <= 1 for r in step.values())
    got = emu.get_params()
    assert got["bn.num_batches_tracked"] == 1
    batch_var = torch.var(model.conv(x), dim=(0, 2, 3), unbiased=True).detach().numpy()
    assert not np.allclose(batch_var, 1.0, atol=0.05)  # so the running variance really moved
    assert np.abs(got["bn.running_var"] - (0.9 + 0.1 * batch_var)).max() < 0.005


def test_eval_after_training_uses_the_updated_running_stats(resbn):
    """After ten steps, inference normalizes with the running stats on chip: it equals the float
    eval-mode model holding the kernel's own parameters, within the derived bound."""
    model, x, y, design = resbn
    emu = design.load("emu")
    emu.set_params(_float_params(model))
    for _ in range(10):
        emu.train_step(x.numpy(), y.numpy())
    params = emu.get_params()
    assert params["bn.num_batches_tracked"] == 10
    out = emu.infer(x.numpy())
    gm = trace(model, (x,))
    gb = GraphBounds(design.kernel, gm, graph_args(design.kernel, gm, x, quantized=False, params=params))
    ref = gb.outputs[0]
    err, bound = np.abs(out - ref.detach().numpy()), gb.bound(ref)
    assert np.all(err <= bound)
    fresh = {"bn.running_var": np.ones(4), "bn.running_mean": np.zeros(4)}
    stale = GraphBounds(design.kernel, gm, graph_args(design.kernel, gm, x, quantized=False,
                                                      params={**params, **fresh})).outputs[0]
    assert np.mean(np.abs(out - stale.detach().numpy()) > bound) > 0.5  # the initial stats would not pass


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim", "rtl"])
def test_batchnorm_equals_emu(resbn, digits_data, backend):
    """Inference, two training steps, inference and every parameter and running stat: csim == emu, rtl == emu."""
    model, x, y, design = resbn
    x_train, y_train, _, _ = digits_data
    emu = assert_backend_equals_emu(design, backend, [
        ("infer", [x.numpy()]), ("train_step", [x.numpy(), y.numpy()]),
        ("train_step", [x_train[16:32].reshape(-1, 1, 8, 8), y_train[16:32]]), ("infer", [x.numpy()])])
    assert emu.get_params()["bn.num_batches_tracked"] == 2


def test_batchnorm1d_forward_and_step_within_derived_bounds(digits_data):
    x_train, y_train, _, _ = digits_data
    torch.manual_seed(8)
    model = MlpBN()
    x, y = torch.from_numpy(x_train[:32]), torch.from_numpy(y_train[:32])
    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.2),
                             share_memory=False, fold_updates=False)  # reads intermediate tensors by name
    emu = design.load("emu")
    fwd = check_against_float(design, model, x, y, train=False, runner=emu)
    step = check_against_float(design, model, x, y, train=True, runner=emu)
    assert {"buffer:bn1.running_mean", "buffer:bn1.running_var", "param:bn1.weight"} <= set(step)
    assert 0 < fwd["output"] <= 1 and all(0 < r <= 1 for r in step.values())


def test_batchnorm_without_running_stats_uses_batch_statistics():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, track_running_stats=False), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(16, 4)
    design = fx2fpga.compile(model, (x,))
    assert sorted(design.kernel.param_names.values()) == sorted(n for n, _ in model.named_parameters())  # no stats
    emu = design.load("emu")
    out = emu.infer(x.numpy())
    gm = trace(model, (x,))
    gb = GraphBounds(design.kernel, gm, graph_args(design.kernel, gm, x, quantized=False))
    ref = model.eval()(x).detach().numpy()  # eval mode: still the batch statistics
    assert np.abs(gb.outputs[0].detach().numpy() - ref).max() < 1e-5
    assert np.all(np.abs(out - ref) <= gb.bound(gb.outputs[0]) + 1e-5)
