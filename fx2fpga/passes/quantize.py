"""Fixed-point formats for every buffer and accumulator, and the nonlinear function tables.

Formats come from ``Precision``: one default per kind of tensor (weights, activations,
gradients), accumulators derived from their operands (exact products, wider integer part),
constants sized to their values, and per-tensor overrides by fx node name, buffer name or
parameter name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from fx2fpga_runtime.fixed import BOOL, Fixed, FormatError
from fx2fpga_runtime.interface import MAX_PORT_WIDTH
from fx2fpga_runtime.ir import Buffer, Kernel, Stage
from fx2fpga_runtime.ops import NORM_INDEX_BITS, OPS_TABLE, norm_rom_values
from fx2fpga_runtime.stochastic import SEED_KEY

from ..errors import PrecisionError
from ..handoffs import DERIVED_KEY, LR_REACH_BITS, LR_SCALED_KEY, UNIFIED_KEY, lowering_facts
from . import derived_ranges

MAX_ACC_WIDTH = 62
RANDOM_FORMAT = Fixed(32, 32, True, "TRN", "WRAP")  # frontend/dropout.py's LCG state, two's complement
TABLE_SEGMENTS = 1024  # at most this many linear segments per function table
MAX_TABLE_SEGMENTS = 4096  # sin, cos, reciprocal: more where 1024 leave more than half an ulp


def _fmt(spec, what: str) -> Fixed:
    try:
        return Fixed.parse(spec)
    except FormatError as e:
        raise PrecisionError(f"{what}: {e}") from None


@dataclass(frozen=True)
class Precision:
    """Fixed-point formats by kind of tensor; strings like ``"fixed<16,6>"`` are accepted.

    ``accumulator`` is ``"auto"`` (exact products plus ``accumulator_int_bits`` integer
    bits) or a format. ``overrides`` maps an fx node name (``"addmm"``), a buffer name
    (``"train_addmm"``) or a parameter name (``"fc1.weight"``) to a format.
    """

    weight: Fixed = Fixed(24, 8)
    activation: Fixed = Fixed(16, 6)
    gradient: Fixed = Fixed(24, 6)
    accumulator: Fixed | str = "auto"
    accumulator_int_bits: int = 16
    constant_width: int = 18
    integer_width: int = 16
    range_margin_bits: int = 1
    sr_seed: int = 0  # the seed of stochastic rounding's generator (formats that round SR; stochastic.py)
    overrides: dict = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec) -> Precision:
        """``None`` (defaults), a format string for all tensors, a dict of fields, or a Precision."""
        if spec is None:
            return cls()
        if isinstance(spec, Precision):
            return spec
        if isinstance(spec, (str, Fixed)):
            f = _fmt(spec, "precision")
            return cls(weight=f, activation=f, gradient=f)
        if isinstance(spec, dict):
            known = set(cls.__dataclass_fields__)
            unknown = set(spec) - known
            if unknown:
                raise PrecisionError(f"unknown precision fields {sorted(unknown)}; known: {sorted(known)}")
            kw = dict(spec)
            for k in ("weight", "activation", "gradient"):
                if k in kw:
                    kw[k] = _fmt(kw[k], k)
            if "accumulator" in kw and kw["accumulator"] != "auto":
                kw["accumulator"] = _fmt(kw["accumulator"], "accumulator")
                if kw["accumulator"].rounding == "SR":
                    raise PrecisionError(f"accumulator {kw['accumulator']}: stochastic rounding (SR) applies to "
                                         "what a stage writes, not to an accumulator's steps; give SR to the "
                                         "weight, activation or gradient formats")
            kw["overrides"] = {k: _fmt(v, f"override {k}") for k, v in kw.get("overrides", {}).items()}
            return cls(**kw)
        raise PrecisionError(f"precision must be a string like 'fixed<16,6>', a dict or a Precision, got {spec!r}")

    def describe(self) -> dict:
        return {
            "weight": str(self.weight), "activation": str(self.activation), "gradient": str(self.gradient),
            "accumulator": str(self.accumulator), "accumulator_int_bits": self.accumulator_int_bits,
            "constant_width": self.constant_width, "sr_seed": self.sr_seed,
            "overrides": {k: str(v) for k, v in sorted(self.overrides.items())},
        }


def run(kernel: Kernel, precision: Precision) -> Kernel:
    """Set ``fmt`` on every buffer, ``acc`` on every reduction, build function tables."""
    facts = lowering_facts(kernel, pop=True)  # lowering's hand-off: it never reaches kernel.json
    const_values, param_init, absmax = facts.const_values, facts.param_init, facts.absmax
    used = set()
    scaled = kernel.meta.get(LR_SCALED_KEY, {})
    for buf in kernel.buffers.values():
        override = _override(buf, precision, used)
        buf.fmt = override or _decide_format(buf, precision, _values(buf, facts), absmax.get(buf.name))
        if override is None and facts.per_model and buf.name not in scaled:
            _note_unified(kernel, buf, precision, facts.per_model)
        if buf.role == "const":
            buf.init = tuple(int(v) for v in buf.fmt.quantize(const_values[buf.name]))
        if buf.role == "param":
            buf.init = tuple(int(v) for v in buf.fmt.quantize(param_init[buf.name]))
        if buf.role in ("param", "input", "target", "output") and buf.fmt.width > MAX_PORT_WIDTH:
            raise PrecisionError(f"{buf.name} ({buf.role}) is {buf.fmt}: buffers the host reads or writes "
                                 f"can be at most {MAX_PORT_WIDTH} bits wide")
    if any(b.fmt.rounding == "SR" for b in kernel.buffers.values()):
        kernel.meta[SEED_KEY] = int(precision.sr_seed)
    fixed = {b.name for b in kernel.buffers.values() if _override(b, precision, set()) is not None}
    notes = derived_ranges.run(kernel, fixed)
    if notes:
        kernel.meta[DERIVED_KEY] = notes
    _hold_lr_scaled(kernel, precision, used)
    unused = set(precision.overrides) - used
    if unused:
        raise PrecisionError(f"precision overrides name no tensor of the model: {sorted(unused)}; "
                             f"tensors: {sorted(b.source for b in kernel.buffers.values() if b.source)[:40]}")
    for prog in kernel.programs.values():
        for stage in prog.stages:
            _check_product(stage, kernel)
            if stage.reduce:
                stage.acc = _accumulator(stage, kernel, precision)
            if stage.op == "table":
                _build_table(stage, kernel)
            if stage.op in NORMALIZED_ROOTS:
                _build_normalized_rom(stage, kernel)
    return kernel


def _hold_lr_scaled(kernel: Kernel, p: Precision, used: set) -> None:
    """The folded SGD update's operands scaled by the learning rate (``lower/update_fold.py``) hold every value
    their source's format and the learning rate register can make: the source's width, its integer bits plus
    the register's (the gradient may grow far beyond its value on the example data, as it may in its own
    buffer). Overrides by name win."""
    for name, (source, _, lr_buffer) in kernel.meta.get(LR_SCALED_KEY, {}).items():
        buf = kernel.buffers[name]
        if _override(buf, p, used) is not None:
            continue
        src, lr = kernel.buffers[source].fmt, kernel.buffers[lr_buffer].fmt
        buf.fmt = Fixed(src.width, src.int_bits + lr.int_bits - 1, True, src.rounding, src.overflow)
        if any(u.startswith(f"{lr_buffer}:") for u in kernel.meta.get(UNIFIED_KEY, [])):
            kernel.meta[UNIFIED_KEY].append(f"{name}: {buf.fmt} for all ({source} times the learning rate register, "
                                            f"whose format is unified)")


def _decide_format(buf: Buffer, p: Precision, const_values, absmax: float | None) -> Fixed:
    """A buffer's format from its kind (or constant values), widened to its profiled range."""
    fmt = _buffer_format(buf, p, const_values)
    if absmax is not None and buf.kind in ("activation", "gradient"):
        fmt = widen_to_range(fmt, absmax, p.range_margin_bits)
    if buf.kind in ("statistic", "scale"):
        fmt = fit_to_range(fmt, absmax or 0.0, STATISTIC_MARGIN_BITS)
    if buf.kind == "moment":
        fmt = fit_to_range(fmt, absmax or 0.0, STATISTIC_MARGIN_BITS)
        fmt = Fixed(fmt.width, max(fmt.int_bits, MOMENT_WIDTH - MOMENT_MAX_FRAC))
    return fmt


def _note_unified(kernel: Kernel, buf: Buffer, p: Precision, per_model: list) -> None:
    """On a kernel stacked on a model axis, a buffer whose models would each get a different format
    alone (their ranges or constants differ) has the one that holds them all: say so for the report."""
    alone = [_decide_format(buf, p, _values(buf, f), f.absmax.get(buf.name)) for f in per_model]
    if len(set(alone)) == 1:
        return
    groups: dict[Fixed, list[int]] = {}
    for i, fmt in enumerate(alone):
        groups.setdefault(fmt, []).append(i)
    what = "; ".join(f"model{'s' if len(ms) > 1 else ''} {_ranges(ms)}: {fmt}" for fmt, ms in groups.items())
    why = {"const": "its constant differs between the models", "hyper": "the models' learning rates differ"}.get(
        buf.role if buf.role == "const" else buf.kind, "the models' profiled ranges differ")
    kernel.meta.setdefault(UNIFIED_KEY, []).append(
        f"{buf.name}: {buf.fmt} for all ({why}; alone: {what})")


def _ranges(ids: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    out, start = [], ids[0]
    for a, b in zip(ids, [*ids[1:], None], strict=True):
        if b != a + 1:
            out.append(str(a) if a == start else f"{start}-{a}")
            start = b
    return ", ".join(out)


def _values(buf: Buffer, facts) -> list | None:
    """The values that decide a buffer's format: a constant's, or the learning rate register's initial value."""
    return facts.param_init.get(buf.name) if buf.kind == "hyper" else facts.const_values.get(buf.name)


def _override(buf: Buffer, p: Precision, used: set) -> Fixed | None:
    for key in (buf.name, buf.source):
        if key in p.overrides:
            used.add(key)
            return p.overrides[key]
    return None


def _buffer_format(buf: Buffer, p: Precision, const_values) -> Fixed:
    if buf.kind == "bool":
        return BOOL
    if buf.role == "const":
        return _const_format(np.asarray(const_values, dtype=np.float64), p)
    if buf.kind == "hyper":  # the learning rate register: a constant's format with LR_REACH_BITS more range
        fmt = _const_format(np.asarray(const_values, dtype=np.float64), p, exact_integers=False)
        return Fixed(fmt.width, fmt.int_bits + LR_REACH_BITS, fmt.signed, fmt.rounding, fmt.overflow)
    if buf.kind == "integer":
        return Fixed(p.integer_width, p.integer_width)
    if buf.kind == "random":  # the dropout generator's state: its wrap-around is the LCG's modulo 2**32
        return RANDOM_FORMAT
    if buf.kind == "moment":  # fitted to the range by ``run``
        width = MOMENT_STATE_WIDTH if buf.role == "param" else MOMENT_WIDTH
        return Fixed(width, width)
    return {"weight": p.weight, "activation": p.activation, "gradient": p.gradient, "statistic": p.gradient,
            "scale": p.gradient}[buf.kind]  # statistics and scales: the gradients' width, fitted by ``run``


STATISTIC_MARGIN_BITS = 4  # BatchNorm's variance may grow 16x over its profiled value before saturating
# Adam's moments, square roots and bias corrections: wide on chip, so that squares of small gradients keep
# their precision (44 bits: times an 18-bit constant, within MAX_ACC_WIDTH); the states the host reads, at
# most its word (30 bits: a state times itself within MAX_ACC_WIDTH); at most MOMENT_MAX_FRAC frac bits, so
# that aligned sums stay within 64 bits
MOMENT_WIDTH = 44
MOMENT_STATE_WIDTH = 30
MOMENT_MAX_FRAC = 52


def fit_to_range(fmt: Fixed, absmax: float, margin_bits: int) -> Fixed:
    """``fmt``'s width with just enough integer bits for ``absmax`` times 2**margin, the rest
    fraction (a variance of 0.01 gets many more fraction bits than an activation)."""
    if absmax <= 0:
        return fmt
    int_bits = math.floor(math.log2(absmax)) + 2 + margin_bits
    return Fixed(fmt.width, int_bits, fmt.signed, fmt.rounding, fmt.overflow)


def widen_to_range(fmt: Fixed, absmax: float, margin_bits: int) -> Fixed:
    """Add integer bits (keeping the fraction) until ``absmax`` times 2**margin fits."""
    if absmax <= 0:
        return fmt
    needed = math.floor(math.log2(absmax)) + 2 + margin_bits  # sign bit, then the magnitude
    extra = needed - fmt.int_bits
    if extra <= 0:
        return fmt
    return Fixed(fmt.width + extra, fmt.int_bits + extra, fmt.signed, fmt.rounding, fmt.overflow)


def _const_format(values: np.ndarray, p: Precision, exact_integers: bool = True) -> Fixed:
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    # small constants (a learning rate of 5e-4) get negative integer bits: full relative precision
    int_bits = max(-16, math.floor(math.log2(peak)) + 2) if peak > 0 else 1
    if exact_integers and values.size and np.all(values == np.round(values)):
        return Fixed(max(2, int_bits), max(2, int_bits))  # an exact integer format
    return Fixed(max(p.constant_width, int_bits + 2), int_bits)


def _check_product(stage: Stage, kernel: Kernel) -> None:
    if OPS_TABLE[stage.op].multiplies:
        w = sum(kernel.buffers[a.buffer].fmt.width for a in stage.ins[:2])
        if w > MAX_ACC_WIDTH:
            raise PrecisionError(f"stage {stage.name}: the product of {w} bits exceeds {MAX_ACC_WIDTH}; "
                                 f"use narrower formats")


def _accumulator(stage: Stage, kernel: Kernel, p: Precision) -> Fixed:
    fin = [kernel.buffers[a.buffer].fmt for a in stage.ins]
    out = kernel.buffers[stage.out.buffer].fmt
    if OPS_TABLE[stage.op].acc_init == "minimum":  # max, argmax: compared, never summed
        return fin[0].with_modes("TRN", "SAT")
    if p.accumulator != "auto":
        return p.accumulator
    if stage.op == "mac":
        frac = fin[0].frac_bits + fin[1].frac_bits
        base_int = fin[0].int_bits + fin[1].int_bits
    else:
        frac, base_int = fin[0].frac_bits, fin[0].int_bits
    n = 1
    for lp in stage.loops:
        if lp.var in stage.reduce:
            n *= lp.extent
    int_bits = max(p.accumulator_int_bits, out.int_bits + 1, min(base_int, p.accumulator_int_bits) +
                   math.ceil(math.log2(max(n, 1))))
    arity = OPS_TABLE[stage.op].arity
    if len(fin) > arity:  # the initial value (a bias, a folded update's parameter) adds its range to the terms'
        term_bits = min(base_int, p.accumulator_int_bits) - (2 if stage.op == "mac" else 1)  # |term| < 2**term_bits
        peak = n * 2.0 ** term_bits + 2.0 ** (fin[arity].int_bits - 1)
        int_bits = max(int_bits, math.ceil(math.log2(peak)) + 1)
    frac = max(0, min(frac, MAX_ACC_WIDTH - int_bits))
    return Fixed(int_bits + frac, int_bits)


# ----- function tables -------------------------------------------------------------------------

def _domain(fn: str, fin: Fixed, fout: Fixed) -> tuple[float, float]:
    lo, hi = fin.min_value, fin.max_value
    if fn == "exp":
        lo = max(lo, math.log(fout.ulp / 2))
        hi = min(hi, math.log(fout.max_value))
    elif fn in ("log", "rsqrt"):
        lo = max(lo, fin.ulp)
    elif fn in ("sigmoid", "tanh"):
        lo, hi = max(lo, -16.0), min(hi, 16.0)
    elif fn == "erf":  # |1 - erf(5)| < 2e-12
        lo, hi = max(lo, -5.0), min(hi, 5.0)
    elif fn == "sqrt":
        lo = max(lo, 0.0)
    elif fn in ("sin", "cos"):  # normalize reduces the argument to [-pi, pi]
        lo, hi = max(lo, -4.0), min(hi, 4.0)
    elif fn == "reciprocal":
        lo = max(lo, fin.ulp)
    return lo, hi


def _segments(fn: str, lo: float, hi: float, fout: Fixed) -> int:
    """How many segments a table gets: ``TABLE_SEGMENTS``, or for sin, cos and reciprocal the
    fewest (a power of two, at most ``MAX_TABLE_SEGMENTS``) whose interpolation error
    ``h**2 / 8 * max|f''|`` is at most half an output ulp."""
    curvature = {"sin": 1.0, "cos": 1.0, "reciprocal": 2.0 / max(lo, 1e-9) ** 3,
                 "rsqrt": 0.75 / max(lo, 1e-9) ** 2.5, "sqrt": 0.25 / max(lo, 1e-9) ** 1.5}.get(fn)
    n = TABLE_SEGMENTS
    while curvature is not None and n < MAX_TABLE_SEGMENTS and ((hi - lo) / n) ** 2 / 8 * curvature > fout.ulp / 2:
        n *= 2
    return n


FUNCTIONS = {
    "exp": np.exp,
    "log": np.log,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "rsqrt": lambda x: 1.0 / np.sqrt(x),
    "sin": np.sin,
    "cos": np.cos,
    "reciprocal": lambda x: 1.0 / x,
    "tanh": np.tanh,
    "erf": np.vectorize(math.erf, otypes=[float]),
    "sqrt": np.sqrt,
}


def _build_table(stage: Stage, kernel: Kernel) -> None:
    fn = stage.attrs["fn"]
    fin = kernel.buffers[stage.ins[0].buffer].fmt
    fout = kernel.buffers[stage.out.buffer].fmt
    lo, hi = _domain(fn, fin, fout)
    lo = max(lo, float(stage.attrs.get("x_min", lo)))  # a lower bound known from profiling (reciprocal)
    raw_lo, raw_hi = math.ceil(lo / fin.ulp), math.floor(hi / fin.ulp)
    if raw_hi <= raw_lo:
        raw_hi = raw_lo + 1
    span = raw_hi - raw_lo
    segments = _segments(fn, lo, hi, fout)
    shift = max(0, math.ceil(math.log2(span / segments))) if span > segments else 0
    n = -(-span // (1 << shift))
    xs = (raw_lo + (np.arange(n + 1, dtype=np.int64) << shift)) * fin.ulp
    tfmt = fout.with_modes(overflow="SAT")
    with np.errstate(over="ignore"):  # an input ulp past the domain (fixed<6,16>: 1024) overflows exp: saturate
        values = np.clip(FUNCTIONS[fn](xs), tfmt.min_value, tfmt.max_value)
    entries = tuple(int(v) for v in tfmt.quantize(values))
    name = next((b.name for b in kernel.buffers.values() if b.role == "const" and b.fmt == tfmt
                 and b.source.startswith(f"{fn} table") and b.init == entries), None)  # the same table: shared
    if name is None:
        name = f"{stage.name}_table"
        kernel.buffers[name] = Buffer(name, (n + 1,), tfmt, "const", "const", entries, f"{fn} table for {stage.name}")
    stage.attrs.update({"table": name, "lo": int(raw_lo), "shift": int(shift)})


# ----- div and div_sqrt: the ROM of normalized divisors --------------------------------------------

NORMALIZED_ROOTS = {"div": 1, "div_sqrt": 2}
NORMALIZED_GUARD_BITS = 2  # the exact result's frac bits beyond the output's: its truncating shift stays below them
MAX_ROM_FRAC = 32  # ROM entries of at most 34 bits (more gains nothing over the divisor's 12-bit truncation)


def _build_normalized_rom(stage: Stage, kernel: Kernel) -> None:
    """``attrs['q']`` (the ROM's frac bits) and ``attrs['rom']`` (shared by the stages of one root and q).

    ``q`` gives the exact result ``NORMALIZED_GUARD_BITS`` more frac bits than the output where the
    product ``a * rom`` (``a``'s width + q + 2 bits) fits 63 bits, else fewer (its truncating shift then
    errs by up to one ulp of the exact result); and at least ``NORM_INDEX_BITS + 2``, so the ROM's rounding
    stays below the divisor's truncation."""
    root = NORMALIZED_ROOTS[stage.op]
    fa, fb = (kernel.buffers[a.buffer].fmt for a in stage.ins)
    fout = kernel.buffers[stage.out.buffer].fmt
    wanted = fout.frac_bits + NORMALIZED_GUARD_BITS - fa.frac_bits - 1 + -(-fb.frac_bits // root)
    q = max(NORM_INDEX_BITS + 2, min(wanted, 61 - fa.width, MAX_ROM_FRAC))
    if fa.width + q + 2 > 63:
        raise PrecisionError(f"stage {stage.name} ({stage.op}): the dividend {fa} times its ROM's {q + 2}-bit "
                             f"entries exceeds 63 bits; use a dividend of at most {61 - NORM_INDEX_BITS - 2} bits")
    name = f"{stage.op}_rom_q{q}"
    if name not in kernel.buffers:
        entries = tuple(int(v) for v in norm_rom_values(root, q))
        kernel.buffers[name] = Buffer(name, (len(entries),), Fixed(q + 2, q + 2, signed=False), "const", "const",
                                      entries, f"{stage.op} ROM, {NORM_INDEX_BITS} index bits, q={q}")
    stage.attrs.update({"rom": name, "q": int(q)})
