"""DDR traffic per call in the project folder (``passes/ddr_traffic.py``): a Linear layer with its weight forced to
DDR, counted by hand, in ``manifest.json``, ``report.md`` and the roofline of ``fx2fpga report``."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import fx2fpga
from fx2fpga.cli import main as cli_main


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """Linear(4 -> 3), batch 2, trained with SGD; its weight (3x4, fixed<24,8>: 4 bytes a value, its m_axi
    array's element) in DDR."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 4), torch.tensor([0, 2])
    return fx2fpga.compile(torch.nn.Linear(4, 3), (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1),
                           placement={"weight": "ddr"}, outputs="hls", out_dir=tmp_path_factory.mktemp("lin") / "lin")


def test_a_linear_layer_reads_its_ddr_weight_once_per_batch_row(linear):
    """infer: the matmul reads w[j][k] at every (i, j, k): 2 x 3 x 4 = 24 reads. train_step: the forward matmul's 24,
    then the update (w = w + sum_i (-lr g)[i][j] x[i][k]) starts each accumulator from w[j][k] (12 reads) and writes
    it back (12 writes). load_params writes the 12 values, read_params reads them."""
    manifest = json.loads((linear.out_dir / "manifest.json").read_text())
    traffic = manifest["ddr_traffic"]
    assert sorted(traffic) == ["infer", "load_params", "read_params", "train_step"]  # (the manifest sorts keys)
    assert traffic["infer"] == {"buffers": {"weight": {"read_bytes": 24 * 4, "write_bytes": 0}},
                                "read_bytes": 96, "write_bytes": 0, "bytes": 96, "min_cycles": 12}  # 8 bytes a cycle
    assert traffic["train_step"] == {"buffers": {"weight": {"read_bytes": (24 + 12) * 4, "write_bytes": 12 * 4}},
                                     "read_bytes": 144, "write_bytes": 48, "bytes": 192, "min_cycles": 24}
    assert traffic["load_params"]["write_bytes"] == traffic["read_params"]["read_bytes"] == 48
    assert traffic["load_params"]["read_bytes"] == traffic["read_params"]["write_bytes"] == 0
    report = (linear.out_dir / "report.md").read_text()
    assert "### DDR traffic per call" in report and "8 bytes a cycle at 100 MHz, 800 MB/s (S_AXI_HP0)" in report
    assert "| `train_step` | 144 | 48 | 192 | 24 | 0.2 | `weight` (192) |" in report


def test_a_kernel_wholly_on_chip_reports_no_ddr_traffic():
    torch.manual_seed(0)
    design = fx2fpga.compile(torch.nn.Linear(4, 3), (torch.randn(2, 4),), outputs="hls")
    assert "ddr_traffic" not in design.files()["manifest.json"]
    assert "DDR traffic" not in design.report


def test_report_puts_the_programs_against_the_ddr_roof(linear, capsys):
    assert cli_main(["report", str(linear.out_dir), "--no-synth"]) == 0
    text = capsys.readouterr().out
    assert "DDR 800 MB/s (8 bytes a cycle at the S_AXI_HP0 port)" in text
    data = json.loads((linear.out_dir / "reports" / "roofline.json").read_text())
    progs = {p["program"]: p for p in data["programs"]}
    assert data["roofs"]["ddr_bytes_per_s"] == 800e6
    assert progs["infer"]["ddr_bytes"] == 96 and progs["train_step"]["ddr_bytes"] == 192
    assert progs["infer"]["ddr_intensity"] == pytest.approx(24 / 96)  # 24 MACs per call
    assert progs["infer"]["cycles_from"] == "hls estimate"  # 12 cycles of DDR bytes, fewer than the estimate
