"""Stochastic rounding in the RTL: Verilator equals the emulator bit for bit, and the numbers are the ones the
emulator draws (runtime/fx2fpga_runtime/stochastic.py): per point, per call, keyed by stage and seed.

One Verilator build: the digits MLP trained with 8-bit SR weights and 16-bit SR gradients at lanes 4 (its
updates, gradients and folded weight updates round SR: elementwise, msub-free and reduction units).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fx2fpga
from fx2fpga.passes import resources

from ..conftest import assert_backend_equals_emu, load_example

SR = {"weight": "fixed<8,2,SR,SAT>", "gradient": "fixed<16,4,SR,SAT>", "sr_seed": 3}
STEPS = 5


def _compile(md, precision, models=None, lanes=4):
    torch.manual_seed(0)
    model = models if models is not None else md.DigitsMLP()
    return fx2fpga.compile(model, md.example_inputs, target="pynq-z1", lanes=lanes, precision=precision,
                           train=fx2fpga.SGD(md.loss_fn, md.example_targets, lr=0.1))


def _batches(md, steps=STEPS):
    x, y, _, _ = md.digits()
    return list(md.batches(x, y, steps))


def _train(design, batches) -> dict:
    k = design.load("emu")
    for xb, yb in batches:
        k.train_step(xb, yb)
    return k.get_params()


@pytest.fixture(scope="module")
def md():
    return load_example("mlp_digits")


@pytest.mark.slow
def test_rtl_rounds_stochastically_as_the_emulator(md):
    """Training steps (the parameters read back after each) and back-to-back inferences (nothing between the
    calls: the call counter must step at the edge that takes the next command)."""
    design = _compile(md, {**SR, "activation": "fixed<12,4,SR,SAT>"})
    assert "rtl/fx2fpga_srbits.sv" in design.files()
    batches = _batches(md)
    emu = design.load("emu")
    with design.load("rtl") as rtl:
        for xb, _ in batches[:3]:
            raw = emu._quantize_inputs("infer", [xb])
            want, got = emu.call_raw("infer", raw), rtl.call_raw("infer", raw)
            assert all(np.array_equal(want[n], got[n]) for n in want)
    sequence = [("train_step", (xb, yb)) for xb, yb in batches]
    sequence.append(("infer", (sequence[0][1][0],)))
    assert_backend_equals_emu(design, "rtl", sequence)


def test_the_numbers_depend_on_the_seed_and_rounding_mode(md):
    """Not a vacuous equality: RND, SR and SR with another seed train to different parameters."""
    batches = _batches(md)
    sr = _train(_compile(md, SR), batches)
    other_seed = _train(_compile(md, {**SR, "sr_seed": 4}), batches)
    rnd = _train(_compile(md, {k: v.replace(",SR,SAT", "") for k, v in SR.items() if k != "sr_seed"}), batches)
    for other in (other_seed, rnd):
        assert any(not np.array_equal(sr[n], other[n]) for n in sr)


def test_stacked_models_draw_what_they_draw_alone(md):
    """The point leaves out the model loop: each of two stacked models trains to its parameters alone."""
    batches = _batches(md)
    torch.manual_seed(1)
    models = [md.DigitsMLP(), md.DigitsMLP()]
    stacked = _train(_compile(md, SR, models=models, lanes=None), batches)
    for model, got in zip(models, stacked, strict=True):
        alone = _train(_compile(md, SR, models=model, lanes=None), batches)
        for n in alone:
            assert np.array_equal(alone[n], got[n]), n


def test_report_states_the_generator_and_its_period(md):
    design = _compile(md, SR)
    text = design.report
    section = text[text.index("## Stochastic rounding"):]
    section = section[:section.index("\n## ")]
    sr = sorted(b.name for b in design.kernel.buffers.values() if b.fmt.rounding == "SR")
    assert sr and all(f"`{n}`" in section for n in sr)
    assert "seed 3" in section and "period 2**32" in section and "3 rounds of xorshift32" in section
    assert "## Stochastic rounding" not in _compile(md, None).report


def test_resource_model_counts_each_lane_s_random_bits(md):
    """The model's ``sr_bits``: per SR lane a 32-bit adder plus its random bits, as the top instantiates them."""
    import re

    design = _compile(md, SR)
    top = design.files()[f"rtl/{design.name}_top.sv"]
    widths = [int(w) for w in re.findall(r"fx2fpga_srbits #\(\.SH\((\d+)\)\)", top)]
    assert widths and resources.rtl_features(design.rtl_plan())["sr_bits"] == sum(32 + w for w in widths)
    plain = _compile(md, {k: v.replace(",SR,SAT", "") for k, v in SR.items() if k != "sr_seed"})
    assert resources.rtl_features(plain.rtl_plan())["sr_bits"] == 0
