"""Convolutions in every backend: guarded reads and argmax in the IR, Conv1d/Conv2d forward and
backward against PyTorch, the CNN on digits (csim == emu; accuracy as float), clear refusals.

How each claim is checked:

- *layers exact*: the traced graph is replayed in float64 on the emulator's own buffer values
  (``_replay.py``): every convolution, pooling and backward buffer must equal PyTorch's result
  assigned to its format, bit for bit (the accumulators are exact).
- *within derived bounds*: the first-order error bound of each output from the formats' half
  ulps and the tables' errors (``error_bounds.py``), with the emulator's ReLU decisions; each
  decision taken otherwise than in float lies within its own derived bound of the threshold.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Access, Affine, Buffer, Guard, Kernel, Loop, Program, Stage
from fx2fpga_runtime.runner import EmuBackend, KernelRunner
from torch import nn

import fx2fpga
from fx2fpga.backends.rtl import emit as verilog
from fx2fpga.errors import UnsupportedOpError
from fx2fpga.frontend import trace
from fx2fpga.handoffs import graph_info

from .._replay import graph_args, replay_layers
from ..conftest import assert_backend_equals_emu, load_example
from ..error_bounds import outputs_within_bounds
from .test_rtl import assert_lint_clean

# ----- the IR: guarded reads and argmax, against loops written from the docstring ------------------------


def _guard_kernel() -> Kernel:
    f = Fixed(8, 3)
    a = Buffer("a", (4, 6), f, "input")
    outs = [Buffer("pad", (4, 6), Fixed(9, 4), "output"), Buffer("arg", (4,), Fixed(8, 8), "output"),
            Buffer("mx", (4,), f, "output"), Buffer("tr", (4, 6), Fixed(16, 6), "output")]
    ij = (Loop("i", 4), Loop("j", 6))
    up, right = Affine((("i", 1),), -1), Affine((("j", 1),), 2)
    shifted = Access("a", (up, right), (Guard(up, 4), Guard(right, 6)))
    win = Affine((("j", 1),), -2)  # window j - 2: the first two points are padding
    padded = Access("a", (Affine.var("i"), win), (Guard(win, 6),))
    e = Affine((("i", 1), ("k", -1)), 1)  # a transposed read a[(i + 1 - k) / 2][j]
    strided = Access("a", (Affine(e.terms, e.const, 2), Affine.var("j")), (Guard(e, 8, 2),))
    stages = [
        Stage("pad", "add", ij, Access("pad", (Affine.var("i"), Affine.var("j"))),
              (shifted, Access("a", (Affine.var("i"), Affine.var("j"))))),
        Stage("arg", "argmax", ij, Access("arg", (Affine.var("i"),)), (padded,), reduce=("j",),
              acc=f.with_modes("TRN", "SAT")),
        Stage("mx", "max", ij, Access("mx", (Affine.var("i"),)), (padded,), reduce=("j",),
              acc=f.with_modes("TRN", "SAT")),
        Stage("tr", "mac", (*ij, Loop("k", 3)), Access("tr", (Affine.var("i"), Affine.var("j"))),
              (strided, Access("a", (Affine.var("k"), Affine.var("j")))), reduce=("k",), acc=Fixed(30, 8)),
    ]
    return Kernel("g", {b.name: b for b in [a, *outs]},
                  {"infer": Program("infer", ["a"], [b.name for b in outs], stages)}, [])


def test_guarded_reads_and_argmax_follow_the_ir_semantics():
    """Guarded-off reads are 0 (skipped by max/argmax); argmax takes the first maximum; the
    kernel.json round trip keeps the guards."""
    k = _guard_kernel()
    rng = np.random.default_rng(0)
    a = rng.integers(-8, 8, size=(4, 6)) * 16  # coarse values: many ties
    a[2] = -128  # a row at the format's minimum: every point ties with the padding
    got = KernelRunner(k, EmuBackend(k)).call_raw("infer", {"a": a})
    again = Kernel.from_json(k.to_json())
    assert again.programs["infer"].stages[0].ins[0].guard == k.programs["infer"].stages[0].ins[0].guard
    assert {n: v.tolist() for n, v in KernelRunner(again, EmuBackend(again)).call_raw("infer", {"a": a}).items()} \
        == {n: v.tolist() for n, v in got.items()}

    pad = np.zeros((4, 6), np.int64)
    arg, mx, tr = np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros((4, 6), np.int64)
    for i in range(4):
        best, best_j = -128, 0
        for j in range(6):
            shifted = a[i - 1, j + 2] if i >= 1 and j + 2 < 6 else 0
            pad[i, j] = shifted + a[i, j]  # same frac bits; fixed<9,4> holds the sum
            if j - 2 >= 0 and a[i, j - 2] > best:
                best, best_j = a[i, j - 2], j
            tr[i, j] = sum(a[(i + 1 - kk) // 2, j] * a[kk, j] for kk in range(3)
                           if 0 <= i + 1 - kk < 8 and (i + 1 - kk) % 2 == 0)
        arg[i], mx[i] = best_j, best
    assert np.array_equal(got["pad"], pad)
    assert np.array_equal(got["arg"], arg) and np.array_equal(got["mx"], mx)
    assert arg[2] == 0 and mx[2] == -128  # all points tie with the skipped padding: the first wins
    assert np.array_equal(got["tr"], Fixed(16, 6).from_raw(tr, 10))  # exact products (10 frac bits), saturated
    ties = [np.sum(a[i, :4] == a[i, :4].max()) for i in range(4)]
    assert max(ties) > 1  # the first-maximum rule was exercised


def test_hls_prints_guards_and_checks_them():
    from dataclasses import replace

    from fx2fpga.backends.hls import emit as hls

    k = _guard_kernel()
    cpp = hls.generate(k, "0-test")["src/g.cpp"]
    assert "((i - 1 >= 0 && i - 1 < 4) && (j + 2 >= 0 && j + 2 < 6) ? fixed_8_3_t(a[i - 1][j + 2]) : " \
           "fixed_8_3_t(0.0))" in cpp
    assert "(i - k + 1 >= 0 && i - k + 1 < 8 && (i - k + 1) % 2 == 0) ? fixed_8_3_t(a[(i - k + 1) / 2][j])" in cpp
    assert "acc_idx = j;" in cpp
    stages = k.programs["infer"].stages
    good = stages[0].ins[0]
    bad = {
        "guarded output": replace(stages[0], out=replace(stages[0].out, guard=good.guard)),
        "guard too loose": replace(stages[0], ins=(replace(good, guard=(Guard(good.index[0], 5), good.guard[1])),
                                                   stages[0].ins[1])),
        "guard with a division": replace(stages[0], ins=(replace(good, guard=(Guard(Affine((("i", 1),), 0, 2), 4),)),
                                                         stages[0].ins[1])),
    }
    for what, stage in bad.items():
        k.programs["infer"].stages[0] = stage
        with pytest.raises(hls.HlsCodegenError):
            hls.generate(k, "0-test")
            pytest.fail(what)


# ----- the CNN on digits ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    ex = load_example("cnn_digits")
    torch.manual_seed(0)
    model = ex.DigitsCNN()
    design = fx2fpga.compile(model, ex.example_inputs, train=fx2fpga.SGD(ex.loss_fn, ex.example_targets, lr=ex.lr),
                             out_dir=tmp_path_factory.mktemp("cnn") / "cnn")
    return ex, model, design


def _float_params(model) -> dict[str, np.ndarray]:
    return {k: v.detach().double().numpy() for k, v in model.named_parameters()}


def test_cnn_layers_equal_pytorch_on_the_kernels_own_values(cnn, digits_data):
    """Every conv, max-pool and backward buffer (ReLU ties in the pools included) is PyTorch's
    float64 result on the same inputs, assigned to its format -- bit for bit."""
    ex, model, shared = cnn
    # the replay reads every intermediate tensor by name after a call: a design whose temporaries keep their arrays
    design = fx2fpga.compile(model, ex.example_inputs, train=shared.train, share_memory=False, fold_updates=False)
    x_train, y_train, _, _ = digits_data
    x, y = torch.from_numpy(ex.images(x_train[32:48])), torch.from_numpy(y_train[32:48])
    for train in (None, design.train):
        gm = trace(model, ex.example_inputs, train)
        emu = design.load("emu")
        emu.set_params(_float_params(model))
        if train is None:
            emu.infer(x.numpy())
        else:
            emu.train_step(x.numpy(), y.numpy())
        mem = emu.backend.emulator.mem
        replay = replay_layers(design.kernel, gm, graph_args(design.kernel, gm, x, y), mem)
        assert replay.mismatch == {}
        expected = 4 if train is None else 11  # 2 convs, 2 pools (+ 2 pool and 2 conv backwards: dx, 2x dw, 2x db)
        assert len(replay.checked) == expected, sorted(replay.checked)
    relu = mem["train_relu"]  # (16, 4, 8, 8): windows of 2x2 whose maximum is tied
    windows = relu.reshape(16, 4, 4, 2, 4, 2).transpose(0, 1, 2, 4, 3, 5).reshape(16, 4, 4, 4, 4)
    tied = (windows == windows.max(axis=-1, keepdims=True)).sum(-1) > 1
    assert tied.sum() > 100  # ties are common (ReLU zeros): the first-maximum routing was exercised
    mem["train_convolution_backward_dw"][0, 0, 0, 0] += 1  # a control: one LSB off is seen
    bad = replay_layers(design.kernel, gm, graph_args(design.kernel, gm, x, y), mem)
    assert bad.mismatch == {"train_convolution_backward_dw": 1}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim", "rtl"])
def test_cnn_training_step_equals_emu(cnn, digits_data, backend):
    """Two training steps and an inference: every output and parameter word of csim (and of rtl)
    equals emu after each call; rtl takes exactly the schedule model's cycles."""
    ex, model, design = cnn
    x_train, y_train, x_test, _ = digits_data
    model_cycles = verilog.call_cycles(design.kernel)

    def exact_cycles(command, runner):
        if backend == "rtl":
            assert runner.backend.last_cycles == model_cycles[command], command

    steps = [("train_step", [ex.images(x_train[16 * s:16 * s + 16]), y_train[16 * s:16 * s + 16]]) for s in range(2)]
    emu = assert_backend_equals_emu(design, backend, [*steps, ("infer", [ex.images(x_test[:16])])],
                                    params=_float_params(model), after_call=exact_cycles)
    after = emu.get_params_raw()
    assert len(after) == 7  # 6 parameters and the learning rate register
    assert not np.array_equal(design.kernel.buffers["conv1_weight"].init, after["conv1_weight"].reshape(-1))
    if backend == "rtl":
        assert_lint_clean(design.out_dir / "rtl", f"{design.kernel.name}_top")


def test_cnn_300_steps_reach_float_accuracy(cnn, digits_data, mlp_example):
    """300 SGD steps in emu: held-out accuracy within 3 points of float training from the same init."""
    ex, model, design = cnn
    x_train, y_train, x_test, y_test = digits_data
    batches = list(mlp_example.batches(x_train, y_train, 300))  # the examples' shared data helpers
    emu = design.load("emu")
    emu.set_params(_float_params(model))
    losses = [emu.train_step(ex.images(xb), yb) for xb, yb in batches]
    acc_emu = mlp_example.accuracy(lambda xb: emu.infer(ex.images(xb)), x_test, y_test)
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=design.train.lr)
    for xb, yb in batches:
        opt.zero_grad()
        F.cross_entropy(ref(torch.from_numpy(ex.images(xb))), torch.from_numpy(yb)).backward()
        opt.step()
    acc_float = mlp_example.accuracy(lambda xb: ref(torch.from_numpy(ex.images(xb))).detach().numpy(), x_test,
                                     y_test)
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    assert acc_float > 0.8
    assert abs(acc_emu - acc_float) <= 0.03, (acc_emu, acc_float)


# ----- a Conv1d model: strided input gradients, no bias, within derived bounds --------------------------------


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv1d(4, 6, 3, stride=2, padding=1, bias=False)  # its input gradient: strided reads
        self.fc = nn.Linear(48, 3)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(h.flatten(1))


@pytest.fixture(scope="module")
def conv1d(tmp_path_factory):
    torch.manual_seed(3)
    model = Conv1dNet()
    gen = torch.Generator().manual_seed(4)
    x, y = torch.rand(16, 2, 16, generator=gen) * 2 - 1, torch.randint(0, 3, (16,), generator=gen)
    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1),
                             out_dir=tmp_path_factory.mktemp("conv1d") / "conv1d",
                             share_memory=False, fold_updates=False)  # the tests read every tensor by name
    return model, x, y, design


def _torch_step(model, x, y, lr):
    """PyTorch's own float64 training step: (loss, new state dict)."""
    ref = copy.deepcopy(model).double().train()
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    loss = F.cross_entropy(ref(x.double()), y)
    loss.backward()
    opt.step()
    return loss.item(), {k: v.detach() for k, v in ref.state_dict().items()}


def check_against_float(design, model, x, y, train: bool, runner=None) -> dict[str, float]:
    """Run ``infer`` or one ``train_step`` in emu and check every output against float:

    - the traced graph in float64 is PyTorch's own step (within float64 noise);
    - with the emulator's ReLU decisions, |emu - float| <= the derived first-order bound;
    - each decision taken otherwise than in float is within its derived bound of the threshold.

    Returns the largest error / bound per output."""
    gm = trace(model, (x,), design.train if train else None)
    emu = runner or design.load("emu")
    roles = graph_info(gm).outputs
    if train:
        loss = emu.train_step(x.numpy(), y.numpy())
        got = emu.get_params()
        values = [loss if r.kind == "loss" else got[r.name] for r in roles]
        torch_loss, torch_state = _torch_step(model, x, y, design.train.lr)
        torch_values = [torch_loss if r.kind == "loss" else torch_state[r.name].numpy() for r in roles]
    else:
        values = [emu.infer(x.numpy())]
        torch_values = [copy.deepcopy(model).double().eval()(x.double()).detach().numpy()]
    args = graph_args(design.kernel, gm, x, y, quantized=False)
    mem = emu.backend.emulator.mem
    return outputs_within_bounds(design.kernel, gm, args, mem, roles, values, torch_values)


def test_conv1d_forward_and_step_within_derived_bounds(conv1d):
    model, x, y, design = conv1d
    emu = design.load("emu")
    emu.set_params(_float_params(model))
    fwd = check_against_float(design, model, x, y, train=False, runner=emu)
    step = check_against_float(design, model, x, y, train=True, runner=emu)
    assert set(step) == {"loss", "param:conv1.weight", "param:conv1.bias", "param:conv2.weight", "param:fc.weight",
                         "param:fc.bias"}
    assert 0 < fwd["output"] <= 1 and all(0 < r <= 1 for r in step.values())


def test_conv1d_layers_equal_pytorch_on_the_kernels_own_values(conv1d):
    model, x, y, design = conv1d
    gm = trace(model, (x,), design.train)
    emu = design.load("emu")
    emu.train_step(x.numpy(), y.numpy())
    replay = replay_layers(design.kernel, gm, graph_args(design.kernel, gm, x, y), emu.backend.emulator.mem)
    assert replay.mismatch == {}
    assert {"train_convolution_backward_dx", "train_convolution_backward_dw", "train_convolution_backward_1_dw",
            "train_convolution_backward_1_db"} <= set(replay.checked)  # conv2 has no bias: no db of its own
    strided = [s for s in design.kernel.programs["train_step"].stages if s.name == "train_convolution_backward_dx"]
    assert strided and any(g.step == 2 for a in strided[0].ins for g in a.guard)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim", "rtl"])
def test_conv1d_equals_emu(conv1d, backend):
    model, x, y, design = conv1d
    assert_backend_equals_emu(design, backend, [("train_step", [x.numpy(), y.numpy()]),
                                                ("train_step", [x.numpy()[:, :, ::-1], y.numpy()]),
                                                ("infer", [x.numpy()])])


# ----- refusals ---------------------------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.layer(x * self.scale)


@pytest.mark.parametrize("layer, shape, detail", [
    (nn.Conv2d(1, 2, 3, dilation=2), (2, 1, 8, 8), "dilation"),
    (nn.Conv3d(1, 2, 3), (2, 1, 4, 4, 4), "Conv1d and Conv2d only"),
    (nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), (2, 1, 8, 8), "padding_mode='zeros'"),
    (nn.Conv1d(1, 2, 3, padding=1, padding_mode="circular"), (2, 1, 8), "padding_mode='zeros'"),
    (nn.MaxPool2d(2, ceil_mode=True), (2, 1, 5, 5), "ceil_mode"),
    (nn.MaxPool2d(2, dilation=2), (2, 1, 8, 8), "dilation"),
    (nn.AvgPool2d(2, ceil_mode=True), (2, 1, 5, 5), "ceil_mode"),
    (nn.AdaptiveAvgPool2d(3), (2, 1, 8, 8), "divides"),
    (nn.AdaptiveMaxPool2d(2), (2, 1, 8, 8), "aten.adaptive_max_pool2d"),
    (nn.BatchNorm1d(4, momentum=None), (4, 4), "momentum=None"),
])
def test_unsupported_layers_name_the_limit(layer, shape, detail):
    x = torch.rand(shape)
    with pytest.raises(UnsupportedOpError, match=detail.replace("(", r"\(")) as ei:
        fx2fpga.compile(_Net(layer), (x,), train=fx2fpga.SGD(F.mse_loss, torch.zeros_like(layer(x))))
    assert "aten.convolution" in str(ei.value)  # the supported set is listed
