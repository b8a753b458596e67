"""The RTL kernel on its bus: ``rtl/<name>_axi.v`` in Verilator, driven like the board drives it.

``AxiSimulation`` runs the project's ``<name>_axi`` (the AXI4-Lite register file and AXI4
master around the word-stream core) with ``rtl/sim_axi.cpp``: a host on ``s_axi_control`` and a
DDR model on ``m_axi_gmem``. ``MMIO`` reads and writes its registers as ``pynq.MMIO`` does;
``pynq_module`` is a stand-in for the ``pynq`` package (``Overlay``, ``allocate``, ``MMIO``) on
top of it, so the board driver (``pynq_backend.PynqBackend``) runs unchanged against the RTL::

    sys.modules["pynq"] = rtl_axi.pynq_module("out/mlp")
    k = fx2fpga_runtime.KernelRunner(kernel, PynqBackend(kernel, Path("out/mlp"), bitfile=...))

Buffers from ``allocate`` live in the simulated DDR: ``flush()`` copies the array there,
``invalidate()`` copies it back, as the processor's caches do on the board. The simulation is
cycle-accurate: a register access costs ``gap`` idle cycles (the processor's bus latency) plus
its AXI handshakes; ``seed`` makes every READY line and memory latency random (a protocol
stress test), 0 keeps them ideal. Standard library and numpy only.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import interface
from .pynq_backend import AP_START
from .rtl import build
from .server import SimProcess

WRITE, READ, POKE, PEEK, TICK, WAIT, STATS = range(1, 8)


@dataclass(frozen=True)
class Stats:
    """Counters of the simulation since it started."""

    cycles: int
    beats_read: int  # m_axi_gmem read beats (two words each)
    beats_written: int  # m_axi_gmem write beats
    bursts_read: int
    bursts_written: int


class AxiSimulation(SimProcess):
    """``<name>_axi`` of a project folder in a Verilator process (built once, cached by source hash)."""

    def __init__(self, project_dir: str | Path, seed: int = 0, gap: int = 16):
        project_dir = Path(project_dir)
        self.name = json.loads((project_dir / "manifest.json").read_text())["name"]
        rtl = project_dir / "rtl"
        if not (rtl / "sim_axi.cpp").is_file():
            raise FileNotFoundError(f"{rtl} has no sim_axi.cpp: the project has no RTL (see {rtl / 'README.md'})")
        self.binary = build(rtl, f"{self.name}_axi", harness="sim_axi.cpp")
        super().__init__([str(self.binary), "--seed", str(seed), "--gap", str(gap)], "the AXI simulation", rtl)

    def _ask(self, words: list[int] | np.ndarray, n_answer: int) -> np.ndarray:
        if self._proc is None:
            raise RuntimeError("the AXI simulation is closed")
        data = np.asarray(words, dtype=np.int64).astype(np.uint32).tobytes()
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise self._died("stopped") from None
        return np.frombuffer(self._read(4 * n_answer, "stopped"), dtype=np.uint32)

    def write(self, offset: int, value: int, strb: int = 0xF) -> None:
        """An AXI4-Lite write of a 32-bit register (``strb``: its byte lanes)."""
        (resp,) = self._ask([WRITE, offset, value & 0xFFFFFFFF, strb], 1)
        if resp:
            raise OSError(f"register write at 0x{offset:02X}: response {resp}")

    def read(self, offset: int) -> int:
        """An AXI4-Lite read of a 32-bit register."""
        data, resp = self._ask([READ, offset], 2)
        if resp:
            raise OSError(f"register read at 0x{offset:02X}: response {resp}")
        return int(data)

    def poke(self, address: int, words: np.ndarray) -> None:
        """Put 32-bit words into the simulated DDR at byte ``address`` (no bus cycles)."""
        words = np.ascontiguousarray(words).view(np.uint32).reshape(-1)
        self._ask([POKE, address & 0xFFFFFFFF, address >> 32, words.size, *words.tolist()], 1)

    def peek(self, address: int, n: int) -> np.ndarray:
        """``n`` 32-bit words of the simulated DDR at byte ``address`` (unwritten words read 0xDEADBEEF)."""
        return self._ask([PEEK, address & 0xFFFFFFFF, address >> 32, n], n).copy()

    def start(self, code: int, in_address: int, out_address: int) -> None:
        """Start command ``code`` on the word buffers at these byte addresses, as the driver does:
        ``cmd``, each 64-bit address (low word, then high), then ``ap_start``."""
        regs = interface.REGISTER_MAP
        self.write(regs["cmd"], code)
        for reg, address in zip(interface.ADDRESS_REGISTERS, (in_address, out_address), strict=True):
            self.write(regs[reg], address & 0xFFFFFFFF)
            self.write(regs[reg] + 4, address >> 32)
        self.write(regs["ap_ctrl"], AP_START)

    def tick(self, cycles: int) -> None:
        """Let ``cycles`` clock cycles pass with the bus idle."""
        self._ask([TICK, cycles], 1)

    def wait_irq(self, max_cycles: int = 2**31) -> int:
        """Clock until the ``irq`` output is high; returns the cycles it took (TimeoutError after ``max_cycles``)."""
        lo, hi, irq = self._ask([WAIT, max_cycles], 3)
        if not irq:
            raise TimeoutError(f"{self.name}_axi: no interrupt within {max_cycles} cycles")
        return int(lo) | int(hi) << 32

    def stats(self) -> Stats:
        c_lo, c_hi, *rest = (int(v) for v in self._ask([STATS], 6))
        return Stats(c_lo | c_hi << 32, *rest)


class MMIO:
    """Registers of the simulated kernel, as ``pynq.MMIO(base_addr, length)`` gives them on the board."""

    def __init__(self, sim: AxiSimulation, base_addr: int = 0, length: int = 0x40):
        self.sim, self.base_addr, self.length = sim, base_addr, length

    def read(self, offset: int = 0, length: int = 4) -> int:
        if length not in (4, 8) or offset % 4:
            raise ValueError("MMIO reads are 4 or 8 bytes at a word-aligned offset")
        value = self.sim.read(offset)
        return value | self.sim.read(offset + 4) << 32 if length == 8 else value

    def write(self, offset: int, data: int | bytes) -> None:
        if offset % 4:
            raise ValueError("MMIO writes go to a word-aligned offset")
        if isinstance(data, (bytes, bytearray)):
            if len(data) % 4:
                raise ValueError("MMIO writes whole 32-bit words")
            for i, word in enumerate(np.frombuffer(bytes(data), dtype="<u4")):
                self.sim.write(offset + 4 * i, int(word))
        else:
            self.sim.write(offset, int(data))


class SimBuffer(np.ndarray):
    """An array in the simulated DDR, as ``pynq.allocate`` returns one (``PynqBuffer``)."""

    sim: AxiSimulation
    physical_address: int

    @property
    def device_address(self) -> int:
        return self.physical_address

    def flush(self) -> None:
        """Copy the array into the simulated DDR (the kernel reads it there)."""
        self.sim.poke(self.physical_address, np.ascontiguousarray(self).view(np.uint8).view(np.uint32))

    def invalidate(self) -> None:
        """Copy the simulated DDR back into the array (after the kernel wrote it)."""
        words = self.sim.peek(self.physical_address, self.nbytes // 4)
        self.view(np.uint8)[...] = words.view(np.uint8).reshape(self.view(np.uint8).shape)

    def freebuffer(self) -> None:
        self.freed = True

    close = freebuffer

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.freebuffer()


def pynq_module(project_dir: str | Path, seed: int = 0, gap: int = 16, first_address: int = 0x1_0000_0000,
                spacing: int = 0x10_0000) -> types.ModuleType:
    """A stand-in for the ``pynq`` package that runs the project's RTL kernel in Verilator.

    ``Overlay(bitfile)`` starts an ``AxiSimulation`` (the bit file is not read) whose ``<name>_top_0``
    attribute is the kernel's ``MMIO``, as on the board; ``allocate(shape, dtype)`` gives
    ``SimBuffer``s in its DDR at ``first_address``, ``first_address + spacing``, ... (8-byte aligned,
    as the kernel's 64-bit beats need; not page-aligned if you choose so, to exercise the 4 KiB page
    splits). ``module.simulation`` is the running simulation.
    """
    if first_address % 8 or spacing % 8:
        raise ValueError("the kernel reads and writes 8-byte beats: first_address and spacing must be multiples of 8")
    mod = types.ModuleType("pynq")
    mod.simulation = None
    next_address = [first_address]

    class Overlay:
        def __init__(self, bitfile, download: bool = True):
            if mod.simulation is not None:
                mod.simulation.close()
            mod.simulation = AxiSimulation(project_dir, seed=seed, gap=gap)
            setattr(self, f"{mod.simulation.name}_top_0", MMIO(mod.simulation))

    def allocate(shape, dtype=np.uint32, **_):
        if mod.simulation is None:
            raise RuntimeError("load an Overlay first: the buffers live in its simulated DDR")
        buf = np.zeros(shape, dtype).view(SimBuffer)
        if buf.nbytes % 4:
            raise ValueError("simulated buffers hold whole 32-bit words")
        buf.sim, buf.physical_address = mod.simulation, next_address[0]
        next_address[0] += spacing
        return buf

    mod.Overlay, mod.allocate = Overlay, allocate
    mod.MMIO = lambda base_addr=0, length=0x40, **_: MMIO(mod.simulation, base_addr, length)
    return mod
