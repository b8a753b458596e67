"""Common subexpressions: a stage that computes what an earlier stage of its program already holds is dropped.

Traced training steps repeat work autograd does not share: cross-entropy's forward and backward each compare
the targets with the class indices (``eq(y, arange)``), over the same loops with the same operands. A stage is
the twin of an earlier one when both have the same op, loops, reduction, attributes, operand accesses and output
index, their outputs are temporaries of one shape and kind, and no stage in between writes either output or any
operand. The later one's readers then read the earlier one's buffer, and the later stage and buffer go: one
phase and one buffer fewer, and the same values, bit for bit (the twin's format is chosen once, from the range of
both); ``kernel.meta["aliases"]`` names, for each dropped buffer, the one holding its values. It runs right
after lowering (``lower.run``), on each model's kernel.
"""

from __future__ import annotations

from dataclasses import replace

from fx2fpga_runtime.ir import Kernel, Program, Stage

from ..handoffs import ALIASES_KEY, LOWERING_KEY


def run(kernel: Kernel) -> Kernel:
    """Drop every stage of ``kernel`` whose twin (above) comes earlier in its program (in place)."""
    kept = kernel.io_buffers() | set(kernel.params)
    facts = kernel.meta.get(LOWERING_KEY)
    for prog in kernel.programs.values():
        _run_program(kernel, prog, kept, facts)
    return kernel


def _signature(st: Stage, kernel: Kernel) -> tuple:
    out = kernel.buffers[st.out.buffer]
    return (st.op, st.loops, st.reduce, repr(sorted(st.attrs.items())), st.ins, st.out.index, st.out.guard,
            out.shape, out.kind)


def _run_program(kernel: Kernel, prog: Program, kept: set, facts) -> None:
    renamed: dict[str, str] = {}
    seen: dict[tuple, Stage] = {}
    stages = []
    for st in prog.stages:
        if renamed:
            st = replace(st, ins=tuple(replace(a, buffer=renamed.get(a.buffer, a.buffer)) for a in st.ins))
        out = st.out.buffer
        seen = {k: s for k, s in seen.items() if out not in {s.out.buffer, *(a.buffer for a in s.ins)}}
        stages.append(st)
        if kernel.buffers[out].role != "temp" or out in kept or out in {a.buffer for a in st.ins}:
            continue
        key = _signature(st, kernel)
        twin = seen.setdefault(key, st)
        if twin is not st:
            stages.pop()
            renamed[out] = twin.out.buffer
            kernel.meta.setdefault(ALIASES_KEY, {})[out] = twin.out.buffer
            if facts is not None and out in facts.absmax:
                facts.widen(twin.out.buffer, facts.absmax.pop(out))
            del kernel.buffers[out]
    prog.stages = stages
