"""The RTL kernel behind the HLS kernel's bus interface: ``rtl/<name>_axi.v`` and its Verilator harness.

``<name>_axi`` (``templates/rtl/axi_top.v.j2``) wraps the word-stream core ``<name>_top`` in the
interface Vitis HLS gives ``<name>_top(int cmd, const int *in_words, int *out_words)``: an
AXI4-Lite slave ``s_axi_control`` with the register map of ``interface.REGISTER_MAP`` (the one
``manifest.json`` records), an AXI4 master ``m_axi_gmem`` (64-bit beats, two words each: the
width of the Zynq HP port it sits on) that reads the command's input words from ``in_words`` and
writes its output words to ``out_words``, and ``interrupt``. So the board
driver (``fx2fpga_runtime.pynq_backend``) drives either kernel unchanged.

It is a Verilog-2005 file, not SystemVerilog: Vivado's block-design module references (used by
``build_rtl.tcl``) and its IP packager accept only a Verilog or VHDL top.

``rtl/sim_axi.cpp`` (``templates/rtl/sim_axi.cpp.j2``) is the Verilator harness: a host on
``s_axi_control`` and a DDR model on ``m_axi_gmem``, served over stdin/stdout to
``fx2fpga_runtime.rtl_axi``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fx2fpga_runtime import interface, saturation

from ..common import command_table, template_env

WORD_BITS = interface.MAX_PORT_WIDTH
BURST_WORDS = 16  # m_axi_gmem bursts: at most 16 beats (AXI3-compatible, like Vitis HLS' default)
BEAT_BITS = 64  # m_axi_gmem's data: two words a beat (the Zynq HP ports' width, UG585 5.3)

# (direction seen from the kernel, width, AXI signal) of each interface; the ports are <interface>_<signal>
LITE_SIGNALS = [
    ("input", "AW", "AWADDR"), ("input", 1, "AWVALID"), ("output", 1, "AWREADY"),
    ("input", 32, "WDATA"), ("input", 4, "WSTRB"), ("input", 1, "WVALID"), ("output", 1, "WREADY"),
    ("output", 2, "BRESP"), ("output", 1, "BVALID"), ("input", 1, "BREADY"),
    ("input", "AW", "ARADDR"), ("input", 1, "ARVALID"), ("output", 1, "ARREADY"),
    ("output", 32, "RDATA"), ("output", 2, "RRESP"), ("output", 1, "RVALID"), ("input", 1, "RREADY"),
]
GMEM_SIGNALS = [
    ("output", 64, "AWADDR"), ("output", 8, "AWLEN"), ("output", 3, "AWSIZE"), ("output", 2, "AWBURST"),
    ("output", 4, "AWCACHE"), ("output", 3, "AWPROT"), ("output", 1, "AWVALID"), ("input", 1, "AWREADY"),
    ("output", BEAT_BITS, "WDATA"), ("output", BEAT_BITS // 8, "WSTRB"), ("output", 1, "WLAST"),
    ("output", 1, "WVALID"), ("input", 1, "WREADY"),
    ("input", 2, "BRESP"), ("input", 1, "BVALID"), ("output", 1, "BREADY"),
    ("output", 64, "ARADDR"), ("output", 8, "ARLEN"), ("output", 3, "ARSIZE"), ("output", 2, "ARBURST"),
    ("output", 4, "ARCACHE"), ("output", 3, "ARPROT"), ("output", 1, "ARVALID"), ("input", 1, "ARREADY"),
    ("input", BEAT_BITS, "RDATA"), ("input", 2, "RRESP"), ("input", 1, "RLAST"), ("input", 1, "RVALID"),
    ("output", 1, "RREADY"),
]


def control_addr_bits(registers: dict[str, int] | None = None) -> int:
    """Address bits of ``s_axi_control``: enough for the last register (Vitis HLS sizes it so too)."""
    regs = interface.REGISTER_MAP if registers is None else registers
    end = max(off + (8 if n in interface.ADDRESS_REGISTERS else 4) for n, off in regs.items())
    return (end - 1).bit_length()


@dataclass(frozen=True)
class WordCommand:
    """A command that moves no buffer, as the templates see it: ``read_saturation``."""

    name: str
    code: int
    in_words: int
    out_words: int


def saturation_command(kernel) -> list[WordCommand]:
    """``read_saturation`` of a kernel compiled with saturation counters (one word per counter), else none."""
    if not saturation.hardware_counters(kernel):
        return []
    return [WordCommand(saturation.COMMAND, interface.COMMANDS[saturation.COMMAND], 0,
                        len(saturation.counter_buffers(kernel)))]


def _ports(prefix: str, signals: list, aw: int) -> list[dict]:
    return [{"dir": d, "width": aw if w == "AW" else w, "name": f"{prefix}_{s}", "signal": s} for d, w, s in signals]


def generate(kernel, codes: dict[str, int], banner: str) -> dict[str, str]:
    """``rtl/<name>_axi.v`` and ``rtl/sim_axi.cpp`` for ``kernel`` (``codes``: the commands its core runs)."""
    name = kernel.name
    commands = [*command_table(kernel, codes), *saturation_command(kernel)]
    most = max([c.in_words for c in commands] + [c.out_words for c in commands] + [1])
    out_depth = max([c.out_words for c in commands] + [1])
    aw = control_addr_bits()
    regs = [{"name": n, "offset": off, "pointer": n in interface.ADDRESS_REGISTERS}
            for n, off in sorted(interface.REGISTER_MAP.items(), key=lambda kv: kv[1])]
    ctx = {
        "banner": banner, "name": name, "word_bits": WORD_BITS, "aw": aw, "regs": regs,
        "reg": dict(interface.REGISTER_MAP), "commands": commands,
        "aw_mask": (1 << aw) - 1,
        "cw": max(12, (most + 1).bit_length()),  # word counters: >= 11 bits for the 4 KiB page arithmetic
        "out_depth": out_depth, "out_aw": max(2, (out_depth - 1).bit_length()),
        "out_beats": max(2, -(-out_depth // 2)), "out_baw": max(2, (out_depth - 1).bit_length()) - 1,
        "burst": BURST_WORDS,
        "lite_ports": _ports("s_axi_control", LITE_SIGNALS, aw), "gmem_ports": _ports("m_axi_gmem", GMEM_SIGNALS, aw),
    }
    env = template_env()
    return {
        f"rtl/{name}_axi.v": env.get_template("rtl/axi_top.v.j2").render(ctx),
        "rtl/sim_axi.cpp": env.get_template("rtl/sim_axi.cpp.j2").render(ctx),
    }
