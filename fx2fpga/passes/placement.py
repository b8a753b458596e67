"""Where each buffer of a kernel lives, and what it takes there: the manifest's ``buffers`` and ``report.md``'s
"Buffers" section read this.

Today every buffer lives on chip (``CHIP``); issue 17 adds placement in DDR under the block RAM budget
(docs/offchip.md). A buffer's bits are its values times its format's width, as ``estimate.resources`` counts
on-chip memory; its bytes are its values times whole bytes per value (``ceil(width / 8)``), how a value is held
in memory addressed by bytes (a DDR copy). The target's block RAM in bytes counts a BRAM36's 36 kbit, parity
included, as ``estimate.BRAM18_BITS`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fx2fpga_runtime.ir import Kernel

from .estimate import BRAM18_BITS

CHIP, DDR = "chip", "ddr"
BRAM36_BYTES = 2 * BRAM18_BITS // 8  # 4,608 bytes of a 36 kbit block RAM


@dataclass(frozen=True)
class Placement:
    """One buffer: where it lives, its values, their width and what they take in bits and whole bytes."""

    buffer: str
    place: str  # CHIP or DDR
    role: str
    values: int
    width: int  # bits per value (its format's width)
    bits: int  # values * width
    bytes: int  # values * ceil(width / 8)


def bytes_per_value(width: int) -> int:
    """Whole bytes that hold one ``width``-bit value."""
    return math.ceil(width / 8)


def placements(kernel: Kernel) -> list[Placement]:
    """Every buffer of ``kernel`` in declaration order, with its place (on chip, all of them today)."""
    return [Placement(b.name, CHIP, b.role, b.size, b.fmt.width, b.size * b.fmt.width,
                      b.size * bytes_per_value(b.fmt.width)) for b in kernel.buffers.values()]


def totals(kernel: Kernel, target) -> dict:
    """Bytes and bits per place, and the target's block RAM in bytes (``bram36 * BRAM36_BYTES``)."""
    rows = placements(kernel)
    out = {place: {"buffers": sum(p.place == place for p in rows),
                   "bytes": sum(p.bytes for p in rows if p.place == place),
                   "bits": sum(p.bits for p in rows if p.place == place)} for place in (CHIP, DDR)}
    return {**out, "bram_bytes": target.bram36 * BRAM36_BYTES}
