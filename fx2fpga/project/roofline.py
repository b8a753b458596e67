"""The roofline of a compiled kernel on its target: where each program sits against the DSP peak,
the on-chip memory bandwidth and the bus bandwidth (``fx2fpga report`` writes it).

- Work: multiply-accumulates per call (every point of a stage whose op multiplies: ``mac``, ``mul``).
- Time: the RTL's exact cycles per call (``manifest.json``'s ``rtl_cycles``) at the target clock. A kernel with
  buffers in DDR has no RTL yet (issue 17): its time is the HLS estimate (``estimate.program_cycles``), or the
  call's DDR bytes at the port's peak where that is longer (both lower bounds of the untiled HLS kernel's time).
- Bus traffic: the call's 32-bit words in and out (the AXI interface, ``interface.py``).
- On-chip traffic: every operand read and every result written by the stages, at the buffers' widths.
- DDR traffic: the bytes the call reads and writes in DDR buffers (``passes/ddr_traffic.py``).

Roofs: the DSP peak is one product per DSP block per cycle (``target.dsp x clock``); the on-chip
roof is every block RAM's two ports, 36 bits each, every cycle (``bram36 x 72 bits x clock``); the bus
roof is the target's ``bus_mbytes_per_s`` (a measured figure, with its source in the target file), and
a target without one has no bus roof. The DDR roof is the target's ``[ddr]`` port at its peak
(``bytes_per_cycle x clock``), drawn for a kernel with DDR buffers.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from fx2fpga_runtime import interface, read_kernel
from fx2fpga_runtime.ir import Kernel
from fx2fpga_runtime.ops import OPS_TABLE

from ..passes import ddr_traffic, estimate
from . import plots

BRAM36_PORT_BITS = 72  # two ports of 36 bits per BRAM36 (true dual port), every cycle


@dataclass(frozen=True)
class ProgramPoint:
    """One program of the kernel on the roofline."""

    program: str
    macs: int  # multiply-accumulates per call
    bus_bytes: int  # bytes over the bus per call (words in and out)
    onchip_bytes: int  # bytes read and written in on-chip memories per call
    cycles: int  # exact RTL cycles per call (a DDR kernel: see ``cycles_from``)
    mac_per_s: float  # achieved at the target clock
    ddr_bytes: int = 0  # bytes read and written in DDR buffers per call
    cycles_from: str = "rtl"  # "rtl", or for a DDR kernel "hls estimate" or "ddr bytes at the port's peak"

    @property
    def bus_intensity(self) -> float:
        """MACs per byte moved over the bus."""
        return self.macs / self.bus_bytes if self.bus_bytes else math.inf

    @property
    def onchip_intensity(self) -> float:
        """MACs per byte moved in on-chip memory."""
        return self.macs / self.onchip_bytes if self.onchip_bytes else math.inf

    @property
    def ddr_intensity(self) -> float:
        """MACs per byte moved in DDR."""
        return self.macs / self.ddr_bytes if self.ddr_bytes else math.inf


@dataclass(frozen=True)
class Roofs:
    """The target's ceilings: MAC/s and bytes/s."""

    peak_mac_per_s: float
    onchip_bytes_per_s: float
    bus_bytes_per_s: float | None  # None: the target file gives no bus bandwidth
    bus_source: str
    ddr_bytes_per_s: float | None = None  # None: the target file has no [ddr] table
    ddr_source: str = ""


def target_roofs(target) -> Roofs:
    """The DSP, on-chip, bus and DDR ceilings of ``target`` at its clock."""
    hz = target.clock_mhz * 1e6
    bus = target.bus_mbytes_per_s * 1e6 if target.bus_mbytes_per_s else None
    ddr = target.ddr.bytes_per_cycle * hz if target.ddr else None
    return Roofs(target.dsp * hz, target.bram36 * BRAM36_PORT_BITS / 8 * hz, bus, target.bus_source or "", ddr,
                 f"{target.ddr.bytes_per_cycle} bytes a cycle at the {target.ddr.port} port" if target.ddr else "")


def _onchip_bytes(kernel: Kernel, program: str) -> int:
    """Bytes every stage of ``program`` reads (each operand at each point) and writes (each result)."""
    bits = 0
    prog = kernel.programs[program]
    for st in prog.stages:
        bits += st.iterations * sum(kernel.buffers[a.buffer].fmt.width for a in st.ins)
        bits += st.iterations // st.reduction_points * kernel.buffers[st.out.buffer].fmt.width
    return prog.groups * bits // 8


def program_macs(kernel: Kernel, program: str) -> int:
    """Multiply-accumulates of one call: every point of every stage whose op multiplies (once per model group)."""
    prog = kernel.programs[program]
    return prog.groups * sum(st.iterations for st in prog.stages if OPS_TABLE[st.op].multiplies)


def program_points(kernel: Kernel, rtl_cycles: dict[str, int], clock_mhz: float, ddr=None) -> list[ProgramPoint]:
    """Each program with a time as a point: its work, its traffic and its achieved MAC/s. The time is the RTL's
    cycles; a kernel with DDR buffers and no RTL takes ``ddr_time`` (``ddr``: the target's ``DdrBus`` or None).
    A program without either is left out."""
    traffic = {t.command: t for t in ddr_traffic.kernel_traffic(kernel)}
    points = []
    for name in kernel.programs:
        cycles, source = rtl_cycles.get(name), "rtl"
        if not cycles and name in traffic:
            cycles, source = ddr_time(kernel, name, traffic[name], ddr)
        if not cycles:
            continue
        macs = program_macs(kernel, name)
        ins, outs = interface.command_buffers(kernel, name)
        words = interface.word_count(kernel, ins) + interface.word_count(kernel, outs)
        points.append(ProgramPoint(name, macs, 4 * words, _onchip_bytes(kernel, name), cycles,
                                   macs / (cycles / (clock_mhz * 1e6)), traffic[name].bytes if name in traffic else 0,
                                   source))
    return points


def ddr_time(kernel: Kernel, program: str, traffic, ddr) -> tuple[int, str]:
    """Cycles of a call of a DDR kernel's ``program`` without RTL, and where they come from: the HLS estimate, or
    its DDR bytes at the port's peak (``traffic.min_cycles``) where those take longer (``ddr`` None: the estimate)."""
    hls = estimate.program_cycles(kernel, program)
    port = traffic.min_cycles(ddr) if ddr else 0
    return (port, "ddr bytes at the port's peak") if port > hls else (hls, "hls estimate")


def report_section(points: list[ProgramPoint], roofs: Roofs, png: str) -> str:
    """The report.md section: a table of the points against the roofs."""
    bus = (f"{roofs.bus_bytes_per_s / 1e6:,.0f} MB/s ({roofs.bus_source})" if roofs.bus_bytes_per_s
           else "none given for this target")
    in_ddr = any(p.ddr_bytes for p in points)
    ddr = (f"; DDR {roofs.ddr_bytes_per_s / 1e6:,.0f} MB/s ({roofs.ddr_source})" if in_ddr and roofs.ddr_bytes_per_s
           else "")
    lines = ["## Roofline", "",
             f"Ceilings: DSP peak {roofs.peak_mac_per_s / 1e9:,.1f} GMAC/s; on-chip "
             f"{roofs.onchip_bytes_per_s / 1e9:,.1f} GB/s (every BRAM36 port every cycle); bus {bus}{ddr}. "
             f"Plot: `{png}`.", ""]
    if in_ddr:
        lines += ["Buffers in DDR, no RTL yet: each program's cycles are the HLS estimate, or its DDR bytes at the "
                  "port's peak where those take longer (`cycles from`); both are lower bounds of the untiled HLS "
                  "kernel's time.", ""]
    extra = ["DDR bytes", "cycles from"] if in_ddr else []
    lines += ["| " + " | ".join(["program", "MACs/call", "bus bytes", "on-chip bytes", *extra[:1], "cycles",
                                 *extra[1:], "achieved", "of DSP peak", "lowest roof at its intensity"]) + " |",
              "|---|---:|---:|---:|" + ("---:|" if in_ddr else "") + "---:|" + ("---|" if in_ddr else "")
              + "---:|---:|---|"]
    for p in points:
        cells = [f"`{p.program}`", f"{p.macs:,}", f"{p.bus_bytes:,}", f"{p.onchip_bytes:,}",
                 *([f"{p.ddr_bytes:,}"] if in_ddr else []), f"{p.cycles:,}", *([p.cycles_from] if in_ddr else []),
                 f"{p.mac_per_s / 1e6:,.1f} MMAC/s", f"{p.mac_per_s / roofs.peak_mac_per_s:.1%}", _bound(p, roofs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _bound(p: ProgramPoint, roofs: Roofs) -> str:
    """Which ceiling is lowest at this point's intensities (what would limit it if it ran at a roof)."""
    ceilings = {"DSP peak": roofs.peak_mac_per_s, "on-chip bandwidth": roofs.onchip_bytes_per_s * p.onchip_intensity}
    if roofs.bus_bytes_per_s:
        ceilings["bus bandwidth"] = roofs.bus_bytes_per_s * p.bus_intensity
    if roofs.ddr_bytes_per_s and p.ddr_bytes:
        ceilings["DDR bandwidth"] = roofs.ddr_bytes_per_s * p.ddr_intensity
    return min(ceilings, key=ceilings.get)


def plot(points: list[ProgramPoint], roofs: Roofs, title: str, png: Path) -> bool:
    """Draw the roofline (log-log) to ``png``; False when matplotlib is not installed."""
    plt = plots.pyplot()
    if plt is None:
        return False
    xs = [v for p in points for v in (p.bus_intensity, p.onchip_intensity, p.ddr_intensity)
          if math.isfinite(v) and v > 0]
    lo, hi = min(xs + [0.01]) / 4, max(xs + [100.0]) * 4
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(grid, [min(roofs.peak_mac_per_s, roofs.onchip_bytes_per_s * x) for x in grid], "k-",
            label="DSP peak / on-chip bandwidth")
    if roofs.bus_bytes_per_s:
        ax.plot(grid, [min(roofs.peak_mac_per_s, roofs.bus_bytes_per_s * x) for x in grid], "k--",
                label="DSP peak / bus bandwidth")
    in_ddr = roofs.ddr_bytes_per_s and any(p.ddr_bytes for p in points)
    if in_ddr:
        ax.plot(grid, [min(roofs.peak_mac_per_s, roofs.ddr_bytes_per_s * x) for x in grid], "k:",
                label="DSP peak / DDR bandwidth")
    for p, color in zip(points, ("#4c72b0", "#dd8452", "#55a868", "#c44e52"), strict=False):
        ax.plot([p.bus_intensity], [p.mac_per_s], "o", color=color, label=f"{p.program} (bus bytes)")
        ax.plot([p.onchip_intensity], [p.mac_per_s], "s", color=color, fillstyle="none",
                label=f"{p.program} (on-chip bytes)")
        if in_ddr and p.ddr_bytes:
            ax.plot([p.ddr_intensity], [p.mac_per_s], "^", color=color, label=f"{p.program} (DDR bytes)")
    done = plots.save_log_log(fig, ax, png, "operational intensity (MAC per byte)", "MAC per second", title)
    plt.close(fig)
    return done


def add_to_report(project_dir: Path) -> list[ProgramPoint]:
    """Write ``reports/roofline.{json,png}`` of a project folder and its section into ``report.md``."""
    from ..targets import load_target
    from ..toolchains.yosys import replace_section

    manifest = json.loads((project_dir / "manifest.json").read_text())
    kernel = read_kernel(project_dir)
    target = load_target(manifest["target"]["name"])
    roofs = target_roofs(target)
    points = program_points(kernel, manifest.get("rtl_cycles") or {}, target.clock_mhz, target.ddr)
    reports = project_dir / "reports"
    reports.mkdir(exist_ok=True)
    data = {"target": target.name, "clock_mhz": target.clock_mhz, "roofs": asdict(roofs),
            "programs": [{**asdict(p), "bus_intensity": p.bus_intensity, "onchip_intensity": p.onchip_intensity,
                          **({"ddr_intensity": p.ddr_intensity} if p.ddr_bytes else {})} for p in points]}
    (reports / "roofline.json").write_text(json.dumps(data, indent=1) + "\n")
    drawn = plot(points, roofs, f"{kernel.name} on {target.name} at {target.clock_mhz:g} MHz",
                 reports / "roofline.png")
    png = "reports/roofline.png" if drawn else "none (install matplotlib)"
    report = project_dir / "report.md"
    report.write_text(replace_section(report.read_text(), "## Roofline", report_section(points, roofs, png),
                                      before="## Synthesis (Yosys"))
    return points
