"""Emulator stages against apytypes: the arithmetic of ap_fixed, step by step."""

from __future__ import annotations

import numpy as np
import pytest
from fx2fpga_runtime.emulator import Emulator
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Access, Affine, Buffer, Kernel, Loop, Program, Stage

from .test_fixed import apy_from_raw, apy_requantize


def _v(name):
    return Affine.var(name)


def _kernel(stage: Stage, buffers: list[Buffer]) -> Kernel:
    return Kernel("t", {b.name: b for b in buffers}, {"infer": Program("infer", [], [stage.out.buffer], [stage])}, [])


def _random_raw(fmt: Fixed, shape, rng) -> np.ndarray:
    return rng.integers(fmt.raw_min, fmt.raw_max + 1, size=shape, dtype=np.int64)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("acc_fmt", ["fixed<20,6>", "fixed<14,4,TRN,SAT>", "fixed<14,4,RND,WRAP>",
                                     "fixed<12,5,RND_CONV,SAT>", "fixed<12,5,TRN_ZERO,WRAP>"])
def test_mac_accumulates_like_ap_fixed(acc_fmt, fast):
    """acc += a*b, each step assigned to the accumulator format (saturating or wrapping)."""
    rng = np.random.default_rng(1)
    fa, fb, fo, facc = Fixed(10, 4), Fixed(9, 3), Fixed(10, 5, rounding="TRN"), Fixed.parse(acc_fmt)
    m, n, k = 3, 4, 12
    a, b = _random_raw(fa, (m, k), rng), _random_raw(fb, (k, n), rng)
    bufs = [Buffer("a", (m, k), fa), Buffer("b", (k, n), fb), Buffer("o", (m, n), fo, "output")]
    st = Stage("s", "mac", (Loop("i", m), Loop("j", n), Loop("k", k)), Access("o", (_v("i"), _v("j"))),
               (Access("a", (_v("i"), _v("k"))), Access("b", (_v("k"), _v("j")))), reduce=("k",), acc=facc)
    emu = Emulator(_kernel(st, bufs), fast=fast)
    emu.write("a", a)
    emu.write("b", b)
    got = emu.run("infer")["o"]
    saturated = False
    for i in range(m):
        for j in range(n):
            acc = apy_from_raw(np.zeros(1, np.int64), facc.width, facc.frac_bits)
            for kk in range(k):
                prod = apy_from_raw(a[i, kk:kk + 1], fa.width, fa.frac_bits) * apy_from_raw(
                    b[kk:kk + 1, j], fb.width, fb.frac_bits)
                exact = acc + prod
                raw = apy_requantize(exact, facc)
                saturated |= bool(facc.overflow == "SAT" and raw[0] in (facc.raw_min, facc.raw_max))
                acc = apy_from_raw(raw, facc.width, facc.frac_bits)
            assert got[i, j] == apy_requantize(acc, fo)[0], (i, j)
    if facc.width < 16:
        assert saturated or facc.overflow == "WRAP"  # the narrow accumulators really overflow


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("op", ["add", "sub", "mul"])
@pytest.mark.parametrize("out_fmt", ["fixed<8,3>", "fixed<8,3,TRN,WRAP>", "ufixed<7,2,RND_ZERO,SAT>"])
def test_elementwise_assigns_exact_results(op, out_fmt, fast):
    rng = np.random.default_rng(2)
    fa, fb, fo = Fixed(12, 4), Fixed(10, 6), Fixed.parse(out_fmt)
    a, b = _random_raw(fa, (64,), rng), _random_raw(fb, (64,), rng)
    bufs = [Buffer("a", (64,), fa), Buffer("b", (64,), fb), Buffer("o", (64,), fo, "output")]
    st = Stage("s", op, (Loop("i", 64),), Access("o", (_v("i"),)), (Access("a", (_v("i"),)), Access("b", (_v("i"),))))
    emu = Emulator(_kernel(st, bufs), fast=fast)
    emu.write("a", a)
    emu.write("b", b)
    got = emu.run("infer")["o"]
    xa, xb = apy_from_raw(a, fa.width, fa.frac_bits), apy_from_raw(b, fb.width, fb.frac_bits)
    exact = {"add": xa + xb, "sub": xa - xb, "mul": xa * xb}[op]
    assert np.array_equal(got, apy_requantize(exact, fo))
