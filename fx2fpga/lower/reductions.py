"""Lowering rules of the reduction op family: sum, mean, amax, and matrix products (mm, addmm)."""

from __future__ import annotations

import torch
from fx2fpga_runtime.ir import Affine

from ..handoffs import profile_of
from . import views as V
from .graph import Const, GraphLowering, aten
from .views import View


def _reduce_dims(node, nd: int, default_all: bool = True) -> list[int]:
    dims = node.args[1] if len(node.args) > 1 else None
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0 and default_all):
        return list(range(nd))
    if isinstance(dims, int):
        dims = [dims]
    return sorted(d % nd for d in dims)


def _reduction(op: str, scale_mean: bool = False):
    def rule(lw: GraphLowering, node) -> View:
        x = lw.view(lw.value(node.args[0]))
        nd = len(x.shape)
        dims = _reduce_dims(node, nd)
        if op == "max" and not dims:
            dims = list(range(nd))
        keepdim = bool(node.args[2]) if len(node.args) > 2 else bool(node.kwargs.get("keepdim", False))
        kept = [d for d in range(nd) if d not in dims]
        out_shape = tuple(1 if (d in dims) else x.shape[d] for d in range(nd)) if keepdim else tuple(
            x.shape[d] for d in kept)

        def index(k, v, ovars, rvars):
            mapping, o, r = {}, 0, 0
            for d in range(nd):
                if d in dims:
                    mapping[V.dim_var(d)] = Affine.var(rvars[r])
                    r += 1
                    if keepdim:
                        o += 1
                else:
                    mapping[V.dim_var(d)] = Affine.var(ovars[o])
                    o += 1
            return mapping

        red_shape = tuple(x.shape[d] for d in dims)
        kind = lw.kind_of(node)
        out = lw.emit(op, out_shape, [x], reduce_shape=red_shape, reduce_index=index, out_kind=kind,
                      suffix="_sum" if scale_mean else "")
        if scale_mean:
            n = 1
            for s in red_shape:
                n *= s
            prof = profile_of(node)
            if prof is not None:  # the sum is up to n times the mean
                lw.kb.facts.absmax[out.buffer] = prof.absmax * n
            out = lw.emit("mul", out_shape, [out, Const(torch.tensor(1.0 / n, dtype=torch.float64))])
        return out
    return rule


def _matmul(with_bias: bool):
    def rule(lw: GraphLowering, node) -> View:
        if with_bias:
            if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
                raise lw.unsupported("addmm with alpha or beta other than 1")
            bias, a, b = (lw.value(x) for x in node.args[:3])
        else:
            (a, b), bias = (lw.value(x) for x in node.args[:2]), None
        a, b = lw.view(a), lw.view(b)
        (m, kdim), (_, n) = a.shape, b.shape

        def index(k, v, ovars, rvars):
            i, j, r = (Affine.var(x) for x in (ovars[0], ovars[1], rvars[0]))
            if k == 0:
                return {"d0": i, "d1": r}
            if k == 1:
                return {"d0": r, "d1": j}
            return {f"d{d}": e for d, e in enumerate(_compose_broadcast(v, (i, j)))}  # the bias

        ins = [a, b] + ([lw.view(bias)] if bias is not None else [])
        return lw.emit("mac", (m, n), ins, reduce_shape=(kdim,), reduce_index=index)
    return rule


def _compose_broadcast(v: View, out_exprs) -> list[Affine]:
    """Index expressions for the dims of ``v`` when broadcast to the 2-D output."""
    lead = 2 - len(v.shape)
    return [Affine(()) if v.shape[d] == 1 else out_exprs[d + lead] for d in range(len(v.shape))]


RULES = {
    aten.addmm.default: _matmul(True),
    aten.mm.default: _matmul(False),
    aten.sum.dim_IntList: _reduction("sum"),
    aten.sum.default: _reduction("sum"),
    aten.mean.dim: _reduction("sum", scale_mean=True),
    aten.mean.default: _reduction("sum", scale_mean=True),
    aten.amax.default: _reduction("max"),
}
