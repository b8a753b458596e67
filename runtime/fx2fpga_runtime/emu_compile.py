"""Stages compiled once into specialized closures: the fast path of the emulator.

``compile_stage(stage, kernel, group)`` returns a function ``run(mem)`` that computes exactly what
``emulator.run_stage`` (the reference) computes, or ``None`` where this module has no fast path for
the stage (the emulator then runs the reference). Everything that does not depend on the data is
decided once, at compile time:

- operands: a read whose index is affine in the loop variables (no div, mod or guard) and stays in
  range is a strided view of its buffer (no gather); other reads gather with precomputed flat
  positions. Every operand has the rank of the loop nest, with size 1 on the loops it does not use,
  so numpy broadcasting replaces the reference's broadcast over the whole nest;
- assignment to a format: no shift when the frac bits agree, and no overflow clip or wrap when the
  operand formats bound the exact result inside the target's range (``_bounds``: interval
  arithmetic on raw integers); elsewhere one range check per call, which counts the overflows only when
  some value is outside (``writer``: one reduction where the output rounds by a shift);
- a ``table`` op whose clipped input takes at most ``LOOKUP_POINTS`` values: one lookup in the op's
  result at every one of them;
- ``mac`` is one matrix product, ``sum`` one ``np.sum``, when the accumulation is exact: no term
  is rounded (term frac bits <= accumulator frac bits) and no partial sum can overflow the
  accumulator (``|init| + points * max|term|`` inside its range), so the order of the sequential
  ``acc += term`` does not matter. The product runs in float64 (BLAS) when every partial sum is
  below 2**53 in magnitude (exact), else on int64. Otherwise (rounded or overflowing
  accumulations) the reference runs, as it does for a stage whose output rounds ``SR`` (its random bits);
- ``max``/``argmax`` reduce over the operand's axes (a guarded-off point reads the accumulator's
  minimum, as in the reference);
- the output: a plain view when the write is injective and in range, else a scatter through the
  reference's flat positions (later points win).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import stochastic
from .fixed import Fixed, shift_round
from .ir import GROUP_VAR, Access, Affine, Kernel, Stage
from .ops import (
    OPS_TABLE,
    alignment_shifts,
    decision_name,
    epilogue,
    exact_frac,
    fused_decision,
    is_compare_select,
    mid_format,
    own_inputs,
    select_by,
    then_relu,
    then_relu_mask,
)

Interval = tuple[int, int] | None  # raw bounds [lo, hi] of values (None: unknown)
Raw = np.ndarray
StageFn = Callable[[dict[str, np.ndarray]], None]
Tally = Callable[[int], None]  # hears how many assignments to a stage's output overflowed (saturation counters)

_min, _max, _sum = np.minimum.reduce, np.maximum.reduce, np.add.reduce  # bound once, for the hot paths
_EXACT_FLOAT = 1 << 53  # integers of smaller magnitude add exactly in float64, in any order
# a max over at most SMALL_REDUCTION points whose innermost reduced loop has at most SHORT_AXIS (a pooling window):
# one np.maximum per point
SMALL_REDUCTION, SHORT_AXIS = 16, 4
LOOKUP_POINTS = 1 << 16  # a table op whose clipped input takes at most this many values: one lookup per value


# ----- loop space: the loops a stage's values range over ---------------------------------------------

@dataclass(frozen=True)
class Space:
    """Loop variables (outermost first) and their extents; arrays over it have its rank."""

    vars: tuple[str, ...]
    extents: tuple[int, ...]

    def grid(self, used: set[str]) -> dict[str, np.ndarray]:
        """Each used variable as an integer array broadcastable over the space."""
        out = {}
        for ax, (v, e) in enumerate(zip(self.vars, self.extents, strict=True)):
            if v in used:
                shape = [1] * len(self.vars)
                shape[ax] = e
                out[v] = np.arange(e, dtype=np.int64).reshape(shape)
        return out


def _bind_group(a: Affine, group: int) -> Affine:
    """``a`` with ``GROUP_VAR`` replaced by its value."""
    if GROUP_VAR not in a.vars():
        return a
    terms = tuple((v, c) for v, c in a.terms if v != GROUP_VAR)
    const = a.const + sum(c * group for v, c in a.terms if v == GROUP_VAR)
    return Affine(terms, const, a.div, a.mod)


def _affine_range(a: Affine, space: Space) -> tuple[int, int]:
    """Smallest and largest value of a plain affine (no div, mod) over the space."""
    ext = dict(zip(space.vars, space.extents, strict=True))
    lo = hi = a.const
    for v, c in a.terms:
        lo += min(0, c * (ext[v] - 1))
        hi += max(0, c * (ext[v] - 1))
    return lo, hi


def _in_range(index: tuple[Affine, ...], buf_shape: tuple[int, ...], space: Space) -> bool:
    """Every index is plain affine (no div, mod) and inside its dimension over the whole space."""
    for i, n in zip(index, buf_shape, strict=True):
        if i.div != 1 or i.mod:
            return False
        lo, hi = _affine_range(i, space)
        if lo < 0 or hi >= n:
            return False
    return True


def _strided(index: tuple[Affine, ...], buf_shape: tuple[int, ...], space: Space) -> tuple[int, tuple[int, ...]]:
    """Element offset and per-loop element strides of a plain affine index into a C-ordered buffer."""
    elem = [int(x) for x in np.cumprod((1,) + buf_shape[:0:-1])[::-1]]
    offset = sum(i.const * s for i, s in zip(index, elem, strict=True))
    coeff = dict.fromkeys(space.vars, 0)
    for i, s in zip(index, elem, strict=True):
        for v, c in i.terms:
            coeff[v] += c * s
    return offset, tuple(coeff[v] for v in space.vars)


# ----- operands -------------------------------------------------------------------------------------

class Operand:
    """The reads of one access over a space: ``load(mem)`` has the space's rank, size 1 on the loops
    the access does not use; a guarded-off point reads 0 (``mask``: where the guards hold)."""

    def __init__(self, access: Access, kernel: Kernel, space: Space, group: int):
        self.buffer = access.buffer
        buf_shape = kernel.buffers[access.buffer].shape
        index = tuple(_bind_group(i, group) for i in access.index)
        guard = tuple((_bind_group(g.expr, group), g.bound, g.step) for g in access.guard)
        used = {v for i in index for v in i.vars()} | {v for g, _, _ in guard for v in g.vars()}
        if not used <= set(space.vars):
            raise _Unsupported(f"{access.buffer}: variables {used - set(space.vars)} are not loops here")
        self.vars = tuple(v for v in space.vars if v in used)
        self.shape = tuple(e if v in used else 1 for v, e in zip(space.vars, space.extents, strict=True))
        self.rank = len(space.vars)
        self._arr = self._view = None
        self.mask = None
        self.flat = None
        self.strides = None
        if not index:  # a scalar buffer
            self.offset, self.strides = 0, (0,) * self.rank
            self.shape = (1,) * self.rank
            return
        if _in_range(index, buf_shape, space) and not guard:
            self.offset, self.strides = _strided(index, buf_shape, space)
            return
        grid = space.grid(used)
        pos = [np.broadcast_to(i.evaluate(grid, (1,) * self.rank), self.shape) for i in index]
        if guard:
            mask = np.ones(self.shape, dtype=bool)
            for expr, bound, step in guard:
                e = expr.evaluate(grid, (1,) * self.rank)
                mask &= (e >= 0) & (e < bound) & (e % step == 0)
            pos = [np.where(mask, p, 0) for p in pos]
            self.mask = mask
        self.flat = np.ravel_multi_index(pos, buf_shape, mode="wrap")

    def load(self, mem: dict[str, np.ndarray]) -> Raw:
        arr = mem[self.buffer]
        if self.flat is not None:
            vals = arr.reshape(-1).take(self.flat)
            return vals if self.mask is None else vals * self.mask
        if arr is not self._arr:  # a new array for this buffer: make its view once
            flat = arr.reshape(-1)
            view = as_strided(flat[self.offset:], self.shape, tuple(s * flat.itemsize for s in self.strides),
                              writeable=False)
            if not arr.flags.c_contiguous:  # (a copy: not kept)
                return view
            self._arr, self._view = arr, view
        return self._view


class Target:
    """Where a stage writes over a space: ``store(mem, result)`` with ``result`` broadcastable to it."""

    def __init__(self, access: Access, kernel: Kernel, space: Space, group: int):
        self.buffer = access.buffer
        buf_shape = kernel.buffers[access.buffer].shape
        self.space_shape = space.extents
        self.scalar = not access.index
        self._arr = self._view = self.view_of = None
        if self.scalar:
            return
        index = tuple(_bind_group(i, group) for i in access.index)
        used = {v for i in index for v in i.vars()}
        if not used <= set(space.vars):
            raise _Unsupported(f"{access.buffer}: variables {used - set(space.vars)} are not loops here")
        grid = space.grid(used)
        rank = len(space.vars)
        pos = [np.broadcast_to(i.evaluate(grid, (1,) * rank), space.extents) for i in index]
        self.flat = np.ravel_multi_index(pos, buf_shape, mode="wrap")
        injective = np.unique(self.flat).size == self.flat.size
        self.view_of = _strided(index, buf_shape, space) if _in_range(index, buf_shape, space) and injective else None

    def store(self, mem: dict[str, np.ndarray], result: Raw) -> None:
        arr = mem[self.buffer]
        if arr is not self._arr and not arr.flags.c_contiguous:  # written in place through a flat view
            arr = mem[self.buffer] = np.ascontiguousarray(arr)
        if self.scalar:  # the last point's value (a compiled stage has no empty loop)
            arr[...] = result[(-1,) * result.ndim] if isinstance(result, np.ndarray) else result
            return
        if self.view_of is None:
            arr.reshape(-1)[self.flat] = np.broadcast_to(result, self.space_shape).copy()
            return
        self._view_in(arr)[...] = result

    def store_offset(self, mem: dict[str, np.ndarray], result: Raw, offset: int) -> None:
        """``store(mem, result + offset)``, the addition made as the values are written (a ``view_of`` target)."""
        arr = mem[self.buffer]
        if arr is self._arr:  # (the usual case: the view is made)
            np.add(result, offset, out=self._view)
            return
        if not arr.flags.c_contiguous:  # written in place through a flat view
            arr = mem[self.buffer] = np.ascontiguousarray(arr)
        np.add(result, offset, out=self._view_in(arr))

    def _view_in(self, arr: np.ndarray) -> np.ndarray:
        """The written positions of ``arr`` (C-contiguous), as a view over the space, made once per array."""
        if arr is not self._arr:
            offset, strides = self.view_of
            item = arr.itemsize
            self._view = as_strided(arr.reshape(-1)[offset:], self.space_shape, tuple(s * item for s in strides))
            self._arr = arr
        return self._view


class _Unsupported(Exception):
    """The stage has no fast path here: the reference runs it."""


# ----- assigning exact values to a format ------------------------------------------------------------

def _round_interval(iv: Interval, shift: int, mode: str) -> Interval:
    if iv is None:
        return None
    if shift <= 0:
        return iv[0] << -shift, iv[1] << -shift
    if max(abs(iv[0]), abs(iv[1])) >= 1 << 62:
        return None
    if mode == "SR":  # anywhere from the floor to the ceiling
        return iv[0] >> shift, -((-iv[1]) >> shift)
    lo, hi = shift_round(np.array(iv, dtype=np.int64), shift, mode).tolist()  # monotone in the value
    return lo, hi


def _rounder(shift: int, mode: str, iv: Interval) -> Callable[[Raw], Raw]:
    """``shift_round(v, shift, mode)`` for ``shift > 0``; RND (``floor(v + 1/2)``) and TRN (``floor(v)``) as
    one add and one shift when ``iv`` bounds the values below 2**62 in magnitude (the add cannot overflow)."""
    if iv is not None and mode in ("RND", "TRN") and max(abs(iv[0]), abs(iv[1])) < 1 << 62:
        s = np.int64(shift)
        if mode == "TRN":
            return lambda v: v >> s
        half = np.int64(1 << (shift - 1))
        return lambda v: (v + half) >> s
    return lambda v: shift_round(v, shift, mode)


def assigner(fmt: Fixed, frac: int, iv: Interval,
             count: Callable[[Raw], None] | None = None) -> tuple[Callable[[Raw], Raw], tuple[int, int]]:
    """``fmt.from_raw(raw, frac)`` specialized for values within ``iv``; also the result's bounds.
    ``count`` (where ``iv`` does not keep the rounded values inside the format) hears the rounded values
    before their overflow is handled: a saturation counter (``Counter``)."""
    shift = frac - fmt.frac_bits
    rounded, fits = _rounded_fits(fmt, frac, iv)
    lo, hi = fmt.raw_min, fmt.raw_max
    if shift > 0:
        scale = _rounder(shift, fmt.rounding, iv)
    elif shift < 0:
        left = np.int64(-shift)
        scale = lambda v: v << left  # noqa: E731
    else:
        scale = None
    if fits:
        return (scale or (lambda v: v)), rounded
    bounds = (lo, hi) if rounded is None or fmt.overflow == "WRAP" else (max(lo, rounded[0]), min(hi, rounded[1]))
    if count is not None:
        def counted(v):  # the rounding; where some value is outside the format, the count and the overflow mode
            r = scale(v) if scale else v
            if _min(r, None) >= lo and _max(r, None) <= hi:
                return r
            count(r)
            return fmt.overflow_raw(r)
        return counted, bounds
    if fmt.overflow == "WRAP":
        return (lambda v: fmt.overflow_raw(scale(v) if scale else v)), (lo, hi)
    bounds = (lo, hi) if rounded is None else (max(lo, rounded[0]), min(hi, rounded[1]))
    if scale is None:
        return (lambda v: np.minimum(np.maximum(v, lo), hi)), bounds

    def sat(v):
        r = scale(v)  # a new array, or a numpy scalar where the stage has no loops
        if not isinstance(r, np.ndarray):
            return np.minimum(np.maximum(r, lo), hi)
        return np.minimum(np.maximum(r, lo, out=r), hi, out=r)
    return sat, bounds


def _rounded_fits(fmt: Fixed, frac: int, iv: Interval) -> tuple[Interval, bool]:
    """Bounds of values within ``iv`` (at ``frac`` bits) rounded to ``fmt``'s frac bits, and whether they keep
    inside its range."""
    rounded = _round_interval(iv, frac - fmt.frac_bits, fmt.rounding)
    return rounded, rounded is not None and fmt.raw_min <= rounded[0] and rounded[1] <= fmt.raw_max


def writer(fmt: Fixed, frac: int, iv: Interval, target: Target, count: Callable[[Raw], None] | None = None,
           then: Callable[[dict, Raw], Raw] | None = None):
    """``write(mem, v)``: ``target.store(mem, assign(v))``, ``assign`` the ``assigner`` of exact values at ``frac``
    bits within ``iv`` to a stage's output format ``fmt`` (``count``: its saturation counter; ``then(mem, v)``: what
    the assigned values go through before the store, ``ops.epilogue``: a mac fused with its ReLU or ReLU's backward).

    Where the assignment is counted and rounds by one shift (RND, TRN), its range check is one reduction instead
    of two: the shift yields the rounded values less the format's minimum, which read unsigned lie in
    ``0 .. raw_max - raw_min`` exactly when every value is inside the format, and the store adds the minimum
    back as it writes (a plain view target)."""
    assign, _ = assigner(fmt, frac, iv, count)
    if then is not None:
        return lambda mem, v: target.store(mem, then(mem, assign(v)))
    shift = frac - fmt.frac_bits
    lo, hi, span = fmt.raw_min, fmt.raw_max, fmt.raw_max - fmt.raw_min
    fits = _rounded_fits(fmt, frac, iv)[1]
    if count is not None and shift == 0 and not fits:
        def write_checked(mem, v):  # no rounding: the check, inline
            target.store(mem, v if _min(v, None) >= lo and _max(v, None) <= hi else assign(v))
        return write_checked
    if (count is None or target.view_of is None or shift < 0 or fmt.rounding not in ("RND", "TRN")
            or fits or iv is None
            or max(abs(iv[0]), abs(iv[1])) + (1 << shift) + (abs(lo) << shift) >= 1 << 63):
        return lambda mem, v: target.store(mem, assign(v))
    # the rounding's shift, less the minimum: floor((v + half - lo * 2**s) / 2**s) = round(v) - lo
    add, s = np.int64((1 << (shift - 1) if fmt.rounding == "RND" else 0) - (lo << shift)), np.int64(shift)

    def write(mem, v):
        u = (v + add) >> s
        if _max(u.view(np.uint64), None) <= span:  # (a value below the minimum is a huge unsigned one)
            target.store_offset(mem, u, lo)
        else:  # some value is outside: counted, then saturated or wrapped
            target.store(mem, assign(v))
    return write


def overflow_counter(fmt: Fixed, points: int, tally: Tally | None) -> Callable[[Raw], None] | None:
    """``count(rounded)`` for ``assigner``: tells ``tally`` how many of a stage's ``points`` assignments to ``fmt``
    have a rounded value outside its range (``rounded`` broadcasts to the points: each value stands for
    ``points / rounded.size`` assignments). None without a tally."""
    if tally is None:
        return None
    lo, hi = fmt.raw_min, fmt.raw_max

    def count(rounded) -> None:
        r = np.asarray(rounded)
        tally((int(np.count_nonzero(r < lo)) + int(np.count_nonzero(r > hi))) * (points // max(r.size, 1)))
    return count


# ----- static bounds of an elementwise op's exact result ---------------------------------------------

def _corners(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    p = [x * y for x in a for y in b]
    return min(p), max(p)


def _bounds(op: str, ivs: list[tuple[int, int]], stage: Stage, kernel: Kernel) -> Interval:
    """Raw bounds of the exact result of ``op`` on aligned operands within ``ivs`` (None: unknown)."""
    if op == "copy":
        return ivs[0]
    if op == "neg":
        return -ivs[0][1], -ivs[0][0]
    if op == "relu":
        return max(ivs[0][0], 0), max(ivs[0][1], 0)
    if op == "abs":
        lo, hi = ivs[0]
        return (0 if lo <= 0 <= hi else min(abs(lo), abs(hi))), max(abs(lo), abs(hi))
    if op == "add":
        return ivs[0][0] + ivs[1][0], ivs[0][1] + ivs[1][1]
    if op == "sub":
        return ivs[0][0] - ivs[1][1], ivs[0][1] - ivs[1][0]
    if op == "mul":
        return _corners(ivs[0], ivs[1])
    if op == "select":
        return min(ivs[1][0], ivs[2][0]), max(ivs[1][1], ivs[2][1])
    if op in ("eq", "ne", "lt", "le", "gt", "ge"):
        return 0, 1
    if is_compare_select(op):  # a fused comparison and select: x or y
        return min(ivs[2][0], ivs[3][0]), max(ivs[2][1], ivs[3][1])
    if op == "table":
        t = kernel.buffers[stage.attrs["table"]].init
        return (min(t), max(t)) if t else None
    return None


def _operand_interval(fmt: Fixed, guarded: bool) -> tuple[int, int]:
    lo, hi = fmt.raw_min, fmt.raw_max
    return (min(lo, 0), max(hi, 0)) if guarded else (lo, hi)


# ----- elementwise stages ----------------------------------------------------------------------------

def _table_eval(stage: Stage, kernel: Kernel, iv: tuple[int, int]) -> Callable[[list[Raw]], Raw]:
    """``ops._table`` with its table array made once; where the clipped input takes at most ``LOOKUP_POINTS``
    values, one lookup in ``ops._table``'s result at each of them (``iv``: the input's raw bounds)."""
    table = np.asarray(kernel.buffers[stage.attrs["table"]].init, dtype=np.int64)
    n = table.size - 1
    lo, shift = int(stage.attrs["lo"]), int(stage.attrs["shift"])
    top = lo + (n << shift)
    if top - lo < LOOKUP_POINTS and max(abs(iv[0]), abs(iv[1]), abs(lo)) < 1 << 61:  # ``v - lo`` cannot overflow
        full = OPS_TABLE["table"].evaluate([np.arange(lo, top + 1, dtype=np.int64)], stage, kernel)
        # take's ``clip`` mode clips the positions to 0 .. top - lo: ``np.clip(v, lo, top) - lo``
        return lambda v: full.take(v[0] - lo, mode="clip")
    step = np.diff(table)

    def run(v):
        r = np.minimum(np.maximum(v[0], lo), top) - lo
        i = np.minimum(r >> shift, n - 1)
        t = r - (i << shift)
        return table[i] + ((step[i] * t) >> shift)
    return run


def _msub_eval(stage: Stage, kernel: Kernel, ivs: list[tuple[int, int]]):
    """``ops._msub`` with its formats resolved once; also the bounds of its exact result."""
    fr = [kernel.buffers[a.buffer].fmt.frac_bits for a in stage.ins]
    mid = mid_format(stage)
    to_mid, mid_iv = assigner(mid, fr[1] + fr[2], _corners(ivs[1], ivs[2]))
    f = max(fr[0], mid.frac_bits)
    sa, st = np.int64(f - fr[0]), np.int64(f - mid.frac_bits)
    a = (ivs[0][0] << int(sa), ivs[0][1] << int(sa))
    t = (mid_iv[0] << int(st), mid_iv[1] << int(st))
    bounds = a[0] - t[1], a[1] - t[0]
    if not sa and not st:  # (the usual case: nothing to align)
        return (lambda v: v[0] - to_mid(v[1] * v[2])), bounds

    def run(v):
        return (v[0] << sa) - (to_mid(v[1] * v[2]) << st)
    return run, bounds


def _elementwise_result(stage: Stage, kernel: Kernel) -> tuple[Callable[[list[Raw]], Raw], Interval, list]:
    """The exact result of an elementwise stage on its aligned operands, its raw bounds, and the operands'
    alignment shifts."""
    spec = OPS_TABLE[stage.op]
    fmts = [kernel.buffers[a.buffer].fmt for a in stage.ins]
    fr = [f.frac_bits for f in fmts]
    shifts = [np.int64(s) for s in alignment_shifts(spec, fr)]
    ivs = [_operand_interval(f, bool(a.guard)) for f, a in zip(fmts, stage.ins, strict=True)]
    ivs = [(lo << int(s), hi << int(s)) for (lo, hi), s in zip(ivs, shifts, strict=True)]
    if stage.op == "msub":
        evaluate, iv = _msub_eval(stage, kernel, ivs)
    elif stage.op == "table":
        evaluate, iv = _table_eval(stage, kernel, ivs[0]), _bounds("table", ivs, stage, kernel)
    else:
        fn = spec.evaluate
        evaluate, iv = (lambda v: fn(v, stage, kernel)), _bounds(stage.op, ivs, stage, kernel)
    return evaluate, iv, shifts


def _elementwise(stage: Stage, kernel: Kernel, group: int, tally: Tally | None = None) -> StageFn:
    space = Space(tuple(lp.var for lp in stage.loops), tuple(lp.extent for lp in stage.loops))
    spec = OPS_TABLE[stage.op]
    ops = [Operand(a, kernel, space, group) for a in stage.ins]
    target = Target(stage.out, kernel, space, group)
    fr = [kernel.buffers[a.buffer].fmt.frac_bits for a in stage.ins]
    evaluate, iv, shifts = _elementwise_result(stage, kernel)
    out_fmt = kernel.buffers[stage.out.buffer].fmt
    write = writer(out_fmt, exact_frac(spec, fr, stage, kernel), iv, target,
                   overflow_counter(out_fmt, stage.iterations, tally))
    loads = [(op.load, s) if s else (op.load, None) for op, s in zip(ops, shifts, strict=True)]
    if is_compare_select(stage.op):
        return _compare_select(stage, space, loads, write)
    if not any(shifts):  # (the usual case: nothing to align)
        plain = [op.load for op in ops]

        def run_plain(mem):
            write(mem, evaluate([load(mem) for load in plain]))
        return run_plain

    def run(mem):
        vals = [load(mem) if s is None else load(mem) << s for load, s in loads]
        write(mem, evaluate(vals))
    return run


def _compare_select(stage: Stage, space: Space, loads, write) -> StageFn:
    """A fused comparison and select: the comparison made once, for the select and for the outcome the memory
    keeps for inspection under ``decision_name`` (``ops.fused_decision``; a fresh array of the loops' shape is
    kept as it is)."""
    decided, op, extents = decision_name(stage.name), stage.op, space.extents

    def run_compare_select(mem):
        vals = [load(mem) if s is None else load(mem) << s for load, s in loads]
        decision = fused_decision(op, vals)
        write(mem, select_by(decision, vals))
        if not (isinstance(decision, np.ndarray) and decision.shape == extents):
            decision = np.broadcast_to(decision, extents).copy()
        mem[decided] = decision
    return run_compare_select


# ----- reductions ------------------------------------------------------------------------------------

def _kept_space(stage: Stage) -> tuple[Space, list[int], list[int]]:
    """The non-reduced loops, and the axes of the kept and the reduced loops in the nest."""
    keep = [i for i, lp in enumerate(stage.loops) if lp.var not in stage.reduce]
    red = [i for i, lp in enumerate(stage.loops) if lp.var in stage.reduce]
    kept = Space(tuple(stage.loops[i].var for i in keep), tuple(stage.loops[i].extent for i in keep))
    return kept, keep, red


def _init_loader(stage: Stage, kernel: Kernel, space: Space, group: int, n_operands: int):
    """The init input's values over the kept loops, assigned to the accumulator, and their bounds (None and
    ``(0, 0)``: no init input, the accumulator starts at 0)."""
    acc = stage.acc
    _, _, red = _kept_space(stage)
    if len(own_inputs(stage)) <= n_operands:
        return None, (0, 0)
    init = Operand(stage.ins[n_operands], kernel, space, group)
    if any(init.shape[ax] != 1 for ax in red):
        raise _Unsupported("the init input varies over the reduction")
    fmt = kernel.buffers[init.buffer].fmt
    assign, iv = assigner(acc, fmt.frac_bits, _operand_interval(fmt, bool(stage.ins[n_operands].guard)))
    kept_shape = tuple(init.shape[i] for i in range(len(space.vars)) if i not in red)
    return (lambda mem: assign(init.load(mem).reshape(kept_shape))), iv


def _epilogue_fn(stage: Stage, kernel: Kernel, space: Space, group: int):
    """``then(mem, v)`` of the stage's output writer: its fused epilogue over the kept loops (``ops.epilogue``; a
    ReLU-backward's gate read at the result's point, its decisions kept under ``decision_name``), or None."""
    if then_relu(stage):
        return lambda mem, v: epilogue(stage, v)
    if not then_relu_mask(stage):
        return None
    _, _, red = _kept_space(stage)
    gate = Operand(stage.ins[-1], kernel, space, group)
    kept_shape = tuple(gate.shape[i] for i in range(len(space.vars)) if i not in red)
    decided = decision_name(stage.name)

    def then(mem, v):
        g = gate.load(mem).reshape(kept_shape)
        mem[decided] = np.broadcast_to(g <= 0, v.shape).copy()
        return epilogue(stage, v, g)
    return then


def _exact_accumulation(stage: Stage, kernel: Kernel, term_iv: tuple[int, int], term_frac: int, points: int,
                        init_iv: tuple[int, int]) -> tuple[int, int] | None:
    """Bounds of every partial sum when the sequential accumulation is exact (no term rounds, no
    partial sum leaves the accumulator's range), else None."""
    acc = stage.acc
    if term_frac > acc.frac_bits:
        return None
    s = acc.frac_bits - term_frac
    lo, hi = _partial_sums(init_iv, (term_iv[0] << s, term_iv[1] << s), points)
    if lo < acc.raw_min or hi > acc.raw_max:
        return None
    return lo, hi


def _matmul_plan(a: Operand, b: Operand, space: Space, keep: list[int], red: list[int], as_float: bool):
    """``sum over the reduced loops of a * b`` as one batched matrix product, over the kept loops."""
    va = {i for i, n in enumerate(a.shape) if n != 1}
    vb = {i for i, n in enumerate(b.shape) if n != 1}
    ext = space.extents
    batch = [i for i in keep if i in va and i in vb]
    m_ax = [i for i in keep if i in va and i not in vb]
    n_ax = [i for i in keep if i in vb and i not in va]
    k_ax = [i for i in red if i in va and i in vb]
    a_only = tuple(i for i in red if i in va and i not in vb)
    b_only = tuple(i for i in red if i in vb and i not in va)
    neither = int(np.prod([ext[i] for i in red if i not in va and i not in vb], dtype=np.int64))
    rest_a = [i for i in range(len(ext)) if i not in batch + m_ax + k_ax]
    rest_b = [i for i in range(len(ext)) if i not in batch + k_ax + n_ax]
    perm_a, perm_b = batch + m_ax + rest_a + k_ax, batch + k_ax + n_ax + rest_b

    def size(axes):
        return int(np.prod([ext[i] for i in axes], dtype=np.int64))
    nb, m, n, k = size(batch), size(m_ax), size(n_ax), size(k_ax)
    labels = batch + m_ax + n_ax
    mid_shape = [ext[i] for i in labels] + [1] * (len(keep) - len(labels))
    order = labels + [i for i in keep if i not in labels]
    to_kept = tuple(int(x) for x in np.argsort([keep.index(i) for i in order]))
    to_kept = None if to_kept == tuple(range(len(to_kept))) else to_kept
    dtype = np.float64 if as_float else np.int64
    shape_a, shape_b = ((m, k), (k, n)) if nb == 1 else ((nb, m, k), (nb, k, n))  # (one 2-D product: faster)

    def product(av: Raw, bv: Raw) -> Raw:
        if a_only:
            av = av.sum(axis=a_only, keepdims=True)
        if b_only:
            bv = bv.sum(axis=b_only, keepdims=True)
        # converted in their own layout, then transposed (often a view: BLAS takes a transposed operand as it is)
        am = av.astype(dtype, copy=False).transpose(perm_a).reshape(shape_a)
        bm = bv.astype(dtype, copy=False).transpose(perm_b).reshape(shape_b)
        p = am.dot(bm) if nb == 1 else np.matmul(am, bm)  # (2-D: ``dot`` has less overhead)
        if as_float:
            p = p.astype(np.int64)
        p = p.reshape(mid_shape)
        if to_kept is not None:
            p = p.transpose(to_kept)
        return p * neither if neither != 1 else p
    return product


@dataclass(frozen=True)
class _Reduction:
    """What every reduction needs: its loops, operands, output and term frac bits."""

    space: Space
    kept: Space
    keep: list[int]
    red: list[int]
    ops: list[Operand]
    fmts: list[Fixed]
    term_frac: int
    points: int
    target: Target

    @classmethod
    def of(cls, stage: Stage, kernel: Kernel, group: int) -> _Reduction:
        spec = OPS_TABLE[stage.op]
        space = Space(tuple(lp.var for lp in stage.loops), tuple(lp.extent for lp in stage.loops))
        kept, keep, red = _kept_space(stage)
        # the output is evaluated where the reduced loops are at their first point, 0
        out = Access(stage.out.buffer, tuple(Affine(tuple((v, c) for v, c in i.terms if v not in stage.reduce),
                                                    i.const, i.div, i.mod) for i in stage.out.index))
        ins = stage.ins[:spec.arity]
        fmts = [kernel.buffers[a.buffer].fmt for a in ins]
        points = int(np.prod([space.extents[i] for i in red], dtype=np.int64))
        return cls(space, kept, keep, red, [Operand(a, kernel, space, group) for a in ins], fmts,
                   spec.result_frac([f.frac_bits for f in fmts]), points, Target(out, kernel, kept, group))


def _max_reduction(stage: Stage, kernel: Kernel, r: _Reduction, tally: Tally | None = None) -> StageFn:
    """``max``/``argmax``: every value assigned to the accumulator, guarded-off points at its minimum."""
    acc = stage.acc
    to_acc, _ = assigner(acc, r.term_frac, _operand_interval(r.fmts[0], False))
    op, floor, target, keep = r.ops[0], acc.raw_min, r.target, r.keep
    out_fmt = kernel.buffers[stage.out.buffer].fmt
    count = overflow_counter(out_fmt, int(np.prod(r.kept.extents, dtype=np.int64)), tally)
    if stage.op == "max":
        out_write = writer(out_fmt, acc.frac_bits, (acc.raw_min, acc.raw_max), target, count)
        red_axes = tuple(r.red)
        if op.mask is None and 1 < r.points <= SMALL_REDUCTION and r.space.extents[r.red[-1]] <= SHORT_AXIS:
            # a few points (pooling windows): np.maximum over one slice per point beats a reduction over short
            # strided axes (over a longer row, softmax's, the reduction wins); the assignment to the accumulator,
            # when monotone (rounding, saturation: not a wrap), may come after the maximum
            picks = [tuple(p[r.red.index(ax)] if ax in r.red else slice(None) for ax in range(len(r.space.vars)))
                     for p in np.ndindex(*(r.space.extents[i] for i in r.red))]
            kept_shape = tuple(op.shape[i] for i in keep)
            before, after = (to_acc, None) if acc.overflow == "WRAP" else (None, to_acc)

            def run_small_max(mem):
                v = op.load(mem) if before is None else before(op.load(mem))
                best = v[picks[0]]
                for pick in picks[1:]:
                    best = np.maximum(best, v[pick])
                best = best if after is None else after(best)
                out_write(mem, np.maximum(best, floor).reshape(kept_shape))
            return run_small_max

        def run_max(mem):  # every value is at least the accumulator's minimum, its initial value
            v = to_acc(op.load(mem))
            if op.mask is not None:
                v = np.where(op.mask, v, floor)
            out_write(mem, _max(v, red_axes).reshape(tuple(v.shape[i] for i in keep)))
        return run_max
    shape, perm, flat_shape = r.space.extents, keep + r.red, r.kept.extents + (r.points,)
    idx_write = writer(out_fmt, 0, (0, r.points - 1), target, count)

    def run_argmax(mem):  # np.argmax takes the first maximum, as the sequential ``>`` does
        v = to_acc(op.load(mem))
        if op.mask is not None:
            v = np.where(op.mask, v, floor)
        flat = np.broadcast_to(v, shape).transpose(perm).reshape(flat_shape)
        idx_write(mem, np.argmax(flat, axis=-1))
    return run_argmax


def _add_reduction(stage: Stage, kernel: Kernel, group: int, r: _Reduction, tally: Tally | None = None) -> StageFn:
    """``mac``/``sum`` when the accumulation is exact: one matrix product or one ``np.sum``."""
    acc = stage.acc
    load_init, init_iv = _init_loader(stage, kernel, r.space, group, len(r.ops))
    ivs = [_operand_interval(f, bool(a.guard)) for f, a in zip(r.fmts, stage.ins, strict=False)]
    term_iv = _corners(ivs[0], ivs[1]) if stage.op == "mac" else ivs[0]
    sums = _exact_accumulation(stage, kernel, term_iv, r.term_frac, r.points, init_iv)
    if sums is None:
        raise _Unsupported("the accumulation rounds or may overflow")
    s = np.int64(acc.frac_bits - r.term_frac)
    out_fmt = kernel.buffers[stage.out.buffer].fmt
    out_write = writer(out_fmt, acc.frac_bits, sums, r.target,
                       overflow_counter(out_fmt, int(np.prod(r.kept.extents, dtype=np.int64)), tally),
                       _epilogue_fn(stage, kernel, r.space, group))

    def with_init(mem, t):  # the sum of the terms at the accumulator's frac bits, plus the init value if any
        t = t << s if s else t
        return t if load_init is None else load_init(mem) + t
    if stage.op == "mac":
        bound = max(abs(term_iv[0]), abs(term_iv[1])) * r.points
        product = _matmul_plan(r.ops[0], r.ops[1], r.space, r.keep, r.red, as_float=bound < _EXACT_FLOAT)
        a, b = r.ops

        def run_mac(mem):
            p = product(a.load(mem), b.load(mem))
            out_write(mem, with_init(mem, p))
        return run_mac
    op = r.ops[0]
    if op.mask is not None and op.shape == r.space.extents:
        return _sparse_sum(op, r, with_init, out_write, as_float=max(map(abs, sums)) < _EXACT_FLOAT)
    own = tuple(i for i in r.red if op.shape[i] != 1)
    times = int(np.prod([r.space.extents[i] for i in r.red if op.shape[i] == 1], dtype=np.int64))
    kept_shape = tuple(op.shape[i] for i in r.keep)

    def run_sum(mem):
        v = op.load(mem)
        t = (_sum(v, own) if own else v).reshape(kept_shape)
        if times != 1:
            t = t * times
        out_write(mem, with_init(mem, t))
    return run_sum


def _sparse_sum(op: Operand, r: _Reduction, with_init, out_write, as_float: bool) -> StageFn:
    """An exact ``sum`` of a guarded operand (pooling's backward: a quarter of the window points pass): only the
    points whose guards hold are read, each added to its output; a plain scatter when no two share an output,
    else ``np.bincount`` (float64: exact below 2**53, else int64 ``np.add.at``)."""
    kept_pos = np.ravel_multi_index(np.indices(r.space.extents)[r.keep], r.kept.extents)
    valid = op.mask.reshape(-1)
    flat, out = op.flat.reshape(-1)[valid], kept_pos.reshape(-1)[valid]
    n_out = int(np.prod(r.kept.extents, dtype=np.int64))
    scatter = np.unique(out).size == out.size

    def run_sparse_sum(mem):
        vals = mem[op.buffer].reshape(-1).take(flat)
        if scatter:
            t = np.zeros(n_out, dtype=np.int64)
            t[out] = vals
        elif as_float:
            t = np.bincount(out, weights=vals, minlength=n_out).astype(np.int64)
        else:
            t = np.zeros(n_out, dtype=np.int64)
            np.add.at(t, out, vals)
        out_write(mem, with_init(mem, t.reshape(r.kept.extents)))
    return run_sparse_sum


def _reduction(stage: Stage, kernel: Kernel, group: int, tally: Tally | None = None) -> StageFn:
    accumulate = OPS_TABLE[stage.op].accumulate
    r = _Reduction.of(stage, kernel, group)
    if accumulate in ("max", "argmax"):
        return _max_reduction(stage, kernel, r, tally)
    if accumulate == "add" and stage.op in ("mac", "sum"):
        return _add_reduction(stage, kernel, group, r, tally)
    raise _Unsupported(f"reduction {stage.op!r}")


def compile_stage(stage: Stage, kernel: Kernel, group: int = 0, tally: Tally | None = None) -> StageFn | None:
    """``run(mem)``: ``stage`` (``GROUP_VAR`` = ``group``) specialized once, bit-exact with
    ``emulator.run_stage``; ``None`` where it has no fast path (see the module docstring). ``tally(n)`` hears
    the number of assignments to the output that overflowed in each run, where one can."""
    if any(lp.extent == 0 for lp in stage.loops) or stochastic.rounds_stochastic(stage, kernel):
        return None  # (stochastic rounding: the reference draws the random bits)
    try:
        if stage.reduce:
            return _reduction(stage, kernel, group, tally)
        return _elementwise(stage, kernel, group, tally)
    except _Unsupported:
        return None


# ----- where an assignment to a stage's output can overflow (saturation counters) -------------------------------

def output_interval(stage: Stage, kernel: Kernel) -> tuple[Interval, int]:
    """Raw bounds (None: unknown) and frac bits of the exact value a stage assigns to its output buffer: an
    elementwise op's exact result, a reduction's accumulator (``argmax``: the position)."""
    if not stage.reduce:
        spec = OPS_TABLE[stage.op]
        fr = [kernel.buffers[a.buffer].fmt.frac_bits for a in stage.ins]
        return _elementwise_result(stage, kernel)[1], exact_frac(spec, fr, stage, kernel)
    if OPS_TABLE[stage.op].accumulate == "argmax":
        points = int(np.prod([lp.extent for lp in stage.loops if lp.var in stage.reduce], dtype=np.int64))
        return (0, max(points - 1, 0)), 0
    return (stage.acc.raw_min, stage.acc.raw_max), stage.acc.frac_bits


def sum_interval(stage: Stage, kernel: Kernel) -> tuple[tuple[int, int], int]:
    """Raw bounds and frac bits of the exact value a ``sum`` or ``mac`` reduction can reach from its operands'
    formats: its init input (if any) plus every point's term, whatever its accumulator (none yet is fine)."""
    spec = OPS_TABLE[stage.op]
    fmts = [kernel.buffers[a.buffer].fmt for a in stage.ins]
    ivs = [_operand_interval(f, bool(a.guard)) for f, a in zip(fmts, stage.ins, strict=True)]
    term = _corners(ivs[0], ivs[1]) if stage.op == "mac" else ivs[0]
    frac = spec.result_frac([f.frac_bits for f in fmts[:spec.arity]])
    points = int(np.prod([lp.extent for lp in stage.loops if lp.var in stage.reduce], dtype=np.int64))
    init = (0, 0)
    if len(own_inputs(stage)) > spec.arity:  # the init input, aligned to the terms' frac bits
        iv, shift = ivs[spec.arity], frac - fmts[spec.arity].frac_bits
        init = (_aligned(iv[0], shift), _aligned(iv[1], shift))
    return _partial_sums(init, term, points), frac


def _partial_sums(init_iv: tuple[int, int], term_iv: tuple[int, int], points: int) -> tuple[int, int]:
    """Bounds of every partial sum of ``points`` terms within ``term_iv`` added to an initial value in ``init_iv``
    (all at the same frac bits)."""
    return init_iv[0] + points * min(term_iv[0], 0), init_iv[1] + points * max(term_iv[1], 0)


def _aligned(raw: int, shift: int) -> int:
    """A raw bound at ``shift`` more frac bits (``shift < 0``: fewer, rounded away from zero)."""
    if shift >= 0:
        return raw << shift
    return -((-raw) >> -shift) if raw >= 0 else raw >> -shift


def can_overflow(stage: Stage, kernel: Kernel) -> bool:
    """Whether some assignment of ``stage`` to its output format may have a rounded value outside the format's
    range (False: the operands' formats rule it out)."""
    fmt = kernel.buffers[stage.out.buffer].fmt
    iv, frac = output_interval(stage, kernel)
    rounded = _round_interval(iv, frac - fmt.frac_bits, fmt.rounding)
    return rounded is None or rounded[0] < fmt.raw_min or rounded[1] > fmt.raw_max


__all__ = ["Operand", "Space", "Target", "assigner", "can_overflow", "compile_stage", "output_interval",
           "overflow_counter", "sum_interval", "writer"]
