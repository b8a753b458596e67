"""The interval derivation of ``passes/derived_ranges.py`` on a hand-built MSE kernel: the formats it gives each
stage of the loss, and the loss holding the worst case of its input formats in the emulator."""

from __future__ import annotations

import numpy as np
import pytest
from fx2fpga_runtime.emulator import Emulator
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Access, Affine, Buffer, Kernel, Loop, Program, Stage

from fx2fpga.passes import derived_ranges

N = 16
ACT = Fixed(16, 6)  # range [-32, 32 - 2**-10]
MEAN = Fixed(18, -2)  # 1/16, as quantize gives the mean's constant


def _mse_kernel(pred: Fixed = ACT, target: Fixed = ACT) -> Kernel:
    """``loss = (1/N) sum_i (p_i - y_i)**2``, as lowering makes it: sub, mul, sum, mul by a constant."""
    i = (Affine.var("i"),)
    bufs = [Buffer("p", (N,), pred, "input"), Buffer("y", (N,), target, "target"), Buffer("d", (N,), ACT),
            Buffer("sq", (N,), ACT), Buffer("s", (), ACT),
            Buffer("k", (), MEAN, "const", "const", tuple(int(v) for v in MEAN.quantize(np.array([1 / N])))),
            Buffer("loss", (), ACT, "output")]
    loop = (Loop("i", N),)
    stages = [Stage("sub", "sub", loop, Access("d", i), (Access("p", i), Access("y", i))),
              Stage("square", "mul", loop, Access("sq", i), (Access("d", i), Access("d", i))),
              Stage("sum", "sum", loop, Access("s", ()), (Access("sq", i),), reduce=("i",)),
              Stage("mean", "mul", (), Access("loss", ()), (Access("s", ()), Access("k", ())))]
    program = Program("train_step", ["p", "y"], ["loss"], stages)
    return Kernel("mse", {b.name: b for b in bufs}, {"train_step": program}, [])


def test_the_loss_cone_is_every_stage_of_the_loss():
    assert derived_ranges.loss_cone(_mse_kernel()) == {"sub", "square", "sum", "mean"}


def test_each_stage_gets_the_range_its_operands_formats_imply():
    """(-64, 64) needs 7 integer bits; its square in [-4096, 4096] (corners of the two operands' ranges) 14;
    16 of them 18; times the constant's range (1/8) 16."""
    kernel = _mse_kernel()
    notes = derived_ranges.run(kernel, set())
    assert {b: str(kernel.buffers[b].fmt) for b in ("d", "sq", "s", "loss")} == {
        "d": "fixed<17,7>", "sq": "fixed<24,14>", "s": "fixed<28,18>", "loss": "fixed<26,16>"}
    assert len(notes) == 4 and all("the loss" in n for n in notes)


def test_the_derived_loss_holds_the_worst_case_of_its_input_formats():
    """The prediction at its format's minimum, the target at its maximum: every stage of the loss holds its
    value (no saturation counted) and the loss is ``(64 - 2**-10)**2`` rounded to the ulp."""
    kernel = _mse_kernel()
    derived_ranges.run(kernel, set())
    kernel.programs["train_step"].stages[2].acc = Fixed(40, 24)
    emu = Emulator(kernel)
    out = emu.run("train_step", {"p": np.full(N, ACT.raw_min), "y": np.full(N, ACT.raw_max)})
    diff = ACT.max_value - ACT.min_value
    assert kernel.buffers["loss"].fmt.to_float(out["loss"]) == round(diff * diff / ACT.ulp) * ACT.ulp
    assert emu.read_saturation() == {"d": 0, "sq": 0, "s": 0, "loss": 0}


@pytest.mark.parametrize(("frac_bits", "int_bits"), [(10, 7), (0, 8), (12, 7)])
def test_rounding_to_fewer_fraction_bits_may_need_one_more_integer_bit(frac_bits, int_bits):
    """``p - y`` lies in [-64 + 2**-10, 64 - 2**-10]; rounded to whole numbers it can reach 64 (8 bits), and at
    more fraction bits it stays below 64 (7)."""
    kernel = _mse_kernel()
    assert derived_ranges.derived_int_bits(kernel.programs["train_step"].stages[0], kernel, frac_bits) == int_bits


def test_a_target_holds_its_prediction_range_and_overrides_stay():
    kernel = _mse_kernel(pred=Fixed(20, 10))
    derived_ranges.hold_targets(kernel, set())
    assert kernel.buffers["y"].fmt == Fixed(20, 10)  # the prediction's integer bits, the target's fraction
    kept = _mse_kernel(pred=Fixed(20, 10))
    derived_ranges.run(kept, {"y", "loss"})
    assert kept.buffers["y"].fmt == ACT and kept.buffers["loss"].fmt == ACT
