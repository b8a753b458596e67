"""Fusion: two elementwise stages whose temporary only links them become one stage.

- **A product subtracted**, ``a - b * c``, becomes ``msub`` (SGD's weight update ``p - lr * g``). SGD lowers its
  update to two stages: ``t = lr * g`` (a ``mul``, whose result is assigned to ``t``'s format) and ``p = p - t``
  (a ``sub``). Fused, ``p - [lr * g]`` assigns the product to ``t``'s format (``attrs['mid']``) before the
  subtraction: the same values, bit for bit, in one pass and without ``t`` (also, e.g., the range reduction
  ``x - 2 pi k`` of ``sin``).
- **A comparison and the select that reads it**, ``m = a <= b; r = m ? x : y``, becomes ``le_select``
  (``r = a <= b ? x : y``; the same for ``eq`` .. ``ge``): ReLU's backward (``where(h <= 0, 0, g)``) and
  ``where`` on a comparison. The comparison's 1-bit mask is gone, and one phase with it; the emulator keeps the
  decisions under ``ops.decision_name(stage)`` and ``kernel.meta["fused_decisions"]`` names each one's graph
  node, so the decisions a kernel took stay readable (tests/error_bounds.py follows them).

- **A multiply-accumulate and the ReLU reading it**, ``h = relu(x @ w + b)``, becomes a ``mac`` whose result
  goes through ReLU as it is written (``attrs['then'] = 'relu'``), where the ReLU's output has the mac's format.
- **A multiply-accumulate and ReLU's backward reading it**, ``g = where(h <= 0, 0, d @ w)`` (a ``le_select``
  whose bound and chosen value are constant zeros), becomes a ``mac`` whose result is written as 0 where the
  gate ``h`` is at most 0 (``attrs['then'] = 'relu_mask'``; ``h`` is appended to its inputs,
  ``ops.epilogue_inputs``), where the select's output has the mac's format. The select's decisions stay readable
  under the mac's name.

A pair fuses when the temporary is read by nothing but the second stage, over the same loops and indices, and
the first stage is right before it. A stochastically rounded temporary does not fuse (its rounding draws). The
pairs are fused until none is left, so a fused compare-select can then fuse with the mac before it.
"""

from __future__ import annotations

from dataclasses import replace

from fx2fpga_runtime.ir import Kernel, Stage
from fx2fpga_runtime.ops import COMPARISONS, compare_select_op, is_compare_select, then_relu_mask


def run(kernel: Kernel) -> Kernel:
    """Fuse every ``mul`` -> ``sub`` pair computing ``a - b * c``, every comparison -> ``select`` pair, every
    ``mac`` -> ``relu`` pair and every ``mac`` -> ReLU-backward pair of ``kernel``'s programs (in place)."""
    kept = kernel.io_buffers() | set(kernel.params)
    while any([_fuse_pairs(prog, kernel, kernel.read_counts(), kept) for prog in kernel.programs.values()]):
        pass
    return kernel


def _fuse_pairs(prog, kernel: Kernel, reads: dict, kept: set) -> bool:
    """One sweep over ``prog``'s stages, fusing each linked pair; whether any fused."""
    out, i = [], 0
    while i < len(prog.stages):
        a = prog.stages[i]
        b = prog.stages[i + 1] if i + 1 < len(prog.stages) else None
        fused = _fused(a, b, kernel) if b is not None and _linked(a, b, kernel, reads, kept) else None
        if fused is None:
            out.append(a)
            i += 1
            continue
        out.append(fused)
        decisions = kernel.meta.get("fused_decisions", {})
        if is_compare_select(fused.op) and kernel.buffers[a.out.buffer].source:  # the graph's node
            kernel.meta.setdefault("fused_decisions", {})[fused.name] = kernel.buffers[a.out.buffer].source
        elif then_relu_mask(fused) and b.name in decisions:  # the select's decisions, now the mac's
            decisions[fused.name] = decisions.pop(b.name)
        del kernel.buffers[a.out.buffer]
        i += 2
    changed = len(out) < len(prog.stages)
    prog.stages = out
    return changed


def _linked(a: Stage, b: Stage, kernel: Kernel, reads: dict, kept: set) -> bool:
    """``a``'s output is a temporary that only ``b`` reads, element for element, as its operand ``slot``."""
    t = a.out.buffer
    slot = {"sub": 1, "select": 0, "relu": 0, "le_select": 3}.get(b.op)
    kept_loops = tuple(lp for lp in a.loops if lp.var not in a.reduce)  # a reduction's output points
    return (slot is not None and not b.reduce and (a.op == "mac" if b.op in ("relu", "le_select") else not a.reduce)
            and kernel.buffers[t].role == "temp" and kernel.buffers[t].fmt.rounding != "SR"
            and t not in kept and reads.get(t) == 1
            and b.ins[slot].buffer == t and all(x.buffer != t for i, x in enumerate(b.ins) if i != slot)
            and kept_loops == b.loops and b.ins[slot].index == a.out.index and not b.ins[slot].guard
            and not a.out.guard and all(x.buffer != t for x in a.ins))


def _fused(a: Stage, b: Stage, kernel: Kernel) -> Stage | None:
    """The one stage doing ``a`` then ``b`` (None: no such op)."""
    origin = f"{a.origin}; {b.origin}" if a.origin else b.origin
    if a.op == "mul" and b.op == "sub":
        return replace(b, op="msub", ins=(b.ins[0], a.ins[0], a.ins[1]),
                       attrs={"mid": str(kernel.buffers[a.out.buffer].fmt)}, origin=origin,
                       source=b.source or a.source)
    if a.op == "mac" and b.op == "relu" and not a.attrs and kernel.buffers[b.out.buffer].fmt == kernel.buffers[
            a.out.buffer].fmt:
        return replace(a, out=b.out, attrs={"then": "relu"}, origin=origin, source=a.source or b.source)
    if a.op == "mac" and b.op == "le_select" and not a.attrs and _zero_scalars(b.ins[1:3], kernel) and kernel.buffers[
            b.out.buffer].fmt == kernel.buffers[a.out.buffer].fmt:
        return replace(a, out=b.out, ins=(*a.ins, b.ins[0]), attrs={"then": "relu_mask"}, origin=origin,
                       source=a.source or b.source)
    if a.op in COMPARISONS and b.op == "select":
        return replace(b, op=compare_select_op(a.op), ins=(a.ins[0], a.ins[1], b.ins[1], b.ins[2]), origin=origin,
                       source=b.source or a.source)
    return None


def _zero_scalars(accesses, kernel: Kernel) -> bool:
    """Every access reads a constant whose every value is 0."""
    return all(kernel.buffers[x.buffer].role == "const" and kernel.buffers[x.buffer].init is not None
               and not any(kernel.buffers[x.buffer].init) for x in accesses)
