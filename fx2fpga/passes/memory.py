"""Memory sharing: temporaries whose lifetimes do not overlap use the same on-chip array.

A temp buffer lives from the stage that first writes it to the stage that last reads it,
within one program; programs never run at once and temps carry nothing between calls, so
temps of different programs may always share. Buffers share only with an identical shape
and format (the same C++ array type). Assignment is greedy in stage order (interval
colouring), deterministic. Arrays holding two tensors or more are named ``mem<k>`` (a tensor
alone keeps its name); ``kernel.meta["memory"]`` records which tensors each shared one holds.
"""

from __future__ import annotations

from dataclasses import replace

from fx2fpga_runtime.ir import Access, Kernel


def _live_ranges(kernel: Kernel) -> list[tuple[str, str, int, int]]:
    """(program, buffer, first stage, last stage) of every temp buffer, in program order."""
    ranges: dict[str, list] = {}
    for prog in kernel.programs.values():
        for i, st in enumerate(prog.stages):
            for acc in (st.out, *st.ins):
                if kernel.buffers[acc.buffer].role != "temp":
                    continue
                r = ranges.setdefault(acc.buffer, [prog.name, i, i])
                if r[0] != prog.name:
                    raise ValueError(f"temp buffer {acc.buffer} is used by programs {r[0]} and {prog.name}")
                r[2] = i
    return [(p, b, lo, hi) for b, (p, lo, hi) in ranges.items()]


def run(kernel: Kernel) -> Kernel:
    """Merge temp buffers with disjoint lifetimes, renaming them in every stage."""
    slots: list[dict] = []  # {"name", "shape", "fmt", "program", "free_after", "holds"}
    rename: dict[str, str] = {}
    for prog, buf_name, first, last in _live_ranges(kernel):
        buf = kernel.buffers[buf_name]
        slot = next((s for s in slots if s["shape"] == buf.shape and s["fmt"] == buf.fmt
                     and (s["program"] != prog or s["free_after"] < first)), None)
        if slot is None:
            slot = {"shape": buf.shape, "fmt": buf.fmt, "holds": []}
            slots.append(slot)
        slot.update(program=prog, free_after=last)
        slot["holds"].append(buf_name)
    slots = [s for s in slots if len(s["holds"]) > 1]  # a tensor alone in its array keeps its name
    for k, slot in enumerate(slots):
        slot["name"] = f"mem{k}"
        while slot["name"] in kernel.buffers:  # a model's own name: do not clash with it
            slot["name"] += "_"
        rename.update({b: slot["name"] for b in slot["holds"]})
    if not rename:
        return kernel
    shared = {}
    for slot in slots:
        first = kernel.buffers[slot["holds"][0]]
        shared[slot["name"]] = replace(first, name=slot["name"], source=", ".join(slot["holds"]))
    buffers = {}
    for name, buf in kernel.buffers.items():  # keep declaration order: each mem at its first tenant
        target = rename.get(name)
        if target is None:
            buffers[name] = buf
        elif target not in buffers:
            buffers[target] = shared[target]
    kernel.buffers = buffers

    def fix(acc: Access) -> Access:
        return Access(rename.get(acc.buffer, acc.buffer), acc.index, acc.guard)

    for st in kernel.stages():
        st.out, st.ins = fix(st.out), tuple(fix(a) for a in st.ins)
    kernel.meta["memory"] = {s["name"]: list(s["holds"]) for s in slots}
    return kernel
