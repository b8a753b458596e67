"""Models with several inputs and several outputs: ``forward(x, z) -> (logits, h)`` compiled for inference
and training (``train_step(x, z, y)``), within the bound derived from the formats of PyTorch float, csim and
rtl equal to emu word for word, and through ``FPGAModule``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.fixed import Fixed
from torch import nn

import fx2fpga

from ..conftest import assert_backend_equals_emu
from ..error_bounds import model_params, propagate
from .test_nonlinear import on_grid


class TwoWay(nn.Module):
    """Two inputs joined by a sum, two outputs: the logits and the hidden layer."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 5), nn.Linear(2, 5), nn.Linear(5, 3)

    def forward(self, x, z):
        h = self.a(x) + self.b(z)  # (no ReLU: its backward's comparisons at 0 defeat the propagated bound)
        return self.out(h), h


def two_way_loss(outputs, y):
    """Cross-entropy of the logits plus an activity penalty on the hidden layer."""
    logits, h = outputs
    return F.cross_entropy(logits, y) + 0.125 * (h * h).mean()


@pytest.fixture(scope="module")
def two_way(tmp_path_factory):
    torch.manual_seed(11)
    model = TwoWay()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(on_grid(p, Fixed(24, 8)))
    act = Fixed(16, 6)
    x, z, y = on_grid(torch.randn(8, 4), act), on_grid(torch.randn(8, 2), act), torch.randint(0, 3, (8,))
    design = fx2fpga.compile(model, (x, z), train=fx2fpga.SGD(two_way_loss, y, lr=0.25),
                             out_dir=tmp_path_factory.mktemp("two_way"))
    return model, x, z, y, design


def test_programs_take_every_input_and_give_every_output(two_way):
    *_, design = two_way
    k = design.kernel
    assert k.programs["infer"].inputs == ["infer_x", "infer_z"] and len(k.programs["infer"].outputs) == 2
    assert k.programs["train_step"].inputs == ["train_x", "train_z", "train_y"]


def test_inference_is_within_the_bound_of_float(two_way):
    model, x, z, _, design = two_way
    k = design.kernel
    infer = k.programs["infer"]
    _, err = propagate(k, "infer", {**model_params(design.kernel, model), "infer_x": x.numpy(), "infer_z": z.numpy()})
    logits, h = design.load("emu").infer(x.numpy(), z.numpy())
    want_logits, want_h = (t.detach().numpy() for t in copy.deepcopy(model).double()(x.double(), z.double()))
    assert np.all(np.abs(logits - want_logits) <= err[infer.outputs[0]] + 1e-12)
    assert np.all(np.abs(h - want_h) <= err[infer.outputs[1]] + 1e-12)


def test_one_step_is_within_the_bound_of_torchs(two_way):
    model, x, z, y, design = two_way
    k = design.kernel
    feed = {**model_params(design.kernel, model), "train_x": x.numpy(), "train_z": z.numpy(), "train_y": y.numpy()}
    _, err = propagate(k, "train_step", feed)
    emu = design.load("emu")
    loss = emu.train_step(x.numpy(), z.numpy(), y.numpy())
    ref = copy.deepcopy(model).double()
    want_loss = two_way_loss(ref(x.double(), z.double()), y)
    want_loss.backward()
    assert abs(loss - want_loss.item()) <= err[k.programs["train_step"].outputs[0]] + 1e-12
    got = emu.get_params()
    by_name = {k.param_names[b]: b for b in k.params}
    for name, p in ref.named_parameters():
        new = (p - 0.25 * p.grad).detach().numpy()
        assert np.all(np.abs(got[name] - new) <= err[by_name[name]] + 1e-12), name
        assert np.abs(got[name] - p.detach().numpy()).max() > 10 * err[by_name[name]].max()  # it moved


def test_fpga_module_takes_both_inputs_and_returns_both_outputs(two_way):
    _, x, z, y, design = two_way
    fpga, k = fx2fpga.FPGAModule(design), design.load("emu")
    xs, zs = torch.cat([x, x[:3]]), torch.cat([z, z[:3]])  # 11 rows: one batch and a padded one
    logits, h = fpga(xs, zs)
    assert logits.shape == (11, 3) and h.shape == (11, 5)
    want = k.infer(x.numpy(), z.numpy())
    assert np.array_equal(logits[:8].numpy(), want[0].astype(np.float32))
    assert np.array_equal(h[8:].numpy(), want[1][:3].astype(np.float32))
    assert float(fpga.train_step(x, z, y)) == np.float32(k.train_step(x.numpy(), z.numpy(), y.numpy()))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim", "rtl"])
def test_several_inputs_and_outputs_equal_emu_word_for_word(two_way, backend):
    _, x, z, y, design = two_way
    rng = np.random.default_rng(1)
    x2, z2 = rng.normal(0, 2, (8, 4)), rng.normal(0, 2, (8, 2))
    assert_backend_equals_emu(design, backend, [("infer", [x.numpy(), z.numpy()]),
                                                ("train_step", [x.numpy(), z.numpy(), y.numpy()]),
                                                ("train_step", [x2, z2, y.numpy()]), ("infer", [x2, z2])])
