"""The ``csim`` backend: the generated HLS C++ compiled with g++ and the ``ap_types`` headers.

The project's ``src/<name>.cpp`` and ``src/csim_main.cpp`` are compiled into a cache keyed by the
sha256 of the sources and the compiler command; the binary then runs as one server process for
the backend's lifetime (its static arrays keep the parameters between calls) and speaks the word
protocol of ``csim_main.cpp`` on its stdin/stdout. Standard library and numpy only: this module
also runs on boards without torch.

Two header sets can stand behind the kernel's ``#include <ap_fixed.h>`` (docs/csim.md):

- ``fastfixed`` (``fastfixed/`` next to this module): fx2fpga's own small header for the subset of
  ``ap_fixed``/``ap_int`` the generated code uses, raw values in 64-bit integers (``__int128`` past 64
  bits); bit-exact with the emulator and many times faster to run and to compile. Used by default for
  every kernel whose formats it covers (``fastfixed_limit``);
- ``ap_types``: Xilinx's headers (from the hls4ml package, or ``$FX2FPGA_AP_TYPES``), the reference.

``$FX2FPGA_CSIM_HEADERS`` (or ``CsimBackend(..., headers=...)``) picks one: ``auto`` (default),
``fastfixed`` or ``ap_types``. The build cache key includes the set and its headers' bytes.

Build speed (docs/architecture.md, "C simulation speed"): each source is its own translation unit,
compiled in parallel and linked; the ``ap_types`` headers are precompiled once per (headers, g++,
flags) into the cache (``PrecompiledHeader``): a build that finds none starts making it in the
background, and later builds use it. ``fastfixed`` needs no precompiled header.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from .fixed import Fixed
from .ir import Kernel
from .ops import mid_format
from .server import WordServer
from .toolchain import (
    ToolNotFoundError,
    cache_entry,
    cached_binary,
    package_dir,
    require_tool,
    source_digest,
    source_files,
    tool_version,
)

# -O1: the simulation runs as fast as with -O2 (ap_fixed arithmetic does not gain from -O2's passes)
# and compiles in about 0.7x the time.
CXX_FLAGS = ("-O1", "-std=c++14", "-pipe")
HEADERS_ENV = "FX2FPGA_CSIM_HEADERS"  # auto | fastfixed | ap_types
FAST, VENDOR = "fastfixed", "ap_types"
FAST_ROUNDING = ("RND", "TRN", "RND_ZERO", "RND_CONV", "TRN_ZERO")  # of the C++ types (SR: TRN, Fixed.cpp_rounding)
FAST_OVERFLOW = ("SAT", "WRAP")
FAST_MAX_BITS = 126  # every exact intermediate fits a signed __int128, with a bit to spare
PCH_HEADER = "ap_types_pch.h"
PCH_TEXT = "// the ap_types headers, precompiled for the csim backend\n#include <ap_fixed.h>\n#include <ap_int.h>\n"


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


def fastfixed_dir() -> Path | None:
    """The ``fastfixed`` headers installed with this package, or None where they are missing (a copy of
    the runtime's Python files only, as on a board)."""
    path = Path(__file__).resolve().parent / "fastfixed"
    return path if (path / "ap_fixed.h").is_file() and (path / "ap_int.h").is_file() else None


def _stage_formats(stage, kernel: Kernel) -> list[Fixed]:
    """The formats one stage's C++ computes with: its operands, output, accumulator, ``mid``."""
    formats = [kernel.buffers[a.buffer].fmt for a in (*stage.ins, stage.out)]
    if stage.acc is not None:
        formats.append(stage.acc)
    if "mid" in stage.attrs:
        formats.append(mid_format(stage))
    return formats


def exact_bits(formats: list[Fixed]) -> int:
    """An upper bound on the bits of any exact intermediate that sums, differences, products and
    comparisons of ``formats`` (and of 32-bit integer literals) take in the generated C++: the
    integer bits of the widest term plus the fractional bits of the finest, plus carries."""
    terms = [(f.int_bits + (not f.signed), f.frac_bits) for f in formats] + [(33, 0)]
    terms += [(a[0] + b[0], a[1] + b[1]) for a, b in combinations(terms, 2)]
    return max(i for i, _ in terms) + max(max(f for _, f in terms), 0) + 2


def fastfixed_limit(kernel: Kernel) -> str | None:
    """Why the ``fastfixed`` headers cannot run ``kernel`` exactly, or None if they can."""
    for name, buf in kernel.buffers.items():
        fmt = buf.fmt
        if fmt.cpp_rounding not in FAST_ROUNDING or fmt.overflow not in FAST_OVERFLOW or fmt.width > 64:
            return f"buffer {name} has the format {fmt}"
    for st in kernel.stages():
        formats = _stage_formats(st, kernel)
        bad = [f for f in formats if f.cpp_rounding not in FAST_ROUNDING or f.overflow not in FAST_OVERFLOW]
        if bad:
            return f"stage {st.name} computes in the format {bad[0]}"
        if exact_bits(formats) > FAST_MAX_BITS:
            return (f"stage {st.name}'s exact intermediates may need {exact_bits(formats)} bits "
                    f"(fastfixed holds {FAST_MAX_BITS})")
    return None


@dataclass(frozen=True)
class HeaderSet:
    """The headers a C simulation is compiled with: ``name`` (``fastfixed`` or ``ap_types``), their folder,
    and whether they are worth precompiling (the vendor's are: ~0.7 s to parse per translation unit)."""

    name: str
    folder: Path
    precompile: bool

    def files(self) -> list[Path]:
        """The header files whose bytes go into a binary's cache key: fastfixed's (the precompiled vendor
        headers keep the former key: their folder, in the flags)."""
        return source_files(self.folder, {".h"}) if not self.precompile else []


def requested_headers(headers: str | None = None) -> str:
    """The header set asked for: ``headers``, else ``$FX2FPGA_CSIM_HEADERS``, else ``auto``."""
    choice = (headers or os.environ.get(HEADERS_ENV) or "auto").strip().lower()
    if choice not in ("auto", FAST, VENDOR):
        raise ValueError(f"csim headers {choice!r} (argument or ${HEADERS_ENV}) is not one of auto, {FAST}, {VENDOR}")
    return choice


def choose_headers(kernel: Kernel, headers: str | None = None) -> HeaderSet:
    """The header set ``kernel``'s C simulation is built with (see ``requested_headers``): ``auto`` takes
    ``fastfixed`` where it is installed and ``fastfixed_limit`` finds nothing, else ``ap_types``;
    ``fastfixed`` asked for where it cannot run the kernel is an error that says why."""
    choice = requested_headers(headers)
    if choice != VENDOR:
        folder, limit = fastfixed_dir(), fastfixed_limit(kernel)
        if folder is not None and limit is None:
            return HeaderSet(FAST, folder, precompile=False)
        if choice == FAST:
            why = limit or f"the fastfixed headers are not installed next to {Path(__file__).name}"
            raise ValueError(f"csim headers {FAST} asked for, but {why}: use {VENDOR} or auto")
    return HeaderSet(VENDOR, ap_types_dir(), precompile=True)


class PrecompiledHeader:
    """``ap_fixed.h`` + ``ap_int.h`` precompiled by g++ (``<cache>/csim-pch/<digest>/``), keyed by the headers'
    bytes and folder, the g++ version and ``CXX_FLAGS``. A translation unit uses it with ``include_flags()``;
    g++ then skips parsing the headers (the kernel's own ``#include``\\ s find them already included)."""

    def __init__(self, cxx: str, ap_dir: Path):
        self.cxx, self.ap_dir = cxx, ap_dir
        extra = [cxx, tool_version(cxx), *CXX_FLAGS, str(ap_dir), PCH_TEXT]
        self.folder = cache_entry("csim-pch", source_digest(source_files(ap_dir, {".h"}), ap_dir, extra=extra))
        self.header = self.folder / PCH_HEADER
        self.gch = self.folder / f"{PCH_HEADER}.gch"

    def ready(self) -> bool:
        """Whether the cache holds it (the ``.gch`` is moved in last)."""
        return self.header.is_file() and self.gch.is_file()

    def include_flags(self) -> list[str]:
        """Flags that make a compile use it; ``-Winvalid-pch`` names a ``.gch`` g++ cannot use."""
        return ["-Winvalid-pch", "-include", str(self.header)]

    def start_build(self) -> None:
        """Make it in the background at the lowest CPU priority (g++ in a temporary folder of the entry, then
        header and ``.gch`` moved in, the ``.gch`` last), unless that is under way already in this process.

        The build that finds none does not wait for it: precompiling costs about as much as compiling a small
        kernel, so only later builds use it. ``wait_for_background_builds`` waits for it."""
        if self.folder in _BACKGROUND and _BACKGROUND[self.folder].poll() is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=self.folder))
        (work / PCH_HEADER).write_text(PCH_TEXT)
        compile_cmd = [self.cxx, *CXX_FLAGS, f"-I{self.ap_dir}", "-x", "c++-header", str(work / PCH_HEADER),
                       "-o", str(work / self.gch.name)]
        q = shlex.quote
        script = (f"{shlex.join(compile_cmd)} && mv -f {q(str(work / PCH_HEADER))} {q(str(self.header))} "
                  f"&& mv -f {q(str(work / self.gch.name))} {q(str(self.gch))}; rm -rf {q(str(work))}")
        _BACKGROUND[self.folder] = subprocess.Popen(
            ["nice", "-n", "19", "sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)

    def discard(self) -> None:
        """Remove a ``.gch`` g++ refused (stale or corrupt), so that ``start_build`` makes a new one."""
        self.gch.unlink(missing_ok=True)


_BACKGROUND: dict[Path, subprocess.Popen] = {}  # precompiled headers being made, by cache folder


def wait_for_background_builds() -> None:
    """Wait until the precompiled headers this process started making are in the cache (or failed)."""
    for proc in _BACKGROUND.values():
        proc.wait()
    _BACKGROUND.clear()


def _refuses_pch(gxx_output: str) -> bool:
    """Whether g++ says it cannot use a precompiled header (a ``-Winvalid-pch`` warning, or an error)."""
    return any(sign in gxx_output for sign in ("-Winvalid-pch", "PCH file", "precompiled header"))


def _compile_objects(cxx: str, flags: list[str], sources: list[Path], work: Path) -> list[tuple[Path, str]]:
    """Compile each source into ``work`` at once (one g++ per translation unit); returns (object, g++'s
    messages) pairs and raises with g++'s output if any failed."""
    objects = [work / f"{i}_{s.stem}.o" for i, s in enumerate(sources)]
    procs = [subprocess.Popen([cxx, *flags, "-c", str(s), "-o", str(o)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for s, o in zip(sources, objects, strict=True)]
    errors = [p.communicate()[1] for p in procs]
    failed = [e for p, e in zip(procs, errors, strict=True) if p.returncode != 0]
    if failed:
        raise RuntimeError("g++ could not compile the C simulation:\n" + "\n".join(failed)[-4000:])
    return list(zip(objects, errors, strict=True))


def _compile_and_link(cxx: str, flags: list[str], sources: list[Path], work: Path) -> tuple[Path, bool]:
    """Objects of ``sources`` compiled in parallel, then linked into ``work/csim``; returns the binary and
    whether g++ refused a precompiled header named in ``flags`` (it then parsed the headers itself)."""
    try:
        objects = _compile_objects(cxx, flags, sources, work)
    except RuntimeError as e:
        if _refuses_pch(str(e)):
            return work / "csim", True
        raise
    proc = subprocess.run([cxx, *(str(o) for o, _ in objects), "-o", str(work / "csim")], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"g++ could not link the C simulation:\n{proc.stderr[-4000:]}")
    return work / "csim", any(_refuses_pch(err) for _, err in objects)


def build(sources: list[Path], headers: list[Path], ap_dir: Path | HeaderSet, include_dirs: list[Path]) -> Path:
    """Compile ``sources`` (which include ``headers`` and the header set ``ap_dir``: a ``HeaderSet``, or a
    folder of ``ap_types``) into one executable, cached; returns its path. ``ap_types`` are precompiled: a
    build uses them precompiled when the cache has them, else starts making them."""
    header_set = ap_dir if isinstance(ap_dir, HeaderSet) else HeaderSet(VENDOR, ap_dir, precompile=True)
    cxx = require_tool("g++", "the csim backend needs it: install it (Debian/Ubuntu: apt-get install g++)")
    flags = [*CXX_FLAGS, *(f"-I{d}" for d in [header_set.folder, *include_dirs])]
    extra = [*flags, f"headers={header_set.name}"] if header_set.name != VENDOR else flags
    digest = source_digest([*sources, *headers, *header_set.files()], extra=extra)

    def compile_into(work: Path) -> Path:
        if not header_set.precompile:
            return _compile_and_link(cxx, flags, sources, work)[0]
        pch = PrecompiledHeader(cxx, header_set.folder)
        if pch.ready():
            binary, refused = _compile_and_link(cxx, [*flags, *pch.include_flags()], sources, work)
            if not refused:
                return binary
            pch.discard()
            if binary.is_file():  # g++ warned and parsed the headers itself
                pch.start_build()
                return binary
        binary, _ = _compile_and_link(cxx, flags, sources, work)
        pch.start_build()
        return binary

    what = f"compiling C simulation (g++ {CXX_FLAGS[0]}, {header_set.name})"
    return cached_binary("csim", digest, "csim", what, compile_into)


def _build_with_headers(kernel: Kernel, sources: list[Path], own_headers: list[Path], src: Path,
                        headers: str | None) -> tuple[Path, str]:
    """The kernel's binary and the name of the header set it was built with (``choose_headers``). Under
    ``auto``, g++ failing with ``fastfixed`` (a construct it lacks) builds again with ``ap_types``."""
    header_set = choose_headers(kernel, headers)
    try:
        return build(sources, own_headers, header_set, [src]), header_set.name
    except RuntimeError as e:
        if header_set.name != FAST or requested_headers(headers) != "auto":
            raise
        first = next((line for line in str(e).splitlines() if "error" in line), "")
        print(f"fx2fpga: the {FAST} headers cannot compile {kernel.name} ({first.strip()[:300]}); "
              f"building with {VENDOR}", file=sys.stderr)
    return build(sources, own_headers, choose_headers(kernel, VENDOR), [src]), VENDOR


class CsimBackend:
    """The kernel's C++ (``src/`` of a project folder) running as a g++-compiled server process.

    ``headers``: ``auto`` (default: ``$FX2FPGA_CSIM_HEADERS``, else ``auto``), ``fastfixed`` or ``ap_types``
    (see the module docstring); ``self.headers`` names the set the binary was built with."""

    name = "csim"

    def __init__(self, kernel: Kernel, project_dir: str | Path, headers: str | None = None):
        self.kernel = kernel
        src = Path(project_dir) / "src"
        sources = [src / f"{kernel.name}.cpp", src / "csim_main.cpp"]
        own_headers = [src / f"{kernel.name}.h"]
        missing = [str(s) for s in sources + own_headers if not s.is_file()]
        if missing:
            raise FileNotFoundError(f"the csim backend needs the generated sources {missing}: regenerate the project")
        self.binary, self.headers = _build_with_headers(kernel, sources, own_headers, src, headers)
        self._server = WordServer(self.binary, "csim")

    def call(self, command: str, in_words: np.ndarray) -> np.ndarray:
        """Send one command and its input words; returns the output words (int32)."""
        return self._server.call(command, in_words)

    def close(self) -> None:
        """End the simulation process (its on-chip state goes with it)."""
        self._server.close()
