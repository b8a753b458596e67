"""The host <-> kernel interface shared by every backend (emu, csim, rtl, pynq).

The kernel's top function takes a command code and two arrays of 32-bit words::

    void <name>_top(int cmd, const int in_words[IN_WORDS], int out_words[OUT_WORDS]);

Each raw fixed-point value travels as one sign-extended (or zero-extended, for unsigned
formats) 32-bit word, buffers row-major, one after the other:

- ``load_params``: in = every parameter buffer in ``kernel.params`` order; out = nothing
- ``read_params``: in = nothing; out = every parameter buffer in ``kernel.params`` order
- a program (``infer``, ``train_step``): in = ``program.inputs`` in order, out =
  ``program.outputs`` in order
"""

from __future__ import annotations

import numpy as np

from .ir import Kernel

COMMANDS = {"load_params": 1, "read_params": 2, "infer": 3, "train_step": 4,
            "read_saturation": 5}  # read_saturation: only kernels compiled with saturation counters (saturation.py)
MAX_PORT_WIDTH = 32

# The kernel's AXI4-Lite registers (byte offsets): the Vitis HLS s_axilite layout of ``<name>_top``
# (``cmd`` and the block-level ``ap_ctrl_hs`` protocol on s_axilite, the two word arrays as m_axi
# ``offset=slave`` pointers, bundle ``gmem``). The HLS kernel gets it from Vitis HLS, the RTL kernel
# from ``rtl/<name>_axi.v``; ``manifest.json`` records it and the board driver reads it there.
REGISTER_MAP = {"ap_ctrl": 0x00, "gie": 0x04, "ier": 0x08, "isr": 0x0C, "cmd": 0x10,
                "in_words": 0x18, "out_words": 0x24}
ADDRESS_REGISTERS = ("in_words", "out_words")  # 64-bit byte addresses: low word at the offset, high word at +4


def command_buffers(kernel: Kernel, command: str) -> tuple[list[str], list[str]]:
    """The buffers a command reads from ``in_words`` and writes to ``out_words``."""
    if command == "load_params":
        return list(kernel.params), []
    if command == "read_params":
        return [], list(kernel.params)
    prog = kernel.programs[command]
    return list(prog.inputs), list(prog.outputs)


def commands_of(kernel: Kernel) -> dict[str, int]:
    """Command codes this kernel answers to."""
    return {c: code for c, code in COMMANDS.items() if c in ("load_params", "read_params") or c in kernel.programs}


def word_count(kernel: Kernel, names: list[str]) -> int:
    return sum(kernel.buffers[n].size for n in names)


def port_words(kernel: Kernel) -> tuple[int, int]:
    """Sizes of the in_words and out_words arrays (the largest any command needs)."""
    ins = [word_count(kernel, command_buffers(kernel, c)[0]) for c in commands_of(kernel)]
    outs = [word_count(kernel, command_buffers(kernel, c)[1]) for c in commands_of(kernel)]
    return max(ins + [1]), max(outs + [1])


def pack(kernel: Kernel, names: list[str], raw: dict[str, np.ndarray]) -> np.ndarray:
    """Raw buffer values -> int32 words."""
    parts = [np.asarray(raw[n], dtype=np.int64).reshape(-1) for n in names]
    words = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return words.astype(np.int32)  # unsigned 32-bit formats wrap here; unpack masks them back


def unpack(kernel: Kernel, names: list[str], words: np.ndarray) -> dict[str, np.ndarray]:
    """int32 words -> raw buffer values (sign- or zero-extended by each buffer's format)."""
    out, pos = {}, 0
    w = np.asarray(words, dtype=np.int64)
    for n in names:
        buf = kernel.buffers[n]
        chunk = w[pos:pos + buf.size]
        pos += buf.size
        if not buf.fmt.signed:
            chunk = chunk & ((1 << buf.fmt.width) - 1)
        out[n] = chunk.reshape(buf.shape)
    return out
