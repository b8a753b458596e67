"""Errors a user can act on: each names what went wrong, where, and what would work."""

from __future__ import annotations

from fx2fpga_runtime.errors import (  # noqa: F401 - the runtime's errors, importable from here too
    KernelBackendError,
    KernelCapabilityError,
    KernelClosedError,
    KernelError,
    KernelInputError,
    KernelParamError,
)
from fx2fpga_runtime.toolchain import ToolNotFoundError as _MissingTool


class Fx2fpgaError(Exception):
    """Base class of every error fx2fpga raises on purpose."""


class UnsupportedOpError(Fx2fpgaError):
    """An operation of the traced graph has no lowering to the kernel IR."""

    def __init__(self, op: str, source: str, supported: list[str], detail: str = ""):
        self.op, self.source, self.supported, self.detail = op, source, list(supported), detail
        where = f" at {source}" if source else ""
        why = f": {detail}" if detail else ""
        super().__init__(
            f"unsupported operation {op}{where}{why}.\n"
            f"Supported operations: {', '.join(self.supported)}"
        )


class UnknownTargetError(Fx2fpgaError):
    def __init__(self, name: str, known: list[str]):
        self.name, self.known = name, list(known)
        super().__init__(f"unknown target {name!r}; known targets: {', '.join(self.known)}")


class PrecisionError(Fx2fpgaError, ValueError):
    """A precision string or setting that cannot be turned into fixed-point formats."""


class QuantizationWarning(UserWarning):
    """A format zeroes all or most of a tensor's values on the example data, or saturates more than 1% of
    them (``passes/quant_report.py``); the warning names the tensors."""


class OutputPathError(Fx2fpgaError):
    """The output folder cannot be written without losing something."""


class ModelFileError(Fx2fpgaError):
    """A model.py given to the command line lacks what it must define."""


class PlacementError(Fx2fpgaError, ValueError):
    """A ``placement=`` request that cannot be honoured: an unknown buffer, a buffer that cannot live in DDR, or
    DDR buffers in a folder whose output cannot reach them yet (the RTL)."""


class ResourceBudgetError(Fx2fpgaError):
    """A design needs more of a resource than the target has."""

    def __init__(self, target: str, over: list[tuple[str, float, float]], hint: str = ""):
        self.target, self.over = target, list(over)
        lines = [f"  {res}: needs {needed:,.0f}, {target} has {available:,.0f}" for res, needed, available in over]
        extra = f"\n{hint}" if hint else ""
        super().__init__(f"the design does not fit {target}:\n" + "\n".join(lines) + extra)


class ToolNotFoundError(Fx2fpgaError, _MissingTool):
    """An external tool (g++, Vivado, Vitis HLS, ...) is not installed here (also the runtime's
    ``ToolNotFoundError``, a ``FileNotFoundError``)."""


class TraceError(Fx2fpgaError):
    """PyTorch could not trace the model into a graph."""


class ExampleInputError(Fx2fpgaError, ValueError):
    """An example input or target the compiler cannot size formats or a batch from: NaN or Inf, an empty
    batch, an integer tensor where the model computes on floats, a class index out of range."""
