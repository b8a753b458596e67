"""The IR's ops, each declared once: ``OPS_TABLE`` maps an op's name to its ``OpSpec``.

Everything that handles an op reads its row here: ``ir.py`` (``OPS``, ``ARITY``, ...), the
emulator (``evaluate``), the HLS and RTL emitters (arity, init input, alignment, result
format, accumulation, whether it multiplies), the RTL schedule (``unit_latency``), the
estimate (``estimate_depth``, ``multiplies``) and the tests' error bounds (``reference``,
``error_rule``). A backend keeps only how it spells an op (``HLS_SPELLING`` in
``fx2fpga/backends/hls/emit.py``, ``RTL_SPELLING`` in ``fx2fpga/backends/rtl/emit.py``);
``tests/unit/test_op_table.py`` fails when one lacks an op of this table. ``docs/adding-an-op.md``
walks one op through it.

Values are raw integers (``fixed.py``). An elementwise op's exact result has ``result_frac``
fraction bits; it is then assigned to the output format (its rounding, then its overflow mode).
A reduction's ``evaluate`` gives the term of one reduction point (at ``result_frac`` bits),
which ``accumulate`` folds into the accumulator (see ``ir.py`` for the full semantics).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .fixed import Fixed, align

Evaluate = Callable[[list[np.ndarray], object, object], np.ndarray]  # (operands, stage, kernel) -> raw


@dataclass(frozen=True)
class OpSpec:
    """One IR op: what it computes and what every backend needs to know about it."""

    name: str
    arity: int  # operands (a reduction's optional init input not counted)
    doc: str  # what it computes, in one line
    evaluate: Evaluate  # exact result (a reduction: its term) on raw operands, those in ``aligned`` aligned
    reference: Callable[..., np.ndarray] | None  # the same in real numbers (float64); None: a table's function
    result_frac: Callable[[Sequence[int]], int] | None  # exact result's frac bits from the operands'; None: table's
    attrs: tuple[str, ...] = ()  # the ``stage.attrs`` it reads (a function table: its ROM buffer, range, ...)
    aligned: tuple[int, ...] = ()  # operands brought to their largest frac bits before ``evaluate``
    reduction: bool = False
    init_input: bool = False  # reductions: an optional further input, the accumulator's initial value
    accumulate: str = ""  # reductions: "add" (acc += term), "max", "argmax" (the first maximum's position)
    acc_init: str = ""  # reductions: "zero" (or the init input), "minimum" (the accumulator format's)
    multiplies: bool = False  # takes the kernel's shared multiplier (the estimate's DSP blocks)
    unit_latency: int = 3  # RTL: cycles from the operands to the unit's registered result (passes/schedule.py)
    estimate_depth: int = 2  # the estimate's pipeline depth (estimate.py)
    error_rule: str = "lipschitz"  # how tests/error_bounds.py propagates input errors (its ERROR_RULES)
    stage_frac: Callable[[Sequence[int], object], int] | None = None  # result frac bits where the stage's attrs
    # decide them too: (operands' frac bits, stage) -> frac bits (``exact_frac`` prefers it to ``result_frac``)
    multiplied: tuple[int, int] = (0, 1)  # the operands the shared multiplier takes (ops that multiply)

    @property
    def elementwise(self) -> bool:
        return not self.reduction

    @property
    def reads_table(self) -> bool:
        """Reads a const function table (``attrs['table']``) whose frac bits its result has."""
        return "table" in self.attrs

    @property
    def skips_guarded(self) -> bool:
        """A guarded-off point is skipped (reads the accumulator's minimum) rather than read as 0."""
        return self.acc_init == "minimum"


def _max_frac(fr: Sequence[int]) -> int:
    return max(fr)


def _table(v: list[np.ndarray], stage, kernel) -> np.ndarray:
    """Piecewise-linear interpolation of the raw input in the const table ``attrs['table']``."""
    table = np.asarray(kernel.buffers[stage.attrs["table"]].init, dtype=np.int64)
    n = table.size - 1
    lo, shift = int(stage.attrs["lo"]), int(stage.attrs["shift"])
    r = np.clip(v[0], lo, lo + (n << shift)) - lo
    i = np.minimum(r >> shift, n - 1)
    t = r - (i << shift)
    return table[i] + (((table[i + 1] - table[i]) * t) >> shift)


NORM_INDEX_BITS = 12  # div, div_sqrt: the divisor's leading bits that index the ROM


def bit_length(x: np.ndarray) -> np.ndarray:
    """The number of bits of each non-negative int64 (0 for 0): exact, unlike ``log2`` of a float (whose
    rounding to 53 bits the two corrections undo)."""
    x = np.asarray(x, dtype=np.int64)
    n = np.frexp(x.astype(np.float64))[1].astype(np.int64)
    n -= (n > 0) & ((x >> np.maximum(n - 1, 0)) == 0)  # rounded up to the next power of two
    n += (x >> np.minimum(n, 63)) != 0
    return n


_ROMS: dict[int, tuple[tuple, np.ndarray]] = {}  # id of a ROM's init tuple -> (the tuple, its array)


def _rom_array(init: tuple) -> np.ndarray:
    """A ROM's entries as an int64 array, made once per init tuple."""
    hit = _ROMS.get(id(init))
    if hit is None or hit[0] is not init:
        hit = _ROMS[id(init)] = (init, np.asarray(init, dtype=np.int64))
    return hit[1]


def norm_rom_values(root: int, q: int) -> np.ndarray:
    """The ROM of ``div`` (root 1) or ``div_sqrt`` (root 2): ``round(2**q * (2**T / m) ** (1 / root))`` for
    each normalized divisor ``m`` in ``[2**(T - root), 2**T)``, ``T = NORM_INDEX_BITS``; in ``(2**q, 2**(q+1)]``."""
    t = NORM_INDEX_BITS
    m = np.arange(1 << (t - root), 1 << t, dtype=np.float64)
    return np.floor(np.ldexp((2.0**t / m) ** (1.0 / root), q) + 0.5).astype(np.int64)


def _normalized_division(root: int) -> Evaluate:
    """``a / b`` (root 1) or ``a / sqrt(b)`` (root 2) on raw values (``ir.py`` gives the steps):

    a divisor ``<= 0`` reads as one ulp; for a square root, one of odd frac bits is shifted left once;
    ``e``, the fewest with ``b < 2**(root * e)``; ``m``, the ``NORM_INDEX_BITS`` leading bits of ``b`` (zeros
    appended where it has fewer), reads the ROM ``attrs['rom']``; the result is ``(a * rom[m]) >> (e - 1)``
    at ``div_norm_frac`` fraction bits."""
    t = NORM_INDEX_BITS

    def evaluate(v: list[np.ndarray], stage, kernel) -> np.ndarray:
        fb = kernel.buffers[stage.ins[1].buffer].fmt.frac_bits
        b = np.maximum(v[1], 1) << (fb % root)
        e = (bit_length(b) + root - 1) // root
        s = root * e
        m = np.where(s <= t, b << np.maximum(t - s, 0), b >> np.maximum(s - t, 0))
        rom = _rom_array(kernel.buffers[stage.attrs["rom"]].init)
        return (v[0] * rom[m - (1 << (t - root))]) >> (e - 1)
    return evaluate


def div_norm_frac(root: int):
    """Frac bits of the exact result of ``div`` / ``div_sqrt``: ``fa + q + 1 - ceil(fb / root)``."""
    return lambda fracs, stage: fracs[0] + int(stage.attrs["q"]) + 1 - (fracs[1] + root - 1) // root


def mid_format(stage) -> Fixed:
    """The format ``msub`` assigns its product to before subtracting (``attrs['mid']``)."""
    return Fixed.parse(stage.attrs["mid"])


def _msub(v: list[np.ndarray], stage, kernel) -> np.ndarray:
    """a - [b * c]: the product assigned to the stage's ``mid`` format, then subtracted exactly."""
    fr = [kernel.buffers[a.buffer].fmt.frac_bits for a in stage.ins]
    mid = mid_format(stage)
    t = mid.from_raw(v[1] * v[2], fr[1] + fr[2])
    f = max(fr[0], mid.frac_bits)
    return align(v[0], fr[0], f) - align(t, mid.frac_bits, f)


def then_relu(stage) -> bool:
    """``stage`` is a ``mac`` fused with the ReLU that read it (``attrs['then'] == 'relu'``, passes/fuse.py): its
    result, assigned to the output's format, goes through ReLU before it is written."""
    return stage.attrs.get("then") == "relu"


def then_relu_mask(stage) -> bool:
    """``stage`` is a ``mac`` fused with ReLU's backward that read it (``attrs['then'] == 'relu_mask'``,
    passes/fuse.py): its result, assigned to the output's format, is written as 0 where its last input (the
    gate, ReLU's output at the result's point) is at most 0, else as it is."""
    return stage.attrs.get("then") == "relu_mask"


EPILOGUE_INPUTS = {"relu": 0, "relu_mask": 1}  # a fused epilogue -> the inputs it appends to the stage's own


def epilogue_inputs(stage) -> int:
    """How many of ``stage.ins``, at the end, its fused epilogue reads (the gate of ``relu_mask``), not its op."""
    return EPILOGUE_INPUTS.get(stage.attrs.get("then"), 0)


def own_inputs(stage) -> tuple:
    """``stage.ins`` without its epilogue's inputs: the op's operands and a reduction's init input."""
    n = epilogue_inputs(stage)
    return stage.ins[:len(stage.ins) - n] if n else stage.ins


def epilogue(stage, raw: np.ndarray, gate: np.ndarray | None = None) -> np.ndarray:
    """A stage's assigned result as it is written: through ReLU where ``then_relu`` (the format is the same, so
    ReLU is exact); 0 where ``then_relu_mask`` and the gate's raw value (``gate``) is at most 0; else unchanged."""
    if then_relu(stage):
        return np.maximum(raw, 0)
    if then_relu_mask(stage):
        return np.where(gate <= 0, 0, raw)
    return raw


def _compare(name: str, fn) -> OpSpec:
    return OpSpec(name, 2, f"1 if a {name} b else 0, in the BOOL format",
                  lambda v, st, k: fn(v[0], v[1]).astype(np.int64),
                  lambda a, b: fn(a, b).astype(np.float64), lambda fr: 0, aligned=(0, 1), error_rule="compare")


def _compare_select(name: str, fn) -> OpSpec:
    """``a <name> b ? x : y``: a comparison and the select that reads it, fused (passes/fuse.py)."""
    return OpSpec(compare_select_op(name), 4, f"x if a {name} b else y (a comparison and its select, fused)",
                  lambda v, st, k: select_by(fn(v[0], v[1]), v),
                  lambda a, b, x, y: np.where(fn(a, b), x, y), max, aligned=(0, 1, 2, 3),
                  error_rule="compare_select")


def compare_select_op(comparison: str) -> str:
    """The fused op of ``comparison`` (``eq`` .. ``ge``) and the select reading it: ``le`` -> ``le_select``."""
    return f"{comparison}_select"


def is_compare_select(op: str) -> bool:
    """``op`` is a comparison fused with the select that reads it (``le_select`` ...; passes/fuse.py): the op
    table's rows whose ``error_rule`` is ``compare_select``."""
    return op in _FUSED_COMPARISONS


def fused_comparison(op: str) -> str | None:
    """The comparison a fused compare-select op makes (``le`` for ``le_select``), else None."""
    return _FUSED_COMPARISONS.get(op)


def fused_decision(op: str, vals: list[np.ndarray]) -> np.ndarray | None:
    """A fused comparison's outcome (``<cmp>_select`` on its aligned operands), else None: the emulator keeps it
    in its memory under ``decision_name`` (the hardware does not store it), where tests and users read the
    decisions a kernel took, as they read the mask buffer before the fusion."""
    cmp = fused_comparison(op)
    return None if cmp is None else COMPARISONS[cmp](vals[0], vals[1])


def select_by(decision: np.ndarray, vals: list[np.ndarray]) -> np.ndarray:
    """A fused compare-select's result from its comparison's outcome (``fused_decision``): x where it holds, else y."""
    return np.where(decision, vals[2], vals[3])


def decision_name(stage_name: str) -> str:
    """The emulator memory's key of a fused comparison's outcome, over the stage's loops."""
    return f"{stage_name}:decision"


COMPARISONS = {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater,
               "ge": np.greater_equal}
_ROWS = [
    OpSpec("copy", 1, "a", lambda v, st, k: v[0], lambda a: a, lambda fr: fr[0]),
    OpSpec("neg", 1, "-a", lambda v, st, k: -v[0], lambda a: -a, lambda fr: fr[0]),
    OpSpec("relu", 1, "a > 0 ? a : 0", lambda v, st, k: np.maximum(v[0], 0), lambda a: np.maximum(a, 0),
           lambda fr: fr[0]),
    OpSpec("abs", 1, "|a|", lambda v, st, k: np.abs(v[0]), np.abs, lambda fr: fr[0]),
    OpSpec("add", 2, "a + b", lambda v, st, k: v[0] + v[1], lambda a, b: a + b, _max_frac, aligned=(0, 1),
           error_rule="sum"),
    OpSpec("sub", 2, "a - b", lambda v, st, k: v[0] - v[1], lambda a, b: a - b, _max_frac, aligned=(0, 1),
           error_rule="sum"),
    OpSpec("mul", 2, "a * b", lambda v, st, k: v[0] * v[1], lambda a, b: a * b, lambda fr: fr[0] + fr[1],
           multiplies=True, unit_latency=7, error_rule="product"),
    OpSpec("select", 3, "c != 0 ? a : b", lambda v, st, k: np.where(v[0] != 0, v[1], v[2]),
           lambda c, a, b: np.where(c != 0, a, b), lambda fr: max(fr[1], fr[2]), aligned=(1, 2),
           error_rule="select"),
    *(_compare(name, fn) for name, fn in COMPARISONS.items()),
    *(_compare_select(name, fn) for name, fn in COMPARISONS.items()),
    OpSpec("table", 1, "piecewise-linear function of a (attrs: fn, table, lo, shift; see ir.py)", _table,
           None, None, attrs=("fn", "table", "lo", "shift"), unit_latency=12, estimate_depth=5, error_rule="table"),
    OpSpec("msub", 3, "a - [b * c] (the product assigned to attrs['mid'] first: a fused weight update p - [lr * g])",
           _msub, lambda a, b, c: a - b * c, None, attrs=("mid",), multiplies=True, unit_latency=9,
           estimate_depth=4, error_rule="msub", multiplied=(1, 2),
           stage_frac=lambda fr, st: max(fr[0], mid_format(st).frac_bits)),
    OpSpec("div", 2, "a / b, the divisor normalized to its leading bits, which read a ROM (attrs: rom, q)",
           _normalized_division(1), lambda a, b: a / b, None, attrs=("rom", "q"), unit_latency=12,
           estimate_depth=5, error_rule="normalized", stage_frac=div_norm_frac(1)),
    OpSpec("div_sqrt", 2, "a / sqrt(b), the divisor normalized as div's (attrs: rom, q)",
           _normalized_division(2), lambda a, b: a / np.sqrt(b), None, attrs=("rom", "q"), unit_latency=12,
           estimate_depth=5, error_rule="normalized", stage_frac=div_norm_frac(2)),
    OpSpec("mac", 2, "acc += a * b", lambda v, st, k: v[0] * v[1], lambda a, b: a * b, lambda fr: fr[0] + fr[1],
           reduction=True, init_input=True, accumulate="add", acc_init="zero", multiplies=True, unit_latency=8,
           estimate_depth=6, error_rule="product"),
    OpSpec("sum", 1, "acc += a", lambda v, st, k: v[0], lambda a: a, lambda fr: fr[0], reduction=True,
           init_input=True, accumulate="add", acc_init="zero", unit_latency=4, estimate_depth=4),
    OpSpec("max", 1, "acc = max(acc, a)", lambda v, st, k: v[0], lambda a: a, lambda fr: fr[0], reduction=True,
           accumulate="max", acc_init="minimum", unit_latency=4, estimate_depth=3),
    OpSpec("argmax", 1, "the position of the first maximum", lambda v, st, k: v[0], lambda a: a, lambda fr: fr[0],
           reduction=True, accumulate="argmax", acc_init="minimum", unit_latency=4, error_rule="position"),
]
OPS_TABLE: dict[str, OpSpec] = {spec.name: spec for spec in _ROWS}
_FUSED_COMPARISONS: dict[str, str] = {  # the fused compare-select ops -> their comparisons (``le_select`` -> ``le``)
    spec.name: spec.name.removesuffix("_select") for spec in _ROWS if spec.error_rule == "compare_select"}


def op_spec(name: str) -> OpSpec:
    """The row of op ``name``; a clear error for an op the IR does not have."""
    try:
        return OPS_TABLE[name]
    except KeyError:
        raise ValueError(f"unknown IR op {name!r}; ops: {', '.join(OPS_TABLE)}") from None


def aligned_operands(spec: OpSpec, vals: Sequence[np.ndarray], fracs: Sequence[int]) -> list[np.ndarray]:
    """The operands as ``evaluate`` takes them: those in ``spec.aligned`` at their largest frac bits."""
    if not spec.aligned:
        return list(vals)
    f = max(fracs[i] for i in spec.aligned)
    return [align(v, fracs[i], f) if i in spec.aligned else v for i, v in enumerate(vals)]


def alignment_shifts(spec: OpSpec, fracs: Sequence[int]) -> list[int]:
    """Left shifts that align each operand (0 for those ``spec.aligned`` does not name)."""
    if not spec.aligned:
        return [0] * len(fracs)
    f = max(fracs[i] for i in spec.aligned)
    return [f - fr if i in spec.aligned else 0 for i, fr in enumerate(fracs)]


def exact_frac(spec: OpSpec, fracs: Sequence[int], stage, kernel) -> int:
    """Frac bits of the exact result of ``stage`` (a table's result: its entries' frac bits)."""
    if spec.reads_table:
        return kernel.buffers[stage.attrs["table"]].fmt.frac_bits
    if spec.stage_frac is not None:
        return spec.stage_frac(fracs, stage)
    return spec.result_frac(fracs)


__all__ = ["COMPARISONS", "NORM_INDEX_BITS", "OPS_TABLE", "OpSpec", "aligned_operands", "alignment_shifts",
           "decision_name", "div_norm_frac", "epilogue", "epilogue_inputs", "exact_frac", "fused_decision",
           "mid_format", "norm_rom_values", "op_spec", "own_inputs", "select_by", "then_relu", "then_relu_mask"]
