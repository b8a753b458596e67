"""HLS C++ codegen and the csim backend: g++-compiled C++ must equal the emulator bit for bit.

The kernels are built by hand with the IR classes (no torch): ``zoo`` has one stage or more for
every op, rounding and overflow mode, lanes that do and do not divide their loop, reductions
with and without init; ``sgd`` keeps parameters on chip and updates them in place.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from fx2fpga_runtime import csim, interface
from fx2fpga_runtime.csim import CXX_FLAGS, CsimBackend, ap_types_dir
from fx2fpga_runtime.fixed import BOOL, Fixed
from fx2fpga_runtime.ir import OPS, Access, Affine, Buffer, Guard, Kernel, Loop, Program, Stage
from fx2fpga_runtime.ops import norm_rom_values
from fx2fpga_runtime.runner import EmuBackend, KernelRunner
from fx2fpga_runtime.toolchain import cache_dir, require_tool

from fx2fpga.backends.hls import emit as hls

VERSION = "0.1.0-test"


def acc(buffer: str, *index) -> Access:
    """``acc("a", "i", "j")`` is ``a[i][j]``; an index may also be an ``Affine``."""
    return Access(buffer, tuple(Affine.var(i) if isinstance(i, str) else i for i in index))


def F(spec: str) -> Fixed:
    return Fixed.parse(spec)


def zoo_kernel() -> Kernel:
    """Every op of the IR over small formats (so that comparisons hit equal values)."""
    bufs = [
        Buffer("a", (4, 8), F("fixed<8,3>"), "input"),
        Buffer("b", (4, 8), F("ufixed<7,2>"), "input"),
        Buffer("p", (4, 8), F("fixed<4,2>"), "input"),
        Buffer("q", (4, 8), F("ufixed<3,1>"), "input"),
        Buffer("cond", (4, 8), BOOL, "input"),
        Buffer("u", (8,), F("ufixed<10,4>"), "input"),
        Buffer("m", (8, 5), F("fixed<8,2>"), "input"),
        Buffer("bias", (5,), F("fixed<8,4>"), "input"),
        Buffer("j", (), F("fixed<8,4>"), "input"),
        Buffer("wa", (4, 8), F("fixed<30,8>"), "input"),
        Buffer("wb", (8, 5), F("ufixed<28,6>"), "input"),  # clashes with the loop variable j: renamed in C++
        Buffer("tbl", (9,), F("fixed<12,4>"), "const", init=(-2048, -1500, -700, 0, 300, -301, 1200, 2047, 1000)),
    ]
    stages: list[Stage] = []
    _zoo_elementwise(bufs, stages)
    _zoo_reductions(bufs, stages)
    buffers = {buf.name: buf for buf in bufs}
    inputs = [buf.name for buf in bufs if buf.role == "input"]
    outputs = [buf.name for buf in bufs if buf.role == "output"]
    return Kernel("zoo", buffers, {"infer": Program("infer", inputs, outputs, stages)}, params=[])


def _zoo_elementwise(bufs: list[Buffer], stages: list[Stage]) -> None:
    """The zoo's elementwise stages (every rounding and overflow mode, comparisons, selects, tables, padding)."""
    ij = (Loop("i", 4), Loop("j", 8))

    def ew(name, op, out_fmt, ins, lanes=1, lane_var=None, out_index=("i", "j"), loops=ij, **kw):
        bufs.append(Buffer(name, tuple(lp.extent for lp in loops if lp.var in out_index), out_fmt, "output"))
        stages.append(Stage(name, op, loops, acc(name, *out_index), ins, lanes=lanes, lane_var=lane_var,
                            origin=f"aten.{op}", source=f"zoo.py:{len(stages) + 1}", **kw))

    A, B, P, Q = (acc(n, "i", "j") for n in "abpq")
    ew("o_copy", "copy", F("fixed<6,2,TRN,SAT>"), (A,))
    ew("o_perm", "copy", F("fixed<8,3>"), (acc("a", Affine((("i", 1),), 3, 1, 4), Affine((("j", 1),), 0, 2)),))
    ew("o_neg", "neg", F("fixed<8,3,RND,WRAP>"), (B,))
    ew("o_neg_w", "neg", F("fixed<8,3,RND,WRAP>"), (A,))  # -min wraps to min
    ew("o_coarse", "copy", F("fixed<6,8,RND_CONV,SAT>"), (A,))  # int_bits > width: ulp 4
    ew("o_fine", "mul", F("fixed<8,-1,TRN,WRAP>"), (A, B))  # int_bits < 0: 9 fractional bits
    ew("o_neg_u", "neg", F("ufixed<6,3,RND_CONV,SAT>"), (A,))
    ew("o_relu", "relu", F("ufixed<5,2,RND_CONV,SAT>"), (A,), lanes=2, lane_var="j")
    ew("o_relu_w", "relu", F("fixed<5,1,TRN,WRAP>"), (A,))
    ew("o_abs", "abs", F("fixed<8,3>"), (A,), lanes=3, lane_var="j")  # |min| saturates to max
    ew("o_abs_w", "abs", F("fixed<8,3,RND,WRAP>"), (A,))  # |min| wraps to min
    ew("o_abs_u", "abs", F("ufixed<6,2,TRN,SAT>"), (B,))
    ew("o_add", "add", F("fixed<9,3,RND_ZERO,WRAP>"), (A, B), lanes=3, lane_var="j")
    ew("o_add_bc", "add", F("fixed<10,4,RND,SAT>"), (A, acc("u", "j")))
    ew("o_sub", "sub", F("fixed<10,4,TRN_ZERO,SAT>"), (B, A), lanes=4, lane_var="j")
    ew("o_mul_s", "mul", F("fixed<10,4,RND,SAT>"), (A, acc("j")))
    ew("o_scalar", "mul", F("fixed<6,3,TRN,WRAP>"), (acc("j"), acc("j")), out_index=(), loops=())  # no loops
    for mode in ("RND", "TRN", "RND_ZERO", "RND_CONV", "TRN_ZERO"):
        ew(f"o_mul_{mode.lower()}", "mul", F(f"fixed<7,2,{mode},SAT>"), (A, B))
        ew(f"o_mul_{mode.lower()}_w", "mul", F(f"fixed<6,1,{mode},WRAP>"), (A, B))
    ew("o_mul_u", "mul", F("ufixed<8,3,RND,SAT>"), (A, B), lanes=3, lane_var="i")
    # the fused update a - [b * c]: the product rounds (and saturates, or wraps) to mid, then the exact difference
    ew("o_msub", "msub", F("fixed<9,4,RND,SAT>"), (A, B, acc("j")), attrs={"mid": "fixed<6,2,RND_CONV,SAT>"},
       lanes=2, lane_var="j")
    ew("o_msub_w", "msub", F("fixed<7,3,TRN,WRAP>"), (P, A, B), attrs={"mid": "ufixed<5,1,TRN_ZERO,WRAP>"})
    for op in ("eq", "ne", "lt", "le", "gt", "ge"):
        ew(f"o_{op}", op, BOOL, (P, Q) if op in ("eq", "lt", "gt") else (Q, P))
    ew("o_lt_fx", "lt", F("fixed<4,2>"), (A, P))
    ew("o_sel", "select", F("fixed<7,2,RND,SAT>"), (acc("cond", "i", "j"), A, B), lanes=5, lane_var="j")
    ew("o_sel_cmp", "select", F("fixed<5,2,TRN,WRAP>"), (acc("o_lt", "i", "j"), P, B))
    # a comparison fused with its select (passes/fuse.py): operands of four formats, one a constant-like column
    for k, op in enumerate(("eq", "ne", "lt", "le", "gt", "ge")):
        x, y = (A, acc("u", "j")) if k % 2 else (P, B)
        ew(f"o_{op}_sel", f"{op}_select", F(("fixed<7,2,RND,SAT>", "fixed<5,1,TRN,WRAP>")[k % 2]),
           (Q, P, x, y) if op in ("eq", "ne") else (A, B, x, y), lanes=(1, 3)[k % 2], lane_var="j")
    ew("o_tab", "table", F("fixed<8,2,RND,SAT>"), (A,), attrs={"fn": "f", "table": "tbl", "lo": -40, "shift": 3})
    ew("o_tab_w", "table", F("fixed<7,1,TRN,WRAP>"), (A,), attrs={"fn": "g", "table": "tbl", "lo": -100, "shift": 4},
       lanes=3, lane_var="j")
    ew("o_tab_x", "table", F("fixed<12,4>"), (A,), attrs={"table": "tbl", "lo": -120, "shift": 4})  # table's frac
    ew("o_tab_u", "table", F("ufixed<6,2,RND_CONV,SAT>"), (B,), attrs={"table": "tbl", "lo": 5, "shift": 2})
    # guarded reads (padding): a[i-1][j+2] where 1 <= i and j < 6, else 0
    shifted = (Affine((("i", 1),), -1), Affine((("j", 1),), 2))
    pad = Access("a", shifted, (Guard(shifted[0], 4), Guard(shifted[1], 8)))
    ew("o_pad", "add", F("fixed<9,3>"), (pad, B), lanes=3, lane_var="j")
    ew("o_pad_abs", "abs", F("fixed<7,2,RND_CONV,SAT>"), (pad,))
    ew("o_pad_tab", "table", F("fixed<8,2,RND,SAT>"), (pad,), attrs={"table": "tbl", "lo": -40, "shift": 3})
    _zoo_divisions(ew, bufs)


def _zoo_rom(bufs: list[Buffer], op: str, q: int) -> dict:
    """The attrs of a ``div``/``div_sqrt`` stage whose ROM has ``q`` frac bits (quantize builds them in real kernels;
    here by hand, one const buffer per op and q)."""
    name = f"rom_{op}_q{q}"
    if all(buf.name != name for buf in bufs):
        entries = tuple(int(v) for v in norm_rom_values(2 if op == "div_sqrt" else 1, q))
        bufs.append(Buffer(name, (len(entries),), Fixed(q + 2, q + 2, signed=False), "const", "const", init=entries))
    return {"rom": name, "q": q}


def _zoo_divisions(ew, bufs: list[Buffer]) -> None:
    """a / b and a / sqrt(b): odd (b, 5) and even (p, 2; wb, 22) divisor frac bits, divisors 0 and negative (read as
    one ulp), negative dividends, saturating and wrapping outputs, a product wider than one DSP block (wa: 30 bits)."""
    A, B, P = (acc(n, "i", "j") for n in "abp")
    wa, wb = acc("wa", "i", "j"), acc("wb", "j", "i")
    ew("o_div", "div", F("fixed<10,5,RND,SAT>"), (A, B), attrs=_zoo_rom(bufs, "div", 16))
    ew("o_div_w", "div", F("fixed<8,3,TRN,WRAP>"), (B, P), attrs=_zoo_rom(bufs, "div", 16), lanes=3, lane_var="j")
    ew("o_div_wide", "div", F("fixed<32,12,RND_ZERO,SAT>"), (wa, wb), loops=(Loop("i", 4), Loop("j", 4)),
       attrs=_zoo_rom(bufs, "div", 30))
    ew("o_dsqrt", "div_sqrt", F("fixed<12,6,RND_CONV,SAT>"), (A, B), attrs=_zoo_rom(bufs, "div_sqrt", 16))
    ew("o_dsqrt_w", "div_sqrt", F("fixed<7,2,TRN_ZERO,WRAP>"), (A, P), attrs=_zoo_rom(bufs, "div_sqrt", 14),
       lanes=2, lane_var="j")
    ew("o_dsqrt_wide", "div_sqrt", F("ufixed<24,8,RND,SAT>"), (wa, wb), loops=(Loop("i", 4), Loop("j", 4)),
       attrs=_zoo_rom(bufs, "div_sqrt", 31))


def _zoo_reductions(bufs: list[Buffer], stages: list[Stage]) -> None:
    """The zoo's reductions (mac, sum, max, argmax; wide, padded and strided reads)."""
    ij = (Loop("i", 4), Loop("j", 8))
    A, B, P = (acc(n, "i", "j") for n in "abp")

    def red(name, op, out_fmt, acc_fmt, loops, out_index, ins, reduce, lanes=1, lane_var=None):
        shape = tuple(lp.extent for lp in loops if lp.var in out_index)
        bufs.append(Buffer(name, shape, out_fmt, "output"))
        stages.append(Stage(name, op, loops, acc(name, *out_index), ins, reduce=reduce, acc=acc_fmt,
                            lanes=lanes, lane_var=lane_var, origin=f"aten.{op}"))

    inj = (Loop("i", 4), Loop("n", 5), Loop("j", 8))
    mac_ins = (acc("a", "i", "j"), acc("m", "j", "n"))
    red("r_mac_init", "mac", F("fixed<10,4>"), F("fixed<14,6,RND,SAT>"), inj, ("i", "n"),
        (*mac_ins, acc("bias", "n")), ("j",), lanes=2, lane_var="n")
    red("r_mac_wrap", "mac", F("fixed<12,4>"), F("fixed<10,4,TRN,WRAP>"), inj, ("i", "n"), mac_ins, ("j",))
    red("r_mac_conv", "mac", F("fixed<9,3,TRN,WRAP>"), F("fixed<16,6,RND_CONV,SAT>"), inj, ("i", "n"), mac_ins,
        ("j",), lanes=5, lane_var="n")
    red("r_mac_zero", "mac", F("fixed<12,4>"), F("fixed<12,5,RND_ZERO,WRAP>"), inj, ("i", "n"),
        (*mac_ins, acc("bias", "n")), ("j",), lanes=3, lane_var="i")
    red("r_mac_tz", "mac", F("fixed<12,4>"), F("fixed<11,4,TRN_ZERO,SAT>"), (Loop("j", 8), Loop("n", 5), Loop("i", 4)),
        ("n", "i"), mac_ins, ("j",))
    wide = (acc("wa", "i", "j"), acc("wb", "j", "n"))  # 58-bit products
    red("r_mac_wide", "mac", F("fixed<32,12>"), F("fixed<60,16,TRN,SAT>"), inj, ("i", "n"), wide, ("j",),
        lanes=2, lane_var="i")
    red("r_mac_wide_conv", "mac", F("fixed<32,20,RND_ZERO,WRAP>"), F("fixed<58,18,RND_CONV,WRAP>"), inj, ("i", "n"),
        wide, ("j",))
    red("r_sum", "sum", F("fixed<8,4>"), F("fixed<8,4,RND,SAT>"), ij, ("i",), (A,), ("j",), lanes=4, lane_var="i")
    red("r_sum_init", "sum", F("ufixed<10,4>"), F("fixed<9,4,TRN,WRAP>"), (Loop("j", 8), Loop("i", 4)), ("j",),
        (B, acc("u", "j")), ("i",), lanes=3, lane_var="j")
    red("r_sum_all", "sum", F("fixed<12,8>"), F("fixed<16,8>"), ij, (), (A,), ("i", "j"))
    red("r_max", "max", F("fixed<6,2>"), F("fixed<6,2,RND,SAT>"), ij, ("j",), (A,), ("i",), lanes=3, lane_var="j")
    red("r_max_all", "max", F("ufixed<6,2>"), F("ufixed<6,2>"), ij, (), (B,), ("i", "j"))
    # argmax: the first maximum (p's 4-bit values tie often); guarded points are skipped
    red("r_argmax", "argmax", F("fixed<16,16>"), F("fixed<4,2,TRN,SAT>"), ij, ("j",), (P,), ("i",),
        lanes=3, lane_var="j")
    red("r_argmax_all", "argmax", F("ufixed<8,8>"), F("fixed<3,2,TRN,SAT>"), ij, (), (P,), ("i", "j"))
    window = Affine((("n", 2), ("j", 1)), -1)  # a pooling window over j, padded by 1
    pooled = Access("a", (Affine.var("i"), window), (Guard(window, 8),))
    red("r_max_pad", "max", F("fixed<8,3>"), F("fixed<8,3,TRN,SAT>"), (Loop("i", 4), Loop("n", 4), Loop("j", 3)),
        ("i", "n"), (pooled,), ("j",))
    red("r_argmax_pad", "argmax", F("fixed<16,16>"), F("fixed<8,3,TRN,SAT>"),
        (Loop("i", 4), Loop("n", 4), Loop("j", 3)), ("i", "n"), (pooled,), ("j",), lanes=2, lane_var="n")
    # a transposed (strided) read: a[(i + j - 3) / 2][j] where i + j - 3 is even and in 0..7
    e = Affine((("i", 1), ("j", 1)), -3)
    strided = Access("a", (Affine(e.terms, e.const, 2), Affine.var("j")), (Guard(e, 8, 2),))
    red("r_mac_strided", "mac", F("fixed<12,4>"), F("fixed<20,8>"), inj, ("i", "n"),
        (strided, acc("m", "j", "n"), acc("bias", "n")), ("j",), lanes=5, lane_var="n")

def sgd_kernel() -> Kernel:
    """A linear layer trained on chip: its parameters are updated in place and persist."""
    rng = np.random.default_rng(7)
    w_fmt = F("fixed<16,4>")
    w_init = rng.integers(w_fmt.raw_min, w_fmt.raw_max + 1, size=12)
    w_init[:2] = (w_fmt.raw_min, w_fmt.raw_max)
    bufs = [
        Buffer("w", (3, 4), w_fmt, "param", "weight", init=tuple(int(v) for v in w_init), source="sgd.py:3"),
        Buffer("bias", (3,), F("fixed<12,4>"), "param", "weight"),
        Buffer("x", (4,), F("fixed<10,3>"), "input"),
        Buffer("t", (3,), F("fixed<10,3>"), "target"),
        Buffer("lr", (), F("ufixed<8,0>"), "const", "const", init=(26,)),
        Buffer("y", (3,), F("fixed<14,5>"), "temp"),
        Buffer("err", (3,), F("fixed<14,5>"), "temp"),
        Buffer("g", (3, 4), F("fixed<16,4>"), "temp", "gradient"),
        Buffer("gb", (3,), F("fixed<12,4>"), "temp", "gradient"),
        Buffer("loss", (), F("fixed<20,8>"), "output"),
        Buffer("yo", (3,), F("fixed<14,5>"), "output"),
    ]
    ok, o = (Loop("o", 3), Loop("k", 4)), (Loop("o", 3),)
    mac_acc = F("fixed<24,8>")
    fwd = dict(op="mac", loops=ok, ins=(acc("w", "o", "k"), acc("x", "k"), acc("bias", "o")), reduce=("k",),
               acc=mac_acc, origin="aten.addmm.default", source="sgd.py:10")
    train = [
        Stage("fwd", out=acc("y", "o"), lanes=2, lane_var="o", **fwd),
        Stage("err", "sub", o, acc("err", "o"), (acc("y", "o"), acc("t", "o"))),
        Stage("loss", "mac", o, acc("loss"), (acc("err", "o"), acc("err", "o")), reduce=("o",), acc=mac_acc),
        Stage("grad_w", "mul", ok, acc("g", "o", "k"), (acc("err", "o"), acc("x", "k"))),
        Stage("scale_w", "mul", ok, acc("g", "o", "k"), (acc("g", "o", "k"), acc("lr"))),  # in place
        Stage("update_w", "sub", ok, acc("w", "o", "k"), (acc("w", "o", "k"), acc("g", "o", "k")),
              lanes=2, lane_var="k"),
        Stage("grad_b", "mul", o, acc("gb", "o"), (acc("err", "o"), acc("lr"))),
        Stage("update_b", "sub", o, acc("bias", "o"), (acc("bias", "o"), acc("gb", "o")), lanes=3, lane_var="o"),
    ]
    programs = {
        "train_step": Program("train_step", ["x", "t"], ["loss"], train),
        "infer": Program("infer", ["x"], ["yo"], [Stage("fwd", out=acc("yo", "o"), **fwd)]),
    }
    return Kernel("sgd", {b.name: b for b in bufs}, programs, ["w", "bias"], {"w": "fc.weight", "bias": "fc.bias"})


def random_raw(kernel: Kernel, names, rng) -> dict[str, np.ndarray]:
    """Uniform raw values over each buffer's whole format, its extremes included."""
    out = {}
    for n in names:
        fmt = kernel.buffers[n].fmt
        raw = rng.integers(fmt.raw_min, fmt.raw_max + 1, size=kernel.buffers[n].size)
        if raw.size >= 4:
            raw[:2] = (fmt.raw_min, fmt.raw_max)
        out[n] = raw.reshape(kernel.buffers[n].shape)
    return out


def write_files(root, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FX2FPGA_CACHE", str(tmp_path_factory.getbasetemp() / "fx2fpga-cache"))


def run_both(kernel: Kernel, folder, sequence) -> int:
    """Run (command, raw inputs) pairs on the emulator and the C simulation; assert equal outputs."""
    write_files(folder, hls.generate(kernel, VERSION))
    emu = KernelRunner(kernel, EmuBackend(kernel))
    with KernelRunner(kernel, CsimBackend(kernel, folder)) as sim:
        checked = 0
        for step, (command, raw) in enumerate(sequence):
            want, got = emu.call_raw(command, raw), sim.call_raw(command, raw)
            assert want.keys() == got.keys()
            for name in want:
                bad = np.flatnonzero(want[name].reshape(-1) != got[name].reshape(-1))
                assert bad.size == 0, (
                    f"call {step} ({command}) {name}: {bad.size} of {want[name].size} values differ, first at flat "
                    f"index {bad[0]}: emulator {want[name].reshape(-1)[bad[0]]}, C++ {got[name].reshape(-1)[bad[0]]}"
                )
                checked += want[name].size
    return checked


# ----- codegen without a compiler ---------------------------------------------------------------------

def test_zoo_covers_every_op():
    k = zoo_kernel()
    assert {s.op for s in k.stages()} == set(OPS)
    assert {s.acc.overflow for s in k.stages() if s.acc} == {"SAT", "WRAP"}
    remainders = [next(lp.extent for lp in s.loops if lp.var == s.lane_var) % s.lanes
                  for s in k.stages() if s.lanes > 1]
    assert 0 in remainders and any(remainders)  # lanes that divide their loop and lanes that do not
    assert {s.acc.rounding for s in k.stages() if s.acc} >= {"RND", "TRN"}


def test_generate_is_deterministic_and_bannered():
    first = hls.generate(zoo_kernel(), VERSION) | hls.generate(sgd_kernel(), VERSION)
    second = hls.generate(zoo_kernel(), VERSION) | hls.generate(sgd_kernel(), VERSION)
    assert first == second
    assert set(first) == {"src/zoo.h", "src/zoo.cpp", "src/sgd.h", "src/sgd.cpp", "src/csim_main.cpp"}
    for text in first.values():
        assert text.startswith(f"// Automatically generated by fx2fpga {VERSION} -- do not edit.\n")
    vectors = [("infer", np.arange(4), np.arange(3))]
    tb1, tb2 = (hls.generate_testbench(sgd_kernel(), vectors, VERSION) for _ in range(2))
    assert tb1 == tb2 and all(t.startswith("// Automatically generated by fx2fpga") for t in tb1.values())


def test_kernel_cpp_structure():
    files = hls.generate(sgd_kernel(), VERSION)
    cpp, header = files["src/sgd.cpp"], files["src/sgd.h"]
    assert "typedef ap_fixed<16,4,AP_RND,AP_SAT> fixed_16_4_t;" in header
    assert "void sgd_top(int cmd, const int in_words[IN_WORDS], int out_words[OUT_WORDS]);" in header
    assert "const int IN_WORDS = 15;" in header and "const int CMD_TRAIN_STEP = 4;" in header
    assert "static fixed_16_4_t w[3][4] = {" in cpp  # a parameter with init, kept across calls
    assert "static const ufixed_8_0_t lr = 0.1015625;" in cpp  # raw 26 / 2**8, exact
    assert "static fixed_12_4_t bias[3];" in cpp
    for pragma in ("INTERFACE s_axilite port=cmd", "INTERFACE s_axilite port=return",
                   "INTERFACE m_axi port=in_words offset=slave depth=15",
                   "INTERFACE m_axi port=out_words offset=slave depth=15",
                   "ARRAY_PARTITION variable=w cyclic factor=2 dim=2", "PIPELINE II=1", "UNROLL"):
        assert f"#pragma HLS {pragma}" in cpp
    assert "origin: aten.addmm.default" in cpp and "source: sgd.py:10" in cpp
    assert "fixed_24_8_t acc[2];  // one accumulator per lane" in cpp
    assert "if (o < 3) {" in cpp  # 2 lanes do not divide 3: the last group is guarded


def _one_stage(stage: Stage, a: Buffer, z: Buffer) -> Kernel:
    return Kernel("one", {a.name: a, z.name: z}, {"infer": Program("infer", [a.name], [z.name], [stage])}, [])


@pytest.mark.parametrize("case", ["lane_on_reduce", "wide_port", "out_of_bounds", "read_after_write", "bad_name"])
def test_codegen_rejects_what_it_cannot_print_exactly(case):
    a = Buffer("a", (4, 4), F("fixed<8,3>"), "input")
    z = Buffer("z", (4,), F("fixed<8,3>"), "output")
    st = Stage("s", "sum", (Loop("i", 4), Loop("j", 4)), acc("z", "i"), (acc("a", "i", "j"),), reduce=("j",),
               acc=F("fixed<12,4>"))
    if case == "lane_on_reduce":
        st.lanes, st.lane_var = 2, "j"
    elif case == "wide_port":
        z = Buffer("z", (4,), F("fixed<40,8>"), "output")
    elif case == "out_of_bounds":
        st.ins = (acc("a", "i", Affine((("j", 1),), 1)),)
    elif case == "read_after_write":
        shifted = Affine((("i", 1),), 3, 1, 4)  # (i + 3) % 4: another element than the one written
        st = Stage("s", "add", (Loop("i", 4),), acc("z", "i"), (acc("z", shifted), acc("a", "i", "i")))
    elif case == "bad_name":
        z = Buffer("acc", (4,), F("fixed<8,3>"), "output")  # a name the generated code uses itself
        st.out = acc("acc", "i")
    kernel = _one_stage(st, a, z)
    with pytest.raises(hls.HlsCodegenError):
        hls.generate(kernel, VERSION)


def test_missing_ap_types_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FX2FPGA_AP_TYPES", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ap_fixed.h"):
        ap_types_dir()


# ----- g++: C simulation against the emulator -----------------------------------------------------------

@pytest.mark.slow
def test_zoo_csim_equals_emulator(tmp_path):
    k = zoo_kernel()
    rng = np.random.default_rng(1)
    inputs = k.programs["infer"].inputs
    checked = run_both(k, tmp_path, [("infer", random_raw(k, inputs, rng)) for _ in range(4)])
    assert checked == 4 * interface.word_count(k, k.programs["infer"].outputs)


@pytest.mark.slow
def test_sgd_params_persist_and_update_in_place(tmp_path):
    k = sgd_kernel()
    rng = np.random.default_rng(2)

    def step():
        return ("train_step", random_raw(k, ["x", "t"], rng))

    sequence = [("read_params", {}), step(), step(), ("read_params", {}), ("infer", random_raw(k, ["x"], rng)),
                ("load_params", random_raw(k, k.params, rng)), ("read_params", {}), step(), step(), step(),
                ("read_params", {}), ("infer", random_raw(k, ["x"], rng))]
    run_both(k, tmp_path, sequence)
    # the weights did move: training on chip changed them between the two reads
    emu = KernelRunner(k, EmuBackend(k))
    before = emu.get_params_raw()["w"]
    emu.call_raw(*step())
    assert not np.array_equal(before, emu.get_params_raw()["w"])


@pytest.mark.slow
def test_csim_binary_is_cached_and_reports_a_dead_process(tmp_path, capfd):
    k = sgd_kernel()
    write_files(tmp_path, hls.generate(k, VERSION))
    CsimBackend(k, tmp_path).close()
    capfd.readouterr()
    backend = CsimBackend(k, tmp_path)  # same sources: no second compile
    assert "compiling" not in capfd.readouterr().err
    with pytest.raises(RuntimeError, match="expected 4"):
        backend.call("infer", np.zeros(3, dtype=np.int32))  # wrong word count: the server exits
    backend.close()


@pytest.mark.slow
def test_compile_error_reports_gxx_output(tmp_path):
    k = sgd_kernel()
    write_files(tmp_path, hls.generate(k, VERSION))
    (tmp_path / "src" / "sgd.cpp").write_text('#error "broken on purpose"\n')
    with pytest.raises(RuntimeError, match="broken on purpose"):
        CsimBackend(k, tmp_path)


def _sgd_equals_emulator(folder) -> None:
    """Build the sgd kernel's C simulation in ``folder`` and check a training step against the emulator."""
    k = sgd_kernel()
    rng = np.random.default_rng(5)
    assert run_both(k, folder, [("train_step", random_raw(k, ["x", "t"], rng)), ("read_params", {})]) > 0


def small_kernel() -> Kernel:
    """One rounding, saturating product a * b: a second kernel besides ``sgd_kernel`` that compiles in seconds
    with the vendor headers (the zoo's ROM tables take g++ about 100 s there)."""
    bufs = [Buffer("a", (4, 4), F("fixed<8,3>"), "input"), Buffer("b", (4, 4), F("ufixed<7,2>"), "input"),
            Buffer("z", (4, 4), F("fixed<9,3,RND,SAT>"), "output")]
    a_ij, b_ij = acc("a", "i", "j"), acc("b", "i", "j")
    stage = Stage("z", "mul", (Loop("i", 4), Loop("j", 4)), acc("z", "i", "j"), (a_ij, b_ij))
    return Kernel("small", {b.name: b for b in bufs}, {"infer": Program("infer", ["a", "b"], ["z"], [stage])}, [])


def _precompiled_headers() -> list:
    """The ``.gch`` files of the csim cache, after the background builds are done."""
    csim.wait_for_background_builds()
    return sorted((cache_dir() / "csim-pch").glob("*/*.gch"))


@pytest.mark.slow
def test_precompiled_header_is_made_once_and_reused_by_other_kernels(tmp_path, monkeypatch):
    monkeypatch.setenv("FX2FPGA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FX2FPGA_CSIM_HEADERS", "ap_types")  # the vendor's headers are precompiled
    _sgd_equals_emulator(tmp_path / "first")  # no precompiled header yet: the build starts making it
    [gch] = _precompiled_headers()
    made = gch.stat()
    assert made.st_size > 1_000_000
    k = small_kernel()  # another kernel: a new binary, the same headers
    run_both(k, tmp_path / "small", [("infer", random_raw(k, k.programs["infer"].inputs, np.random.default_rng(2)))])
    assert _precompiled_headers() == [gch]
    again = gch.stat()
    assert (again.st_ino, again.st_mtime_ns) == (made.st_ino, made.st_mtime_ns)
    assert len(list((cache_dir() / "csim").iterdir())) == 2
    write_files(tmp_path / "broken", hls.generate(sgd_kernel(), VERSION))
    (tmp_path / "broken" / "src" / "sgd.cpp").write_text('#include "sgd.h"\n#error "broken on purpose"\n')
    with pytest.raises(RuntimeError, match="broken on purpose"):  # g++'s message, with the header in use
        CsimBackend(sgd_kernel(), tmp_path / "broken")
    assert _precompiled_headers() == [gch] and gch.stat().st_ino == made.st_ino


@pytest.mark.slow
def test_a_damaged_precompiled_header_is_rebuilt(tmp_path, monkeypatch):
    """Truncated (g++: a fatal error), then not a header at all (g++: a warning): each time the next build
    makes it again. One cache for both damages: the second rebuilds the small kernel's binary after removing it."""
    monkeypatch.setenv("FX2FPGA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FX2FPGA_CSIM_HEADERS", "ap_types")  # the vendor's headers are precompiled
    _sgd_equals_emulator(tmp_path / "first")
    [gch] = _precompiled_headers()
    good = gch.read_bytes()
    k = small_kernel()
    for i, damage in enumerate([good[:100_000], b"garbage\n"]):
        shutil.rmtree(cache_dir() / "csim", ignore_errors=True)  # the kernel's binary: built again, with the header
        gch.write_bytes(damage)
        checked = run_both(k, tmp_path / f"small{i}", [("infer", random_raw(k, k.programs["infer"].inputs,
                                                                             np.random.default_rng(4)))])
        assert checked == interface.word_count(k, k.programs["infer"].outputs)
        assert _precompiled_headers() == [gch]
        with gch.open("rb") as f:  # made again (it holds the temporary folder's name: not byte for byte the same)
            assert f.read(4) == good[:4] == b"gpch"
        assert gch.stat().st_size > 1_000_000


@pytest.mark.slow
def test_testbench_passes_golden_vectors_and_fails_a_corrupted_one(tmp_path):
    k = sgd_kernel()
    rng = np.random.default_rng(3)
    emu = EmuBackend(k)
    vectors = []
    for command, raw in [("read_params", {}), ("train_step", random_raw(k, ["x", "t"], rng)),
                         ("infer", random_raw(k, ["x"], rng)), ("load_params", random_raw(k, k.params, rng)),
                         ("train_step", random_raw(k, ["x", "t"], rng)), ("read_params", {})]:
        words = interface.pack(k, interface.command_buffers(k, command)[0], raw)
        vectors.append((command, words, emu.call(command, words)))
    n_words = sum(v[2].size for v in vectors)
    src = tmp_path / "src"
    write_files(tmp_path, hls.generate(k, VERSION))
    flags, cxx = [*CXX_FLAGS, f"-I{ap_types_dir()}", f"-I{src}"], require_tool("g++")
    subprocess.run([cxx, *flags, "-c", str(src / "sgd.cpp"), "-o", str(tmp_path / "sgd.o")], check=True)

    def build_and_run(vecs) -> subprocess.CompletedProcess:
        write_files(tmp_path, hls.generate_testbench(k, vecs, VERSION))
        exe = tmp_path / "tb"
        subprocess.run([cxx, *flags, str(src / "tb_sgd.cpp"), str(tmp_path / "sgd.o"), "-o", str(exe)], check=True)
        return subprocess.run([str(exe)], capture_output=True, text=True)

    good = build_and_run(vectors)
    assert good.returncode == 0, good.stdout
    assert f"{len(vectors)} vectors, {n_words} words passed, 0 failed -- PASS" in good.stdout

    corrupted = [(c, i, o.copy()) for c, i, o in vectors]
    corrupted[4][2][0] += 1  # the loss of the second training step, off by one LSB
    bad = build_and_run(corrupted)
    assert bad.returncode != 0
    assert "MISMATCH vector 4 (train_step) word 0" in bad.stdout
    assert f"{n_words - 1} words passed, 1 failed -- FAIL" in bad.stdout
