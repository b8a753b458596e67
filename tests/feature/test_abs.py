"""torch.abs on chip (IR op ``abs``): Linear -> abs -> Linear compiled end to end, emu within a bound
derived from the formats of PyTorch float, csim and rtl equal to emu word for word; ``|min|`` of a
signed format saturates in SAT mode and wraps in WRAP mode."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from fx2fpga_runtime.emulator import Emulator
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Access, Affine, Buffer, Kernel, Loop, Program, Stage
from torch import nn

import fx2fpga

from ..conftest import assert_backend_equals_emu
from ..error_bounds import propagate
from .test_nonlinear import on_grid


class AbsNet(nn.Module):
    """Linear(4, 6) -> abs -> Linear(6, 3)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.abs(self.fc1(x)))


@pytest.fixture(scope="module")
def absnet(tmp_path_factory):
    torch.manual_seed(4)
    model = AbsNet()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(on_grid(p, Fixed(24, 8)))  # the default weight format: the kernel holds them exactly
    x = on_grid(torch.randn(16, 4) * 2, Fixed(16, 6))
    design = fx2fpga.compile(model, (x,), out_dir=tmp_path_factory.mktemp("absnet"))
    return model, x, design


def test_abs_is_one_stage_and_emu_is_within_the_bound_of_float(absnet):
    model, x, design = absnet
    k = design.kernel
    assert [s.op for s in k.stages()].count("abs") == 1
    ref = copy.deepcopy(model).double()
    params = {b: ref.get_parameter(k.param_names[b]).detach().numpy() for b in k.params}
    infer = k.programs["infer"]
    _, err = propagate(k, "infer", {**params, infer.inputs[0]: x.double().numpy()})
    got, want = design.load("emu").infer(x.numpy()), ref(x.double()).detach().numpy()
    bound = err[infer.outputs[0]]
    assert np.all(np.abs(got - want) <= bound + 1e-12), (np.abs(got - want).max(), bound.max())
    assert bound.max() < 0.01
    h = ref.fc1(x.double())
    assert (h < 0).any() and (h > 0).any()  # abs flips some values and keeps others


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim", "rtl"])
def test_abs_kernel_equals_emu_word_for_word(absnet, backend):
    _, x, design = absnet
    rng = np.random.default_rng(0)
    assert_backend_equals_emu(design, backend, [("infer", [x.numpy()]), ("infer", [rng.normal(0, 3, (16, 4))])])


@pytest.mark.parametrize("out, want", [("fixed<8,3>", [127, 127, 5, 5, 0]),  # |min| saturates to max
                                       ("fixed<8,3,RND,WRAP>", [-128, 127, 5, 5, 0]),  # |min| wraps to min
                                       ("fixed<6,2,RND,SAT>", [31, 31, 3, 3, 0])])  # then the output's rounding
def test_abs_assigns_the_exact_result_to_the_output_format(out, want):
    a, o = Buffer("a", (5,), Fixed.parse("fixed<8,3>"), "input"), Buffer("o", (5,), Fixed.parse(out), "output")
    st = Stage("s", "abs", (Loop("i", 5),), Access("o", (Affine.var("i"),)), (Access("a", (Affine.var("i"),)),))
    k = Kernel("k", {"a": a, "o": o}, {"infer": Program("infer", ["a"], ["o"], [st])}, [])
    got = Emulator(k).run("infer", {"a": np.array([-128, 127, -5, 5, 0])})["o"]
    assert got.tolist() == want
