"""The runner's fast paths against the paths they replace, bit for bit: the emulator without the round
trip through 32-bit words, the input quantizer specialised per format (``fixed.quantizer``), and
``KernelRunner.train_steps`` (many steps in one call) against a loop of ``train_step``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.fixed import MAX_WIDTH, OVERFLOW_MODES, ROUNDING_MODES, Fixed, FormatError, quantizer
from fx2fpga_runtime.runner import KernelRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fx2fpga

from ..conftest import load_example

STEPS, BATCH = 6, 4


class WordsOnly:
    """The emulator behind the word interface alone (no ``call_raw``/``call_steps``): the runner then takes
    the path it takes for csim, rtl and the board, words packed and unpacked."""

    def __init__(self, backend):
        self.backend, self.name = backend, backend.name

    def call(self, command: str, in_words: np.ndarray) -> np.ndarray:
        return self.backend.call(command, in_words)

    def close(self) -> None:
        self.backend.close()


def _words_only(design) -> KernelRunner:
    k = design.load("emu")
    return KernelRunner(k.kernel, WordsOnly(k.backend))


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def _compile(models, lr, **kw):
    x, y = torch.randn(BATCH, 8), torch.tensor([0, 1, 2, 0])
    return fx2fpga.compile(models, (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=lr), outputs="hls", **kw)


@pytest.fixture(scope="module")
def designs():
    """One model; three models stacked on a model axis; two models with buffers of their own."""
    return {"one": _compile(_mlp(0), 0.1),
            "stacked": _compile([_mlp(i) for i in range(3)], [0.05, 0.1, 0.2]),
            "separate": _compile([_mlp(3), _mlp(4)], 0.1, stack_models=False)}


def _batches(steps: int = STEPS, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = rng.normal(0, 3, (steps, BATCH, 8))  # some inputs beyond fixed<16,6>'s range: saturated
    return xs, rng.integers(0, 3, (steps, BATCH)).astype(np.float64)


def _assert_same_params(a: KernelRunner, b: KernelRunner) -> None:
    pa, pb = a.get_params_raw(), b.get_params_raw()
    assert pa.keys() == pb.keys()
    for n in pa:
        assert np.array_equal(pa[n], pb[n]), n


@pytest.mark.parametrize("which", ["one", "stacked", "separate"])
def test_train_steps_is_a_loop_of_train_step_through_words(designs, which):
    design = designs[which]
    words, fast = _words_only(design), design.load("emu")
    xs, ys = _batches()
    loop = np.array([words.train_step(x, y) for x, y in zip(xs, ys, strict=True)])
    losses = fast.train_steps(xs, ys)
    n_models = {"one": None, "stacked": 3, "separate": 2}[which]
    assert losses.shape == ((STEPS,) if n_models is None else (STEPS, n_models))
    assert losses.dtype == np.float64 and np.array_equal(losses, loop)
    assert len(np.unique(losses)) > 1  # the steps learn: each loss is its own step's
    _assert_same_params(words, fast)


@pytest.mark.parametrize("which", ["one", "stacked"])
def test_direct_emulator_calls_equal_the_word_interface(designs, which):
    design = designs[which]
    words, fast = _words_only(design), design.load("emu")
    xs, ys = _batches(2)
    for runner in (words, fast):
        runner.set_params([{"0.bias": np.full(6, 0.25)}] * 3 if which == "stacked" else {"0.bias": np.full(6, 0.25)},
                          partial=True)
    for x, y in zip(xs, ys, strict=True):
        a, b = words.train_step(x, y), fast.train_step(x, y)
        assert np.array_equal(a, b)
        for command, raw in (("infer", words._quantize_inputs("infer", [x])), ("read_params", {})):
            got, want = fast.call_raw(command, raw), words.call_raw(command, raw)
            assert got.keys() == want.keys() and all(np.array_equal(got[n], want[n]) for n in got), command
    assert np.array_equal(words.infer(xs[0]), fast.infer(xs[0]))
    _assert_same_params(words, fast)


def test_train_steps_of_zero_steps(designs):
    assert designs["one"].load("emu").train_steps(*_batches(0)).shape == (0,)
    assert designs["stacked"].load("emu").train_steps(*_batches(0)).shape == (0, 3)


def test_train_steps_without_inputs_takes_steps():
    fn = load_example("functions")
    design = fx2fpga.compile(fn.sphere, (torch.tensor([2.3, -1.8]),), train=fx2fpga.GD(lr=0.1), outputs="hls")
    a, b = design.load("emu"), design.load("emu")
    loop = np.array([a.train_step() for _ in range(5)])
    assert np.array_equal(b.train_steps(steps=5), loop) and loop[0] > loop[-1]
    assert np.array_equal(a.get_params()["x"], b.get_params()["x"])
    with pytest.raises(ValueError, match=r"train_steps: this kernel's train_step takes no inputs: pass steps=N"):
        b.train_steps()


def test_train_steps_wrong_shapes_are_named(designs):
    k = designs["one"].load("emu")
    xs, ys = _batches()
    with pytest.raises(ValueError, match=r"train_steps takes 2 arrays \(train_x, train_y\), got 1"):
        k.train_steps(xs)
    with pytest.raises(ValueError, match=r"train_steps: input train_x must have shape \(6, 4, 8\) \(steps, then the "
                                         r"shape \(4, 8\) compiled for it\), got \(6, 4, 7\)"):
        k.train_steps(xs[..., :7], ys)
    with pytest.raises(ValueError, match=r"input train_y must have shape \(6, 4\) .*got \(5, 4\)"):
        k.train_steps(xs, ys[:5])
    with pytest.raises(ValueError, match=r"train_step: input train_x must have shape \(4, 8\) \(compiled for it\), "
                                         r"got \(6, 4, 8\)"):
        k.train_step(xs, ys)  # train_step keeps its own message
    with pytest.raises(ValueError, match=r"input train_x must have a leading axis of steps"):
        k.train_steps(np.float64(1.0), ys)
    with pytest.raises(ValueError, match=r"train_steps: steps must be a whole number >= 0, got -1"):
        k.train_steps(xs, ys, steps=-1)
    bad = ys.copy()
    bad[4, 1] = 3
    with pytest.raises(ValueError, match=r"train_steps: train_y must hold class indices in 0\.\.2"):
        k.train_steps(xs, bad)
    with pytest.raises(ValueError, match=r"train_step: train_y must hold class indices in 0\.\.2"):
        k.train_step(xs[0], ys[0] + 0.5)
    inference = fx2fpga.compile(_mlp(0), (torch.randn(BATCH, 8),), outputs="hls").load("emu")
    with pytest.raises(RuntimeError, match="compiled for inference only"):
        inference.train_steps(xs, ys)


def test_class_index_check_rejects_what_it_rejected(designs):
    k = designs["one"].load("emu")
    x = np.zeros((BATCH, 8))
    for y in ([0, 1, 2, -1], [0, 1, 2, np.nan], [0, 1, np.inf, 0], [0, 1, 2, 1e-300]):
        with pytest.raises(ValueError, match="must hold class indices"):
            k.train_step(x, np.array(y, dtype=np.float64))


@pytest.mark.parametrize("dtype", [np.int64, np.float32, np.float64])
def test_class_targets_take_the_quantizers_raw_values(designs, dtype):
    """Class targets skip the quantizer once checked (whole numbers in range): the same raw integers, any dtype."""
    k = designs["one"].load("emu")
    x, y = np.zeros((BATCH, 8)), np.array([2, 0, 1, 2], dtype=dtype)
    raw = k._quantize_inputs("train_step", [x, y])
    name = k.kernel.programs["train_step"].inputs[1]
    want = quantizer(k.kernel.buffers[name].fmt)(y.astype(np.float64))
    assert raw[name].dtype == want.dtype and np.array_equal(raw[name], want) and raw[name].tolist() == [2, 0, 1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["one", "stacked"])
def test_train_steps_on_csim_is_a_loop_of_train_step_on_emu(designs, which):
    design = designs[which]
    emu = design.load("emu")
    xs, ys = _batches()
    loop = np.array([emu.train_step(x, y) for x, y in zip(xs, ys, strict=True)])
    with design.load("csim") as csim:
        assert np.array_equal(csim.train_steps(xs, ys), loop)
        _assert_same_params(emu, csim)


# ----- the specialised quantizer against Fixed.quantize ------------------------------------------------

def _format(width: int, int_bits: int, signed: bool, rounding: str, overflow: str) -> Fixed:
    if signed and width < 2:  # a signed format of one bit needs an integer bit for its sign
        int_bits = max(int_bits, 1)
    return Fixed(width, int_bits, signed, rounding, overflow)


formats = st.builds(_format, st.integers(1, MAX_WIDTH), st.integers(-8, 70), st.booleans(),
                    st.sampled_from(ROUNDING_MODES), st.sampled_from(OVERFLOW_MODES))


def _near_ties(fmt: Fixed):
    """Values on, and one float either side of, half a step of the format (and of whole steps), also at
    its range's ends: where rounding modes and saturation differ."""
    steps = st.one_of(st.integers(fmt.raw_min - 2, fmt.raw_min + 2), st.integers(fmt.raw_max - 2, fmt.raw_max + 2),
                      st.integers(-3, 3), st.integers(-(1 << 60), 1 << 60))
    offsets = st.sampled_from([0.0, 0.5, -0.5, 0.25])
    nudges = st.sampled_from([0, 1, -1])

    def value(k, off, nudge):
        v = math.ldexp(float(k) + off, -fmt.frac_bits)
        return math.nextafter(v, math.inf * nudge) if nudge else v
    return st.builds(value, steps, offsets, nudges)


@st.composite
def format_and_values(draw):
    fmt = draw(formats)
    anything = st.floats(allow_nan=True, allow_infinity=True, width=64)
    elements = draw(st.sampled_from([_near_ties(fmt), st.one_of(_near_ties(fmt), anything)]))
    values = draw(st.lists(elements, min_size=0, max_size=12))
    return fmt, np.array(values, dtype=np.float64)


def _outcome(quantize, values):
    try:
        return quantize(values)
    except FormatError as exc:
        return f"FormatError: {exc}"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(format_and_values())
def test_quantizer_equals_fixed_quantize(case):
    fmt, values = case
    want, got = _outcome(fmt.quantize, values), _outcome(quantizer(fmt), values)
    if isinstance(want, str):
        assert got == want
        return
    assert isinstance(got, np.ndarray) and got.dtype == np.int64 and got.shape == want.shape
    assert np.array_equal(got, want), (str(fmt), values, got, want)


@pytest.mark.parametrize("fmt", [Fixed(16, 6), Fixed(8, 0, signed=False, overflow="WRAP"),
                                 Fixed(12, 3, rounding="RND_CONV"), Fixed(60, 20, rounding="TRN_ZERO")])
def test_quantizer_keeps_shapes_and_scalars(fmt):
    rng = np.random.default_rng(0)
    for values in (rng.normal(0, 40, (3, 5, 2)), np.float64(-7.3), np.zeros((0, 4)), [1.5, -2.25], 0.5):
        want, got = fmt.quantize(values), quantizer(fmt)(values)
        assert type(got) is type(want) and np.shape(got) == np.shape(want) and np.array_equal(got, want)
