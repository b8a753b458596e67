"""Model groups: a kernel stacked on a model axis runs its models a group at a time.

A stacked kernel (``lower/model_axis.py``) computes every stage for all N models before the next
stage, so each temporary holds N models' rows. With groups of ``size`` models, each program runs its
stages once per group (``Program.groups = N / size``, the group index ``GROUP_VAR``): temporaries
keep one group's rows, while parameters, per-model constants and outputs keep all N, indexed
``GROUP_VAR * size + MODEL_VAR``. A group's models are what the datapath computes side by side
(``Stage.model_lanes`` divides the group size): 30 digits MLPs hold 250 BRAM36 as one group and a
quarter of that in groups of one.
"""

from __future__ import annotations

from dataclasses import replace

from fx2fpga_runtime.ir import GROUP_VAR, MODEL_VAR, Access, Affine, Kernel, Loop, Stage


def model_count(kernel: Kernel) -> int:
    """The models on the model axis (groups included); 1 for a kernel not stacked."""
    for prog in kernel.programs.values():
        for st in prog.stages:
            for lp in st.loops:
                if lp.var == MODEL_VAR:
                    return lp.extent * prog.groups
    return 1


def group_size(kernel: Kernel) -> int:
    """The models of one group (all of them for a kernel without groups)."""
    return max((lp.extent for st in kernel.stages() for lp in st.loops if lp.var == MODEL_VAR), default=1)


def regroup(kernel: Kernel, size: int) -> Kernel:
    """Run ``kernel`` (stacked, without groups yet) in groups of ``size`` models, in place; a kernel in groups of
    ``size`` already is left as it is (the tile step may assign lanes more than once)."""
    n = model_count(kernel)
    if size == n or n == 1 or (group_size(kernel) == size and all(p.groups == n // size
                                                                    for p in kernel.programs.values())):
        return kernel
    if n % size or any(p.groups != 1 for p in kernel.programs.values()):
        raise ValueError(f"groups of {size} models: {n} models must split evenly, and only once")
    per_model = {a.buffer for st in kernel.stages() for a in (st.out, *st.ins)
                 if a.index and a.index[0] == Affine.var(MODEL_VAR)}
    temps = {b for b in per_model if kernel.buffers[b].role == "temp"}
    for b in temps:
        buf = kernel.buffers[b]
        buf.shape = (size, *buf.shape[1:])
    whole = per_model - temps
    for prog in kernel.programs.values():
        prog.groups = n // size
        prog.stages = [_grouped(st, whole, size) for st in prog.stages]
    return kernel


def _grouped(st: Stage, whole: set[str], size: int) -> Stage:
    def acc(a: Access) -> Access:
        if a.buffer in whole and a.index and a.index[0] == Affine.var(MODEL_VAR):
            return replace(a, index=(Affine(((GROUP_VAR, size), (MODEL_VAR, 1))), *a.index[1:]))
        return a

    loops = tuple(Loop(lp.var, size) if lp.var == MODEL_VAR else lp for lp in st.loops)
    return replace(st, loops=loops, out=acc(st.out), ins=tuple(acc(a) for a in st.ins), attrs=dict(st.attrs))
