"""Cases the fuzzer found (``benchmarks/fuzz.py``, minimized with ``python -m tests.fuzz.minimize``), kept
as kernels written out by hand, so that they stay the same when the generator changes.

- ``ap_types_all_bits_below_lsb``: the Xilinx ``ap_fixed`` headers abort (``ap_private::get_bit``:
  "Attempting to read bit beyond MSB") when a value is rounded to a format whose LSB lies above every
  bit of the source but one: e.g. ``ufixed<1,-1>`` (one bit, at 2**-2) assigned to ``ufixed<1,1>`` with
  ``RND``: the rounding reads the bit at 2**-1, beyond the source's MSB. Only the C simulation on the
  ``ap_types`` headers is affected (``fastfixed``, the default where it covers the formats, and the RTL
  compute it right). Not fixed at first (it needs the HLS emitter to widen such a source before the
  conversion): an ``xfail(strict=True)`` test until session 14 (below).
- ``signed_negative_int_bits_against_unsigned`` (fuzz case 196 of that campaign): the ``ap_types`` headers, and
  ``fastfixed`` after them, compare an ``ap_fixed`` with negative integer bits against an ``ap_ufixed`` wrongly
  (``ap_fixed<31,-3>`` -0.04 ``<`` ``ap_ufixed<30,24>`` 0 is false). Fixed: comparisons cast both operands to
  a signed type that holds them (``hls.emit.common_type``).
- ``source_below_lsb_*`` (cases 194, 279, 293 of that campaign): the ``ap_types`` abort above at three more
  conversions: a stage's exact result into its output (293), ``msub``'s product into its ``mid`` (194), a
  ``max`` operand into its accumulator (279). Fixed, with the copies above: the HLS emitter widens such a
  source first (``hls.emit.reaching_type``), and the ``xfail`` is gone.
"""

from __future__ import annotations

import numpy as np
import pytest
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Access, Affine, Buffer, Kernel, Loop, Program, Stage
from fx2fpga_runtime.runner import EmuBackend, KernelRunner

from .harness import run_kernel


def compare_kernel(op: str, pairs: list[tuple[str, str]], name: str = "cmp") -> Kernel:
    """``y = op(a, b)`` on scalars into ``ufixed<1,1>``, one chain per ``(format of a, format of b)``."""
    buffers, stages = {}, []
    for n, (fa, fb) in enumerate(pairs):
        a, b = Buffer(f"c{n}_x0", (), Fixed.parse(fa), "input"), Buffer(f"c{n}_x1", (), Fixed.parse(fb), "input")
        y = Buffer(f"c{n}_s0", (), Fixed.parse("ufixed<1,1>"), "output")
        buffers |= {a.name: a, b.name: b, y.name: y}
        stages.append(Stage(y.name, op, (), Access(y.name, ()), (Access(a.name, ()), Access(b.name, ()))))
    inputs = [b for b in buffers if "_x" in b]
    return Kernel(name, buffers, {"infer": Program("infer", inputs, [b for b in buffers if "_s" in b], stages)},
                  params=[])


def copy_kernel(pairs: list[tuple[str, str]], name: str = "reg") -> Kernel:
    """``y = x`` on scalars, one chain per ``(format of x, format of y)``, side by side (named as batches are)."""
    buffers, stages = {}, []
    for n, (src, dst) in enumerate(pairs):
        x = Buffer(f"c{n}_x0", (), Fixed.parse(src), "input")
        y = Buffer(f"c{n}_s0", (), Fixed.parse(dst), "output")
        buffers |= {x.name: x, y.name: y}
        stages.append(Stage(y.name, "copy", (), Access(y.name, ()), (Access(x.name, ()),)))
    inputs = [b for b in buffers if "_x" in b]
    outputs = [b for b in buffers if "_s" in b]
    return Kernel(name, buffers, {"infer": Program("infer", inputs, outputs, stages)}, params=[])


ALL_BITS_BELOW_LSB = [("ufixed<1,-1>", "ufixed<1,1>"), ("fixed<2,-2>", "fixed<4,4,RND_CONV,SAT>"),
                      ("ufixed<2,-1>", "ufixed<3,2,RND_ZERO,WRAP>")]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim", "rtl"])
def test_all_bits_below_lsb_rounds_like_the_emulator(backend, tmp_path):
    result = run_kernel(copy_kernel(ALL_BITS_BELOW_LSB), tmp_path, (backend,), calls=4)
    assert not result.mismatches, [str(m) for m in result.mismatches]


@pytest.mark.slow
def test_all_bits_below_lsb_on_ap_types(tmp_path):
    result = run_kernel(copy_kernel(ALL_BITS_BELOW_LSB), tmp_path, ("csim-ap_types",), calls=4)
    assert not result.mismatches, [str(m) for m in result.mismatches]


def test_all_bits_below_lsb_emulator_values():
    """The emulator's (golden) values: 2**-2 rounds to 0 (ulp 1); -2**-4 to 0 (ulp 1); 3 * 2**-3, 0.75 of an
    ulp of 2**-1, up to 2**-1."""
    k = copy_kernel(ALL_BITS_BELOW_LSB)
    out = KernelRunner(k, EmuBackend(k)).call_raw("infer", {"c0_x0": np.array(1), "c1_x0": np.array(-1),
                                                            "c2_x0": np.array(3)})
    assert [int(out[f"c{n}_s0"]) for n in range(3)] == [0, 0, 1]


SIGNED_NEGATIVE_INT_VS_UNSIGNED = [("fixed<31,-3,TRN,WRAP>", "ufixed<30,24,RND_CONV,WRAP>"),
                                   ("ufixed<30,24>", "fixed<31,-3>"), ("fixed<8,-2>", "ufixed<4,4>")]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim", "csim-ap_types", "rtl"])
@pytest.mark.parametrize("op", ["lt", "ge", "eq"])
def test_signed_negative_int_bits_against_unsigned_compares_like_the_emulator(op, backend, tmp_path):
    k = compare_kernel(op, SIGNED_NEGATIVE_INT_VS_UNSIGNED)
    vectors = [{"c0_x0": np.array(-729689102), "c0_x1": np.array(0), "c1_x0": np.array(0), "c1_x1": np.array(-1),
                "c2_x0": np.array(-1), "c2_x1": np.array(0)}]
    want = KernelRunner(k, EmuBackend(k)).call_raw("infer", vectors[0])
    assert [int(want[f"c{n}_s0"]) for n in range(3)] == {"lt": [1, 0, 1], "ge": [0, 1, 0], "eq": [0, 0, 0]}[op]
    result = run_kernel(k, tmp_path, (backend,), vectors=vectors)
    assert not result.mismatches, [str(m) for m in result.mismatches]


def _vector_kernel(op: str, ins: list[str], out: str, attrs: dict | None = None, acc: str | None = None) -> Kernel:
    """One stage over ``i`` in 0..4: ``s0[i] = op(x0[i], x1[i], ...)``, or with ``acc`` ``s0 = op over i``."""
    n = 5
    bufs = [Buffer(f"c0_x{k}", (n,), Fixed.parse(f), "input") for k, f in enumerate(ins)]
    y = Buffer("c0_s0", () if acc else (n,), Fixed.parse(out), "output")
    i = Affine.var("i")
    stage = Stage("c0_s0", op, (Loop("i", n),), Access("c0_s0", () if acc else (i,)),
                  tuple(Access(b.name, (i,)) for b in bufs), reduce=("i",) if acc else (),
                  acc=Fixed.parse(acc) if acc else None, attrs=attrs or {})
    buffers = {b.name: b for b in [*bufs, y]}
    return Kernel("below", buffers, {"infer": Program("infer", [b.name for b in bufs], [y.name], [stage])},
                  params=[])


SOURCE_BELOW_LSB = {
    "max_operand_into_acc": _vector_kernel("max", ["fixed<13,-3,RND,WRAP>"], "fixed<11,13,RND_ZERO,SAT>",
                                           acc="fixed<3,1,RND_CONV,SAT>"),
    "msub_product_into_mid": _vector_kernel("msub", ["fixed<2,-2>", "fixed<6,1,TRN_ZERO,SAT>",
                                                     "fixed<6,1,TRN_ZERO,SAT>"], "ufixed<15,10,RND_CONV,WRAP>",
                                            attrs={"mid": "fixed<37,40,TRN_ZERO,WRAP>"}),
    "result_into_output": _vector_kernel("mul", ["fixed<4,-6>", "fixed<4,-6>"], "fixed<8,8,RND,SAT>"),
}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim-ap_types", "csim", "rtl"])
@pytest.mark.parametrize("case", sorted(SOURCE_BELOW_LSB))
def test_source_below_lsb_converts_like_the_emulator(case, backend, tmp_path):
    result = run_kernel(SOURCE_BELOW_LSB[case], tmp_path, (backend,), calls=3)
    assert not result.mismatches, [str(m) for m in result.mismatches]
