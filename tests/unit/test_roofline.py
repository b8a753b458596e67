"""The roofline of a kernel: work, traffic and ceilings counted right, and `fx2fpga report` drawing it."""

from __future__ import annotations

import json

import pytest
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Access, Affine, Buffer, Kernel, Loop, Program, Stage

from fx2fpga.cli import main as cli_main
from fx2fpga.project import roofline
from fx2fpga.targets import load_target

from ..conftest import ROOT


def _matmul_kernel() -> Kernel:
    """out[i, j] = sum_k a[i, k] * w[k, j]: a 2x3 input (16 bits), a 3x4 weight (24 bits), a 2x4 output (16 bits)."""
    i, j, k = (Affine.var(v) for v in "ijk")
    bufs = {"a": Buffer("a", (2, 3), Fixed(16, 6), "input"), "w": Buffer("w", (3, 4), Fixed(24, 8), "param"),
            "out": Buffer("out", (2, 4), Fixed(16, 6), "output")}
    st = Stage("mm", "mac", (Loop("i", 2), Loop("j", 4), Loop("k", 3)), Access("out", (i, j)),
               (Access("a", (i, k)), Access("w", (k, j))), reduce=("k",), acc=Fixed(48, 20))
    return Kernel("mm", bufs, {"infer": Program("infer", ["a"], ["out"], [st])}, ["w"])


def test_work_and_traffic_of_a_matmul():
    p, = roofline.program_points(_matmul_kernel(), {"infer": 100}, clock_mhz=100.0)
    assert p.macs == 2 * 4 * 3
    assert p.bus_bytes == 4 * (6 + 8)  # one 32-bit word per value in and out
    assert p.onchip_bytes == (24 * (16 + 24) + 8 * 16) // 8  # every operand at every point, every result once
    assert p.mac_per_s == pytest.approx(24 / 1e-6)  # 100 cycles at 100 MHz
    assert p.bus_intensity == pytest.approx(24 / 56)


def test_program_without_rtl_cycles_is_left_out():
    assert roofline.program_points(_matmul_kernel(), {}, 100.0) == []


def test_ceilings_of_the_pynq_z1_and_a_board_without_a_bus_figure():
    r = roofline.target_roofs(load_target("pynq-z1"))
    assert r.peak_mac_per_s == pytest.approx(220 * 100e6)
    assert r.onchip_bytes_per_s == pytest.approx(140 * 9 * 100e6)
    assert r.bus_bytes_per_s == pytest.approx(800e6) and "UG585" in r.bus_source  # 64-bit beats at 100 MHz
    assert roofline.target_roofs(load_target("ulx3s")).bus_bytes_per_s is None


def test_report_draws_the_digits_mlp_roofline(tmp_path, capsys):
    out = tmp_path / "mlp"
    assert cli_main(["compile", str(ROOT / "examples" / "mlp_digits.py"), "--train", "-o", str(out)]) == 0
    assert cli_main(["report", str(out), "--no-synth"]) == 0
    assert "## Roofline" in capsys.readouterr().out
    data = json.loads((out / "reports" / "roofline.json").read_text())
    progs = {p["program"]: p for p in data["programs"]}
    assert progs["infer"]["macs"] == 16 * 64 * 32 + 16 * 32 * 10  # the two linear layers over a batch of 16
    assert progs["train_step"]["macs"] >= progs["infer"]["macs"] + 64 * 16 * 32 + 2 * 16 * 32 * 10  # + backward
    manifest = json.loads((out / "manifest.json").read_text())
    assert progs["train_step"]["cycles"] == manifest["rtl_cycles"]["train_step"]
    assert (out / "reports" / "roofline.png").stat().st_size > 10_000
    assert (out / "report.md").read_text().count("## Roofline") == 1
    assert cli_main(["report", str(out), "--no-synth"]) == 0  # a second report replaces the section
    assert (out / "report.md").read_text().count("## Roofline") == 1
