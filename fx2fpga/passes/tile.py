"""Tiling, first form: how many lanes (parallel datapath copies) each stage gets.

A matmul-like stage (``mac``) gets ``lanes`` copies of its multiply-accumulate unit working
on consecutive outputs of its innermost non-reduced loop; the lane count is the largest
divisor of that loop's extent not above the request, so every lane has equal work and the
arrays partition evenly. Other stages keep one lane. The resource-driven choice of lanes
under the board's budget is a later pass.
"""

from __future__ import annotations

from fx2fpga_runtime.ir import Kernel, Stage


def lane_count(extent: int, requested: int) -> int:
    """The largest divisor of ``extent`` that is at most ``requested``."""
    return max(d for d in range(1, min(extent, requested) + 1) if extent % d == 0)


def choose_lanes(stage: Stage, requested: int) -> None:
    if stage.op != "mac" or requested <= 1:
        return
    free = [lp for lp in stage.loops if lp.var not in stage.reduce and lp.extent > 1]
    if not free:
        return
    loop = free[-1]
    stage.lane_var = loop.var
    stage.lanes = lane_count(loop.extent, requested)
    if stage.lanes == 1:
        stage.lane_var = None


def run(kernel: Kernel, lanes: int) -> Kernel:
    """Set ``lanes``/``lane_var`` on every stage (``lanes`` requested per matmul stage)."""
    if lanes < 1:
        raise ValueError(f"lanes must be at least 1, got {lanes}")
    for stage in kernel.stages():
        choose_lanes(stage, lanes)
    return kernel
