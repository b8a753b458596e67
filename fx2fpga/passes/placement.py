"""Where each buffer of a kernel lives (the pipeline's "place" step), and what it takes there: the manifest's
``buffers`` and ``report.md``'s "Buffers" section read this.

A buffer lives on chip (``CHIP``: block RAM or registers) or in the board's DDR (``DDR``: the HLS top function
reads and writes it through an ``m_axi`` port). ``compile(placement=...)`` forces places (``{"<buffer>": "ddr" |
"chip"}``, or ``"ddr"``: every parameter and temporary array); without a request, a folder of HLS alone
(``outputs="hls"``) whose on-chip estimate exceeds the target's block RAM moves its largest arrays, by bytes, to
DDR until the estimate fits (``automatic``). The RTL cannot reach DDR yet (issue 17): its schedule refuses such a
kernel (``rtl_refusal``). The emulator ignores places: a buffer computes the same wherever it lives.

A buffer's bits are its values times its format's width, as ``estimate.resources`` counts on-chip memory; its
bytes are its values times whole bytes per value (``ceil(width / 8)``), how a value is held in memory addressed
by bytes (a DDR copy). The target's block RAM in bytes counts a BRAM36's 36 kbit, parity included, as
``estimate.BRAM18_BITS`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fx2fpga_runtime.interface import ddr_element_bytes
from fx2fpga_runtime.ir import CHIP, DDR, Buffer, Kernel

from ..errors import PlacementError
from .estimate import BRAM18_BITS, resources

PLACES = (CHIP, DDR)
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
    bytes: int  # values * bytes_per_value(width, place)


def bytes_per_value(width: int, place: str = CHIP) -> int:
    """Bytes one ``width``-bit value takes where it lives: on chip its whole bytes, ceil(width / 8); in DDR the
    element of its ``m_axi`` array, the next power of two of bytes (``interface.ddr_element_bytes``: an
    ``ap_fixed<24,...>`` takes 4), which is also what each access moves over the bus."""
    return ddr_element_bytes(width) if place == DDR else math.ceil(width / 8)


def placement_bytes(buf: Buffer) -> int:
    """The buffer's bytes where it lives (values x ``bytes_per_value``), as ``placements`` counts them."""
    return buf.size * bytes_per_value(buf.fmt.width, buf.place)


def placements(kernel: Kernel) -> list[Placement]:
    """Every buffer of ``kernel`` in declaration order, with its place."""
    return [Placement(b.name, b.place, b.role, b.size, b.fmt.width, b.size * b.fmt.width, placement_bytes(b))
            for b in kernel.buffers.values()]


def totals(kernel: Kernel, target) -> dict:
    """Bytes and bits per place, and the target's block RAM in bytes (``bram36 * BRAM36_BYTES``)."""
    rows = placements(kernel)
    out = {place: {"buffers": sum(p.place == place for p in rows),
                   "bytes": sum(p.bytes for p in rows if p.place == place),
                   "bits": sum(p.bits for p in rows if p.place == place)} for place in (CHIP, DDR)}
    return {**out, "bram_bytes": target.bram36 * BRAM36_BYTES}


# ----- choosing the places ---------------------------------------------------------------------------------------

def ddr_refusal(buf: Buffer) -> str | None:
    """Why ``buf`` cannot live in DDR (None: it can): a constant stays a ROM on chip, a scalar a register."""
    if buf.role == "const":
        return "a constant (a ROM on chip)"
    if not buf.shape:
        return "a scalar (a register on chip)"
    return None


def ddr_candidates(kernel: Kernel) -> list[str]:
    """The buffers ``placement="ddr"`` and the automatic placement move: every array that may live in DDR
    (``ddr_refusal``) and that no program takes in or gives out (those cross the word interface each call)."""
    io = kernel.io_buffers()
    return [n for n, b in kernel.buffers.items() if ddr_refusal(b) is None and n not in io]


def requested_places(kernel: Kernel, request) -> dict[str, str]:
    """The user's ``placement=`` as buffer -> place: None or ``{}`` nothing, ``"ddr"`` every ``ddr_candidates``
    buffer, a dict forced per buffer. A tensor that shares an array with others (``passes/memory.py``,
    ``kernel.meta["memory"]``) names that array. Raises ``PlacementError`` for an unknown buffer or place, or a
    buffer that cannot live in DDR."""
    if request is None:
        return {}
    if request == DDR:
        return {n: DDR for n in ddr_candidates(kernel)}
    if not isinstance(request, dict):
        raise PlacementError(f'placement must be None, "ddr" or a dict buffer -> "ddr" | "chip", got {request!r}')
    array_of = {t: array for array, tenants in kernel.meta.get("memory", {}).items() for t in tenants}
    places: dict[str, str] = {}
    for name, place in request.items():
        if place not in PLACES:
            raise PlacementError(f"placement of {name!r}: {place!r} is not a place; the places are "
                                 f"{', '.join(PLACES)}")
        buf = kernel.buffers.get(array_of.get(name, name))
        if buf is None:
            raise PlacementError(f"placement names an unknown buffer {name!r}; the buffers of {kernel.name} are: "
                                 f"{', '.join(kernel.buffers)}")
        why = ddr_refusal(buf) if place == DDR else None
        if why:
            raise PlacementError(f"buffer {buf.name!r} cannot be placed in DDR: it is {why}")
        if places.get(buf.name, place) != place:
            raise PlacementError(f"placement puts array {buf.name!r} both on chip and in DDR (through {name!r}, "
                                 f"which shares it: kernel.meta['memory'])")
        places[buf.name] = place
    return places


def over_block_ram(kernel: Kernel, target) -> bool:
    """Whether the on-chip buffers' estimated block RAM exceeds the target's (``estimate.resources``)."""
    return resources(kernel, target).bram36 > target.bram36


def place_automatically(kernel: Kernel, target, forced: dict[str, str]) -> list[str]:
    """Move the largest ``ddr_candidates`` (by bytes; ties in declaration order) that ``forced`` leaves free to
    DDR, one at a time, until the on-chip estimate fits the target's block RAM; returns the buffers moved."""
    order = {n: i for i, n in enumerate(kernel.buffers)}
    free = [n for n in ddr_candidates(kernel) if n not in forced and kernel.buffers[n].place == CHIP]
    free.sort(key=lambda n: (-placement_bytes(kernel.buffers[n]), order[n]))
    moved = []
    for name in free:
        if not over_block_ram(kernel, target):
            break
        kernel.buffers[name].place = DDR
        moved.append(name)
    return moved


def run(kernel: Kernel, request, target, automatic: bool) -> list[str]:
    """Place every buffer of ``kernel``: the user's ``request`` (``requested_places``) first, then, when
    ``automatic`` and the on-chip estimate is over the target's block RAM, the largest free arrays in DDR
    (``place_automatically``). Returns lines for ``report.md`` (none when everything stays on chip)."""
    forced = requested_places(kernel, request)
    for name, place in forced.items():
        kernel.buffers[name].place = place
    moved = place_automatically(kernel, target, forced) if automatic and over_block_ram(kernel, target) else []
    lines = []
    if forced:
        ddr = [n for n, p in forced.items() if p == DDR]
        lines.append(f"placement requested: {len(ddr)} buffers in DDR ({', '.join(ddr) or 'none'}), "
                     f"{len(forced) - len(ddr)} kept on chip")
    if moved:
        est = resources(kernel, target)
        lines.append(f"placed in DDR to fit the {target.name}'s {target.bram36} BRAM36 (the largest first): "
                     f"{', '.join(moved)}; on-chip estimate now {est.bram36:g} BRAM36")
    return lines


def rtl_refusal(kernel: Kernel) -> str | None:
    """Why the RTL cannot map ``kernel`` because of its places (None: every buffer is on chip)."""
    ddr = kernel.ddr_buffers()
    if not ddr:
        return None
    more = f" (and {len(ddr) - 1} more: the manifest's buffers list them)" if len(ddr) > 1 else ""
    return (f"buffer {ddr[0]!r}{more} is placed in DDR; the RTL's AXI master for DDR buffers is not built yet "
            "(issue 17): use outputs='hls', or keep the buffers on chip (placement=...)")
