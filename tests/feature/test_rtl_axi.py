"""The RTL kernel on the HLS kernel's bus interface: rtl/<name>_axi.v, its Verilator harness, build_rtl.tcl.

The proof that one driver serves both backends: the board driver (``PynqBackend``, unchanged)
runs against ``<name>_axi`` simulated by Verilator (``rtl_axi.pynq_module``: registers over
AXI4-Lite, buffers in a simulated DDR behind ``m_axi_gmem``, random READY lines and latencies,
buffers that straddle 4 KiB pages above 4 GiB) and equals the emulator bit for bit on the digits
MLP. One Verilator build (cached by source hash) serves every slow test here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fx2fpga_runtime import interface, rtl_axi
from fx2fpga_runtime.pynq_backend import AP_DONE, AP_START, PynqBackend
from fx2fpga_runtime.rtl import sources, verilator_env
from fx2fpga_runtime.runner import EmuBackend, KernelRunner
from torch import nn

import fx2fpga
from fx2fpga.backends.rtl import emit as verilog
from fx2fpga.passes import explore

slow = pytest.mark.slow  # runs Verilator
AP_IDLE, AP_READY, IRQ_BIT = 0x4, 0x8, 0x200
REGS = interface.REGISTER_MAP


@pytest.fixture(scope="module")
def project(mlp_train_design) -> tuple[Path, object]:
    _, design = mlp_train_design
    return design.out_dir, design


def init_params(kernel) -> dict[str, np.ndarray]:
    return {p: np.asarray(kernel.buffers[p].init).reshape(kernel.buffers[p].shape) for p in kernel.params}


# ----- the generated files (no simulation) -------------------------------------------------------------

def test_axi_top_has_the_manifests_register_map_and_commands(project):
    out, design = project
    name = design.kernel.name
    manifest = json.loads((out / "manifest.json").read_text())
    text = (out / "rtl" / f"{name}_axi.v").read_text()
    assert re.search(rf"^module {name}_axi \(", text, re.M)
    assert (out / "rtl" / "files.f").read_text().splitlines()[-1] == f"{name}_axi.v"
    found = {m[0].lower(): int(m[1], 16)
             for m in re.findall(r"localparam \[\d+:0\] ADDR_(\w+) = \d+'h([0-9A-F]+);", text)}
    want = {n: int(v, 16) for n, v in manifest["register_map"].items()}
    want.update({f"{n}_hi": want[n] + 4 for n in interface.ADDRESS_REGISTERS})
    assert found == want
    # the s_axi_control address is wide enough for the last register, and no wider (as Vitis HLS makes it)
    width = int(re.search(r"input\s+wire \[(\d+):0\]\s+s_axi_control_AWADDR", text)[1]) + 1
    assert 2 ** (width - 1) <= max(want.values()) + 4 <= 2**width
    # the command table: every command the manifest lists, with its word counts
    table = {int(c): (int(i), int(o)) for c, i, o in re.findall(
        r"32'd(\d+): begin  // \w+\n\s+n_in = \d+'d(\d+);\n\s+n_out = \d+'d(\d+);", text)}
    k = design.kernel
    assert table == {code: tuple(interface.word_count(k, b) for b in interface.command_buffers(k, cmd))
                     for cmd, code in manifest["commands"].items()}
    for port in ("ap_clk", "ap_rst_n", "irq", "s_axi_control_WSTRB", "m_axi_gmem_ARLEN", "m_axi_gmem_WLAST"):
        assert re.search(rf"wire (\[\d+:0\])?\s*{port}\b", text), port


def test_build_rtl_tcl_refers_to_files_that_exist(project):
    out, design = project
    name = design.kernel.name
    tcl = (out / "build_rtl.tcl").read_text()
    rtl = out / "rtl"
    listed = (rtl / "files.f").read_text().split()
    added = re.findall(r"\$rtl/([\w.-]+)", tcl)
    assert added and all((rtl / f).exists() for f in added), [f for f in added if not (rtl / f).exists()]
    assert set(listed) <= set(added)  # every source of files.f, plus the `include headers and mem/
    assert all(f.endswith(".sv") for f in set(added) - set(listed) - {"mem"})
    assert f"$rtl/{name}_axi.v" in tcl
    # $readmemh images (paths relative to rtl/) exist: the synthesis hook copies rtl/mem
    inits = {p for f in listed for p in re.findall(r'"(mem/[^"]+\.hex)"', (rtl / f).read_text())}
    assert inits and all((rtl / p).is_file() for p in inits)
    # the block design: the module reference of <name>_axi, named as the HLS IP's cell (PYNQ finds it so),
    # on the same PS ports as build.tcl
    hls = (out / "build.tcl").read_text()
    assert f"create_bd_cell -type module -reference {name}_axi {name}_top_0" in tcl
    assert f"create_bd_cell -type ip -vlnv fx2fpga:hls:{name}_top:1.0 {name}_top_0" in hls
    for line in hls.splitlines():
        if line.startswith(("apply_bd_automation", "set_property -dict", "create_bd_cell -type ip -vlnv xilinx")):
            assert line in tcl.splitlines(), line
    axi = (rtl / f"{name}_axi.v").read_text()  # a Verilog (not SystemVerilog) top: module references need it
    for bus in re.findall(r"get_bd_intf_pins \w+_top_0/(\w+)", tcl):
        assert f"{bus}_AWVALID" in axi and f"aximm:1.0 {bus} AWVALID" in axi
    assert f"-part {design.target.part}" in tcl and f"bitstream/{name}.bit" in tcl and f"bitstream/{name}.hwh" in tcl


def test_no_build_rtl_tcl_without_rtl(tmp_path):
    design = fx2fpga.compile(nn.Linear(3, 2), (torch.randn(1, 3),), out_dir=tmp_path / "p", name="lin",
                             outputs="hls")
    assert (tmp_path / "p" / "build.tcl").is_file() and not (tmp_path / "p" / "build_rtl.tcl").exists()
    assert design.outputs == "hls"


@slow
def test_axi_top_verilator_lint_wall_is_clean(project):
    out, design = project
    rtl = out / "rtl"
    exe, env = verilator_env()
    # +1364-2005ext+v: the .v file as Verilog-2005, the language Vivado reads it in
    proc = subprocess.run([exe, "--lint-only", "-Wall", "+1364-2005ext+v", "--top-module", f"{design.kernel.name}_axi",
                           f"-I{rtl}", *map(str, sources(rtl))], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "%Warning" not in proc.stderr, proc.stderr[-3000:]


# ----- the board driver against the simulated AXI kernel ------------------------------------------------

@slow
def test_pynq_driver_on_the_rtl_kernel_equals_the_emulator(project, digits_data, monkeypatch, tmp_path):
    out, design = project
    k = design.kernel
    x_train, y_train, x_test, _ = digits_data
    # random READY lines and latencies; buffers above 4 GiB, 15 beats (30 words) before a 4 KiB page ends
    pynq = rtl_axi.pynq_module(out, seed=1, first_address=0x1_2345_6F88, spacing=0x2_0000)
    monkeypatch.setitem(sys.modules, "pynq", pynq)
    (tmp_path / "stand-in.bit").write_bytes(b"")
    board = KernelRunner(k, PynqBackend(k, out, bitfile=tmp_path / "stand-in.bit"))
    emu = KernelRunner(k, EmuBackend(k))
    sim = pynq.simulation
    traffic = []

    def call(runner, method, *args):
        before = sim.stats()
        result = getattr(runner, method)(*args)
        after = sim.stats()
        traffic.append((after.beats_read - before.beats_read, after.beats_written - before.beats_written))
        return result

    init = init_params(k)
    call(board, "set_params_raw", init)
    emu.set_params_raw(init)
    assert np.array_equal(call(board, "infer", x_test[:16]), emu.infer(x_test[:16]))
    assert call(board, "train_step", x_train[:16], y_train[:16]) == emu.train_step(x_train[:16], y_train[:16])
    after = call(board, "get_params_raw")
    want = emu.get_params_raw()
    for p in k.params:
        assert np.array_equal(after[p], want[p]), p
        if k.buffers[p].kind != "hyper":  # (the learning rate register is read only)
            assert not np.array_equal(after[p], init[p])  # the step moved every parameter
    assert np.array_equal(call(board, "infer", x_test[16:32]), emu.infer(x_test[16:32]))
    # the kernel read exactly the beats of the command's input words and wrote exactly those of its output words
    # (two words a beat: an odd count's last beat half used)
    assert traffic == [tuple(-(-interface.word_count(k, b) // 2) for b in interface.command_buffers(k, c))
                       for c in ("load_params", "infer", "train_step", "read_params", "infer")]
    board.close()
    sim.close()


@slow
def test_axi_registers_behave_as_the_hls_kernels(project):
    out, _ = project
    sim = rtl_axi.AxiSimulation(out, seed=3, gap=0)  # random READYs, the host's AW and W in random order
    assert sim.read(REGS["ap_ctrl"]) == AP_IDLE
    # WSTRB: byte lanes; address registers: 64 bits in two words; other offsets read 0
    sim.write(REGS["cmd"], 0xAABBCCDD)
    sim.write(REGS["cmd"], 0x11, strb=0b0001)
    sim.write(REGS["cmd"], 0x2200_0000, strb=0b1000)
    assert sim.read(REGS["cmd"]) == 0x22BBCC11
    sim.write(REGS["out_words"], 0x89AB_CDEF)
    sim.write(REGS["out_words"] + 4, 0x0123_4567)
    assert (sim.read(REGS["out_words"]), sim.read(REGS["out_words"] + 4)) == (0x89AB_CDEF, 0x0123_4567)
    assert [sim.read(off) for off in (0x14, 0x20, 0x2C, 0x3C)] == [0, 0, 0, 0]
    # an unknown command ends at once with no memory traffic; ap_done and ap_ready clear on read
    before = sim.stats()
    sim.write(REGS["ap_ctrl"], AP_START)
    sim.tick(8)
    assert sim.read(REGS["ap_ctrl"]) == AP_DONE | AP_IDLE | AP_READY
    assert sim.read(REGS["ap_ctrl"]) == AP_IDLE
    after = sim.stats()
    assert (after.beats_read, after.beats_written) == (before.beats_read, before.beats_written)
    # auto_restart (bit 7) keeps ap_start set from call to call until it is written 0
    sim.write(REGS["ap_ctrl"], 0x80 | AP_START)
    sim.tick(20)
    assert sim.read(REGS["ap_ctrl"]) & (0x80 | AP_START | AP_DONE) == 0x80 | AP_START | AP_DONE
    sim.write(REGS["ap_ctrl"], 0)
    sim.tick(20)
    assert sim.read(REGS["ap_ctrl"]) & (0x80 | AP_START | AP_IDLE) == AP_IDLE
    sim.close()


@slow
def test_axi_calls_cost_the_core_cycles_plus_the_output_words(project):
    """Start to interrupt, ideal memory: the core's exact cycles plus one cycle per beat of output words (two
    words a beat) plus at most ``explore.AXI_CALL_CYCLES``: what the explorer and the throughput benchmark add to
    the core's cycles."""
    out, design = project
    k = design.kernel
    sim = rtl_axi.AxiSimulation(out, seed=0, gap=0)
    sim.write(REGS["gie"], 1)
    sim.write(REGS["ier"], 0b01)  # ap_done
    core = verilog.call_cycles(k)
    buf_in, buf_out = 0x3000_0000, 0x3010_0000
    rng = np.random.default_rng(0)
    for cmd, code in interface.commands_of(k).items():
        ins, outs = interface.command_buffers(k, cmd)
        n_out = -(-interface.word_count(k, outs) // 2)  # beats
        raw = {b: rng.integers(-100, 100, size=k.buffers[b].shape) for b in ins}
        sim.poke(buf_in, interface.pack(k, ins, raw))
        sim.start(code, buf_in, buf_out)
        cycles = sim.wait_irq(10 * core[cmd] + 10 * n_out + 1000)
        assert core[cmd] + n_out <= cycles <= core[cmd] + n_out + explore.AXI_CALL_CYCLES, (cmd, cycles, n_out)
        assert sim.read(REGS["isr"]) == 1 and sim.read(REGS["ap_ctrl"]) & IRQ_BIT
        sim.write(REGS["isr"], 1)  # toggle on write: clears it, and the interrupt falls
        assert sim.read(REGS["isr"]) == 0 and not sim.read(REGS["ap_ctrl"]) & IRQ_BIT
    sim.close()


class _OddThenPaired(nn.Module):
    """Two inputs: ``x`` (3 x 3, one value a word: 9 words), then ``z`` (3 x 8, banked 4 ways along its rows by
    ReLU's lanes: units of four 16-bit values in two words), so ``z``'s units start at an odd word."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(8, 4)

    def forward(self, x, z):
        return self.a(x) + self.b(torch.relu(z))


@slow
def test_units_of_two_words_after_an_odd_count_through_the_driver(tmp_path, monkeypatch):
    """The AXI wrapper's input queue hands the core a unit of two words wherever it starts in the beats: an odd
    count of single words first, then units; random READY lines and latencies, buffers that cross a 4 KiB page.
    The board driver on the RTL kernel equals the emulator, and each call reads exactly its words' beats."""
    torch.manual_seed(0)
    model = _OddThenPaired()
    out = tmp_path / "p"
    design = fx2fpga.compile(model, (torch.randn(3, 3), torch.randn(3, 8)), lanes={"infer_relu": [1, 4, "j"]},
                             out_dir=out)
    k = design.kernel
    phases = design.schedule.commands["infer"]
    assert k.meta["word_packing"] == {"infer_z": [1, 4]}
    assert [(p.name, p.in_words, p.iterations) for p in phases[:2]] == [("unpack_infer_x", 1, 9),
                                                                       ("unpack_infer_z", 2, 6)]
    pynq = rtl_axi.pynq_module(out, seed=1, first_address=0x1_0000_0FD8, spacing=0x1_0000)  # 5 beats to a page end
    monkeypatch.setitem(sys.modules, "pynq", pynq)
    (tmp_path / "stand-in.bit").write_bytes(b"")
    board = KernelRunner(k, PynqBackend(k, out, bitfile=tmp_path / "stand-in.bit"))
    emu = KernelRunner(k, EmuBackend(k))
    board.set_params_raw(emu.get_params_raw())
    rng = np.random.default_rng(2)
    for _ in range(3):
        x, z = rng.normal(size=(3, 3)), rng.normal(size=(3, 8))
        before = pynq.simulation.stats()
        assert np.array_equal(np.asarray(board.infer(x, z)), np.asarray(emu.infer(x, z)))
        after = pynq.simulation.stats()
        assert after.beats_read - before.beats_read == -(-(9 + 12) // 2)
    board.close()
    pynq.simulation.close()
