"""Error bounds of fixed-point kernels against exact arithmetic, derived from their formats (test helpers).

Two views of the same question, both reading the op table (``fx2fpga_runtime/ops.py``):

**Stage by stage** (``propagate``): run the stages of a program on float64 values with exact
arithmetic (each op's ``reference``) and carry, for every element of every buffer, a bound on
``|fixed-point value - exact value|``, where "exact" is the same computation in real numbers
with the true functions and constants (what PyTorch computes, up to its own float rounding):

- an assignment to a format adds its rounding error (half an ulp for the RND modes, one ulp
  for the others) when the exact result (the op's ``result_frac``) has more fraction bits than
  the format;
- input errors propagate to first order by the op's ``error_rule`` (``ERROR_RULES``), plus the
  product of errors (mul, mac);
- a ``table`` adds ``max|f'|`` near the point times the input error, the interpolation error
  ``h**2 / 8 * max|f''|`` near the point, 1.5 ulp of its entries (entries rounded to half an
  ulp, the truncating interpolation shift) and the difference a clipped input makes;
- a constant buffer carries half an ulp of its format (its exact value is not in the kernel);
- a result assigned to an integer format (``round(x / 2pi)`` of the sin/cos range reduction)
  is exact when the input errors cannot move it across a rounding boundary;
- results that could saturate, and comparisons or roundings the errors could flip, raise
  ``AssertionError``: the bound would not hold there.

Parameters and inputs start with error 0: callers pass values the formats hold exactly.

**Over the traced graph** (``GraphBounds``): every stage assigns its exact result to its
output format, so the value it stores is off by at most half an ulp of that format; a function
table by its largest error near the values it meets (measured on the table itself, with the op
table's evaluation). Inputs and parameters are quantized the same way. To first order, an
output ``Q_i`` of the traced graph then differs from its float value by at most::

    sum over graph nodes t and their elements j:  |dQ_i / dt_j| * e_t

with ``e_t`` the half ulps (plus table error) of the buffers node ``t`` is stored in. The
derivatives come from autograd over the same graph run in float64 with a zero perturbation
added to every node. Discrete decisions (ReLU masks, max-pool argmax) are taken as equal.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.fx
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Access, Kernel, Stage
from fx2fpga_runtime.ops import (
    COMPARISONS,
    NORM_INDEX_BITS,
    OPS_TABLE,
    decision_name,
    exact_frac,
    fused_comparison,
    mid_format,
)

from fx2fpga.handoffs import graph_info, placeholder

# (max|f'|, max|f''|) of each table function over an interval [u, w] (u > 0 where needed)
DERIVATIVES = {
    "exp": lambda u, w: (np.exp(w), np.exp(w)),
    "log": lambda u, w: (1 / u, 1 / u**2),
    "reciprocal": lambda u, w: (1 / u**2, 2 / u**3),
    "rsqrt": lambda u, w: (0.5 * u**-1.5, 0.75 * u**-2.5),
    "sigmoid": lambda u, w: (0.25 + 0 * u, 0.0963 + 0 * u),
    "tanh": lambda u, w: (1.0 + 0 * u, 0.7699 + 0 * u),
    "erf": lambda u, w: (1.1284 + 0 * u, 0.9679 + 0 * u),  # 2 / sqrt(pi); 4 / sqrt(2 pi e) at 1 / sqrt(2)
    "sqrt": lambda u, w: (0.5 * u**-0.5, 0.25 * u**-1.5),
    "sin": lambda u, w: (1.0 + 0 * u, 1.0 + 0 * u),
    "cos": lambda u, w: (1.0 + 0 * u, 1.0 + 0 * u),
}
FUNCTIONS = {
    "exp": np.exp, "log": np.log, "reciprocal": lambda x: 1 / x, "rsqrt": lambda x: 1 / np.sqrt(x),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "tanh": np.tanh, "sin": np.sin, "cos": np.cos,
    "erf": np.vectorize(math.erf, otypes=[float]), "sqrt": np.sqrt,
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


def _lipschitz(stage: Stage, a: list, ea: list, fmts: list[Fixed]) -> np.ndarray:
    """A 1-Lipschitz function of its one operand (copy, neg, relu, sum's and max's terms)."""
    return ea[0]


def _sum_rule(stage: Stage, a: list, ea: list, fmts: list[Fixed]) -> np.ndarray:
    return ea[0] + ea[1]


def _product(stage: Stage, a: list, ea: list, fmts: list[Fixed]) -> np.ndarray:
    return np.abs(a[0]) * ea[1] + np.abs(a[1]) * ea[0] + ea[0] * ea[1]


def _msub(stage: Stage, a: list, ea: list, fmts: list[Fixed]) -> np.ndarray:
    """a - [b * c]: a's error, the product's, and the product's assignment to the mid format (in its range)."""
    mid = mid_format(stage)
    e = _product(stage, a[1:], ea[1:], fmts[1:])
    _check_range(stage, mid, np.asarray(a[1] * a[2], dtype=np.float64), e)
    return ea[0] + e + rounding(mid, fmts[1].frac_bits + fmts[2].frac_bits)


def _select(stage: Stage, a: list, ea: list, fmts: list[Fixed]) -> np.ndarray:
    assert np.all(ea[0] == 0), f"{stage.name}: select on an inexact condition"
    return np.where(a[0] != 0, ea[1], ea[2])


def _compare(stage: Stage, a: list, ea: list, fmts: list[Fixed]) -> np.ndarray:
    close = np.abs(a[0] - a[1]) <= ea[0] + ea[1]
    assert not np.any(close & ((ea[0] + ea[1]) > 0)), f"{stage.name}: the errors could flip a comparison"
    return np.zeros(np.broadcast(a[0], a[1]).shape)


def _compare_select(stage: Stage, a: list, ea: list, fmts: list[Fixed]) -> np.ndarray:
    _compare(stage, a[:2], ea[:2], fmts[:2])  # the fused comparison may not flip either
    return np.where(COMPARISONS[fused_comparison(stage.op)](a[0], a[1]), ea[2], ea[3])


def _position(stage: Stage, a: list, ea: list, fmts: list[Fixed]) -> np.ndarray:
    raise AssertionError(f"{stage.name}: argmax positions are not modelled")


def _normalized(stage: Stage, a: list, ea: list, fmts: list[Fixed]) -> np.ndarray:
    """``div`` (a / b) and ``div_sqrt`` (a / sqrt(b)), b > 0: first-order propagation, the ROM's relative error
    (``normalized_error``) and the truncating shift (one ulp of the exact result)."""
    root = 2 if stage.op == "div_sqrt" else 1
    b = np.maximum(a[1] - ea[1], fmts[1].ulp)  # the divisor's smallest value within its error
    assert np.all(a[1] - ea[1] > 0), f"{stage.name}: a divisor may be 0 or negative within its error"
    y = np.abs(a[0]) / b ** (1.0 / root)
    q = int(stage.attrs["q"])
    frac = fmts[0].frac_bits + q + 1 - (fmts[1].frac_bits + root - 1) // root
    return ea[0] / b ** (1.0 / root) + y * ea[1] / (root * b) + normalized_error(root, q) * y + 2.0**-frac


def normalized_error(root: int, q: int) -> float:
    """The largest relative error of ``div`` / ``div_sqrt`` before the shift: the divisor truncated to its
    ``NORM_INDEX_BITS`` leading bits (``(1 + 2**(root - T)) ** (1 / root) - 1``) and the ROM's rounding."""
    t = NORM_INDEX_BITS
    return (1 + 2.0 ** (root - t)) ** (1.0 / root) - 1 + 2.0 ** -(q + 1) * 1.01


# How input errors propagate through an op, by its row's ``error_rule`` (a table: ``_table``).
ERROR_RULES = {"lipschitz": _lipschitz, "sum": _sum_rule, "product": _product, "msub": _msub, "select": _select,
               "compare": _compare, "compare_select": _compare_select, "position": _position, "table": None,
               "normalized": _normalized}


def _elementwise(stage: Stage, kernel: Kernel, a: list, ea: list, fmts: list[Fixed]) -> tuple:
    """Exact values, their error bounds and the exact result's frac bits of an elementwise stage."""
    spec = OPS_TABLE[stage.op]
    if spec.reads_table:
        v, e = _table(stage, kernel, a[0], ea[0], fmts[0])
        return v, e, kernel.buffers[stage.out.buffer].fmt.frac_bits
    fr = [f.frac_bits for f in fmts]
    return spec.reference(*a), ERROR_RULES[spec.error_rule](stage, a, ea, fmts), exact_frac(spec, fr, stage, kernel)


def _reduction(stage: Stage, a: list, ea: list, fmts: list[Fixed], shape: tuple) -> tuple:
    """Exact values, their error bounds and frac bits of a reduction stage, over its reduce loops."""
    spec = OPS_TABLE[stage.op]
    axes = tuple(i for i, lp in enumerate(stage.loops) if lp.var in stage.reduce)
    first = tuple(0 if i in axes else slice(None) for i in range(len(shape)))
    fr = [f.frac_bits for f in fmts]
    k = spec.arity
    terms, te = spec.reference(*a[:k]), ERROR_RULES[spec.error_rule](stage, a[:k], ea[:k], fmts[:k])
    if spec.accumulate == "max":
        return np.max(terms, axis=axes), np.max(te, axis=axes), spec.result_frac(fr[:k])
    assert spec.accumulate == "add", f"{stage.name}: {stage.op} accumulates by {spec.accumulate!r}"
    acc = stage.acc
    n_red = int(np.prod([shape[i] for i in axes]))
    v, e = terms.sum(axis=axes), te.sum(axis=axes) + n_red * rounding(acc, spec.result_frac(fr[:k]))
    if len(stage.ins) > k:
        v, e = v + a[k][first], e + ea[k][first] + rounding(acc, fr[k])
    _check_range(stage, acc, v, e)
    return v, e, acc.frac_bits


def run_stage(stage: Stage, kernel: Kernel, vals: dict, errs: dict) -> None:
    """Exact values and error bounds of one stage, written into ``vals`` and ``errs``."""
    loops = stage.loops
    shape = tuple(lp.extent for lp in loops)
    grid = dict(zip((lp.var for lp in loops), np.meshgrid(*[np.arange(lp.extent) for lp in loops], indexing="ij"),
                    strict=True))
    fmts = [kernel.buffers[a.buffer].fmt for a in stage.ins]
    a = [_load(acc, vals, grid, shape) for acc in stage.ins]
    ea = [_load(acc, errs, grid, shape) for acc in stage.ins]
    out = kernel.buffers[stage.out.buffer].fmt
    if not stage.reduce:
        v, e, exact = _elementwise(stage, kernel, a, ea, fmts)
        out_grid = grid
    else:
        v, e, exact = _reduction(stage, a, ea, fmts, shape)
        first = tuple(0 if lp.var in stage.reduce else slice(None) for lp in loops)
        out_grid = {var: g[first] for var, g in grid.items()}
    v, e = np.asarray(v, dtype=np.float64), np.asarray(e, dtype=np.float64)
    if out.frac_bits <= 0 and not OPS_TABLE[stage.op].reads_table:
        v, e = _to_integer(stage, out, v, e)
    else:
        e = e + rounding(out, exact)
    _check_range(stage, out, v, e)
    idx = _index(stage.out, out_grid)
    if idx:
        vals[stage.out.buffer][idx], errs[stage.out.buffer][idx] = v, e
    else:
        vals[stage.out.buffer][...], errs[stage.out.buffer][...] = v, e


def model_params(kernel: Kernel, model) -> dict[str, np.ndarray]:
    """``model``'s parameters in float64 keyed by the kernel's buffers, as ``propagate`` takes them (the
    learning rate register keeps its ``init``)."""
    return {b: model.get_parameter(kernel.param_names[b]).detach().double().numpy() for b in kernel.params
            if kernel.buffers[b].kind != "hyper"}


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
            rounded = b.role == "const" or b.kind == "hyper"  # a constant, the learning rate: rounded floats
            const_error = b.fmt.ulp / 2 if rounded and b.fmt.frac_bits > 0 else 0.0
            errs[b.name] = np.full(b.shape, const_error)
        else:
            vals[b.name], errs[b.name] = np.zeros(b.shape), np.zeros(b.shape)
    for stage in kernel.programs[program].stages:
        run_stage(stage, kernel, vals, errs)
    return vals, errs


# ----- over the traced graph ----------------------------------------------------------------------

def _table_error(kernel: Kernel, stage, inputs: torch.Tensor) -> float:
    """Largest |table - f| over the raw inputs within 25% (+8 ulps) of the float inputs met."""
    fin = kernel.buffers[stage.ins[0].buffer].fmt
    n = kernel.buffers[stage.attrs["table"]].size - 1
    t_lo, t_hi = int(stage.attrs["lo"]), int(stage.attrs["lo"]) + (n << int(stage.attrs["shift"]))
    v = inputs.detach().double().numpy()
    lo, hi = v.min() - 0.25 * abs(v.min()) - 8 * fin.ulp, v.max() + 0.25 * abs(v.max()) + 8 * fin.ulp
    raw = np.arange(max(t_lo, int(np.floor(lo / fin.ulp))), min(t_hi, int(np.ceil(hi / fin.ulp))) + 1)
    assert raw.size, f"{stage.name}: the inputs {v.min()}..{v.max()} lie outside the table"
    spec = OPS_TABLE[stage.op]
    y, frac = spec.evaluate([raw], stage, kernel), exact_frac(spec, [fin.frac_bits], stage, kernel)
    exact = FUNCTIONS[stage.attrs["fn"]](raw * fin.ulp)
    err = float(np.max(np.abs(np.ldexp(y.astype(np.float64), -frac) - exact)))
    assert np.isfinite(err), stage.name
    return err


def _constant_error(kernel: Kernel, node: torch.fx.Node, src: str, values: dict) -> float:
    """A number in the graph (``x * 0.9``, ``x + 1e-8``, ``x / 3``) is a constant buffer rounded to its format:
    its error times the node's sensitivity to it (``|x|`` for a product, 1 for a sum)."""
    scalars = [a for a in node.args if isinstance(a, (int, float)) and not isinstance(a, bool)]
    if len(scalars) != 1 or node.name not in values or node.target not in _CONSTANT_SENSITIVITY:
        return 0.0
    exact = float(scalars[0])
    if node.target in (torch.ops.aten.div.Tensor, torch.ops.aten.div.Scalar):
        exact = 1.0 / exact
    for b in kernel.buffers.values():
        if b.role != "const" or b.source != src or b.size != 1 or b.kind == "bool":
            continue
        err = abs(float(b.fmt.to_float(np.asarray(b.init)).reshape(-1)[0]) - exact)
        if err <= b.fmt.ulp:  # this number's buffer (the other programs' nodes may have the same name)
            if _CONSTANT_SENSITIVITY[node.target] == "sum":
                return err
            return float(values[node.name].abs().max()) * err / abs(exact) if exact else 0.0
    return 0.0


_CONSTANT_SENSITIVITY = {torch.ops.aten.mul.Tensor: "product", torch.ops.aten.mul.Scalar: "product",
                         torch.ops.aten.div.Tensor: "product", torch.ops.aten.div.Scalar: "product",
                         torch.ops.aten.add.Tensor: "sum", torch.ops.aten.add.Scalar: "sum",
                         torch.ops.aten.sub.Tensor: "sum", torch.ops.aten.sub.Scalar: "sum",
                         torch.ops.aten.rsub.Scalar: "sum"}


def _normalized_node_error(kernel: Kernel, stage, value: torch.Tensor) -> float:
    """``div`` / ``div_sqrt``: the ROM's relative error of the largest value met (a quarter more), and the
    truncating shift's ulp of the exact result."""
    root = 2 if stage.op == "div_sqrt" else 1
    fr = [kernel.buffers[a.buffer].fmt.frac_bits for a in stage.ins]
    frac = exact_frac(OPS_TABLE[stage.op], fr, stage, kernel)
    return normalized_error(root, int(stage.attrs["q"])) * 1.25 * float(value.abs().max()) + 2.0**-frac


def _table_argument(kernel: Kernel, stage, node: torch.fx.Node) -> torch.fx.Node:
    """The argument of ``node`` the table ``stage`` reads: the first, or the one whose buffer it reads
    (``a / b`` on chip reads ``b`` in its reciprocal table)."""
    source = kernel.buffers[stage.ins[0].buffer].source
    return next((a for a in node.args if isinstance(a, torch.fx.Node) and a.name == source), node.args[0])


def _node_errors(kernel: Kernel, gm: torch.fx.GraphModule, program: str, values: dict) -> dict[str, float]:
    """``e_t`` per node name: the half ulps of the float buffers it is stored in, plus table errors."""
    prefix = "infer_" if program == "infer" else "train_"
    by_model_name = {v: k for k, v in kernel.param_names.items()}
    stages = {s.out.buffer: s for s in kernel.programs[program].stages}
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    roles = dict(zip(out_node.args[0], graph_info(gm).outputs, strict=True))
    err: dict[str, float] = {}

    def half_ulp(name: str) -> float:
        b = kernel.buffers[name]
        return b.fmt.ulp / 2 if b.kind in ("activation", "gradient", "weight", "const", "hyper", "moment",
                                           "scale") else 0.0

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            role, name = placeholder(node).role, placeholder(node).name
            if role in ("param", "buffer", "hyper"):  # hyper: the learning rate register, rounded too
                err[node.name] = half_ulp(by_model_name[name])
            elif role == "input":
                err[node.name] = sum(half_ulp(b.name) for b in kernel.buffers.values()
                                     if b.role == "input" and b.name.startswith(prefix))
            continue
        if node.op != "call_function":
            continue
        src = node.args[0].name if node.target is operator.getitem else node.name
        e = 0.0
        for b in kernel.buffers.values():
            if b.source == src and b.name.startswith(prefix) and b.role != "const":
                e += half_ulp(b.name)
                st = stages.get(b.name)
                if st is not None and OPS_TABLE[st.op].reads_table:
                    e += _table_error(kernel, st, values[_table_argument(kernel, st, node).name])
                if st is not None and st.op in ("div", "div_sqrt") and node.name in values:
                    e += _normalized_node_error(kernel, st, values[node.name])
        e += _constant_error(kernel, node, src, values)
        role = roles.get(node)
        if role is not None and role.kind in ("param", "buffer", "state"):  # updated in place: in the state's format
            e += half_ulp(by_model_name[role.name])
            st = stages.get(by_model_name[role.name])  # the stage that writes it, when it writes it directly
            if st is not None and st.op in ("div", "div_sqrt") and node.name in values:
                e += _normalized_node_error(kernel, st, values[node.name])
        err[node.name] = e
    return err


class _Perturbed(torch.fx.Interpreter):
    """Runs the graph in float64, adding ``eps[node]`` to each float node's value; the values
    of the nodes in ``decisions`` (bool masks, argmax indices) are replaced by the given ones."""

    def __init__(self, gm, eps: dict, decisions: dict):
        super().__init__(gm)
        self.eps, self.decisions = eps, decisions
        self.live: dict[str, torch.Tensor] = {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.decisions:
            return self.decisions[n.name].to(out.dtype).reshape(out.shape)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            out = out.double()
            if n.name in self.eps:
                out = out + self.eps[n.name]
            self.live[n.name] = out
        return out


class GraphBounds:
    """The graph in float64 (with the kernel's discrete decisions, if given) and first-order
    error bounds of any of its values: ``bound(tensor)`` per element."""

    def __init__(self, kernel: Kernel, gm: torch.fx.GraphModule, args: list, decisions: dict | None = None):
        self.gm = gm
        args = [a.detach().double() if a.is_floating_point() else a for a in args]
        with torch.no_grad():
            probe = _Perturbed(gm, {}, decisions or {})
            probe.run(*args)
        err = _node_errors(kernel, gm, graph_info(gm).program, probe.live)
        self.eps = {n: torch.zeros_like(probe.live[n], requires_grad=True)
                    for n, e in err.items() if e > 0 and n in probe.live}
        self.weights = [err[n] for n in self.eps]
        run = _Perturbed(gm, self.eps, decisions or {})
        self.outputs = run.run(*args)
        self.values = run.live

    def bound(self, t: torch.Tensor, index=None) -> np.ndarray:
        """Error bound of each element of ``t`` (or of the flat ``index`` elements)."""
        flat = t.reshape(-1)
        idx = list(range(flat.numel()) if index is None else index)
        seeds = torch.zeros(len(idx), flat.numel(), dtype=flat.dtype)
        seeds[torch.arange(len(idx)), torch.as_tensor(idx, dtype=torch.long)] = 1.0
        try:  # one batched backward pass for all rows of the Jacobian
            grads = torch.autograd.grad(flat, list(self.eps.values()), seeds, retain_graph=True, allow_unused=True,
                                        is_grads_batched=True)
            rows = [w * g.abs().reshape(len(idx), -1).sum(1) for w, g in zip(self.weights, grads, strict=True)
                    if g is not None]
            out = torch.stack(rows).sum(0).numpy() if rows else np.zeros(len(idx))
        except RuntimeError:  # an op without a batching rule: one row at a time
            out = []
            for i in idx:
                g1 = torch.autograd.grad(flat[i], list(self.eps.values()), retain_graph=True, allow_unused=True)
                out.append(sum(w * float(g.abs().sum())
                               for w, g in zip(self.weights, g1, strict=True) if g is not None))
            out = np.asarray(out)
        return out if index is not None else out.reshape(t.shape)


def emulator_decisions(kernel: Kernel, gm: torch.fx.GraphModule, mem: dict) -> dict[str, torch.Tensor]:
    """The bool values (ReLU masks, comparisons) the emulator computed, by graph node name."""
    prefix = graph_info(gm).prefix + "_"
    out = {}
    for b in kernel.buffers.values():
        if b.kind == "bool" and b.name.startswith(prefix) and b.source and b.role == "temp":
            out[b.source] = torch.from_numpy(mem[b.name].astype(bool))
    fused = {}  # a comparison fused with its select: its decisions, by the name its mask buffer had
    for stage, node in kernel.meta.get("fused_decisions", {}).items():
        if stage.startswith(prefix) and decision_name(stage) in mem:
            out[node] = fused[prefix + node] = torch.from_numpy(mem[decision_name(stage)].astype(bool))
    for dropped, twin in kernel.meta.get("aliases", {}).items():  # a repeated comparison: its twin's buffer
        if not dropped.startswith(prefix):
            continue
        if twin in kernel.buffers and kernel.buffers[twin].kind == "bool":
            out[dropped[len(prefix):]] = torch.from_numpy(mem[twin].astype(bool))
        elif twin in fused:  # the twin was fused with its select (maximum's backward: eq twice, one fused)
            out[dropped[len(prefix):]] = fused[twin]
    return out


def flipped_decisions(kernel: Kernel, gm: torch.fx.GraphModule, args: list, mem: dict) -> list[tuple]:
    """Each comparison the emulator decided otherwise than float: (node, element, |a - b|, bound of a - b).

    ``a - b`` is the compared difference in float; a flip is explained by the formats when it
    is within its first-order error bound."""
    decisions = emulator_decisions(kernel, gm, mem)
    plain = GraphBounds(kernel, gm, args)
    flips = []
    for node in gm.graph.nodes:
        if node.name not in decisions or node.op != "call_function":
            continue
        a, b = node.args[0], node.args[1]
        va = plain.values.get(a.name) if isinstance(a, torch.fx.Node) else None
        if va is None:
            continue
        vb = plain.values[b.name] if isinstance(b, torch.fx.Node) and b.name in plain.values else torch.tensor(
            float(b) if not isinstance(b, torch.fx.Node) else 0.0, dtype=torch.float64)
        diff = (va - vb).expand(node.meta["val"].shape)
        mine = getattr(torch, node.target._opname)(va.detach(), vb.detach())
        wrong = np.flatnonzero((mine != decisions[node.name].reshape(mine.shape)).reshape(-1).numpy())
        if wrong.size:
            bounds = plain.bound(diff, wrong)
            for j, bnd in zip(wrong, bounds, strict=True):
                flips.append((node.name, int(j), abs(float(diff.detach().reshape(-1)[j])), float(bnd)))
    return flips


def outputs_within_bounds(kernel: Kernel, gm: torch.fx.GraphModule, args: list, mem: dict, roles, values: list,
                          wanted: list) -> dict[str, float]:
    """Check a kernel's outputs (``values``, one per output role of ``gm``) against float: the traced graph in
    float64 equals ``wanted`` (PyTorch's own, within float64 noise); with the emulator's decisions (``mem``),
    each output is within its derived first-order bound; each decision taken otherwise than in float is within
    its bound of the threshold. Outputs that are not floats (counters, generator states) must equal
    ``wanted``. Returns the largest error / bound per output role."""
    plain = GraphBounds(kernel, gm, args)
    same = GraphBounds(kernel, gm, args, emulator_decisions(kernel, gm, mem))
    ratios = {}
    for role, val, ref, want, out in zip(map(str, roles), values, same.outputs, wanted, plain.outputs, strict=True):
        if not out.is_floating_point():
            assert np.array_equal(np.asarray(val), np.asarray(want)), role
            continue
        assert np.abs(out.detach().numpy() - want).max() <= 1e-9 * (1 + np.abs(want).max()), role
        bound = same.bound(ref)
        err = np.abs(np.asarray(val, dtype=np.float64) - ref.detach().numpy())
        assert np.all(err <= bound), (role, err.max(), bound[err > bound])
        ratios[role] = float((err / bound).max())
    for node, j, dist, bnd in flipped_decisions(kernel, gm, args, mem):
        assert dist <= bnd, (node, j, dist, bnd)
    return ratios
