"""Lowering rules of the view family (permute, reshape, expand, slice, repeat...: index maps that
cost nothing), identities (clone, casts), ``slice_scatter`` and concatenation:

- ``split_with_sizes`` (``torch.split``, ``torch.chunk``; the decompositions turn ``split.Tensor`` into
  it, ``unbind`` into ``select``s): a tuple of slice views, read through ``getitem``; no data moves.
- ``cat`` (``torch.cat``, ``torch.stack``: a cat of unsqueezed views): one ``copy`` stage per input,
  each writing its slice of the output buffer (``out[..., offset + j, ...] = x[..., j, ...]``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx
from fx2fpga_runtime.ir import Affine, Loop, Stage

from . import views as V
from .graph import OUT_VARS, Const, GraphLowering, Value, aten, op_name, user_source
from .views import NotAffine, View


def _fill_as_scalar(val: Value) -> Value:
    """A constant of one repeated value (a zero gradient) as one scalar, not an array."""
    if isinstance(val, Const) and val.value.numel() and bool((val.value == val.value.reshape(-1)[0]).all()):
        return Const(val.value.reshape(-1)[0])
    return val


def _slice_scatter(lw: GraphLowering, node) -> Value:
    """``base`` with ``src`` written into ``base[start::step]`` along ``dim``: ``select(mask, src', base)``
    where ``src'`` reads ``src`` at ``((i - start) // step) % len``, an index in range everywhere."""
    base, src = lw.value(node.args[0]), lw.view(lw.value(node.args[1]))
    args, shape = list(node.args) + [None] * 4, lw.shape()
    dim = (args[2] or 0) % len(shape)
    start, step, n = args[3] or 0, args[5] or 1, src.shape[dim]
    if n == 0:  # an empty piece (the gradient of a zero-width cat input) writes nothing
        return base
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
    return lw.emit("select", shape, [Const(mask), placed, _fill_as_scalar(base)])


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


def _repeat(v, n):
    """``x.repeat(r0, r1, ...)``: ``out[i, j] = x[i % a, j % b]``, as view ``(1, a, 1, b)``, expand
    ``(r0, a, r1, b)``, reshape ``(r0 * a, r1 * b)``."""
    reps = list(n.args[1])
    shape = (1,) * (len(reps) - len(v.shape)) + v.shape
    v = V.reshape(v, [m for s in shape for m in (1, s)])
    v = V.expand(v, [m for r, s in zip(reps, shape, strict=True) for m in (r, s)])
    return V.reshape(v, [r * s for r, s in zip(reps, shape, strict=True)])


# ----- split and cat -----------------------------------------------------------------------------

def _split_with_sizes(lw: GraphLowering, node) -> tuple:
    """``torch.split`` / ``torch.chunk`` along ``dim`` into pieces of the given sizes: a tuple of slice
    views (``getitem`` picks one)."""
    val, sizes = lw.value(node.args[0]), list(node.args[1])
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    dim %= len(lw.shape(node.args[0]))
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    try:
        return tuple(V.slice_(val, dim, lo, lo + n, 1) for lo, n in zip(starts, sizes, strict=True))
    except NotAffine:
        val = lw.materialize(val)
        return tuple(V.slice_(val, dim, lo, lo + n, 1) for lo, n in zip(starts, sizes, strict=True))


def _cat(lw: GraphLowering, node) -> Value:
    """``torch.cat(xs, dim)``: one copy stage per input, writing its slice of one output buffer.
    Empty inputs (PyTorch's legacy ``(0,)`` tensors too) write nothing."""
    shape = lw.shape()
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    dim %= len(shape)
    pieces = [(lw.value(a), lw.shape(a)) for a in node.args[0]]
    if all(isinstance(val, Const) for val, _ in pieces):
        return lw.fold(node)
    pieces = [(val, piece_shape) for val, piece_shape in pieces if 0 not in piece_shape]
    if len(pieces) == 1:
        return pieces[0][0]  # the others are empty: the one input is the result
    out = lw.temp(shape, lw.kind_of(node))
    offset = 0
    for k, (val, piece_shape) in enumerate(pieces):
        _copy_into(lw, out, _fill_as_scalar(val), dim, offset, piece_shape, k)
        offset += piece_shape[dim]
    return out


def _copy_into(lw: GraphLowering, out: View, val: Value, dim: int, offset: int, shape: tuple[int, ...],
               part: int) -> None:
    """A copy stage over ``shape`` writing ``val`` into ``out`` at ``offset`` along ``dim``."""
    src = V.broadcast_to(lw.view(val), shape)
    ovars = [OUT_VARS[i] if i < len(OUT_VARS) else f"i{i}" for i in range(len(shape))]
    loops = tuple(Loop(x, n) for x, n in zip(ovars, shape, strict=True))
    extents = {lp.var: lp.extent for lp in loops}
    in_map = {V.dim_var(i): Affine.var(x) for i, x in enumerate(ovars)}
    out_map = {**in_map, V.dim_var(dim): Affine(((ovars[dim], 1),), offset)}
    try:
        read = src.access(in_map, extents)
    except NotAffine:
        read = lw.materialize(src).access(in_map, extents)
    lw.stages.append(Stage(
        name=f"{out.buffer}_part{part}", op="copy", loops=loops, out=out.access(out_map, extents), ins=(read,),
        source=user_source(lw.node), origin=f"{lw.node.name} = {op_name(lw.node)} (input {part})",
    ))


RULES = {
    aten.cat.default: _cat,
    aten.split_with_sizes.default: _split_with_sizes,
    aten.repeat.default: _view_rule(_repeat),
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
