"""Lowering rules of the elementwise op family: arithmetic, comparisons, select and the
function tables (exp, log, sigmoid, tanh, erf, sin, cos, reciprocal, rsqrt, sqrt)."""

from __future__ import annotations

import math

import torch
import torch.fx

from ..handoffs import node_info, profile_of
from .graph import Const, GraphLowering, Value, aten
from .views import View


def _elementwise(op: str, nargs: int | None = None):
    def rule(lw: GraphLowering, node) -> View:
        args = node.args[:nargs] if nargs else node.args
        return lw.emit(op, lw.shape(), [lw.value(a) for a in args])
    return rule


def _add_sub(op: str):
    def rule(lw: GraphLowering, node) -> View:
        a, b = lw.value(node.args[0]), lw.value(node.args[1])
        alpha = node.kwargs.get("alpha", 1)
        if alpha != 1:
            b = Const(b.value * alpha) if isinstance(b, Const) else lw.emit("mul", lw.shape(node.args[1]) if isinstance(
                node.args[1], torch.fx.Node) else (), [b, Const(torch.tensor(float(alpha)))], suffix="_alpha")
        return lw.emit(op, lw.shape(), [a, b])
    return rule


def _div(lw: GraphLowering, node) -> View:
    if node.kwargs.get("rounding_mode") is not None:
        raise lw.unsupported("div with rounding_mode")
    b = lw.value(node.args[1])
    if node_info(node).normalized and not isinstance(b, Const):  # Adam's: the IR's div, exact over any range
        return lw.emit("div", lw.shape(), [lw.value(node.args[0]), b])
    if not isinstance(b, Const):  # a tensor computed on chip: times its reciprocal
        return lw.emit("mul", lw.shape(), [lw.value(node.args[0]), _reciprocal_of(lw, node.args[1])])
    return lw.emit("mul", lw.shape(), [lw.value(node.args[0]), Const(1.0 / b.value.double())])


def _reciprocal_of(lw: GraphLowering, arg) -> View:
    """``1 / b`` for an on-chip tensor ``b``: a table over ``[min / 2, the format's max]``, ``min``
    the smallest value profiled for ``b``. Divisors must be positive; below ``min / 2`` the
    table gives ``2 / min``."""
    prof = profile_of(arg)
    low = prof.min if prof is not None else None
    if low is None or not low > 0:
        raise lw.unsupported(f"division by a tensor that is not positive on the example values (min {low}); "
                             "the reciprocal table covers positive divisors only")
    out = lw.emit("table", lw.shape(arg), [lw.value(arg)], attrs={"fn": "reciprocal", "x_min": low / 2},
                  suffix="_recip")
    lw.kb.facts.absmax[out.buffer] = 2.0 / low
    return out


def _reciprocal(lw: GraphLowering, node) -> View:
    return _reciprocal_of(lw, node.args[0])


def _periodic(fn: str):
    """``sin``/``cos`` with the argument reduced to [-pi, pi] by ops of the IR: ``k = round(x / 2pi)``
    (assigned to an integer format), ``r = x - 2pi * k``; then a fine table over [-4, 4]."""
    def rule(lw: GraphLowering, node) -> View:
        arg, shape = node.args[0], lw.shape()
        x = lw.value(arg)
        k = lw.emit("mul", shape, [x, Const(torch.tensor(0.5 / math.pi, dtype=torch.float64))], out_kind="integer",
                    suffix="_turns")
        whole = lw.emit("mul", shape, [k, Const(torch.tensor(2 * math.pi, dtype=torch.float64))], suffix="_whole")
        r = lw.emit("sub", shape, [x, whole], suffix="_reduced")
        prof, absmax = profile_of(arg), lw.kb.facts.absmax
        absmax[whole.buffer] = (prof.absmax if prof is not None else 0.0) + 4
        absmax[r.buffer] = 4.0
        return lw.emit("table", shape, [r], attrs={"fn": fn})
    return rule


def _pow(lw: GraphLowering, node) -> Value:
    e = node.args[1]
    if not (isinstance(e, (int, float)) and float(e) in (1.0, 2.0, 3.0, 4.0)):
        raise lw.unsupported(f"pow with exponent {e} (exponents 1, 2, 3 and 4 are supported)")
    x = y = lw.value(node.args[0])
    for _ in range(int(e) - 1):
        y = lw.emit("mul", lw.shape(), [y, x])
    return y


def _sqrt(lw: GraphLowering, node) -> View:
    """``sqrt`` table over ``[min / 2, the format's max]``, ``min`` the smallest value profiled for
    the argument when it is positive (below it the table gives ``sqrt(min / 2)``); else over
    ``[0, max]``, where the first segment's interpolation is coarse (``sqrt(h) / 4``). Adam's square
    roots are ``x / sqrt(x)`` by the IR's ``div_sqrt``, to the same relative precision over any range."""
    if node_info(node).normalized:
        x = lw.value(node.args[0])
        return lw.emit("div_sqrt", lw.shape(), [x, x])
    prof = profile_of(node.args[0])
    low = prof.min if prof is not None else None
    attrs = {"fn": "sqrt", "x_min": low / 2} if low is not None and low > 0 else {"fn": "sqrt"}
    return lw.emit("table", lw.shape(), [lw.value(node.args[0])], attrs=attrs)


def _logical(op: str):
    """``a and b`` (``a ? b : 0``) or ``a or b`` (``a ? 1 : b``) of two bool tensors: the masks of
    clamp's and hardsigmoid's backward."""
    def rule(lw: GraphLowering, node) -> View:
        if any(isinstance(a, torch.fx.Node) and a.meta["val"].dtype != torch.bool for a in node.args[:2]):
            raise lw.unsupported(f"{op} of integer tensors (bool tensors are supported)")
        a, b = lw.value(node.args[0]), lw.value(node.args[1])
        ins = [a, b, Const(torch.tensor(False))] if op == "and" else [a, Const(torch.tensor(True)), b]
        return lw.emit("select", lw.shape(), ins)
    return rule


def _table(fn: str):
    def rule(lw: GraphLowering, node) -> View:
        return lw.emit("table", lw.shape(), [lw.value(node.args[0])], attrs={"fn": fn})
    return rule


RULES = {
    aten.relu.default: _elementwise("relu"),
    aten.neg.default: _elementwise("neg"),
    aten.abs.default: _elementwise("abs"),
    aten.add.Tensor: _add_sub("add"),
    aten.add.Scalar: _add_sub("add"),
    aten.sub.Tensor: _add_sub("sub"),
    aten.sub.Scalar: _add_sub("sub"),
    aten.mul.Tensor: _elementwise("mul", 2),
    aten.mul.Scalar: _elementwise("mul", 2),
    aten.div.Tensor: _div,
    aten.div.Scalar: _div,
    aten.pow.Tensor_Scalar: _pow,
    aten.where.self: _elementwise("select", 3),
    aten.eq.Tensor: _elementwise("eq", 2), aten.eq.Scalar: _elementwise("eq", 2),
    aten.ne.Tensor: _elementwise("ne", 2), aten.ne.Scalar: _elementwise("ne", 2),
    aten.lt.Tensor: _elementwise("lt", 2), aten.lt.Scalar: _elementwise("lt", 2),
    aten.le.Tensor: _elementwise("le", 2), aten.le.Scalar: _elementwise("le", 2),
    aten.gt.Tensor: _elementwise("gt", 2), aten.gt.Scalar: _elementwise("gt", 2),
    aten.ge.Tensor: _elementwise("ge", 2), aten.ge.Scalar: _elementwise("ge", 2),
    aten.exp.default: _table("exp"),
    aten.log.default: _table("log"),
    aten.sigmoid.default: _table("sigmoid"),
    aten.tanh.default: _table("tanh"),
    aten.erf.default: _table("erf"),
    aten.sin.default: _periodic("sin"),
    aten.cos.default: _periodic("cos"),
    aten.reciprocal.default: _reciprocal,
    aten.rsqrt.default: _table("rsqrt"),
    aten.sqrt.default: _sqrt,
    aten.logical_and.default: _logical("and"), aten.bitwise_and.Tensor: _logical("and"),
    aten.logical_or.default: _logical("or"), aten.bitwise_or.Tensor: _logical("or"),
}
