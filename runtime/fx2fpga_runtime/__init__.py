"""fx2fpga_runtime: drive an fx2fpga kernel on a board or in simulation (numpy only).

    import fx2fpga_runtime
    k = fx2fpga_runtime.load("out/mlp", backend="emu")    # emu | csim | rtl | pynq
    k.infer(x); k.train_step(x, y); k.get_params(); k.set_params({...})
"""

from __future__ import annotations

from pathlib import Path

from .fixed import Fixed
from .ir import Kernel
from .runner import EmuBackend, KernelRunner

BACKENDS = ("emu", "csim", "rtl", "pynq")
__version__ = "0.1.0"


def read_kernel(project_dir: str | Path) -> Kernel:
    """The kernel IR stored in a project folder (``kernel.json``)."""
    return Kernel.from_json((Path(project_dir) / "kernel.json").read_text())


def make_backend(kernel: Kernel, backend: str, project_dir: str | Path | None = None):
    """A backend object for ``kernel``; ``csim`` and ``rtl`` need the project folder."""
    if backend == "emu":
        return EmuBackend(kernel)
    if backend == "csim":
        from .csim import CsimBackend

        if project_dir is None:
            raise ValueError("the csim backend needs a project folder: compile with out_dir=... first")
        return CsimBackend(kernel, Path(project_dir))
    if backend == "rtl":
        from .rtl import RtlBackend

        if project_dir is None:
            raise ValueError("the rtl backend needs a project folder: compile with out_dir=... first")
        return RtlBackend(kernel, Path(project_dir))
    if backend == "pynq":
        from .pynq_backend import PynqBackend

        if project_dir is None:
            raise ValueError("the pynq backend needs the project folder (with bitstream/)")
        return PynqBackend(kernel, Path(project_dir))
    raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")


def load(project_dir: str | Path, backend: str = "emu") -> KernelRunner:
    """Open a compiled project folder with one of the backends."""
    kernel = read_kernel(project_dir)
    return KernelRunner(kernel, make_backend(kernel, backend, project_dir))


__all__ = ["BACKENDS", "Fixed", "Kernel", "KernelRunner", "load", "make_backend", "read_kernel"]
