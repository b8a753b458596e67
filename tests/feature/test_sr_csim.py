"""Stochastic rounding (``SR``) in the csim backend: the generated C++ draws the emulator's random bits, so csim
equals emu bit for bit over several calls (the call counter ``t`` matters), for elementwise stages, reductions
(guarded reads included), the digits MLP's training step and stacked models, in groups or not. Each test also
shows that SR changed the numbers, so that it cannot pass with the random bits left out."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from fx2fpga_runtime.emu_compile import output_interval
from torch import nn

import fx2fpga

from ..conftest import assert_backend_equals_emu

pytestmark = pytest.mark.slow

SR_TRAINING = {"weight": "fixed<8,2,SR,SAT>", "gradient": "fixed<16,4,SR,SAT>"}
RND_TRAINING = {"weight": "fixed<8,2,RND,SAT>", "gradient": "fixed<16,4,RND,SAT>"}
CALLS = 3


def rounding_stages(kernel) -> set[str]:
    """The kinds (``elementwise``, ``reduce``) of the stages that round SR and drop bits."""
    kinds = set()
    for st in kernel.stages():
        fmt = kernel.buffers[st.out.buffer].fmt
        if fmt.rounding == "SR" and output_interval(st, kernel)[1] > fmt.frac_bits:
            kinds.add("reduce" if st.reduce else "elementwise")
    return kinds


class Square(nn.Module):
    def forward(self, x):
        return x * x


def _inputs(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.5, 1.5, size=shape).astype(np.float32)


def _infer_design(model, shape, activation: str):
    torch.manual_seed(0)
    return fx2fpga.compile(model, (torch.from_numpy(_inputs(shape)),), target="pynq-z1",
                           precision={"activation": activation})


@pytest.fixture(scope="module")
def square():
    """``x * x`` on 4 x 16 values (lanes), the product rounded SR to 6 fraction bits."""
    return _infer_design(Square(), (4, 16), "fixed<8,2,SR,SAT>")


def _repeated_infer(design, x: np.ndarray) -> list[np.ndarray]:
    """``CALLS`` infers of the same input, each checked equal between emu and csim; the emulator's outputs."""
    assert_backend_equals_emu(design, "csim", [("infer", (x,))] * CALLS)
    emu = design.load("emu")
    return [emu.infer(x) for _ in range(CALLS)]


def test_elementwise_sr_equals_emu_over_calls(square):
    assert rounding_stages(square.kernel) == {"elementwise"}
    assert "sr_delta<6," in square.files()[f"src/{square.kernel.name}.cpp"]
    x = _inputs((4, 16), 1)
    outs = _repeated_infer(square, x)
    assert not np.array_equal(outs[0], outs[1])  # t changes the bits from call to call
    rnd = _infer_design(Square(), (4, 16), "fixed<8,2,RND,SAT>").load("emu").infer(x)
    assert not np.array_equal(outs[0], rnd)


def test_a_reopened_kernel_starts_at_call_zero(square):
    """The call counter lives in the simulation process: a new one starts at t = 0, like a new emulator."""
    x = _inputs((4, 16), 2)
    with square.load("csim") as first:
        firsts = [first.infer(x) for _ in range(2)]
    with square.load("csim") as again:
        assert np.array_equal(again.infer(x), firsts[0])
    assert np.array_equal(square.load("emu").infer(x), firsts[0])
    assert not np.array_equal(firsts[0], firsts[1])


@pytest.mark.parametrize("case", ["linear", "conv_padded"])
def test_reduction_sr_equals_emu_over_calls(case):
    """A mac reduction whose output rounds SR: ``nn.Linear``, and a padded convolution (guarded reads)."""
    torch.manual_seed(0)
    model, shape = (nn.Linear(16, 8), (4, 16)) if case == "linear" else (nn.Conv2d(1, 2, 3, padding=1), (2, 1, 6, 6))
    design = _infer_design(model, shape, "fixed<10,3,SR,SAT>")
    assert "reduce" in rounding_stages(design.kernel)
    assert case == "linear" or any(a.guard for st in design.kernel.stages() for a in st.ins)
    x = _inputs(shape, 3)
    outs = _repeated_infer(design, x)
    assert not np.array_equal(outs[0], outs[1])
    rnd = _infer_design(model, shape, "fixed<10,3,RND,SAT>").load("emu").infer(x)
    assert not np.array_equal(outs[0], rnd)


def _digits_design(mlp_example, models, precision, **kw):
    return fx2fpga.compile(models, mlp_example.example_inputs, target="pynq-z1",
                           train=fx2fpga.SGD(mlp_example.loss_fn, mlp_example.example_targets, lr=0.1),
                           precision=precision, **kw)


@pytest.fixture(scope="module")
def digits_sr(mlp_example):
    """The digits MLP trained with 8-bit weights and 16-bit gradients, both rounded SR."""
    torch.manual_seed(0)
    return _digits_design(mlp_example, mlp_example.DigitsMLP(), SR_TRAINING)


def _train_sequence(digits_data, steps: int) -> list:
    x, y = digits_data[0], digits_data[1]
    return [("train_step", (x[16 * s:16 * s + 16], y[16 * s:16 * s + 16])) for s in range(steps)]


@pytest.mark.parametrize("headers", ["fastfixed", "ap_types"])
def test_digits_mlp_sr_training_equals_emu(digits_sr, digits_data, mlp_example, headers, monkeypatch):
    """5 training steps: every loss and parameter word equal, with either header set behind the C++."""
    assert rounding_stages(digits_sr.kernel) == {"elementwise", "reduce"}
    monkeypatch.setenv("FX2FPGA_CSIM_HEADERS", headers)
    sequence = _train_sequence(digits_data, 5)
    seen = []
    emu = assert_backend_equals_emu(digits_sr, "csim", sequence,
                                    after_call=lambda _cmd, runner: seen.append(runner.backend.headers))
    assert set(seen) == {headers}
    torch.manual_seed(0)
    rnd = _digits_design(mlp_example, mlp_example.DigitsMLP(), RND_TRAINING).load("emu")
    for _, (x, y) in sequence:
        rnd.train_step(x, y)
    sr_params, rnd_params = emu.get_params_raw(), rnd.get_params_raw()
    assert any(not np.array_equal(sr_params[k], rnd_params[k]) for k in sr_params)


@pytest.mark.parametrize("model_lanes", [2, 1])
def test_stacked_identical_models_draw_the_same_bits(mlp_example, digits_data, model_lanes):
    """Two identical models stacked on the model axis (``model_lanes=2``: side by side; 1: in two groups): csim
    equals emu, and each model draws what the other draws (the point leaves the model loop out)."""
    torch.manual_seed(0)
    m1 = mlp_example.DigitsMLP(hidden=8)
    design = _digits_design(mlp_example, [m1, copy.deepcopy(m1)], SR_TRAINING, model_lanes=model_lanes, lanes=2)
    assert {p.groups for p in design.kernel.programs.values()} == {3 - model_lanes}
    assert rounding_stages(design.kernel) == {"elementwise", "reduce"}
    sequence = _train_sequence(digits_data, CALLS)
    assert_backend_equals_emu(design, "csim", [*sequence, ("infer", (sequence[0][1][0],))])
    emu = design.load("emu")
    for _, (x, y) in sequence:
        losses = emu.train_step(x, y)
        assert losses[0] == losses[1]
    first, second = emu.get_params()
    assert all(np.array_equal(first[k], second[k]) for k in first)
    torch.manual_seed(0)
    rnd = _digits_design(mlp_example, [m1, copy.deepcopy(m1)], RND_TRAINING, model_lanes=model_lanes, lanes=2)
    rnd_emu = rnd.load("emu")
    for _, (x, y) in sequence:
        rnd_emu.train_step(x, y)
    assert any(not np.array_equal(first[k], rnd_emu.get_params()[0][k]) for k in first)


class Product(nn.Module):
    def forward(self, x, y):
        return x * y


def test_saturation_counters_count_the_sr_rounded_value():
    """1.5 * 85/64 is 127.5 output lsbs: rounded up (to 128, past the maximum 127: counted) or down (not counted);
    truncated or rounded to nearest, none or all of them would count."""
    x, y = np.full((4, 16), 1.5, np.float32), np.full((4, 16), 85 / 64, np.float32)
    with pytest.warns(fx2fpga.QuantizationWarning):  # the output saturates, as it should here
        design = fx2fpga.compile(Product(), (torch.from_numpy(x), torch.from_numpy(y)), target="pynq-z1",
                                 precision={"activation": "fixed<8,2,SR,SAT>", "range_margin_bits": 0},
                                 saturation_counters=True)
    assert rounding_stages(design.kernel) == {"elementwise"}
    emu, counts = design.load("emu"), []
    with design.load("csim") as csim:
        for _ in range(CALLS):
            assert np.array_equal(emu.infer(x, y), csim.infer(x, y))
            counted = csim.saturation()
            assert counted == emu.saturation()
            counts.append(max(counted.values()))
    assert all(0 < n < x.size for n in counts)
