"""The IR's ``div`` and ``div_sqrt`` (``fx2fpga_runtime/ops.py``): the exact bit length they normalize with, and
their results within ``error_bounds.normalized_error`` of ``a / b`` and ``a / sqrt(b)`` over every divisor range."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ops import NORM_INDEX_BITS, OPS_TABLE, bit_length, norm_rom_values
from hypothesis import given
from hypothesis import strategies as st

from ..error_bounds import normalized_error


@given(st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=50))
def test_bit_length_is_exact(values):
    got = bit_length(np.array(values, dtype=np.int64))
    assert [int(n) for n in got] == [v.bit_length() for v in values]


def _stage(op: str, fa: Fixed, fb: Fixed, q: int):
    root = 2 if op == "div_sqrt" else 1
    rom = SimpleNamespace(init=tuple(int(v) for v in norm_rom_values(root, q)))
    kernel = SimpleNamespace(buffers={"a": SimpleNamespace(fmt=fa), "b": SimpleNamespace(fmt=fb), "rom": rom})
    stage = SimpleNamespace(ins=[SimpleNamespace(buffer="a"), SimpleNamespace(buffer="b")],
                            attrs={"rom": "rom", "q": q})
    return stage, kernel, root


@pytest.mark.parametrize("op", ["div", "div_sqrt"])
@pytest.mark.parametrize("fb", [Fixed(30, 2), Fixed(31, 2), Fixed(44, -8), Fixed(18, 12)])
def test_results_within_the_relative_bound_over_the_whole_divisor_range(op, fb):
    fa, q = Fixed(24, 4), 16
    stage, kernel, root = _stage(op, fa, fb, q)
    spec = OPS_TABLE[op]
    rng = np.random.default_rng(0)
    a = rng.integers(fa.raw_min, fa.raw_max + 1, 20000)
    b = np.exp(rng.uniform(0, np.log(fb.raw_max), 20000)).astype(np.int64) + 1  # log-uniform: every exponent
    got = np.ldexp(spec.evaluate([a, b], stage, kernel).astype(np.float64),
                   -spec.stage_frac([fa.frac_bits, fb.frac_bits], stage))
    want = spec.reference(a * fa.ulp, b * fb.ulp)
    frac = spec.stage_frac([fa.frac_bits, fb.frac_bits], stage)
    bound = normalized_error(root, q) * np.abs(want) + 2.0**-frac
    assert np.all(np.abs(got - want) <= bound)
    assert (np.abs(got - want) / bound).max() > 0.25  # the bound is not loose by orders of magnitude


def test_a_divisor_at_or_below_zero_reads_as_one_ulp():
    fa, fb = Fixed(16, 4), Fixed(16, 4)
    stage, kernel, _ = _stage("div", fa, fb, 16)
    spec = OPS_TABLE["div"]
    a = np.array([1 << 12, 1 << 12, 1 << 12])
    got = spec.evaluate([a, np.array([0, -5, 1])], stage, kernel)
    assert got[0] == got[1] == got[2]


def test_rom_sizes_and_ranges():
    for root in (1, 2):
        rom = norm_rom_values(root, 20)
        assert rom.size == (1 << NORM_INDEX_BITS) - (1 << (NORM_INDEX_BITS - root))
        assert rom.min() > 1 << 20 and rom.max() == 1 << 21
