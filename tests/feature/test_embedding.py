"""nn.Embedding on chip, as a one-hot matrix product (``frontend/embedding.py``): inference and one SGD step
within the bound derived from the formats of PyTorch float, the padding row never trained, csim and rtl
equal to emu word for word."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.fixed import Fixed
from torch import nn

import fx2fpga
from fx2fpga.errors import UnsupportedOpError

from ..conftest import assert_backend_equals_emu
from ..error_bounds import model_params, propagate
from .test_nonlinear import on_grid


class TokenNet(nn.Module):
    """Embedding(12, 4, padding_idx=0) of 3 tokens -> flatten -> Linear(12, 3)."""

    def __init__(self, **kw):
        super().__init__()
        self.emb, self.fc = nn.Embedding(12, 4, padding_idx=0, **kw), nn.Linear(12, 3)

    def forward(self, idx):
        return self.fc(self.emb(idx).flatten(1))


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    torch.manual_seed(7)
    model = TokenNet()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(on_grid(p, Fixed(24, 8)))  # the default weight format: the kernel holds them exactly
    idx = torch.tensor([[1, 5, 0], [2, 2, 7], [11, 0, 3], [5, 1, 1], [7, 7, 2], [0, 3, 9], [4, 11, 5], [1, 9, 3]])
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    design = fx2fpga.compile(model, (idx,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.25),
                             out_dir=tmp_path_factory.mktemp("tokens"))
    return model, idx, y, design


def test_embedding_inference_is_within_the_bound_of_float(tokens):
    model, idx, _, design = tokens
    k = design.kernel
    infer = k.programs["infer"]
    _, err = propagate(k, "infer", {**model_params(design.kernel, model), infer.inputs[0]: idx.numpy()})
    got = design.load("emu").infer(idx.numpy())
    want = copy.deepcopy(model).double()(idx).detach().numpy()
    bound = err[infer.outputs[0]]
    assert np.all(np.abs(got - want) <= bound + 1e-12) and bound.max() < 0.01


def test_one_step_trains_the_rows_it_read_within_the_bound_and_never_the_padding_row(tokens):
    model, idx, y, design = tokens
    k = design.kernel
    step = k.programs["train_step"]
    feed = {**model_params(design.kernel, model), step.inputs[0]: idx.numpy(), step.inputs[1]: y.numpy()}
    _, err = propagate(k, "train_step", feed)
    emu = design.load("emu")
    emu.train_step(idx.numpy(), y.numpy())
    ref = copy.deepcopy(model).double()
    torch.optim.SGD(ref.parameters(), lr=0.25).zero_grad()
    F.cross_entropy(ref(idx), y).backward()
    got = emu.get_params()
    by_name = {k.param_names[b]: b for b in k.params}
    for name, p in ref.named_parameters():
        want = (p - 0.25 * p.grad).detach().numpy()
        assert np.all(np.abs(got[name] - want) <= err[by_name[name]] + 1e-12), name
    start = model.emb.weight.detach().numpy()
    moved = np.abs(got["emb.weight"] - start).max(axis=1) > 0
    assert not moved[0] and not moved[[6, 8, 10]].any()  # the padding row; rows no token read
    assert moved[[1, 2, 3, 5, 7, 9, 11]].all()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim", "rtl"])
def test_embedding_kernel_equals_emu_word_for_word(tokens, backend):
    _, idx, y, design = tokens
    other = torch.tensor([[3, 3, 3], [0, 0, 0], [11, 10, 9], [8, 6, 4], [1, 2, 3], [4, 5, 6], [7, 8, 9], [2, 0, 11]])
    assert_backend_equals_emu(design, backend, [("infer", [idx.numpy()]), ("train_step", [idx.numpy(), y.numpy()]),
                                                ("train_step", [other.numpy(), y.numpy()]), ("infer", [other.numpy()])])


def test_scale_grad_by_freq_is_refused_by_name():
    model = TokenNet(scale_grad_by_freq=True)
    idx, y = torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([0, 1])
    with pytest.raises(UnsupportedOpError, match="scale_grad_by_freq"):
        fx2fpga.compile(model, (idx,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1), outputs="hls")
