"""Lowering rules of the view family (permute, reshape, expand, slice...: index maps that cost
nothing), identities (clone, casts) and ``slice_scatter``."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx
from fx2fpga_runtime.ir import Affine

from . import views as V
from .graph import Const, GraphLowering, Value, aten
from .views import NotAffine, View


def _slice_scatter(lw: GraphLowering, node) -> View:
    """``base`` with ``src`` written into ``base[start::step]`` along ``dim``: ``select(mask, src', base)``
    where ``src'`` reads ``src`` at ``((i - start) // step) % len``, an index in range everywhere."""
    base, src = lw.value(node.args[0]), lw.view(lw.value(node.args[1]))
    args, shape = list(node.args) + [None] * 4, lw.shape()
    dim = (args[2] or 0) % len(shape)
    start, step, n = args[3] or 0, args[5] or 1, src.shape[dim]
    start = start + shape[dim] if start < 0 else start
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[(slice(None),) * dim + (slice(start, start + n * step, step),)] = True
    ext = {V.dim_var(i): s for i, s in enumerate(shape)}
    old = {V.dim_var(i): Affine.var(V.dim_var(i)) for i in range(len(shape))}
    old[V.dim_var(dim)] = Affine(((V.dim_var(dim), 1),), n * step * -(-start // (n * step)) - start, step, n)
    try:
        placed = src.remap(shape, old, ext)
    except NotAffine:
        placed = lw.materialize(src).remap(shape, old, ext)
    if isinstance(base, Const) and base.value.numel() and bool((base.value == base.value.reshape(-1)[0]).all()):
        base = Const(base.value.reshape(-1)[0])  # a constant fill: one scalar, not an array
    return lw.emit("select", shape, [Const(mask), placed, base])


def _view_rule(fn: Callable[[View, torch.fx.Node], View]):
    def rule(lw: GraphLowering, node) -> Value:
        val = lw.value(node.args[0])
        if isinstance(val, Const):
            return lw.fold(node)
        try:
            return fn(val, node)
        except NotAffine:
            return fn(lw.materialize(val), node)
    return rule


def _identity(lw: GraphLowering, node) -> Value:
    """Copies and dtype casts are the same value: formats, not dtypes, decide the bits."""
    return lw.value(node.args[0])


def _permute(v, n):
    return V.permute(v, list(n.args[1]))


def _transpose(v, n):
    nd = len(v.shape)
    d0, d1 = n.args[1] % nd, n.args[2] % nd
    dims = list(range(nd))
    dims[d0], dims[d1] = dims[d1], dims[d0]
    return V.permute(v, dims)


def _t(v, n):
    return V.permute(v, [1, 0]) if len(v.shape) == 2 else v


def _squeeze(v, n):
    dims = n.args[1] if len(n.args) > 1 else None
    return V.squeeze(v, [dims] if isinstance(dims, int) else dims)


def _slice(v, n):
    args = list(n.args) + [None] * 5
    dim = args[1] if args[1] is not None else 0
    start = args[2] if args[2] is not None else 0
    end = args[3] if args[3] is not None else v.shape[dim]
    step = args[4] if args[4] is not None else 1
    return V.slice_(v, dim, start, min(end, v.shape[dim]), step)


RULES = {
    aten.slice_scatter.default: _slice_scatter,
    aten.permute.default: _view_rule(_permute),
    aten.transpose.int: _view_rule(_transpose),
    aten.t.default: _view_rule(_t),
    aten.view.default: _view_rule(lambda v, n: V.reshape(v, list(n.args[1]))),
    aten.reshape.default: _view_rule(lambda v, n: V.reshape(v, list(n.args[1]))),
    aten._unsafe_view.default: _view_rule(lambda v, n: V.reshape(v, list(n.args[1]))),
    aten.expand.default: _view_rule(lambda v, n: V.expand(v, list(n.args[1]))),
    aten.unsqueeze.default: _view_rule(lambda v, n: V.unsqueeze(v, n.args[1])),
    aten.squeeze.dim: _view_rule(_squeeze),
    aten.squeeze.dims: _view_rule(_squeeze),
    aten.squeeze.default: _view_rule(_squeeze),
    aten.slice.Tensor: _view_rule(_slice),
    aten.select.int: _view_rule(lambda v, n: V.select(v, n.args[1], n.args[2])),
    aten.clone.default: _identity,
    aten.alias.default: _identity,
    aten.detach.default: _identity,
    aten.lift_fresh_copy.default: _identity,
    aten._to_copy.default: _identity,
}
