"""The quantization report: each tensor's SQNR, zeroed and saturated shares on the example data
(``design.quantization``, report.md), and the ``QuantizationWarning`` for a format that loses a tensor."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.fixed import Fixed
from torch import nn

import fx2fpga
from fx2fpga.passes import quant_report
from fx2fpga.passes.quant_report import FLOAT_KINDS, REPORT_ROWS, measure, residue

from ..conftest import load_example

PARAMS = {"fc1_weight": "fc1.weight", "fc1_bias": "fc1.bias", "fc2_weight": "fc2.weight", "fc2_bias": "fc2.bias"}


def _digits_mlp(precision=None, until=None):
    ex = load_example("mlp_digits")
    torch.manual_seed(0)
    return ex, fx2fpga.compile(ex.DigitsMLP(), ex.example_inputs, precision=precision, until=until,
                               train=fx2fpga.SGD(F.cross_entropy, ex.example_targets, lr=0.1))


@pytest.fixture(scope="module")
def normal():
    """The digits MLP's training kernel at the default formats; no QuantizationWarning on the way."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", fx2fpga.QuantizationWarning)
        return _digits_mlp()


@pytest.fixture(scope="module")
def zeroed():
    """The digits MLP at fixed<6,16>: a step of 1024, so every weight, input and activation becomes 0."""
    with pytest.warns(fx2fpga.QuantizationWarning) as record:
        ex, design = _digits_mlp("fixed<6,16>")
    return ex, design, [str(w.message) for w in record if w.category is fx2fpga.QuantizationWarning]


def _row(design, buffer: str):
    return next(r for r in design.quantization if r.buffer == buffer)


def test_fixed_6_16_is_legal_and_its_warning_names_the_zeroed_weights(zeroed):
    ex, design, messages = zeroed
    fmt = Fixed.parse("fixed<6,16>")  # integer bits beyond the width, as ap_fixed allows
    assert (fmt.ulp, fmt.max_value, fmt.min_value) == (1024.0, 31744.0, -32768.0)
    assert len(messages) == 1  # one warning per compile, naming the tensors: the parameters first
    for buffer, name in PARAMS.items():
        count = design.kernel.buffers[buffer].size
        assert f"{buffer} ({name}, fixed<6,16>) zeroes all {count:,} nonzero values" in messages[0]
        r = _row(design, buffer)
        assert (r.zeroed, r.sqnr_db, r.saturated, r.count) == (1.0, 0.0, 0.0, count)
    assert "and 23 more" in messages[0]  # 33 tensors lost (every one but the zero states), 10 named
    assert sum(r.problem() is not None for r in design.quantization) == 33
    with design.load("emu") as emu:  # what the warning foretells: the kernel computes nothing
        assert np.all(emu.infer(ex.example_inputs[0].numpy()) == 0)
        assert emu.train_step(ex.example_inputs[0].numpy(), ex.example_targets.numpy()) == 0.0
    assert "| `fc1.weight` | `fc1_weight` | fixed<6,16> | 2,048 | 0.0 | 100% | 0 | **zeroes all 2,048 nonzero " \
           "values** |" in design.report


def test_a_normal_compile_reports_every_float_tensor_with_a_high_sqnr(normal):
    _, design = normal
    _, at_quantize = _digits_mlp(until="quantize")  # the buffers before memory sharing renames them
    floats = {b.name for b in at_quantize.buffers.values() if b.kind in FLOAT_KINDS and b.role != "const"}
    assert {r.buffer for r in design.quantization} == floats and len(floats) == 34  # the SGD update folded
    assert all(r.problem() is None for r in design.quantization)
    for r in design.quantization:
        assert r.sqnr_db > 54, r  # measured: 55.1 dB at worst (the logits, fixed<16,6>)
        assert r.saturated == 0 and r.zeroed < 0.01, r  # measured: 0.6% at most (a logit of 4e-4, ulp 2**-10)
    assert _row(design, "fc1_weight").sqnr_db == pytest.approx(84.4, abs=0.1)  # fixed<24,8>: ulp 2**-16
    assert _row(design, "infer_x").sqnr_db == math.inf  # pixels k/16: exact in fixed<16,6>
    assert [r.sqnr_db for r in design.quantization] == sorted(r.sqnr_db for r in design.quantization)


def test_report_md_has_the_table_worst_first_capped(normal):
    _, design = normal
    text = design.report
    section = text[text.index("## Quantization on the example data"):]
    section = section[:section.index("\n## ")]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) == REPORT_ROWS and f"{34 - REPORT_ROWS} more tensors, each at " in section
    worst = design.quantization[0]
    assert rows[0].startswith(f"| `{worst.tensor}` | `{worst.buffer}` | {worst.fmt} | {worst.count:,} | "
                              f"{worst.sqnr_db:.1f} |")
    assert [float(r.split(" | ")[4]) for r in rows] == sorted(float(r.split(" | ")[4]) for r in rows)


def test_saturated_and_zeroed_shares_of_a_hand_checked_tensor():
    # fixed<4,3>: ulp 0.5, range [-4, 3.5]
    x = np.array([0.5, 1.0, -1.0, 3.9, 4.0, 5.0, -4.0, -4.5, 0.001, 0.0])
    r = measure(x, Fixed(4, 3))
    assert r.saturated == 4 / 10  # 3.9, 4.0, 5.0, -4.5 are beyond the range; -4.0 is its minimum
    assert r.zeroed == 1 / 9 and r.nonzero == 9  # 0.001 -> 0, of the 9 nonzero values
    # q = 0.5 1 -1 3.5 3.5 3.5 -4 -4 0 0: errors 0.4 0.5 1.5 -0.5 0.001
    assert r.sqnr_db == pytest.approx(10 * math.log10(94.710001 / 2.910001), rel=1e-12)
    assert r.problem() == "saturates 40.0% of 10 values"
    assert measure(np.zeros(3), Fixed(8, 2)).sqnr_db == math.inf  # exact
    assert measure([0.25, 0.1], Fixed(8, 2)).problem() is None  # 0.1 -> 0.09375: no zero
    assert measure([0.25, 0.005, -0.005], Fixed(8, 2)).problem() == "zeroes 67% of 3 nonzero values"  # ulp 1/64


def test_a_saturating_weight_format_draws_the_warning_with_its_share():
    model = nn.Linear(4, 8)
    with torch.no_grad():
        model.weight.copy_(torch.linspace(-3, 3, 32).reshape(8, 4))
    x = torch.linspace(-1, 1, 16).reshape(4, 4)
    # weights fixed<8,2>: range [-2, 1.96875]; of linspace(-3, 3, 32) (step 6/31), 6 are below and 6 above
    with pytest.warns(fx2fpga.QuantizationWarning, match=r"weight \(weight, fixed<8,2>\) saturates 37.5% of 32 values"):
        design = fx2fpga.compile(model, (x,), precision={"weight": "fixed<8,2>"})
    w = model.weight.detach().double().numpy()
    r = _row(design, "weight")
    assert r.saturated == np.count_nonzero((w < -2) | (w > 1.96875)) / 32 == 12 / 32
    assert "**saturates 37.5% of 32 values**" in design.report


class _BatchNormMlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def test_float32_residue_is_not_counted_as_zeroed():
    """fc1.bias's gradient through BatchNorm is 0 exactly; float32 leaves ~1e-9 that fixed<24,6> zeroes."""
    torch.manual_seed(3)
    x, y = torch.randn(8, 6), torch.arange(8) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", fx2fpga.QuantizationWarning)
        design = fx2fpga.compile(_BatchNormMlp(), (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1),
                                 fold_updates=False)  # keeps fc1.bias's gradient in a buffer of its own
    flagged = [r for r in design.quantization if r.residue]
    assert flagged and all(r.nonzero == 0 and r.zeroed == 0 and r.sqnr_db == math.inf for r in flagged)
    assert "values are float32 residue, 0 in float64 |" in "\n".join(quant_report.report_lines(flagged))
    assert residue(np.array([1e-9, 1e-9, 0.5, 0.0]), np.array([1e-18, 0.9e-9, 0.5, 0.0])).tolist() == \
        [True, False, False, False]


def test_design_quantization_rows_as_dicts(normal):
    _, design = normal
    d = _row(design, "fc1_weight").as_dict()
    assert d["tensor"] == "fc1.weight" and d["format"] == "fixed<24,8>" and d["count"] == 2048
    assert _row(design, "infer_x").as_dict()["sqnr_db"] is None  # exact: JSON has no inf
    assert quant_report.problems(design.quantization) == []
