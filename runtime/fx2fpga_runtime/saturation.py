"""Saturation counters: how many assignments to each buffer overflowed its format since the last read.

An event is one assignment of an exact result to a stage's output buffer (``ir.py`` defines them) whose
value, rounded to the output's fractional bits, lies outside the output format's range: under ``SAT`` it
is clipped, under ``WRAP`` it wraps. The emulator counts every event exactly, per IR buffer a stage
writes (``counted_buffers``). A kernel compiled with ``saturation_counters=True`` also counts them in
its generated hardware: one 32-bit counter (saturating at ``COUNTER_MAX``) per buffer written by a stage
whose operands' formats do not rule overflow out (``counter_buffers``), read and reset by the word
command ``read_saturation``, which answers one word per counter in that order.
"""

from __future__ import annotations

import numpy as np

from .emu_compile import can_overflow
from .ir import Kernel

COMMAND = "read_saturation"  # its code: interface.COMMANDS
COUNTER_MAX = (1 << 32) - 1  # a hardware counter stops here
# the backends whose generated code has the counters (pynq: the HLS or the RTL kernel on the board)
SIMULATORS_WITH_COUNTERS = ("csim", "rtl", "pynq")


def counted_buffers(kernel: Kernel) -> list[str]:
    """Every buffer some stage writes, in the order stages first write them: the keys of the counts."""
    return list(dict.fromkeys(st.out.buffer for st in kernel.stages()))


def counter_buffers(kernel: Kernel) -> list[str]:
    """The buffers that get a hardware counter: those written by a stage where an assignment can overflow
    (``emu_compile.can_overflow``); the others never count. The counters' order is this list's."""
    return list(dict.fromkeys(st.out.buffer for st in kernel.stages() if can_overflow(st, kernel)))


def hardware_counters(kernel: Kernel) -> bool:
    """Whether the kernel's generated code counts (``compile(..., saturation_counters=True)``)."""
    return bool(kernel.meta.get("saturation_counters", False))


def read(kernel: Kernel, backend) -> dict[str, int]:
    """The counts since the last read from ``backend`` ({buffer: count}, every buffer a stage writes), reset."""
    own = getattr(backend, "read_saturation", None)
    if own is not None:
        return own()
    name = getattr(backend, "name", type(backend).__name__)
    if not hardware_counters(kernel):
        raise RuntimeError(f"{name}: this kernel was compiled without saturation counters: compile with "
                           "saturation_counters=True (the emulator always counts)")
    if name not in SIMULATORS_WITH_COUNTERS:
        raise RuntimeError(f"{name}: the saturation counters are not generated for this backend yet "
                           f"(they are in: emu, {', '.join(SIMULATORS_WITH_COUNTERS)})")
    words = np.asarray(backend.call(COMMAND, np.zeros(0, dtype=np.int32)), dtype=np.int64) & COUNTER_MAX
    names = counter_buffers(kernel)
    if len(words) != len(names):
        raise RuntimeError(f"{name}: {COMMAND} returned {len(words)} words, expected {len(names)}")
    counts = dict.fromkeys(counted_buffers(kernel), 0)
    counts.update({n: int(w) for n, w in zip(names, words, strict=True)})
    return counts
