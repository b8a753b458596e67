"""Memory sharing: temporaries whose lifetimes do not overlap use the same on-chip array.

A temp buffer lives from the stage that first writes it to the stage that last reads it,
within one program; programs never run at once and temps carry nothing between calls, so
temps of different programs may always share. Buffers share only with an identical shape
and format (the same C++ array type). Assignment is greedy in stage order (interval
colouring), deterministic. Arrays holding two tensors or more are named ``mem<k>`` (a tensor
alone keeps its name); ``kernel.meta["memory"]`` records which tensors each shared one holds.

A program whose model groups may run pipelined (``passes/pipeline_groups.py``: the stages from a cut on lag one
group) runs its two parts at once, for neighbouring groups. There temps share only within one part: a temp of the
leading part and one of the lagging part, or a temp that crosses the cut (the logits) and any other, would be one
memory both parts touch, which the side stream may not run beside the other part's stages (``passes/streams.py``).
Session 27: sharing the 30-MLP step's logits with the softmax chain's temps kept that chain on the main stream,
39,408 cycles; kept apart, 36,131 at the same resources.
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


def _part(cut: int | None, first: int, last: int) -> str:
    """Which part of a program a temp living over stages ``first..last`` belongs to: ``lead`` (before ``cut``),
    ``lag`` (from it on), ``both`` (across it); ``lead`` for a program without a cut."""
    if cut is None or last < cut:
        return "lead"
    return "lag" if first >= cut else "both"


def run(kernel: Kernel, cuts: dict[str, int] | None = None) -> Kernel:
    """Merge temp buffers with disjoint lifetimes, renaming them in every stage. ``cuts``: program -> the stage
    where its lagging part would start if its groups run pipelined (temps then share within one part only)."""
    cuts = cuts or {}
    slots: list[dict] = []  # {"name", "shape", "fmt", "program", "part", "free_after", "holds"}
    rename: dict[str, str] = {}
    for prog, buf_name, first, last in _live_ranges(kernel):
        buf = kernel.buffers[buf_name]
        part = _part(cuts.get(prog), first, last)
        slot = next((s for s in slots if s["shape"] == buf.shape and s["fmt"] == buf.fmt
                     and (s["program"] != prog or (s["free_after"] < first and s["part"] == part != "both"))),
                    None)
        if slot is None:
            slot = {"shape": buf.shape, "fmt": buf.fmt, "holds": []}
            slots.append(slot)
        slot.update(program=prog, part=part, free_after=last)
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
