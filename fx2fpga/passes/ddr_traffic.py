"""DDR traffic per call: the bytes each command of a kernel reads from and writes to each of its DDR buffers, as the
generated HLS C++ (``backends/hls/emit.py``, ``templates/hls/kernel.cpp.j2``) accesses them today, untiled.

Every read or write of one element of a DDR buffer is one DDR access of ``placement.bytes_per_value(width, DDR)``
bytes, its ``m_axi`` array's element (a power of two of bytes: 4 for a 24-bit value; no tiles, no bursts, no
cache: each is an ``m_axi`` access). Per call of a command:

- its ``unpack`` writes every value of a DDR buffer it takes from ``in_words`` once (``load_params``: the
  parameters), its ``pack`` reads every value of one it gives to ``out_words`` once (``read_params``);
- its program runs its stages once per model group (``Program.groups``);
- an elementwise stage reads each operand and writes its output once per point of its loop nest;
- a reduction reads each operand at every point of its nest (kept and reduced loops) and writes its output once
  per point of its kept loops; its init operand (``mac``/``sum``'s optional input after its operands) is read
  once per kept point, where the C++ starts the accumulator (``acc = init`` before the reduce loops), and so is
  a fused ReLU backward's gate (``then == "relu_mask"``), where the C++ assigns the result;
- a guarded read happens only where every guard holds (padding: the C++ reads ``guard ? buf[i] : 0``);
- lanes change no count: each lane is one point, and a partial last lane group skips the lanes past the extent.

Each operand counts once per point even where the op's C++ spelling names it twice (``relu``: ``a > 0 ? a : 0``,
one load the compiler reuses), and a ``select``'s two values both count at every point, though the C++ reads
only the chosen one: for those operands the count is an upper bound. The time the bytes take at the target's
``[ddr] bytes_per_cycle`` (``min_cycles``) is a lower bound of the call's time.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from fx2fpga_runtime import interface
from fx2fpga_runtime.emu_compile import Space
from fx2fpga_runtime.emulator import guard_mask
from fx2fpga_runtime.ir import DDR, GROUP_VAR, Access, Kernel, Stage
from fx2fpga_runtime.ops import OPS_TABLE

from .placement import bytes_per_value


@dataclass(frozen=True)
class BufferTraffic:
    """One DDR buffer's accesses in one call, and their bytes."""

    buffer: str
    reads: int  # element reads per call
    writes: int  # element writes per call
    bytes_per_value: int

    @property
    def read_bytes(self) -> int:
        return self.reads * self.bytes_per_value

    @property
    def write_bytes(self) -> int:
        return self.writes * self.bytes_per_value


@dataclass(frozen=True)
class CommandTraffic:
    """One command's DDR traffic per call: its DDR buffers (those it touches, in declaration order)."""

    command: str
    buffers: tuple[BufferTraffic, ...]

    @property
    def read_bytes(self) -> int:
        return sum(b.read_bytes for b in self.buffers)

    @property
    def write_bytes(self) -> int:
        return sum(b.write_bytes for b in self.buffers)

    @property
    def bytes(self) -> int:
        return self.read_bytes + self.write_bytes

    def min_cycles(self, ddr) -> int:
        """Cycles the bytes take at the port's peak (``ddr``: the target's ``DdrBus``): a lower bound of the call."""
        return math.ceil(self.bytes / ddr.bytes_per_cycle)


def guarded_points(access: Access, extents: dict[str, int], groups: int) -> int:
    """Points of a loop nest (``extents``: variable -> extent), over ``groups`` model groups, where every guard of
    ``access`` holds. Only the variables the guards use are enumerated; the others multiply."""
    total = math.prod(extents.values()) * groups
    if not access.guard:
        return total
    space = {**extents, GROUP_VAR: groups}
    used = tuple(sorted({v for g in access.guard for v in g.expr.vars()}))
    shape = tuple(space[v] for v in used)
    held = int(np.count_nonzero(guard_mask(access, Space(used, shape).grid(set(used)), shape)))
    return held * total // math.prod(shape)


def stage_accesses(stage: Stage, groups: int = 1) -> Counter:
    """``{(buffer, "read" | "write"): element accesses}`` of one run of ``stage`` per model group, ``groups`` runs."""
    extents = {lp.var: lp.extent for lp in stage.loops}
    kept = {v: n for v, n in extents.items() if v not in stage.reduce}
    arity = OPS_TABLE[stage.op].arity if stage.reduce else len(stage.ins)
    counts: Counter = Counter()
    for a in stage.ins[:arity]:
        counts[a.buffer, "read"] += guarded_points(a, extents, groups)
    for a in stage.ins[arity:]:  # a reduction's init: read where the accumulator starts, once per kept point
        counts[a.buffer, "read"] += guarded_points(a, kept, groups)
    counts[stage.out.buffer, "write"] += math.prod(kept.values()) * groups
    return counts


def command_traffic(kernel: Kernel, command: str) -> CommandTraffic:
    """The DDR accesses of one call of ``command``: its unpacks, its program's stages, its packs."""
    ins, outs = interface.command_buffers(kernel, command)
    counts: Counter = Counter()
    for name in ins:
        counts[name, "write"] += kernel.buffers[name].size
    prog = kernel.programs.get(command)
    for st in prog.stages if prog else ():
        counts.update(stage_accesses(st, prog.groups))
    for name in outs:
        counts[name, "read"] += kernel.buffers[name].size
    rows = tuple(BufferTraffic(n, counts[n, "read"], counts[n, "write"],
                               bytes_per_value(kernel.buffers[n].fmt.width, DDR))
                 for n in kernel.ddr_buffers() if counts[n, "read"] or counts[n, "write"])
    return CommandTraffic(command, rows)


def kernel_traffic(kernel: Kernel) -> list[CommandTraffic]:
    """Every command's DDR traffic per call, in command-code order; empty for a kernel wholly on chip."""
    if not kernel.ddr_buffers():
        return []
    codes = interface.commands_of(kernel)
    return [command_traffic(kernel, c) for c in sorted(codes, key=codes.get)]


def manifest_entry(traffic: list[CommandTraffic], target) -> dict:
    """``manifest.json``'s ``ddr_traffic``: per command, bytes read and written per DDR buffer, the totals and the
    lower-bound cycles at the target's ``[ddr]`` port (none without one)."""
    out = {}
    for t in traffic:
        out[t.command] = {
            "buffers": {b.buffer: {"read_bytes": b.read_bytes, "write_bytes": b.write_bytes} for b in t.buffers},
            "read_bytes": t.read_bytes, "write_bytes": t.write_bytes, "bytes": t.bytes,
            **({"min_cycles": t.min_cycles(target.ddr)} if target.ddr else {})}
    return out
