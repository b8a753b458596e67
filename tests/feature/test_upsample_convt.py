"""Transposed convolutions (``nn.ConvTranspose2d``/``1d``) and nearest upsampling (``nn.Upsample(scale_factor=k)``)
in every backend, forward and one SGD step with an MSE loss, in two small conv autoencoders.

How each claim is checked:

- *within derived bounds*: emu against PyTorch float64, each output (loss, every new parameter)
  within the first-order bound derived from the formats (``error_bounds.GraphBounds``), with the
  emulator's ReLU decisions; each decision taken otherwise than in float lies within its own
  derived bound of the threshold.
- *layers exact*: every convolution buffer, transposed ones and their input, weight and bias
  gradients included, is PyTorch's float64 result on the kernel's own inputs assigned to its
  format, bit for bit (``_replay.py``); the upsampling's gradient is the sum of each block of the
  kernel's own output gradient, assigned to its format.
- *csim, rtl == emu*: every output and parameter word after two training steps and an inference.
- *trains as float*: 300 SGD steps of the upsampling autoencoder on the digits images in emu end
  within 10% of the loss of float training from the same start.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fx2fpga
from fx2fpga.errors import UnsupportedOpError
from fx2fpga.frontend import trace
from fx2fpga.handoffs import graph_info

from .._replay import graph_args, replay_layers
from ..conftest import assert_backend_equals_emu, load_example
from ..error_bounds import GraphBounds, emulator_decisions, flipped_decisions
from .test_nonlinear import on_grid

LR = 0.1


class ConvTAutoencoder(nn.Module):
    """Conv2d 1->4 3x3 stride 2 (8x8 -> 4x4), ReLU, ConvTranspose2d 4->2 3x3 stride 2 padding 1
    output_padding 1 (-> 8x8), ReLU, Conv2d 2->1 3x3 padding 1."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)
        self.dec = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        return self.dec(torch.relu(self.up(torch.relu(self.enc(x)))))


class UpsampleAutoencoder(nn.Module):
    """Conv2d 1->4 3x3 stride 2 (8x8 -> 4x4), ReLU, Upsample(2) nearest (-> 8x8), Conv2d 4->1 3x3 padding 1."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        return self.dec(self.up(torch.relu(self.enc(x))))


class ConvT1dNet(nn.Module):
    """Conv1d 2->4 3 stride 2, ReLU, ConvTranspose1d 4->2 4 stride 3 padding 2 output_padding 1 in two groups,
    no bias."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv1d(2, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose1d(4, 2, 4, stride=3, padding=2, output_padding=1, groups=2, bias=False)

    def forward(self, x):
        return self.up(torch.relu(self.enc(x)))


def _images(seed: int, shape=(4, 1, 8, 8)) -> torch.Tensor:
    """Random images on the grid of the default activation format (the kernel holds inputs and targets exactly)."""
    from fx2fpga_runtime.fixed import Fixed

    return on_grid(torch.rand(shape, generator=torch.Generator().manual_seed(seed)), Fixed(16, 6))


def _compile(model_cls, seed: int, out_dir=None, shape=(4, 1, 8, 8)):
    torch.manual_seed(seed)
    model = model_cls()
    x = _images(seed, shape)
    y = x if model(x).shape == x.shape else _images(seed + 1, tuple(model(x).shape))
    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.mse_loss, y, lr=LR), out_dir=out_dir,
                             share_memory=False, fold_updates=False)  # the tests read every tensor by name
    return model, x, y, design


@pytest.fixture(scope="module")
def convt(tmp_path_factory):
    return _compile(ConvTAutoencoder, 1, tmp_path_factory.mktemp("convt") / "convt")


@pytest.fixture(scope="module")
def upsample(tmp_path_factory):
    return _compile(UpsampleAutoencoder, 2, tmp_path_factory.mktemp("upsample") / "upsample")


def _float_params(model) -> dict[str, np.ndarray]:
    return {k: v.detach().double().numpy() for k, v in model.named_parameters()}


def _torch_step(model, x, y) -> tuple[float, dict]:
    """PyTorch's own float64 SGD step with the MSE loss: (loss, new parameters by name). The learning rate is the
    float32 one the traced step takes as its input."""
    ref = copy.deepcopy(model).double().train()
    opt = torch.optim.SGD(ref.parameters(), lr=float(torch.tensor(LR, dtype=torch.float32)))
    loss = F.mse_loss(ref(x.double()), y.double())
    loss.backward()
    opt.step()
    return loss.item(), {k: v.detach() for k, v in ref.named_parameters()}


def _check_against_float(design, model, x, y, train: bool) -> dict[str, float]:
    """``infer`` or one ``train_step`` in emu: the traced graph in float64 is PyTorch's own computation;
    with the emulator's ReLU decisions, |emu - float| <= the derived bound; each decision taken otherwise
    than in float is within its derived bound of the threshold. Returns the largest error / bound per output."""
    gm = trace(model, (x,), design.train if train else None)
    emu = design.load("emu")
    emu.set_params(_float_params(model))
    roles = graph_info(gm).outputs
    if train:
        loss = emu.train_step(x.numpy(), y.numpy())
        got = emu.get_params()
        values = [loss if r.kind == "loss" else got[r.name] for r in roles]
        torch_loss, torch_params = _torch_step(model, x, y)
        want = [torch_loss if r.kind == "loss" else torch_params[r.name].numpy() for r in roles]
    else:
        values = [emu.infer(x.numpy())]
        want = [copy.deepcopy(model).double().eval()(x.double()).detach().numpy()]
    args = graph_args(design.kernel, gm, x, y, quantized=False)
    mem = emu.backend.emulator.mem
    plain = GraphBounds(design.kernel, gm, args)
    same = GraphBounds(design.kernel, gm, args, emulator_decisions(design.kernel, gm, mem))
    ratios = {}
    for role, val, ref, w, out in zip(map(str, roles), values, same.outputs, want, plain.outputs, strict=True):
        assert np.abs(out.detach().numpy() - w).max() <= 1e-9 * (1 + np.abs(w).max()), role
        bound = same.bound(ref)
        err = np.abs(np.asarray(val, dtype=np.float64) - ref.detach().numpy())
        assert np.all(err <= bound), (role, err.max(), bound[err > bound])
        ratios[role] = float((err / bound).max())
    for node, j, dist, bnd in flipped_decisions(design.kernel, gm, args, mem):
        assert dist <= bnd, (node, j, dist, bnd)
    return ratios


# ----- within the derived bounds of float -------------------------------------------------------------


@pytest.mark.parametrize("name", ["convt", "upsample"])
def test_forward_and_step_within_derived_bounds(name, request):
    model, x, y, design = request.getfixturevalue(name)
    fwd = _check_against_float(design, model, x, y, train=False)
    step = _check_against_float(design, model, x, y, train=True)
    assert set(step) == {"loss"} | {f"param:{n}" for n, _ in model.named_parameters()}
    assert 0 < fwd["output"] <= 1 and all(0 < r <= 1 for r in step.values())


def test_grouped_conv_transpose_1d_without_bias_within_derived_bounds():
    """Stride 3, padding 2, output_padding 1, two groups: the transposed reads skip two positions of three and
    loop over (group, channel in group)."""
    model, x, y, design = _compile(ConvT1dNet, 3, shape=(4, 2, 8))
    assert design.kernel.buffers["infer_output"].shape == (4, 2, 10)
    fwd = _check_against_float(design, model, x, y, train=False)
    step = _check_against_float(design, model, x, y, train=True)
    assert set(step) == {"loss", "param:enc.weight", "param:enc.bias", "param:up.weight"}
    assert design.kernel.buffers["train_convolution_backward_dw"].shape == (2, 2, 1, 4)  # (group, ic, oc, k)
    assert 0 < fwd["output"] <= 1 and all(0 < r <= 1 for r in step.values())


# ----- the stages, and the layers exact on the kernel's own values ----------------------------------------


def test_conv_transpose_layers_equal_pytorch_on_the_kernels_own_values(convt):
    """The transposed convolution, its input gradient (an ordinary strided convolution), its weight and bias
    gradients and the convolutions around it are PyTorch's float64 results assigned to their formats."""
    model, x, y, design = convt
    gm = trace(model, (x,), design.train)
    emu = design.load("emu")
    emu.set_params(_float_params(model))
    emu.train_step(x.numpy(), y.numpy())
    mem = emu.backend.emulator.mem
    args = graph_args(design.kernel, gm, x, y, params=_float_params(model))
    replay = replay_layers(design.kernel, gm, args, mem)
    assert replay.mismatch == {}
    assert len(replay.checked) == 3 + 2 + 3 + 3, sorted(replay.checked)  # 3 convs; 2 dx (not enc's); 3 dw, 3 db
    stages = {s.name: s for s in design.kernel.programs["train_step"].stages}
    forward = stages["train_convolution_1"]  # the transposed convolution: guarded reads, every other position
    assert [lp.extent for lp in forward.loops] == [4, 2, 8, 8, 4, 3, 3]  # n, oc, h, w; ic, kh, kw
    assert sum(g.step == 2 for g in forward.ins[0].guard) == 2
    dx = stages["train_convolution_backward_1_dx"]  # its input gradient: windows, no strided guard
    assert [lp.extent for lp in dx.loops] == [4, 4, 4, 4, 2, 3, 3] and all(g.step == 1 for g in dx.ins[0].guard)
    mem["train_convolution_backward_1_dw"][0, 1, 2, 2] += 1  # a control: one LSB off is seen
    bad = replay_layers(design.kernel, gm, args, mem)
    assert bad.mismatch == {"train_convolution_backward_1_dw": 1}


def test_upsample_is_a_view_and_its_gradient_one_sum(upsample):
    """Forward: no stage of its own (the next convolution's padded reads copy the view ``relu[h // 2]``);
    backward: one ``sum`` over each 2x2 block of the kernel's own output gradient, assigned to its format."""
    model, x, y, design = upsample
    infer = design.kernel.programs["infer"].stages
    assert [(s.op, s.attrs.get("then")) for s in infer] == [("mac", "relu"), ("copy", None), ("mac", None)]  # the
    # first convolution's ReLU applied as it writes (passes/fuse.py)
    assert [a.c_expr() for a in infer[1].ins[0].index] == ["i", "j", "(l) / 2", "(m) / 2"]
    emu = design.load("emu")
    emu.set_params(_float_params(model))
    emu.train_step(x.numpy(), y.numpy())
    mem = emu.backend.emulator.mem
    sums = [s for s in design.kernel.programs["train_step"].stages if s.name == "train_index_put"]
    assert len(sums) == 1 and sums[0].op == "sum" and [lp.extent for lp in sums[0].loops][-2:] == [2, 2]
    gy_buf = design.kernel.buffers[sums[0].ins[0].buffer]
    out_buf = design.kernel.buffers["train_index_put"]
    gy = gy_buf.fmt.to_float(mem[gy_buf.name]).reshape(4, 4, 4, 2, 4, 2)
    want = out_buf.fmt.quantize(gy.sum(axis=(3, 5)))
    assert np.abs(gy).max() > 0 and np.array_equal(mem["train_index_put"].reshape(want.shape), want)
    gm = trace(model, (x,), design.train)
    replay = replay_layers(design.kernel, gm, graph_args(design.kernel, gm, x, y, params=_float_params(model)), mem)
    assert replay.mismatch == {} and len(replay.checked) == 2 + 1 + 2 + 2  # the conv reading the view is exact


@pytest.mark.parametrize("layer, shape, detail", [
    (nn.Upsample(scale_factor=1.5), (2, 1, 4, 4), "nearest upsampling by an integer factor"),
    (nn.Upsample(size=(6, 8)), (2, 1, 4, 4), "nearest upsampling by an integer factor"),
    (nn.Upsample(scale_factor=2, mode="bilinear"), (2, 1, 4, 4), "integer scale factors"),
    (nn.ConvTranspose2d(1, 2, 3, dilation=2), (2, 1, 4, 4), "dilation"),
    (nn.ConvTranspose3d(1, 2, 3), (2, 1, 4, 4, 4), "Conv1d and Conv2d only"),
])
def test_unsupported_upsampling_and_transposed_convolutions_name_the_limit(layer, shape, detail):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer, self.scale = layer, nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.layer(x * self.scale)

    x = torch.rand(shape)
    with pytest.raises(UnsupportedOpError, match=detail) as ei:
        fx2fpga.compile(Net(), (x,), train=fx2fpga.SGD(F.mse_loss, torch.zeros_like(layer(x))))
    assert "test_upsample_convt.py" in str(ei.value)  # the user's line


# ----- csim and rtl word for word --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convt", "upsample"])
@pytest.mark.parametrize("backend", ["csim", "rtl"])
def test_autoencoder_equals_emu(name, backend, request):
    model, x, y, design = request.getfixturevalue(name)
    x2 = _images(10)
    assert_backend_equals_emu(design, backend, [("train_step", [x.numpy(), y.numpy()]),
                                                ("train_step", [x2.numpy(), x2.numpy()]),
                                                ("infer", [x2.numpy()])], params=_float_params(model))


# ----- 300 steps on the digits images ------------------------------------------------------------------


def test_upsample_autoencoder_trains_on_digits_as_float(digits_data, mlp_example):
    """300 SGD steps (batch 16) of the upsampling autoencoder on the digits images in emu: the mean loss of the last
    50 steps within 10% of float training's from the same start and batches, float having learned (below 3/4 of
    its first steps'). (The transposed one does as well, 0.05% apart at lr 0.1: see docs/layers/upsample-convt.md.)"""
    images = load_example("cnn_digits").images
    x_train, y_train = digits_data[0], digits_data[1]
    torch.manual_seed(0)
    model, lr = UpsampleAutoencoder(), 0.2
    first = torch.from_numpy(images(x_train[:16]))
    design = fx2fpga.compile(model, (first,), train=fx2fpga.SGD(F.mse_loss, first, lr=lr))
    emu = design.load("emu")
    emu.set_params(_float_params(model))
    batches = [images(xb) for xb, _ in mlp_example.batches(x_train, y_train, 300)]  # the examples' data helper
    losses = [emu.train_step(xb, xb) for xb in batches]
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    ref_losses = []
    for xb in batches:
        opt.zero_grad()
        loss = F.mse_loss(ref(torch.from_numpy(xb)), torch.from_numpy(xb))
        loss.backward()
        opt.step()
        ref_losses.append(loss.item())
    emu_end, float_end = np.mean(losses[-50:]), np.mean(ref_losses[-50:])
    assert float_end < 0.75 * np.mean(ref_losses[:10])
    assert abs(emu_end - float_end) <= 0.1 * float_end, (emu_end, float_end)
