"""First-order latency and resource estimates from the kernel IR (before any synthesis).

Latency: a stage issues ``iterations / lanes`` loop bodies at one per cycle plus a pipeline
depth. Resources: one DSP48 per lane multiplier whose operands fit its 25x18 ports (2 or 4
for wider ones; 18x18 pieces for ECP5's MULT18X18D), block RAM (in BRAM18 halves) from each
buffer's bits and partitioning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fx2fpga_runtime.ir import DDR, Kernel, Stage
from fx2fpga_runtime.ops import OPS_TABLE

from ..backends.common import buffer_banking

PIPELINE_DEPTH = {name: spec.estimate_depth for name, spec in OPS_TABLE.items()}  # the op table's
BRAM18_BITS = 18 * 1024
LUTRAM_MAX_BITS = 1024  # smaller arrays go to distributed RAM / registers


def stage_cycles(stage: Stage) -> int:
    """Estimated clock cycles of one run of ``stage``."""
    return math.ceil(stage.iterations / max(1, stage.lanes)) + PIPELINE_DEPTH.get(stage.op, 2)


def program_cycles(kernel: Kernel, program: str) -> int:
    """Estimated clock cycles of one call of ``program`` (its stages once per model group)."""
    prog = kernel.programs[program]
    return prog.groups * sum(stage_cycles(s) for s in prog.stages)


DSP_PORTS = {"DSP48E1": (25, 18), "DSP48E2": (27, 18), "MULT18X18D": (18, 18)}  # signed operand widths


def multiplier_pieces(width: int, port: int) -> list[tuple[int, int, bool]]:
    """A signed ``width``-bit operand as (low bit, bits, signed) pieces that each fit a ``port``-bit
    signed multiplier input: unsigned ``port - 1``-bit pieces from the bottom, a signed top piece
    (how Yosys' mul2dsp splits it, and how the RTL's partial products do: backends/rtl/emit.py)."""
    if width <= port:
        return [(0, width, True)]
    pieces, low = [], 0
    while width - low > port:
        pieces.append((low, port - 1, False))
        low += port - 1
    return pieces + [(low, width - low, True)]


def dsp_per_multiplier(width_a: int, width_b: int, kind: str = "DSP48E1") -> int:
    """DSP blocks for one ``width_a x width_b`` signed multiplier: DSP48E1/E2 slices (25x18 ports) or
    ECP5 MULT18X18D (18x18; Yosys splits a wider operand into an 18-bit signed top and 17-bit pieces)."""
    a, b = max(width_a, width_b), min(width_a, width_b)
    if b <= 1:
        return 0
    if kind == "MULT18X18D":
        return len(multiplier_pieces(a, 18)) * len(multiplier_pieces(b, 18))
    if a <= 25 and b <= 18:
        return 1
    if a <= 42 and b <= 18 or a <= 25 and b <= 35:
        return 2
    return 4


@dataclass(frozen=True)
class ResourceEstimate:
    dsp: int
    bram36: float  # in BRAM36 units; a bank that fits a BRAM18 counts 0.5
    memory_bits: int  # the on-chip buffers' bits

    def over_budget(self, target) -> list[tuple[str, int, int]]:
        """(resource, needed, available) for each resource above the target's budget."""
        over = []
        if self.dsp > target.dsp:
            over.append(("DSP", self.dsp, target.dsp))
        if self.bram36 > target.bram36:
            over.append(("BRAM36", self.bram36, target.bram36))
        return over


def buffer_banks(kernel: Kernel) -> dict[str, int]:
    """How many banks each buffer is split into (``backends.common.buffer_banking``): the product of its dims'
    cyclic factors, as the HLS pragmas split it (every lane's write its own bank; the RTL may write a reduction's
    lanes over several cycles into fewer, ``backends/drains.py``, and prices its memories in ``resources``)."""
    return {name: spec.banks for name, spec in buffer_banking(kernel, serial_drains=False).items()}


def resources(kernel: Kernel, target=None) -> ResourceEstimate:
    """DSP blocks (of the target's ``dsp_kind``; DSP48E1 without a target) and block RAM of ``kernel``: its
    on-chip buffers' (``memory_bits`` too); a buffer placed in DDR takes none."""
    kind = getattr(target, "dsp_kind", "DSP48E1")
    dsp = 0
    for st in kernel.stages():
        spec = OPS_TABLE[st.op]
        if spec.multiplies:  # an elementwise product by a constant: left to LUTs
            factors = [st.ins[i] for i in spec.multiplied]
            w = [kernel.buffers[a.buffer].fmt.width for a in factors]
            if all(kernel.buffers[a.buffer].role != "const" for a in factors) or spec.reduction:
                dsp += st.lanes * dsp_per_multiplier(*w, kind)
        elif "rom" in st.attrs:  # div, div_sqrt: the dividend times the ROM's entry, in each lane
            w = [kernel.buffers[st.ins[0].buffer].fmt.width, kernel.buffers[st.attrs["rom"]].fmt.width]
            dsp += st.lanes * dsp_per_multiplier(*w, kind)
    banks = buffer_banks(kernel)
    bram18, bits_total = 0, 0
    for name, buf in kernel.buffers.items():
        if buf.place == DDR:  # in the board's memory, not block RAM (passes/placement.py)
            continue
        bits = buf.size * buf.fmt.width
        bits_total += bits
        per_bank = bits / banks[name]
        if per_bank > LUTRAM_MAX_BITS:
            bram18 += banks[name] * math.ceil(per_bank / BRAM18_BITS)
    return ResourceEstimate(dsp=dsp, bram36=bram18 / 2, memory_bits=bits_total)
