"""The board backend's register protocol, against a stand-in for the pynq package.

The stand-in models what the generated IP does on the bus: registers at the manifest's
offsets, ap_start/ap_done, and the in/out word buffers at the physical addresses written to
the address registers; the kernel itself is the emulator. What is under test is our side:
command codes, 64-bit addresses split over two registers, word counts, polling, and for a kernel with
buffers in DDR (docs/offchip.md) one allocated buffer per DDR buffer, of the C++ array's size, its address
in the register pair the top function's argument order gives it.
"""

from __future__ import annotations

import json
import math
import re
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime import interface
from fx2fpga_runtime.errors import KernelBackendError, KernelCapabilityError
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


def _element_bytes(width: int) -> int:
    """An ap_[u]fixed<width> in an m_axi array: the next power of two of whole bytes (UG1391)."""
    return 2 ** math.ceil(math.log2(math.ceil(width / 8)))


def _fake_pynq(kernel, memory: dict, ddr_registers: dict | None = None):
    """``ddr_registers``: DDR buffer -> the offset of its address register; before each ``ap_start`` the IP checks
    that each holds the address of an allocated buffer of the C++ array's values and element size, holding the
    buffer's initial values at the first start."""
    mod = types.ModuleType("pynq")
    mod.starts = 0
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
                for name, reg in (ddr_registers or {}).items():
                    address = self.regs[reg] | self.regs[reg + 4] << 32
                    assert address in memory, f"{name}: no buffer at {address:#x}"
                    buf, b = memory[address], kernel.buffers[name]
                    assert buf.size == b.size and buf.itemsize == _element_bytes(b.fmt.width)
                    assert buf.dtype.kind == ("i" if b.fmt.signed else "u") and not getattr(buf, "freed", False)
                    if mod.starts == 0:
                        assert getattr(buf, "flushed", False)
                        assert np.array_equal(buf, np.asarray(b.init if b.init is not None else np.zeros(b.size)))
                mod.starts += 1
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


def _tiny(tmp_path, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = torch.randn(4, 6), torch.tensor([0, 2, 1, 2])
    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.2), out_dir=tmp_path / "p",
                             name="tiny", outputs="hls", **kw)
    (tmp_path / "p" / "bitstream").mkdir()
    (tmp_path / "p" / "bitstream" / "tiny.bit").write_bytes(b"stand-in")
    return design, x, y


def _manifest(design) -> dict:
    return json.loads((design.out_dir / "manifest.json").read_text())


def test_pynq_backend_allocates_the_ddr_buffers_and_passes_their_addresses(tmp_path, monkeypatch):
    design, x, y = _tiny(tmp_path, placement="ddr")
    k = design.kernel
    ddr = k.ddr_buffers()
    assert len(ddr) == 17 and ddr[:4] == ["b_0_weight", "b_0_bias", "b_2_weight", "b_2_bias"]
    rows = {r["buffer"]: r for r in _manifest(design)["ddr_buffers"]}
    assert list(rows) == ddr
    assert rows["b_0_weight"] == {"buffer": "b_0_weight", "register": "0x30", "shape": [5, 6], "format": "fixed<24,8>",
                                  "type": "ap_fixed<32,16,AP_TRN,AP_WRAP>", "count": 30, "element_bytes": 4,
                                  "signed": True, "bytes": 120}
    assert rows["b_0_bias"]["register"] == "0x3C" and rows["b_2_weight"]["register"] == "0x48"
    assert {r["format"]: r["element_bytes"] for r in rows.values()} == {
        "fixed<24,8>": 4, "fixed<16,6>": 2, "ufixed<1,1>": 1, "fixed<18,8>": 4, "fixed<24,6>": 4}
    for r in rows.values():  # the C++ element type: exactly the bytes the driver allocates, of its signedness
        kind, bits = re.fullmatch(r"(ap_u?fixed)<(\d+),-?\d+,AP_TRN,AP_WRAP>", r["type"]).groups()
        assert int(bits) == 8 * r["element_bytes"] and (kind == "ap_fixed") == r["signed"], r
    registers = {n: int(r["register"], 16) for n, r in rows.items()}
    memory: dict = {}
    fake = _fake_pynq(k, memory, registers)
    monkeypatch.setitem(sys.modules, "pynq", fake)
    board = fx2fpga.load(design.out_dir, backend="pynq")
    held = board.backend.ddr
    assert list(held) == ddr and len(memory) == 2 + len(ddr)  # in_words, out_words, one per DDR buffer
    assert list(board.kernel.ddr_buffers()) == sorted(ddr)  # kernel.json's order: the manifest's is the argument one
    for name, buf in held.items():
        assert memory[buf.physical_address] is buf and buf.nbytes == rows[name]["bytes"]
        assert board.backend.ip.regs[registers[name]] == buf.physical_address & 0xFFFFFFFF
        assert board.backend.ip.regs[registers[name] + 4] == buf.physical_address >> 32 == 1  # above 4 GiB
    emu = KernelRunner(k, EmuBackend(k))
    for _ in range(2):
        assert board.train_step(x.numpy(), y.numpy()) == emu.train_step(x.numpy(), y.numpy())
    assert np.array_equal(board.infer(x.numpy()), emu.infer(x.numpy()))
    got, want = board.get_params(), emu.get_params()  # read_params packs the DDR arrays in the kernel
    assert list(got) == list(want) and all(np.array_equal(got[n], want[n]) for n in want)
    starts = fake.starts
    params = {name: value * 0.5 for name, value in want.items()}
    board.set_params(params)  # load_params unpacks into the DDR arrays
    emu.set_params(params)
    assert fake.starts > starts
    assert board.train_step(x.numpy(), y.numpy()) == emu.train_step(x.numpy(), y.numpy())
    got, want = board.get_params(), emu.get_params()
    assert all(np.array_equal(got[n], want[n]) for n in want)
    board.close()
    assert memory and all(getattr(b, "freed", False) for b in memory.values())


def test_manifest_ddr_registers_follow_the_top_functions_arguments(tmp_path):
    """The register offsets, from the written C++ top function's argument list by Vitis HLS's rule: from 0x10, a
    32-bit scalar takes a data word and a reserved word, a pointer (an array argument, a 64-bit address) a low, a
    high and a reserved word."""
    design, _, _ = _tiny(tmp_path, placement={"b_2_weight": "ddr", "b_0_weight": "ddr", "b_0_bias": "ddr"})
    src = (design.out_dir / "src" / "tiny.cpp").read_text()
    args = re.search(r"^void tiny_top\((.*?)\)\s*\{", src, re.S | re.M).group(1).split(",")
    offsets, at = {}, 0x10
    for arg in args:
        name = re.match(r"\s*(?:const\s+)?[\w<>:]+\s+(\w+)", arg).group(1)
        offsets[name] = at
        at += 0xC if "[" in arg else 0x8
        assert "[" not in arg or f"#pragma HLS INTERFACE m_axi port={name} offset=slave" in src
    manifest = _manifest(design)
    ddr = {r["buffer"]: int(r["register"], 16) for r in manifest["ddr_buffers"]}
    assert list(ddr) == ["b_0_weight", "b_0_bias", "b_2_weight"] == design.kernel.ddr_buffers()
    regs = {n: int(v, 16) for n, v in manifest["register_map"].items()}
    assert offsets == {"cmd": regs["cmd"], "in_words": regs["in_words"], "out_words": regs["out_words"], **ddr}
    assert offsets == {"cmd": 0x10, "in_words": 0x18, "out_words": 0x24, "b_0_weight": 0x30, "b_0_bias": 0x3C,
                       "b_2_weight": 0x48}
    # get_params/set_params on the board: read_params packs and load_params unpacks the DDR arrays themselves
    load = re.search(r"case CMD_LOAD_PARAMS:(.*?)break;", src, re.S).group(1)
    read = re.search(r"case CMD_READ_PARAMS:(.*?)break;", src, re.S).group(1)
    for name in ddr:
        assert re.search(rf"unpack_{name}\(in_words, \d+, {name}\);", load)
        assert re.search(rf"pack_{name}\(out_words, \d+, {name}\);", read)


def test_on_chip_manifest_has_no_ddr_buffers_and_the_same_register_map(tmp_path):
    design, _, _ = _tiny(tmp_path)
    manifest = _manifest(design)
    assert "ddr_buffers" not in manifest and not interface.ddr_layout(design.kernel)
    assert manifest["register_map"] == {"ap_ctrl": "0x00", "gie": "0x04", "ier": "0x08", "isr": "0x0C",
                                        "cmd": "0x10", "in_words": "0x18", "out_words": "0x24"}


def test_pynq_backend_refuses_a_manifest_without_the_ddr_layout(tmp_path, monkeypatch):
    design, _, _ = _tiny(tmp_path, placement={"b_0_weight": "ddr"})
    path = design.out_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["ddr_buffers"]  # a folder from before the driver allocated DDR buffers
    path.write_text(json.dumps(manifest))
    monkeypatch.setitem(sys.modules, "pynq", _fake_pynq(design.kernel, {}))
    with pytest.raises(KernelCapabilityError, match="b_0_weight.*compile it again"):
        fx2fpga.load(design.out_dir, backend="pynq")


def test_pynq_backend_frees_what_it_allocated_when_ddr_runs_out(tmp_path, monkeypatch):
    design, _, _ = _tiny(tmp_path, placement={"b_0_weight": "ddr", "b_2_weight": "ddr"})
    memory: dict = {}
    fake = _fake_pynq(design.kernel, memory)
    allocate = fake.allocate

    def scarce(shape, dtype):  # the CMA pool holds in_words, out_words and the first DDR buffer
        if len(memory) == 3:
            raise RuntimeError("Failed to allocate Memory!")
        return allocate(shape, dtype)

    fake.allocate = scarce
    monkeypatch.setitem(sys.modules, "pynq", fake)
    with pytest.raises(KernelBackendError, match=r"DDR buffer 'b_2_weight' \(60 bytes; 180 bytes .*CMA"):
        fx2fpga.load(design.out_dir, backend="pynq")
    assert len(memory) == 3 and all(getattr(b, "freed", False) for b in memory.values())
