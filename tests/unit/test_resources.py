"""The RTL resource model (fx2fpga/passes/resources.py): its bank mapping, its features of a hand-checked
kernel, and its prediction against the Yosys counts the calibration stored (benchmarks/results/
resource_model.json), without running Yosys."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fx2fpga.passes import resources
from fx2fpga.targets import load_target

ROOT = Path(__file__).resolve().parents[2]
MEASURED = json.loads((ROOT / "benchmarks" / "results" / "resource_model.json").read_text())


def _calibration_script():
    spec = importlib.util.spec_from_file_location("calibrate_resources", ROOT / "benchmarks" / "calibrate_resources.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)  # its dataclasses look their module up
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


@pytest.fixture(scope="module")
def linear_plan():
    """The calibration design linear16x8_relu_l1 (Linear(16, 8) + ReLU, batch 4, one lane), planned."""
    import fx2fpga

    cal = _calibration_script()
    d = next(x for x in cal.DESIGNS if x.name == "linear16x8_relu_l1")
    model, inputs, train = d.make()
    design = fx2fpga.compile(model, inputs, target=cal.TARGET, train=train, lanes=d.lanes, outputs="rtl",
                             name=d.name)
    return design.rtl_plan()


def test_bank_mapping_follows_yosys_rules():
    """LUT-RAM up to 64 words (RAM32M: 32 x 6, RAM64M: 64 x 3, 4 LUTs each), block RAM deeper, the cheaper of
    RAMB18s and RAMB36s; small ROMs stay logic."""
    assert resources.bank_mapping(64, 16, False) == resources.BankMapping("lutram", luts=4 * 6)
    assert resources.bank_mapping(32, 16, False) == resources.BankMapping("lutram", luts=4 * 3)
    assert resources.bank_mapping(1, 24, False) == resources.BankMapping("lutram", luts=4 * 4)  # depth 2
    assert resources.bank_mapping(128, 24, False) == resources.BankMapping("bram", bram36=0.5)
    assert resources.bram36_for(512, 36) == 0.5  # one RAMB18 in SDP mode: 512 x 36
    assert resources.bram36_for(1024, 36) == 1.0  # two RAMB18s or one RAMB36
    assert resources.bram36_for(2048, 16) == 1.0  # 2048 x 9 per RAMB18: two
    assert resources.bram36_for(4096, 16) == 2.0  # 4096 x 9 per RAMB36: two
    assert resources.bank_mapping(4, 3, True).kind == "logic"
    assert resources.bank_mapping(1024, 16, True) == resources.BankMapping("bram", bram36=0.5)
    # function tables (two reads a cycle: true dual-port shapes) in block RAM up to one BRAM36, else logic
    assert resources.table_mapping(711, 16).bram36 == 0.5  # a RAMB18 as 1K x 18
    assert resources.table_mapping(1025, 16).bram36 == 1.0  # a RAMB36 as 2K x 18
    assert resources.table_mapping(534, 24).bram36 == 1.0  # a RAMB36 as 1K x 36
    assert resources.table_mapping(4097, 16).kind == "logic"  # 8K x 4: four RAMB36s


def test_features_of_a_hand_checked_kernel(linear_plan):
    """Linear(16, 8) + ReLU at one lane: one mac unit, its ReLU fused into its output conversion (passes/fuse.py),
    four one-bank memories; the 128 x 24-bit weight bank in one RAMB18, the others LUT-RAM: bias 8 x 24 (4 RAM32M),
    input 64 x 16 (6 RAM64M), the output's 32 x 16 (3 RAM32M): 4 x (4 + 6 + 3) = 52 LUTs; the ReLU's select, one
    per output bit."""
    p = linear_plan
    assert [(u["op"], u["lanes"], u["relu"]) for u in p.units] == [("mac", 1, True)]
    assert sorted((m["name"], m["banks"], m["depth"], m["width"]) for m in p.memories) == [
        ("b_0_bias", 1, 8, 24), ("b_0_weight", 1, 128, 24), ("infer_input", 1, 64, 16),
        ("infer_output", 1, 32, 16)]
    f = resources.rtl_features(p)
    assert f["lutram_luts"] == 52 and f["bram36"] == 0.5 and f["rom_bits"] == 0
    unfused = dict(p.units[0], relu=False)
    assert f["select_bits"] - resources.rtl_features(replace(p, units=[unfused]))["select_bits"] == 16
    assert f["dsp"] == p.dsp_blocks == 1
    assert set(resources.LUT_FEATURES) | set(resources.FF_FEATURES) <= set(f)


def test_prediction_within_the_stated_error_of_the_measured_counts(linear_plan):
    """The cost file loads, and its prediction for a calibration design is within the fit's stated maximum
    error of the Yosys counts the calibration measured (and exact for DSP and BRAM)."""
    costs = resources.load_costs()
    assert costs["designs"] == [r["name"] for r in MEASURED["designs"]] and costs["yosys"] == MEASURED["yosys"]
    row = next(r for r in MEASURED["designs"] if r["name"] == "linear16x8_relu_l1")
    assert resources.rtl_features(linear_plan) == pytest.approx(row["features"])
    pred = resources.rtl_resources(linear_plan, load_target("pynq-z1"))
    assert (pred.lut, pred.ff, pred.dsp, pred.bram36) == tuple(row["model"][k] for k in ("lut", "ff", "dsp", "bram36"))
    for res in ("lut", "ff"):
        err = abs(getattr(pred, res) - row["yosys"][res]) / row["yosys"][res]
        assert err <= costs["errors"][res]["fit"]["max"] + 1e-4
    assert pred.dsp == row["yosys"]["dsp"] and pred.bram36 == row["yosys"]["bram36"]


def test_dsp_is_exact_and_the_stated_errors_are_the_measured_ones():
    """Every calibration design: the model's DSP count is RtlPlan.dsp_blocks and equals Yosys'; the errors in the
    cost file are recomputed from the stored rows (so the docs' numbers are the data's)."""
    for r in MEASURED["designs"]:
        assert r["model"]["dsp"] == r["dsp_blocks"] == r["yosys"]["dsp"], r["name"]
    costs = resources.load_costs()
    for res in ("lut", "ff"):
        rel = [abs(r["model"][res] - r["yosys"][res]) / r["yosys"][res] for r in MEASURED["designs"]]
        assert max(rel) == pytest.approx(costs["errors"][res]["fit"]["max"], abs=1e-4)
        loo = [abs(r["leave_one_out"][res] - r["yosys"][res]) / r["yosys"][res] for r in MEASURED["designs"]]
        assert math.fsum(loo) / len(loo) == pytest.approx(costs["errors"][res]["leave_one_out"]["mean"], abs=1e-4)


def test_other_families_are_refused():
    with pytest.raises(Exception, match="xc7"):
        resources.rtl_resources(None, load_target("ulx3s"))


def test_a_bank_deeper_than_one_block_ram_is_block_rams_in_depth():
    """30 MLPs' first-layer weights in one bank: 61,440 x 24 bits is 45 RAMB36 of 4096 x 9 (3 wide, 15 deep),
    not LUT-RAM (the cheapest mapping of a bank no single block RAM holds)."""
    from fx2fpga.passes.resources import bank_mapping, bram36_for

    assert bram36_for(61440, 24) == 45.0
    assert bank_mapping(61440, 24, read_only=False) == resources.BankMapping("bram", bram36=45.0)
    assert bram36_for(32768, 1) == 1.0 and bram36_for(32769, 1) == 2.0


def test_the_allowance_keeps_the_margin_where_the_model_has_its_error():
    """A point may fill the pynq-z1's DSP blocks (the plan counts them exactly) and 98% of its block RAM (within 1.8%
    of Yosys), but only 85% of its LUTs and flip-flops (the fitted model's margin): the load is the largest share of
    an allowance, and the resources over theirs are named against the board's."""
    t = load_target("pynq-z1")
    assert resources.allowance(t) == pytest.approx({"lut": 45_220, "ff": 90_440, "dsp": 220, "bram36": 137.2})
    full_dsp = resources.PredictedResources(lut=40_000, ff=60_000, dsp=220, bram36=130)
    assert full_dsp.load(t) == pytest.approx(1.0) and not full_dsp.over_allowance(t)
    assert max(full_dsp.shares(t).values()) == 1.0  # (85% of each resource refused it before session 26)
    lut_over = replace(full_dsp, lut=46_000, dsp=100)
    assert lut_over.load(t) == pytest.approx(46_000 / 45_220) and lut_over.over_allowance(t) == [("LUT", 46_000,
                                                                                                   53_200)]
    assert replace(full_dsp, bram36=138).over_allowance(t) == [("BRAM36", 138, 140)]


# ----- idle block RAM takes LUT-RAM banks (resources.balance_block_ram, assign_block_ram) -----------------------

def _balance_bank_by_bank(used, candidates, target):
    """The reference: one bank at a time, best LUTs per BRAM36 first, while the largest share of the LUT, FF and
    BRAM36 allowances falls and the logic's share is above BLOCK_RAM_FROM; stop at the first bank that would not
    lower it."""
    lut, ff, bram = used["lut"], used["ff"], used["bram36"]
    cap = resources.allowance(target)
    moved = {}
    for c in sorted(candidates, key=lambda c: (-c.lut / c.bram36, c.name)):
        for _ in range(c.banks):
            before = max(lut / cap["lut"], ff / cap["ff"], bram / cap["bram36"])
            after = max((lut - c.lut) / cap["lut"], (ff - c.ff) / cap["ff"], (bram + c.bram36) / cap["bram36"])
            if after >= before or max(lut / cap["lut"], ff / cap["ff"]) <= resources.BLOCK_RAM_FROM:
                return moved, (lut, ff, bram)
            lut, ff, bram = lut - c.lut, ff - c.ff, bram + c.bram36
            moved[c.name] = moved.get(c.name, 0) + 1
    return moved, (lut, ff, bram)


candidate_lists = st.lists(
    st.builds(resources.BlockRamCandidate, name=st.sampled_from("abcdefgh"), banks=st.integers(1, 80),
              lut=st.floats(1, 200), ff=st.floats(0.5, 60), bram36=st.sampled_from([0.5, 1.0, 1.5])),
    max_size=6, unique_by=lambda c: c.name)


@settings(max_examples=300, deadline=None)
@given(candidates=candidate_lists, lut=st.floats(0, 70_000), ff=st.floats(0, 120_000), bram=st.floats(0, 150))
def test_balance_moves_banks_exactly_while_the_largest_share_falls(candidates, lut, ff, bram):
    """The closed form per memory equals moving one bank at a time while the largest of the LUT, FF and BRAM36
    allowances' shares falls and the logic's is above half its allowance (every bank saves some LUTs and
    flip-flops: its LUT-RAM and its read register); the totals it returns are those of the moves."""
    target = load_target("pynq-z1")
    used = {"lut": lut, "ff": ff, "bram36": bram, "dsp": 7.0}
    moved, after = resources.balance_block_ram(used, candidates, target)
    want, totals = _balance_bank_by_bank(used, candidates, target)
    assert moved == want
    assert (after["lut"], after["ff"], after["bram36"]) == pytest.approx(totals) and after["dsp"] == 7.0
    by_name = {c.name: c for c in candidates}
    assert after["bram36"] == pytest.approx(bram + sum(k * by_name[n].bram36 for n, k in moved.items()))
