"""Program order for the side stream: stages it may run come early, with a multiply-accumulate after them.

The side stream (``passes/streams.py``) runs a stage beside the main-stream stages that come after it in program
order and touch none of its memories, up to the first that does (its *window*). The lowering's order is the
graph's: a backward's ``-lr * g`` scaling (``msub``) comes right before the weight update that reads it, and a bias
gradient (``sum``) after its weight's update, at the end of the program, with nothing after it. Two moves give such
stages windows, each keeping every pair of stages that touch one memory (a read and a write, or two writes) in
order, so every stage reads what it read before and the results do not change, bit for bit:

- *hoist*: a stage the side stream may run moves up to just after the last stage before it that it must follow;
- *pull*: where such a stage is followed by one that must follow it, the next multiply-accumulate that may move
  there (it must follow none of the stages it passes) is pulled in between, so the side stage runs beside it.

Stages never move above a program's first stage (it may take the input stream as it arrives:
``schedule.fuse_input_stream``).
"""

from __future__ import annotations

from fx2fpga_runtime.ir import Kernel, Stage

from . import streams


def must_follow(later: Stage, earlier: Stage) -> bool:
    """Whether ``later`` must stay after ``earlier``: one writes a memory the other reads or writes."""
    reads_e, reads_l = {a.buffer for a in earlier.ins}, {a.buffer for a in later.ins}
    return earlier.out.buffer in reads_l | {later.out.buffer} or later.out.buffer in reads_e


def ordered(stages: list[Stage], kernel: Kernel) -> list[Stage]:
    """``stages`` (one program's, in order) hoisted and pulled (see the module doc)."""
    out = list(stages[:1])
    for st in stages[1:]:  # hoist
        at = len(out)
        if streams.side_runnable(st, kernel):
            while at > 1 and not must_follow(st, out[at - 1]):
                at -= 1
        out.insert(at, st)
    i = 1
    while i < len(out) - 1:  # pull
        if streams.side_runnable(out[i], kernel) and must_follow(out[i + 1], out[i]):
            j = next((j for j in range(i + 2, len(out)) if streams.shares_the_engine(out[j])
                      and not any(must_follow(out[j], out[m]) for m in range(i, j))), None)
            if j is not None:
                out.insert(i + 1, out.pop(j))
        i += 1
    return out


def run(kernel: Kernel) -> Kernel:
    """Order every program's stages for the side stream (in place)."""
    for prog in kernel.programs.values():
        prog.stages = ordered(prog.stages, kernel)
    return kernel
