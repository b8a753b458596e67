"""``Fixed`` (runtime/fx2fpga_runtime/fixed.py) against apytypes, bit for bit, in every ap_fixed mode we support.

apytypes is bit-exact with Xilinx ``ap_fixed``; its modes for the ``ap_fixed`` ones:
AP_RND = TIES_POS (half towards +inf), AP_TRN = TO_NEG, AP_RND_ZERO = TIES_ZERO,
AP_RND_CONV = TIES_EVEN, AP_TRN_ZERO = TO_ZERO; AP_SAT = SAT, AP_WRAP = WRAP.
apytypes has only signed types: an ``ap_ufixed<W,I>`` is computed as the signed ``<W+1,I+1>``
result, then SAT clamps negatives to 0 and WRAP keeps the low ``W`` bits.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

apy = pytest.importorskip("apytypes")

from fx2fpga_runtime.fixed import OVERFLOW_MODES, ROUNDING_MODES, Fixed, FormatError  # noqa: E402

Q = apy.QuantizationMode
O = apy.OverflowMode  # noqa: E741
APY_ROUNDING = {
    "RND": Q.TIES_POS,
    "TRN": Q.TO_NEG,
    "RND_ZERO": Q.TIES_ZERO,
    "RND_CONV": Q.TIES_EVEN,
    "TRN_ZERO": Q.TO_ZERO,
}
APY_OVERFLOW = {"SAT": O.SAT, "WRAP": O.WRAP}
MODES = list(itertools.product(ROUNDING_MODES, OVERFLOW_MODES))

# (width, int_bits): narrow and wide, int_bits negative, zero, inside and beyond the width
FORMATS = [
    (1, 1),
    (2, 0),
    (3, 1),
    (4, -2),
    (5, 7),
    (8, 0),
    (8, 3),
    (12, 12),
    (16, 6),
    (18, 2),
    (24, 8),
    (32, 16),
    (40, -4),
    (48, 20),
    (53, 3),
    (54, 10),
    (60, 30),
    (62, 2),
    (62, 62),
]
INPUT_INT_BITS = 128  # exact apytypes inputs: wide enough for every value drawn below
INPUT_FRAC_BITS = 200


def _ids(params) -> list[str]:
    return [f"{'s' if s else 'u'}{w}_{i}" for w, i, s in params]


FORMAT_PARAMS = [(w, i, s) for w, i in FORMATS for s in (True, False) if not (s and w == 1 and i < 1)]


def apy_requantize(src: apy.APyFixedArray, fmt: Fixed) -> np.ndarray:
    """The raw integers of ``fmt`` that apytypes gives for the exact values ``src``."""
    signed_width = fmt.width + (0 if fmt.signed else 1)
    signed_int_bits = fmt.int_bits + (0 if fmt.signed else 1)
    out = src.cast(
        int_bits=signed_int_bits,
        frac_bits=fmt.frac_bits,
        quantization=APY_ROUNDING[fmt.rounding],
        overflow=APY_OVERFLOW[fmt.overflow],
    )
    bits = [int(b) for b in np.ravel(out.to_bits())]
    raw = [b - (1 << signed_width) if b >> (signed_width - 1) else b for b in bits]
    if not fmt.signed:
        raw = [max(r, 0) for r in raw] if fmt.overflow == "SAT" else [r & ((1 << fmt.width) - 1) for r in raw]
    return np.array(raw, dtype=np.int64)


def apy_from_raw(raw: np.ndarray, width: int, frac_bits: int) -> apy.APyFixedArray:
    """An exact apytypes array of signed raw integers (as Python ints: bit patterns of ``width`` bits)."""
    mask = (1 << width) - 1
    return apy.APyFixedArray([int(v) & mask for v in raw], bits=width, frac_bits=frac_bits)


def random_floats(fmt: Fixed, rng: np.random.Generator, n: int = 3000) -> np.ndarray:
    """Floats that hit every case: generic values, exact ties and near-ties, overflows, huge values, zeros."""
    span = 2.0 ** (fmt.int_bits + 2)  # beyond the range on both sides
    generic = rng.uniform(-span, span, n)
    # values on a grid a few bits finer than the format: many exact ties (.5) and near-ties
    extra = rng.integers(1, 6, n)
    bound = 1 << min(fmt.width + 3, 53)  # exact in float64
    k = rng.integers(-bound, bound, n, dtype=np.int64)
    grid = np.ldexp(k.astype(np.float64), -(fmt.frac_bits + extra))
    small = rng.uniform(-4, 4, n // 4) * fmt.ulp
    special = np.array(
        [
            0.0,
            -0.0,
            fmt.max_value,
            fmt.min_value,
            fmt.ulp / 2,
            -fmt.ulp / 2,
            1e30,
            -1e30,
            2.0**70 + 2.0**18,
            -(2.0**70),
            3.5 * 2.0**fmt.int_bits,
        ]
    )
    return np.concatenate([generic, grid, small, special])


@pytest.mark.parametrize("rounding,overflow", MODES)
@pytest.mark.parametrize("width,int_bits,signed", FORMAT_PARAMS, ids=_ids(FORMAT_PARAMS))
def test_quantize_floats_matches_apytypes(width: int, int_bits: int, signed: bool, rounding: str, overflow: str):
    fmt = Fixed(width, int_bits, signed, rounding, overflow)
    rng = np.random.default_rng(width * 1000 + int_bits * 10 + signed)
    x = random_floats(fmt, rng)
    src = apy.APyFixedArray.from_float(x, int_bits=INPUT_INT_BITS, frac_bits=INPUT_FRAC_BITS)
    assert np.array_equal(src.to_numpy(), x), "apytypes input must hold the floats exactly"
    expected = apy_requantize(src, fmt)
    got = fmt.quantize(x)
    bad = np.flatnonzero(got != expected)
    assert bad.size == 0, (
        f"{fmt}: {bad.size} mismatches, e.g. x={x[bad[:5]]!r} got={got[bad[:5]]} want={expected[bad[:5]]}"
    )
    assert got.min(initial=fmt.raw_min) >= fmt.raw_min and got.max(initial=fmt.raw_max) <= fmt.raw_max


# (source width, source frac bits) for each target format: wider, with more and with fewer fractional bits
@pytest.mark.parametrize("rounding,overflow", MODES)
@pytest.mark.parametrize("width,int_bits,signed", FORMAT_PARAMS, ids=_ids(FORMAT_PARAMS))
def test_requantize_raw_matches_apytypes(width: int, int_bits: int, signed: bool, rounding: str, overflow: str):
    fmt = Fixed(width, int_bits, signed, rounding, overflow)
    rng = np.random.default_rng(7 + width * 1000 + int_bits * 10 + signed)
    for extra_frac, extra_int in [(1, 0), (3, 2), (8, 6), (17, 1), (0, 4), (-2, 5)]:
        src_width = min(62, max(2, width + extra_frac + extra_int))
        src_frac = fmt.frac_bits + extra_frac
        lo, hi = -(1 << (src_width - 1)), 1 << (src_width - 1)
        raw = np.concatenate(
            [
                rng.integers(lo, hi, 2000, dtype=np.int64),
                rng.integers(-64, 64, 200, dtype=np.int64) << np.int64(max(extra_frac - 1, 0)),  # ties near zero
                np.array([lo, hi - 1, 0, -1, 1], dtype=np.int64),
            ]
        )
        raw = np.clip(raw, lo, hi - 1)
        if extra_frac < 0 and src_width + (-extra_frac) > 62:
            continue
        expected = apy_requantize(apy_from_raw(raw, src_width, src_frac), fmt)
        got = fmt.from_raw(raw, src_frac)
        bad = np.flatnonzero(got != expected)
        assert bad.size == 0, (
            f"{fmt} from raw <{src_width} bits, frac {src_frac}>: {bad.size} mismatches, "
            f"e.g. raw={raw[bad[:5]]} got={got[bad[:5]]} want={expected[bad[:5]]}"
        )


def test_mode_names_match_ap_fixed_examples():
    """Hand-checked ties: 2.5, -2.5, 3.5 and -0.5 at integer resolution in each rounding mode."""
    x = np.array([2.5, -2.5, 3.5, -0.5, 2.25, -2.75])
    want = {
        "RND": [3, -2, 4, 0, 2, -3],
        "TRN": [2, -3, 3, -1, 2, -3],
        "RND_ZERO": [2, -2, 3, 0, 2, -3],
        "RND_CONV": [2, -2, 4, 0, 2, -3],
        "TRN_ZERO": [2, -2, 3, 0, 2, -2],
    }
    for mode, expected in want.items():
        assert Fixed(8, 8, rounding=mode).quantize(x).tolist() == expected, mode


@pytest.mark.parametrize("rounding,overflow", MODES)
def test_saturate_and_wrap_at_the_edges(rounding: str, overflow: str):
    fmt = Fixed(8, 4, True, rounding, overflow)  # range [-8, 7.9375], ulp 1/16
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 1e308 * 16 is beyond float64: no numpy warning on the way
        got = fmt.quantize([7.99, 8.0, -8.0, -8.01, 100.0, 1e30, -1e30, 1e308, -1e308]).tolist()
    if overflow == "SAT":
        assert got == [127, 127, -128, -128, 127, 127, -128, 127, -128]
    else:  # 7.99 -> 127.84, -8.01 -> -128.16 raw; 100 -> 1600 = 6 * 256 + 64; 1e30 * 16 is a multiple of 2**8
        up = 128 if rounding.startswith("RND") else 127
        down = -129 if rounding == "TRN" else -128
        wrap = [(v + 128) % 256 - 128 for v in (up, 128, -128, down, 1600)]
        assert got == [*wrap, 0, 0, 0, 0]


# ----- parsing ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    ["fixed<16,6>", "ufixed<8,0>", "fixed<24,8,TRN,WRAP>", "ufixed<12,-2,RND_CONV,SAT>", "fixed<62,62,TRN_ZERO,WRAP>"]
    + [f"fixed<10,3,{q},{o}>" for q, o in MODES],
)
def test_parse_round_trips(text: str):
    fmt = Fixed.parse(text)
    assert Fixed.parse(str(fmt)) == fmt
    assert Fixed.parse(fmt) is fmt


def test_parse_fields_and_defaults():
    assert Fixed.parse("fixed<16,6>") == Fixed(16, 6, True, "RND", "SAT")
    assert Fixed.parse(" ufixed< 8 , 0 , TRN , WRAP > ") == Fixed(8, 0, False, "TRN", "WRAP")
    assert str(Fixed(16, 6)) == "fixed<16,6>"
    assert Fixed(16, 6, rounding="TRN", overflow="WRAP").cpp() == "ap_fixed<16,6,AP_TRN,AP_WRAP>"
    assert Fixed(8, 0, signed=False).cpp() == "ap_ufixed<8,0,AP_RND,AP_SAT>"


@pytest.mark.parametrize(
    "text",
    [
        "fixed<16>",
        "float32",
        "fixed<0,0>",
        "fixed<16,6,ROUND,SAT>",
        "fixed<16,6,RND,CLIP>",
        "fixed<16,6,rnd>",
        "fixed<99,6>",
        "fixed<16,6,SAT,RND>",
        "",
        "fixed<16,6,RND,SAT,WRAP>",
    ],
)
def test_parse_malformed_raises_with_hint(text: str):
    with pytest.raises(FormatError) as info:
        Fixed.parse(text)
    message = str(info.value)
    assert repr(text) in message
    assert "fixed<WIDTH,INT_BITS>" in message and "fixed<16,6>" in message
    assert "RND_CONV" in message and "WRAP" in message
