"""The op table (fx2fpga_runtime/ops.py): every backend handles every op of it.

``missing(table)`` lists each (backend, op) pair that lacks something: the emulator's exact
evaluation, the HLS spelling, the RTL spelling and unit latency, the estimate's depth, the error
bounds' float reference and rule. The table of the IR has none missing; a table with an op added
only to it has that op reported for each backend (so the check can fail). Each op then runs as a
one-stage kernel through the emulator, the HLS emitter and the RTL plan, and an elementwise op's
exact result equals its float reference where the output format holds it exactly.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from fx2fpga_runtime import ir
from fx2fpga_runtime.emulator import Emulator
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Access, Affine, Buffer, Kernel, Loop, Program, Stage
from fx2fpga_runtime.ops import (
    COMPARISONS,
    OPS_TABLE,
    OpSpec,
    compare_select_op,
    fused_comparison,
    is_compare_select,
    norm_rom_values,
)

from fx2fpga.backends.hls import emit as hls
from fx2fpga.backends.rtl import emit as verilog
from fx2fpga.passes import estimate, schedule

from .. import error_bounds


def missing(table: dict[str, OpSpec]) -> list[str]:
    """``"<backend>: <op>"`` for each op of ``table`` a backend lacks."""
    out = []
    for name, spec in table.items():
        if not callable(spec.evaluate) or (spec.result_frac is None and spec.stage_frac is None
                                           and not spec.reads_table):
            out.append(f"emulator: {name}")
        if name not in hls.HLS_SPELLING:
            out.append(f"hls: {name}")
        if name not in verilog.RTL_SPELLING:
            out.append(f"rtl: {name}")
        if not (isinstance(spec.unit_latency, int) and spec.unit_latency >= 3):
            out.append(f"rtl latency: {name}")
        if not (isinstance(spec.estimate_depth, int) and spec.estimate_depth >= 1):
            out.append(f"estimate: {name}")
        if spec.error_rule not in error_bounds.ERROR_RULES or (spec.reference is None and not spec.reads_table):
            out.append(f"error bounds: {name}")
    return out


def test_every_backend_has_every_op():
    assert missing(OPS_TABLE) == []


def test_a_new_op_only_in_the_table_is_reported_missing():
    fake = replace(OPS_TABLE["relu"], name="fake_relu")
    assert missing({**OPS_TABLE, "fake_relu": fake}) == ["hls: fake_relu", "rtl: fake_relu"]
    broken = replace(OPS_TABLE["add"], name="fake_add", evaluate=None, reference=None, error_rule="nope",
                     unit_latency=0, estimate_depth=0)
    assert missing({"fake_add": broken}) == ["emulator: fake_add", "hls: fake_add", "rtl: fake_add",
                                             "rtl latency: fake_add", "estimate: fake_add", "error bounds: fake_add"]


def test_the_fused_compare_select_ops_are_the_tables_compare_select_rows():
    fused = {n for n in OPS_TABLE if is_compare_select(n)}
    assert fused == {"eq_select", "ne_select", "lt_select", "le_select", "gt_select", "ge_select"}
    assert fused == {n for n, s in OPS_TABLE.items() if s.error_rule == "compare_select"}
    assert not any(is_compare_select(n) for n in ("select", "le", "msub", "pool_select"))
    for cmp in COMPARISONS:
        assert fused_comparison(compare_select_op(cmp)) == cmp and fused_comparison(cmp) is None


def test_ir_names_come_from_the_table():
    assert set(ir.OPS) == set(OPS_TABLE) and len(ir.OPS) == len(OPS_TABLE)
    assert set(ir.REDUCTION_OPS) == {n for n, s in OPS_TABLE.items() if s.reduction}
    assert ir.ARITY == {n: s.arity for n, s in OPS_TABLE.items()}
    assert set(verilog.RTL_OPS) == set(OPS_TABLE)
    for name, spec in OPS_TABLE.items():
        assert schedule.unit_latency(name) == spec.unit_latency
        assert estimate.PIPELINE_DEPTH[name] == spec.estimate_depth
        assert spec.reduction == bool(spec.accumulate) == bool(spec.acc_init)
    # today's values, so a change to the table is a visible change to the hardware
    assert {n: s.unit_latency for n, s in OPS_TABLE.items() if s.unit_latency != 3} == {
        "mul": 7, "msub": 9, "table": 12, "div": 12, "div_sqrt": 12, "mac": 8, "sum": 4, "max": 4, "argmax": 4}
    assert {n for n, s in OPS_TABLE.items() if s.multiplies} == {"mul", "msub", "mac"}


F = Fixed.parse


def one_stage_kernel(name: str) -> Kernel:
    """Op ``name`` over a 4x6 loop nest (a reduction over the 6), on small formats, in program ``infer``."""
    spec = OPS_TABLE[name]
    fmts = [F("fixed<8,3>"), F("fixed<7,2>"), F("fixed<6,4>"), F("fixed<5,1>")]
    bufs = [Buffer(f"x{k}", (4, 6), fmts[k], "input") for k in range(spec.arity)]
    out_fmt = F("fixed<24,12>") if not spec.accumulate == "argmax" else F("fixed<8,8>")
    out_shape = (4,) if spec.reduction else (4, 6)
    bufs.append(Buffer("o", out_shape, out_fmt, "output"))
    idx = (Affine.var("r"), Affine.var("c"))
    attrs = {}
    if spec.reads_table:
        bufs.append(Buffer("tbl", (5,), F("fixed<12,4>"), "const", "const", init=(-40, 3, 17, 90, 400)))
        attrs = {"fn": "exp", "table": "tbl", "lo": -40, "shift": 4}
    if "mid" in spec.attrs:  # wide enough for the product of fixed<7,2> and fixed<6,4>: exact
        attrs = {"mid": "fixed<20,8>"}
    if "rom" in spec.attrs:  # div, div_sqrt: an 8-bit dividend times (q + 2)-bit entries stays within 63 bits
        q, root = 20, 2 if name == "div_sqrt" else 1
        entries = tuple(int(v) for v in norm_rom_values(root, q))
        bufs.append(Buffer("rom", (len(entries),), Fixed(q + 2, q + 2, signed=False), "const", "const", init=entries))
        attrs = {"rom": "rom", "q": q}
    stage = Stage("s", name, (Loop("r", 4), Loop("c", 6)), Access("o", idx[:len(out_shape)]),
                  tuple(Access(f"x{k}", idx) for k in range(spec.arity)), reduce=("c",) if spec.reduction else (),
                  acc=F("fixed<30,14>") if spec.reduction else None, attrs=attrs)
    prog = Program("infer", [b.name for b in bufs if b.role == "input"], ["o"], [stage])
    return Kernel(f"k_{name}", {b.name: b for b in bufs}, {"infer": prog}, [])


@pytest.mark.parametrize("name", list(OPS_TABLE))
def test_each_op_runs_through_every_backend(name):
    k = one_stage_kernel(name)
    rng = np.random.default_rng(3)
    raw = {n: rng.integers(k.buffers[n].fmt.raw_min, k.buffers[n].fmt.raw_max + 1, size=(4, 6))
           for n in k.programs["infer"].inputs}
    got = Emulator(k).run("infer", raw)["o"]
    assert got.shape == k.buffers["o"].shape
    cpp = hls.generate(k, "0")[f"src/{k.name}.cpp"]
    assert "stage_s() {" in cpp
    plan = verilog.plan(k, k.name)
    assert [u["op"] for u in plan.units] == [name]
    spec = OPS_TABLE[name]
    if spec.reads_table or spec.accumulate == "argmax" or "rom" in spec.attrs:
        return  # approximations (their bounds: tests/error_bounds.py) and a position
    # the exact result, computed in float from the op's reference (exact here: few bits, a wide output)
    vals = [k.buffers[n].fmt.to_float(raw[n]) for n in k.programs["infer"].inputs]
    want = spec.reference(*vals)
    if spec.accumulate == "add":
        want = want.sum(axis=1)
    elif spec.accumulate == "max":
        want = want.max(axis=1)
    np.testing.assert_array_equal(k.buffers["o"].fmt.to_float(got), want)
