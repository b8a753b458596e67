"""The compiler pipeline: named steps, run in order, each ``run(obj, ctx) -> obj``.

Print ``PIPELINE`` to see it; ``fx2fpga.compile(..., until="quantize")`` stops after a step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CompileContext:
    """Everything a step may read: the user's request and the target."""

    model: Any
    example_inputs: tuple
    train: Any
    precision: Any
    lanes: int | str
    target: Any
    name: str
    notes: dict = field(default_factory=dict)  # step name -> lines for report.md
    progress: Callable[[str], None] | None = None


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Any, CompileContext], Any]
    doc: str


def _trace(_, ctx: CompileContext):
    from ..frontend import trace

    graphs = [trace(ctx.model, ctx.example_inputs)]
    if ctx.train is not None:
        graphs.append(trace(ctx.model, ctx.example_inputs, ctx.train))
    return graphs


def _lower(graphs, ctx: CompileContext):
    from .. import lower

    return lower.run(graphs, ctx.name)


def _quantize(kernel, ctx: CompileContext):
    from . import quantize

    return quantize.run(kernel, ctx.precision)


def _tile(kernel, ctx: CompileContext):
    from . import tile

    return tile.run(kernel, ctx.lanes, ctx.target)


PIPELINE: list[Step] = [
    Step("trace", _trace, "torch.export / make_fx: the inference graph and the SGD-step joint graph"),
    Step("lower", _lower, "ATen ops -> kernel IR stages (loop nests); views become index maps"),
    Step("quantize", _quantize, "fixed-point formats per buffer and accumulator; function tables"),
    Step("tile", _tile, "lanes (parallel datapath copies) per stage"),
]


def step_names() -> list[str]:
    return [s.name for s in PIPELINE]


def run_pipeline(ctx: CompileContext, until: str | None = None):
    """Run the steps in order (up to and including ``until``); returns the last result."""
    if until is not None and until not in step_names():
        raise ValueError(f"unknown step {until!r}; steps: {', '.join(step_names())}")
    obj = None
    for i, step in enumerate(PIPELINE, 1):
        t0 = time.perf_counter()
        obj = step.run(obj, ctx)
        if ctx.progress is not None:
            ctx.progress(f"[{i}/{len(PIPELINE)}] {step.name:9s} {time.perf_counter() - t0:5.2f} s  ({step.doc})")
        if step.name == until:
            break
    return obj
