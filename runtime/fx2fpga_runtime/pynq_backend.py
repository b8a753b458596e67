"""The board backend: the kernel's IP in a PYNQ overlay, driven over AXI-Lite + DDR buffers.

Needs the ``pynq`` package (on the board) and ``bitstream/<name>.bit`` with its ``.hwh``
(written by ``build.tcl`` for the HLS kernel or ``build_rtl.tcl`` for the RTL kernel: both have
the same registers). The registers are the Vitis HLS s_axilite layout recorded in
``manifest.json``: ``ap_ctrl`` (bit 0 start, bit 1 done), ``cmd``, and the 64-bit addresses of
the ``in_words`` / ``out_words`` buffers. ``rtl_axi.pynq_module`` runs this driver against the
RTL kernel in Verilator.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import interface, saturation
from .errors import KernelCapabilityError
from .ir import Kernel

AP_START, AP_DONE = 0x1, 0x2


class PynqBackend:
    name = "pynq"

    def __init__(self, kernel: Kernel, project_dir: Path, bitfile: str | Path | None = None,
                 timeout_s: float = 10.0):
        if kernel.ddr_buffers():  # (before pynq: the reason holds on any machine)
            raise KernelCapabilityError(
                f"{kernel.name}: buffers {', '.join(kernel.ddr_buffers())} are placed in DDR, and this driver does "
                "not allocate them or pass their addresses yet (issue 17); run it on 'emu' or 'csim'")
        try:
            import pynq
        except ImportError as e:
            raise ImportError("the pynq backend runs on a PYNQ board (pip install pynq there); "
                              "off the board use backend='emu' or 'csim'") from e
        self.kernel = kernel
        self.timeout_s = timeout_s
        manifest = json.loads((project_dir / "manifest.json").read_text())
        self.regs = {k: int(v, 16) for k, v in manifest["register_map"].items()}
        self.codes = manifest["commands"]
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

    def _write_address(self, reg: str, address: int) -> None:
        self.ip.write(self.regs[reg], address & 0xFFFFFFFF)
        self.ip.write(self.regs[reg] + 4, (address >> 32) & 0xFFFFFFFF)

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
        for buf in (self.in_buf, self.out_buf):
            buf.freebuffer()
