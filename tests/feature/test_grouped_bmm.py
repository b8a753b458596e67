"""Grouped and depthwise convolutions (``groups > 1``) and batched matrix products (``torch.bmm``,
``@`` on 3-d tensors) in every backend, forward and one SGD step.

How each claim is checked:

- *within derived bounds*: emu against PyTorch float64, each output within the first-order bound
  derived from the formats (``error_bounds.GraphBounds``, via ``test_conv.check_against_float``),
  with the emulator's ReLU decisions; each decision taken otherwise than in float lies within its
  own derived bound of the threshold.
- *layers exact*: every grouped convolution buffer (forward, input and weight gradients) is
  PyTorch's float64 result on the kernel's own inputs, assigned to its format, bit for bit.
- *csim, rtl == emu*: every output and parameter word after two training steps and an inference.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fx2fpga
from fx2fpga.frontend import trace

from .._replay import graph_args, replay_layers
from ..conftest import assert_backend_equals_emu, load_example
from .test_conv import _float_params, check_against_float


class SeparableGroupedNet(nn.Module):
    """A depthwise-separable block (depthwise 3x3, groups == in_channels, then pointwise 1x1),
    a grouped 3x3 conv (groups=2, two input and three output channels per group, stride 2:
    its input gradient reads strided), then a linear layer."""

    def __init__(self):
        super().__init__()
        self.depthwise = nn.Conv2d(2, 2, 3, padding=1, groups=2)
        self.pointwise = nn.Conv2d(2, 4, 1)
        self.grouped = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        h = torch.relu(self.pointwise(torch.relu(self.depthwise(x))))
        return self.fc(torch.relu(self.grouped(h)).flatten(1))


class AttentionScores(nn.Module):
    """``q = x Wq``, ``k = x Wk``, ``v = x Wv`` on ``x`` of shape (B, T, D); ``(q @ k^T) @ v``
    (two ``bmm``s, one through a transposed view), then a linear layer on the flattened result."""

    def __init__(self, d: int = 4, t: int = 4):
        super().__init__()
        self.wq, self.wk, self.wv = (nn.Parameter(torch.randn(d, d) * 0.5) for _ in range(3))
        self.fc = nn.Linear(t * d, 3)

    def forward(self, x):
        q, k, v = x @ self.wq, x @ self.wk, x @ self.wv
        scores = q @ k.transpose(1, 2)
        return self.fc(torch.bmm(scores, v).flatten(1))


def _compile(model, x, y, out_dir):
    return fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1), out_dir=out_dir,
                           share_memory=False, fold_updates=False)  # the tests read every tensor by name


@pytest.fixture(scope="module")
def convnet(tmp_path_factory):
    torch.manual_seed(5)
    model = SeparableGroupedNet()
    gen = torch.Generator().manual_seed(6)
    x, y = torch.rand(8, 2, 8, 8, generator=gen) * 2 - 1, torch.randint(0, 3, (8,), generator=gen)
    return model, x, y, _compile(model, x, y, tmp_path_factory.mktemp("grouped") / "grouped")


@pytest.fixture(scope="module")
def attention(tmp_path_factory):
    torch.manual_seed(7)
    model = AttentionScores()
    gen = torch.Generator().manual_seed(8)
    x, y = torch.rand(8, 4, 4, generator=gen) * 2 - 1, torch.randint(0, 3, (8,), generator=gen)
    return model, x, y, _compile(model, x, y, tmp_path_factory.mktemp("bmm") / "bmm")


def _stages(design, program: str) -> list:
    return design.kernel.programs[program].stages


def test_grouped_conv_forward_and_step_within_derived_bounds(convnet):
    model, x, y, design = convnet
    emu = design.load("emu")
    emu.set_params(_float_params(model))
    fwd = check_against_float(design, model, x, y, train=False, runner=emu)
    step = check_against_float(design, model, x, y, train=True, runner=emu)
    assert set(step) == {"loss"} | {f"param:{n}" for n, _ in model.named_parameters()}
    assert 0 < fwd["output"] <= 1 and all(0 < r <= 1 for r in step.values())


def test_grouped_conv_layers_equal_pytorch_on_the_kernels_own_values(convnet):
    """Each grouped convolution, input and weight gradient is PyTorch's float64 result assigned
    to its format, bit for bit; a grouped stage loops over (group, channel in group)."""
    model, x, y, design = convnet
    gm = trace(model, (x,), design.train)
    emu = design.load("emu")
    emu.set_params(_float_params(model))
    emu.train_step(x.numpy(), y.numpy())
    mem = emu.backend.emulator.mem
    replay = replay_layers(design.kernel, gm, graph_args(design.kernel, gm, x, y, params=_float_params(model)), mem)
    assert replay.mismatch == {}
    # 3 convolutions; dx of the pointwise and grouped convs; dw, db of all three
    assert len(replay.checked) == 3 + 2 + 3 + 3, sorted(replay.checked)
    by_name = {s.name: s for s in _stages(design, "train_step")}
    grouped_dx = by_name["train_convolution_backward_dx"]  # the grouped conv's (the last layer's backward first)
    assert [lp.extent for lp in grouped_dx.loops] == [8, 2, 2, 8, 8, 3, 3, 3]  # n, group, ic, h, w; oc, kh, kw
    assert any(g.step == 2 for a in grouped_dx.ins for g in a.guard)
    assert design.kernel.buffers["train_convolution_backward_dw"].shape == (2, 3, 2, 3, 3)
    mem["train_convolution_backward_dw"][1, 2, 1, 2, 2] += 1  # a control: one LSB off is seen
    bad = replay_layers(design.kernel, gm, graph_args(design.kernel, gm, x, y, params=_float_params(model)), mem)
    assert bad.mismatch == {"train_convolution_backward_dw": 1}


def test_bmm_forward_and_step_within_derived_bounds(attention):
    model, x, y, design = attention
    assert [s.op for s in _stages(design, "infer")].count("mac") == 3 + 2 + 1  # x@W (mm), 2 bmm, fc
    emu = design.load("emu")
    emu.set_params(_float_params(model))
    fwd = check_against_float(design, model, x, y, train=False, runner=emu)
    step = check_against_float(design, model, x, y, train=True, runner=emu)
    assert set(step) == {"loss", "param:wq", "param:wk", "param:wv", "param:fc.weight", "param:fc.bias"}
    assert 0 < fwd["output"] <= 1 and all(0 < r <= 1 for r in step.values())


def test_bmm_equals_pytorch_on_the_kernels_own_operands(attention):
    """``scores = q @ k^T`` in the kernel is the exact product of the kernel's own q and k,
    assigned to the scores' format."""
    model, x, _, design = attention
    emu = design.load("emu")
    emu.infer(x.numpy())
    mem, bufs = emu.backend.emulator.mem, design.kernel.buffers
    stage = next(s for s in _stages(design, "infer") if s.name == "infer_bmm")
    q_buf, k_buf = (a.buffer for a in stage.ins)
    q, k = (torch.from_numpy(np.asarray(bufs[b].fmt.to_float(mem[b])).reshape(8, 4, 4)) for b in (q_buf, k_buf))
    want = bufs["infer_bmm"].fmt.quantize((q @ k.transpose(1, 2)).numpy())
    assert np.array_equal(mem["infer_bmm"].reshape(want.shape), want)
    assert stage.ins[1].index != stage.ins[0].index  # k read through the transposed view, not copied


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim", "rtl"])
@pytest.mark.parametrize("which", ["convnet", "attention"])
def test_grouped_and_bmm_equal_emu(which, backend, request):
    model, x, y, design = request.getfixturevalue(which)
    flipped = x.numpy()[..., ::-1].copy()
    assert_backend_equals_emu(design, backend, [("train_step", [x.numpy(), y.numpy()]),
                                                ("train_step", [flipped, y.numpy()]),
                                                ("infer", [x.numpy()])], params=_float_params(model))


def test_a_depthwise_conv_model_keeps_its_parameter_shapes(convnet):
    """The weight gradient of a grouped conv, written per (group, channel in group), updates the
    parameter in its own (C_out, C_in / groups, kh, kw) layout."""
    model, x, y, design = convnet
    emu = design.load("emu")
    emu.set_params(_float_params(model))
    emu.train_step(x.numpy(), y.numpy())
    got = emu.get_params()
    ref = copy.deepcopy(model).double()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    F.cross_entropy(ref(x.double()), y).backward()
    opt.step()
    for name, p in ref.named_parameters():
        assert got[name].shape == tuple(p.shape), name
        moved = np.abs(p.detach().numpy() - dict(model.named_parameters())[name].detach().double().numpy())
        assert np.abs(got[name] - p.detach().numpy()).max() < 0.1 * moved.max(), name  # the step, not noise


# ----- a depthwise-separable CNN on digits ---------------------------------------------------------------------


class SeparableDigitsCNN(nn.Module):
    """``examples/cnn_digits.py`` with its second conv depthwise-separable: Conv2d 1->4 3x3, ReLU,
    MaxPool 2, depthwise 3x3 (groups=4), ReLU, pointwise 4->8, ReLU, MaxPool 2, Linear 32->10."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.pointwise = nn.Conv2d(4, 8, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.stem(x)), 2)
        x = F.max_pool2d(torch.relu(self.pointwise(torch.relu(self.depthwise(x)))), 2)
        return self.fc(torch.flatten(x, 1))


CHECKPOINTS = range(150, 301, 10)  # held-out accuracy is averaged over these steps


def test_separable_cnn_300_steps_reach_float_accuracy(digits_data, mlp_example):
    """300 SGD steps in emu: held-out accuracy, averaged over 16 checkpoints from step 150, within 4 points of
    float training from the same init, and the training loss of the last 100 steps within 15% of float's. This
    small net's accuracy at any one step is chaotic: in float, weights moved by 1e-6 change the accuracy after 275
    steps from 83% to 65-72% (measured); the 16-checkpoint mean: float 72.5%, emu 70.4% (measured)."""
    ex = load_example("cnn_digits")
    torch.manual_seed(1)  # this small net trains to > 80% in 300 steps from some inits only (float as well)
    model = SeparableDigitsCNN()
    design = fx2fpga.compile(model, ex.example_inputs, train=fx2fpga.SGD(F.cross_entropy, ex.example_targets, lr=ex.lr))
    x_train, y_train, x_test, y_test = digits_data
    batches = list(mlp_example.batches(x_train, y_train, 300))
    emu = design.load("emu")
    emu.set_params(_float_params(model))
    losses, acc_emu = [], []
    for step, (xb, yb) in enumerate(batches, 1):
        losses.append(emu.train_step(ex.images(xb), yb))
        if step in CHECKPOINTS:
            acc_emu.append(mlp_example.accuracy(lambda xb: emu.infer(ex.images(xb)), x_test, y_test))
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=ex.lr)
    acc_float, losses_float = [], []
    for step, (xb, yb) in enumerate(batches, 1):
        opt.zero_grad()
        loss = F.cross_entropy(ref(torch.from_numpy(ex.images(xb))), torch.from_numpy(yb))
        loss.backward()
        opt.step()
        losses_float.append(loss.item())
        if step in CHECKPOINTS:
            acc_float.append(mlp_example.accuracy(lambda xb: ref(torch.from_numpy(ex.images(xb))).detach().numpy(),
                                                  x_test, y_test))
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    assert np.mean(acc_float) > 0.7
    assert abs(np.mean(acc_emu) - np.mean(acc_float)) <= 0.04, (acc_emu, acc_float)
    assert np.mean(losses[-100:]) <= 1.15 * np.mean(losses_float[-100:]), (np.mean(losses[-100:]), losses_float[-100:])
