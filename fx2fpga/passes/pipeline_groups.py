"""Pipelined model groups: the softmax chain of one group beside the multiply-accumulates of the next.

A program of model groups (``passes/model_groups.py``) runs its stages once per group, one group after another, so
within a pass every stage waits for the one before: the ~15 short elementwise and reduction stages of a training
step's loss (the softmax chain) take their cycles between the forward and the backward multiply-accumulates, and
nothing else can run beside them (session 20's side stream finds no independent stage within one model). Two
groups are independent, though. Here the stages from a cut on *lag* one pass (``Stage.attrs["lag"] = 1``): the
program makes ``groups + 1`` passes, and pass ``p`` runs the first stages for group ``p`` and the lagging ones for
group ``p - 1`` (``Program.pass_stages``; the first and the last pass run one part only). The lagging stages that
do not multiply-accumulate and that nothing lagging before them feeds (the chain) go to the front of the pass, so
the side stream (``passes/streams.py``) runs them beside the next group's forward multiply-accumulates.

Each group still computes what it computes alone: its stages run in the program's order (the first part in pass
``g``, the lagging part, chain first, in pass ``g + 1``), and a memory that stages of both parts touch is double
buffered (a leading dim of 2, indexed ``GROUP_VAR % 2``; other programs use copy 0), so two neighbouring groups
never share a word of it. Parameters and outputs are indexed by the group already; memories only one part touches
hold one group's values within a pass.

In the RTL the lagging stages read the group counter less one, and a stage's writes are off in the pass where it
has no group, where it also idles: one issue, then a barrier (``schedule.Phase.idle_in``; the model runs each pass
with its own phases' issues, ``streams.timeline``). Not for a kernel whose stages round stochastically (their
random bits count every issue), lanes over the model loop, or buffers in DDR.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from fx2fpga_runtime import stochastic
from fx2fpga_runtime.ir import GROUP_VAR, LAG, Access, Affine, Kernel, Stage, stage_lag

from . import side_order, streams, tile

PARITY = Affine(((GROUP_VAR, 1),), mod=2)  # the copy of a double-buffered memory a group uses


def pipelinable(kernel: Kernel, program: str) -> bool:
    """Whether ``program`` of ``kernel`` may run its groups pipelined (see the module doc)."""
    prog = kernel.programs.get(program)
    if prog is None or prog.groups < 2 or any(stage_lag(st) for st in prog.stages):
        return False
    if kernel.ddr_buffers() or any(st.model_lanes > 1 for st in prog.stages):
        return False
    return not _rounds_stochastic(kernel, program)


def _rounds_stochastic(kernel: Kernel, program: str) -> bool:
    """Whether a stage of ``program`` rounds stochastically (its random bits count every issue: never pipelined)."""
    return any(stochastic.rounds_stochastic(st, kernel) for st in kernel.programs[program].stages)


def prospective_cut(kernel: Kernel, program: str) -> int | None:
    """Where ``program``'s groups would lag if they run pipelined, decided before its groups and lanes are
    (``loss_cut``; the memory sharing step keeps the two parts apart): None where they never may (stages rounding
    stochastically)."""
    return None if _rounds_stochastic(kernel, program) else loss_cut(kernel, program)


def cuts(kernel: Kernel, program: str) -> list[int]:
    """Where the lagging part may start: before each stage that is not a multiply-accumulate and follows one (the
    end of a run of multiply-accumulates: the forward's, for a training step's loss)."""
    stages = kernel.programs[program].stages
    return [i for i in range(1, len(stages))
            if streams.shares_the_engine(stages[i - 1]) and not streams.shares_the_engine(stages[i])]


def loss_cut(kernel: Kernel, program: str) -> int | None:
    """The cut right after the forward: after the training step's twin of the inference's last stage (its output
    layer, ``tile.twin_key``) where that is a cut, else before the longest run of stages that are not
    multiply-accumulates (by their iterations). None without a cut."""
    stages, options = kernel.programs[program].stages, cuts(kernel, program)
    infer = kernel.programs.get("infer")
    if infer is not None and infer is not kernel.programs[program] and infer.stages:
        output = tile.twin_key(kernel, infer.stages[-1])
        after = [i + 1 for i, st in enumerate(stages) if tile.twin_key(kernel, st) == output]
        if after and after[-1] in options:
            return after[-1]

    def run_after(i: int) -> int:
        end = next((j for j in range(i, len(stages)) if streams.shares_the_engine(stages[j])), len(stages))
        return sum(st.iterations for st in stages[i:end])
    return max(options, key=run_after, default=None)


def _buffers(stages: list[Stage]) -> set[str]:
    """The buffers the stages read or write."""
    return {b for st in stages for b in (st.out.buffer, *(a.buffer for a in st.ins))}


def _chain_first(kernel: Kernel, lagging: list[Stage], leading: list[Stage]) -> list[Stage]:
    """The lagging stages with those that the side stream may run (no multiply-accumulate, no stochastic rounding)
    and that no other lagging stage before them must precede moved to the front, each keeping its order; not one
    that writes what a leading stage reads (a parameter's update: the leading stage would wait for it)."""
    read_ahead = {a.buffer for st in leading for a in st.ins}
    front, rest = [], []
    for st in lagging:
        free = streams.side_runnable(st, kernel) and st.out.buffer not in read_ahead
        (front if free and not any(side_order.must_follow(st, r) for r in rest) else rest).append(st)
    return front + rest


def pipeline(kernel: Kernel, program: str, cut: int) -> Kernel:
    """A copy of ``kernel`` whose ``program`` runs its groups pipelined, lagging from stage ``cut`` on (see the
    module doc); ``kernel`` is not changed."""
    k = copy.deepcopy(kernel)
    prog = k.programs[program]
    first, lagging = prog.stages[:cut], prog.stages[cut:]
    for st in lagging:
        st.attrs[LAG] = 1
    chain = _chain_first(k, lagging, first)
    ahead = chain[:next((i for i, st in enumerate(chain) if streams.shares_the_engine(st)), len(chain))]
    prog.stages = side_order.ordered(ahead + first + chain[len(ahead):], k)
    doubled = sorted(b for b in _buffers(first) & _buffers(lagging) if k.buffers[b].role == "temp")
    for name in doubled:
        buf = k.buffers[name]
        buf.shape = (2, *buf.shape)
    for p in k.programs.values():
        index = PARITY if p is prog else Affine(())
        for st in p.stages:
            st.out = _double(st.out, doubled, index)
            st.ins = tuple(_double(a, doubled, index) for a in st.ins)
    k.meta["pipelined"] = {program: {"cut": cut, "double_buffered": doubled}}
    return k


def _double(a: Access, doubled: list[str], index: Affine) -> Access:
    return replace(a, index=(index, *a.index)) if a.buffer in doubled else a


def requested(kernel: Kernel, cut: int, program: str = "train_step") -> Kernel:
    """``pipeline`` at the user's ``cut`` (``compile(pipeline_groups=...)``), or a clear error where it cannot."""
    if not pipelinable(kernel, program):
        raise ValueError(f"pipeline_groups: the {program} program must run in 2 groups of models or more "
                         "(model_lanes= a group size), without lanes over the model loop, stochastic rounding or "
                         "buffers in DDR")
    if cut not in cuts(kernel, program):
        raise ValueError(f"pipeline_groups={cut}: the stages may lag from one of {cuts(kernel, program)} (after a "
                         "run of multiply-accumulates, before a stage that is not one)")
    return pipeline(kernel, program, cut)
