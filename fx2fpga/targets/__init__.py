"""Boards as data: one TOML file per target in this package, read into frozen ``Target`` records.

from fx2fpga.targets import load_target, list_targets
load_target("pynq-z1").dsp        # 220
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass, fields
from importlib import resources

from fx2fpga.errors import Fx2fpgaError, UnknownTargetError

TOOLCHAINS = ("vivado", "yosys-nextpnr", "quartus")


class TargetFileError(Fx2fpgaError, ValueError):
    """A target TOML file is malformed: a field is missing, unknown, or of the wrong type or range."""


AXI4_MAX_BURST_BEATS = 256  # an AXI4 INCR burst: AxLEN is 8 bits (AXI3: 4 bits, 16 beats)


@dataclass(frozen=True)
class DdrBus:
    """The path from the fabric to the board's DDR, as the tiling pass will cost it (the ``[ddr]`` table of a target
    file; docs/offchip.md): a kernel's AXI master reaches the DDR through one port of ``bytes_per_cycle`` bytes per
    fabric cycle, in bursts of at most ``port_burst_beats`` beats there (the master may issue up to
    ``burst_beats``; longer ones are split on the way), the first beat of a read arriving ``read_latency_cycles``
    after the request; ``mbytes_for_pl`` is what the driver can allocate for the kernel's buffers."""

    port: str  # which port: "S_AXI_HP0"
    bytes_per_cycle: int  # the port's data width in bytes: one beat per fabric cycle
    burst_beats: int  # the longest burst the kernel's AXI master issues (AXI4: up to 256)
    port_burst_beats: int  # the longest burst the port itself takes (Zynq-7000 HP ports are AXI3: 16)
    read_latency_cycles: int  # fabric cycles from a read request to its first beat
    mbytes_for_pl: int  # MB of DDR the driver can hand the kernel (contiguous memory)
    source: str  # where the figures come from (the file's comments say which figure from where)

    def peak_mbytes_per_s(self, clock_mhz: float) -> float:
        """The port's peak rate at the fabric clock: one beat of ``bytes_per_cycle`` per cycle, in MB/s."""
        return self.bytes_per_cycle * clock_mhz


@dataclass(frozen=True)
class Target:
    """An FPGA board: its part, fabric clock and resource budget, processor system and toolchain."""

    name: str  # the id users type: "pynq-z1"
    description: str
    part: str  # vendor part number: "xc7z020clg400-1"
    family: str  # fabric family as Yosys names it: "xc7", "xcup", "ecp5"
    clock_mhz: float  # fabric clock the kernel is built for
    lut: int
    ff: int
    bram36: int  # 36 kb block RAMs (or the equivalent count)
    dsp: int
    dsp_kind: str  # "DSP48E1", "DSP48E2", "MULT18X18D", ...
    ps: str | None  # processor system kind ("zynq7", "zynqmp") or None for a bare FPGA
    toolchain: str  # one of TOOLCHAINS
    board_part: str | None = None  # Vivado board-file id, if the board has one
    board_clock_mhz: float | None = None  # the board oscillator a PLL turns into clock_mhz (bare FPGAs)
    board_clock_pin: str | None = None  # the package pin of that oscillator
    bus_mbytes_per_s: float | None = None  # host <-> fabric bandwidth the kernel's data crosses (measured)
    bus_source: str | None = None  # where that figure comes from
    ddr: DdrBus | None = None  # the fabric's path to DDR, for buffers placed off chip (None: the board has none)


_REQUIRED_STR = ("name", "description", "part", "family", "dsp_kind", "toolchain")
_OPTIONAL_STR = ("ps", "board_part", "board_clock_pin", "bus_source")
_POSITIVE_INT = ("lut", "ff", "bram36", "dsp")


def _parse(source: str, text: str) -> Target:
    """One target from the text of its TOML file; ``source`` names the file in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TargetFileError(f"{source}: not valid TOML: {exc}") from exc
    known = {f.name for f in fields(Target)}  # ddr is a table: read by _ddr
    unknown = sorted(set(data) - known)
    if unknown:
        raise TargetFileError(f"{source}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    missing = [k for k in (*_REQUIRED_STR, *_POSITIVE_INT, "clock_mhz") if k not in data]
    if missing:
        raise TargetFileError(f"{source}: missing field(s) {', '.join(missing)}")
    for key in _REQUIRED_STR:
        _check_text(source, key, data[key])
    for key in _OPTIONAL_STR:
        if key in data and (not isinstance(data[key], str) or not data[key].strip()):
            raise TargetFileError(f"{source}: {key} must be a non-empty string or left out, got {data[key]!r}")
    for key in _POSITIVE_INT:
        _check_count(source, key, data[key])
    clock = data["clock_mhz"]
    if isinstance(clock, bool) or not isinstance(clock, int | float) or not 0 < clock < 10_000:
        raise TargetFileError(f"{source}: clock_mhz must be a number of MHz in (0, 10000), got {clock!r}")
    if data["toolchain"] not in TOOLCHAINS:
        raise TargetFileError(f"{source}: toolchain {data['toolchain']!r} is not one of {', '.join(TOOLCHAINS)}")
    osc = data.get("board_clock_mhz")
    if osc is not None and (isinstance(osc, bool) or not isinstance(osc, int | float) or not 0 < osc < 1_000):
        raise TargetFileError(f"{source}: board_clock_mhz must be a number of MHz in (0, 1000), got {osc!r}")
    bus = data.get("bus_mbytes_per_s")
    if bus is not None and (isinstance(bus, bool) or not isinstance(bus, int | float) or not 0 < bus < 1e6):
        raise TargetFileError(f"{source}: bus_mbytes_per_s must be a positive number of MB/s, got {bus!r}")
    if data["family"] == "ecp5":
        _check_ecp5(source, data)
    ddr = _ddr(source, data["ddr"]) if "ddr" in data else None
    return Target(
        name=data["name"],
        description=data["description"],
        part=data["part"],
        family=data["family"],
        clock_mhz=float(clock),
        lut=data["lut"],
        ff=data["ff"],
        bram36=data["bram36"],
        dsp=data["dsp"],
        dsp_kind=data["dsp_kind"],
        ps=data.get("ps"),
        toolchain=data["toolchain"],
        board_part=data.get("board_part"),
        board_clock_mhz=float(osc) if osc is not None else None,
        board_clock_pin=data.get("board_clock_pin"),
        bus_mbytes_per_s=float(bus) if bus is not None else None,
        bus_source=data.get("bus_source"),
        ddr=ddr,
    )


def _check_text(source: str, key: str, value) -> None:
    """A target file's ``key`` must be a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise TargetFileError(f"{source}: {key} must be a non-empty string, got {value!r}")


def _check_count(source: str, key: str, value) -> None:
    """A target file's ``key`` must be a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TargetFileError(f"{source}: {key} must be a positive integer, got {value!r}")


_DDR_INT = ("bytes_per_cycle", "burst_beats", "port_burst_beats", "read_latency_cycles", "mbytes_for_pl")


def _ddr(source: str, table) -> DdrBus:
    """The ``[ddr]`` table of a target file: every field of ``DdrBus``, positive whole numbers where they count,
    a power-of-two port width, bursts within AXI4's 256 beats and the port's within the master's."""
    if not isinstance(table, dict):
        raise TargetFileError(f"{source}: ddr must be a table ([ddr]) with {', '.join(f.name for f in fields(DdrBus))}")
    known = [f.name for f in fields(DdrBus)]
    unknown = sorted(set(table) - set(known))
    missing = [k for k in known if k not in table]
    if unknown or missing:
        raise TargetFileError(f"{source}: [ddr] " + "; ".join(
            ([f"unknown field(s) {', '.join(unknown)}"] if unknown else [])
            + ([f"missing field(s) {', '.join(missing)}"] if missing else [])) + f"; it takes {', '.join(known)}")
    for key in ("port", "source"):
        _check_text(source, f"[ddr] {key}", table[key])
    for key in _DDR_INT:
        _check_count(source, f"[ddr] {key}", table[key])
    width = table["bytes_per_cycle"]
    if width & (width - 1):
        raise TargetFileError(f"{source}: [ddr] bytes_per_cycle must be a power of two (an AXI data width: 4, 8, "
                              f"16, ... bytes), got {width}")
    if table["burst_beats"] > AXI4_MAX_BURST_BEATS:
        raise TargetFileError(f"{source}: [ddr] burst_beats {table['burst_beats']} is over AXI4's "
                              f"{AXI4_MAX_BURST_BEATS}-beat limit")
    if table["port_burst_beats"] > table["burst_beats"]:
        raise TargetFileError(f"{source}: [ddr] port_burst_beats {table['port_burst_beats']} is over burst_beats "
                              f"{table['burst_beats']} (the master's bursts are split to the port's, not merged)")
    return DdrBus(**table)


@dataclass(frozen=True)
class Ecp5Part:
    """A Lattice ECP5 ordering code, decoded: ``LFE5U-85F-6BG381C`` is kind U, 85 (k LUTs), speed 6, CABGA381."""

    kind: str  # "U", "UM" or "UM5G"
    size: int  # 12, 25, 45 or 85
    speed: int  # 6, 7 or 8
    package: str  # "CABGA381", "CSFBGA285", ...


_ECP5_PART = re.compile(r"^LFE5(U|UM|UM5G)-(12|25|45|85)F-([678])(BG|MG)(\d+)[CI]$")
_ECP5_PACKAGES = {"BG": "CABGA", "MG": "CSFBGA"}


def ecp5_part(part: str) -> Ecp5Part:
    """Decode an ECP5 ordering code; raises ``ValueError`` naming what a valid one looks like."""
    m = _ECP5_PART.match(part.strip().upper())
    if m is None:
        raise ValueError(f"part {part!r} is not an ECP5 ordering code nextpnr-ecp5 knows "
                         f"(like LFE5U-85F-6BG381C: LFE5U/LFE5UM/LFE5UM5G, 12/25/45/85F, speed 6-8, BG/MG package)")
    kind, size, speed, pkg, pins = m.groups()
    if size == "12" and kind != "U":
        raise ValueError(f"part {part!r}: there is no {kind} variant of the 12F")
    return Ecp5Part(kind, int(size), int(speed), f"{_ECP5_PACKAGES[pkg]}{pins}")


def _check_ecp5(source: str, data: dict) -> None:
    """An ECP5 board needs a part nextpnr-ecp5 knows and the oscillator its PLL starts from."""
    try:
        ecp5_part(data["part"])
    except ValueError as exc:
        raise TargetFileError(f"{source}: {exc}") from None
    missing = [k for k in ("board_clock_mhz", "board_clock_pin") if k not in data]
    if missing:
        raise TargetFileError(f"{source}: an ecp5 board needs {' and '.join(missing)} (the oscillator the PLL "
                              f"makes clock_mhz from)")


@functools.cache
def _registry() -> dict[str, Target]:
    """Every target shipped in this package, by name (read once)."""
    targets: dict[str, Target] = {}
    for entry in resources.files(__name__).iterdir():
        if not entry.name.endswith(".toml"):
            continue
        target = _parse(entry.name, entry.read_text(encoding="utf-8"))
        stem = entry.name.removesuffix(".toml")
        if target.name != stem:
            raise TargetFileError(f"{entry.name}: name {target.name!r} must match the file name {stem!r}")
        targets[target.name] = target
    return targets


def list_targets() -> list[Target]:
    """All known targets, sorted by name."""
    return [t for _, t in sorted(_registry().items())]


def load_target(name: str | Target) -> Target:
    """The target called ``name`` (case-insensitive); raises ``UnknownTargetError`` listing the known ones."""
    if isinstance(name, Target):
        return name
    registry = _registry()
    key = str(name).strip().lower()
    if key not in registry:
        raise UnknownTargetError(str(name), sorted(registry))
    return registry[key]


__all__ = ["AXI4_MAX_BURST_BEATS", "TOOLCHAINS", "DdrBus", "Ecp5Part", "Target", "TargetFileError", "ecp5_part",
           "list_targets", "load_target"]
