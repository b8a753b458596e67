"""RTL address arithmetic of lanes reading a buffer through ``/`` and ``%``.

A grouped convolution's weight gradient is a (groups, Cout/groups, Cin/groups, kh, kw) buffer that the SGD
update (``msub``, 4 lanes over the output channel ``i``) reads as ``dw[i / 2][i % 2]...``. Lane 1's index
``(4*c + 1) / 2`` is at most 1, one bit, and the controller used to build the divisor 2 in that one bit: a
division by zero, so the update read a wrong bank of the gradient for channel 1 (off by up to hundreds of LSB).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fx2fpga

from ..conftest import assert_backend_equals_emu
from .test_rtl import assert_lint_clean

DIVIDE_BY_ZERO = re.compile(r"[/%] \d+'h0\b")  # `x / 1'h0`, `x % 2'h0` in the generated SystemVerilog


@pytest.fixture(scope="module")
def grouped_conv_training():
    """Conv(1->4, stride 2) -> ReLU -> grouped Conv(4->4, groups 2), MSE and SGD at 4 lanes: the grouped
    convolution's weight gradient gets 3 lanes over kx, its update 4 lanes over the channels."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1, groups=2))
    x, y = torch.randn(4, 1, 8, 8), torch.randn(4, 4, 4, 4)
    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.mse_loss, y, lr=0.1), lanes=4)
    return design, x.numpy(), y.numpy()


@pytest.mark.slow
def test_update_reads_grouped_gradient_through_div_mod(grouped_conv_training):
    design, _, _ = grouped_conv_training
    update = next(st for st in design.kernel.stages() if st.name == "train_update_b_2_weight")
    gradient = update.ins[1]
    assert (update.lanes, update.lane_var) == (4, "i")
    assert [(ix.div, ix.mod) for ix in gradient.index[:2]] == [(2, 0), (1, 2)]


@pytest.mark.slow
def test_controller_never_divides_by_zero(grouped_conv_training):
    design, _, _ = grouped_conv_training
    ctrl = next(text for path, text in design.files().items() if path.endswith("_ctrl.sv"))
    assert DIVIDE_BY_ZERO.findall(ctrl) == []


@pytest.mark.slow
def test_rtl_equals_emu_over_training_steps(grouped_conv_training):
    design, x, y = grouped_conv_training
    rng = np.random.default_rng(1)
    x2, y2 = rng.normal(0, 1, x.shape), rng.normal(0, 1, y.shape)
    assert_backend_equals_emu(design, "rtl", [("train_step", [x, y]), ("train_step", [x2, y2]), ("infer", [x])])


@pytest.mark.slow
def test_banks_written_together_are_one_ram_side_by_side(tmp_path):
    """A 64-wide layer on a batch of 64 at 16 lanes writes all 16 banks of its output (256 x 16 bits each, a
    RAMB18 apiece) in every issue, at one address: the banks are one RAM of 256 x 256 bits (4 BRAM36 instead of 8),
    each bank a slice of its word; Verilator equals the emulator. The weights, which the host loads one word at a
    time, keep a RAM per bank."""
    from fx2fpga.passes import resources

    torch.manual_seed(0)
    x = torch.randn(64, 8)
    design = fx2fpga.compile(nn.Linear(8, 64), (x,), lanes=16, outputs="rtl", out_dir=tmp_path / "wide")
    mems = {m["name"]: m for m in design.rtl_plan().memories}
    out = mems["infer_output"]
    assert out["side_by_side"] and (out["banks"], out["depth"], out["width"]) == (16, 256, 16)
    assert not mems["weight"]["side_by_side"]
    assert resources.bank_mapping(256, 16, False).bram36 * 16 == 8.0
    assert resources.bank_mapping(256, 16 * 16, False).bram36 == 4.0
    top = (tmp_path / "wide" / "rtl" / "linear_top.sv").read_text()
    assert "fx2fpga_ram #(.W(256), .DEPTH(256), .AW(8)) sbs_mem_infer_output (" in top
    assert "mem_infer_output_0 (" not in top and "mem_weight_0 (" in top
    assert_lint_clean(tmp_path / "wide" / "rtl", "linear_top")  # (the other banks' ports sunk)
    rng = np.random.default_rng(0)
    assert_backend_equals_emu(design, "rtl", [("infer", [x.numpy()]), ("infer", [rng.normal(0, 2, (64, 8))])])
