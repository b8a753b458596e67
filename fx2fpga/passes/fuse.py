"""Fusion: a product subtracted, ``a - b * c``, becomes one stage (SGD's weight update ``p - lr * g``).

SGD lowers its update to two elementwise stages: ``t = lr * g`` (a ``mul``, whose result is assigned to
``t``'s format) and ``p = p - t`` (a ``sub``). Each runs over every weight, and ``t`` is a weight-sized
temporary. When ``t`` is read by nothing but that ``sub``, over the same loops and indices, the two
become one ``msub`` stage, ``p - [lr * g]``, whose product is assigned to ``t``'s format (``attrs['mid']``)
before the subtraction: the same values, bit for bit, in one pass and without ``t``. Any such pair fuses
(also, e.g., the range reduction ``x - 2 pi k`` of ``sin``).
"""

from __future__ import annotations

from dataclasses import replace

from fx2fpga_runtime.ir import Kernel, Stage


def run(kernel: Kernel) -> Kernel:
    """Fuse every ``mul`` -> ``sub`` pair of ``kernel``'s programs that computes ``a - b * c`` (in place)."""
    reads = kernel.read_counts()
    kept = kernel.io_buffers() | set(kernel.params)
    for prog in kernel.programs.values():
        out, i = [], 0
        while i < len(prog.stages):
            a = prog.stages[i]
            b = prog.stages[i + 1] if i + 1 < len(prog.stages) else None
            if b is not None and _fusable(a, b, kernel, reads, kept):
                out.append(_fused(a, b, kernel))
                del kernel.buffers[a.out.buffer]
                i += 2
            else:
                out.append(a)
                i += 1
        prog.stages = out
    return kernel


def _fusable(a: Stage, b: Stage, kernel: Kernel, reads: dict, kept: set) -> bool:
    """``b`` subtracts ``a``'s product, which nothing else reads, element for element."""
    t = a.out.buffer
    return (a.op == "mul" and b.op == "sub" and not a.reduce and not b.reduce
            and kernel.buffers[t].role == "temp" and kernel.buffers[t].fmt.rounding != "SR"
            and t not in kept and reads.get(t) == 1
            and b.ins[1].buffer == t and b.ins[0].buffer != t and a.loops == b.loops
            and b.ins[1].index == a.out.index and not b.ins[1].guard and not a.out.guard
            and all(x.buffer != t for x in a.ins))


def _fused(a: Stage, b: Stage, kernel: Kernel) -> Stage:
    return replace(b, op="msub", ins=(b.ins[0], a.ins[0], a.ins[1]),
                   attrs={"mid": str(kernel.buffers[a.out.buffer].fmt)},
                   origin=f"{a.origin}; {b.origin}" if a.origin else b.origin, source=b.source or a.source)
