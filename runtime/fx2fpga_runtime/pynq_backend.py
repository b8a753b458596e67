"""The board backend: the kernel's IP in a PYNQ overlay, driven over AXI-Lite + DDR buffers.

Needs the ``pynq`` package (on the board) and ``bitstream/<name>.bit`` with its ``.hwh``
(written by ``build.tcl`` for the HLS kernel or ``build_rtl.tcl`` for the RTL kernel: both have
the same registers). The registers are the Vitis HLS s_axilite layout recorded in
``manifest.json``: ``ap_ctrl`` (bit 0 start, bit 1 done), ``cmd``, and the 64-bit addresses of
the ``in_words`` / ``out_words`` buffers. ``rtl_axi.pynq_module`` runs this driver against the
RTL kernel in Verilator.

A kernel with buffers placed in DDR (docs/offchip.md) takes each as one more m_axi argument: the driver allocates
one ``pynq.allocate`` buffer per DDR buffer as the manifest's ``ddr_buffers`` lays it out (the C++ array's values,
``element_bytes`` each), fills it with the buffer's initial values (zeros where it has none, as the csim harness's
static arrays start), writes its physical address into the buffer's register pair before the first command and
frees it on ``close``. The kernel alone reads and writes them: ``get_params``/``set_params`` go through the
``read_params``/``load_params`` commands, whose C++ packs and unpacks the DDR arrays themselves.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import interface, saturation
from .errors import KernelBackendError, KernelCapabilityError
from .ir import Kernel

AP_START, AP_DONE = 0x1, 0x2


class PynqBackend:
    name = "pynq"

    def __init__(self, kernel: Kernel, project_dir: Path, bitfile: str | Path | None = None,
                 timeout_s: float = 10.0):
        manifest = json.loads((project_dir / "manifest.json").read_text())
        layout = _ddr_layout(kernel, manifest)  # (before pynq: its refusals hold on any machine)
        try:
            import pynq
        except ImportError as e:
            raise ImportError("the pynq backend runs on a PYNQ board (pip install pynq there); "
                              "off the board use backend='emu' or 'csim'") from e
        self.kernel = kernel
        self.timeout_s = timeout_s
        self.regs = {k: int(v, 16) for k, v in manifest["register_map"].items()}
        self.codes = manifest["commands"]
        self.ddr: dict[str, np.ndarray] = {}  # buffer -> its pynq.allocate array (a kernel with DDR buffers)
        bit = Path(bitfile) if bitfile else project_dir / "bitstream" / f"{kernel.name}.bit"
        if not bit.is_file():
            raise FileNotFoundError(f"{bit} not found: build it with 'vivado -mode batch -source build.tcl' "
                                    f"(HLS kernel) or 'build_rtl.tcl' (RTL kernel) in {project_dir} and copy the "
                                    "folder to the board")
        self.overlay = pynq.Overlay(str(bit))
        self.ip = getattr(self.overlay, f"{kernel.name}_top_0")
        n_in, n_out = interface.port_words(kernel)
        n_out = max(n_out, len(saturation.counter_buffers(kernel)) if saturation.hardware_counters(kernel) else 0)
        self.in_buf = pynq.allocate(shape=(n_in,), dtype=np.int32)
        self.out_buf = pynq.allocate(shape=(n_out,), dtype=np.int32)
        for row in layout:  # the addresses stay in their registers: written once, before the first command
            self.ddr[row["buffer"]] = self._allocate_ddr(pynq, row)
            self._write_offset(int(row["register"], 16), self.ddr[row["buffer"]].physical_address)

    def _allocate_ddr(self, pynq, row: dict) -> np.ndarray:
        """One DDR buffer: ``count`` values of ``element_bytes``, holding the buffer's initial raw values (zeros
        where it has none), flushed to memory before the kernel reads it."""
        name, buf = row["buffer"], self.kernel.buffers[row["buffer"]]
        dtype = np.dtype(f"{'i' if row['signed'] else 'u'}{row['element_bytes']}")
        try:
            arr = pynq.allocate(shape=(row["count"],), dtype=dtype)
        except (RuntimeError, MemoryError) as e:
            total = sum(int(np.asarray(a).nbytes) for a in self.ddr.values()) + row["bytes"]
            self.close()
            raise KernelBackendError(
                f"{self.kernel.name}: pynq.allocate could not give DDR buffer {name!r} ({row['bytes']} bytes; "
                f"{total} bytes of DDR buffers so far): the PYNQ image's contiguous memory (CMA) pool is too "
                "small or in use by another overlay") from e
        arr[:] = np.asarray(buf.init, dtype=np.int64).astype(dtype) if buf.init is not None else 0
        arr.flush()
        return arr

    def _write_offset(self, offset: int, address: int) -> None:
        self.ip.write(offset, address & 0xFFFFFFFF)
        self.ip.write(offset + 4, (address >> 32) & 0xFFFFFFFF)

    def _write_address(self, reg: str, address: int) -> None:
        self._write_offset(self.regs[reg], address)

    def _out_words(self, command: str) -> int:
        """The words ``command`` writes to ``out_words`` (``read_saturation``: one per counter)."""
        if command == saturation.COMMAND:
            return len(saturation.counter_buffers(self.kernel))
        return interface.word_count(self.kernel, interface.command_buffers(self.kernel, command)[1])

    def call(self, command: str, in_words: np.ndarray) -> np.ndarray:
        n_out = self._out_words(command)
        self.in_buf[: len(in_words)] = in_words
        self.in_buf.flush()
        self.ip.write(self.regs["cmd"], self.codes.get(command, interface.COMMANDS[command]))
        self._write_address("in_words", self.in_buf.physical_address)
        self._write_address("out_words", self.out_buf.physical_address)
        self.ip.write(self.regs["ap_ctrl"], AP_START)
        deadline = time.monotonic() + self.timeout_s
        while not self.ip.read(self.regs["ap_ctrl"]) & AP_DONE:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.kernel.name}: {command} did not finish in {self.timeout_s} s")
        self.out_buf.invalidate()
        return np.array(self.out_buf[:n_out], dtype=np.int32)

    def close(self) -> None:
        for buf in (getattr(self, "in_buf", None), getattr(self, "out_buf", None), *self.ddr.values()):
            if buf is not None:
                buf.freebuffer()
        self.ddr = {}


def _ddr_layout(kernel: Kernel, manifest: dict) -> list[dict]:
    """The manifest's ``ddr_buffers`` (``interface.ddr_layout``), checked against the kernel: the same buffers,
    each of a width the driver can hold. Their order and registers come from the manifest: ``kernel.json`` lists
    buffers by name, not in the declaration order that gave the top function its arguments."""
    ddr = kernel.ddr_buffers()
    layout = manifest.get("ddr_buffers", [])
    if sorted(row["buffer"] for row in layout) != sorted(ddr):
        raise KernelCapabilityError(
            f"{kernel.name}: the kernel places {len(ddr)} buffers in DDR ({', '.join(ddr) or 'none'}) but "
            f"manifest.json lays out {len(layout)} ({', '.join(r['buffer'] for r in layout) or 'none'}): the folder "
            "was written by another fx2fpga version or edited; compile it again")
    for row in layout:
        if row["element_bytes"] not in (1, 2, 4, 8):
            raise KernelCapabilityError(
                f"{kernel.name}: DDR buffer {row['buffer']!r} ({row['format']}) takes {row['element_bytes']} bytes "
                "a value; the driver holds values of up to 64 bits in DDR")
    return layout
