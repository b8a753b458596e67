"""Stochastic rounding (stochastic.py): the generator's bits, the rounding's bias, the emulator's SR stages and
the format's spelling."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime import stochastic
from fx2fpga_runtime.fixed import Fixed, shift_round
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fx2fpga
from fx2fpga.errors import PrecisionError
from fx2fpga.passes.quantize import Precision

words = st.integers(0, stochastic.MASK32)


def _rounds_up(frac_num: int, shift: int, bits: np.ndarray) -> np.ndarray:
    """Whether ``3 + frac_num / 2**shift`` (raw at ``shift`` extra fraction bits) rounds up to 4 with ``bits``."""
    raw = (3 << shift) + frac_num
    rounded = stochastic.round_stochastic(np.full(bits.shape, raw), shift, bits)
    assert set(np.unique(rounded)) <= {3, 4}
    return rounded == 4


# ----- the generator ---------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(shift=st.integers(1, 40), start=words, offset=words)
def test_random_bits_lie_in_range_and_are_the_top_bits_of_one_word(shift, start, offset):
    points = np.arange(start, start + 256, dtype=np.int64)
    r = stochastic.random_bits(points, offset, shift)
    assert r.dtype == np.int64 and r.min() >= 0 and r.max() < 2 ** shift
    word = stochastic.random_bits(points, offset, 32)  # y itself
    if shift <= 32:
        assert np.array_equal(r, word >> (32 - shift))
    else:  # y's 32 bits on top, zeros below
        assert np.array_equal(r, word << (shift - 32))
    assert np.array_equal(r, stochastic.random_bits(points, offset, shift))  # deterministic


@settings(max_examples=8, deadline=None)
@given(start=words)
def test_mix_is_a_bijection_on_consecutive_words(start):
    x = (np.arange(1 << 16, dtype=np.int64) + start) & stochastic.MASK32
    y = stochastic.mix(x)
    assert y.max() <= stochastic.MASK32
    assert len(np.unique(y)) == len(x)


def test_mix_is_two_rounds_of_xorshift32():
    def xorshift32(v: int) -> int:
        for _ in range(stochastic.ROUNDS):
            v ^= (v << 13) & stochastic.MASK32
            v ^= v >> 17
            v ^= (v << 5) & stochastic.MASK32
        return v

    for v in (1, 2, 0x9E3779B9, stochastic.MASK32, 123456789):
        assert int(stochastic.mix(np.array([v]))[0]) == xorshift32(v)
    assert int(stochastic.mix(np.array([0]))[0]) == 0  # xorshift's fixed point: a point the Weyl step leaves


def test_seed_and_buffer_change_the_key_and_the_call_offsets_step_by_the_weyl_constant():
    keys = {stochastic.stage_key(s, b) for s in range(4) for b in ("mem0", "mem1", "b_0_weight")}
    assert len(keys) == 12
    key = stochastic.stage_key(3, "mem0")
    offsets = [stochastic.call_offset(key, t) for t in range(5)]
    assert offsets[0] == key
    assert all((b - a) % 2 ** 32 == stochastic.STEP for a, b in zip(offsets, offsets[1:], strict=False))
    assert stochastic.call_offset(key, stochastic.PERIOD) == key  # the period: 2**32 calls per point


# ----- the rounding ----------------------------------------------------------------------------

@pytest.mark.parametrize("frac_num, shift", [(1, 2), (2, 2), (1, 4), (77, 8), (1, 20)])
def test_one_point_rounds_up_with_the_dropped_fraction_over_a_period_s_worth_of_calls(frac_num, shift):
    """Over 65536 calls one point rounds up in a share f = frac_num / 2**shift of them (binomial, 5 sigma)."""
    n, f = 1 << 16, frac_num / 2 ** shift
    offsets = np.array([stochastic.call_offset(stochastic.stage_key(0, "mem0"), t) for t in range(n)])
    up = _rounds_up(frac_num, shift, stochastic.random_bits(offsets, 7, shift)).sum()  # point 7, calls 0..n-1
    assert abs(up - n * f) <= 5 * np.sqrt(n * f * (1 - f)) + 1, (up, n * f)


def test_one_point_rounds_up_with_the_dropped_fraction_over_a_training_run_s_calls():
    """Over 800 calls (a training run's steps) a point rounds up at f = 1/2 as independent draws would: the
    z-scores of 300 keys' up-counts spread as a standard normal's (1.5 allows for 300 samples)."""
    n, keys = 800, np.random.default_rng(0).integers(0, 2 ** 32, 300)
    z = []
    for key in keys:
        offsets = np.array([stochastic.call_offset(int(key), t) for t in range(n)])
        up = _rounds_up(1, 1, stochastic.random_bits(offsets, 0, 1)).sum()
        z.append((up - n / 2) / np.sqrt(n / 4))
    assert np.std(z) < 1.5, np.std(z)


@settings(max_examples=30, deadline=None)
@given(frac=st.floats(0.01, 0.99), shift=st.integers(8, 24), offset=words)
def test_rounds_up_with_the_dropped_fraction_over_points(frac, shift, offset):
    """65536 points of one call: the mean rounding error is near 0, where round-to-nearest's is not."""
    n = 1 << 16
    frac_num = max(1, round(frac * 2 ** shift))
    f = frac_num / 2 ** shift
    up = _rounds_up(frac_num, shift, stochastic.random_bits(np.arange(n), offset, shift)).sum()
    assert abs(up - n * f) <= 5 * np.sqrt(n * f * (1 - f)) + 1, (up, n * f)
    sr_bias = up / n - f  # mean (rounded - exact) in ulps
    rnd_bias = float(shift_round(np.array([(3 << shift) + frac_num]), shift, "RND")[0]) - (3 + f)
    if abs(rnd_bias) > 0.05:
        assert abs(sr_bias) < abs(rnd_bias) / 5


def test_exact_values_do_not_move():
    bits = stochastic.random_bits(np.arange(4096), 12345, 6)
    raw = np.arange(-2048, 2048) << 6  # no dropped fraction
    assert np.array_equal(stochastic.round_stochastic(raw, 6, bits), raw >> 6)


# ----- the format ------------------------------------------------------------------------------

def test_sr_format_spelling_and_host_rounding():
    fmt = Fixed.parse("fixed<8,2,SR,SAT>")
    assert fmt.rounding == "SR" and fmt == Fixed(8, 2, rounding="SR")
    assert str(fmt) == "fixed<8,2,SR,SAT>" and Fixed.parse(str(fmt)) == fmt
    assert fmt.cpp() == "ap_fixed<8,2,AP_TRN,AP_SAT>"  # the kernel adds its random bits, then truncates
    x = np.linspace(-2, 2, 1001)
    assert np.array_equal(fmt.quantize(x), Fixed(8, 2).quantize(x))  # host conversions round to nearest
    assert not np.array_equal(fmt.quantize(x), Fixed(8, 2, rounding="TRN").quantize(x))


def test_accumulators_may_not_round_stochastically():
    with pytest.raises(PrecisionError, match="accumulator"):
        Precision.from_spec({"accumulator": "fixed<32,16,SR,SAT>"})
    assert Precision.from_spec({"weight": "fixed<8,2,SR,SAT>", "sr_seed": 3}).sr_seed == 3


# ----- the emulator's SR stages ----------------------------------------------------------------

X = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 2, 0])
SR = {"weight": "fixed<8,2,SR,SAT>", "activation": "fixed<8,3,SR,SAT>", "sr_seed": 3}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def _load(models, precision, **kw):
    design = fx2fpga.compile(models, (X,), train=fx2fpga.SGD(F.cross_entropy, Y, lr=0.1), precision=precision, **kw)
    return design.load("emu")


def _train(kernel, steps: int = 5):
    for _ in range(steps):
        kernel.train_step(X.numpy(), Y.numpy())
    return kernel.get_params()


def test_sr_stage_rounds_differently_each_call_to_a_neighbour_without_bias():
    """One linear layer: its output (a reduction's exact sum) rounds SR to 5 fraction bits; the inputs are on the
    grid of every format tried, so the 24-bit output is the exact value."""
    torch.manual_seed(2)
    layer = nn.Linear(8, 64)
    x = torch.randint(-8, 8, (16, 8)).float() / 4

    def load(activation: str):
        return fx2fpga.compile(copy.deepcopy(layer), (x,), precision={"activation": activation}).load("emu")

    sr, exact, rnd = load("fixed<8,3,SR,SAT>"), load("fixed<24,3>"), load("fixed<8,3>")
    runs = np.stack([sr.infer(x.numpy()) for _ in range(50)])
    assert sr.backend.emulator.calls["infer"] == 50  # t, the calls so far
    want, ulp = exact.infer(x.numpy()), Fixed(8, 3).ulp
    assert len({r.tobytes() for r in runs}) == 50  # each call draws anew
    assert np.all((np.floor(want / ulp) * ulp == runs) | (np.ceil(want / ulp) * ulp == runs))  # a neighbour
    frac = want / ulp - np.floor(want / ulp)
    up = (runs > want).mean(0)  # per output: the share of calls rounded up, near its dropped fraction
    assert np.corrcoef(frac.ravel(), up.ravel())[0, 1] > 0.95
    bias = (runs - want).mean() / ulp  # 51,200 roundings; truncation would be -0.5, a stuck carry +0.5
    assert abs(bias) < 0.02, bias
    assert np.abs(rnd.infer(x.numpy()) - want).max() <= ulp / 2
    assert np.array_equal(rnd.infer(x.numpy()), rnd.infer(x.numpy()))  # RND does not draw


def test_the_seed_chooses_the_numbers(net):
    a, b, c = (_train(_load(copy.deepcopy(net), {**SR, "sr_seed": s})) for s in (3, 3, 4))
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert any(not np.array_equal(a[n], c[n]) for n in a)


def test_stacked_models_draw_what_each_draws_alone(net):
    """The point leaves out the model loop: two identical models stacked train identically, as alone."""
    alone = _train(_load(copy.deepcopy(net), SR))
    stacked = _load([copy.deepcopy(net), copy.deepcopy(net)], SR)
    out = stacked.infer(X.numpy())
    assert np.array_equal(out[0], out[1])
    both = _train(stacked)
    for name in alone:
        assert np.array_equal(both[0][name], both[1][name]), name
        assert np.array_equal(both[0][name], alone[name]), name


def test_lanes_do_not_change_the_numbers(net):
    one = _train(_load(copy.deepcopy(net), SR, lanes=1))
    four = _train(_load(copy.deepcopy(net), SR, lanes=4))
    assert all(np.array_equal(one[n], four[n]) for n in one)
