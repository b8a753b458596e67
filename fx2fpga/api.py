"""``fx2fpga.compile`` and the ``Design`` it returns: something runnable at once."""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path

import fx2fpga_runtime
import numpy as np
import torch
from fx2fpga_runtime.runner import KernelRunner

from .errors import PrecisionError
from .frontend import GD, SGD, PointModule, _as_tuple, as_module
from .frontend.trace import check_example_inputs
from .passes.quantize import Precision
from .pipeline import OUTPUTS, PIPELINE, CompileContext, design_of, folder_files, run_pipeline
from .targets import Target, load_target

OUTPUT_BACKENDS = OUTPUTS  # the old name of OUTPUTS (kept one release)


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is now {new}; the old spelling goes in the next release", DeprecationWarning, stacklevel=3)


class Design:
    """A compiled kernel: run it (``load``), write its project folder (``write``), read its report.

    It reads the artifacts the pipeline's steps left on its ``context`` (the kernel, the schedule,
    the emitted files) and runs the remaining steps when it first needs their results.
    """

    def __init__(self, context: CompileContext):
        self.context = context

    kernel = property(lambda self: self.context.kernel, doc="The tiled kernel IR.")
    target = property(lambda self: self.context.target, doc="The board.")
    precision = property(lambda self: self.context.precision, doc="The fixed-point formats.")
    example = property(lambda self: self.context.example,
                       doc='Float arrays "x" (the first input), "inputs" (all) and (training) "y".')
    train = property(lambda self: self.context.train, doc="The SGD/GD step, or None.")
    outputs = property(lambda self: self.context.outputs,
                       doc="What the project folder holds: hls (C++), rtl (Verilog) or both.")
    quantization = property(lambda self: self.context.quantization,
                            doc="Each float tensor on the example data against its format, worst SQNR first: "
                                "a list of passes.quant_report.TensorQuantization.")
    schedule = property(lambda self: self.context.schedule,
                        doc="The RTL schedule (computed once, by the pipeline); None if the RTL cannot map.")

    @property
    def backend(self) -> str:
        """Deprecated: ``outputs``."""
        _deprecated("Design.backend", "Design.outputs")
        return self.outputs

    @property
    def out_dir(self) -> Path | None:
        """The folder the project was written to, or None."""
        return self.context.out_dir if "write" in self.context.done else None

    @property
    def name(self) -> str:
        return self.kernel.name

    def files(self) -> dict[str, str]:
        """Every file of the project folder: relative path -> text."""
        return dict(folder_files(self.context))

    def write(self, out_dir: str | Path) -> Path:
        """Write the project folder atomically (an existing fx2fpga project there is replaced)."""
        self.context.out_dir = Path(out_dir)
        if "write" in self.context.done:
            self.context.done.remove("write")
        run_pipeline(self.context, "write")
        return self.context.out_dir

    def load(self, sim: str = "emu", *, backend: str | None = None) -> KernelRunner:
        """A runnable kernel on the simulator ``sim``: ``emu`` (numpy, bit-exact), ``csim`` (g++ on the
        HLS C++), ``rtl`` (Verilator on the Verilog) or ``pynq`` (the board).

        The csim and rtl simulators need the project folder; without one it is written to a
        temporary folder first.
        """
        if backend is not None:
            _deprecated("load(backend=...)", "load(sim=...)")
            sim = backend
        needs = {"csim": "hls", "rtl": "rtl"}.get(sim)  # pynq: a bitstream of either (build.tcl, build_rtl.tcl)
        if needs is not None and self.outputs not in (needs, "both"):
            raise ValueError(f"the {sim} simulator runs the {needs.upper()} output, but this design was compiled "
                             f"with outputs={self.outputs!r}: compile with outputs={needs!r} or 'both'")
        if sim != "emu" and self.out_dir is None:
            self.write(Path(tempfile.mkdtemp(prefix=f"fx2fpga_{self.name}_")) / self.name)
        return KernelRunner(self.kernel, fx2fpga_runtime.make_backend(self.kernel, sim, self.out_dir))

    def rtl_cycles(self) -> dict[str, int] | None:
        """Exact cycles of each command in the generated RTL (its schedule); None if it has no RTL."""
        s = self.schedule
        if self.outputs == "hls" or s is None:
            return None
        return s.cycles() or None

    def rtl_plan(self):
        """The RTL generator's ``RtlPlan`` (made once, from the schedule); None without RTL output or
        for a kernel the RTL cannot map (``context.rtl_error`` says why)."""
        ctx = self.context
        if self.outputs == "hls":
            return None
        if ctx.rtl_plan is None and ctx.rtl_error is None and ctx.schedule_error is not None:
            ctx.rtl_error = str(ctx.schedule_error)  # (the emitter's README checks the ops first, then says this)
        if ctx.rtl_plan is None and ctx.rtl_error is None:
            from .backends.rtl import emit as verilog

            try:
                ctx.rtl_plan = verilog.plan(self.kernel, self.name, self.target.dsp_kind, self.schedule, self.target)
            except (verilog.RtlCodegenError, verilog.sched.ScheduleError) as e:
                ctx.rtl_error = str(e)
        return ctx.rtl_plan

    def rtl_dsp_blocks(self) -> int | None:
        """DSP blocks (the target's kind) the generated RTL instantiates, exactly; None if it has no RTL."""
        p = self.rtl_plan()
        return None if p is None else p.dsp_blocks

    @property
    def report(self) -> str:
        from .project.report import report_text

        return report_text(self)

    def __repr__(self) -> str:
        progs = ", ".join(self.kernel.programs)
        return f"<Design {self.name!r} for {self.target.name}: {progs}; {len(list(self.kernel.stages()))} stages>"


def _kernel_name(model, name: str | None) -> str:
    if isinstance(model, list) and name is None:  # a list of models: "digitsmlp_x4", or "models_x2" when mixed
        names = {_kernel_name(m, None) for m in model}
        return f"{names.pop() if len(names) == 1 else 'models'}_x{len(model)}"
    base = name or (type(model).__name__ if not callable(model) or hasattr(model, "forward") else model.__name__)
    base = re.sub(r"\W", "_", base).lower().strip("_") or "kernel"
    return base if re.match(r"[a-z]", base) else f"k_{base}"


def _example_arrays(example_inputs, train: SGD | GD | None) -> dict[str, np.ndarray]:
    inputs = [t.detach().cpu().double().numpy() for t in _as_tuple(example_inputs)]
    ex = {"x": inputs[0], "inputs": inputs} if inputs else {}  # GD kernels take no inputs
    if isinstance(train, SGD):
        ex["y"] = train.example_targets.detach().cpu().numpy()
    return ex


def compile(  # noqa: A001 - the public name the product promises
    model,
    example_inputs,
    target: str | Target = "pynq-z1",
    train: SGD | GD | None = None,
    precision=None,
    lanes: int | str | dict | None = None,
    out_dir: str | Path | None = None,
    name: str | None = None,
    progress=None,
    outputs: str | None = None,
    share_memory: bool = True,
    until: str | None = None,
    backend: str | None = None,
    stack_models: bool = True,
    model_lanes: int | str = "auto",
    saturation_counters: bool = False,
    fold_updates: bool = True,
    placement: str | dict | None = None,
    pipeline_groups: int | None = None,
):
    """Compile ``model`` (an ``nn.Module`` or a function of tensors) for ``target``: a ``Design``.

    ``model`` may be a list of models: one kernel that trains (or runs) them all on the same
    inputs (each batch crosses the bus once). Models of one architecture are stacked on a model
    axis, one datapath for all (``stack_models=False``: one after another, as a list of different
    architectures always runs); ``model_lanes`` is how many of them the datapath computes at once
    (``"auto"``: as many as the target's budget allows). Each model computes what it computes
    compiled alone with the kernel's formats (one per buffer: ``report.md`` lists those unified
    across models).
    Its runner's ``train_step`` returns one loss per model, ``infer`` one output per model (an
    array ``(N, batch, ...)``), ``get_params``/``set_params`` a list of one dict per model; with
    ``SGD(lr=[...])`` (also ``momentum``, ``weight_decay``) each model has its own value.

    ``train=fx2fpga.SGD(loss, example_targets, lr)`` makes a training kernel (it infers
    too). ``train=fx2fpga.GD(lr)`` with a function ``f(x) -> scalar`` and ``example_inputs=(x0,)``
    makes a kernel that keeps the point ``x`` on chip and descends ``f``. ``precision`` is a format
    string (``"fixed<16,6>"``), a dict of ``Precision`` fields or a ``Precision``. ``lanes`` is the
    number of parallel datapath copies per stage (matmuls, elementwise ops, reductions; by default 4,
    or 2 or 1 where the target's budget needs it, as ``report.md`` says), or
    ``"auto"`` to widen the slowest stages while the target's budget allows (with ``model_lanes`` a number,
    only in groups of that many models), or a dict of lanes per
    stage, stage name -> ``[model lanes, lanes]`` or ``[model lanes, lanes, lane loop]`` (the
    variable of the loop the lanes run over; by default the stage's longest), as a design point of
    ``fx2fpga explore`` records it (``stage_lanes``, with ``model_lanes=`` its ``group_size``). With
    ``out_dir`` the project folder is written there.
    ``progress`` (a callable taking a line of text) hears about each pipeline step.
    ``outputs`` says what the project folder holds: ``"hls"`` (C++ for Vitis HLS, the csim and
    pynq simulators), ``"rtl"`` (Verilog, the rtl simulator) or ``"both"``; by default ``"both"`` for a
    target that Vitis HLS builds (Xilinx boards) and ``"rtl"`` for the others (ECP5: Yosys + nextpnr).
    ``share_memory`` (default on) lets temporaries of one shape and format with disjoint lifetimes
    share one on-chip array (``mem<k>``); ``False`` keeps one array per tensor, e.g. to read every
    intermediate tensor by name from the emulator's memory after a call.
    ``saturation_counters`` (default off) puts saturation counters in the generated HLS C++ (the ``csim``
    simulator and the board read them with ``runner.saturation()``); the emulator always counts
    (docs/saturation.md).
    ``fold_updates`` (default on) folds plain SGD's update into the reduction that computes the gradient,
    ``p + sum(-lr * a) * b``, with no weight-sized gradient buffer (``lower/update_fold.py``); ``False`` keeps
    the gradient and a separate ``p - lr * g`` stage per parameter.
    ``placement`` forces where buffers live: ``{"<buffer>": "ddr" | "chip"}`` (a buffer of ``kernel.json``, or a
    tensor that shares one of its arrays), or ``"ddr"`` for every parameter and temporary array. A buffer in DDR
    is an ``m_axi`` port of the HLS top function; the RTL cannot map it yet (``outputs="rtl"`` is refused).
    Without it, a folder of HLS alone (``outputs="hls"``) over the target's block RAM moves its largest arrays
    to DDR until the estimate fits (``passes/placement.py``); ``report.md`` and ``manifest.json`` list the places.
    ``pipeline_groups`` (with lanes given per stage and ``model_lanes=`` a group size) runs the training step's
    model groups pipelined, its stages from that index on one pass behind (``passes/pipeline_groups.py``), as a
    design point of ``fx2fpga explore`` records it (``pipeline_cut``); ``lanes="auto"`` chooses it itself.

    ``until`` names a step of ``fx2fpga.PIPELINE`` to stop after; ``compile`` then returns that
    step's artifact instead of the ``Design``: ``"trace"`` the torch.fx graphs (a list),
    ``"lower"``/``"quantize"``/``"share memory"``/``"order"``/``"place"``/``"tile"`` the ``Kernel`` (after
    ``tile`` with its lanes), ``"schedule"`` the RTL ``Schedule`` (None if the RTL cannot map the kernel),
    ``"emit HLS"``/``"emit RTL"`` those files (path -> text), ``"write"`` the ``Design``.
    ``backend=`` is the old name of ``outputs=`` (deprecated).
    """
    if backend is not None:
        _deprecated("compile(backend=...)", "compile(outputs=...)")
        outputs = backend
    if outputs is not None and outputs not in OUTPUTS:
        raise ValueError(f"outputs must be one of {', '.join(OUTPUTS)}, got {outputs!r}")
    if until is not None:
        PIPELINE.step(until)  # an unknown step fails before any work
    ctx = _context(model, example_inputs, target, train, precision, lanes, name, progress)
    ctx.outputs = outputs or default_outputs(ctx.target)
    ctx.share_memory = share_memory
    ctx.saturation_counters = saturation_counters
    ctx.fold_updates = fold_updates
    ctx.placement = placement
    ctx.pipeline_cut = pipeline_groups
    ctx.stack_models, ctx.model_lanes = stack_models, model_lanes
    ctx.out_dir = Path(out_dir) if out_dir is not None else None
    ctx.design = Design(ctx)
    if until is not None:
        return run_pipeline(ctx, until)
    run_pipeline(ctx, "write" if out_dir is not None else "schedule")  # the rest when the folder is needed
    return design_of(ctx)


def explore(model, example_inputs, target: str | Target = "pynq-z1", train: SGD | GD | None = None,
            precision=None, lanes: int | str = "auto", model_lanes: int | str = "auto",
            out_dir: str | Path | None = None, name: str | None = None, progress=None):
    """The design points of ``model`` (a model or a list, as ``compile`` takes) on ``target``: every lane
    request (and, for models stacked on a model axis, every number of models side by side) with its
    exact RTL cycles, calibrated LUT/FF/DSP/BRAM36 and model-steps/s, the Pareto front and the point
    ``lanes="auto"`` chooses (``passes/explore.py``). ``out_dir``: write ``explore.json`` and ``explore.png``
    there. Returns the ``Exploration``."""
    from .passes import explore as explore_pass
    from .project import exploration

    ctx = _context(model, example_inputs, target, train, precision, lanes, name, progress)
    if ctx.target.family != "xc7":
        raise ValueError(f"explore needs the RTL resource model, calibrated for xc7 targets; {ctx.target.name} is "
                         f"{ctx.target.family}")
    ctx.outputs = "rtl"
    kernel = run_pipeline(ctx, "order")
    result, _, _ = explore_pass.explore(kernel, ctx.target, lanes, model_lanes, ctx.name, progress)
    if out_dir is not None:
        exploration.write(result, out_dir, f"{ctx.name} on {ctx.target.name} at {ctx.target.clock_mhz:g} MHz")
    return result


def default_outputs(target) -> str:
    """What a project folder holds unless asked: HLS and RTL where Vitis HLS builds the target (vivado
    toolchain), RTL alone elsewhere (an ECP5 board: no vendor HLS to run the C++)."""
    return "both" if target.toolchain == "vivado" else "rtl"


def _context(model, example_inputs, target, train, precision, lanes, name, progress) -> CompileContext:
    """The request, checked, as a ``CompileContext``."""
    tgt = load_target(target)
    try:
        prec = Precision.from_spec(precision)
    except (TypeError, ValueError) as e:
        if isinstance(e, PrecisionError):
            raise
        raise PrecisionError(str(e)) from e
    example_inputs = _as_tuple(example_inputs)
    if not all(isinstance(t, torch.Tensor) for t in example_inputs):
        raise TypeError("example_inputs must be a tensor or a tuple of tensors")
    targets = train.example_targets if isinstance(train, SGD) else None
    if isinstance(model, (list, tuple)):
        modules, trains = _model_list(model, train)
        check_example_inputs(modules, example_inputs, targets)
        return CompileContext(modules, example_inputs, train, prec, lanes, tgt, _kernel_name(list(model), name),
                              example=_example_arrays(example_inputs, train), progress=progress, trains=trains)
    if isinstance(train, SGD) and train.per_model:
        raise ValueError("SGD: a list of hyper-parameter values (one per model) needs a list of models; "
                         "one model takes one value")
    module = as_module(model)
    check_example_inputs([module], example_inputs, targets)
    if isinstance(train, GD):  # the point is the parameter "x"; the programs take no inputs
        if len(example_inputs) != 1:
            raise TypeError("GD: example_inputs must be the starting point, a tuple of one tensor (x0,)")
        module, example_inputs = PointModule(model, example_inputs[0]), ()
    return CompileContext(module, example_inputs, train, prec, lanes, tgt, _kernel_name(model, name),
                          example=_example_arrays(example_inputs, train), progress=progress)


def _model_list(models, train) -> tuple[list, list | None]:
    """The modules of a list of models and each one's ``SGD`` (None: an inference kernel)."""
    models = list(models)
    if not models:
        raise ValueError("compile([]): the list of models is empty; give at least one model")
    if isinstance(train, GD):
        raise TypeError("a list of models trains with train=fx2fpga.SGD(...); GD descends one function")
    modules = [as_module(m) for m in models]
    return modules, (train.for_models(len(modules)) if train is not None else None)
