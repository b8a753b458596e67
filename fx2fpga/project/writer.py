"""Write a project folder atomically: build it beside the destination, then swap it in with renames.

The destination is replaced only when it is missing, empty, or an earlier fx2fpga project (a
``manifest.json`` whose ``"generator"`` is ``"fx2fpga"``); anything else raises
``OutputPathError`` and is left untouched. Files get exactly the given bytes (text: UTF-8 with
LF line endings), so a recompile with unchanged content gives a byte-identical folder.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from fx2fpga.errors import OutputPathError

MANIFEST = "manifest.json"
GENERATOR = "fx2fpga"


def manifest_text(fields: Mapping[str, object]) -> str:
    """Deterministic ``manifest.json`` text: ``fields`` plus ``"generator": "fx2fpga"``, sorted keys."""
    return json.dumps({**fields, "generator": GENERATOR}, indent=2, sort_keys=True) + "\n"


def is_project(path: Path) -> bool:
    """Whether ``path`` is a folder written by fx2fpga (its manifest names fx2fpga as the generator)."""
    try:
        data = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("generator") == GENERATOR


def _relative(name: str) -> PurePosixPath:
    """A file name of the project as a safe relative path (no absolute paths, no ``..``)."""
    rel = PurePosixPath(name)
    if not name or "\\" in name or rel.is_absolute() or any(p in ("..", ".") for p in name.split("/")):
        raise ValueError(f"project file name {name!r} must be a relative POSIX path without '.' or '..' parts")
    return rel


def _content(data: str | bytes) -> bytes:
    """The bytes to write: bytes as they are, text as UTF-8 with LF line endings."""
    if isinstance(data, bytes):
        return data
    return data.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")


def _check_destination(out_dir: Path) -> None:
    """Raise ``OutputPathError`` unless ``out_dir`` may be (re)placed by a project."""
    if out_dir.is_symlink():
        raise OutputPathError(f"{out_dir} is a symbolic link; give the real folder to write the project into")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputPathError(f"{out_dir} exists and is not a folder; choose another output path or remove it")
    if any(out_dir.iterdir()) and not is_project(out_dir):
        raise OutputPathError(
            f"{out_dir} is a non-empty folder that is not an fx2fpga project (no {MANIFEST} with "
            f'"generator": "{GENERATOR}"); fx2fpga won\'t overwrite it: choose an empty or new folder'
        )


def write_project(out_dir: Path, files: Mapping[str, str | bytes]) -> Path:
    """Write ``files`` (relative POSIX name -> content) as the folder ``out_dir``, atomically.

    ``files`` must contain a ``manifest.json`` that marks the folder as an fx2fpga project (see
    ``manifest_text``), so that the next write may replace it.
    """
    out_dir = Path(out_dir)
    target = out_dir.absolute()
    if not target.name:
        raise OutputPathError(f"{out_dir} cannot be a project folder; name a folder below it")
    entries = {_relative(name): _content(data) for name, data in files.items()}
    clashes = sorted(str(rel) for rel in entries if any(parent in entries for parent in rel.parents))
    if clashes:
        raise ValueError(f"project files {', '.join(clashes)} lie below a name that is itself a file")
    if MANIFEST not in files or not _is_manifest(entries[PurePosixPath(MANIFEST)]):
        raise ValueError(f'the project files need a {MANIFEST} with "generator": "{GENERATOR}" (see manifest_text)')
    _check_destination(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the parent folder of {out_dir}: {exc}") from exc

    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging = target.parent / f".{target.name}.fx2fpga-new-{token}"
    staging.mkdir()
    try:
        for rel, data in sorted(entries.items()):
            path = staging.joinpath(*rel.parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(data)
        _swap_in(staging, target, target.parent / f".{target.name}.fx2fpga-old-{token}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _is_manifest(data: bytes) -> bool:
    try:
        manifest = json.loads(data.decode("utf-8"))
    except ValueError:
        return False
    return isinstance(manifest, dict) and manifest.get("generator") == GENERATOR


def _swap_in(staging: Path, target: Path, old: Path) -> None:
    """Rename ``staging`` to ``target``; an existing ``target`` goes aside first and comes back on failure."""
    if not target.exists():
        os.rename(staging, target)
        return
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["GENERATOR", "MANIFEST", "is_project", "manifest_text", "write_project"]
