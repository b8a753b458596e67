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

A pair fuses when the temporary is read by nothing but the second stage, over the same loops and indices, and
the first stage is right before it. A stochastically rounded temporary does not fuse (its rounding draws).
"""

from __future__ import annotations

from dataclasses import replace

from fx2fpga_runtime.ir import Kernel, Stage
from fx2fpga_runtime.ops import COMPARISONS, compare_select_op, is_compare_select


def run(kernel: Kernel) -> Kernel:
    """Fuse every ``mul`` -> ``sub`` pair computing ``a - b * c``, every comparison -> ``select`` pair and every
    ``mac`` -> ``relu`` pair of ``kernel``'s programs (in place)."""
    reads = kernel.read_counts()
    kept = kernel.io_buffers() | set(kernel.params)
    for prog in kernel.programs.values():
        out, i = [], 0
        while i < len(prog.stages):
            a = prog.stages[i]
            b = prog.stages[i + 1] if i + 1 < len(prog.stages) else None
            fused = _fused(a, b, kernel) if b is not None and _linked(a, b, kernel, reads, kept) else None
            if fused is not None:
                out.append(fused)
                if is_compare_select(fused.op) and kernel.buffers[a.out.buffer].source:  # the graph's node
                    kernel.meta.setdefault("fused_decisions", {})[fused.name] = kernel.buffers[a.out.buffer].source
                del kernel.buffers[a.out.buffer]
                i += 2
            else:
                out.append(a)
                i += 1
        prog.stages = out
    return kernel


def _linked(a: Stage, b: Stage, kernel: Kernel, reads: dict, kept: set) -> bool:
    """``a``'s output is a temporary that only ``b`` reads, element for element, as its operand ``slot``."""
    t = a.out.buffer
    slot = {"sub": 1, "select": 0, "relu": 0}.get(b.op)
    kept_loops = tuple(lp for lp in a.loops if lp.var not in a.reduce)  # a reduction's output points
    return (slot is not None and not b.reduce and (a.op == "mac" if b.op == "relu" else not a.reduce)
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
    if a.op in COMPARISONS and b.op == "select":
        return replace(b, op=compare_select_op(a.op), ins=(a.ins[0], a.ins[1], b.ins[1], b.ins[2]), origin=origin,
                       source=b.source or a.source)
    return None
