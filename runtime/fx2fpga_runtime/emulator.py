"""Bit-exact numpy execution of a ``Kernel``: the golden model of every backend.

Values are raw ``int64`` integers (see ``fixed.py``); each stage is evaluated over the
whole loop nest at once with index arrays (``StagePlan``, computed once per stage and kept by
the ``Emulator``), and reductions follow the sequential accumulation order of the generated
hardware (see ``ir.py`` for the semantics). ``run_stage`` is the reference; the ``Emulator``
runs each stage through its compiled fast path (``emu_compile.py``, bit-exact with the
reference) where it has one, and through ``run_stage`` elsewhere.

Both count, per output buffer, the assignments whose rounded value lies outside the output's
format (saturation counters: ``Emulator.read_saturation``; ``ir.py`` defines the events).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import stochastic
from .emu_compile import compile_stage
from .fixed import Fixed, align, shift_round
from .ir import GROUP_VAR, Access, Kernel, Stage
from .ops import (
    OPS_TABLE,
    OpSpec,
    aligned_operands,
    decision_name,
    epilogue,
    exact_frac,
    fused_decision,
    is_compare_select,
    own_inputs,
    then_relu_mask,
)


class Emulator:
    """Holds the on-chip memories of one kernel and runs its programs on them (``fast=False``: every
    stage through the reference ``run_stage``)."""

    def __init__(self, kernel: Kernel, fast: bool = True):
        self.kernel = kernel
        self.fast = fast
        self.mem: dict[str, np.ndarray] = {}
        for buf in kernel.buffers.values():
            if buf.init is not None:
                self.mem[buf.name] = np.asarray(buf.init, dtype=np.int64).reshape(buf.shape)
            else:
                self.mem[buf.name] = np.zeros(buf.shape, dtype=np.int64)
        self._plans: dict[tuple[int, int], StagePlan] = {}  # (id(stage), group) -> its index arrays
        self._compiled: dict[str, list] = {}  # program -> its stages' run(mem) in order (``_stage_fns``)
        self.saturation = {st.out.buffer: 0 for st in kernel.stages()}  # overflowed assignments since the last read
        self.calls = dict.fromkeys(kernel.programs, 0)  # runs of each program so far: stochastic rounding's ``t``

    def read_saturation(self) -> dict[str, int]:
        """The overflowed assignments to each buffer a stage writes since the last read (exact counts), and
        reset them."""
        counts = dict(self.saturation)
        self.saturation.update(dict.fromkeys(counts, 0))
        return counts

    def _tally(self, buffer: str):
        """``tally(n)``: ``n`` more overflowed assignments to ``buffer``."""
        counts = self.saturation

        def tally(n: int) -> None:
            counts[buffer] += n
        return tally

    def write(self, name: str, raw) -> None:
        """Host -> on-chip buffer (raw integers, the buffer's shape)."""
        arr = np.asarray(raw, dtype=np.int64).reshape(self.kernel.buffers[name].shape)
        self._check_range(name, arr)
        self._put(name, arr)

    def write_in_range(self, name: str, raw) -> None:
        """``write`` of raw integers known to lie in the buffer's format (quantized to it): not checked again."""
        self._put(name, np.asarray(raw, dtype=np.int64).reshape(self.kernel.buffers[name].shape))

    def _check_range(self, name: str, arr: np.ndarray) -> None:
        fmt = self.kernel.buffers[name].fmt
        if arr.size and (np.minimum.reduce(arr, axis=None) < fmt.raw_min
                         or np.maximum.reduce(arr, axis=None) > fmt.raw_max):
            raise ValueError(f"raw values for {name} exceed its format {fmt}")

    def _put(self, name: str, arr: np.ndarray) -> None:
        mem = self.mem[name]
        if mem.flags.c_contiguous and mem.flags.writeable:
            mem[...] = arr  # in place: the compiled stages keep their views of this array
        else:
            self.mem[name] = arr.copy()

    def read(self, name: str) -> np.ndarray:
        return self.mem[name].copy()

    def run(self, program: str, inputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Write ``inputs`` (if given), run every stage of ``program``, return its outputs (raw)."""
        for name, raw in (inputs or {}).items():
            self.write(name, raw)
        mem = self.mem
        for fn in self._stage_fns(program):
            fn(mem)
        self.calls[program] += 1
        return {name: self.read(name) for name in self.kernel.programs[program].outputs}

    def run_steps(self, program: str, inputs: dict[str, np.ndarray], steps: int) -> dict[str, np.ndarray]:
        """Run ``program`` ``steps`` times, step ``i`` on row ``i`` of every input (raw, shape ``(steps,
        *buffer shape)``); returns its outputs of every step, stacked the same way (raw). The same as
        ``steps`` calls of ``run``, with the inputs' ranges checked once, up front."""
        buffers = self.kernel.buffers
        rows = {}
        for name, raw in inputs.items():
            rows[name] = np.asarray(raw, dtype=np.int64).reshape((steps, *buffers[name].shape))
            self._check_range(name, rows[name])
        outs = {n: np.empty((steps, *buffers[n].shape), dtype=np.int64) for n in self.kernel.programs[program].outputs}
        fns, mem = self._stage_fns(program), self.mem
        for i in range(steps):
            for name, arr in rows.items():
                self._put(name, arr[i])
            for fn in fns:
                fn(mem)
            self.calls[program] += 1
            for name, out in outs.items():
                out[i] = mem[name]
        return outs

    def _stage_fns(self, program: str) -> list:
        """Every stage of ``program`` as a ``run(mem)``, in order, made once: the stages once per group of
        models (``GROUP_VAR`` = group; pipelined groups: in the order of ``Program.pass_stages``), each its
        compiled fast path or else the reference ``run_stage``."""
        fns = self._compiled.get(program)
        if fns is None:
            prog = self.kernel.programs[program]
            fns = self._compiled[program] = [
                (compile_stage(stage, self.kernel, group, self._tally(stage.out.buffer)) if self.fast else None)
                or self._reference(stage, group, program) for _, stage, group in prog.pass_stages()]
        return fns

    def _reference(self, stage: Stage, group: int, program: str):
        """``run_stage`` on ``stage`` for ``group``, its index arrays made at its first run."""
        tally = self._tally(stage.out.buffer)
        calls = self.calls

        def run(mem):
            plan = self._plans.get((id(stage), group))
            if plan is None:
                plan = self._plans[id(stage), group] = StagePlan.of(stage, self.kernel, group)
            run_stage(stage, self.kernel, mem, plan, tally, calls[program])
        return run


# ----- the index arrays of one stage, computed once ---------------------------------------------

def guard_mask(access: Access, grid, shape) -> np.ndarray | None:
    """Where every guard of ``access`` holds (``None``: unguarded)."""
    if not access.guard:
        return None
    mask = np.ones(shape, dtype=bool)
    for g in access.guard:
        e = g.expr.evaluate(grid, shape)
        mask &= (e >= 0) & (e < g.bound) & (e % g.step == 0)
    return mask


@dataclass(frozen=True)
class Read:
    """One operand's reads over a stage's layout: flat positions in its buffer (``None``: a scalar
    buffer) and where its guards hold (``None``: unguarded; a guarded-off position is 0, never used)."""

    buffer: str
    flat: np.ndarray | None
    mask: np.ndarray | None


@dataclass(frozen=True)
class StagePlan:
    """The index arrays of one stage, computed once per kernel (they depend on the loops, not the data).

    Values are laid out as the loop nest (elementwise stages) or as the kept loops followed by one
    axis over the reduction points in their sequential order (reductions): ``layout``."""

    layout: tuple[int, ...]
    reads: tuple[Read, ...]
    out_flat: np.ndarray | None  # flat positions written in the output buffer (None: a scalar buffer)
    out_shape: tuple[int, ...]
    n_red: int  # reduction points per output (1 for elementwise stages)
    points: np.ndarray | None = None  # each assignment's point (stochastic.py), where the output rounds SR

    @classmethod
    def of(cls, stage: Stage, kernel: Kernel, group: int = 0) -> StagePlan:
        """The plan of ``stage``: a grid over its loops in layout order, each access evaluated on it
        (``GROUP_VAR`` = ``group``: the group of models it runs for)."""
        shape = tuple(lp.extent for lp in stage.loops)
        axes = [i for i, lp in enumerate(stage.loops) if lp.var in stage.reduce]
        keep = [i for i in range(len(shape)) if i not in axes]
        out_shape = tuple(shape[i] for i in keep)
        n_red = int(np.prod([shape[i] for i in axes])) if axes else 1
        layout = out_shape + (n_red,) if stage.reduce else shape
        order = keep + axes if stage.reduce else list(range(len(shape)))
        mesh = np.meshgrid(*[np.arange(shape[i], dtype=np.int64) for i in order], indexing="ij")
        grid = {stage.loops[i].var: m.reshape(layout) for i, m in zip(order, mesh, strict=True)}
        grid[GROUP_VAR] = np.full(layout, group, dtype=np.int64)
        reads = tuple(_read(a, kernel.buffers[a.buffer].shape, grid, layout) for a in stage.ins)
        out_grid = {k: v[..., 0] for k, v in grid.items()} if stage.reduce else grid
        out_flat = None
        if stage.out.index:
            index = tuple(i.evaluate(out_grid, out_shape if stage.reduce else shape) for i in stage.out.index)
            out_flat = np.ravel_multi_index(index, kernel.buffers[stage.out.buffer].shape, mode="wrap")
        points = None
        if stochastic.rounds_stochastic(stage, kernel):
            points = assignment_points(stage).reshape(out_shape if stage.reduce else shape)
        return cls(layout, reads, out_flat, out_shape, n_red, points)


def assignment_points(stage: Stage) -> np.ndarray:
    """Each assignment's point (``stochastic.point_affine``), flat in the order of the stage's kept loops."""
    kept = [lp for lp in stage.loops if lp.var not in stage.reduce]
    grids = np.meshgrid(*[np.arange(lp.extent, dtype=np.int64) for lp in kept], indexing="ij")
    grid = {lp.var: g for lp, g in zip(kept, grids, strict=True)}
    shape = tuple(lp.extent for lp in kept)
    return np.broadcast_to(stochastic.point_affine(stage).evaluate(grid, shape), shape).reshape(-1)


def _read(access: Access, buf_shape: tuple[int, ...], grid, layout) -> Read:
    if not access.index:
        return Read(access.buffer, None, None)
    index = [i.evaluate(grid, layout) for i in access.index]
    mask = guard_mask(access, grid, layout)
    if mask is not None:
        index = [np.where(mask, i, 0) for i in index]
    return Read(access.buffer, np.ravel_multi_index(index, buf_shape, mode="wrap"), mask)


def _load(read: Read, mem, layout) -> np.ndarray:
    """The values read; a guarded-off point reads 0."""
    arr = mem[read.buffer]
    if read.flat is None:
        return np.broadcast_to(arr.reshape(()), layout)
    vals = np.take(arr, read.flat)
    return vals if read.mask is None else np.where(read.mask, vals, 0)


def _elementwise(spec: OpSpec, vals: list[np.ndarray], fmts: list[Fixed], stage: Stage, kernel: Kernel):
    """Exact result of an elementwise op as (raw, frac_bits), the op table's evaluation, and the operands
    it evaluated (aligned)."""
    fr = [f.frac_bits for f in fmts]
    operands = aligned_operands(spec, vals, fr)
    return spec.evaluate(operands, stage, kernel), exact_frac(spec, fr, stage, kernel), operands


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


def _assign(fmt: Fixed, raw: np.ndarray, frac: int, points: tuple[int, ...], tally,
            bits: np.ndarray | None = None) -> np.ndarray:
    """``fmt.from_raw(raw, frac)``, telling ``tally`` how many of the assignments (``raw`` broadcast to the
    shape ``points``) have a rounded value outside ``fmt``'s range (they saturate or wrap). ``bits``: the
    random bits of an ``SR`` format's assignments (``stochastic.py``)."""
    shift = frac - fmt.frac_bits
    if fmt.rounding != "SR":
        rounded = shift_round(raw, shift, fmt.rounding)
    elif shift > 0:
        rounded = stochastic.round_stochastic(np.broadcast_to(raw, points), shift, bits)
    else:
        rounded = shift_round(raw, shift, "TRN")  # exact
    if tally is not None:
        full = np.broadcast_to(rounded, points)
        outside = int(np.count_nonzero(full < fmt.raw_min)) + int(np.count_nonzero(full > fmt.raw_max))
        if outside:
            tally(outside)
    return fmt.overflow_raw(rounded)


def run_stage(stage: Stage, kernel: Kernel, mem: dict[str, np.ndarray], plan: StagePlan | None = None,
              tally=None, call: int = 0) -> None:
    """Execute one stage, updating ``mem`` in place (``plan``: its index arrays, when already made;
    ``tally(n)``: hears how many assignments to the output overflowed; ``call``: how many times its program
    ran before, for stochastic rounding)."""
    plan = plan or StagePlan.of(stage, kernel)
    fmts = [kernel.buffers[a.buffer].fmt for a in stage.ins]
    vals = [_load(r, mem, plan.layout) for r in plan.reads]
    out_buf = kernel.buffers[stage.out.buffer]
    spec = OPS_TABLE[stage.op]
    if not stage.reduce:
        raw, frac, operands = _elementwise(spec, vals, fmts, stage, kernel)
        if is_compare_select(stage.op):  # a fused comparison's outcome, kept for inspection (ops.fused_decision)
            decided = fused_decision(stage.op, operands)
            mem[decision_name(stage.name)] = np.broadcast_to(decided, plan.layout).copy()
        bits = _random_bits(stage, kernel, plan, call, frac)
        _store(stage, mem, plan, _assign(out_buf.fmt, raw, frac, plan.layout, tally, bits))
        return
    acc, n_operands = stage.acc, spec.arity
    terms = spec.evaluate(vals[:n_operands], stage, kernel)
    tf = spec.result_frac([f.frac_bits for f in fmts[:n_operands]])
    if spec.accumulate in ("max", "argmax"):
        v = acc.from_raw(np.broadcast_to(terms, plan.layout), tf)
        mask = plan.reads[0].mask
        if mask is not None:  # guarded-off points are skipped: they read the acc minimum
            v = np.where(mask, v, acc.raw_min)
        if spec.accumulate == "argmax":  # np.argmax takes the first maximum, as the sequential ``>`` does
            idx = np.argmax(v, axis=-1) if plan.n_red else np.zeros(plan.out_shape, np.int64)
            bits = _random_bits(stage, kernel, plan, call, 0)
            _store(stage, mem, plan, _assign(out_buf.fmt, idx, 0, plan.out_shape, tally, bits))
            return
        result_acc = np.maximum(np.full(plan.out_shape, acc.raw_min, dtype=np.int64), v.max(axis=-1))
    elif spec.accumulate == "add":
        if len(own_inputs(stage)) > n_operands:  # an init value (e.g. the bias of addmm)
            init = acc.from_raw(np.broadcast_to(vals[n_operands], plan.layout)[..., 0], fmts[n_operands].frac_bits)
        else:
            init = np.zeros(plan.out_shape, dtype=np.int64)
        result_acc = _accumulate(np.broadcast_to(terms, plan.layout), tf, init, acc)
    else:
        raise NotImplementedError(f"emulator: reduction op {stage.op!r} accumulates by {spec.accumulate!r}")
    bits = _random_bits(stage, kernel, plan, call, acc.frac_bits)
    # ReLU's backward fused: its gate, ReLU's output at each result's point
    gate = np.broadcast_to(vals[-1], plan.layout)[..., 0] if then_relu_mask(stage) else None
    if gate is not None:  # its decisions, kept for inspection as a fused compare-select's
        mem[decision_name(stage.name)] = gate <= 0
    _store(stage, mem, plan, epilogue(stage, _assign(out_buf.fmt, result_acc, acc.frac_bits, plan.out_shape, tally,
                                                     bits), gate))


def _random_bits(stage: Stage, kernel: Kernel, plan: StagePlan, call: int, frac: int) -> np.ndarray | None:
    """The random bits of the stage's assignments in its program's call ``call`` (None: it does not round SR)."""
    fmt = kernel.buffers[stage.out.buffer].fmt
    if plan.points is None or frac <= fmt.frac_bits:
        return None
    key = stochastic.stage_key(kernel.meta.get(stochastic.SEED_KEY, 0), stage.out.buffer)
    return stochastic.random_bits(plan.points, stochastic.call_offset(key, call), frac - fmt.frac_bits)


def _store(stage: Stage, mem: dict[str, np.ndarray], plan: StagePlan, result: np.ndarray) -> None:
    out = mem[stage.out.buffer]
    if not out.flags.c_contiguous:  # written in place through a flat view
        out = mem[stage.out.buffer] = np.ascontiguousarray(out)
    if plan.out_flat is not None:
        out.reshape(-1)[plan.out_flat] = np.broadcast_to(result, plan.out_flat.shape)
    else:
        out[...] = result.reshape(-1)[-1] if result.size else 0
