"""SGD's update folded into the reduction that computes the gradient: ``p <- p + sum(-lr * a) * b``.

Plain SGD lowers a weight's update to three stages after the gradient's reduction ``g = sum_k a * b``
(``mac``; a bias's ``g = sum_k a``, ``sum``): ``t = g * lr`` and ``p = p - t``, each over every weight,
with ``g`` and ``t`` weight-sized temporaries. In exact arithmetic ``p - lr * sum_k a * b`` is
``p + sum_k (-lr * a) * b``: the reduction can start from ``p`` (its init input) and write ``p`` in place,
its operand ``a`` scaled once by ``-lr`` (``s = 0 - a * lr``, which ``passes/fuse.py`` makes one ``msub``).
``a`` is a batch-sized tensor (the layer's output gradient), read by the weight's and the bias's folds
alike, so the scaling costs a pass over the batch's gradients instead of two over the weights, and the
weight-sized gradient buffers disappear (on a kernel of many models they are most of the block RAM).

The fixed-point result differs from the unfolded update's in its roundings: the scaled operand is rounded
once (to a format that holds its source's range times the learning rate register's,
``quantize._hold_lr_scaled``), then the exact sum is rounded once into the weight's format, instead of the
gradient and ``lr * g`` each being rounded. Every backend computes the
folded stages, so they stay equal bit for bit.

It applies where ``g`` and ``t`` are read by nothing else, ``t``'s other factor is the learning rate
register and ``a`` is no larger than a parameter it serves (``_scaled_operands``: not a convolution's output
gradient, far larger than its weights). Momentum, weight decay, Nesterov and Adam keep the gradient (they read
it again) and are left as they are. It runs on each model's kernel right after lowering (``lower.run``),
before formats are chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fx2fpga_runtime.ir import Access, Affine, Buffer, Kernel, Loop, Program, Stage
from fx2fpga_runtime.ops import OPS_TABLE

from ..handoffs import LOWERING_KEY, LR_SCALED_KEY
from .views import substitute

FOLDED_OPS = ("mac", "sum")  # the gradient's reductions the update folds into


@dataclass(frozen=True)
class _Fold:
    """One update to fold: ``grad`` (the reduction), ``scale`` (``t = g * lr``), ``update`` (``p = p - t``),
    and ``subst``: the update's loop variables in terms of the reduction's."""

    grad: Stage
    scale: Stage
    update: Stage
    lr: Access
    subst: dict


def run(kernel: Kernel) -> Kernel:
    """Fold every plain SGD update of ``kernel`` (one model, just lowered) into its gradient's reduction."""
    facts = kernel.meta.get(LOWERING_KEY)
    for prog in kernel.programs.values():
        folds = _folds(kernel, prog)
        if folds and facts is not None:
            _apply(kernel, prog, folds, facts)
    return kernel


def _folds(kernel: Kernel, prog: Program) -> list[_Fold]:
    reads = kernel.read_counts()
    kept = kernel.io_buffers()
    producer = {st.out.buffer: st for st in prog.stages}
    out = []
    for u in prog.stages:
        if u.op != "sub" or u.reduce or len(u.ins) != 2 or u.ins[0] != u.out:
            continue
        p, t = u.out.buffer, u.ins[1].buffer
        m = producer.get(t)
        if (kernel.buffers[p].role != "param" or m is None or m.op != "mul" or m.reduce or reads.get(t) != 1
                or t in kept or m.loops != u.loops or m.out.index != u.ins[1].index or u.ins[1].guard):
            continue
        hyper = [a for a in m.ins if kernel.buffers[a.buffer].kind == "hyper"]
        grads = [a for a in m.ins if kernel.buffers[a.buffer].role == "temp"]
        if len(hyper) != 1 or len(grads) != 1 or grads[0].guard:
            continue
        r = producer.get(grads[0].buffer)
        if (r is None or r.op not in FOLDED_OPS or not r.reduce or len(r.ins) != OPS_TABLE[r.op].arity
                or reads.get(r.out.buffer) != 1 or r.out.buffer in kept or r.out.guard):
            continue
        subst = _substitution(grads[0].index, r, u)
        if subst is None:
            continue
        out.append(_Fold(r, m, u, hyper[0], subst))
    return out


def _single_var(a: Affine) -> str | None:
    return a.terms[0][0] if (len(a.terms) == 1 and a.terms[0][1] == 1 and a.const == 0 and a.div == 1
                             and a.mod == 0) else None


def _substitution(read: tuple[Affine, ...], r: Stage, u: Stage) -> dict | None:
    """The update's loop variables as the reduction's (``{update var: reduction var}``), from how the update
    reads the gradient (``read``) and how the reduction writes it; None unless both are plain variables or
    constant 0 against a one-iteration loop, dimension by dimension, and every update variable is covered."""
    extents = {lp.var: lp.extent for lp in r.loops}
    subst = {}
    for mine, theirs in zip(read, r.out.index, strict=True):
        v, w = _single_var(mine), _single_var(theirs)
        if w is None or w in r.reduce:
            return None
        if v is None:
            if mine.terms or mine.const != 0 or extents[w] != 1:
                return None
            continue
        if subst.get(v, w) != w:
            return None
        subst[v] = w
    if {lp.var for lp in u.loops} != set(subst):
        return None
    if any(extents[subst[lp.var]] != lp.extent for lp in u.loops):
        return None
    return subst


def _apply(kernel: Kernel, prog: Program, folds: list[_Fold], facts) -> None:
    operand = _scaled_operands(kernel, folds, facts)
    scaled: dict[tuple[str, str], str] = {}  # (operand buffer, lr buffer) -> its scaled copy
    placed: dict[str, list[Stage]] = {}  # update stage name -> the stages that replace it
    dropped = set()
    for f in folds:
        i = operand.get(f.grad.name)
        if i is None:
            continue
        a = f.grad.ins[i]
        key = (a.buffer, f.lr.buffer)
        new = []
        if key not in scaled:
            scaled[key], new = _scale_stages(kernel, prog, a.buffer, f.lr, facts)
        extents = {lp.var: lp.extent for lp in f.grad.loops}
        p = replace(f.update.out, index=tuple(substitute(i, {v: Affine.var(w) for v, w in f.subst.items()}, extents)
                                              for i in f.update.out.index))
        ins = list(f.grad.ins)
        ins[i] = replace(a, buffer=scaled[key])
        new.append(replace(f.grad, name=f.update.name, out=p, ins=(*ins, p),
                           origin=f"{f.grad.origin}; {f.scale.origin}; {f.update.origin}",
                           source=f.grad.source or f.update.source))
        placed[f.update.name] = new
        dropped |= {f.grad.name, f.scale.name}
        for b in (f.grad.out.buffer, f.scale.out.buffer):
            del kernel.buffers[b]
    stages = []
    for st in prog.stages:
        if st.name in placed:
            stages += placed[st.name]
        elif st.name not in dropped:
            stages.append(st)
    prog.stages = stages


def _scaled_operands(kernel: Kernel, folds: list[_Fold], facts) -> dict[str, int]:
    """Which operand of each reduction is scaled by ``-lr`` (None: the update stays unfolded). An operand with a
    profiled range, preferring one that several folds read (a layer's output gradient serves its weight and its
    bias), then the smaller; and only where scaling it is a pass over no more values than the update's: the
    operand is no larger than some parameter whose update it folds (a linear layer's output gradient, 16 x 32,
    against its weight, 32 x 64), never a convolution's output gradient (16 x 4 x 8 x 8 against 4 x 1 x 3 x 3
    weights), whose update stays one pass over the weights."""
    uses: dict[str, int] = {}
    for f in folds:
        for a in f.grad.ins:
            uses[a.buffer] = uses.get(a.buffer, 0) + 1
    chosen = {}
    for f in folds:
        options = [i for i, a in enumerate(f.grad.ins) if facts.absmax.get(a.buffer, 0.0) > 0
                   and kernel.buffers[a.buffer].kind in ("activation", "gradient")]
        if options:
            chosen[f.grad.name] = max(options, key=lambda i: (uses[f.grad.ins[i].buffer],
                                                               -kernel.buffers[f.grad.ins[i].buffer].size))
    grads = {f.grad.name: f for f in folds}
    worth = {grads[n].grad.ins[i].buffer for n, i in chosen.items()
             if kernel.buffers[grads[n].grad.ins[i].buffer].size <= kernel.buffers[grads[n].update.out.buffer].size}
    return {n: i for n, i in chosen.items() if grads[n].grad.ins[i].buffer in worth}


def _scale_stages(kernel: Kernel, prog: Program, name: str, lr: Access, facts) -> tuple[str, list[Stage]]:
    """``s = 0 - a * lr`` over all of buffer ``name`` (two stages, fused into one ``msub`` after
    quantization): ``(s, [stages])``."""
    buf = kernel.buffers[name]
    loops = tuple(Loop(f"d{d}", n) for d, n in enumerate(buf.shape))
    whole = Access(name, tuple(Affine.var(lp.var) for lp in loops))
    product, scaled = _unique(kernel, f"{prog.name}_lr_{name}"), _unique(kernel, f"{prog.name}_neg_lr_{name}")
    for b, sign in ((product, 1), (scaled, -1)):
        kernel.buffers[b] = Buffer(b, buf.shape, buf.fmt, "temp", "scale", None, "")
        kernel.meta.setdefault(LR_SCALED_KEY, {})[b] = [name, sign, lr.buffer]
    zero = _zero(kernel, facts)
    lr = replace(lr, index=())  # a kernel of one model: the learning rate is a scalar
    origin = f"the SGD step's -lr * {name}"
    return scaled, [
        Stage(f"{prog.name}_lr_{name}", "mul", loops, replace(whole, buffer=product), (whole, lr), origin=origin),
        Stage(f"{prog.name}_neg_lr_{name}", "sub", loops, replace(whole, buffer=scaled),
              (Access(zero, ()), replace(whole, buffer=product)), origin=origin)]


def _zero(kernel: Kernel, facts) -> str:
    """A constant 0 (an existing one, else a new ``k_zero``)."""
    for b, values in facts.const_values.items():
        if kernel.buffers.get(b) is not None and kernel.buffers[b].shape == () and tuple(values) == (0.0,) \
                and kernel.buffers[b].kind == "const":
            return b
    name = _unique(kernel, "k_zero")
    kernel.buffers[name] = Buffer(name, (), next(iter(kernel.buffers.values())).fmt, "const", "const", None, "zero")
    facts.const_values[name] = (0.0,)
    return name


def _unique(kernel: Kernel, name: str) -> str:
    out, i = name, 1
    while out in kernel.buffers:
        out, i = f"{name}_{i}", i + 1
    return out
