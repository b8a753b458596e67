"""The emulator's compiled stages (``emu_compile.py``) against the reference ``run_stage``, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from fx2fpga_runtime.emu_compile import compile_stage
from fx2fpga_runtime.emulator import Emulator
from fx2fpga_runtime.fixed import ROUNDING_MODES, Fixed
from fx2fpga_runtime.ir import Access, Affine, Buffer, Guard, Kernel, Loop, Program, Stage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..conftest import load_example
from ..feature.test_conv import _guard_kernel
from ..feature.test_hls_csim import random_raw, sgd_kernel, zoo_kernel


def _v(name: str) -> Affine:
    return Affine.var(name)


def assert_fast_equals_reference(kernel: Kernel, steps: list[tuple[str, dict]]) -> None:
    """Run the same programs on a fast and a reference emulator; every memory and saturation count equal after
    each."""
    fast, ref = Emulator(kernel), Emulator(kernel, fast=False)
    for program, inputs in steps:
        got, want = fast.run(program, inputs), ref.run(program, inputs)
        for name in want:
            assert np.array_equal(got[name], want[name]), (program, name)
        for name in ref.mem:
            assert np.array_equal(fast.mem[name], ref.mem[name]), (program, name)
        assert fast.read_saturation() == ref.read_saturation(), program


def compiled_count(kernel: Kernel, program: str) -> int:
    return sum(compile_stage(s, kernel) is not None for s in kernel.programs[program].stages)


# ----- the kernels of the test suite ---------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zoo_kernel_every_op(seed):
    k = zoo_kernel()
    rng = np.random.default_rng(seed)
    prog = k.programs["infer"]
    assert_fast_equals_reference(k, [("infer", random_raw(k, prog.inputs, rng))])
    assert compiled_count(k, "infer") > len(prog.stages) // 2  # most stages take the fast path


def test_sgd_kernel_updates_in_place_over_steps():
    k = sgd_kernel()
    rng = np.random.default_rng(3)
    inputs = k.programs["train_step"].inputs
    assert_fast_equals_reference(k, [("train_step", random_raw(k, inputs, rng)) for _ in range(5)])


def test_guarded_reads_argmax_and_strided_transposed_reads():
    k = _guard_kernel()
    rng = np.random.default_rng(4)
    for program in k.programs.values():
        assert_fast_equals_reference(k, [(program.name, random_raw(k, program.inputs, rng))])


@pytest.mark.parametrize("example", ["mlp_digits", "cnn_digits"])
def test_digits_training_steps(example, digits_data):
    import fx2fpga

    ex = load_example(example)
    design = fx2fpga.compile(ex.model, ex.example_inputs, train=fx2fpga.SGD(ex.loss_fn, ex.example_targets, ex.lr),
                             outputs="hls")
    runner = design.load("emu")
    prep = getattr(ex, "images", lambda x: x)
    xs, ys = digits_data[0], digits_data[1]
    batch = ex.example_inputs[0].shape[0]
    steps = [("train_step", runner._quantize_inputs("train_step", (prep(xs[i:i + batch]), ys[i:i + batch])))
             for i in range(0, 4 * batch, batch)]
    steps.append(("infer", runner._quantize_inputs("infer", (prep(xs[:batch]),))))
    assert_fast_equals_reference(design.kernel, steps)
    prog = design.kernel.programs["train_step"]
    assert compiled_count(design.kernel, "train_step") == len(prog.stages)


# ----- generated formats and values ------------------------------------------------------------------------

@st.composite
def fixed_formats(draw, max_width: int = 20) -> Fixed:
    width = draw(st.integers(2, max_width))
    return Fixed(width, draw(st.integers(-3, width + 3)), draw(st.booleans()),
                 draw(st.sampled_from(ROUNDING_MODES)), draw(st.sampled_from(("SAT", "WRAP"))))


def _values(fmt: Fixed, shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.integers(fmt.raw_min, fmt.raw_max + 1, size=shape, dtype=np.int64)
    raw.reshape(-1)[:2] = (fmt.raw_min, fmt.raw_max)[:raw.size]
    return raw


def _run_one(stage: Stage, buffers: list[Buffer], seed: int) -> None:
    k = Kernel("t", {b.name: b for b in buffers}, {"infer": Program("infer", [], [stage.out.buffer], [stage])}, [])
    inputs = {b.name: _values(b.fmt, b.shape, seed + i) for i, b in enumerate(buffers) if b.role == "input"}
    assert_fast_equals_reference(k, [("infer", inputs)])


_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(fa=fixed_formats(), fb=fixed_formats(), facc=fixed_formats(max_width=44), fo=fixed_formats(),
       init=st.booleans(), padded=st.booleans(), transposed=st.booleans(), seed=st.integers(0, 2**16))
def test_mac_stages(fa, fb, facc, fo, init, padded, transposed, seed):
    """Exact (matrix product) and rounding or overflowing (reference) accumulations; padded reads."""
    m, n, k = 3, 4, 5
    col = Affine((("k", 1),), -1)  # a[i][k - 1], guarded: the first point is padding
    a_read = Access("a", (_v("i"), col), (Guard(col, k),)) if padded else Access("a", (_v("i"), _v("k")))
    b_read = Access("b", (_v("j"), _v("k"))) if transposed else Access("b", (_v("k"), _v("j")))
    bufs = [Buffer("a", (m, k), fa, "input"), Buffer("b", (n, k) if transposed else (k, n), fb, "input"),
            Buffer("c", (n,), fb, "input"), Buffer("o", (m, n), fo, "output")]
    ins = (a_read, b_read) + ((Access("c", (_v("j"),)),) if init else ())
    stage = Stage("s", "mac", (Loop("i", m), Loop("j", n), Loop("k", k)), Access("o", (_v("i"), _v("j"))), ins,
                  reduce=("k",), acc=facc)
    _run_one(stage, bufs, seed)


@_SETTINGS
@given(fa=fixed_formats(), facc=fixed_formats(max_width=30), fo=fixed_formats(), init=st.booleans(),
       op=st.sampled_from(("sum", "max", "argmax")), seed=st.integers(0, 2**16))
def test_sum_and_max_stages(fa, facc, fo, init, op, seed):
    """Reductions over two loops (kept in the middle), with an init input for ``sum``."""
    bufs = [Buffer("a", (3, 4, 5), fa, "input"), Buffer("c", (4,), fa, "input"),
            Buffer("o", (4,), Fixed(8, 8) if op == "argmax" else fo, "output")]
    ins = (Access("a", (_v("r"), _v("j"), _v("s"))),) + ((Access("c", (_v("j"),)),) if init and op == "sum" else ())
    stage = Stage("s", op, (Loop("r", 3), Loop("j", 4), Loop("s", 5)), Access("o", (_v("j"),)), ins,
                  reduce=("r", "s"), acc=facc)
    _run_one(stage, bufs, seed)


@_SETTINGS
@given(fa=fixed_formats(), facc=fixed_formats(max_width=30), fo=fixed_formats(), stride=st.sampled_from((1, 2)),
       op=st.sampled_from(("sum", "max")), seed=st.integers(0, 2**16))
def test_guarded_window_reductions(fa, facc, fo, stride, op, seed):
    """Window reductions as pooling's backward writes them: o[j][h] sums a[j][(h - k) / stride][k] over k where
    h - k is in range and a multiple of ``stride`` (stride 2: one point per output, a scatter; stride 1: up to
    two, added); and 2-point maxima, as its forward takes them."""
    rows, win = 3, 2
    expr = Affine((("h", 1), ("k", -1)))
    read = Access("a", (_v("j"), Affine((("h", 1), ("k", -1)), 0, stride), _v("k")), (Guard(expr, rows * stride,
                                                                                         stride),))
    if op == "max":
        read = Access("a", (_v("j"), Affine((("h", 1),), 0, 1), _v("k")))  # (no guard: a plain 2-point window)
    h = rows * stride if op == "sum" else rows
    bufs = [Buffer("a", (4, rows, win), fa, "input"), Buffer("o", (4, h), fo, "output")]
    stage = Stage("s", op, (Loop("j", 4), Loop("h", h), Loop("k", win)), Access("o", (_v("j"), _v("h"))), (read,),
                  reduce=("k",), acc=facc)
    _run_one(stage, bufs, seed)


_ELEMENTWISE = ("copy", "neg", "relu", "abs", "add", "sub", "mul", "select", "eq", "lt", "ge", "msub")


@_SETTINGS
@given(op=st.sampled_from(_ELEMENTWISE), fmts=st.lists(fixed_formats(), min_size=3, max_size=3),
       fo=fixed_formats(), fmid=fixed_formats(), reads=st.lists(st.sampled_from(("same", "transposed", "row",
                                                                                    "scalar", "padded")),
                                                                  min_size=3, max_size=3),
       seed=st.integers(0, 2**16))
def test_elementwise_stages(op, fmts, fo, fmid, reads, seed):
    """Every elementwise op on plain, transposed, broadcast, scalar and guarded reads."""
    shifted = Affine((("j", 1),), 1)
    access = {
        "same": lambda b: Access(b, (_v("i"), _v("j"))),
        "transposed": lambda b: Access(b, (_v("j"), _v("i"))),
        "row": lambda b: Access(b, (Affine(), _v("j"))),
        "scalar": lambda b: Access(b + "s", ()),
        "padded": lambda b: Access(b, (_v("i"), shifted), (Guard(shifted, 4),)),
    }
    names = ["x", "y", "z"]
    bufs = [Buffer(nm, (4, 4), f, "input") for nm, f in zip(names, fmts, strict=True)]
    bufs += [Buffer(nm + "s", (), f, "input") for nm, f in zip(names, fmts, strict=True)]
    bufs.append(Buffer("o", (4, 4), fo, "output"))
    arity = 3 if op in ("select", "msub") else 2 if op in ("add", "sub", "mul", "eq", "lt", "ge") else 1
    ins = tuple(access[r](nm) for r, nm in zip(reads[:arity], names[:arity], strict=True))
    stage = Stage("s", op, (Loop("i", 4), Loop("j", 4)), Access("o", (_v("i"), _v("j"))), ins,
                  attrs={"mid": str(fmid)} if op == "msub" else {})
    _run_one(stage, bufs, seed)


def test_scattered_and_scalar_outputs():
    """A non-injective write (later points win) and a scalar output written by a loop."""
    f = Fixed(10, 4)
    bufs = [Buffer("a", (4, 4), f, "input"), Buffer("o", (4,), f, "output"), Buffer("s", (), f, "output")]
    scatter = Stage("s", "neg", (Loop("i", 4), Loop("j", 4)), Access("o", (_v("j"),)),
                    (Access("a", (_v("i"), _v("j"))),))
    last = Stage("t", "copy", (Loop("i", 4), Loop("j", 4)), Access("s", ()), (Access("a", (_v("j"), _v("i"))),))
    for stage in (scatter, last):
        _run_one(stage, bufs, 5)


# ----- which path a stage takes ------------------------------------------------------------------------------

def _mac(acc: str) -> tuple[Stage, Kernel]:
    f = Fixed(10, 4)
    bufs = {"a": Buffer("a", (2, 8), f), "b": Buffer("b", (8, 3), f), "o": Buffer("o", (2, 3), f)}
    stage = Stage("s", "mac", (Loop("i", 2), Loop("j", 3), Loop("k", 8)), Access("o", (_v("i"), _v("j"))),
                  (Access("a", (_v("i"), _v("k"))), Access("b", (_v("k"), _v("j")))), reduce=("k",),
                  acc=Fixed.parse(acc))
    return stage, Kernel("t", bufs, {"infer": Program("infer", [], ["o"], [stage])}, [])


@pytest.mark.parametrize("acc, fast", [
    ("fixed<32,16>", True),  # 12 frac bits of the terms fit, 8 * 2**18 cannot overflow
    ("fixed<20,10>", False),  # may overflow: the reference's sequential saturation
    ("fixed<30,20>", False),  # 10 frac bits < 12: every term rounds
])
def test_mac_takes_the_matrix_product_only_when_exact(acc, fast):
    stage, kernel = _mac(acc)
    assert (compile_stage(stage, kernel) is not None) == fast


@_SETTINGS
@given(op=st.sampled_from(_ELEMENTWISE), fmts=st.lists(fixed_formats(), min_size=3, max_size=3),
       fo=fixed_formats(), fmid=fixed_formats(), seed=st.integers(0, 2**16))
def test_stages_without_loops(op, fmts, fo, fmid, seed):
    """A stage of scalars (no loops: a loss times a constant): its values are 0-d, not arrays, on the way."""
    names = ["x", "y", "z"]
    bufs = [Buffer(nm, (), f, "input") for nm, f in zip(names, fmts, strict=True)] + [Buffer("o", (), fo, "output")]
    arity = 3 if op in ("select", "msub") else 2 if op in ("add", "sub", "mul", "eq", "lt", "ge") else 1
    stage = Stage("s", op, (), Access("o", ()), tuple(Access(nm, ()) for nm in names[:arity]),
                  attrs={"mid": str(fmid)} if op == "msub" else {})
    _run_one(stage, bufs, seed)
