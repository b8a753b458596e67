"""torch.cat, torch.stack, torch.split and torch.chunk on chip (docs/layers/concat.md).

A split is a tuple of slice views (no stage); a cat is one ``copy`` stage per input writing its
slice of one output buffer; a stack is a cat of unsqueezed views. One model chains them all
(cat along dims 1 and 0 of three inputs of different sizes, split, chunk, stack) and is compiled
once for inference and one SGD step: emu within the bound derived from the formats of PyTorch
float, csim and rtl equal to emu word for word. A second model (emu only) covers unbind, repeat,
a stack along dim 0, an unused split piece (a zero gradient piece in the backward cat), a cat
with a parameter and one with an empty piece.
"""

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
from ..error_bounds import propagate
from .test_nonlinear import on_grid

LR = 0.125  # on the grid of the learning rate's format: the bound needs the kernel's lr to be exact
WEIGHT_FMT, INPUT_FMT = Fixed(24, 8), Fixed(16, 6)  # the default formats: the kernel holds them exactly


class ConcatNet(nn.Module):
    """Linear(6, 8) -> split [2, 3, 3] -> cat (dim 1) -> cat of row ranges (dim 0) -> chunk -> stack
    -> Linear(8, 3)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc1(x)
        a, b, c = torch.split(h, [2, 3, 3], dim=1)
        g = torch.cat([c, a * 0.5, b * b], dim=1)  # pieces of 3, 2 and 3 columns
        r = torch.cat([g[:1] * 2, g[1:3] - 1, -g[3:]], dim=0)  # 1, 2 and B - 3 rows
        p, q = torch.chunk(r, 2, dim=1)
        return self.fc2(torch.stack([q, p], dim=1).flatten(1))


class StackNet(nn.Module):
    """unbind + stack (dim 1), stack (dim 0) + sum, repeat, an unused split piece, a cat with a parameter
    and an empty piece."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)
        self.w = nn.Parameter(torch.randn(3) * 0.5)

    def forward(self, x):
        h = self.fc1(x)
        reversed_cols = torch.stack(list(reversed(h.unbind(1))), dim=1)
        both = torch.stack([reversed_cols[:, :4], h[:, 4:] * 2]).sum(0)
        head = torch.split(h, [5, 3], dim=1)[0]
        z = torch.cat([h[:, :0], head, self.w.expand(x.shape[0], 3)], dim=1) + both.repeat(1, 2)  # an empty piece
        return self.fc2(z)


def _problem(cls, seed: int):
    torch.manual_seed(seed)
    model = cls()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(on_grid(p, WEIGHT_FMT))
    x = on_grid(torch.randn(6, 6) * 2, INPUT_FMT)
    return model, x, torch.randint(0, 3, (6,))


@pytest.fixture(scope="module")
def concat(tmp_path_factory):
    model, x, y = _problem(ConcatNet, 0)
    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.cross_entropy, y, LR),
                             out_dir=tmp_path_factory.mktemp("concat"))
    return model, x, y, design


@pytest.fixture(scope="module")
def stacknet():
    model, x, y = _problem(StackNet, 1)
    return model, x, y, fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.cross_entropy, y, LR))


def _written_counts(kernel, program: str) -> dict[str, np.ndarray]:
    """For each cat node of ``program``: how many times its stages write each output position."""
    counts: dict[str, np.ndarray] = {}
    for st in kernel.programs[program].stages:
        if "aten.cat.default (input" not in st.origin:
            continue
        node = st.origin.split(" = ")[0]
        shape = kernel.buffers[st.out.buffer].shape
        seen = counts.setdefault(node, np.zeros(shape, dtype=int))
        extents = tuple(lp.extent for lp in st.loops)
        grid = dict(zip((lp.var for lp in st.loops), np.indices(extents), strict=True))
        np.add.at(seen, tuple(a.evaluate(grid, extents) for a in st.out.index), 1)
    return counts


def test_cats_copy_each_input_into_its_slice_and_splits_cost_no_stage(concat):
    _, _, _, design = concat
    k = design.kernel
    infer = k.programs["infer"]
    counts = _written_counts(k, "infer")
    assert sorted(counts) == ["cat", "cat_1", "cat_2"]  # the dim-1 cat, the dim-0 cat, the stack
    for node, seen in counts.items():
        assert (seen == 1).all(), node  # every output position written exactly once
    parts = [st for st in infer.stages if "aten.cat.default (input" in st.origin]
    assert [st.op for st in parts] == ["copy"] * 8  # 3 + 3 + 2 inputs
    assert len({st.name for st in k.stages()}) == len(list(k.stages()))  # stage names stay unique
    assert not any("split_with_sizes" in st.origin for st in k.stages())
    # the backward of the chunk and of the split are cats too (slices of the gradient: no stage)
    assert len(_written_counts(k, "train_step")) == 5


def _inference_within_bound(model, x, design) -> float:
    k = design.kernel
    ref = copy.deepcopy(model).double()
    params = {b: ref.get_parameter(k.param_names[b]).detach().numpy() for b in k.params if b in k.param_names
              and k.param_names[b] in dict(ref.named_parameters())}
    infer = k.programs["infer"]
    _, err = propagate(k, "infer", {**params, infer.inputs[0]: x.double().numpy()})
    got, want = design.load("emu").infer(x.numpy()), ref(x.double()).detach().numpy()
    bound = err[infer.outputs[0]]
    assert np.all(np.abs(got - want) <= bound + 1e-12), (np.abs(got - want).max(), bound.max())
    return float(bound.max())


def _sgd_step_within_bound(model, x, y, design) -> tuple[float, float]:
    """One SGD step on emu against PyTorch float: every new parameter within its bound from the formats.
    Returns the largest bound and the largest distance a parameter moved."""
    k = design.kernel
    step = k.programs["train_step"]
    emu = design.load("emu")
    named = dict(model.named_parameters())
    by_buffer = {b: n for b, n in k.param_names.items() if n in named}
    feed = {b: named[n].detach().double().numpy() for b, n in by_buffer.items()}
    _, err = propagate(k, "train_step", {**feed, step.inputs[0]: x.double().numpy(),
                                          step.inputs[1]: y.numpy().astype(np.float64)})
    emu.train_step(x.numpy(), y.numpy())
    ref = copy.deepcopy(model).double()
    opt = torch.optim.SGD(ref.parameters(), lr=LR)
    F.cross_entropy(ref(x.double()), y).backward()
    opt.step()
    got, ref_params = emu.get_params(), dict(ref.named_parameters())
    worst, moved = 0.0, 0.0
    for b, n in by_buffer.items():
        want = ref_params[n].detach().numpy()
        assert np.all(np.abs(got[n] - want) <= err[b] + 1e-12), (n, np.abs(got[n] - want).max(), err[b].max())
        worst, moved = max(worst, float(err[b].max())), max(moved, float(np.abs(want - feed[b]).max()))
    return worst, moved


def test_inference_is_within_the_bound_of_float(concat):
    model, x, _, design = concat
    assert _inference_within_bound(model, x, design) < 0.01


def test_one_sgd_step_is_within_the_bound_of_float(concat):
    model, x, y, design = concat
    bound, moved = _sgd_step_within_bound(model, x, y, design)
    assert bound < 0.1 * moved, (bound, moved)  # the bound is far below the distance the parameters moved


def test_unbind_repeat_and_a_parameter_piece_are_within_the_bound(stacknet):
    model, x, y, design = stacknet
    ops = {st.origin.split(" = ")[1].split(" ")[0] for st in design.kernel.stages() if " = " in st.origin}
    assert "aten.cat.default" in ops and "aten.repeat.default" not in ops  # repeat is a view: no stage of its own
    assert _inference_within_bound(model, x, design) < 0.01
    bound, moved = _sgd_step_within_bound(model, x, y, design)
    assert bound < 0.1 * moved, (bound, moved)


def test_flip_stays_unsupported_and_says_where():
    class Flip(nn.Module):
        def forward(self, x):
            return torch.flip(x, [1])

    with pytest.raises(UnsupportedOpError) as e:
        fx2fpga.compile(Flip(), (torch.randn(4, 8),))
    assert "aten.flip" in str(e.value) and "test_concat.py" in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim", "rtl"])
def test_backend_equals_emu_word_for_word(concat, backend):
    _, x, y, design = concat
    x2 = on_grid(torch.randn(6, 6), INPUT_FMT)
    assert_backend_equals_emu(design, backend, [
        ("infer", [x.numpy()]), ("train_step", [x.numpy(), y.numpy()]),
        ("train_step", [x2.numpy(), y.flip(0).numpy()]), ("infer", [x2.numpy()])])
