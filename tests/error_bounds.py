"""First-order error bounds of a kernel program, derived from its formats (a test helper).

``propagate(kernel, program, values)`` runs the stages of a program on float64 values with
exact arithmetic and carries, for every element of every buffer, a bound on
``|fixed-point value - exact value|``, where "exact" is the same computation in real
numbers with the true functions and constants (what PyTorch computes, up to its own float
rounding):

- an assignment to a format adds its rounding error (half an ulp for the RND modes, one ulp
  for the others) when the exact result has more fraction bits than the format;
- input errors propagate to first order, plus the product of errors (mul, mac);
- a ``table`` adds ``max|f'|`` near the point times the input error, the interpolation error
  ``h**2 / 8 * max|f''|`` near the point, 1.5 ulp of its entries (entries rounded to half an
  ulp, the truncating interpolation shift) and the difference a clipped input makes;
- a constant buffer carries half an ulp of its format (its exact value is not in the kernel);
- a result assigned to an integer format (``round(x / 2pi)`` of the sin/cos range reduction)
  is exact when the input errors cannot move it across a rounding boundary;
- results that could saturate, and comparisons or roundings the errors could flip, raise
  ``AssertionError``: the bound would not hold there.

Parameters and inputs start with error 0: callers pass values the formats hold exactly.
"""

from __future__ import annotations

import numpy as np
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Access, Kernel, Stage

# (max|f'|, max|f''|) of each table function over an interval [u, w] (u > 0 where needed)
DERIVATIVES = {
    "exp": lambda u, w: (np.exp(w), np.exp(w)),
    "log": lambda u, w: (1 / u, 1 / u**2),
    "reciprocal": lambda u, w: (1 / u**2, 2 / u**3),
    "rsqrt": lambda u, w: (0.5 * u**-1.5, 0.75 * u**-2.5),
    "sigmoid": lambda u, w: (0.25 + 0 * u, 0.0963 + 0 * u),
    "tanh": lambda u, w: (1.0 + 0 * u, 0.7699 + 0 * u),
    "sin": lambda u, w: (1.0 + 0 * u, 1.0 + 0 * u),
    "cos": lambda u, w: (1.0 + 0 * u, 1.0 + 0 * u),
}
FUNCTIONS = {
    "exp": np.exp, "log": np.log, "reciprocal": lambda x: 1 / x, "rsqrt": lambda x: 1 / np.sqrt(x),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "tanh": np.tanh, "sin": np.sin, "cos": np.cos,
}


def rounding(fmt: Fixed, exact_frac: int) -> float:
    """The largest error of assigning a value with ``exact_frac`` fraction bits to ``fmt``."""
    if exact_frac <= fmt.frac_bits:
        return 0.0
    return fmt.ulp / 2 if fmt.rounding.startswith("RND") else fmt.ulp


def _index(access: Access, grid: dict[str, np.ndarray]) -> tuple:
    assert not getattr(access, "guard", ()), "guarded reads are not modelled"
    idx = []
    for a in access.index:
        v = a.const + sum(c * grid[var] for var, c in a.terms)
        v = np.asarray(v) // a.div
        idx.append(v % a.mod if a.mod else v)
    return tuple(idx)


def _load(access: Access, mem: dict, grid: dict, shape: tuple) -> np.ndarray:
    arr = mem[access.buffer]
    if not access.index:
        return np.broadcast_to(arr.reshape(()), shape)
    return np.broadcast_to(arr[_index(access, grid)], shape)


def _table(stage: Stage, kernel: Kernel, x: np.ndarray, e: np.ndarray, fin: Fixed) -> tuple[np.ndarray, np.ndarray]:
    fn = stage.attrs["fn"]
    tbl = kernel.buffers[stage.attrs["table"]]
    n, lo, shift = tbl.size - 1, int(stage.attrs["lo"]), int(stage.attrs["shift"])
    x_lo, x_hi, h = lo * fin.ulp, (lo + (n << shift)) * fin.ulp, (1 << shift) * fin.ulp
    f = FUNCTIONS[fn]
    xc = np.clip(x, x_lo, x_hi)
    u, w = np.clip(x - e, x_lo, x_hi), np.clip(x + e, x_lo, x_hi)
    d1, _ = DERIVATIVES[fn](u, w)
    _, d2 = DERIVATIVES[fn](np.maximum(u - h, x_lo), np.minimum(w + h, x_hi))
    err = d1 * e + h * h / 8 * d2 + 1.5 * tbl.fmt.ulp + np.abs(f(xc) - f(x))
    return f(x), err


def _check_range(stage: Stage, fmt: Fixed, v: np.ndarray, e: np.ndarray) -> None:
    top = np.max(np.abs(v) + e) if v.size else 0.0
    assert top <= fmt.max_value, f"{stage.name}: |value| + error {top:g} may saturate {fmt}"


def _to_integer(stage: Stage, fmt: Fixed, v: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Assignment to a format without fraction bits: exact if no error can cross a boundary."""
    scaled = v / fmt.ulp
    boundary = np.abs(scaled - np.floor(scaled) - 0.5) * fmt.ulp  # distance to the nearest .5 point
    assert np.all(e < boundary), f"{stage.name}: the errors could change a rounding to {fmt}"
    return fmt.to_float(fmt.quantize(v)), np.zeros_like(v)


def run_stage(stage: Stage, kernel: Kernel, vals: dict, errs: dict) -> None:
    """Exact values and error bounds of one stage, written into ``vals`` and ``errs``."""
    loops = stage.loops
    shape = tuple(lp.extent for lp in loops)
    grid = dict(zip((lp.var for lp in loops), np.meshgrid(*[np.arange(lp.extent) for lp in loops], indexing="ij"),
                    strict=True))
    fmts = [kernel.buffers[a.buffer].fmt for a in stage.ins]
    fr = [f.frac_bits for f in fmts]
    a = [_load(acc, vals, grid, shape) for acc in stage.ins]
    ea = [_load(acc, errs, grid, shape) for acc in stage.ins]
    out = kernel.buffers[stage.out.buffer].fmt
    op = stage.op
    if not stage.reduce:
        if op in ("copy", "neg", "relu"):
            v = {"copy": a[0], "neg": -a[0], "relu": np.maximum(a[0], 0)}[op]
            e, exact = ea[0], fr[0]
        elif op in ("add", "sub"):
            v, e, exact = (a[0] + a[1] if op == "add" else a[0] - a[1]), ea[0] + ea[1], max(fr)
        elif op == "mul":
            v = a[0] * a[1]
            e, exact = np.abs(a[0]) * ea[1] + np.abs(a[1]) * ea[0] + ea[0] * ea[1], fr[0] + fr[1]
        elif op == "select":
            assert np.all(ea[0] == 0), f"{stage.name}: select on an inexact condition"
            v, e, exact = np.where(a[0] != 0, a[1], a[2]), np.where(a[0] != 0, ea[1], ea[2]), max(fr[1:])
        elif op in ("eq", "ne", "lt", "le", "gt", "ge"):
            close = np.abs(a[0] - a[1]) <= ea[0] + ea[1]
            assert not np.any(close & ((ea[0] + ea[1]) > 0)), f"{stage.name}: the errors could flip a comparison"
            cmp = {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater,
                   "ge": np.greater_equal}[op]
            v, e, exact = cmp(a[0], a[1]).astype(np.float64), np.zeros(shape), 0
        elif op == "table":
            (v, e), exact = _table(stage, kernel, a[0], ea[0], fmts[0]), out.frac_bits
        else:
            raise NotImplementedError(op)
        out_grid = grid
    else:
        axes = tuple(i for i, lp in enumerate(loops) if lp.var in stage.reduce)
        first = tuple(0 if i in axes else slice(None) for i in range(len(shape)))
        n_red = int(np.prod([shape[i] for i in axes]))
        acc = stage.acc
        if op == "max":
            v, e, exact = np.max(a[0], axis=axes), np.max(ea[0], axis=axes), fr[0]
        else:
            k = 2 if op == "mac" else 1
            if op == "mac":
                terms = a[0] * a[1]
                te, tf = np.abs(a[0]) * ea[1] + np.abs(a[1]) * ea[0] + ea[0] * ea[1], fr[0] + fr[1]
            else:
                terms, te, tf = a[0], ea[0], fr[0]
            v, e = terms.sum(axis=axes), te.sum(axis=axes) + n_red * rounding(acc, tf)
            if len(stage.ins) > k:
                v, e = v + a[k][first], e + ea[k][first] + rounding(acc, fr[k])
            _check_range(stage, acc, v, e)
            exact = acc.frac_bits
        out_grid = {var: g[first] for var, g in grid.items()}
    v, e = np.asarray(v, dtype=np.float64), np.asarray(e, dtype=np.float64)
    if out.frac_bits <= 0 and op != "table":
        v, e = _to_integer(stage, out, v, e)
    else:
        e = e + rounding(out, exact)
    _check_range(stage, out, v, e)
    idx = _index(stage.out, out_grid)
    if idx:
        vals[stage.out.buffer][idx], errs[stage.out.buffer][idx] = v, e
    else:
        vals[stage.out.buffer][...], errs[stage.out.buffer][...] = v, e


def propagate(kernel: Kernel, program: str, values: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Exact values and error bounds of every buffer after ``program`` runs.

    ``values``: buffer name -> float array for the inputs and parameters (error 0: values the
    formats hold exactly); other parameters start at their ``init``.
    """
    vals, errs = {}, {}
    for b in kernel.buffers.values():
        if b.name in values:
            vals[b.name] = np.array(values[b.name], dtype=np.float64).reshape(b.shape)
            assert np.array_equal(b.fmt.to_float(b.fmt.quantize(vals[b.name])), vals[b.name]), b.name
            errs[b.name] = np.zeros(b.shape)
        elif b.init is not None:
            vals[b.name] = b.fmt.to_float(np.asarray(b.init, dtype=np.int64)).reshape(b.shape)
            const_error = b.fmt.ulp / 2 if b.role == "const" and b.fmt.frac_bits > 0 else 0.0
            errs[b.name] = np.full(b.shape, const_error)
        else:
            vals[b.name], errs[b.name] = np.zeros(b.shape), np.zeros(b.shape)
    for stage in kernel.programs[program].stages:
        run_stage(stage, kernel, vals, errs)
    return vals, errs
