"""The roofline of a compiled kernel on its target: where each program sits against the DSP peak,
the on-chip memory bandwidth and the bus bandwidth (``fx2fpga report`` writes it).

- Work: multiply-accumulates per call (every point of a stage whose op multiplies: ``mac``, ``mul``).
- Time: the RTL's exact cycles per call (``manifest.json``'s ``rtl_cycles``) at the target clock.
- Bus traffic: the call's 32-bit words in and out (the AXI interface, ``interface.py``).
- On-chip traffic: every operand read and every result written by the stages, at the buffers' widths.

Roofs: the DSP peak is one product per DSP block per cycle (``target.dsp x clock``); the on-chip
roof is every block RAM's two ports, 36 bits each, every cycle (``bram36 x 72 bits x clock``); the bus
roof is the target's ``bus_mbytes_per_s`` (a measured figure, with its source in the target file), and
a target without one has no bus roof.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from fx2fpga_runtime import interface, read_kernel
from fx2fpga_runtime.ir import Kernel
from fx2fpga_runtime.ops import OPS_TABLE

from . import plots

BRAM36_PORT_BITS = 72  # two ports of 36 bits per BRAM36 (true dual port), every cycle


@dataclass(frozen=True)
class ProgramPoint:
    """One program of the kernel on the roofline."""

    program: str
    macs: int  # multiply-accumulates per call
    bus_bytes: int  # bytes over the bus per call (words in and out)
    onchip_bytes: int  # bytes read and written in on-chip memories per call
    cycles: int  # exact RTL cycles per call
    mac_per_s: float  # achieved at the target clock

    @property
    def bus_intensity(self) -> float:
        """MACs per byte moved over the bus."""
        return self.macs / self.bus_bytes if self.bus_bytes else math.inf

    @property
    def onchip_intensity(self) -> float:
        """MACs per byte moved in on-chip memory."""
        return self.macs / self.onchip_bytes if self.onchip_bytes else math.inf


@dataclass(frozen=True)
class Roofs:
    """The target's ceilings: MAC/s and bytes/s."""

    peak_mac_per_s: float
    onchip_bytes_per_s: float
    bus_bytes_per_s: float | None  # None: the target file gives no bus bandwidth
    bus_source: str


def target_roofs(target) -> Roofs:
    """The DSP, on-chip and bus ceilings of ``target`` at its clock."""
    hz = target.clock_mhz * 1e6
    bus = target.bus_mbytes_per_s * 1e6 if target.bus_mbytes_per_s else None
    return Roofs(target.dsp * hz, target.bram36 * BRAM36_PORT_BITS / 8 * hz, bus, target.bus_source or "")


def _onchip_bytes(kernel: Kernel, program: str) -> int:
    """Bytes every stage of ``program`` reads (each operand at each point) and writes (each result)."""
    bits = 0
    prog = kernel.programs[program]
    for st in prog.stages:
        reduced = math.prod(lp.extent for lp in st.loops if lp.var in st.reduce)
        bits += st.iterations * sum(kernel.buffers[a.buffer].fmt.width for a in st.ins)
        bits += st.iterations // max(1, reduced) * kernel.buffers[st.out.buffer].fmt.width
    return prog.groups * bits // 8


def program_macs(kernel: Kernel, program: str) -> int:
    """Multiply-accumulates of one call: every point of every stage whose op multiplies (once per model group)."""
    prog = kernel.programs[program]
    return prog.groups * sum(st.iterations for st in prog.stages if OPS_TABLE[st.op].multiplies)


def program_points(kernel: Kernel, rtl_cycles: dict[str, int], clock_mhz: float) -> list[ProgramPoint]:
    """Each program with RTL cycles as a point: its work, its traffic and its achieved MAC/s."""
    points = []
    for name in kernel.programs:
        cycles = rtl_cycles.get(name)
        if not cycles:
            continue
        macs = program_macs(kernel, name)
        ins, outs = interface.command_buffers(kernel, name)
        words = interface.word_count(kernel, ins) + interface.word_count(kernel, outs)
        points.append(ProgramPoint(name, macs, 4 * words, _onchip_bytes(kernel, name), cycles,
                                   macs / (cycles / (clock_mhz * 1e6))))
    return points


def report_section(points: list[ProgramPoint], roofs: Roofs, png: str) -> str:
    """The report.md section: a table of the points against the roofs."""
    bus = (f"{roofs.bus_bytes_per_s / 1e6:,.0f} MB/s ({roofs.bus_source})" if roofs.bus_bytes_per_s
           else "none given for this target")
    lines = ["## Roofline", "",
             f"Ceilings: DSP peak {roofs.peak_mac_per_s / 1e9:,.1f} GMAC/s; on-chip "
             f"{roofs.onchip_bytes_per_s / 1e9:,.1f} GB/s (every BRAM36 port every cycle); bus {bus}. "
             f"Plot: `{png}`.", "",
             "| program | MACs/call | bus bytes | on-chip bytes | cycles | achieved | of DSP peak "
             "| lowest roof at its intensity |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for p in points:
        lines.append(f"| `{p.program}` | {p.macs:,} | {p.bus_bytes:,} | {p.onchip_bytes:,} | {p.cycles:,} | "
                     f"{p.mac_per_s / 1e6:,.1f} MMAC/s | {p.mac_per_s / roofs.peak_mac_per_s:.1%} | "
                     f"{_bound(p, roofs)} |")
    return "\n".join(lines) + "\n"


def _bound(p: ProgramPoint, roofs: Roofs) -> str:
    """Which ceiling is lowest at this point's intensities (what would limit it if it ran at a roof)."""
    ceilings = {"DSP peak": roofs.peak_mac_per_s, "on-chip bandwidth": roofs.onchip_bytes_per_s * p.onchip_intensity}
    if roofs.bus_bytes_per_s:
        ceilings["bus bandwidth"] = roofs.bus_bytes_per_s * p.bus_intensity
    return min(ceilings, key=ceilings.get)


def plot(points: list[ProgramPoint], roofs: Roofs, title: str, png: Path) -> bool:
    """Draw the roofline (log-log) to ``png``; False when matplotlib is not installed."""
    plt = plots.pyplot()
    if plt is None:
        return False
    xs = [v for p in points for v in (p.bus_intensity, p.onchip_intensity) if math.isfinite(v) and v > 0]
    lo, hi = min(xs + [0.01]) / 4, max(xs + [100.0]) * 4
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(grid, [min(roofs.peak_mac_per_s, roofs.onchip_bytes_per_s * x) for x in grid], "k-",
            label="DSP peak / on-chip bandwidth")
    if roofs.bus_bytes_per_s:
        ax.plot(grid, [min(roofs.peak_mac_per_s, roofs.bus_bytes_per_s * x) for x in grid], "k--",
                label="DSP peak / bus bandwidth")
    for p, color in zip(points, ("#4c72b0", "#dd8452", "#55a868", "#c44e52"), strict=False):
        ax.plot([p.bus_intensity], [p.mac_per_s], "o", color=color, label=f"{p.program} (bus bytes)")
        ax.plot([p.onchip_intensity], [p.mac_per_s], "s", color=color, fillstyle="none",
                label=f"{p.program} (on-chip bytes)")
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
    points = program_points(kernel, manifest.get("rtl_cycles") or {}, target.clock_mhz)
    reports = project_dir / "reports"
    reports.mkdir(exist_ok=True)
    data = {"target": target.name, "clock_mhz": target.clock_mhz, "roofs": asdict(roofs),
            "programs": [{**asdict(p), "bus_intensity": p.bus_intensity, "onchip_intensity": p.onchip_intensity}
                         for p in points]}
    (reports / "roofline.json").write_text(json.dumps(data, indent=1) + "\n")
    drawn = plot(points, roofs, f"{kernel.name} on {target.name} at {target.clock_mhz:g} MHz",
                 reports / "roofline.png")
    png = "reports/roofline.png" if drawn else "none (install matplotlib)"
    report = project_dir / "report.md"
    report.write_text(replace_section(report.read_text(), "## Roofline", report_section(points, roofs, png),
                                      before="## Synthesis (Yosys"))
    return points
