"""The ``csim`` backend: the generated HLS C++ compiled with g++ and the ``ap_types`` headers.

The project's ``src/<name>.cpp`` and ``src/csim_main.cpp`` are compiled once into a cache keyed
by the sha256 of the sources and the compiler command; the binary then runs as one server
process for the backend's lifetime (its static arrays keep the parameters between calls) and
speaks the word protocol of ``csim_main.cpp`` on its stdin/stdout. Standard library and numpy
only: this module also runs on boards without torch.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from .ir import Kernel
from .server import WordServer
from .toolchain import ToolNotFoundError, cached_binary, package_dir, require_tool, source_digest

CXX_FLAGS = ("-O2", "-std=c++14")


def ap_types_dir() -> Path:
    """The ``ap_types`` headers: ``$FX2FPGA_AP_TYPES``, else the copy inside the hls4ml package."""
    env = os.environ.get("FX2FPGA_AP_TYPES")
    if env:
        path = Path(env)
        if not (path / "ap_fixed.h").is_file():
            raise ToolNotFoundError(f"FX2FPGA_AP_TYPES={env} has no ap_fixed.h; point it at an ap_types folder")
        return path
    path = package_dir("hls4ml", "templates", "vivado", "ap_types")
    if path is not None and (path / "ap_fixed.h").is_file():
        return path
    raise ToolNotFoundError(
        "the csim backend needs the Xilinx ap_types headers (ap_fixed.h): install them with "
        "'pip install hls4ml==1.3.0' or set FX2FPGA_AP_TYPES to a folder that holds ap_fixed.h"
    )


def build(sources: list[Path], headers: list[Path], include_dirs: list[Path]) -> Path:
    """Compile ``sources`` (which include ``headers``) into one executable, cached; returns its path."""
    cxx = require_tool("g++", "the csim backend needs it: install it (Debian/Ubuntu: apt-get install g++)")
    flags = [*CXX_FLAGS, *(f"-I{d}" for d in include_dirs)]
    digest = source_digest([*sources, *headers], extra=flags)

    def compile_into(work: Path) -> Path:
        proc = subprocess.run([cxx, *flags, *map(str, sources), "-o", str(work / "csim")], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"g++ could not compile the C simulation:\n{proc.stderr[-4000:]}")
        return work / "csim"

    return cached_binary("csim", digest, "csim", "compiling C simulation (g++ -O2)", compile_into)


class CsimBackend:
    """The kernel's C++ (``src/`` of a project folder) running as a g++-compiled server process."""

    name = "csim"

    def __init__(self, kernel: Kernel, project_dir: str | Path):
        self.kernel = kernel
        src = Path(project_dir) / "src"
        sources = [src / f"{kernel.name}.cpp", src / "csim_main.cpp"]
        headers = [src / f"{kernel.name}.h"]
        missing = [str(s) for s in sources + headers if not s.is_file()]
        if missing:
            raise FileNotFoundError(f"the csim backend needs the generated sources {missing}: regenerate the project")
        self.binary = build(sources, headers, [ap_types_dir(), src])
        self._server = WordServer(self.binary, "csim")

    def call(self, command: str, in_words: np.ndarray) -> np.ndarray:
        """Send one command and its input words; returns the output words (int32)."""
        return self._server.call(command, in_words)

    def close(self) -> None:
        """End the simulation process (its on-chip state goes with it)."""
        self._server.close()
