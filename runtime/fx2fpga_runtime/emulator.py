"""Bit-exact numpy execution of a ``Kernel``: the golden model of every backend.

Values are raw ``int64`` integers (see ``fixed.py``); each stage is evaluated over the
whole loop nest at once with index grids, and reductions follow the sequential
accumulation order of the generated hardware (see ``ir.py`` for the semantics).
"""

from __future__ import annotations

import numpy as np

from .fixed import Fixed, align, shift_round
from .ir import Access, Affine, Kernel, Stage
from .ops import OPS_TABLE, OpSpec, aligned_operands, exact_frac


class Emulator:
    """Holds the on-chip memories of one kernel and runs its programs on them."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        self.mem: dict[str, np.ndarray] = {}
        for buf in kernel.buffers.values():
            if buf.init is not None:
                self.mem[buf.name] = np.asarray(buf.init, dtype=np.int64).reshape(buf.shape)
            else:
                self.mem[buf.name] = np.zeros(buf.shape, dtype=np.int64)

    def write(self, name: str, raw) -> None:
        """Host -> on-chip buffer (raw integers, the buffer's shape)."""
        buf = self.kernel.buffers[name]
        arr = np.asarray(raw, dtype=np.int64).reshape(buf.shape)
        if arr.size and (arr.min() < buf.fmt.raw_min or arr.max() > buf.fmt.raw_max):
            raise ValueError(f"raw values for {name} exceed its format {buf.fmt}")
        self.mem[name] = arr.copy()

    def read(self, name: str) -> np.ndarray:
        return self.mem[name].copy()

    def run(self, program: str, inputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Write ``inputs`` (if given), run every stage of ``program``, return its outputs (raw)."""
        prog = self.kernel.programs[program]
        for name, raw in (inputs or {}).items():
            self.write(name, raw)
        for stage in prog.stages:
            run_stage(stage, self.kernel, self.mem)
        return {name: self.read(name) for name in prog.outputs}


# ----- one stage -------------------------------------------------------------------------------

def _grid(stage: Stage) -> dict[str, np.ndarray]:
    axes = [np.arange(lp.extent, dtype=np.int64) for lp in stage.loops]
    return dict(zip((lp.var for lp in stage.loops), np.meshgrid(*axes, indexing="ij"), strict=True))


def _eval_affine(a: Affine, grid: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    v = np.full(shape, a.const, dtype=np.int64)
    for var, coeff in a.terms:
        v = v + coeff * grid[var]
    if a.div != 1:
        v = v // a.div
    if a.mod:
        v = v % a.mod
    return v


def _guard_mask(access: Access, grid, shape) -> np.ndarray | None:
    """Where every guard of ``access`` holds (``None``: unguarded)."""
    if not access.guard:
        return None
    mask = np.ones(shape, dtype=bool)
    for g in access.guard:
        e = _eval_affine(g.expr, grid, shape)
        mask &= (e >= 0) & (e < g.bound) & (e % g.step == 0)
    return mask


def _load(access: Access, mem, grid, shape) -> np.ndarray:
    """The values read; a guarded-off point reads 0 (its index is never used)."""
    arr = mem[access.buffer]
    if not access.index:
        return np.broadcast_to(arr.reshape(()), shape)
    index = tuple(_eval_affine(i, grid, shape) for i in access.index)
    mask = _guard_mask(access, grid, shape)
    if mask is None:
        return arr[index]
    safe = tuple(np.where(mask, i, 0) for i in index)
    return np.where(mask, arr[safe], 0)


def _elementwise(spec: OpSpec, vals: list[np.ndarray], fmts: list[Fixed], stage: Stage, kernel: Kernel):
    """Exact result of an elementwise op as (raw, frac_bits): the op table's evaluation."""
    fr = [f.frac_bits for f in fmts]
    return spec.evaluate(aligned_operands(spec, vals, fr), stage, kernel), exact_frac(spec, fr, stage, kernel)


def _accumulate(terms: np.ndarray, term_frac: int, init: np.ndarray, acc: Fixed) -> np.ndarray:
    """Sequential ``acc += term`` over the last axis, each step assigned to ``acc``."""
    fa = acc.frac_bits
    rounding_free = term_frac <= fa
    if rounding_free or acc.rounding in ("RND", "TRN"):
        # acc has no bits below fa, so rounding (acc + t) equals acc + rounding(t) for
        # the floor-based modes: round every term once, then only overflow is sequential.
        steps = shift_round(terms, term_frac - fa, acc.rounding) if not rounding_free else align(terms, term_frac, fa)
        partial = init[..., None] + np.cumsum(steps, axis=-1)
        if acc.overflow == "WRAP" or partial.size == 0 or (
            partial.min() >= acc.raw_min and partial.max() <= acc.raw_max
        ):
            return acc.overflow_raw(partial[..., -1]) if partial.size else init
        a = init.copy()
        for k in range(steps.shape[-1]):
            a = acc.overflow_raw(a + steps[..., k])
        return a
    a = init.copy()
    for k in range(terms.shape[-1]):
        a = acc.from_raw(align(a, fa, max(fa, term_frac)) + align(terms[..., k], term_frac, max(fa, term_frac)),
                         max(fa, term_frac))
    return a


def run_stage(stage: Stage, kernel: Kernel, mem: dict[str, np.ndarray]) -> None:
    """Execute one stage, updating ``mem`` in place."""
    shape = tuple(lp.extent for lp in stage.loops)
    grid = _grid(stage)
    fmts = [kernel.buffers[a.buffer].fmt for a in stage.ins]
    vals = [_load(a, mem, grid, shape) for a in stage.ins]
    out_buf = kernel.buffers[stage.out.buffer]

    spec = OPS_TABLE[stage.op]
    if not stage.reduce:
        raw, frac = _elementwise(spec, vals, fmts, stage, kernel)
        result = out_buf.fmt.from_raw(raw, frac)
        out_grid = grid
    else:
        axes = [i for i, lp in enumerate(stage.loops) if lp.var in stage.reduce]
        keep = [i for i in range(len(shape)) if i not in axes]
        order = keep + axes
        n_red = int(np.prod([shape[i] for i in axes]))
        out_shape = tuple(shape[i] for i in keep)

        def flat(v: np.ndarray) -> np.ndarray:
            return np.broadcast_to(v, shape).transpose(order).reshape(out_shape + (n_red,))

        acc = stage.acc
        out_grid = {k: flat(v)[..., 0] for k, v in grid.items()}
        n_operands = spec.arity
        terms = spec.evaluate([flat(v) for v in vals[:n_operands]], stage, kernel)
        tf = spec.result_frac([f.frac_bits for f in fmts[:n_operands]])
        if spec.accumulate in ("max", "argmax"):
            v = acc.from_raw(terms, tf)
            mask = _guard_mask(stage.ins[0], grid, shape)
            if mask is not None:  # guarded-off points are skipped: they read the acc minimum
                v = np.where(flat(mask), v, acc.raw_min)
            if spec.accumulate == "argmax":  # np.argmax takes the first maximum, as the sequential ``>`` does
                result = out_buf.fmt.from_raw(np.argmax(v, axis=-1) if n_red else np.zeros(out_shape, np.int64), 0)
                _store(stage, mem, out_grid, result)
                return
            result_acc = np.maximum(np.full(out_shape, acc.raw_min, dtype=np.int64), v.max(axis=-1))
        elif spec.accumulate == "add":
            if len(stage.ins) > n_operands:  # an init value (e.g. the bias of addmm)
                init = acc.from_raw(flat(vals[n_operands])[..., 0], fmts[n_operands].frac_bits)
            else:
                init = np.zeros(out_shape, dtype=np.int64)
            result_acc = _accumulate(terms, tf, init, acc)
        else:
            raise NotImplementedError(f"emulator: reduction op {stage.op!r} accumulates by {spec.accumulate!r}")
        result = out_buf.fmt.from_raw(result_acc, acc.frac_bits)

    _store(stage, mem, out_grid, result)


def _store(stage: Stage, mem: dict[str, np.ndarray], out_grid, result: np.ndarray) -> None:
    out_index = tuple(_eval_affine(i, out_grid, result.shape) for i in stage.out.index)
    if out_index:
        mem[stage.out.buffer][out_index] = result
    else:
        mem[stage.out.buffer][...] = result.reshape(-1)[-1] if result.size else 0
