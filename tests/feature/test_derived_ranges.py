"""Formats that hold their range (docs/quantization.md, ``passes/derived_ranges.py``): an MSE regression kernel
compiled with example targets of zeros returns, on real targets, PyTorch's loss within the bound its formats
give, with no saturation of the loss; the loss holds its worst case; targets hold their prediction's range;
forward sums get their derived range within ``DERIVED_MAX_EXTRA_BITS``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.fixed import Fixed
from torch import nn

import fx2fpga
from fx2fpga.passes.derived_ranges import DERIVED_MAX_EXTRA_BITS, loss_buffers, loss_cone
from tests.error_bounds import propagate

BATCH, STEPS, LR = 16, 12, 0.01
PROFILED = Fixed(16, 6)  # the activation default: what the loss got from its profile on zero targets


def _regression_data() -> tuple[torch.Tensor, torch.Tensor]:
    """``y = x a + 5 + noise``, ``STEPS`` batches: targets from about -9 to 17 (zero targets: the example)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS * BATCH, 8, generator=g)
    y = x @ torch.linspace(-2, 3, 8)[:, None] + 5 + 0.5 * torch.randn(STEPS * BATCH, 1, generator=g)
    return x, y


@pytest.fixture(scope="module")
def mse_design():
    torch.manual_seed(0)
    model = nn.Linear(8, 1)  # (error_bounds.propagate cannot bound a ReLU's backward: its mask may flip)
    x, _ = _regression_data()
    design = fx2fpga.compile(model, (x[:BATCH],), train=fx2fpga.SGD(F.mse_loss, torch.zeros(BATCH, 1), lr=LR),
                             share_memory=False)
    return model, design


def _quantized(design, name: str, values: torch.Tensor) -> np.ndarray:
    fmt = design.kernel.buffers[name].fmt
    return fmt.to_float(fmt.quantize(values.double().numpy()))


def _float_loss(model: nn.Module, params: dict, x: np.ndarray, y: np.ndarray) -> float:
    """PyTorch's MSE in float64 with the kernel's parameters, on the inputs the kernel holds."""
    ref = model.double()
    with torch.no_grad():
        for name, value in params.items():
            ref.get_parameter(name).copy_(torch.from_numpy(np.asarray(value, dtype=np.float64)))
        return F.mse_loss(ref(torch.from_numpy(x)), torch.from_numpy(y)).item()


def test_mse_loss_on_real_targets_is_within_its_bound_with_no_saturation(mse_design):
    model, design = mse_design
    kernel, k = design.kernel, design.load("emu")
    step = kernel.programs["train_step"]
    (loss,) = loss_buffers(kernel)
    cone = {st.out.buffer for st in step.stages if st.name in loss_cone(kernel)}
    assert cone == {"train_sub", "train_pow_1", "train_mean_sum", "train_loss"}  # not the prediction
    x, y = _regression_data()
    worst_gap, losses = 0.0, []
    for i in range(STEPS):
        xb, yb = _quantized(design, step.inputs[0], x[i * BATCH:(i + 1) * BATCH]), \
            _quantized(design, step.inputs[1], y[i * BATCH:(i + 1) * BATCH])
        params = k.get_params()
        want = _float_loss(model, params, xb, yb)
        by_buffer = {b: params[n] for b, n in kernel.param_names.items() if n in params}
        _, err = propagate(kernel, "train_step", {**by_buffer, step.inputs[0]: xb, step.inputs[1]: yb})
        got = k.train_step(xb.astype(np.float32), yb.astype(np.float32))
        counts = k.saturation()
        assert all(counts[b] == 0 for b in cone), {b: counts[b] for b in cone}
        assert abs(got - want) <= float(err[loss]) + 1e-9, (i, got, want, float(err[loss]))
        worst_gap, losses = max(worst_gap, abs(got - want)), losses + [want]
    # the real losses reach beyond the format the profile of zero targets gave: it would have saturated
    assert max(losses) > PROFILED.max_value, max(losses)
    assert worst_gap < 0.01, worst_gap


def test_the_loss_holds_its_worst_case(mse_design):
    """A prediction saturated at its format's minimum against targets at their maximum: the largest loss
    the input formats allow, ``(32 + 32 - ulp)**2``, returned exactly as its formats round it."""
    _, design = mse_design
    kernel, k = design.kernel, design.load("emu")
    pred, target = kernel.buffers["train_addmm"].fmt, kernel.buffers["train_y"].fmt
    assert target == pred == PROFILED  # zero example targets: the target holds what its prediction holds
    k.set_params({"weight": -np.ones((1, 8)), "bias": np.zeros(1)})
    got = k.train_step(np.full((BATCH, 8), 10.0, np.float32), np.full((BATCH, 1), 100.0, np.float32))
    diff = target.max_value - pred.min_value  # 64 - 2**-10
    assert got == pytest.approx(round(diff * diff / pred.ulp) * pred.ulp, abs=0)  # rounded once, to the ulp
    counts = k.saturation()
    assert counts["train_addmm"] > 0  # the prediction saturated (on purpose) ...
    assert counts["train_sub"] == counts["train_pow_1"] == counts["train_mean_sum"] == counts["train_loss"] == 0
    assert kernel.buffers["train_loss"].fmt.max_value >= diff * diff  # ... the loss's format holds the worst case


def test_targets_of_zeros_hold_a_wide_prediction():
    """A prediction profiled at about 4,000 (int bits 14): the zero targets get its integer bits, not the
    activation default's 6."""
    torch.manual_seed(0)
    x = torch.randn(BATCH, 8) * 1000
    design = fx2fpga.compile(nn.Linear(8, 1), (x,), train=fx2fpga.SGD(F.mse_loss, torch.zeros(BATCH, 1), lr=LR))
    buffers = design.kernel.buffers
    assert buffers["train_addmm"].fmt.int_bits > PROFILED.int_bits
    assert buffers["train_y"].fmt.int_bits == buffers["train_addmm"].fmt.int_bits
    assert buffers["train_y"].fmt.frac_bits == PROFILED.frac_bits  # the fraction kept
    assert any("train_y" in line for line in design.context.notes["quantize"])


class _RowSum(nn.Module):
    def forward(self, x):
        return x.sum(dim=1)


@pytest.mark.parametrize(("features", "fmt"), [(8, "fixed<19,9>"), (64, "fixed<16,6>")])
def test_a_forward_sum_gets_its_derived_range_within_the_threshold(features, fmt):
    """A sum of 8 values of ``fixed<16,6>`` lies in (-256, 256): 3 integer bits more than profiled, within
    ``DERIVED_MAX_EXTRA_BITS`` (4), so its format holds it. A sum of 64 would need 6 more: it keeps its profile."""
    torch.manual_seed(0)
    design = fx2fpga.compile(_RowSum(), (torch.randn(4, features),))
    out = design.kernel.buffers[design.kernel.programs["infer"].outputs[0]]
    assert str(out.fmt) == fmt
    extra = {8: 3, 64: 6}[features]
    assert (extra <= DERIVED_MAX_EXTRA_BITS) == (fmt != str(PROFILED))
    note = " ".join(design.context.notes["quantize"])
    assert ("kept" in note) == (extra > DERIVED_MAX_EXTRA_BITS)
