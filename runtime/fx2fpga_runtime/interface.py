"""The host <-> kernel interface shared by every backend (emu, csim, rtl, pynq).

The kernel's top function takes a command code and two arrays of 32-bit words::

    void <name>_top(int cmd, const int in_words[IN_WORDS], int out_words[OUT_WORDS]);

Each raw fixed-point value travels as one sign-extended (or zero-extended, for unsigned
formats) 32-bit word, buffers row-major, one after the other, except where the kernel packs a
buffer (``kernel.meta["word_packing"]``, ``{buffer: [dim, values per word]}``, chosen by the
schedule: a program input of at most 16 bits whose dim ``dim`` is split into banks): then one
*unit* carries that many consecutive values along ``dim``, value ``l`` in bits ``l*w ..
(l+1)*w - 1`` (``w`` its width, each field two's complement), the units in row-major order of
the buffer with ``dim`` counted in steps of that many. A unit is one word, or two (low word first)
where its values need more than 32 bits (at most ``MAX_UNIT_BITS``: the 64-bit beat of the RTL
kernel's bus, which takes a unit a cycle). The kernel writes a unit into as many banks in one
cycle, and the bus carries half (or a quarter) of the bytes.

- ``load_params``: in = every parameter buffer in ``kernel.params`` order; out = nothing
- ``read_params``: in = nothing; out = every parameter buffer in ``kernel.params`` order
- a program (``infer``, ``train_step``): in = ``program.inputs`` in order, out =
  ``program.outputs`` in order
"""

from __future__ import annotations

import numpy as np

from .fixed import Fixed
from .ir import Kernel

COMMANDS = {"load_params": 1, "read_params": 2, "infer": 3, "train_step": 4,
            "read_saturation": 5}  # read_saturation: only kernels compiled with saturation counters (saturation.py)
MAX_PORT_WIDTH = 32
MAX_UNIT_BITS = 2 * MAX_PORT_WIDTH  # a packed unit: at most two words (word_packing)

# The kernel's AXI4-Lite registers (byte offsets): the Vitis HLS s_axilite layout of ``<name>_top``
# (``cmd`` and the block-level ``ap_ctrl_hs`` protocol on s_axilite, the two word arrays as m_axi
# ``offset=slave`` pointers, bundle ``gmem``). The HLS kernel gets it from Vitis HLS, the RTL kernel
# from ``rtl/<name>_axi.v``; ``manifest.json`` records it and the board driver reads it there.
# Vitis HLS puts the block-level protocol at 0x00-0x0C and the top function's s_axilite arguments after it, in
# declaration order (``argument_offsets``). A buffer placed in DDR is one more m_axi pointer argument after
# ``out_words`` (``ddr_registers``).
CONTROL_REGISTERS = {"ap_ctrl": 0x00, "gie": 0x04, "ier": 0x08, "isr": 0x0C}
FIRST_ARGUMENT = 0x10
POINTER_BITS = 64  # an m_axi offset=slave pointer: a 64-bit byte address (Vitis HLS's default m_axi_addr64)
TOP_ARGUMENTS = (("cmd", 32), ("in_words", POINTER_BITS), ("out_words", POINTER_BITS))  # (name, bits) in order


def argument_offsets(bits: list[int] | tuple[int, ...]) -> list[int]:
    """The s_axilite offsets of the top function's arguments of these widths, in declaration order, as Vitis HLS
    lays them out: from ``FIRST_ARGUMENT``, each takes one 32-bit data word per 32 bits of its value (a pointer's
    low word first) and one reserved word for its control protocol, so a 32-bit scalar takes 8 bytes and a 64-bit
    pointer 0xC (UG1399, "S_AXILITE Offset Option")."""
    offsets, at = [], FIRST_ARGUMENT
    for b in bits:
        offsets.append(at)
        at += 4 * -(-b // 32) + 4
    return offsets


REGISTER_MAP = {**CONTROL_REGISTERS,
                **dict(zip((n for n, _ in TOP_ARGUMENTS), argument_offsets([b for _, b in TOP_ARGUMENTS]),
                           strict=True))}
ADDRESS_REGISTERS = tuple(n for n, b in TOP_ARGUMENTS if b == POINTER_BITS)  # low word at the offset, high at +4


def ddr_registers(kernel: Kernel) -> dict[str, int]:
    """Each DDR buffer's address register (``kernel.ddr_buffers()``, the top function's m_axi arguments after
    ``out_words`` in that order): a 64-bit byte address, low word at the offset, high word at +4. Of the kernel as
    compiled: one read back from ``kernel.json`` lists its buffers by name, so the driver reads the registers from
    ``manifest.json`` (``ddr_layout``)."""
    ddr = kernel.ddr_buffers()
    offsets = argument_offsets([b for _, b in TOP_ARGUMENTS] + [POINTER_BITS] * len(ddr))
    return dict(zip(ddr, offsets[len(TOP_ARGUMENTS):], strict=True))


def ddr_element_bytes(width: int) -> int:
    """The bytes one ``width``-bit value takes in a DDR buffer: the next power of two of whole bytes (as Vitis HLS
    lays out an ``ap_[u]fixed<W,...>``, UG1391, "Data Layout for Arbitrary Precision Types"), exactly the bits of
    the C++ array's storage type (``ddr_storage_type``), the value sign-extended (zero-extended unsigned) in them:
    1, 2, 4 or 8 bytes for up to 64 bits."""
    n = 1
    while n * 8 < width:
        n *= 2
    return n


def ddr_storage_type(fmt: Fixed) -> str:
    """The C++ element type of a DDR buffer of format ``fmt`` (the ``m_axi`` array's, as the HLS C++ declares it): an
    ``ap_[u]fixed`` of exactly ``8 * ddr_element_bytes(width)`` bits with the format's fraction bits (the extra bits
    are integer bits), ``AP_TRN``/``AP_WRAP``: it holds every value of ``fmt`` exactly, its raw integer sign-extended
    (zero-extended unsigned), as the driver's ``int``/``uint`` arrays of ``element_bytes`` hold it. A power of two of
    bits, so Vitis HLS pads nothing on the interface and can infer bursts (UG1448, "Burst Inference Failure 11");
    the kernel converts each read to ``fmt``'s own type and each write from it, so rounding and saturation stay
    ``fmt``'s."""
    bits = 8 * ddr_element_bytes(fmt.width)
    kind = "ap_fixed" if fmt.signed else "ap_ufixed"
    return f"{kind}<{bits},{fmt.int_bits + bits - fmt.width},AP_TRN,AP_WRAP>"


def ddr_layout(kernel: Kernel) -> list[dict]:
    """The DDR buffers as the board driver allocates them, in argument order: ``buffer``, its ``register`` (the
    low word of its address), the C++ array's ``shape``, element ``type`` (``ddr_storage_type``: the ``format`` in a
    power of two of bits, ``element_bytes``), ``count`` of values, ``element_bytes``, ``signed`` and ``bytes`` (count
    x element bytes). Empty for a kernel wholly on chip."""
    rows = []
    for name, offset in ddr_registers(kernel).items():
        buf = kernel.buffers[name]
        size = ddr_element_bytes(buf.fmt.width)
        rows.append({"buffer": name, "register": f"0x{offset:02X}", "shape": list(buf.shape),
                     "format": str(buf.fmt), "type": ddr_storage_type(buf.fmt), "count": buf.size,
                     "element_bytes": size,
                     "signed": buf.fmt.signed, "bytes": buf.size * size})
    return rows


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


def word_packing(kernel: Kernel) -> dict[str, tuple[int, int]]:
    """``{buffer: (dim, values per word)}`` of the buffers the kernel takes packed (see the module doc)."""
    return {name: (int(d), int(n)) for name, (d, n) in kernel.meta.get("word_packing", {}).items()}


def unit_words(kernel: Kernel, name: str) -> int:
    """The words one packed unit of buffer ``name`` takes: two where its values need more than one word."""
    per_word = word_packing(kernel).get(name, (0, 1))[1]
    return -(-per_word * kernel.buffers[name].fmt.width // MAX_PORT_WIDTH) if per_word > 1 else 1


def buffer_words(kernel: Kernel, name: str) -> int:
    """The words buffer ``name`` takes on the interface."""
    per_word = word_packing(kernel).get(name, (0, 1))[1]
    return kernel.buffers[name].size // per_word * unit_words(kernel, name)


def word_count(kernel: Kernel, names: list[str]) -> int:
    """The words those buffers take, one after the other."""
    return sum(buffer_words(kernel, n) for n in names)


def port_words(kernel: Kernel) -> tuple[int, int]:
    """Sizes of the in_words and out_words arrays (the largest any command needs)."""
    ins = [word_count(kernel, command_buffers(kernel, c)[0]) for c in commands_of(kernel)]
    outs = [word_count(kernel, command_buffers(kernel, c)[1]) for c in commands_of(kernel)]
    return max(ins + [1]), max(outs + [1])


def _fields_last(shape: tuple[int, ...], dim: int, per_word: int) -> tuple[tuple[int, ...], int]:
    """The shape that splits ``dim`` into (words, fields), and the axis of the fields."""
    return (*shape[:dim], shape[dim] // per_word, per_word, *shape[dim + 1:]), dim + 1


def pack(kernel: Kernel, names: list[str], raw: dict[str, np.ndarray]) -> np.ndarray:
    """Raw buffer values -> int32 words."""
    packing = word_packing(kernel)
    parts = []
    for n in names:
        values = np.asarray(raw[n], dtype=np.int64)
        if n in packing:
            buf = kernel.buffers[n]
            dim, per_word = packing[n]
            split, axis = _fields_last(buf.shape, dim, per_word)
            fields = np.moveaxis(values.reshape(split) & ((1 << buf.fmt.width) - 1), axis, -1)
            units = (fields.astype(np.uint64) << (buf.fmt.width * np.arange(per_word, dtype=np.uint64))).sum(
                axis=-1, dtype=np.uint64).reshape(-1)
            n_words = unit_words(kernel, n)
            values = np.stack([(units >> np.uint64(32 * k)) & np.uint64(0xFFFFFFFF) for k in range(n_words)],
                              axis=-1).astype(np.int64)  # (a unit's words, low first)
        parts.append(values.reshape(-1))
    words = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return words.astype(np.int32)  # unsigned 32-bit formats and packed words wrap here; unpack masks them back


def unpack(kernel: Kernel, names: list[str], words: np.ndarray) -> dict[str, np.ndarray]:
    """int32 words -> raw buffer values (sign- or zero-extended by each buffer's format)."""
    packing = word_packing(kernel)
    out, pos = {}, 0
    w = np.asarray(words, dtype=np.int64)
    for n in names:
        buf = kernel.buffers[n]
        count = buffer_words(kernel, n)
        chunk = w[pos:pos + count]
        pos += count
        if n in packing:
            dim, per_word = packing[n]
            split, axis = _fields_last(buf.shape, dim, per_word)
            shifts = buf.fmt.width * np.arange(per_word, dtype=np.uint64)
            words = (chunk & 0xFFFFFFFF).astype(np.uint64).reshape(-1, unit_words(kernel, n))
            units = sum(words[:, k] << np.uint64(32 * k) for k in range(words.shape[1]))
            fields = ((units[:, None] >> shifts) & np.uint64((1 << buf.fmt.width) - 1)).astype(np.int64)
            grid = (*split[:axis], *split[axis + 1:], per_word)
            chunk = np.moveaxis(fields.reshape(grid), -1, axis).reshape(-1)
            if buf.fmt.signed:
                chunk = chunk - ((chunk >> (buf.fmt.width - 1)) << buf.fmt.width)
        elif not buf.fmt.signed:
            chunk = chunk & ((1 << buf.fmt.width) - 1)
        out[n] = chunk.reshape(buf.shape)
    return out
