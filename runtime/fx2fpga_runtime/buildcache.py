"""Simulation binaries built once per content hash, in ``$FX2FPGA_CACHE`` (``~/.cache/fx2fpga``)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("FX2FPGA_CACHE") or Path.home() / ".cache" / "fx2fpga")


def cached_binary(kind: str, digest: str, name: str, what: str, build: Callable[[Path], Path]) -> Path:
    """The binary for ``digest``, building it with ``build(work_dir) -> produced file`` if missing.

    Prints one progress line with the time taken; the binary appears atomically, so a
    concurrent build never sees half of one.
    """
    folder = cache_dir() / kind / digest[:32]
    binary = folder / name
    if binary.is_file():
        return binary
    folder.mkdir(parents=True, exist_ok=True)
    print(f"fx2fpga: {what} ...", end=" ", file=sys.stderr, flush=True)
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=folder))
    try:
        os.replace(build(work), binary)
    except BaseException:
        print("failed", file=sys.stderr)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{time.monotonic() - start:.1f} s", file=sys.stderr)
    return binary
