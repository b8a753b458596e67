"""``fx2fpga.compile`` and the ``Design`` it returns: something runnable at once."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import fx2fpga_runtime
import numpy as np
import torch
from fx2fpga_runtime.ir import Kernel
from fx2fpga_runtime.runner import KernelRunner

from .errors import PrecisionError, ResourceBudgetError
from .frontend import GD, SGD, PointModule, _as_tuple, as_module
from .passes import CompileContext, estimate, run_pipeline
from .passes.quantize import Precision
from .targets import Target, load_target

OUTPUT_BACKENDS = ("hls", "rtl", "both")


class Design:
    """A compiled kernel: run it (``load``), write its project folder (``write``), read its report."""

    def __init__(self, kernel: Kernel, target: Target, precision: Precision, example: dict,
                 train: SGD | GD | None, backend: str = "both"):
        if backend not in OUTPUT_BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(OUTPUT_BACKENDS)}, got {backend!r}")
        self.backend = backend  # what the project folder holds: hls (C++), rtl (Verilog) or both
        self._rtl_cycles: dict | None = None
        self.kernel = kernel
        self.target = target
        self.precision = precision
        self.example = example  # float arrays: "x" and, for training kernels, "y"
        self.train = train
        self.out_dir: Path | None = None

    @property
    def name(self) -> str:
        return self.kernel.name

    def files(self) -> dict[str, str]:
        """Every file of the project folder: relative path -> text."""
        from .project.folder import project_files

        return project_files(self)

    def write(self, out_dir: str | Path) -> Path:
        """Write the project folder atomically (an existing fx2fpga project there is replaced)."""
        from .project.writer import write_project

        self.out_dir = write_project(Path(out_dir), self.files())
        return self.out_dir

    def load(self, backend: str = "emu") -> KernelRunner:
        """A runnable kernel: ``emu`` (numpy, bit-exact) or ``csim`` (g++ on the HLS C++).

        The csim backend needs the project folder; without one it is written to a
        temporary folder first.
        """
        needs = {"csim": "hls", "rtl": "rtl"}.get(backend)  # pynq: a bitstream of either (build.tcl, build_rtl.tcl)
        if needs is not None and self.backend not in (needs, "both"):
            raise ValueError(f"the {backend} backend runs the {needs.upper()} output, but this design was compiled "
                             f"with backend={self.backend!r}: compile with backend={needs!r} or 'both'")
        if backend != "emu" and self.out_dir is None:
            self.write(Path(tempfile.mkdtemp(prefix=f"fx2fpga_{self.name}_")) / self.name)
        return KernelRunner(self.kernel, fx2fpga_runtime.make_backend(self.kernel, backend, self.out_dir))

    def rtl_cycles(self) -> dict[str, int] | None:
        """Exact cycles of each command in the generated RTL (its schedule); None if it has no RTL."""
        if self._rtl_cycles is None:
            from .backends.rtl import emit as verilog

            self._rtl_cycles = self._of_rtl(verilog.call_cycles) or {}
        return self._rtl_cycles or None

    def rtl_dsp_blocks(self) -> int | None:
        """DSP blocks (the target's kind) the generated RTL instantiates, exactly; None if it has no RTL."""
        from .backends.rtl import emit as verilog

        return self._of_rtl(lambda kernel: verilog.dsp_blocks(kernel, self.target.dsp_kind))

    def _of_rtl(self, measure):
        """``measure(kernel)`` of the RTL backend; None without RTL (backend "hls", or a kernel it cannot map)."""
        if self.backend == "hls":
            return None
        from .backends.rtl import emit as verilog

        try:
            return measure(self.kernel)
        except (verilog.RtlCodegenError, verilog.sched.ScheduleError):
            return None

    @property
    def report(self) -> str:
        from .project.report import report_text

        return report_text(self)

    def __repr__(self) -> str:
        progs = ", ".join(self.kernel.programs)
        return f"<Design {self.name!r} for {self.target.name}: {progs}; {len(list(self.kernel.stages()))} stages>"


def _kernel_name(model, name: str | None) -> str:
    base = name or (type(model).__name__ if not callable(model) or hasattr(model, "forward") else model.__name__)
    base = re.sub(r"\W", "_", base).lower().strip("_") or "kernel"
    return base if re.match(r"[a-z]", base) else f"k_{base}"


def _example_arrays(example_inputs, train: SGD | GD | None) -> dict[str, np.ndarray]:
    inputs = _as_tuple(example_inputs)
    ex = {"x": inputs[0].detach().cpu().double().numpy()} if inputs else {}  # GD kernels take no inputs
    if isinstance(train, SGD):
        ex["y"] = train.example_targets.detach().cpu().numpy()
    return ex


def compile(  # noqa: A001 - the public name the product promises
    model,
    example_inputs,
    target: str | Target = "pynq-z1",
    train: SGD | GD | None = None,
    precision=None,
    lanes: int | str = 4,
    out_dir: str | Path | None = None,
    name: str | None = None,
    progress=None,
    backend: str = "both",
) -> Design:
    """Compile ``model`` (an ``nn.Module`` or a function of tensors) for ``target``.

    ``train=fx2fpga.SGD(loss, example_targets, lr)`` makes a training kernel (it infers
    too). ``train=fx2fpga.GD(lr)`` with a function ``f(x) -> scalar`` and ``example_inputs=(x0,)``
    makes a kernel that keeps the point ``x`` on chip and descends ``f``. ``precision`` is a format
    string (``"fixed<16,6>"``), a dict of ``Precision`` fields or a ``Precision``. ``lanes`` is the
    number of parallel datapath copies per stage (matmuls, elementwise ops, reductions), or
    ``"auto"`` to widen the slowest stages while the target's budget allows. With
    ``out_dir`` the project folder is written there.
    ``progress`` (a callable taking a line of text) hears about each pipeline step.
    ``backend`` says what the project folder holds: ``"hls"`` (C++ for Vitis HLS, the csim and
    pynq backends), ``"rtl"`` (Verilog, the rtl backend) or ``"both"`` (the default).
    """
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
    module = as_module(model)
    if isinstance(train, GD):  # the point is the parameter "x"; the programs take no inputs
        if len(example_inputs) != 1:
            raise TypeError("GD: example_inputs must be the starting point, a tuple of one tensor (x0,)")
        module, example_inputs = PointModule(model, example_inputs[0]), ()
    kname = _kernel_name(model, name)
    ctx = CompileContext(module, example_inputs, train, prec, lanes, tgt, kname, progress=progress)
    kernel = run_pipeline(ctx)
    over = estimate.resources(kernel, tgt).over_budget(tgt)
    if over:
        raise ResourceBudgetError(tgt.name, over, "Use fewer lanes (lanes=...), narrower formats (precision=...), "
                                  "a smaller batch, or a larger target (fx2fpga targets).")
    if backend not in OUTPUT_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(OUTPUT_BACKENDS)}, got {backend!r}")
    design = Design(kernel, tgt, prec, _example_arrays(example_inputs, train), train, backend)
    if out_dir is not None:
        design.write(out_dir)
    return design
