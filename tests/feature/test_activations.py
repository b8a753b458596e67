"""Activations and elementwise layers on chip, forward and one SGD step: LeakyReLU, Hardtanh,
clamp, ELU, GELU (exact and tanh), SiLU, maximum, minimum, sqrt and LayerNorm
(``docs/layers/activations.md``).

How each claim is checked:

- *within derived bounds*: for each layer, a small model (Linear -> layer -> Linear) in emu against
  PyTorch float64, every output and updated parameter within the first-order bound derived from
  the formats (``error_bounds.GraphBounds``, via ``test_conv.check_against_float``), with the
  emulator's compare decisions; each decision taken otherwise than in float lies within its own
  derived bound of the threshold.
- *lowered to ops we have*: no layer needs a new IR op; the graph has the compares, selects and
  tables named in the docs page.
- *csim, rtl == emu*: one model chaining every layer, every output and parameter word after two
  training steps and an inference.
- *trains as float does*: a LayerNorm MLP, 300 SGD steps on digits in emu: the last 50 steps' mean
  loss within 10% of float training's.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fx2fpga

from ..conftest import assert_backend_equals_emu
from .test_conv import _float_params, check_against_float


class Maximum(nn.Module):
    """The elementwise maximum of the two halves of the features."""

    def forward(self, h):
        return torch.maximum(h[:, :4], h[:, 4:])


class Minimum(nn.Module):
    """The elementwise minimum of the two halves of the features."""

    def forward(self, h):
        return torch.minimum(h[:, :4], h[:, 4:])


class Clamp(nn.Module):
    def forward(self, h):
        return torch.clamp(h, -0.5, 1.0)


class ClampBetweenTensors(nn.Module):
    """clamp with tensor bounds (its backward masks with logical_or)."""

    def forward(self, h):
        return torch.clamp(h, 0.2 * h - 0.5, 0.2 * h + 0.5)


class Sqrt(nn.Module):
    def forward(self, h):
        return torch.sqrt(h * h + 0.5)


LAYERS = {  # name: (the layer, the function tables of its forward)
    "leaky_relu": (lambda: nn.LeakyReLU(0.1), set()),
    "hardtanh": (nn.Hardtanh, set()),
    "clamp": (Clamp, set()),
    "clamp_tensors": (ClampBetweenTensors, set()),
    "hardsigmoid": (nn.Hardsigmoid, set()),  # its backward masks with bitwise_and
    "elu": (nn.ELU, {"exp"}),
    "gelu": (nn.GELU, {"erf"}),
    "gelu_tanh": (lambda: nn.GELU("tanh"), {"tanh"}),
    "silu": (nn.SiLU, {"sigmoid"}),
    "maximum": (Maximum, set()),
    "minimum": (Minimum, set()),
    "sqrt": (Sqrt, {"sqrt"}),
    "layer_norm": (lambda: nn.LayerNorm(8), {"rsqrt"}),
}
HALVING = ("maximum", "minimum")  # layers whose output has half the features


class Sandwich(nn.Module):
    """Linear(4, 8) -> layer -> Linear(8 or 4, 3)."""

    def __init__(self, layer: nn.Module, width: int = 8):
        super().__init__()
        self.fc1, self.layer, self.fc2 = nn.Linear(4, 8), layer, nn.Linear(width, 3)

    def forward(self, x):
        return self.fc2(self.layer(self.fc1(x)))


def _problem(name: str):
    torch.manual_seed(11)
    model = Sandwich(LAYERS[name][0](), 4 if name in HALVING else 8)
    if name == "layer_norm":  # a non-trivial affine part
        with torch.no_grad():
            model.layer.weight.copy_(1 + 0.3 * torch.randn(8))
            model.layer.bias.copy_(0.2 * torch.randn(8))
    gen = torch.Generator().manual_seed(12)
    x, y = torch.randn(8, 4, generator=gen) * 1.5, torch.randint(0, 3, (8,), generator=gen)
    return model, x, y


def _compile(model, x, y, out_dir=None, **options):
    return fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1), out_dir=out_dir,
                           share_memory=False, **options)  # the bounds read intermediate tensors by name after a call


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_forward_and_step_within_derived_bounds(name):
    model, x, y = _problem(name)
    design = _compile(model, x, y)
    infer = design.kernel.programs["infer"].stages
    assert {s.attrs["fn"] for s in infer if s.op == "table"} == LAYERS[name][1]  # no new IR op: tables, selects
    emu = design.load("emu")
    emu.set_params(_float_params(model))
    fwd = check_against_float(design, model, x, y, train=False, runner=emu)
    step = check_against_float(design, model, x, y, train=True, runner=emu)
    assert set(step) == {"loss"} | {f"param:{n}" for n, _ in model.named_parameters()}
    assert 0 < fwd["output"] <= 1 and all(0 < r <= 1 for r in step.values()), (fwd, step)


class Chain(nn.Module):
    """Every layer of this file in one kernel: Linear(4, 8), the sum of the activations of its output,
    LayerNorm(8), Linear(8, 3)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3)
        self.acts = nn.ModuleList([nn.LeakyReLU(0.1), nn.Hardtanh(), Clamp(), nn.ELU(), nn.GELU(), nn.GELU("tanh"),
                                   nn.SiLU(), Sqrt()])

    def forward(self, x):
        h = self.fc1(x)
        z = torch.maximum(h, 0.3 * h) + torch.minimum(h, -0.5 * h)
        for act in self.acts:
            z = z + act(h)
        return self.fc2(self.norm(0.25 * z))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    torch.manual_seed(13)
    model = Chain()
    gen = torch.Generator().manual_seed(14)
    x, y = torch.randn(8, 4, generator=gen) * 1.5, torch.randint(0, 3, (8,), generator=gen)
    # one lane per stage: the many elementwise stages of the step fit the default target's DSP blocks
    return model, x, y, _compile(model, x, y, tmp_path_factory.mktemp("chain") / "chain", lanes=1)


def test_chain_forward_and_step_within_derived_bounds(chain):
    model, x, y, design = chain
    tables = {s.attrs["fn"] for s in design.kernel.programs["train_step"].stages if s.op == "table"}
    assert {"exp", "erf", "tanh", "sigmoid", "sqrt", "rsqrt", "reciprocal"} <= tables
    emu = design.load("emu")
    emu.set_params(_float_params(model))
    fwd = check_against_float(design, model, x, y, train=False, runner=emu)
    step = check_against_float(design, model, x, y, train=True, runner=emu)
    assert 0 < fwd["output"] <= 1 and all(0 < r <= 1 for r in step.values()), (fwd, step)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim", "rtl"])
def test_chain_equals_emu_word_for_word(chain, backend):
    model, x, y, design = chain
    flipped = x.numpy()[:, ::-1].copy()
    assert_backend_equals_emu(design, backend, [("train_step", [x.numpy(), y.numpy()]),
                                                ("train_step", [flipped, y.numpy()]),
                                                ("infer", [x.numpy() * 2])], params=_float_params(model))


class LayerNormDigitsMLP(nn.Module):
    """The digits MLP (``examples/mlp_digits.py``) with a LayerNorm before its ReLU: 64-32-LN-ReLU-10."""

    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(64, 32), nn.LayerNorm(32), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


@pytest.mark.slow  # 300 emulated steps: half a minute on 2 cores
def test_layer_norm_mlp_300_steps_train_as_float_does(mlp_example, digits_data):
    """300 SGD steps on digits in emu and in float from the same start: the mean loss of the last
    50 steps within 10% of float's, the test accuracy within 3 points."""
    x_train, y_train, x_test, y_test = digits_data
    torch.manual_seed(0)
    model = LayerNormDigitsMLP()
    design = fx2fpga.compile(model, mlp_example.example_inputs,
                             train=fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, lr=0.1))
    emu = design.load("emu")
    emu.set_params(_float_params(model))
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    emu_loss, float_loss = [], []
    for xb, yb in mlp_example.batches(x_train, y_train, 300):
        emu_loss.append(emu.train_step(xb, yb))
        opt.zero_grad()
        loss = F.cross_entropy(ref(torch.from_numpy(xb)), torch.from_numpy(yb))
        loss.backward()
        opt.step()
        float_loss.append(loss.item())
    last_emu, last_float = np.mean(emu_loss[-50:]), np.mean(float_loss[-50:])
    assert last_float < 0.5 * np.mean(float_loss[:10])  # it learns
    assert abs(last_emu - last_float) <= 0.1 * last_float, (last_emu, last_float)
    acc_emu = mlp_example.accuracy(emu.infer, x_test, y_test)
    acc_float = mlp_example.accuracy(lambda xb: ref(torch.from_numpy(xb)).detach().numpy(), x_test, y_test)
    assert acc_float > 0.85 and abs(acc_emu - acc_float) <= 0.03, (acc_emu, acc_float)
