"""Lowering rules for convolutions, pooling and batched matrix products: loop nests whose reads are affine and guarded.

Every rule here builds its stages with ``_stage``, which takes each operand's index as
``Affine``s of the stage's loop variables plus ``Guard``s (``ir.py``): a padded read is
guarded by ``0 <= h*stride + kh - pad < H``; the transposed (input-gradient) reads of a
strided convolution by ``(h + pad - kh) % stride == 0`` as well, so no stage ever scatters.

- ``convolution`` (1-D and 2-D, stride, zero padding, bias, groups): one ``mac`` stage, the bias its init.
- ``convolution_backward``: input gradient (a ``mac`` over output channels and kernel offsets
  with guarded, divided reads of the output gradient), weight gradient (a ``mac`` over batch
  and output positions), bias gradient (a ``sum``).
- Transposed convolutions (``ConvTranspose1d/2d``: ``convolution`` with ``transposed=True``, also
  ``output_padding``) swap the roles: the forward is the stage of a convolution's input gradient
  (``_transposed_conv``), the input gradient an ordinary convolution of the output gradient
  (``_correlation``), the weight gradient the same correlation with input and output gradient swapped
  (``_weight_gradient``).
- Grouped and depthwise convolutions (``groups > 1``): the same stages with the channel loop split
  into (group, channel in group) loops, so that the other tensor's channel ``group * C + c`` is
  affine (``_Groups``); their buffers have both dims and are viewed with one channel dim again.
- ``bmm`` (``torch.bmm``, ``@`` on 3-d and, through views, higher tensors): one ``mac`` over ``k``.
- ``max_pool2d_with_indices``: a ``max`` stage; when the indices are used, an ``argmax`` stage
  whose values are positions *inside the window* (``r * KW + s``, the first maximum as in
  PyTorch), which only the backward reads.
- ``max_pool2d_with_indices_backward``: ``eq`` of the window position with the argmax,
  ``select`` of the output gradient, then a guarded ``sum`` over the windows that hold each input.
- ``avg_pool2d`` (and ``_adaptive_avg_pool2d`` when the sizes divide) and their backward: one
  ``mac`` with the constant ``1/count``.
- ``index`` / ``index_put`` with the constant indices of a nearest upsampling by integer factors
  (``nn.Upsample(scale_factor=k)``, which PyTorch's own decomposition traces to them): the view
  ``x[..., h // k, ...]`` (no stage), and for the backward a ``sum`` over each ``k x k`` block.
- ``constant_pad_nd`` with zeros (``F.pad``, ``padding="same"`` with an even kernel): a
  guarded copy; negative pads (its backward) crop.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.fx
from fx2fpga_runtime.ir import Affine, Guard, Loop, Stage

from ..backends.common import affine_range
from . import views as V
from .graph import Const, GraphLowering, op_name, user_source
from .views import NotAffine, View

aten = torch.ops.aten
OUT_VARS = ("i", "j", "l", "m", "n", "p")
RED_VARS = ("k", "r", "s", "t", "u")
VIEW_OPS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.squeeze.dims,
            aten.squeeze.dim, aten.squeeze.default, aten.unsqueeze.default, aten.clone.default}

# An operand: (value, index) where index(out_vars, red_vars) -> (an Affine per dim, guards).
Index = Callable[[list[str], list[str]], tuple[list[Affine], list[Guard]]]


# ----- building stages ----------------------------------------------------------------------------

def _var(name: str, coeff: int = 1) -> Affine:
    return Affine.var(name, coeff)


def _guards(conds: list[tuple[Affine, int, int]], extents: dict[str, int]) -> list[Guard]:
    """``Guard(expr, bound, step)`` for each condition that can fail inside the loop box."""
    out = []
    for expr, bound, step in conds:
        lo, hi = affine_range(expr, extents)
        divisible = step == 1 or all(c % step == 0 for _, c in expr.terms) and expr.const % step == 0
        if not (lo >= 0 and hi < bound and divisible):
            out.append(Guard(expr, bound, step))
    return out


def _stage(lw: GraphLowering, op: str, out_shape, red_shape, ins: list[tuple[object, Index]], kind: str,
           suffix: str = "", attrs: dict | None = None) -> View:
    """One stage over ``out_shape`` x ``red_shape`` writing a new temp buffer; guarded operands
    are read through identity views (materialized if need be) so that the guard covers the index."""
    out = lw.temp(tuple(out_shape), kind, suffix)
    ovars = list(OUT_VARS[: len(out_shape)])
    rvars = list(RED_VARS[: len(red_shape)])
    loops = tuple(Loop(v, int(n)) for v, n in zip(ovars + rvars, [*out_shape, *red_shape], strict=True))
    extents = {lp.var: lp.extent for lp in loops}
    accesses = []
    for val, index in ins:
        v = lw.view(val)
        dims, conds = index(ovars, rvars)
        guards = _guards(conds, extents)
        if guards and not v.is_identity():
            v = lw.materialize(v)
        mapping = {V.dim_var(d): a for d, a in enumerate(dims)}
        try:
            access = v.access(mapping, extents)
        except NotAffine:
            access = lw.materialize(v).access(mapping, extents)
        accesses.append(replace(access, guard=tuple(guards)))
    out_map = {V.dim_var(d): _var(x) for d, x in enumerate(ovars)}
    lw.stages.append(Stage(
        name=out.buffer, op=op, loops=loops, out=out.access(out_map, extents), ins=tuple(accesses),
        reduce=tuple(rvars), attrs=dict(attrs or {}), source=user_source(lw.node),
        origin=f"{lw.node.name} = {op_name(lw.node)}",
    ))
    return out


def _user(node: torch.fx.Node, i: int) -> torch.fx.Node | None:
    """The ``getitem(node, i)`` user of a node with several outputs, if it is used."""
    return next((u for u in node.users if u.target is operator.getitem and u.args[1] == i and u.users), None)


def _output_of(lw: GraphLowering, node: torch.fx.Node, i: int) -> tuple[str, torch.fx.Node | None]:
    user = _user(node, i)
    return (lw.kind_of(user) if user is not None else "gradient"), user


def _record(lw: GraphLowering, out: View, user: torch.fx.Node | None) -> View:
    if user is not None:
        lw.record_range(out.buffer, user)
    return out


def getitem(lw: GraphLowering, node) -> object:
    """One output of an op with several (convolution_backward, max_pool2d_with_indices)."""
    val = lw.values[node.args[0]]
    if not isinstance(val, tuple):
        raise lw.unsupported(f"indexing a value of type {type(val).__name__}")
    item = val[node.args[1]]
    if item is None:
        raise lw.unsupported(f"output {node.args[1]} of {node.args[0].name} is not computed")
    return item


# ----- argument checks ----------------------------------------------------------------------------

def _ints(v, n: int, default: int | None = None) -> list[int]:
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        return [default] * n
    if isinstance(v, int):
        return [v] * n
    return [int(x) for x in v] * (n if len(v) == 1 else 1)


def _conv_args(lw: GraphLowering, nd: int, stride, padding, dilation, transposed, output_padding, groups):
    """(stride, padding, groups, transposed) of a convolution, refusing what does not lower. A transposed
    convolution's ``output_padding`` only lengthens its output (the traced shape says by how much)."""
    if nd not in (1, 2):
        raise lw.unsupported(f"{nd}-d convolution (Conv1d and Conv2d only, and ConvTranspose1d and ConvTranspose2d)")
    if any(d != 1 for d in _ints(dilation, nd, 1)):
        raise lw.unsupported(f"convolution with dilation {list(dilation)} (only dilation 1)")
    return _ints(stride, nd, 1), _ints(padding, nd, 0), int(groups), bool(transposed)


def _pool_args(lw: GraphLowering, kernel, stride, padding, dilation=1, ceil_mode=False):
    k = _ints(kernel, 2)
    s = _ints(stride, 2, None)
    s = [ki if si is None else si for ki, si in zip(k, s, strict=True)]
    if any(d != 1 for d in _ints(dilation, 2, 1)):
        raise lw.unsupported(f"pooling with dilation {list(dilation)} (only dilation 1)")
    if ceil_mode:
        raise lw.unsupported("pooling with ceil_mode=True (only ceil_mode=False)")
    return k, s, _ints(padding, 2, 0)


# ----- convolution ------------------------------------------------------------------------------------

def _window(o: str, r: str, stride: int, pad: int) -> Affine:
    """Input position ``o*stride + r - pad`` of output ``o`` and kernel offset ``r``."""
    return Affine(((o, stride), (r, 1)), -pad)


def _transposed(h: str, r: str, pad: int) -> Affine:
    """``h + pad - r``: ``stride`` times the output position that reads input ``h`` at offset ``r``."""
    return Affine(((h, 1), (r, -1)), pad)


class _Groups:
    """The channels of a grouped convolution (``groups > 1``) as loops ``(group, channel in group)``.

    A channel ``c`` of a tensor with ``per`` channels per group is ``group * per + c_in_group``: an
    affine read of loops ``(grp, c)``, where ``grp = c // per`` would not be. A stage over such a
    channel dim has both loops and writes a buffer with both dims; ``merged`` views it with one
    channel dim again. With ``groups == 1`` there is no group loop: the stages are those of an
    ungrouped convolution."""

    def __init__(self, groups: int):
        self.groups = groups

    def split(self, shape, dim: int) -> tuple[int, ...]:
        """``shape`` with its channel dim ``dim`` split into ``(groups, per group)``."""
        shape = tuple(shape)
        if self.groups == 1:
            return shape
        return (*shape[:dim], self.groups, shape[dim] // self.groups, *shape[dim + 1:])

    def loops(self, o: list[str], dim: int) -> tuple[str | None, str, list[str]]:
        """(group loop or None, channel loop, the other loops in order) of loops over ``split``."""
        if self.groups == 1:
            return None, o[dim], o[:dim] + o[dim + 1:]
        return o[dim], o[dim + 1], o[:dim] + o[dim + 2:]

    @staticmethod
    def channel(group: str | None, c: str, per: int) -> Affine:
        """Channel ``group * per + c`` (``c`` when ungrouped)."""
        return _var(c) if group is None else Affine(((group, per), (c, 1)))

    def merged(self, out: View, dim: int) -> View:
        """The stage's output over ``split`` loops, viewed with one channel dim ``dim`` again."""
        if self.groups == 1:
            return out
        per = out.shape[dim + 1]
        shape = (*out.shape[:dim], self.groups * per, *out.shape[dim + 2:])
        c = V.dim_var(dim)
        index = [_var(V.dim_var(d)) for d in range(dim)]
        index += [Affine(((c, 1),), 0, per), Affine(((c, 1),), 0, 1, per)]
        index += [_var(V.dim_var(d - 1)) for d in range(dim + 2, len(out.shape))]
        return View(out.buffer, shape, tuple(index))


def _correlation(lw: GraphLowering, x: View, w: View, bias: View | None, out_shape, groups: int, stride, pad,
                 kind: str, suffix: str = "") -> View:
    """``out[n,o,*h] = bias[o] + sum_{c,*k} x[n,g*C+c,*(h*s+k-p)] * w[g*O+o,c,*k]`` (reads outside ``x`` are 0),
    ``g`` the group of output channel ``o``, ``C`` = ``w.shape[1]`` the channels of ``x`` per group and ``O`` those
    of ``out``: one ``mac`` stage. A convolution's forward, and the input gradient of a transposed convolution."""
    nd = len(x.shape) - 2
    grouped = _Groups(groups)
    size, in_per, out_per = x.shape[2:], w.shape[1], out_shape[1] // groups

    def x_index(o, r):
        grp, _, (n, *h) = grouped.loops(o, 1)
        win = [_window(h[d], r[1 + d], stride[d], pad[d]) for d in range(nd)]
        return [_var(n), grouped.channel(grp, r[0], in_per), *win], [(a, size[d], 1) for d, a in enumerate(win)]

    def out_channel(o):
        grp, oc, _ = grouped.loops(o, 1)
        return grouped.channel(grp, oc, out_per)

    ins = [(x, x_index), (w, lambda o, r: ([out_channel(o), _var(r[0]), *(_var(v) for v in r[1:])], []))]
    if bias is not None:
        ins.append((bias, lambda o, r: ([out_channel(o)], [])))
    out = _stage(lw, "mac", grouped.split(out_shape, 1), (in_per, *w.shape[2:]), ins, kind, suffix)
    return grouped.merged(out, 1)


def _transposed_conv(lw: GraphLowering, y: View, w: View, bias: View | None, out_shape, groups: int, stride, pad,
                     kind: str, suffix: str = "") -> View:
    """``out[n,c,*h] = bias[c] + sum_{o,*k} y[n,g*O+o,*((h+p-k)/s)] * w[g*O+o,c,*k]``, read only where ``h+p-k`` is
    a multiple of ``s`` inside ``y`` (guarded, so no stage scatters), ``O`` = ``w.shape[0] / groups`` the channels
    of ``y`` per group: one ``mac`` stage. A convolution's input gradient, and a transposed convolution's forward."""
    nd = len(y.shape) - 2
    grouped = _Groups(groups)
    y_size, y_per, out_per = y.shape[2:], w.shape[0] // groups, out_shape[1] // groups

    def y_index(o, r):
        grp, _, (n, *h) = grouped.loops(o, 1)
        e = [_transposed(h[d], r[1 + d], pad[d]) for d in range(nd)]
        idx = [Affine(a.terms, a.const, stride[d]) for d, a in enumerate(e)]
        guards = [(a, y_size[d] * stride[d], stride[d]) for d, a in enumerate(e)]
        return [_var(n), grouped.channel(grp, r[0], y_per), *idx], guards

    def w_index(o, r):
        grp, c, _ = grouped.loops(o, 1)
        return [grouped.channel(grp, r[0], y_per), _var(c), *(_var(v) for v in r[1:])], []

    def bias_index(o, r):
        grp, c, _ = grouped.loops(o, 1)
        return [grouped.channel(grp, c, out_per)], []

    ins = [(y, y_index), (w, w_index)] + ([(bias, bias_index)] if bias is not None else [])
    out = _stage(lw, "mac", grouped.split(out_shape, 1), (y_per, *w.shape[2:]), ins, kind, suffix)
    return grouped.merged(out, 1)


def _weight_gradient(lw: GraphLowering, a: View, b: View, w_shape, groups: int, stride, pad, kind: str,
                     suffix: str) -> View:
    """``gw[o,c,*k] = sum_{n,*h} a[n,g*O+o,*h] * b[n,g*C+c,*(h*s+k-p)]`` (reads outside ``b`` are 0), ``O`` and
    ``C`` the channels of ``a`` and ``b`` per group: one ``mac`` over the batch and ``a``'s positions. The weight
    gradient of a convolution (``a`` its output gradient, ``b`` its input) and of a transposed convolution
    (``a`` its input, ``b`` its output gradient)."""
    nd = len(a.shape) - 2
    grouped = _Groups(groups)
    size, a_per, b_per = b.shape[2:], w_shape[0] // groups, w_shape[1]

    def b_index(o, r):
        grp, _, (c, *k) = grouped.loops(o, 0)
        win = [_window(r[1 + d], k[d], stride[d], pad[d]) for d in range(nd)]
        return [_var(r[0]), grouped.channel(grp, c, b_per), *win], [(e, size[d], 1) for d, e in enumerate(win)]

    def a_index(o, r):
        grp, oc, _ = grouped.loops(o, 0)
        return [_var(r[0]), grouped.channel(grp, oc, a_per), *(_var(v) for v in r[1:])], []

    gw = _stage(lw, "mac", grouped.split(w_shape, 0), (a.shape[0], *a.shape[2:]), [(a, a_index), (b, b_index)],
                kind, suffix)
    return grouped.merged(gw, 0)


def convolution(lw: GraphLowering, node) -> View:
    """A convolution (``_correlation``) or a transposed convolution (``_transposed_conv``), the bias the init of
    its ``mac``."""
    x, w, bias = (lw.view(lw.value(a)) if a is not None else None for a in node.args[:3])
    stride, pad, groups, transposed = _conv_args(lw, len(x.shape) - 2, *node.args[3:9])
    build = _transposed_conv if transposed else _correlation
    return build(lw, x, w, bias, lw.shape(), groups, stride, pad, lw.kind_of(node))


def convolution_backward(lw: GraphLowering, node) -> tuple:
    """(input gradient, weight gradient, bias gradient) of a convolution, as ``output_mask`` asks. A transposed
    convolution's swap roles: its input gradient is an ordinary convolution of the output gradient, its weight
    gradient correlates the output gradient's windows with the input."""
    gy, x, w = (lw.view(lw.value(a)) for a in node.args[:3])
    stride, pad, groups, transposed = _conv_args(lw, len(x.shape) - 2, *node.args[4:10])
    mask = list(node.args[10])
    results: list[View | None] = [None, None, None]
    if mask[0] and _user(node, 0) is not None:
        kind, user = _output_of(lw, node, 0)
        input_gradient = _correlation if transposed else _transposed_conv
        results[0] = _record(lw, input_gradient(lw, gy, w, None, x.shape, groups, stride, pad, kind, "_dx"), user)
    if mask[1] and _user(node, 1) is not None:
        kind, user = _output_of(lw, node, 1)
        a, b = (x, gy) if transposed else (gy, x)
        results[1] = _record(lw, _weight_gradient(lw, a, b, w.shape, groups, stride, pad, kind, "_dw"), user)
    if mask[2] and _user(node, 2) is not None:
        kind, user = _output_of(lw, node, 2)
        gb_index = lambda o, r: ([_var(r[0]), _var(o[0]), *(_var(v) for v in r[1:])], [])  # noqa: E731
        gb = _stage(lw, "sum", (gy.shape[1],), (gy.shape[0], *gy.shape[2:]), [(gy, gb_index)], kind, "_db")
        results[2] = _record(lw, gb, user)
    return tuple(results)


# ----- batched matrix product -------------------------------------------------------------------------

def bmm(lw: GraphLowering, node) -> View:
    """``out[b,i,j] = sum_k a[b,i,k] * c[b,k,j]`` (``torch.bmm``, ``@`` on 3-d tensors): one ``mac``."""
    a, c = (lw.view(lw.value(x)) for x in node.args[:2])
    a_index = lambda o, r: ([_var(o[0]), _var(o[1]), _var(r[0])], [])  # noqa: E731
    c_index = lambda o, r: ([_var(o[0]), _var(r[0]), _var(o[2])], [])  # noqa: E731
    return _stage(lw, "mac", lw.shape(), (a.shape[2],), [(a, a_index), (c, c_index)], lw.kind_of(node))


# ----- pooling ----------------------------------------------------------------------------------------

def _pool_window(k, s, p, size):
    """Index of a pooled input: ``x[n, c, oh*s + r - p, ow*s + t - p]`` with its padding guards."""
    def index(o, r):
        win = [_window(o[2 + d], r[d], s[d], p[d]) for d in range(2)]
        return [_var(o[0]), _var(o[1]), *win], [(a, size[d], 1) for d, a in enumerate(win)]
    return index


def _windows_of(s, p, out_size, extra: list[str] | None = None):
    """Index of a per-window value read from an input position: ``g[n, c, (h+p-r)/s, (w+p-t)/s, *extra]``,
    guarded to the windows that exist (the transposed read of the pooling)."""
    def index(o, r):
        e = [_transposed(o[2 + d], r[d], p[d]) for d in range(2)]
        idx = [Affine(a.terms, a.const, s[d]) for d, a in enumerate(e)]
        more = [_var(r[d]) for d in range(len(extra or []))]
        return [_var(o[0]), _var(o[1]), *idx, *more], [(a, out_size[d] * s[d], s[d]) for d, a in enumerate(e)]
    return index


def max_pool2d_with_indices(lw: GraphLowering, node) -> tuple:
    x = lw.view(lw.value(node.args[0]))
    if len(x.shape) != 4:
        raise lw.unsupported(f"max pooling of a {len(x.shape)}-d tensor (expected N, C, H, W)")
    k, s, p = _pool_args(lw, *(list(node.args[1:]) + [None] * 5)[:5])
    n, c, oh, ow = (int(d) for d in node.meta["val"][0].shape)
    index = _pool_window(k, s, p, x.shape[2:])
    kind, user = _output_of(lw, node, 0)
    out = _record(lw, _stage(lw, "max", (n, c, oh, ow), k, [(x, index)], kind), user)
    if _user(node, 1) is None:
        return out, None
    _check_index_users(lw, _user(node, 1))
    arg = _stage(lw, "argmax", (n, c, oh, ow), k, [(x, index)], "integer", "_argmax")
    return out, arg


def _check_index_users(lw: GraphLowering, node: torch.fx.Node) -> None:
    """Our indices are positions inside each window: only the pooling's backward may read them."""
    for u in node.users:
        if u.target in VIEW_OPS:
            _check_index_users(lw, u)
        elif u.target != aten.max_pool2d_with_indices_backward.default:
            raise lw.unsupported(f"max-pool indices used by {u.name} (only by the pooling's backward)")


def max_pool2d_with_indices_backward(lw: GraphLowering, node) -> View:
    """``dx[n,c,h,w] = sum over the windows holding (h, w) of (argmax == its position) ? dy : 0``."""
    gy, x = lw.view(lw.value(node.args[0])), lw.view(lw.value(node.args[1]))
    k, s, p = _pool_args(lw, *node.args[2:7])
    arg = lw.view(lw.value(node.args[7]))
    n, c, oh, ow = gy.shape
    win_shape = (n, c, oh, ow, *k)
    pos = lw.kb.const(torch.arange(k[0] * k[1], dtype=torch.int64).reshape(k), "window_pos")
    per_window = lambda o, r: ([_var(v) for v in o[:4]], [])  # noqa: E731
    hit = _stage(lw, "eq", win_shape, (), [(arg, per_window), (pos, lambda o, r: ([_var(o[4]), _var(o[5])], []))],
                 "bool", "_hit")
    zero = lw.kb.const(torch.tensor(0.0), "zero")
    ident = lambda o, r: ([_var(v) for v in o], [])  # noqa: E731
    routed = _stage(lw, "select", win_shape, (), [(hit, ident), (gy, per_window), (zero, lambda o, r: ([], []))],
                    lw.kind_of(node), "_routed")
    return _stage(lw, "sum", x.shape, k, [(routed, _windows_of(s, p, (oh, ow), extra=k))], lw.kind_of(node))


def _avg_scale(lw: GraphLowering, k, s, p, size, out_size, count_include_pad: bool, divisor) -> tuple:
    """The constant ``1/count`` per output position (a scalar when it is the same everywhere)."""
    if divisor:
        return lw.kb.const(torch.tensor(1.0 / divisor, dtype=torch.float64), "avg_scale"), False
    if count_include_pad or not any(p):
        return lw.kb.const(torch.tensor(1.0 / (k[0] * k[1]), dtype=torch.float64), "avg_scale"), False
    counts = []
    for d in range(2):
        starts = torch.arange(out_size[d]) * s[d] - p[d]
        counts.append((torch.clamp(starts + k[d], max=size[d]) - torch.clamp(starts, min=0)).double())
    return lw.kb.const(1.0 / (counts[0][:, None] * counts[1][None, :]), "avg_scale"), True


def _avg_args(lw: GraphLowering, node, first: int):
    args = (list(node.args[first:]) + [None] * 6)[:6]
    kernel, stride, padding, ceil_mode, count_include_pad, divisor = args
    k, s, p = _pool_args(lw, kernel, stride, padding, 1, bool(ceil_mode))
    return k, s, p, count_include_pad is None or bool(count_include_pad), divisor


def avg_pool2d(lw: GraphLowering, node) -> View:
    x = lw.view(lw.value(node.args[0]))
    if len(x.shape) != 4:
        raise lw.unsupported(f"average pooling of a {len(x.shape)}-d tensor (expected N, C, H, W)")
    k, s, p, include_pad, divisor = _avg_args(lw, node, 1)
    out_shape = lw.shape()
    scale, per_pos = _avg_scale(lw, k, s, p, x.shape[2:], out_shape[2:], include_pad, divisor)
    scale_index = (lambda o, r: ([_var(o[2]), _var(o[3])], [])) if per_pos else (lambda o, r: ([], []))
    return _stage(lw, "mac", out_shape, k, [(x, _pool_window(k, s, p, x.shape[2:])), (scale, scale_index)],
                  lw.kind_of(node))


def avg_pool2d_backward(lw: GraphLowering, node) -> View:
    gy, x = lw.view(lw.value(node.args[0])), lw.view(lw.value(node.args[1]))
    k, s, p, include_pad, divisor = _avg_args(lw, node, 2)
    out_size = gy.shape[2:]
    scale, per_pos = _avg_scale(lw, k, s, p, x.shape[2:], out_size, include_pad, divisor)
    windows = _windows_of(s, p, out_size)

    def scale_index(o, r):
        idx, guards = windows(o, r)
        return (idx[2:], guards) if per_pos else ([], [])

    return _stage(lw, "mac", x.shape, k, [(gy, windows), (scale, scale_index)], lw.kind_of(node))


def _adaptive_kernel(lw: GraphLowering, size, out_size) -> list[int]:
    if any(n % m for n, m in zip(size, out_size, strict=True)):
        raise lw.unsupported(f"adaptive average pooling from {list(size)} to {list(out_size)} "
                             "(only when the output size divides the input size)")
    return [n // m for n, m in zip(size, out_size, strict=True)]


def adaptive_avg_pool2d(lw: GraphLowering, node) -> View:
    x = lw.view(lw.value(node.args[0]))
    k = _adaptive_kernel(lw, x.shape[2:], lw.shape()[2:])
    scale = lw.kb.const(torch.tensor(1.0 / (k[0] * k[1]), dtype=torch.float64), "avg_scale")
    return _stage(lw, "mac", lw.shape(), k, [(x, _pool_window(k, k, [0, 0], x.shape[2:])),
                                             (scale, lambda o, r: ([], []))], lw.kind_of(node))


def adaptive_avg_pool2d_backward(lw: GraphLowering, node) -> View:
    gy, x = lw.view(lw.value(node.args[0])), lw.view(lw.value(node.args[1]))
    k = _adaptive_kernel(lw, x.shape[2:], gy.shape[2:])
    scale = lw.kb.const(torch.tensor(1.0 / (k[0] * k[1]), dtype=torch.float64), "avg_scale")
    return _stage(lw, "mac", x.shape, k, [(gy, _windows_of(k, [0, 0], gy.shape[2:])),
                                          (scale, lambda o, r: ([], []))], lw.kind_of(node))


# ----- zero padding -------------------------------------------------------------------------------

def constant_pad_nd(lw: GraphLowering, node) -> View:
    """``F.pad`` with zeros (negative pads crop): a copy whose reads outside the input are 0."""
    x = lw.view(lw.value(node.args[0]))
    pads = list(node.args[1])
    value = node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0)
    if value:
        raise lw.unsupported(f"padding with the value {value} (only zeros)")
    nd = len(x.shape)
    before = [0] * nd
    for i in range(len(pads) // 2):
        before[nd - 1 - i] = pads[2 * i]

    def index(o, r):
        idx = [Affine(((o[d], 1),), -before[d]) for d in range(nd)]
        return idx, [(a, x.shape[d], 1) for d, a in enumerate(idx)]

    return _stage(lw, "copy", lw.shape(), (), [(x, index)], lw.kind_of(node))


# ----- nearest upsampling -----------------------------------------------------------------------------

_NEAREST_ONLY = "only the constant indices of nn.Upsample / F.interpolate(mode='nearest') with integer scale factors"


def _nearest_scales(lw: GraphLowering, shape, indices: list) -> dict[int, int]:
    """``{dim: s}`` when ``x[indices]`` (``x`` of ``shape``) reads ``x[..., o // s, ...]`` along each indexed
    dim: PyTorch's nearest upsampling by integer factors, whose indices are constants (``arange``s folded at
    compile time). Any other indexing is refused."""
    dims = [d for d, t in enumerate(indices) if t is not None]
    if not dims or dims != list(range(dims[0], dims[0] + len(dims))) or not all(
            isinstance(indices[d], Const) and indices[d].value.dtype in (torch.int64, torch.int32) for d in dims):
        raise lw.unsupported(f"indexing with tensor indices ({_NEAREST_ONLY})")
    lines = torch.broadcast_tensors(*(indices[d].value for d in dims))
    if lines[0].dim() != len(dims):
        raise lw.unsupported(f"indices of shape {list(lines[0].shape)} ({_NEAREST_ONLY})")
    scales = {}
    for axis, (d, t) in enumerate(zip(dims, lines, strict=True)):
        n = t.shape[axis]
        s = n // shape[d]
        nearest = (torch.arange(n) // max(s, 1))[:, None]
        if s < 1 or n != s * shape[d] or not bool((t.movedim(axis, 0).reshape(n, -1) == nearest).all()):
            raise lw.unsupported(f"indices reading {n} positions from dim {d} of size {shape[d]} that are not a "
                                 f"nearest upsampling by an integer factor ({_NEAREST_ONLY})")
        scales[d] = s
    return scales


def _index_args(lw: GraphLowering, node) -> list:
    return [None if t is None else lw.value(t) for t in node.args[1]]


def upsample_nearest(lw: GraphLowering, node) -> View:
    """``aten.index`` with the indices of a nearest upsampling by integer factors ``s`` (what PyTorch traces
    ``nn.Upsample(scale_factor=s)`` to): the view ``x[..., h // s, ...]``, no stage."""
    x = lw.view(lw.value(node.args[0]))
    scales = _nearest_scales(lw, x.shape, _index_args(lw, node))
    shape = lw.shape()
    old = {V.dim_var(d): Affine(((V.dim_var(d), 1),), 0, scales.get(d, 1)) for d in range(len(shape))}
    extents = {V.dim_var(d): n for d, n in enumerate(shape)}
    try:
        return x.remap(shape, old, extents)
    except NotAffine:
        return lw.materialize(x).remap(shape, old, extents)


def upsample_nearest_backward(lw: GraphLowering, node) -> View:
    """``index_put(zeros, indices, g, accumulate=True)`` with a nearest upsampling's indices (its gradient):
    ``out[..., h, ...] = sum_{a < s} g[..., h*s + a, ...]``, one ``sum`` stage over the copies of each input."""
    base, g = lw.value(node.args[0]), lw.view(lw.value(node.args[2]))
    accumulate = node.args[3] if len(node.args) > 3 else node.kwargs.get("accumulate", False)
    if not (accumulate and isinstance(base, Const) and not bool(base.value.any())):
        raise lw.unsupported(f"index_put other than a nearest upsampling's gradient, accumulated into zeros "
                             f"({_NEAREST_ONLY})")
    shape = lw.shape()
    scales = _nearest_scales(lw, shape, _index_args(lw, node))
    dims = sorted(scales)
    if g.shape != tuple(n * scales.get(d, 1) for d, n in enumerate(shape)):
        raise lw.unsupported(f"index_put of values of shape {list(g.shape)} ({_NEAREST_ONLY})")

    def g_index(o, r):
        idx = [_var(v) for v in o]
        for k, d in enumerate(dims):
            idx[d] = Affine(((o[d], scales[d]), (r[k], 1)))
        return idx, []

    return _stage(lw, "sum", shape, [scales[d] for d in dims], [(g, g_index)], lw.kind_of(node))


RULES = {
    operator.getitem: getitem,
    aten.constant_pad_nd.default: constant_pad_nd,
    aten.convolution.default: convolution,
    aten.convolution_backward.default: convolution_backward,
    aten.bmm.default: bmm,
    aten.index.Tensor: upsample_nearest,
    aten._unsafe_index.Tensor: upsample_nearest,
    aten.index_put.default: upsample_nearest_backward,
    aten._unsafe_index_put.default: upsample_nearest_backward,
    aten.max_pool2d_with_indices.default: max_pool2d_with_indices,
    aten.max_pool2d_with_indices_backward.default: max_pool2d_with_indices_backward,
    aten.avg_pool2d.default: avg_pool2d,
    aten.avg_pool2d_backward.default: avg_pool2d_backward,
    aten._adaptive_avg_pool2d.default: adaptive_avg_pool2d,
    aten._adaptive_avg_pool2d_backward.default: adaptive_avg_pool2d_backward,
}
