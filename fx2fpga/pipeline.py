"""The compiler pipeline (``fx2fpga.PIPELINE``): named steps, run in order, each leaving its artifact
on the ``CompileContext``.

``print(fx2fpga.PIPELINE)`` lists them; ``fx2fpga.compile(..., until="tile")`` stops after a step and
returns its artifact (the table in ``PIPELINE`` says which). Later steps, and the ``Design``, read
the artifacts of earlier ones instead of computing them again: the schedule, for one, is computed
once per compile and serves the bank check, the RTL, the report and the manifest.

``compile()`` without ``out_dir`` runs the steps through ``schedule``; the emitting steps and
``write`` run when the project folder is first needed (``design.files()``, ``design.write()``,
``design.load("csim" | "rtl")``), so a design that only runs on the emulator never pays for them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for the annotations only: the steps import their modules when they run
    import torch.fx
    from fx2fpga_runtime.ir import Kernel

    from .api import Design
    from .backends.rtl.emit import RtlPlan
    from .passes.schedule import Schedule

OUTPUTS = ("hls", "rtl", "both")  # what the project folder holds: HLS C++, Verilog, or both


@dataclass
class CompileContext:
    """The user's request (first block) and every step's artifact (second block, in step order).

    A list of models compiled into one kernel: ``model`` is the list of modules, ``trains`` each
    one's ``SGD`` (None for inference), ``graphs`` one list of graphs per model.
    """

    model: Any
    example_inputs: tuple
    train: Any
    precision: Any
    lanes: int | str
    target: Any
    name: str
    outputs: str = "both"
    share_memory: bool = True
    example: dict = field(default_factory=dict)  # float arrays "x" (and "y"): the golden vectors' inputs
    out_dir: Path | None = None  # where ``write`` puts the project folder; None: nowhere (yet)
    progress: Callable[[str], None] | None = None
    notes: dict = field(default_factory=dict)  # step name -> lines for report.md
    trains: list | None = None  # a list of models: each one's SGD (None: one model, or inference)
    stack_models: bool = True  # models of one architecture on a model axis (lower/model_axis.py)
    model_lanes: int | str = "auto"  # models computed at once on that axis (a number, or "auto")
    saturation_counters: bool = False  # the generated C++ counts saturations (docs/saturation.md)
    fold_updates: bool = True  # plain SGD's update folded into the gradient's reduction (lower/update_fold.py)
    placement: Any = None  # places forced by the user: None, "ddr" or {buffer: "chip" | "ddr"} (passes/placement.py)
    pipeline_cut: int | None = None  # the training step's groups pipelined from this stage (passes/pipeline_groups.py)

    graphs: list | None = None  # trace: inference, then the training step (a list of models: one list per model)
    kernel: Kernel | None = None  # lower ... tile: the kernel IR, refined by each step (place: Buffer.place)
    quantization: list | None = None  # quantize: each tensor's SQNR on the example data (passes/quant_report.py)
    exploration: Any = None  # tile, when it explored: every design point (passes/explore.py)
    schedule: Schedule | None = None  # tile's bank check / schedule; None if the RTL cannot map the kernel
    schedule_error: Exception | None = None  # why there is no schedule
    rtl_plan: RtlPlan | None = None  # made once, from the schedule (Design.rtl_plan)
    rtl_error: str | None = None  # why there is no RTL plan
    vectors: list | None = None  # golden (command, in words, out words) from the emulator
    hls_files: dict | None = None  # emit HLS: hls/, src/, tb/ and the Vitis scripts ({} without HLS output)
    rtl_files: dict | None = None  # emit RTL: rtl/ and build_rtl.tcl ({} without RTL output)
    files: dict | None = None  # write: every file of the project folder
    design: Design | None = None  # write: the ``Design``
    done: list[str] = field(default_factory=list)  # the steps run so far

    @property
    def many_models(self) -> bool:
        """Whether a list of models is compiled into one kernel."""
        return isinstance(self.model, list)


@dataclass(frozen=True)
class Step:
    """One pipeline step: ``run(ctx)`` stores ``artifact`` (a ``CompileContext`` field) and returns it."""

    name: str
    run: Callable[[CompileContext], Any]
    doc: str
    artifact: str = ""  # the CompileContext field it leaves, e.g. "kernel"
    returns: str = ""  # the type of that artifact, for people


class Pipeline(list):
    """The steps in order; ``print`` shows one line per step."""

    def names(self) -> list[str]:
        return [s.name for s in self]

    def step(self, name: str) -> Step:
        """The step called ``name`` (case and ``_``/space insensitive); ValueError listing the steps if none."""
        key = name.strip().lower().replace("_", " ") if isinstance(name, str) else name
        for s in self:
            if s.name.lower() == key:
                return s
        raise ValueError(f"unknown step {name!r}; the steps are: {', '.join(self.names())}")

    def __str__(self) -> str:
        width = max(len(s.name) for s in self)
        ret = max(len(s.returns) for s in self)
        return "\n".join(f"{i:2d}. {s.name:{width}s} -> {s.returns:{ret}s}  {s.doc}" for i, s in enumerate(self, 1))

    def __repr__(self) -> str:
        return f"Pipeline([{', '.join(repr(n) for n in self.names())}])\n{self}"


def _trace_one(model, example_inputs, train) -> list[torch.fx.GraphModule]:
    from .frontend import trace

    graphs = [trace(model, example_inputs)]
    if train is not None:
        graphs.append(trace(model, example_inputs, train))
    return graphs


def _trace(ctx: CompileContext):
    if ctx.many_models:
        trains = ctx.trains or [None] * len(ctx.model)
        ctx.graphs = [_trace_one(m, ctx.example_inputs, t) for m, t in zip(ctx.model, trains, strict=True)]
    else:
        ctx.graphs = _trace_one(ctx.model, ctx.example_inputs, ctx.train)
    return ctx.graphs


def _lower(ctx: CompileContext):
    from . import lower

    if ctx.many_models:  # each model lowered alone, then merged into one kernel (lower/models.py)
        trains = ctx.trains or [None] * len(ctx.model)
        ctx.kernel = lower.run_models(ctx.graphs, ctx.name, [lower.describe_model(m, t) for m, t in
                                                            zip(ctx.model, trains, strict=True)],
                                      stack_models=ctx.stack_models, fold_updates=ctx.fold_updates)
    else:
        ctx.kernel = lower.run(ctx.graphs, ctx.name, ctx.fold_updates)
    return ctx.kernel


def _quantize(ctx: CompileContext):
    from .handoffs import DERIVED_KEY, LR_SCALED_KEY
    from .passes import quant_report, quantize

    ctx.kernel = quantize.run(ctx.kernel, ctx.precision)
    derived = ctx.kernel.meta.pop(DERIVED_KEY, [])  # formats that hold their derived range: for the report only
    if derived:
        ctx.notes["quantize"] = [f"derived range (docs/quantization.md): {line}" for line in derived]
    ctx.quantization = quant_report.run(ctx.graphs, ctx.kernel, ctx.example)
    ctx.kernel.meta.pop(LR_SCALED_KEY, None)  # (the report's hand-off: it never reaches kernel.json)
    quant_report.warn(ctx.quantization, stacklevel=4)  # the user's compile(): _quantize, run_pipeline, compile
    return ctx.kernel


def _fuse(ctx: CompileContext):
    from .passes import fuse

    ctx.kernel = fuse.run(ctx.kernel)
    return ctx.kernel


def _share_memory(ctx: CompileContext):
    from .passes import memory

    if ctx.share_memory:
        ctx.kernel = memory.run(ctx.kernel, _pipelinable_cuts(ctx))
    if ctx.saturation_counters:
        ctx.kernel.meta["saturation_counters"] = True
    return ctx.kernel


def _pipelinable_cuts(ctx: CompileContext) -> dict[str, int]:
    """Where the main program of a kernel of several models would lag its groups if they run pipelined
    (``pipeline_groups.prospective_cut``; the explorer and ``pipeline_groups=`` decide later whether they do): {}
    for one model, a program without such a cut, and where no group runs pipelined beside another (the HLS C++
    alone; a buffer forced to DDR)."""
    from .passes import explore, model_groups, pipeline_groups

    kernel, forced = ctx.kernel, ctx.placement
    ddr = forced == "ddr" or (isinstance(forced, dict) and "ddr" in forced.values())
    if ctx.outputs == "hls" or ddr or model_groups.model_count(kernel) < 2:
        return {}
    program = explore.main_program(kernel)
    cut = pipeline_groups.prospective_cut(kernel, program)
    return {} if cut is None else {program: cut}


def _order(ctx: CompileContext):
    from .passes import side_order

    return side_order.run(ctx.kernel)


def _place(ctx: CompileContext):
    from .errors import PlacementError
    from .passes import placement

    lines = placement.run(ctx.kernel, ctx.placement, ctx.target, automatic=ctx.outputs == "hls")
    if lines:
        ctx.notes["place"] = lines
    refusal = placement.rtl_refusal(ctx.kernel)
    if refusal and ctx.outputs == "rtl":
        raise PlacementError(refusal)
    return ctx.kernel


def _tile(ctx: CompileContext):
    from .errors import ResourceBudgetError
    from .passes import model_groups

    if _explores(ctx):
        return _tile_by_exploring(ctx)
    per_stage = isinstance(ctx.lanes, dict)
    if per_stage and ctx.model_lanes == "auto" and model_groups.model_count(ctx.kernel) > 1:
        raise ValueError("lanes given per stage take the models' group size as a number: model_lanes=<size> (the "
                         "design point's group_size)")
    tries = DEFAULT_LANES if ctx.lanes is None else [ctx.lanes]
    for lanes in tries:  # the default: the first of DEFAULT_LANES within the target's budget
        over = _assign_lanes(ctx, lanes)
        if not over:
            break
    if over:
        raise ResourceBudgetError(ctx.target.name, over, "Use fewer lanes (lanes=...), narrower formats "
                                  "(precision=...), a smaller batch, or a larger target (fx2fpga targets)."
                                  + _ddr_hint(over))
    if ctx.lanes is None and lanes != tries[0]:
        ctx.notes.setdefault("tile", []).append(
            f"lanes: {lanes} per stage (the default {tries[0]} is over the {ctx.target.name}'s budget by the HLS "
            f"estimate or the calibrated RTL model)")
    return ctx.kernel


def _ddr_hint(over: list) -> str:
    """The refusal's advice when block RAM is what is over: buffers in DDR (``passes/placement.py``)."""
    if not any(resource == "BRAM36" for resource, *_ in over):
        return ""
    return (" Or place buffers in DDR: outputs='hls' moves the largest there until the block RAM fits, or "
            "placement={'<buffer>': 'ddr'} forces them (the RTL cannot reach DDR yet).")


DEFAULT_LANES = (4, 2, 1)  # compile(lanes=None): 4 lanes per stage, or the most of these that fits the budget


def _assign_lanes(ctx: CompileContext, lanes) -> list:
    """Give the kernel's stages ``lanes`` (kept RTL-bankable; the schedule of the bank check is the "schedule"
    step's); what is over the target's budget, by the calibrated RTL model for a design point of the explorer
    (lanes per stage), by the HLS estimate and the RTL model for the default (``lanes=None``: the first of
    ``DEFAULT_LANES`` that fits both), else by the HLS estimate."""
    from .passes import estimate, pipeline_groups, schedule, tile

    tile.assign_lanes(ctx.kernel, lanes, ctx.target, 1 if ctx.model_lanes == "auto" else ctx.model_lanes)
    if ctx.pipeline_cut is not None:
        ctx.kernel = pipeline_groups.requested(ctx.kernel, ctx.pipeline_cut)
    ctx.schedule, ctx.schedule_error = None, None
    try:
        ctx.schedule = tile.keep_banks_mappable(ctx.kernel)
    except schedule.ScheduleError as e:  # not a lane problem: the RTL emitter reports it
        ctx.schedule_error = e
    over = estimate.resources(ctx.kernel, ctx.target).over_budget(ctx.target)
    if (isinstance(lanes, dict) or ctx.lanes is None) and _rtl_model_applies(ctx) and ctx.schedule is not None:
        rtl = _over_rtl_budget(ctx)  # the RTL must fit too: its LUTs, which the HLS estimate does not count
        return rtl if isinstance(lanes, dict) else rtl + [o for o in over if o[0] not in {r[0] for r in rtl}]
    return over


def _explores(ctx: CompileContext) -> bool:
    """Whether the tile step explores design points on the calibrated RTL model (``passes/explore.py``):
    ``lanes="auto"`` or, on a kernel stacked on a model axis, ``model_lanes="auto"`` (not with lanes given per
    stage); for a target whose RTL the model is calibrated for (xc7) and a folder with RTL."""
    from .passes import model_groups

    if isinstance(ctx.lanes, dict):
        return False
    wants = ctx.lanes == "auto" or (ctx.model_lanes == "auto" and model_groups.model_count(ctx.kernel) > 1)
    return wants and _rtl_model_applies(ctx)


def _rtl_model_applies(ctx: CompileContext) -> bool:
    """The calibrated RTL resource model judges the design: an xc7 target, a folder with RTL and a kernel the RTL
    can map as far as its places go (none in DDR: ``placement.rtl_refusal``)."""
    return ctx.target.family == "xc7" and ctx.outputs != "hls" and not ctx.kernel.ddr_buffers()


def _over_rtl_budget(ctx: CompileContext) -> list[tuple[str, float, float]]:
    """The resources the calibrated RTL model predicts beyond the target's: (name, needed, available)."""
    from .backends.rtl import emit as verilog
    from .passes import resources

    try:
        ctx.rtl_plan = verilog.plan(ctx.kernel, ctx.name, ctx.target.dsp_kind, ctx.schedule, ctx.target)
    except verilog.RtlCodegenError:
        return []  # the RTL step reports it
    return resources.rtl_resources(ctx.rtl_plan, ctx.target).over_budget(ctx.target)


def _tile_by_exploring(ctx: CompileContext):
    from .errors import ResourceBudgetError
    from .passes import explore, resources

    lanes = DEFAULT_LANES[0] if ctx.lanes is None else ctx.lanes  # models side by side explored at 4 lanes
    result, kernel, sched = explore.explore(ctx.kernel, ctx.target, lanes, ctx.model_lanes, ctx.name,
                                            ctx.progress)
    ctx.exploration = result
    if kernel is None:
        if not result.points:
            raise ResourceBudgetError(ctx.target.name, [], "No lane choice maps to the RTL.")
        least = min(result.points, key=lambda p: p.load)
        over = least.resources.over_allowance(ctx.target)
        raise ResourceBudgetError(ctx.target.name, over, f"No design point fits the explorer's allowance "
                                  f"({resources.allowance_text()}: the model's margin; the smallest point, "
                                  f"{least.label} lanes, is shown). Use narrower formats (precision=...), a smaller "
                                  "batch, fewer models, or a larger target.")
    ctx.kernel, ctx.schedule = kernel, sched
    return ctx.kernel


def _schedule(ctx: CompileContext):
    from .passes import schedule

    if ctx.schedule is None and ctx.schedule_error is None:  # only when tile's bank check did not run
        try:
            ctx.schedule = schedule.run(ctx.kernel)
        except schedule.ScheduleError as e:
            ctx.schedule_error = e
    return ctx.schedule


def design_of(ctx: CompileContext):
    """The ``Design`` over ``ctx``: made by ``fx2fpga.compile`` before the steps run (so the pipeline
    never imports the API that drives it)."""
    if ctx.design is None:
        raise ValueError("this CompileContext has no Design: run the pipeline through fx2fpga.compile")
    return ctx.design


def _emit_hls(ctx: CompileContext):
    from .project import folder

    ctx.hls_files = folder.hls_files(design_of(ctx)) if ctx.outputs in ("hls", "both") else {}
    return ctx.hls_files


def _emit_rtl(ctx: CompileContext):
    from .project import folder
    from .project.report import rtl_dsp_over_budget

    design = design_of(ctx)
    ctx.rtl_files = folder.rtl_files(design) if ctx.outputs in ("rtl", "both") else {}
    over = rtl_dsp_over_budget(design)
    if ctx.rtl_files and over:
        warnings.warn(over, stacklevel=2)
    return ctx.rtl_files



def folder_files(ctx: CompileContext) -> dict[str, str]:
    """Every file of the project folder (runs the emitting steps first, once)."""
    if ctx.files is None:
        from .project import folder

        run_pipeline(ctx, "emit RTL")
        ctx.files = folder.project_files(design_of(ctx))
    return ctx.files


def _write(ctx: CompileContext):
    from .project.writer import write_project

    files = folder_files(ctx)
    if ctx.out_dir is not None:
        ctx.out_dir = write_project(Path(ctx.out_dir), files)
    return design_of(ctx)


PIPELINE = Pipeline([
    Step("trace", _trace, "make_fx: the inference graph and the SGD-step joint graph",
         "graphs", "list[GraphModule]"),
    Step("lower", _lower, "ATen ops -> kernel IR stages (loop nests); views become index maps; repeated stages "
         "dropped; plain SGD's update folded into the gradient's reduction (fold_updates=False: off)",
         "kernel", "Kernel"),
    Step("quantize", _quantize, "fixed-point formats per buffer and accumulator; function tables; SQNR per tensor",
         "kernel", "Kernel"),
    Step("fuse", _fuse, "a product subtracted as one stage (msub): SGD's p - lr * g, without the lr * g temporary; "
         "a comparison and the one select reading it (le_select ...), without the mask; a matmul and the ReLU, or "
         "the ReLU's backward, reading it (mac then relu / relu_mask), without the unactivated result",
         "kernel", "Kernel"),
    Step("share memory", _share_memory, "temporaries with disjoint lifetimes share one array (share_memory=False: off)",
         "kernel", "Kernel"),
    Step("order", _order, "stages the side stream may run moved up, a multiply-accumulate pulled in after them: "
         "each a window of main-stream stages to run beside (the same results: no two stages touching one memory "
         "swap)", "kernel", "Kernel"),
    Step("place", _place, "each buffer on chip or in DDR: placement= forced; with outputs='hls' over the block "
         "RAM, the largest arrays in DDR until the estimate fits", "kernel", "Kernel"),
    Step("tile", _tile, "lanes (parallel datapath copies) per stage, kept RTL-bankable; the resource budget",
         "kernel", "Kernel"),
    Step("schedule", _schedule, "the RTL schedule: phases, memory banks, exact cycles (None: the RTL cannot map)",
         "schedule", "Schedule | None"),
    Step("emit HLS", _emit_hls, "HLS C++, its testbench and the Vitis scripts (outputs hls, both)", "hls_files",
         "dict[str, str]"),
    Step("emit RTL", _emit_rtl, "SystemVerilog, CIRCT controller, AXI top (outputs rtl, both)", "rtl_files",
         "dict[str, str]"),
    Step("write", _write, "the project folder: sources, vectors, driver, manifest, report (written to out_dir)",
         "design", "Design"),
])


def step_names() -> list[str]:
    """The names of the steps, in order."""
    return PIPELINE.names()


def run_pipeline(ctx: CompileContext, until: str | None = None):
    """Run the steps not run yet, in order, through ``until`` (default: all); returns that step's artifact."""
    last = PIPELINE.step(until if until is not None else PIPELINE[-1].name)
    for i, step in enumerate(PIPELINE, 1):
        if step.name not in ctx.done:
            t0 = time.perf_counter()
            step.run(ctx)
            ctx.done.append(step.name)
            if ctx.progress is not None:
                ctx.progress(f"[{i}/{len(PIPELINE)}] {step.name:12s} {time.perf_counter() - t0:5.2f} s  ({step.doc})")
        if step is last:
            return getattr(ctx, step.artifact)
    raise AssertionError("unreachable")
