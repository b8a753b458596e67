"""Fixed-point formats and bit-exact arithmetic on raw integers (numpy only).

A value of format ``Fixed(width, int_bits)`` is stored as its raw two's-complement integer
``raw = value * 2**frac_bits`` in an ``int64`` numpy array. Every function here reproduces
what Xilinx ``ap_fixed<W, I, Q, O>`` does when a wider exact result is assigned to a
narrower type: first quantization (the low bits dropped with the rounding mode ``Q``), then
overflow handling (mode ``O``) on the high bits.

Supported modes (the ``ap_fixed`` names without the ``AP_`` prefix):

- rounding ``RND`` (round half towards +inf, ``floor(v + 1/2)``), ``TRN`` (towards -inf,
  ``floor(v)``), ``RND_ZERO`` (half towards zero), ``RND_CONV`` (half to even),
  ``TRN_ZERO`` (towards zero), ``SR`` (stochastic: random bits added before the floor, inside a kernel
  only, see ``stochastic.py``; conversions on the host, from floats, round ``RND``)
- overflow ``SAT`` (clip to the range), ``WRAP`` (keep the low ``width`` bits)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

ROUNDING_MODES = ("RND", "TRN", "RND_ZERO", "RND_CONV", "TRN_ZERO")  # ap_fixed's: deterministic
STOCHASTIC = "SR"
FORMAT_ROUNDINGS = (*ROUNDING_MODES, STOCHASTIC)  # what a format may name
OVERFLOW_MODES = ("SAT", "WRAP")
MAX_WIDTH = 62  # raw values and exact products of two operands must fit in int64 arithmetic

_SPEC = re.compile(
    r"^\s*(?P<kind>u?fixed)\s*<\s*(?P<w>-?\d+)\s*,\s*(?P<i>-?\d+)\s*"
    r"(?:,\s*(?P<q>[A-Z_]+)\s*)?(?:,\s*(?P<o>[A-Z_]+)\s*)?>\s*$"
)


class FormatError(ValueError):
    """A fixed-point format string or field that cannot describe an ``ap_fixed`` type."""


@dataclass(frozen=True, order=True)
class Fixed:
    """A fixed-point format: ``Fixed(16, 6)`` is ``ap_fixed<16,6,AP_RND,AP_SAT>``."""

    width: int
    int_bits: int
    signed: bool = True
    rounding: str = "RND"
    overflow: str = "SAT"

    def __post_init__(self) -> None:
        if not 1 <= self.width <= MAX_WIDTH:
            raise FormatError(f"width {self.width} is outside 1..{MAX_WIDTH}")
        if self.signed and self.width < 2 and self.int_bits < 1:
            raise FormatError("a signed format needs at least one integer bit for the sign")
        if self.rounding not in FORMAT_ROUNDINGS:
            raise FormatError(f"rounding {self.rounding!r} is not one of {', '.join(FORMAT_ROUNDINGS)}")
        if self.overflow not in OVERFLOW_MODES:
            raise FormatError(f"overflow {self.overflow!r} is not one of {', '.join(OVERFLOW_MODES)}")

    # ----- parsing and printing -------------------------------------------------------------
    @classmethod
    def parse(cls, spec: str | Fixed) -> Fixed:
        """Parse ``fixed<16,6>``, ``ufixed<8,0>`` or ``fixed<24,8,TRN,WRAP>``."""
        if isinstance(spec, Fixed):
            return spec
        hint = (
            "expected 'fixed<WIDTH,INT_BITS>' or 'fixed<WIDTH,INT_BITS,ROUNDING,OVERFLOW>' (or ufixed), "
            f"e.g. 'fixed<16,6>' or 'fixed<16,6,TRN,WRAP>' (width 1..{MAX_WIDTH}; rounding: "
            f"{', '.join(FORMAT_ROUNDINGS)}; overflow: {', '.join(OVERFLOW_MODES)})"
        )
        m = _SPEC.match(str(spec))
        if not m:
            raise FormatError(f"cannot read the precision {spec!r}: {hint}")
        try:
            return cls(
                width=int(m["w"]),
                int_bits=int(m["i"]),
                signed=m["kind"] == "fixed",
                rounding=m["q"] or "RND",
                overflow=m["o"] or "SAT",
            )
        except FormatError as exc:
            raise FormatError(f"cannot read the precision {spec!r}: {exc}; {hint}") from None

    def __str__(self) -> str:
        kind = "fixed" if self.signed else "ufixed"
        modes = "" if (self.rounding, self.overflow) == ("RND", "SAT") else f",{self.rounding},{self.overflow}"
        return f"{kind}<{self.width},{self.int_bits}{modes}>"

    @property
    def host_rounding(self) -> str:
        """How a float becomes a raw integer on the host: ``SR`` rounds ``RND`` (its random bits need a stage)."""
        return "RND" if self.rounding == STOCHASTIC else self.rounding

    @property
    def cpp_rounding(self) -> str:
        """The ``ap_fixed`` rounding mode (no ``AP_``): ``SR`` is ``TRN``, the kernel adds its random bits first."""
        return "TRN" if self.rounding == STOCHASTIC else self.rounding

    def cpp(self) -> str:
        """The ``ap_fixed`` C++ type of this format."""
        kind = "ap_fixed" if self.signed else "ap_ufixed"
        return f"{kind}<{self.width},{self.int_bits},AP_{self.cpp_rounding},AP_{self.overflow}>"

    # ----- ranges -----------------------------------------------------------------------------
    @property
    def frac_bits(self) -> int:
        return self.width - self.int_bits

    @property
    def raw_min(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def raw_max(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @property
    def ulp(self) -> float:
        """The value of one least significant bit."""
        return 2.0 ** -self.frac_bits

    @property
    def min_value(self) -> float:
        return self.raw_min * self.ulp

    @property
    def max_value(self) -> float:
        return self.raw_max * self.ulp

    def with_modes(self, rounding: str | None = None, overflow: str | None = None) -> Fixed:
        return Fixed(self.width, self.int_bits, self.signed, rounding or self.rounding, overflow or self.overflow)

    # ----- conversions ------------------------------------------------------------------------
    def quantize(self, values) -> np.ndarray:
        """Float values -> raw integers, as assigning a ``double`` to this ``ap_fixed`` does."""
        x = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise FormatError(f"cannot quantize non-finite values to {self}")
        # exact: a power-of-two scale. A finite value it takes past float64 becomes inf: saturated by the clip
        # below, or under WRAP a multiple of 2**900 and more, 0 modulo 2**width, which the NaN that fmod gives
        # becomes (int64's minimum, then the wrap): no warning, the result is right
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = np.ldexp(x, self.frac_bits)
            # exact integers, possibly beyond int64
            rounded = _round_float(scaled, self.host_rounding)
            if self.overflow == "SAT":
                rounded = np.clip(rounded, -(2.0**62), 2.0**62)  # beyond every raw range, inside int64
            else:
                rounded = np.fmod(rounded, 2.0**self.width)  # exact; same value modulo 2**width
            return self.overflow_raw(rounded.astype(np.int64))

    def to_float(self, raw) -> np.ndarray:
        """Raw integers -> their exact values as float64."""
        return np.ldexp(np.asarray(raw, dtype=np.float64), -self.frac_bits)

    def overflow_raw(self, raw) -> np.ndarray:
        """Apply this format's overflow mode to raw integers already at ``frac_bits``."""
        v = np.asarray(raw, dtype=np.int64)
        if self.overflow == "SAT":
            return np.clip(v, self.raw_min, self.raw_max)
        span = np.int64(1) << np.int64(self.width)
        return ((v - self.raw_min) & (span - 1)) + self.raw_min

    def from_raw(self, raw, frac_bits: int) -> np.ndarray:
        """Assign exact values given as raw integers at ``frac_bits`` to this format."""
        return self.overflow_raw(shift_round(raw, frac_bits - self.frac_bits, self.rounding))


def _round_float(scaled: np.ndarray, mode: str) -> np.ndarray:
    """Round to integers (as float64), exactly: no ``x + 0.5``, which itself rounds when ``|x| >= 2**52``."""
    whole = np.trunc(scaled)
    frac = scaled - whole  # exact, in (-1, 1)
    if mode == "TRN_ZERO":
        return whole
    if mode == "TRN":
        return whole - (frac < 0)
    if mode == "RND":
        return whole + (frac >= 0.5) - (frac < -0.5)
    if mode == "RND_ZERO":
        return whole + (frac > 0.5) - (frac < -0.5)
    return np.rint(scaled)  # RND_CONV: IEEE rounding, half to even, exact


_FAST_SCALED = 2.0**52  # below this magnitude every float's rounding below is exact, and raw bounds are exact floats


def _round_half_up(scaled: np.ndarray) -> np.ndarray:
    """RND (``floor(v + 1/2)``) for ``|v| < 2**52``: ``v - floor(v)`` compares with 1/2 exactly (it is exact,
    or, for ``-1/2 < v < 0``, above 1/2 either way)."""
    r = np.floor(scaled)
    r += (scaled - r) >= 0.5
    return r


_FAST_ROUND = {"RND": _round_half_up, "TRN": np.floor, "TRN_ZERO": np.trunc, "RND_CONV": np.rint,
               "RND_ZERO": lambda v: _round_float(v, "RND_ZERO")}


@cache
def quantizer(fmt: Fixed) -> Callable[[np.ndarray], np.ndarray]:
    """``fmt.quantize`` specialised once for the format: the same raw integers, bit for bit, in fewer numpy
    calls. Arrays holding a value that scales to ``2**52`` or more in magnitude (or a NaN or an infinity) go
    through ``fmt.quantize`` itself, as do formats wider than 52 bits or with frac bits outside 0..1000, and
    empty arrays."""
    f = fmt.frac_bits
    if fmt.width > 52 or not 0 <= f <= 1000:
        return fmt.quantize
    lo, hi = float(fmt.raw_min), float(fmt.raw_max)
    scale, limit = 2.0**f, _FAST_SCALED / 2.0**f  # powers of two: ``x * scale`` is exact, below 2**52 for |x| < limit
    round_, wrap = _FAST_ROUND[fmt.host_rounding], fmt.overflow == "WRAP"

    def quantize(values) -> np.ndarray:
        x = np.asarray(values, dtype=np.float64)
        if not x.size:
            return fmt.quantize(x)
        xmin, xmax = np.minimum.reduce(x, axis=None), np.maximum.reduce(x, axis=None)
        if not (-limit < xmin and xmax < limit):  # (NaN compares false)
            return fmt.quantize(x)
        scaled = x * scale  # exact (no overflow below the limit), as ``quantize``'s ldexp
        smin, smax = xmin * scale, xmax * scale
        if lo <= smin and smax <= hi:
            return round_(scaled).astype(np.int64)
        if wrap:  # the rounded integers are exact: wrapping them equals ``quantize``'s fmod, then wrap
            return fmt.overflow_raw(round_(scaled).astype(np.int64))
        # rounding is monotone and keeps the integers lo, hi: clipping before it equals clipping after
        return round_(np.minimum(np.maximum(scaled, lo), hi)).astype(np.int64)
    return quantize


def shift_round(raw, shift: int, mode: str) -> np.ndarray:
    """Drop ``shift`` low bits of raw integers with a rounding mode (``shift < 0`` widens)."""
    v = np.asarray(raw, dtype=np.int64)
    if shift <= 0:
        return v << np.int64(-shift)
    s = np.int64(shift)
    floor = v >> s
    rem = v - (floor << s)  # in [0, 2**shift)
    half = np.int64(1) << (s - 1)
    if mode == "TRN":
        return floor
    if mode == "RND":
        return floor + (rem >= half)
    if mode == "TRN_ZERO":
        return floor + ((v < 0) & (rem != 0))
    if mode == "RND_ZERO":
        return floor + ((rem > half) | ((rem == half) & (v < 0)))
    if mode == "SR":
        raise ValueError("stochastic rounding needs its random bits: fx2fpga_runtime.stochastic.round_stochastic")
    # RND_CONV: half to even
    return floor + ((rem > half) | ((rem == half) & ((floor & 1) == 1)))


def align(raw, frac_from: int, frac_to: int) -> np.ndarray:
    """Exactly rescale raw integers to more fractional bits (``frac_to >= frac_from``)."""
    assert frac_to >= frac_from
    return np.asarray(raw, dtype=np.int64) << np.int64(frac_to - frac_from)


BOOL = Fixed(1, 1, signed=False)
"""Comparison results: ``ap_ufixed<1,1>``, raw 0 or 1."""


def integer(width: int = 16) -> Fixed:
    """A signed integer format (class indices, counters)."""
    return Fixed(width, width)
