"""The csim backend's own ``fastfixed`` headers (runtime/fx2fpga_runtime/fastfixed/) against the emulator
and against Xilinx's ``ap_types``, word for word.

- the IR zoo (every op, rounding and overflow mode) built with both header sets: equal words, equal emu. By
  default without its ``div``/``div_sqrt`` stages: their ROM tables (13,000 entries) take g++ about 100 s with
  the vendor headers; ``FX2FPGA_VENDOR_ZOO=1`` builds the whole zoo (the AdamW kernel of test_adam.py runs
  ``div``/``div_sqrt`` ROMs on the vendor headers in the default suite);
- a kernel of random formats and ops per hypothesis example (fastfixed only): equal to the emulator;
- random wide formats (up to 62 bits, exact intermediates past 64 bits) in one C++ program on fastfixed:
  every result as an exact model in Python integers gives it (the emulator's raw values are int64);
- the sgd kernel (parameters from double literals, trained in place) on fastfixed: equal to the emulator;
- which set a kernel gets (auto, forced, the fallback when g++ refuses fastfixed) and the cache key.
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from fx2fpga_runtime import csim, interface
from fx2fpga_runtime.csim import CXX_FLAGS, CsimBackend, choose_headers, fastfixed_dir, fastfixed_limit
from fx2fpga_runtime.fixed import ROUNDING_MODES, Fixed
from fx2fpga_runtime.ir import OPS, Access, Affine, Buffer, Kernel, Loop, Program, Stage
from fx2fpga_runtime.runner import EmuBackend, KernelRunner
from fx2fpga_runtime.toolchain import cache_dir, require_tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fx2fpga.backends.hls import emit as hls

from .test_hls_csim import VERSION, random_raw, sgd_kernel, write_files, zoo_kernel


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FX2FPGA_CACHE", str(tmp_path_factory.getbasetemp() / "fx2fpga-cache"))
    monkeypatch.delenv(csim.HEADERS_ENV, raising=False)


def _words(kernel: Kernel, command: str, raw: dict) -> np.ndarray:
    return interface.pack(kernel, interface.command_buffers(kernel, command)[0], raw)


WHOLE_ZOO = bool(os.environ.get("FX2FPGA_VENDOR_ZOO"))  # the division ROMs too: about 100 s more of g++


def without_rom_stages(kernel: Kernel) -> Kernel:
    """``kernel`` less its stages that read a ROM (``div``, ``div_sqrt``), their outputs and the ROMs."""
    [(command, program)] = kernel.programs.items()
    dropped = [s for s in program.stages if "rom" in s.attrs]
    gone = {s.out.buffer for s in dropped} | {s.attrs["rom"] for s in dropped}
    assert dropped and not any(a.buffer in gone for s in program.stages if s not in dropped for a in s.ins)
    stages = [s for s in program.stages if s not in dropped]
    outputs = [name for name in program.outputs if name not in gone]
    buffers = {name: buf for name, buf in kernel.buffers.items() if name not in gone}
    return Kernel(kernel.name, buffers, {command: Program(command, program.inputs, outputs, stages)}, kernel.params)


def vendor_zoo() -> Kernel:
    """The zoo the vendor headers build: whole with ``FX2FPGA_VENDOR_ZOO=1``, else without its ROM stages."""
    return zoo_kernel() if WHOLE_ZOO else without_rom_stages(zoo_kernel())


@pytest.fixture(scope="module")
def zoo_backends(tmp_path_factory):
    """The zoo's C simulation built once with each header set (``vendor_zoo``)."""
    k = vendor_zoo()
    folder = tmp_path_factory.mktemp("zoo")
    write_files(folder, hls.generate(k, VERSION))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FX2FPGA_CACHE", str(tmp_path_factory.getbasetemp() / "fx2fpga-cache"))
        backends = {h: CsimBackend(k, folder, headers=h) for h in ("fastfixed", "ap_types")}
    yield k, folder, backends
    for b in backends.values():
        b.close()


@pytest.mark.slow
def test_zoo_words_equal_with_both_header_sets(zoo_backends):
    k, _, backends = zoo_backends
    assert {h: b.headers for h, b in backends.items()} == {"fastfixed": "fastfixed", "ap_types": "ap_types"}
    others = {s.op for s in zoo_kernel().stages()} - {"div", "div_sqrt"}
    assert {s.op for s in k.stages()} == (set(OPS) if WHOLE_ZOO else others)
    emu = EmuBackend(k)
    rng = np.random.default_rng(11)
    n_out = interface.word_count(k, k.programs["infer"].outputs)
    for _ in range(6):  # uniform raw values over each format, its extremes included
        words = _words(k, "infer", random_raw(k, k.programs["infer"].inputs, rng))
        fast, vendor, want = backends["fastfixed"].call("infer", words), backends["ap_types"].call("infer", words), \
            emu.call("infer", words)
        assert fast.size == vendor.size == want.size == n_out
        assert np.array_equal(fast, vendor), np.flatnonzero(fast != vendor)[:10]
        assert np.array_equal(fast, want)


@pytest.mark.slow
def test_sgd_training_on_fastfixed_equals_emulator(tmp_path):
    """Parameters initialised from double literals, trained in place, reloaded: every word as the emulator's."""
    k = sgd_kernel()
    write_files(tmp_path, hls.generate(k, VERSION))
    rng = np.random.default_rng(6)
    emu = KernelRunner(k, EmuBackend(k))
    with KernelRunner(k, CsimBackend(k, tmp_path)) as sim:
        assert sim.backend.headers == "fastfixed"
        steps = [("read_params", {})] + [("train_step", random_raw(k, ["x", "t"], rng)) for _ in range(3)]
        steps += [("load_params", random_raw(k, k.params, rng)), ("train_step", random_raw(k, ["x", "t"], rng)),
                  ("read_params", {}), ("infer", random_raw(k, ["x"], rng))]
        for command, raw in steps:
            want, got = emu.call_raw(command, raw), sim.call_raw(command, raw)
            for name in want:
                assert np.array_equal(want[name], got[name]), (command, name)


# ----- random formats and ops, against the emulator ------------------------------------------------------

@st.composite
def formats(draw, max_width: int = 20) -> Fixed:
    width = draw(st.integers(2, max_width))
    return Fixed(width, draw(st.integers(-3, width + 3)), draw(st.booleans()),
                 draw(st.sampled_from(ROUNDING_MODES)), draw(st.sampled_from(("SAT", "WRAP"))))


_ELEMENTWISE = {"copy": 1, "neg": 1, "relu": 1, "abs": 1, "add": 2, "sub": 2, "mul": 2, "eq": 2, "ne": 2, "lt": 2,
                "le": 2, "gt": 2, "ge": 2, "select": 3, "msub": 3}
_REDUCTIONS = ("mac", "sum", "max", "argmax")


@st.composite
def random_stage(draw, index: int) -> tuple[Stage, Fixed]:
    """One stage over the inputs x, y, z (4x4) with a random op and output (and accumulator, ``mid``) format."""
    v = Affine.var
    out = f"o{index}"
    op = draw(st.sampled_from([*_ELEMENTWISE, *_REDUCTIONS]))
    fo = draw(formats())
    if op in _ELEMENTWISE:
        ins = tuple(Access(n, (v("i"), v("j"))) for n in "xyz"[:_ELEMENTWISE[op]])
        attrs = {"mid": str(draw(formats()))} if op == "msub" else {}
        return Stage(out, op, (Loop("i", 4), Loop("j", 4)), Access(out, (v("i"), v("j"))), ins, attrs=attrs), fo
    acc_fmt = draw(formats(max_width=44 if op == "mac" else 30))
    loops = (Loop("i", 4), Loop("n", 4), Loop("j", 4))
    ins = (Access("x", (v("i"), v("j"))), Access("y", (v("j"), v("n"))))[:2 if op == "mac" else 1]
    if op in ("mac", "sum") and draw(st.booleans()):
        ins += (Access("z", (v("i"), v("n"))),)  # the accumulator starts from z
    return Stage(out, op, loops, Access(out, (v("i"), v("n"))), ins, reduce=("j",), acc=acc_fmt), fo


@st.composite
def random_kernels(draw) -> Kernel:
    """Six random stages on three inputs of random formats; every stage writes its own output."""
    bufs = [Buffer(n, (4, 4), draw(formats()), "input") for n in "xyz"]
    stages = []
    for index in range(6):
        stage, fo = draw(random_stage(index))
        stages.append(stage)
        bufs.append(Buffer(stage.out.buffer, (4, 4), fo, "output"))
    buffers = {b.name: b for b in bufs}
    return Kernel("rnd", buffers, {"infer": Program("infer", ["x", "y", "z"], [s.out.buffer for s in stages],
                                                    stages)}, [])


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(kernel=random_kernels(), seed=st.integers(0, 2**16))
def test_random_formats_and_ops_equal_emulator(kernel, seed, tmp_path_factory):
    assert fastfixed_limit(kernel) is None
    folder = tmp_path_factory.mktemp("rnd")
    write_files(folder, hls.generate(kernel, VERSION))
    rng = np.random.default_rng(seed)
    emu = EmuBackend(kernel)
    sim = CsimBackend(kernel, folder)
    try:
        assert sim.headers == "fastfixed"
        for _ in range(2):
            words = _words(kernel, "infer", random_raw(kernel, ["x", "y", "z"], rng))
            want, got = emu.call("infer", words), sim.call("infer", words)
            assert np.array_equal(want, got), [str(s.op) for s in kernel.stages()]
    finally:
        sim.close()


# ----- wide random formats: a C++ program against an exact model in Python integers ---------------------------
# (the emulator keeps raw values in int64; these intermediates reach 124 bits)

_CPP_PRELUDE = """\
#include <cstdio>
#include <ap_fixed.h>
#include <ap_int.h>

template <int W, int I, ap_q_mode Q, ap_o_mode O, int N>
static long long raw_bits(const ap_fixed<W, I, Q, O, N> &x) {
    const ap_int<W> bits = x.range(W - 1, 0);
    return bits.to_int64();
}
template <int W, int I, ap_q_mode Q, ap_o_mode O, int N>
static long long raw_bits(const ap_ufixed<W, I, Q, O, N> &x) {
    const ap_uint<W> bits = x.range(W - 1, 0);
    return (long long)bits.to_uint64();
}
"""
# C++ of each op: o (type O) from a, b, c (types A, B, C), an int i and a double d
_CPP_OPS = {
    "add": "o = a + b;", "sub": "o = a - b;", "mul": "o = a * b;", "neg": "o = -a;", "copy": "o = a;",
    "mac": "o = c; o += a * b; o += b * a;", "msub": "o = c - M(a * b);", "sum": "o = c; o += a; o -= b;",
    "lt": "o = (a < b) ? O(1) : O(0);", "eq": "o = (a == b) ? O(1) : O(0);", "ge": "o = (a >= b) ? O(1) : O(0);",
    "relu": "o = (a > 0) ? O(a) : O(0);", "select": "o = (c != 0) ? O(a) : O(b);",
    "int": "o = i;", "double": "o = d;",
}


def _shift_round(v: int, shift: int, mode: str) -> int:
    """``fixed.shift_round`` on one Python integer (no 64-bit limit)."""
    if shift <= 0:
        return v << -shift
    floor, half = v >> shift, 1 << (shift - 1)
    rem = v - (floor << shift)
    up = {"TRN": False, "RND": rem >= half, "TRN_ZERO": v < 0 and rem != 0,
          "RND_ZERO": rem > half or (rem == half and v < 0), "RND_CONV": rem > half or (rem == half and floor & 1)}
    return floor + int(up[mode])


def _assign(value: tuple[int, int], fmt: Fixed) -> int:
    """The raw value of ``fmt`` an exact value (raw integer, its fractional bits) is assigned: round, overflow."""
    r = _shift_round(value[0], value[1] - fmt.frac_bits, fmt.rounding)
    if fmt.overflow == "SAT":
        return min(max(r, fmt.raw_min), fmt.raw_max)
    return (r - fmt.raw_min) % (1 << fmt.width) + fmt.raw_min


def _exact_model(op: str, fmts: dict, a: int, b: int, c: int, i: int, d: float) -> int:
    """What one case computes, exactly (values as (raw, fractional bits))."""
    A, B, C = ((r, fmts[t].frac_bits) for t, r in zip("ABC", (a, b, c), strict=True))
    out = fmts["O"]

    def add(x, y, sign=1):
        f = max(x[1], y[1])
        return (x[0] << (f - x[1])) + sign * (y[0] << (f - y[1])), f

    def mul(x, y):
        return x[0] * y[0], x[1] + y[1]

    def cmp(x, y):
        return add(x, y, -1)[0]

    def fixed_of(fmt, value):
        return _assign(value, fmt), fmt.frac_bits

    if op == "mac":
        o = fixed_of(out, C)
        o = fixed_of(out, add(o, mul(A, B)))
        return _assign(add(o, mul(B, A)), out)
    if op == "sum":
        o = fixed_of(out, C)
        o = fixed_of(out, add(o, A))
        return _assign(add(o, B, -1), out)
    if op == "msub":
        return _assign(add(C, fixed_of(fmts["M"], mul(A, B)), -1), out)
    if op == "double":
        n, den = d.as_integer_ratio()
        return _assign((n, den.bit_length() - 1), out)
    tests = {"lt": lambda: cmp(A, B) < 0, "eq": lambda: cmp(A, B) == 0, "ge": lambda: cmp(A, B) >= 0}
    if op in tests:
        return _assign((int(tests[op]()), 0), out)
    value = {"add": lambda: add(A, B), "sub": lambda: add(A, B, -1), "mul": lambda: mul(A, B),
             "neg": lambda: (-A[0], A[1]), "copy": lambda: A, "relu": lambda: A if A[0] > 0 else (0, 0),
             "select": lambda: A if C[0] != 0 else B, "int": lambda: (i, 0)}[op]()
    return _assign(value, out)


def _wide_format(rng, max_width: int = 62) -> Fixed:
    width = int(rng.integers(2, max_width + 1))
    return Fixed(width, int(rng.integers(-8, width + 9)), bool(rng.integers(2)),
                 str(rng.choice(ROUNDING_MODES)), str(rng.choice(["SAT", "WRAP"])))


def _wide_raw(rng, fmt: Fixed, out: Fixed) -> int:
    """A raw value of ``fmt``: uniform, an extreme, or an odd number of 3 bits whose lowest sits about where
    the assignment to ``out`` rounds (a tie, or next to one)."""
    kind = int(rng.integers(4))
    if kind == 0:
        return int(rng.choice([fmt.raw_min, fmt.raw_max, 0]))
    if kind < 3:
        at = min(max(fmt.frac_bits - out.frac_bits - 1 + int(rng.integers(-1, 1)), 0), fmt.width - 1)
        return min(max(int(rng.integers(-3, 4)) * 2 + 1 << at, fmt.raw_min), fmt.raw_max)
    return int(rng.integers(fmt.raw_min, fmt.raw_max + 1))


def _wide_case(rng, index: int, values: int) -> tuple[str, list[int], int]:
    """One random case: its C++ (``case_<index>()`` prints ``values`` results), the results the exact model
    expects, and the bits of its exact intermediates as ``fastfixed_limit`` bounds them."""
    op = str(rng.choice(list(_CPP_OPS)))
    fmts = {t: _wide_format(rng) for t in "ABCOM"}
    lines = [f"static void case_{index}() {{  // {op}: " + ", ".join(f"{t} {f}" for t, f in fmts.items()),
             *(f"    typedef {f.cpp()} {t};" for t, f in fmts.items())]
    expected = []
    for _ in range(values):
        raws = [_wide_raw(rng, fmts[t], fmts["O"]) for t in "ABC"]
        i, d = int(rng.integers(-2**31, 2**31)), float(rng.normal() * 2.0 ** int(rng.integers(-30, 40)))
        lines += ["    {", "        A a; B b; C c; O o;",
                  *(f"        {x}.range({fmts[t].width - 1}, 0) = {r}LL;"
                    for x, t, r in zip("abc", "ABC", raws, strict=True)),
                  f"        const int i = {i}; const double d = {d!r};",
                  f"        (void)i; (void)d; {_CPP_OPS[op]}",
                  '        printf("%lld\\n", raw_bits(o));', "    }"]
        expected.append(_exact_model(op, fmts, *raws, i, d))
    lines.append("}")
    return "\n".join(lines), expected, csim.exact_bits(list(fmts.values()))


def _wide_program(seed: int, cases: int, values: int) -> tuple[str, list[int]]:
    """A C++ program of ``cases`` random cases within fastfixed's limit, and the results it must print."""
    rng = np.random.default_rng(seed)
    bodies, expected = [], []
    while len(bodies) < cases:
        body, want, bits = _wide_case(rng, len(bodies), values)
        if bits <= csim.FAST_MAX_BITS:  # wider: the vendor headers run those kernels
            bodies.append(body)
            expected += want
    calls = "\n".join(f"    case_{i}();" for i in range(cases))
    return _CPP_PRELUDE + "\n".join(bodies) + f"\n\nint main() {{\n{calls}\n    return 0;\n}}\n", expected


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3, 4])
def test_wide_random_formats_equal_an_exact_model(tmp_path, seed):
    """60 random ops on formats up to 62 bits (products to 124 bits), 6 values each, format extremes included:
    fastfixed prints what exact integer arithmetic, rounding and overflow give."""
    program, expected = _wide_program(seed, cases=60, values=6)
    (tmp_path / "wide.cpp").write_text(program)
    exe = tmp_path / "wide"
    subprocess.run([require_tool("g++"), *CXX_FLAGS, f"-I{fastfixed_dir()}", str(tmp_path / "wide.cpp"), "-o",
                    str(exe)], check=True)
    got = [int(v) for v in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    assert len(got) == len(expected) == 60 * 6
    bad = [k for k, (g, w) in enumerate(zip(got, expected, strict=True)) if g != w]
    assert not bad, f"{len(bad)} differ; first: case {bad[0] // 6}, C++ {got[bad[0]]}, model {expected[bad[0]]}"


# ----- which headers a kernel gets ------------------------------------------------------------------------------

def _wide_add_kernel() -> Kernel:
    """An add whose exact sum needs ~160 bits (62 fractional bits against 60 integer bits)."""
    v = Affine.var
    bufs = [Buffer("a", (4,), Fixed(62, -60), "input"), Buffer("b", (4,), Fixed(8, 3), "input"),
            Buffer("o", (4,), Fixed(16, 8), "output")]
    st_ = Stage("s", "add", (Loop("i", 4),), Access("o", (v("i"),)), (Access("a", (v("i"),)), Access("b", (v("i"),))))
    return Kernel("wide", {b.name: b for b in bufs}, {"infer": Program("infer", ["a", "b"], ["o"], [st_])}, [])


def test_auto_takes_fastfixed_where_it_covers_every_format(monkeypatch):
    assert fastfixed_dir() is not None  # installed with the runtime
    assert fastfixed_limit(zoo_kernel()) is None and fastfixed_limit(sgd_kernel()) is None
    assert choose_headers(zoo_kernel()).name == "fastfixed"
    wide = _wide_add_kernel()
    assert "stage s" in fastfixed_limit(wide) and csim.exact_bits([Fixed(62, -60), Fixed(8, 3)]) > csim.FAST_MAX_BITS
    assert choose_headers(wide).name == "ap_types"
    with pytest.raises(ValueError, match="exact intermediates"):
        choose_headers(wide, "fastfixed")
    monkeypatch.setenv(csim.HEADERS_ENV, "ap_types")
    assert choose_headers(zoo_kernel()).name == "ap_types"
    assert choose_headers(zoo_kernel(), "fastfixed").name == "fastfixed"  # the argument wins over the variable
    monkeypatch.setenv(csim.HEADERS_ENV, "fast")
    with pytest.raises(ValueError, match="auto, fastfixed, ap_types"):
        choose_headers(zoo_kernel())


@pytest.mark.slow
def test_cache_key_holds_the_header_set_and_its_bytes(zoo_backends, tmp_path):
    k, folder, backends = zoo_backends
    assert backends["fastfixed"].binary != backends["ap_types"].binary
    edited = tmp_path / "fastfixed"
    edited.mkdir()
    for header in fastfixed_dir().glob("*.h"):
        (edited / header.name).write_text(header.read_text() + "// one more line\n")
    src = folder / "src"
    again = csim.build([src / "zoo.cpp", src / "csim_main.cpp"], [src / "zoo.h"], choose_headers(k), [src])
    assert again == backends["fastfixed"].binary  # the same sources and headers: the cached binary
    other = csim.build([src / "zoo.cpp", src / "csim_main.cpp"], [src / "zoo.h"],
                       csim.HeaderSet("fastfixed", edited, precompile=False), [src])
    assert other != again and other.parent.parent == cache_dir() / "csim"


@pytest.mark.slow
def test_a_construct_fastfixed_lacks_falls_back_to_the_vendor_headers(tmp_path, capfd):
    k = sgd_kernel()
    write_files(tmp_path, hls.generate(k, VERSION))
    cpp = tmp_path / "src" / "sgd.cpp"
    vendor_only = "int vendor_only() { fixed_16_4_t x = 1.5; return (int)x.to_string().size(); }"
    cpp.write_text(cpp.read_text() + f"\n{vendor_only}\n")
    with KernelRunner(k, CsimBackend(k, tmp_path)) as sim:
        assert sim.backend.headers == "ap_types"
        assert "building with ap_types" in capfd.readouterr().err
        rng = np.random.default_rng(8)
        raw = random_raw(k, ["x", "t"], rng)
        got, want = sim.call_raw("train_step", raw), KernelRunner(k, EmuBackend(k)).call_raw("train_step", raw)
        assert all(np.array_equal(got[n], want[n]) for n in want)
    with pytest.raises(RuntimeError, match="to_string"):  # asked for by name: no fallback
        CsimBackend(k, tmp_path, headers="fastfixed")
