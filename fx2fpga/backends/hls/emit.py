"""HLS C++ for a kernel: ap_fixed buffers, one function per stage, a word-interface top function.

``generate(kernel, version)`` returns the sources of a Vitis HLS project (``src/<name>.h``,
``src/<name>.cpp``, ``src/csim_main.cpp``); ``generate_testbench(kernel, vectors)`` returns a C
testbench replaying golden vectors. The C++ structure lives in ``templates/hls/*.j2``; this
module checks the kernel and prepares names, expressions and numbers for the templates. The
generated code computes exactly what ``fx2fpga_runtime.emulator`` does, bit for bit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import numpy as np
from fx2fpga_runtime import interface, saturation, stochastic
from fx2fpga_runtime.emu_compile import output_interval
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import DDR, GROUP_VAR, MODEL_VAR, Access, Affine, Buffer, Kernel, Stage, stage_lag
from fx2fpga_runtime.ops import (
    NORM_INDEX_BITS,
    OPS_TABLE,
    compare_select_op,
    exact_frac,
    is_compare_select,
    mid_format,
    own_inputs,
    then_relu,
    then_relu_mask,
)

from fx2fpga.errors import Fx2fpgaError
from fx2fpga.version import __version__

from ..common import C_IDENT, KernelCheckError, buffer_banking, check_stage, command_table, template_env

MAX_LITERAL_WIDTH = 53  # init values are written as double literals: exact up to 53 bits
TABLE_RAW_WIDTH = 64  # the table interpolation works on 64-bit raw integers
COMPARE_OPS = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_HLS_TABLE = """\
// piecewise-linear {fn} on raw values: {n} segments of {segment} from {lo}
long long tbl_r = raw_bits({a0});
if (tbl_r < {lo}) tbl_r = {lo};
if (tbl_r > {hi}) tbl_r = {hi};
tbl_r = tbl_r - ({lo});
long long tbl_i = tbl_r >> {shift};
if (tbl_i > {last}) tbl_i = {last};
const long long tbl_t = tbl_r - (tbl_i << {shift});
const long long tbl_lo = raw_bits({buffer}[tbl_i]);
const long long tbl_hi = raw_bits({buffer}[tbl_i + 1]);
ap_fixed<64, {raw_int_bits}> tbl_y;  // the raw result, at the table's fractional bits
tbl_y.range(63, 0) = tbl_lo + (((tbl_hi - tbl_lo) * tbl_t) >> {shift});
{out} = tbl_y;"""
_HLS_NORMALIZED = """\
// a / {what}: the divisor normalized to its {t} leading bits, which read the ROM {rom}
long long nd_b = raw_bits({a1});
if (nd_b < 1) nd_b = 1;
nd_b = nd_b << {odd};
int nd_n = 0;
for (int nd_k = 0; nd_k < 63; nd_k++) {{
    if ((nd_b >> nd_k) != 0) nd_n = nd_k + 1;
}}
const int nd_e = (nd_n + {root} - 1) / {root};
const int nd_s = {root} * nd_e;
const long long nd_m = (nd_s <= {t}) ? (nd_b << ({t} - nd_s)) : (nd_b >> (nd_s - {t}));
const long long nd_p = (raw_bits({a0}) * raw_bits({rom}[nd_m - {m0}])) >> (nd_e - 1);
ap_fixed<64, {raw_int_bits}> nd_y;  // the raw result, at {frac} fractional bits
nd_y.range(63, 0) = nd_p;
{out} = nd_y;"""
# How the C++ spells each op of the table (fx2fpga_runtime/ops.py): an elementwise op, the loop body
# (``{out}`` the output element, ``{T}`` its type, ``{a0}``... the operands; a table: its parameters);
# a reduction, one accumulation step (``{acc}``, ``{acc_type}``; argmax: ``{idx}``, ``{position}``).
# ap_fixed arithmetic computes the exact result; the assignment rounds and saturates like the emulator.
HLS_SPELLING = {
    "copy": "{out} = {a0};",
    "neg": "{out} = -{a0};",
    "relu": "{out} = ({a0} > 0) ? {T}({a0}) : {T}(0);",
    "abs": "{out} = ({a0} < 0) ? {T}(-{a0}) : {T}({a0});",
    "add": "{out} = {a0} + {a1};",
    "sub": "{out} = {a0} - {a1};",
    "mul": "{out} = {a0} * {a1};",
    "msub": "{out} = {a0} - {M}({P});",
    "select": "{out} = ({a0} != 0) ? {T}({a1}) : {T}({a2});",
    **{op: f"{{out}} = ({{C}}({{a0}}) {c} {{C}}({{a1}})) ? {{T}}(1) : {{T}}(0);" for op, c in COMPARE_OPS.items()},
    **{compare_select_op(op): f"{{out}} = ({{C}}({{a0}}) {c} {{C}}({{a1}})) ? {{T}}({{a2}}) : {{T}}({{a3}});"
       for op, c in COMPARE_OPS.items()},
    "table": _HLS_TABLE,
    "div": _HLS_NORMALIZED,
    "div_sqrt": _HLS_NORMALIZED,
    "mac": "{acc} += {a0} * {a1};",
    "sum": "{acc} += {a0};",
    "max": "if ({acc_type}({a0}) > {acc}) {acc} = {a0};",
    "argmax": "if ({acc_type}({a0}) > {acc}) {{\n    {acc} = {a0};\n    {idx} = {position};\n}}",
}
# Names the generated code declares itself; buffers and loop variables must not take them.
_RESERVED = {
    "acc", "acc_idx", "cmd", "in_words", "in_word", "out_words", "offset", "pos", "raw_bits", "tbl_r", "tbl_i", "tbl_t",
    "tbl_lo", "tbl_hi", "tbl_y", "nd_b", "nd_n", "nd_k", "nd_e", "nd_s", "nd_m", "nd_p", "nd_y", "main",
    "sat_t", "sat_v", "sat_count", "sat_check", "read_saturation", "sr_t", "sr_v", "sr_call", "sr_calls", "sr_delta",
    "SR_STEP", "ddr_v",
    "IN_WORDS", "OUT_WORDS",
    "auto", "bool", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "int", "long", "register", "return", "short",
    "signed", "sizeof", "static", "struct", "switch", "typedef", "union", "unsigned", "void",
    "volatile", "while", "class", "delete", "new", "this", "template", "namespace", "using",
}


class HlsCodegenError(Fx2fpgaError, ValueError):
    """A kernel the HLS C++ generator cannot print exactly; the message says what to change."""


# ----- names and literals --------------------------------------------------------------------------

def type_name(fmt: Fixed) -> str:
    """The typedef of a format: ``fixed_16_6_t``, ``ufixed_8_0_trn_wrap_t``, ``fixed_8_m2_t``."""
    kind = "fixed" if fmt.signed else "ufixed"
    ib = f"m{-fmt.int_bits}" if fmt.int_bits < 0 else str(fmt.int_bits)
    modes = "" if (fmt.rounding, fmt.overflow) == ("RND", "SAT") else f"_{fmt.rounding}_{fmt.overflow}".lower()
    return f"{kind}_{fmt.width}_{ib}{modes}_t"


def literal(raw: int, fmt: Fixed) -> str:
    """An exact C++ double literal of the value ``raw / 2**frac_bits`` (shortest round-trip form)."""
    return repr(math.ldexp(float(raw), -fmt.frac_bits))


def common_type(fmts: list[Fixed]) -> str:
    """A signed ``ap_fixed`` that holds every value of ``fmts`` exactly: operands compare in it (ap_types compares
    ``ap_fixed<31,-3>`` with ``ap_ufixed<30,24>`` wrongly: -0.04 < 0 is false; fuzz case 196)."""
    frac = max(f.frac_bits for f in fmts)
    int_bits = max(_signed_int_bits(f) for f in fmts)
    return f"ap_fixed<{max(1, int_bits + frac)},{int_bits}>"


def storage_name(fmt: Fixed) -> str:
    """The typedef of the element type of a DDR buffer of format ``fmt``: ``ddr_fixed_24_8_t``, its value in a power
    of two of bits (``interface.ddr_storage_type``: ``ap_fixed<32,16,AP_TRN,AP_WRAP>``)."""
    return f"ddr_{type_name(fmt)}"


def _c_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return name if name[:1].isalpha() else f"s_{name}"


# ----- checks ---------------------------------------------------------------------------------------

def _check_buffer(buf: Buffer, name: str, crosses_interface: bool) -> None:
    if not C_IDENT.match(buf.name) or buf.name in _RESERVED or re.match(r"^i\d+$", buf.name) or buf.name != name:
        raise HlsCodegenError(f"buffer name {buf.name!r} is not usable as a C++ name; rename it")
    if crosses_interface and buf.fmt.width > interface.MAX_PORT_WIDTH:
        raise HlsCodegenError(
            f"buffer {buf.name} ({buf.fmt}) crosses the {interface.MAX_PORT_WIDTH}-bit word interface; "
            f"use a format of at most {interface.MAX_PORT_WIDTH} bits"
        )
    if buf.init is not None:
        if len(buf.init) != buf.size:
            raise HlsCodegenError(f"buffer {buf.name}: init has {len(buf.init)} values for shape {buf.shape}")
        if buf.fmt.width > MAX_LITERAL_WIDTH:
            raise HlsCodegenError(f"buffer {buf.name}: init values wider than {MAX_LITERAL_WIDTH} bits")
        if buf.init and (min(buf.init) < buf.fmt.raw_min or max(buf.init) > buf.fmt.raw_max):
            raise HlsCodegenError(f"buffer {buf.name}: init raw values exceed its format {buf.fmt}")


# ----- views for the templates ------------------------------------------------------------------------

@dataclass
class LoopView:
    """One ``for`` loop: ``label: for (int var = 0; var < bound; var += step)``."""

    label: str
    var: str
    bound: int
    step: int = 1
    pipeline: bool = False
    unroll: bool = False
    bind: str = ""  # lane loops: the stage variable bound to base + lane
    base: str = ""
    guard: int = 0  # lane loops whose lanes do not divide the extent: run only while bind < guard


@dataclass
class StageView:
    func: str
    stage: Stage
    kind: str  # "elementwise" | "reduce"
    out: str
    out_type: str
    ins: list[str]
    loops: list[LoopView] = field(default_factory=list)  # elementwise nest, or the kept loops
    red_loops: list[LoopView] = field(default_factory=list)
    lane: LoopView | None = None  # reductions with lanes: the unrolled lane loop (and its copies)
    lane_init: LoopView | None = None
    lane_write: LoopView | None = None
    acc_type: str = ""
    init: str = ""  # C expression the accumulator starts from
    position: str = ""  # argmax: the flat index of the current reduction point
    body: str = ""  # the op's C++ (HLS_SPELLING): an elementwise loop body, or a reduction's step
    sat: dict | None = None  # its saturation counter (``_saturation_check``), when it has one
    sr: dict | None = None  # its stochastic rounding (``_stochastic``), when its output rounds SR
    result: str = ""  # reductions: the value assigned to the output (the accumulator, plus SR's random bits)
    out_cast: str = ""  # reductions into a DDR buffer: its own type, the result converted to it before the write
    relu: bool = False  # a mac fused with the ReLU reading it: the assigned result goes through ReLU (fuse.py)
    gate: str = ""  # a mac fused with ReLU's backward: C expression of its gate (0 is written where it is <= 0)
    ddr_args: list[str] = field(default_factory=list)  # the DDR buffers it touches: its m_axi arguments
    ddr_params: list[str] = field(default_factory=list)  # their declarations, as the function's parameters


def _rename_vars(st: Stage, taken) -> Stage:
    """``st`` with loop variables renamed where they clash with buffers or generated names."""
    names = {lp.var for lp in st.loops}

    def clash(name: str, var: str) -> bool:
        used = taken | (names - {var})
        return name in used or name in _RESERVED or f"{name}_base" in used or f"{name}_lane" in used

    new = {}
    for var in sorted(names):
        name = var
        while clash(name, var):
            name += "_"
        new[var] = name
    if all(k == v for k, v in new.items()):
        return st

    def aff(i: Affine) -> Affine:
        return Affine(tuple((new[v], c) for v, c in i.terms), i.const, i.div, i.mod)

    def acc(a: Access) -> Access:
        return Access(a.buffer, tuple(aff(i) for i in a.index), tuple(replace(g, expr=aff(g.expr)) for g in a.guard))

    return replace(st, loops=tuple(replace(lp, var=new[lp.var]) for lp in st.loops), out=acc(st.out),
                   ins=tuple(acc(a) for a in st.ins), reduce=tuple(new[v] for v in st.reduce),
                   lane_var=new.get(st.lane_var, st.lane_var))


def _load(a: Access, kernel: Kernel) -> str:
    """C expression of a read of ``a`` (its guard left out): a DDR buffer's element is its storage type
    (``storage_name``), converted explicitly to the buffer's own type, so every expression reading it has the types
    it has on chip."""
    buf = kernel.buffers[a.buffer]
    return f"{type_name(buf.fmt)}({a.c_expr()})" if buf.place == DDR else a.c_expr()


def _stored(body: str, out: str, buf: Buffer) -> str:
    """``body``, whose last line assigns a value to ``out``, with that value converted to the buffer's own type first
    where ``buf`` is in DDR: the conversion rounds and saturates as the buffer's format does, then the storage type
    (wider, the same fraction bits) takes the result exactly. An on-chip buffer's body is returned unchanged."""
    if buf.place != DDR:
        return body
    head, _, last = body.rpartition("\n")
    if not (last.startswith(f"{out} = ") and last.endswith(";")):
        raise HlsCodegenError(f"buffer {buf.name}: the write {last!r} does not assign {out}")
    value = last[len(out) + 3:-1]
    return f"{head}\n" * bool(head) + f"{out} = {type_name(buf.fmt)}({value});"


def _read(a: Access, kernel: Kernel, fallback: tuple[Fixed, int] | None = None) -> str:
    """C expression of an operand; a guarded one reads 0 (or the raw ``fallback``) where its guard fails."""
    if not a.guard:
        return _load(a, kernel)
    fmt, raw = fallback or (kernel.buffers[a.buffer].fmt, 0)
    t = type_name(fmt)
    return f"({a.guard_expr()} ? {t}({a.c_expr()}) : {t}({literal(raw, fmt)}))"


def _flat_position(st: Stage) -> str:
    """C expression of the row-major position over the reduce loops (argmax's index)."""
    expr, stride = [], 1
    for lp in reversed([lp for lp in st.loops if lp.var in st.reduce]):
        expr.append(lp.var if stride == 1 else f"{stride}*{lp.var}")
        stride *= lp.extent
    return " + ".join(reversed(expr))


def _zero_vars(acc: Access, names) -> Access:
    """``acc`` with the loop variables ``names`` replaced by 0 (their first reduction point)."""
    idx = tuple(Affine(tuple((v, c) for v, c in a.terms if v not in names), a.const, a.div, a.mod) for a in acc.index)
    return Access(acc.buffer, idx)


def _lane_loops(st: Stage, loops) -> tuple[list[LoopView], LoopView | None]:
    """Stage loops as C loops; with lanes, the lane variable steps by ``lanes`` and gets a lane loop."""
    views, lane = [], None
    for lp in loops:
        if st.lanes > 1 and lp.var == st.lane_var:
            lanes = min(st.lanes, lp.extent)
            base = f"{lp.var}_base"
            views.append(LoopView(f"{lp.var}_loop", base, lp.extent, step=lanes))
            guard = lp.extent if lp.extent % lanes else 0
            lane = LoopView(f"{lp.var}_lanes", f"{lp.var}_lane", lanes, unroll=True, bind=lp.var, base=base,
                            guard=guard)
        else:
            views.append(LoopView(f"{lp.var}_loop", lp.var, lp.extent))
    return views, lane


def _operands(ins: list[str]) -> dict[str, str]:
    return {f"a{i}": x for i, x in enumerate(ins)}


def _table_params(st: Stage, kernel: Kernel) -> dict:
    """The numbers the table's spelling prints: its ROM, segments and raw range."""
    tbl = kernel.buffers[st.attrs["table"]]
    n, lo, shift = tbl.size - 1, int(st.attrs["lo"]), int(st.attrs["shift"])
    return {"buffer": tbl.name, "n": n, "last": n - 1, "lo": lo, "hi": lo + (n << shift), "shift": shift,
            "segment": 2 ** shift, "raw_int_bits": TABLE_RAW_WIDTH - tbl.fmt.frac_bits,
            "fn": st.attrs.get("fn", "") or "table"}


def _normalized_params(st: Stage, kernel: Kernel) -> dict:
    """The numbers ``div``'s and ``div_sqrt``'s spelling prints (``ops._normalized_division`` is the model)."""
    root = 2 if st.op == "div_sqrt" else 1
    fr = [kernel.buffers[a.buffer].fmt.frac_bits for a in st.ins]
    frac = exact_frac(OPS_TABLE[st.op], fr, st, kernel)
    return {"what": "sqrt(b)" if root == 2 else "b", "t": NORM_INDEX_BITS, "rom": st.attrs["rom"], "root": root,
            "odd": fr[1] % root, "m0": 1 << (NORM_INDEX_BITS - root), "frac": frac, "raw_int_bits": 64 - frac}


# ----- saturation counters (docs/saturation.md) ----------------------------------------------------------

def _signed_bits(v: int) -> int:
    """Bits of the smallest two's-complement integer holding ``v``."""
    return (v if v >= 0 else -v - 1).bit_length() + 1


def _saturation_check(st: Stage, kernel: Kernel, counter: int) -> dict:
    """The counter of a stage's output: the check type ``sat_t`` (the output's fraction bits and rounding, wide
    enough that the rounded value assigned to the output never wraps in it), the output's raw range, the index."""
    fmt = kernel.buffers[st.out.buffer].fmt
    iv, frac = output_interval(st, kernel)
    lo, hi = iv if iv is not None else (-(1 << 63), (1 << 63) - 1)  # div: a 64-bit raw result
    shift = frac - fmt.frac_bits
    lo, hi = (lo >> shift, (hi >> shift) + 1) if shift > 0 else (lo << -shift, hi << -shift)
    width = max(_signed_bits(v) for v in (lo, hi, fmt.raw_min, fmt.raw_max))
    if width > TABLE_RAW_WIDTH:
        raise HlsCodegenError(f"stage {st.name}: its saturation counter would check {width}-bit values (at most "
                              f"{TABLE_RAW_WIDTH}); compile without saturation_counters")
    return {"type": f"ap_fixed<{width},{width - fmt.frac_bits},AP_{fmt.cpp_rounding},AP_WRAP>",
            "lo": f"{fmt.raw_min}LL", "hi": f"{fmt.raw_max}LL", "k": counter}


def _counted_body(body: str, out: str, sat: dict) -> str:
    """An elementwise body that assigns ``sat_v`` (``sat_t``), counts it, then assigns it to ``out``."""
    return (f"sat_t sat_v;\n{body}\nsat_check(sat_v, {sat['lo']}, {sat['hi']}, {sat['k']});\n"
            f"{out} = sat_v;")


# ----- stochastic rounding (fx2fpga_runtime/stochastic.py) ----------------------------------------------

def _stochastic(st: Stage, renamed: Stage, kernel: Kernel) -> dict | None:
    """How ``st`` (its loops named as in ``renamed``) rounds its output ``SR``: ``delta``, the C++ of its random
    bits ``R`` at the exact value's lsb, and ``type``, a type that holds the exact value (``sr_t``). None where
    the output does not round SR or its assignments drop no bits."""
    if not stochastic.rounds_stochastic(st, kernel):
        return None
    fmt = kernel.buffers[st.out.buffer].fmt
    iv, frac = output_interval(st, kernel)
    shift = frac - fmt.frac_bits
    if shift <= 0:
        return None
    if OPS_TABLE[st.op].accumulate == "argmax":
        raise HlsCodegenError(f"stage {st.name}: argmax writes positions; give {st.out.buffer} a format with at least "
                              f"0 fraction bits or a rounding other than SR")
    key = stochastic.stage_key(kernel.meta.get(stochastic.SEED_KEY, 0), st.out.buffer)
    names = {old.var: new.var for old, new in zip(st.loops, renamed.loops, strict=True)}
    point = stochastic.point_affine(st)
    point = replace(point, terms=tuple((names[v], c) for v, c in point.terms))
    width = _interval_bits(iv if iv is not None else (-(1 << 63), (1 << 63) - 1))  # div: a 64-bit raw result
    # R's top min(shift, 32) bits, the random word's top bits, at weights 2**-(fmt.frac_bits + 1) and below
    delta = f"sr_delta<{min(shift, 32)},{-fmt.frac_bits}>(sr_call + {key:#x}u + ({point.c_expr()}))"
    return {"type": f"ap_fixed<{width},{width - frac},AP_TRN,AP_WRAP>", "delta": delta}


def _reaching_lsb(st: Stage, kernel: Kernel, fmt: Fixed | None = None) -> str | None:
    """A type for the value a stage assigns to its output whose bits reach the bit below the output's LSB, where
    the value's own type may not: the ``ap_types`` headers abort ("Attempting to read bit beyond MSB") when a
    rounding reads a bit above the source's MSB (docs/fuzzing.md). ``fmt``: the source's format (a reduction's
    accumulator); else the exact result's range. None where no bit is missing."""
    out = kernel.buffers[st.out.buffer].fmt
    if fmt is not None:
        return reaching_type(_signed_int_bits(fmt), fmt.frac_bits, out)
    iv, frac = output_interval(st, kernel)
    if iv is None:
        return None
    return reaching_type(_interval_bits(iv) - frac, frac, out)


def _interval_bits(iv: tuple[int, int]) -> int:
    """Bits of the smallest two's-complement integer holding every raw value in ``iv``."""
    return max(_signed_bits(iv[0]), _signed_bits(iv[1]))


def _signed_int_bits(fmt: Fixed) -> int:
    """Integer bits of the signed type that holds ``fmt``."""
    return fmt.int_bits + (0 if fmt.signed else 1)


def reaching_type(int_bits: int, frac: int, target: Fixed) -> str | None:
    """A signed type holding a source (``int_bits``, ``frac``: its signed integer and fraction bits) whose MSB
    reaches the bit below ``target``'s LSB, where the source drops bits and its own MSB does not reach it (the
    ``ap_types`` abort, ``_reaching_lsb``); None where no bit is missing."""
    if frac <= target.frac_bits or int_bits > -target.frac_bits:
        return None
    int_bits = 1 - target.frac_bits
    return f"ap_fixed<{int_bits + frac},{int_bits},AP_TRN,AP_WRAP>"


def _rounded_body(body: str, out: str, sr: dict) -> str:
    """An elementwise body that assigns the exact value to ``sr_v`` (``sr_t``), then ``sr_v`` plus the random
    bits to ``out``: the output's truncation is ``floor((raw + R) / 2**shift)``."""
    return f"sr_t sr_v;\n{body}\n{out} = sr_v + {sr['delta']};"


def _elementwise_params(st: Stage, kernel: Kernel, ins: list[str]) -> dict:
    """The numbers and types an elementwise op's spelling prints besides its operands ``ins``."""
    spec = OPS_TABLE[st.op]
    params = _table_params(st, kernel) if spec.reads_table else {}
    if "rom" in spec.attrs:
        params = _normalized_params(st, kernel)
    if "mid" in spec.attrs:
        params["M"] = type_name(mid_format(st))
        b, c = (kernel.buffers[a.buffer].fmt for a in st.ins[1:3])
        wide = reaching_type(_signed_int_bits(b) + _signed_int_bits(c), b.frac_bits + c.frac_bits, mid_format(st))
        params["P"] = f"{wide}({ins[1]} * {ins[2]})" if wide else f"{ins[1]} * {ins[2]}"  # the product
    if st.op in COMPARE_OPS or is_compare_select(st.op):  # a comparison (fused with its select: its first two)
        params["C"] = common_type([kernel.buffers[a.buffer].fmt for a in st.ins[:2]])
    return params


def _stage_view(st: Stage, kernel: Kernel, func: str, counter: int | None = None, sr: dict | None = None) -> StageView:
    out_fmt = kernel.buffers[st.out.buffer].fmt
    spec = OPS_TABLE[st.op]
    if not st.reduce:
        loops, lane = _lane_loops(st, st.loops)
        if loops:
            loops[-1].pipeline = True  # the innermost loop that is not unrolled
        ins = [_read(a, kernel) for a in st.ins]
        params = _elementwise_params(st, kernel, ins)
        sat = None if counter is None else _saturation_check(st, kernel, counter)
        out, T = ("sat_v", "sat_t") if sat else (st.out.c_expr(), type_name(out_fmt))
        wide = None if sr or sat else _reaching_lsb(st, kernel)
        if wide:  # the exact value in a type reaching the output's LSB, then assigned
            body = (f"{wide} lsb_v;\n" + HLS_SPELLING[st.op].format(out="lsb_v", T=wide, **_operands(ins), **params)
                    + f"\n{out} = lsb_v;")
        elif sr is None:
            body = HLS_SPELLING[st.op].format(out=out, T=T, **_operands(ins), **params)
        else:
            body = _rounded_body(HLS_SPELLING[st.op].format(out="sr_v", T="sr_t", **_operands(ins), **params), out, sr)
        if sat:
            body = _counted_body(body, st.out.c_expr(), sat)
        body = _stored(body, st.out.c_expr(), kernel.buffers[st.out.buffer])
        return StageView(func, st, "elementwise", st.out.c_expr(), type_name(out_fmt), ins,
                         loops + ([lane] if lane else []), body=body + "\n", sat=sat, sr=sr)
    keep = [lp for lp in st.loops if lp.var not in st.reduce]
    loops, lane = _lane_loops(st, keep)
    red = [LoopView(f"{lp.var}_loop", lp.var, lp.extent) for lp in st.loops if lp.var in st.reduce]
    red[-1].pipeline = True
    operands = spec.arity
    skip = (st.acc, st.acc.raw_min) if spec.skips_guarded else None  # a guarded-off point is skipped
    ins = [_read(a, kernel, skip) for a in st.ins[:operands]]
    if spec.acc_init == "minimum":  # max, argmax: the operand is assigned to the accumulator's format
        a0 = kernel.buffers[st.ins[0].buffer].fmt
        wide = reaching_type(_signed_int_bits(a0), a0.frac_bits, st.acc)
        ins[0] = f"{wide}({ins[0]})" if wide else ins[0]
    if len(own_inputs(st)) > operands:
        init = _load(_zero_vars(st.ins[operands], st.reduce), kernel)
    elif spec.acc_init == "minimum":
        init = literal(st.acc.raw_min, st.acc)
    else:
        init = "0"
    position = _flat_position(st) if spec.accumulate == "argmax" else ""
    acc, idx = (f"acc[{lane.var}]", f"acc_idx[{lane.var}]") if lane else ("acc", "acc_idx")
    body = HLS_SPELLING[st.op].format(acc=acc, idx=idx, acc_type=type_name(st.acc), position=position,
                                      **_operands(ins))
    wide = _reaching_lsb(st, kernel, st.acc) if not position and sr is None else None
    result = idx if position else (f"{wide}({acc})" if wide else acc) if sr is None else f"{acc} + {sr['delta']}"
    view = StageView(func, st, "reduce", _zero_vars(st.out, st.reduce).c_expr(), type_name(out_fmt), ins,
                     loops, red, lane, acc_type=type_name(st.acc), init=init, position=position, body=body + "\n",
                     sat=None if counter is None else _saturation_check(st, kernel, counter), sr=sr, result=result,
                     out_cast=type_name(out_fmt) if kernel.buffers[st.out.buffer].place == DDR else "",
                     relu=then_relu(st), gate=_read(st.ins[-1], kernel) if then_relu_mask(st) else "")
    if lane:  # loop labels are per function: each copy of the lane loop gets its own
        view.lane_init = replace(lane, label=f"{lane.label}_init")
        view.lane_write = replace(lane, label=f"{lane.label}_write")
    return view


def _partitions(kernel: Kernel) -> list[dict]:
    """ARRAY_PARTITION pragmas: cyclic on every dim of an on-chip buffer the banking rule splits
    (``common.buffer_banking``), complete where each element gets its own bank."""
    out = []
    for name, spec in sorted(buffer_banking(kernel, serial_drains=False).items()):
        if kernel.buffers[name].place == DDR:  # an m_axi port is one memory: nothing to partition
            continue
        for dim, factor in spec.partitions():
            size = spec.shape[dim - 1]
            out.append({"buffer": name, "dim": dim, "factor": factor if factor < size else 0})  # 0: complete
    return out


def _buffer_view(buf: Buffer, table: bool = False) -> dict:
    """A buffer for the templates; a function table is a ROM of raw integers (``ap_int<W>``: g++
    compiles those far faster than thousands of ``ap_fixed`` built from double literals)."""
    words = [literal(r, buf.fmt) for r in buf.init] if buf.init is not None else None
    if table and words is not None:
        words = [str(int(r)) for r in buf.init]
    loops = [LoopView(f"i{d}_loop", f"i{d}", n) for d, n in enumerate(buf.shape)]
    if loops:
        loops[-1].pipeline = True
    raw_type = f"ap_{'' if buf.fmt.signed else 'u'}int<{buf.fmt.width}>"
    own = raw_type if table else type_name(buf.fmt)
    return {"name": buf.name, "type": storage_name(buf.fmt) if buf.place == DDR else own, "value_type": own,
            "fmt": str(buf.fmt), "role": buf.role,
            "dims": "".join(f"[{n}]" for n in buf.shape), "index": "".join(f"[{lp.var}]" for lp in loops),
            "loops": loops, "shape": list(buf.shape), "init": words, "const": buf.role == "const" and words is not None,
            "source": buf.source, "width": buf.fmt.width, "size": buf.size, "ddr": buf.place == DDR,
            "param": _ddr_param(buf)}


def _ddr_param(buf: Buffer) -> str:
    """A DDR buffer as a function parameter: ``ddr_fixed_24_8_t conv1_weight[4][1][3][3]`` (a pointer to its rows,
    read and written with the same indices as the on-chip array; its element the storage type, ``storage_name``)."""
    return f"{storage_name(buf.fmt)} {buf.name}{''.join(f'[{n}]' for n in buf.shape)}"


def ddr_bundles(kernel: Kernel) -> list[str]:
    """The m_axi bundle of each DDR buffer (``kernel.ddr_buffers()`` order): ``gmem1``, ``gmem2``, ... (``gmem``
    carries ``in_words`` and ``out_words``)."""
    return [f"gmem{k}" for k in range(1, len(kernel.ddr_buffers()) + 1)]


def _ddr_touched(kernel: Kernel, stages: list[Stage]) -> list[str]:
    """The DDR buffers (``Buffer.place``) that ``stages`` read or write, in declaration order."""
    touched = {a.buffer for st in stages for a in (st.out, *st.ins)}
    return [n for n in kernel.ddr_buffers() if n in touched]


def _unpack_view(kernel: Kernel, view: dict) -> dict:
    """A buffer the host sends, as its unpack function reads it: one unit per loop body (``unit_words`` words, low
    first), which carries the values ``fields`` (``interface.py``'s word packing: along ``dim``, ``per_word``
    values of ``width`` bits)."""
    dim, per_word = interface.word_packing(kernel).get(view["name"], (0, 1))
    if per_word == 1:
        return view
    loops = [replace(lp, step=per_word) if d == dim else lp for d, lp in enumerate(view["loops"])]
    width = view["width"]
    fields = [{"index": "".join(f"[{lp.var} + {lane}]" if d == dim and lane else f"[{lp.var}]"
                                for d, lp in enumerate(loops)),
               "lo": lane * width, "mask": hex((1 << width) - 1)} for lane in range(per_word)]
    unit = interface.unit_words(kernel, view["name"])
    return {**view, "loops": loops, "fields": fields, "unit_words": unit,
            "words": view["size"] // per_word * unit}


def _context(kernel: Kernel, version: str) -> dict:
    if not C_IDENT.match(kernel.name):
        raise HlsCodegenError(f"kernel name {kernel.name!r} is not a C++ identifier")
    for prog in kernel.programs.values():
        for n in [*prog.inputs, *prog.outputs, *kernel.params]:
            if n not in kernel.buffers:
                raise HlsCodegenError(f"program {prog.name!r} or the parameter list names an unknown buffer {n!r}")
    commands = command_table(kernel)
    crossing = {p.buffer for c in commands for p in c.ins + c.outs}
    for name, buf in kernel.buffers.items():
        _check_buffer(buf, name, name in crossing)
    formats = {b.fmt for b in kernel.buffers.values()} | {s.acc for s in kernel.stages() if s.acc is not None}
    formats |= {mid_format(s) for s in kernel.stages() if "mid" in s.attrs}
    types = [{"name": type_name(f), "cpp": f.cpp(), "fmt": str(f)} for f in sorted(formats)]
    types += [{"name": storage_name(f), "cpp": interface.ddr_storage_type(f),
               "fmt": f"{f} in DDR: {8 * interface.ddr_element_bytes(f.width)} bits, the same fraction bits"}
              for f in sorted({kernel.buffers[n].fmt for n in kernel.ddr_buffers()})]
    counters = _counters(kernel)
    programs, funcs = [], {}  # funcs: C function name -> (the IR stage, its view)
    sr_programs = 0  # programs with a stage that rounds SR: each has a call counter
    taken = set(kernel.buffers) | {t["name"] for t in types} | {GROUP_VAR}
    for prog in kernel.programs.values():
        views = []
        for st in prog.stages:
            try:
                check_stage(st, kernel, f"stage {st.name!r} of program {prog.name!r}", prog.groups)
            except KernelCheckError as e:
                raise HlsCodegenError(str(e)) from None
            func = _c_name(f"stage_{st.name}")
            if func in funcs and funcs[func][0] is not st:  # same name, another stage: prefix the program
                func = _c_name(f"stage_{prog.name}_{st.name}")
            while func in taken or (func in funcs and funcs[func][0] is not st):
                func += "_"
            if func not in funcs:
                renamed = _rename_vars(st, taken)
                view = _stage_view(renamed, kernel, func, counters.get(st.out.buffer), _stochastic(st, renamed, kernel))
                view.ddr_args = _ddr_touched(kernel, [st])
                view.ddr_params = [_ddr_param(kernel.buffers[n]) for n in view.ddr_args]
                funcs[func] = (st, view)
            views.append(funcs[func][1])
        ddr_args = _ddr_touched(kernel, [v.stage for v in views])
        size = next((lp.extent for st in prog.stages for lp in st.loops if lp.var == MODEL_VAR), 1)
        rounds_sr = any(view.sr for view in views)
        programs.append({"name": prog.name, "func": f"run_{prog.name}", "stages": views,
                         "inputs": prog.inputs, "outputs": prog.outputs, "groups": prog.groups, "group_size": size,
                         "passes": prog.passes, "lags": [stage_lag(st) for st in prog.stages],
                         "sr_call": f"sr_calls[{sr_programs}]" if rounds_sr else "", "ddr_args": ddr_args,
                         "ddr_params": [_ddr_param(kernel.buffers[n]) for n in ddr_args]})
        sr_programs += rounds_sr
    unpacked = sorted({p.buffer for c in commands for p in c.ins}, key=list(kernel.buffers).index)
    packed = sorted({p.buffer for c in commands for p in c.outs}, key=list(kernel.buffers).index)
    in_words, out_words = interface.port_words(kernel)
    sat = _saturation_command(kernel, counters)
    if sat:
        out_words = max(out_words, sat["out_words"])
    tables = {st.attrs["table"] for st in kernel.stages() if OPS_TABLE[st.op].reads_table}
    buffers = [_buffer_view(b, b.name in tables) for b in kernel.buffers.values()]
    by_name = {b["name"]: b for b in buffers}
    ddr = [{**b, "bundle": bundle} for b, bundle in zip((b for b in buffers if b["ddr"]), ddr_bundles(kernel),
                                                          strict=True)]
    return {
        "banner": f"// Automatically generated by fx2fpga {version} -- do not edit.",
        "version": version, "name": kernel.name, "guard": f"{kernel.name.upper()}_H",
        "types": types, "buffers": buffers, "programs": programs, "commands": commands,
        "stages": [view for _, view in funcs.values()],
        "in_words": in_words, "out_words": out_words, "partitions": _partitions(kernel),
        "unpacked": [_unpack_view(kernel, by_name[n]) for n in unpacked], "packed": [by_name[n] for n in packed],
        "saturation": sat, "ddr": ddr, "ddr_names": [b["name"] for b in ddr],
        "top_params": ",\n    ".join(["int cmd, const int in_words[IN_WORDS], int out_words[OUT_WORDS]",
                                     *(b["param"] for b in ddr)]),  # a DDR buffer a line
        "ddr_args": "".join(f", {b['name']}" for b in ddr),  # a harness's call of the top function
        "run_args": {p["name"]: ", ".join(p["ddr_args"]) for p in programs},
        "stochastic": {"programs": sr_programs, "step": f"{stochastic.STEP:#x}", "shifts": stochastic.XORSHIFT,
                       "rounds": stochastic.ROUNDS} if sr_programs else None,
    }


def _counters(kernel: Kernel) -> dict[str, int]:
    """Each counted buffer's counter index (``saturation.counter_buffers``); none without the counters."""
    if not saturation.hardware_counters(kernel):
        return {}
    return {name: k for k, name in enumerate(saturation.counter_buffers(kernel))}


def _saturation_command(kernel: Kernel, counters: dict[str, int]) -> dict | None:
    """The ``read_saturation`` command for the templates (None without the counters)."""
    if not saturation.hardware_counters(kernel):
        return None
    return {"const": f"CMD_{saturation.COMMAND.upper()}", "code": interface.COMMANDS[saturation.COMMAND],
            "out_words": len(counters), "size": max(len(counters), 1), "buffers": list(counters)}


# ----- public API ----------------------------------------------------------------------------------------

def generate(kernel: Kernel, version: str) -> dict[str, str]:
    """The HLS sources of ``kernel``: relative path -> file text."""
    ctx = _context(kernel, version)
    env = template_env()
    return {
        f"src/{kernel.name}.h": env.get_template("hls/kernel.h.j2").render(ctx),
        f"src/{kernel.name}.cpp": env.get_template("hls/kernel.cpp.j2").render(ctx),
        "src/csim_main.cpp": env.get_template("hls/csim_main.cpp.j2").render(ctx),
    }


def generate_testbench(kernel: Kernel, vectors: list[tuple[str, np.ndarray, np.ndarray]],
                       version: str = "") -> dict[str, str]:
    """A C testbench (``src/tb_<name>.cpp`` + its data header) replaying ``(command, in, expected out)``."""
    ctx = _context(kernel, version or __version__)
    codes = {c.name: c for c in ctx["commands"]}
    vecs = []
    for i, (cmd, words_in, words_out) in enumerate(vectors):
        if cmd not in codes:
            raise HlsCodegenError(f"test vector {i}: unknown command {cmd!r}; known: {', '.join(codes)}")
        win = [int(w) for w in np.asarray(words_in, dtype=np.int64).reshape(-1)]
        wout = [int(w) for w in np.asarray(words_out, dtype=np.int64).reshape(-1)]
        if len(win) != codes[cmd].in_words or len(wout) != codes[cmd].out_words:
            raise HlsCodegenError(
                f"test vector {i} ({cmd}): {len(win)} in / {len(wout)} out words, the command moves "
                f"{codes[cmd].in_words} / {codes[cmd].out_words}"
            )
        vecs.append({"index": i, "command": codes[cmd], "ins": win, "outs": wout})
    ctx = {**ctx, "vectors": vecs, "data_header": f"tb_{kernel.name}_data.h"}
    env = template_env()
    return {
        f"src/tb_{kernel.name}.cpp": env.get_template("hls/tb.cpp.j2").render(ctx),
        f"src/{ctx['data_header']}": env.get_template("hls/tb_data.h.j2").render(ctx),
    }

