"""The board backend's register protocol, against a stand-in for the pynq package.

The stand-in models what the generated IP does on the bus: registers at the manifest's
offsets, ap_start/ap_done, and the in/out word buffers at the physical addresses written to
the address registers; the kernel itself is the emulator. What is under test is our side:
command codes, 64-bit addresses split over two registers, word counts, polling.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import torch
import torch.nn.functional as F
from fx2fpga_runtime import interface
from fx2fpga_runtime.runner import EmuBackend, KernelRunner
from torch import nn

import fx2fpga


class _Buffer(np.ndarray):
    def flush(self):
        self.flushed = True

    def invalidate(self):
        pass

    def freebuffer(self):
        self.freed = True


def _fake_pynq(kernel, memory: dict):
    mod = types.ModuleType("pynq")
    next_address = [0x1_2345_0000]  # above 4 GiB: the high address word matters

    def allocate(shape, dtype):
        buf = np.zeros(shape, dtype).view(_Buffer)
        buf.physical_address = next_address[0]
        memory[buf.physical_address] = buf
        next_address[0] += 0x10_0000
        return buf

    class IP:
        def __init__(self):
            self.regs = {}
            self.emu = EmuBackend(kernel)
            self.codes = {v: k for k, v in interface.commands_of(kernel).items()}

        def write(self, offset, value):
            assert 0 <= value < 2**32
            self.regs[offset] = value
            if offset == 0x00 and value & 1:
                command = self.codes[self.regs[0x10]]
                src = memory[self.regs[0x18] | self.regs[0x1C] << 32]
                dst = memory[self.regs[0x24] | self.regs[0x28] << 32]
                ins, _ = interface.command_buffers(kernel, command)
                words = self.emu.call(command, np.asarray(src[: interface.word_count(kernel, ins)]))
                dst[: len(words)] = words
                self.regs[0x00] = 0x2 | 0x4  # done, idle

        def read(self, offset):
            return self.regs.get(offset, 0)

    class Overlay:
        def __init__(self, bitfile):
            setattr(self, f"{kernel.name}_top_0", IP())

    mod.allocate, mod.Overlay = allocate, Overlay
    return mod


def test_pynq_backend_drives_the_registers(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = torch.randn(4, 6), torch.tensor([0, 2, 1, 2])
    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.2), out_dir=tmp_path / "p",
                             name="tiny")
    (tmp_path / "p" / "bitstream").mkdir()
    (tmp_path / "p" / "bitstream" / "tiny.bit").write_bytes(b"stand-in")
    memory: dict = {}
    monkeypatch.setitem(sys.modules, "pynq", _fake_pynq(design.kernel, memory))
    board = fx2fpga.load(tmp_path / "p", backend="pynq")
    emu = KernelRunner(design.kernel, EmuBackend(design.kernel))
    for _ in range(3):
        assert board.train_step(x.numpy(), y.numpy()) == emu.train_step(x.numpy(), y.numpy())
    assert np.array_equal(board.infer(x.numpy()), emu.infer(x.numpy()))
    for name, value in emu.get_params().items():
        assert np.array_equal(board.get_params()[name], value)
    board.close()
    assert all(getattr(b, "freed", False) for b in memory.values())


def test_pynq_backend_without_bitstream_says_how_to_build(tmp_path, monkeypatch):
    design = fx2fpga.compile(nn.Linear(3, 2), (torch.randn(1, 3),), out_dir=tmp_path / "p", name="lin")
    monkeypatch.setitem(sys.modules, "pynq", _fake_pynq(design.kernel, {}))
    try:
        fx2fpga.load(tmp_path / "p", backend="pynq")
    except FileNotFoundError as e:
        assert "build.tcl" in str(e) and "lin.bit" in str(e)
    else:
        raise AssertionError("expected FileNotFoundError")
