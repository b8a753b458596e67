"""SystemVerilog for a kernel: a CIRCT-built controller plus Jinja datapath, memories and top.

``generate(kernel, version)`` returns the ``rtl/`` files of a project folder:

- ``<name>_ctrl.sv``, ``<name>_fsm.sv``, ``<name>_fsm_enum_typedefs.sv``: the controller (FSM, shared
  loop counters, drain, address generators, port multiplexing), built as CIRCT IR in
  ``controller.py`` and lowered by CIRCT;
- ``<name>_p<id>_<stage>.sv``: one datapath unit per stage (``templates/rtl/unit.sv.j2``):
  ``lanes`` copies of a multiply-accumulate, sum, max, elementwise or table pipeline;
- ``fx2fpga_cvt_*.sv``: one module per distinct fixed-point assignment (rounding, then
  saturation or wrap: ``fixed.py``'s ``from_raw`` in gates);
- ``fx2fpga_ram*.sv``/``fx2fpga_rom*.sv``: memories written for block-RAM inference, one per
  buffer bank, initialized from ``mem/*.hex`` (``$readmemh``, paths relative to ``rtl/``);
- ``fx2fpga_mult.sv``: one DSP-block-sized partial product with its registers, a hierarchy level
  synthesis keeps (so no two blocks share an operand register); ``fx2fpga_mac.sv``: a MAC engine lane
  multiplying and accumulating in one DSP block;
- ``<name>_top.sv``: the word-stream top the Verilator harness (``sim_main.cpp``) drives;
- ``files.f``: the sources in compile order.

The datapath computes exactly what ``fx2fpga_runtime.emulator`` does, bit for bit; cycle
counts follow ``passes/schedule.py``. This module prepares names and numbers; the Verilog
text is in the templates.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from fx2fpga_runtime import interface, saturation, stochastic
from fx2fpga_runtime.emu_compile import can_overflow
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ops import (
    NORM_INDEX_BITS,
    OPS_TABLE,
    alignment_shifts,
    compare_select_op,
    exact_frac,
    mid_format,
    own_inputs,
    then_relu,
    then_relu_mask,
)

from ...errors import Fx2fpgaError
from ...passes import resources, streams
from ...passes import schedule as sched
from ...passes.estimate import DSP_PORTS, multiplier_pieces
from ...passes.resources import unit_stages
from ...passes.schedule import Phase, Schedule, bits
from ..common import check_stage, command_table, template_env
from . import controller

WORD_BITS = interface.MAX_PORT_WIDTH
IN_BITS = interface.MAX_UNIT_BITS  # the core's input port: the next two words (an issue takes one, or a unit of two)
ROUNDING_CODES = ("RND", "TRN", "RND_ZERO", "RND_CONV", "TRN_ZERO")
COMPARE_OPS = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


@dataclass(frozen=True)
class RtlSpelling:
    """How the datapath (templates/rtl/unit.sv.j2) spells one op of the table (fx2fpga_runtime/ops.py).

    ``width(w, s)``: bits of the exact result of an elementwise op, or of a reduction's term, from the
    operands' signed widths ``w`` and alignment shifts ``s`` (None: the accumulator's or the table
    unit's own). ``expr``: one lane's exact result, over ``{a0}``... (the operands as signed numbers),
    ``{x0}``... (the same cast to ``cast(w, s)`` bits, else the result's, and aligned), ``{w0}``...
    (their widths), ``{rw}`` (the result's width) and ``{l}`` (the lane); a multiply reads the shared
    multiplier's product ``prod_{l}``."""

    width: Callable[[list[int], list[int]], int] | None
    expr: str = ""
    cast: Callable[[list[int], list[int]], int] | None = None


def _aligned_sum_width(w: list[int], s: list[int]) -> int:
    return max(w[0] + s[0], w[1] + s[1]) + 1


RTL_SPELLING = {
    "copy": RtlSpelling(lambda w, s: w[0], "{a0}"),
    "neg": RtlSpelling(lambda w, s: w[0] + 1, "-{x0}"),
    "relu": RtlSpelling(lambda w, s: w[0], "({w0}'sd0 < {a0}) ? {a0} : '0"),
    "abs": RtlSpelling(lambda w, s: w[0] + 1, "({a0} < {w0}'sd0) ? -{x0} : {x0}"),
    "add": RtlSpelling(_aligned_sum_width, "{x0} + {x1}"),
    "sub": RtlSpelling(_aligned_sum_width, "{x0} - {x1}"),
    "mul": RtlSpelling(lambda w, s: w[0] + w[1], "{rw}'(prod_{l})"),
    "select": RtlSpelling(lambda w, s: max(w[1] + s[1], w[2] + s[2]), "({a0} != '0) ? {x1} : {x2}"),
    **{op: RtlSpelling(lambda w, s: 2, "{{1'b0, {x0} " + c + " {x1}}}", cast=_aligned_sum_width)
       for op, c in COMPARE_OPS.items()},
    **{compare_select_op(op): RtlSpelling(lambda w, s: max(w[2] + s[2], w[3] + s[3]),
                                   "{rw}'(({x0} " + c + " {x1}) ? {x2} : {x3})",
                                   cast=lambda w, s: max(a + b for a, b in zip(w, s, strict=True)) + 1)
       for op, c in COMPARE_OPS.items()},
    "table": RtlSpelling(None),  # a unit of its own: clip, two ROM reads, the interpolation
    "msub": RtlSpelling(None),  # a unit of its own: the shared multiplier, the mid format, the subtraction
    "div": RtlSpelling(None),  # a unit of its own: leading one, normalize, ROM read, product, shift
    "div_sqrt": RtlSpelling(None),  # the same unit, its ROM of 1 / sqrt
    "mac": RtlSpelling(lambda w, s: w[0] + w[1]),  # the term: the shared multiplier's product
    "sum": RtlSpelling(lambda w, s: w[0]),
    "max": RtlSpelling(None),  # the term: the operand assigned to the accumulator format
    "argmax": RtlSpelling(None),
}
RTL_OPS = tuple(RTL_SPELLING)
_IDENT = re.compile(r"[^A-Za-z0-9_]")


class RtlCodegenError(Fx2fpgaError, ValueError):
    """A kernel the Verilog generator cannot print exactly; the message says what to change."""


def _ident(text: str) -> str:
    return _IDENT.sub("_", text)


def _hex(value: int, width: int) -> str:
    """Two's-complement hex digits of ``value`` in ``width`` bits."""
    return format(value & ((1 << width) - 1), "x")


def _lit(value: int, width: int) -> str:
    """A signed SystemVerilog literal of ``width`` bits."""
    return f"{width}'sh{_hex(value, width)}"


# ----- fixed-point assignment modules -------------------------------------------------------------------

@dataclass(frozen=True)
class Cvt:
    """``out = fmt.from_raw(in, in_frac)`` in gates: see templates/rtl/cvt.sv.j2."""

    iw: int  # input width (signed)
    shift: int  # in_frac - out_frac: > 0 drops bits (rounding), < 0 appends zeros
    ow: int
    osigned: bool
    rounding: str
    sat: bool
    flag: bool = False  # an output `ovf`: the rounded value is outside the output's range (a saturation event)
    relu: bool = False  # the (signed) assigned value goes through ReLU (a mac fused with its ReLU: passes/fuse.py)

    @property
    def name(self) -> str:
        sh = f"r{self.shift}" if self.shift >= 0 else f"l{-self.shift}"
        kind = "s" if self.osigned else "u"
        mode = ("sat" if self.sat else "wrap") + ("_ovf" if self.flag else "") + ("_relu" if self.relu else "")
        return f"fx2fpga_cvt_{self.iw}_{sh}_{kind}{self.ow}_{self.rounding.lower()}_{mode}"

    def view(self) -> dict:
        sh, ow = self.shift, self.ow
        if self.sat and sh <= 0 and self.osigned and self.iw - sh <= ow:
            fits = True  # every input value is representable: no saturation logic
        elif self.sat and sh > 0 and self.osigned and self.iw - sh + 1 <= ow:
            fits = True
        else:
            fits = not self.sat
        need = ow + 1 + sh if self.sat and not fits else 0
        xw = max(self.iw, sh + 2, need)
        qw = xw - sh + 1 if sh > 0 else xw - sh
        osmax = (1 << (ow - 1)) - 1 if self.osigned else (1 << ow) - 1
        osmin = -(1 << (ow - 1)) if self.osigned else 0
        # out of range, from the bits above the output's (not a comparison: no carry chain)
        top = f"q[{qw - 1}]"
        if self.osigned:
            above = f"q[{qw - 2}:{ow - 1}]"
            over, under = f"!{top} && (|{above})", f"{top} && !(&{above})"
        else:
            over = f"!{top} && (|q[{qw - 2}:{ow}])" if qw - 2 >= ow else "1'b0"
            under = top
        return {"name": self.name, "iw": self.iw, "xw": xw, "sh": sh, "qw": qw, "ow": ow, "rounding": self.rounding,
                "over": over, "under": under, "flag": self.flag, "ovf": self._out_of_range(qw),
                "sat": self.sat and not fits, "fits": fits and self.sat, "osigned": self.osigned,
                "relu": self.relu,
                "max_q": _lit(osmax, qw), "min_q": _lit(osmin, qw),
                "max_o": f"{ow}'h{_hex(osmax, ow)}", "min_o": f"{ow}'h{_hex(osmin, ow)}"}


    def _out_of_range(self, qw: int) -> str:
        """The saturation event of docs/saturation.md: ``q`` (the rounded value, exact in ``qw`` bits) is outside
        the output's range, whatever the overflow mode: its bits above the output's are not all copies of the
        output's sign bit (signed), or not all 0 (unsigned)."""
        low = self.ow - 1 if self.osigned else self.ow
        if qw <= low + (1 if self.osigned else 0):
            return "1'b0"  # q has no bits above the output's: it always fits
        above = f"q[{qw - 1}:{low}]"
        return f"(|{above}) && !(&{above})" if self.osigned else f"|{above}"


class _Cvts:
    def __init__(self):
        self.used: dict[str, Cvt] = {}

    def get(self, iw: int, in_frac: int, fmt: Fixed, flag: bool = False, relu: bool = False) -> str:
        """The name of the conversion module of a ``iw``-bit value at ``in_frac`` fraction bits to ``fmt``
        (``flag``: with the saturation event output ``ovf``; ``relu``: the assigned value through ReLU)."""
        c = self.make(iw, in_frac, fmt, flag, relu)
        self.used[c.name] = c
        return c.name

    @staticmethod
    def make(iw: int, in_frac: int, fmt: Fixed, flag: bool = False, relu: bool = False) -> Cvt:
        """``get``'s conversion, not recorded as used."""
        return Cvt(iw, in_frac - fmt.frac_bits, fmt.width, fmt.signed, fmt.rounding, fmt.overflow == "SAT", flag,
                   relu and fmt.signed)


# ----- datapath units ----------------------------------------------------------------------------------------

POOLED_OPS = tuple(op for op in RTL_OPS if OPS_TABLE[op].multiplies)


def multiplier_pool(units: list[dict], dsp_kind: str) -> dict | None:
    """One shared multiplier per lane for every ``mac`` and ``mul`` unit of the kernel.

    Issue windows never overlap and every pooled unit multiplies its stage-1 operands (the same tap after
    the issue), so at most one stage multiplies at a time: each pooled unit zeroes its operands except
    when its stage's operands arrive (``act``) and the top ORs them, sign-extended to the
    widest operands, into the lane's multiplier (split into DSP-sized partial products). The
    DSP blocks of a kernel are then those of one stage's lanes, not of every stage's."""
    for u in units:  # a side-stream phase's unit multiplies alone: the pool serves the main stream
        if u["op"] in POOLED_OPS and u["side"]:
            w0, w1 = _multiplied_widths(u)
            _multiplies(u, None, w0, w1, product_plan(max(w0, w1), min(w0, w1), dsp_kind))
    users = [u for u in units if u["op"] in POOLED_OPS and not u["side"]]
    if not users:
        return None
    widths = [_multiplied_widths(u) for u in users]
    wa, wb = max(max(w) for w in widths), max(min(w) for w in widths)
    pool = {"lanes": max(u["lanes"] for u in users), "wa": wa, "wb": wb, "product": product_plan(wa, wb, dsp_kind),
            "users": users, "dsp_kind": dsp_kind}
    pool["lane_plans"] = [_lane_plan(pool, [w for u, w in zip(users, widths, strict=True) if u["lanes"] > lane])
                          for lane in range(pool["lanes"])]
    for u, (w0, w1) in zip(users, widths, strict=True):
        _multiplies(u, pool, w0, w1, pool["product"])
    return pool


def _lane_plan(pool: dict, widths: list[tuple[int, int]]) -> dict:
    """One lane's multiplier: as wide as the widest operands of the stages that reach that lane (a lane only
    narrow stages use takes fewer DSP blocks); its product is sign-extended to the pool's product width."""
    wa, wb = max(max(w) for w in widths), max(min(w) for w in widths)
    return {"wa": wa, "wb": wb, "product": pool["product"] if (wa, wb) == (pool["wa"], pool["wb"])
            else product_plan(wa, wb, pool["dsp_kind"])}


def _multiplied_widths(u: dict) -> tuple[int, int]:
    i, j = OPS_TABLE[u["op"]].multiplied
    return u["ops"][i]["iw"], u["ops"][j]["iw"]


def _multiplies(u: dict, pool: dict | None, w0: int, w1: int, product: dict) -> None:
    """Set a multiplying unit's operands to the multiplier (the wider first) and its product: the pool's (``pool``),
    or its own multipliers of the same pipeline (None: ``own_product``, a side-stream phase's unit)."""
    i, j = OPS_TABLE[u["op"]].multiplied
    wide, narrow = (j, i) if w1 > w0 else (i, j)
    u.update(pooled=True, ma=f"a{wide}", mb=f"a{narrow}", ma_width=max(w0, w1), mb_width=min(w0, w1),
             pool=pool or {"product": product, "lanes": u["lanes"]}, own_product=pool is None,
             prod_used=w0 + w1, act=f"act_{u['inst']}")  # the product's bits (a mac's term, a mul's result)


def mac_engine(units: list[dict], name: str, pool: dict | None, cvts: _Cvts) -> dict | None:
    """One accumulator per lane for every exact multiply-accumulate unit of the kernel (the MAC engine).

    Issue windows never overlap and every user accumulates at the same tap after its issue, so at most one
    stage accumulates at a time (a phase that overlaps the drain of the one before is past its accumulations).
    A ``mac`` unit whose accumulator never rounds or overflows (``exact``) gives its accumulation to the
    engine: its value at its own fraction bits is the same number in the engine's wider register, so the
    sums, and the result converted to the stage's output format, are bit for bit those of the stage's own
    accumulator. Each such unit keeps its operand registers (to the shared multiplier) and converts its
    initial value (the bias); the engine ORs those (0 but in the cycles a stage's operands arrive),
    accumulates the shared multiplier's product, and converts the result once per distinct output
    conversion. The initial value arrives with the first operands (stage 1) and is added with the first product
    (stage ``n``): where every reduction takes at least ``n - 1`` issues, the next one's initial value comes after
    that, so one register loaded at the first operands holds it (``hold_init``) instead of a delay line of
    ``n - 1`` (a LUT per bit as shift registers); with a user reading its initial values in its lanes' slots
    (``serial_init``, backends/drains.py) that register ORs what arrives from the first operands on. None with
    fewer than two such units: nothing to share."""
    users = [u for u in units if u["op"] == "mac" and u["exact"] and not u["sr"]]  # (SR: each lane its bits)
    if len(users) < 2 or pool is None:
        return None
    width = max(u["acc_width"] for u in users)
    lanes = max(u["lanes"] for u in users)
    lane_widths = [max(u["acc_width"] for u in users if u["lanes"] > lane) for lane in range(lanes)]
    outs: dict[str, dict] = {}
    for u in users:
        convert = (u["acc_frac"], u["out_fmt"], u["counted"], u["relu"])
        out = outs.setdefault(cvts.make(width, *convert).name, {
            "index": len(outs), "ow": u["out_width"], "lanes": 0, "flag": u["counted"], "relu": u["relu"],
            "convert": convert})
        out["lanes"] = max(out["lanes"], u["lanes"])
        u.update(engine=True, engine_out=out["index"],
                 engine_widths=lane_widths[:u["lanes"]])  # its initial value, per lane, at the lane's width
    for out in outs.values():  # each lane converts from its own width
        out["cvts"] = [cvts.get(lane_widths[lane], *out["convert"]) for lane in range(out["lanes"])]
    n = users[0]["term_stage"]
    hold_init = min(u["points"] for u in users) >= n - 1
    serial_init = any(u["serial_init"] for u in users)
    if serial_init and not hold_init:  # (drains.init_slot_limit allows no slots then)
        raise AssertionError("a serialized initial value needs the engine's held initial value")
    return {"module": f"{name}_mac_engine", "lanes": lanes, "width": width, "lane_widths": lane_widths,
            "dsp_acc": [_accumulates_in_dsp(pool, users, lane, lane_widths[lane]) for lane in range(lanes)],
            "term_stage": n, "prod_width": pool["product"]["width"],
            "has_init": any("cvt_init" in u for u in users), "outs": list(outs.values()), "users": users,
            "hold_init": hold_init, "serial_init": serial_init,
            "masked": any(u["mask_by"] is not None for u in users)}  # a user holds ReLU's gate with its result (cap)


DSP_ACC_BITS = {"DSP48E1": 48}  # the accumulator (P register) of a target's DSP block, where it has one


def _accumulates_in_dsp(pool: dict, users: list[dict], lane: int, width: int) -> bool:
    """Whether a MAC engine lane multiplies and accumulates in one DSP block (``fx2fpga_mac``): its multiplier is
    one block with an accumulator at least ``width`` bits wide, and only engine users reach it (another pooled
    stage needs the bare product)."""
    lp = pool["lane_plans"][lane]
    return (len(lp["product"]["parts"]) == 1 and width <= DSP_ACC_BITS.get(pool["dsp_kind"], 0)
            and all(any(u is e for e in users) for u in pool["users"] if u["lanes"] > lane))


def _used_cvts(units: list[dict], engine: dict | None, cvts: _Cvts) -> list[dict]:
    """The conversion modules the units and the engine instantiate (an engine user's own accumulator and
    result conversions are not generated)."""
    names = {c for o in engine["outs"] for c in o["cvts"]} if engine else set()
    for u in units:
        keys = ("cvt_init",) if u.get("engine") else ("cvt_init", "cvt_term", "cvt_sum", "cvt_out", "cvt_mid")
        names |= {u[k] for k in keys if k in u}
    return [c.view() for n, c in sorted(cvts.used.items()) if n in names]


def product_plan(wa: int, wb: int, dsp_kind: str) -> dict:
    """How the unit templates multiply a signed ``wa``-bit by a ``wb``-bit operand: one registered
    partial product per pair of pieces that fits the target's DSP block, summed a cycle later
    (so no path crosses a multiplier and an adder). ``a``/``b``: operand pieces; ``parts``:
    (a piece, b piece, width, shift)."""
    big, small = DSP_PORTS.get(dsp_kind, DSP_PORTS["DSP48E1"])
    ports = (big, small) if wa >= wb else (small, big)
    pa, pb = multiplier_pieces(wa, ports[0]), multiplier_pieces(wb, ports[1])
    parts = [(i, j, (ia + (not sa)) + (jb + (not sb)), la + lb)
             for i, (la, ia, sa) in enumerate(pa) for j, (lb, jb, sb) in enumerate(pb)]
    return {"a": pa, "b": pb, "parts": parts, "width": wa + wb}

def _iw(fmt: Fixed) -> int:
    """Width of a format's raw value as a signed number (unsigned formats get a zero sign bit)."""
    return fmt.width + (0 if fmt.signed else 1)


def _operand(fmt: Fixed, index: int) -> dict:
    return {"name": f"in{index}", "index": index, "width": fmt.width, "signed": fmt.signed, "iw": _iw(fmt),
            "frac": fmt.frac_bits, "guarded": False}


_UNIT_NAMES = ("module", "inst", "stage", "origin", "source")  # a unit view's fields that name, not build, it


def _twin_key(u: dict) -> str | None:
    """What a unit's hardware is, its names left out: units with one key are copies of one module. None: a
    unit never shared (its stochastic rounding key and its saturation flags are its stage's own)."""
    if u["sr"] or u["counted"]:
        return None
    st = u["stage"]
    built = {k: v for k, v in u.items() if k not in _UNIT_NAMES}
    return json.dumps([built, st.op, list(st.reduce), str(st.acc), sorted(map(str, st.attrs.items()))],
                      sort_keys=True, default=str)


def twin_hosts(views: dict[int, dict], concurrent: set[frozenset[int]] = frozenset()) -> dict[int, int]:
    """Phases that run on another phase's unit: phase id -> the first phase (in phase order) whose unit is the same
    hardware (``_twin_key``) and that issues at no time it or the host's other guests do (``concurrent``: pairs of
    phase ids that may, a side-stream phase and the main phases beside it, ``streams.concurrent``). Sharing is
    safe for phases whose issue windows never overlap (one command at a time, and a stream's phases issue one after
    another), as a unit is an in-order pipeline of fixed latency, so each result leaves it at its own phase's write
    tap. A training kernel's ``infer`` runs on the forward units of ``train_step`` (its stages' twins, with the same
    lanes: ``tile.mirror_twin_lanes``)."""
    sharing: dict[str, list[list[int]]] = {}  # key -> groups of phases on one unit, its host first
    host_of: dict[int, int] = {}
    for i, u in views.items():
        key = _twin_key(u)
        if key is None:
            continue
        group = next((g for g in sharing.get(key, []) if not any(frozenset((i, j)) in concurrent for j in g)), None)
        if group is None:
            sharing.setdefault(key, []).append([i])
        else:
            host_of[i] = group[0]
            group.append(i)
    return host_of


def concurrent_phases(s: Schedule, pid: dict) -> set[frozenset[int]]:
    """``streams.concurrent`` of every command, as pairs of phase ids."""
    return {frozenset(pid[id(phases[k])] for k in pair) for phases in s.commands.values()
            for pair in streams.concurrent(phases)}


def _unit_view(phase: Phase, pid: int, kernel, name: str, cvts: _Cvts, dsp_kind: str, counted: bool = False) -> dict:
    """The datapath unit of a stage phase for unit.sv.j2 (``counted``: its output conversion flags saturation
    events, ``ovf_*``)."""
    st = phase.stage
    fmts = [kernel.buffers[a.buffer].fmt for a in st.ins]
    out_fmt = kernel.buffers[st.out.buffer].fmt
    ops = [_operand(f, i) for i, f in enumerate(fmts)]
    spec = OPS_TABLE[st.op]
    view = {"module": f"{name}_p{pid}_{_ident(st.name)}", "inst": f"p{pid}", "op": st.op, "lanes": phase.lanes,
            "pooled": False, "own_product": False, "side": phase.stream == streams.SIDE,
            "engine": False, "skips_guarded": spec.skips_guarded, "counted": counted,
            "relu": then_relu(st), "mask_by": len(st.ins) - 1 if then_relu_mask(st) else None, "ops": ops,
            "out_width": out_fmt.width, "stage": st, "serial_init": phase.serial_init,
            "origin": st.origin, "source": st.source, "guests": []}
    if st.reduce:
        view = _reduce_view(view, spec, kernel, cvts)
    elif spec.reads_table:
        view = _table_view(view, kernel, cvts, dsp_kind)
    elif st.op == "msub":
        view = _msub_view(view, kernel, cvts)
    elif st.op in NORMALIZED_ROOTS:
        view = _normalized_view(view, kernel, cvts, dsp_kind)
    else:
        view = _elementwise_view(view, phase, kernel, cvts)
    return _with_random_bits(view, cvts)


def _with_random_bits(view: dict, cvts: _Cvts) -> dict:
    """``view`` with ``sr``: the random bits its output conversion adds per lane (stochastic rounding; 0: none)."""
    c = cvts.used[view["cvt_out"]]
    view["sr"] = c.shift if c.rounding == "SR" and c.shift > 0 else 0
    return view


def _elementwise_view(view: dict, phase: Phase, kernel, cvts: _Cvts) -> dict:
    """An elementwise unit: one exact result per lane, converted."""
    st, ops, spec = view["stage"], view["ops"], OPS_TABLE[view["op"]]
    out_fmt = kernel.buffers[st.out.buffer].fmt
    view.update(kind="elementwise", latency=sched.unit_latency(st.op))
    spelling = RTL_SPELLING[st.op]
    fr = [o["frac"] for o in ops]
    w = [o["iw"] for o in ops]
    shifts = alignment_shifts(spec, fr)
    rw = spelling.width(w, shifts)
    cast = spelling.cast(w, shifts) if spelling.cast else rw
    exprs = []
    for lane in range(phase.lanes):
        names = {f"a{i}": f"a{i}_{lane}" for i in range(len(ops))}
        xs = {f"x{i}": _shl(f"{cast}'(a{i}_{lane})", k) for i, k in enumerate(shifts)}
        exprs.append(spelling.expr.format(rw=rw, l=lane, **names, **xs, **{f"w{i}": x for i, x in enumerate(w)}))
    view.update(res_width=rw, cast_width=cast, exprs=exprs,
                cvt_out=cvts.get(rw, exact_frac(spec, fr, st, kernel), out_fmt, view["counted"]))
    return view


def _msub_view(view: dict, kernel, cvts: _Cvts) -> dict:
    """A fused update ``a - [b * c]``: the shared multiplier's product assigned to the mid format (stage 7),
    ``a`` (delayed to meet it) minus it, exact (8), converted (9)."""
    st, ops = view["stage"], view["ops"]
    mid = mid_format(st)
    mid_iw = _iw(mid)
    f = max(ops[0]["frac"], mid.frac_bits)
    sa, sm = f - ops[0]["frac"], f - mid.frac_bits
    rw = max(ops[0]["iw"] + sa, mid_iw + sm) + 1
    out_fmt = kernel.buffers[st.out.buffer].fmt
    view.update(kind="msub", latency=sched.unit_latency(st.op), mid=str(mid), mid_width=mid.width,
                mid_signed=mid.signed, shift_a=sa, shift_mid=sm, res_width=rw,
                cvt_mid=cvts.get(ops[1]["iw"] + ops[2]["iw"], ops[1]["frac"] + ops[2]["frac"], mid),
                cvt_out=cvts.get(rw, f, out_fmt, view["counted"]))
    return view


def _shl(expr: str, k: int) -> str:
    """``expr`` shifted left by ``k`` bits (templates/rtl/product.j2's ``shl``)."""
    return f"({expr} <<< {k})" if k else expr


def _reduce_view(view: dict, spec, kernel, cvts: _Cvts) -> dict:
    """A reduction unit: the term, the accumulator (from its init), the converted result."""
    st, ops = view["stage"], view["ops"]
    out_fmt = kernel.buffers[st.out.buffer].fmt
    acc = st.acc
    # points: issues per result (the reduced loops are innermost, without lanes); the fewest of the phases on the
    # unit once its guests join (_Wiring.add_guest)
    view.update(kind="reduce", latency=sched.unit_latency(st.op), accumulate=spec.accumulate,
                term_stage=sched.unit_latency(st.op) - 2,  # the accumulator, then the result
                points=st.reduction_points)
    n_ops = sched.streamed_operands(st)
    view["n_ops"] = n_ops
    aw, fa = _iw(acc), acc.frac_bits  # the accumulator as a signed number
    view.update(acc_width=acc.width, acc_iw=aw, acc_signed=acc.signed)
    width = RTL_SPELLING[st.op].width
    if width is None:  # max, argmax: the value is assigned to the accumulator format, then compared
        tw, tf = aw, fa
        view["cvt_term"] = cvts.get(ops[0]["iw"], ops[0]["frac"], acc)
    else:
        tw = width([o["iw"] for o in ops[:n_ops]], [0] * n_ops)
        tf = spec.result_frac([o["frac"] for o in ops[:n_ops]])
    view["term_width"] = tw
    if spec.accumulate == "add":
        f = max(fa, tf)
        sw = max(aw + f - fa, tw + f - tf) + 1
        view.update(sum_width=sw, shift_acc=f - fa, shift_term=f - tf, cvt_sum=cvts.get(sw, f, acc))
    if len(own_inputs(st)) > n_ops:
        init = ops[n_ops]
        view["cvt_init"] = cvts.get(init["iw"], init["frac"], acc)
    else:
        view["init_value"] = _lit(acc.raw_min if spec.acc_init == "minimum" else 0, aw)
    if spec.accumulate == "argmax":  # the output is the position, an integer
        view["pos_width"] = bits(view["points"] - 1)
        view["cvt_out"] = cvts.get(view["pos_width"] + 1, 0, out_fmt, view["counted"])
    else:
        view["cvt_out"] = cvts.get(aw, fa, out_fmt, view["counted"], view["relu"])
    view.update(out_fmt=out_fmt, acc_frac=fa,
                exact=st.op == "mac" and _never_rounds_or_overflows(view, st))
    return view


def _raw_magnitude(operand: dict) -> int:
    """The largest magnitude of an operand's raw value."""
    return 1 << (operand["width"] - 1) if operand["signed"] else (1 << operand["width"]) - 1


def _never_rounds_or_overflows(view: dict, st) -> bool:
    """Whether a multiply-accumulate's accumulator is exact whatever the operands: its sums need no rounding
    (term and accumulator at the same fraction bits) and the largest initial value plus the reduction's points
    times the largest product fits its (signed) format, so its saturation never acts."""
    acc = st.acc
    if not acc.signed or view["shift_acc"] or view["shift_term"]:
        return False
    ops = view["ops"]
    bound = view["points"] * _raw_magnitude(ops[0]) * _raw_magnitude(ops[1])
    if "cvt_init" in view:
        init = ops[view["n_ops"]]
        shift = acc.frac_bits - init["frac"]
        bound += _raw_magnitude(init) << shift if shift >= 0 else (_raw_magnitude(init) >> -shift) + 1
    return bound <= acc.raw_max


def _table_view(view: dict, kernel, cvts: _Cvts, dsp_kind: str) -> dict:
    """A function table unit: clip, segment and offset, two ROM reads, the interpolation."""
    st, ops = view["stage"], view["ops"]
    out_fmt = kernel.buffers[st.out.buffer].fmt
    tbl = kernel.buffers[st.attrs["table"]]
    n, lo, shift = tbl.size - 1, int(st.attrs["lo"]), int(st.attrs["shift"])
    hi = lo + (n << shift)
    xw = max(ops[0]["iw"], abs(lo).bit_length() + 1, abs(hi).bit_length() + 1) + 1
    rw = bits(n << shift)
    tw = _iw(tbl.fmt)
    pw = tw + 1 + shift + 2
    yw = max(tw, pw - shift) + 1
    view.update(kind="table", xw=xw, rw=rw, ixw=bits(n), shift=shift, n=n, lo=_lit(lo, xw), hi=_lit(hi, xw),
                nmax=f"{bits(n)}'d{n - 1}", nval=f"{bits(n)}'d{n}", table_width=tbl.fmt.width,
                table_signed=tbl.fmt.signed, tw=tw, pw=pw, yw=yw, rom=f"mem/{tbl.name}.hex", depth=n + 1,
                table=tbl.name, cvt_out=cvts.get(yw, tbl.fmt.frac_bits, out_fmt, view["counted"]),
                latency=sched.unit_latency(st.op), product=product_plan(tw + 1, shift + 2, dsp_kind))
    # in block RAM on the xc7 where small enough (the resource model's rule); the ECP5 keeps Yosys' choice
    view["rom_block"] = dsp_kind == "DSP48E1" and resources.table_mapping(n + 1, tbl.fmt.width).kind == "bram"
    return view


NORMALIZED_ROOTS = {"div": 1, "div_sqrt": 2}  # ops.py's _normalized_division: the root of the divisor


def _normalized_view(view: dict, kernel, cvts: _Cvts, dsp_kind: str) -> dict:
    """A ``div``/``div_sqrt`` unit (``ops._normalized_division``): the divisor's leading one, its ``T`` leading
    bits (the ROM address), the ROM entry times the dividend, shifted right by ``e - 1``, converted."""
    st, ops = view["stage"], view["ops"]
    out_fmt = kernel.buffers[st.out.buffer].fmt
    root, t = NORMALIZED_ROOTS[st.op], NORM_INDEX_BITS
    depth = (1 << t) - (1 << (t - root))
    rom = kernel.buffers.get(st.attrs.get("rom", ""))
    if rom is None or rom.init is None or rom.size != depth or rom.fmt.signed or "q" not in st.attrs:
        raise RtlCodegenError(f"stage {st.name!r}: {st.op} needs attrs['q'] and attrs['rom'] naming an unsigned "
                              f"const buffer of {depth} init values (ops.norm_rom_values)")
    odd = ops[1]["frac"] % root
    bw = max(ops[1]["iw"] - 1, 1) + odd  # the divisor, made positive (max(b, 1)) and shifted
    emax = -(-bw // root)  # the largest e: ceil(bit length / root)
    ew = bits(emax)
    sw = bits(root * emax)
    yw = _iw(rom.fmt)  # the ROM entry as a signed multiplier operand
    pw = ops[0]["iw"] + yw
    frac = exact_frac(OPS_TABLE[st.op], [o["frac"] for o in ops], st, kernel)
    view.update(kind="normalized", latency=sched.unit_latency(st.op), root=root, t=t, odd=odd, bw=bw, ew=ew, sw=sw,
                rom=f"mem/{rom.name}.hex", rom_buffer=rom.name, rom_width=rom.fmt.width, depth=depth,
                aw=bits(depth - 1), m0=1 << (t - root), yw=yw, pw=pw, res_width=pw,
                product=product_plan(ops[0]["iw"], yw, dsp_kind), cvt_out=cvts.get(pw, frac, out_fmt, view["counted"]))
    return view


# ----- the plan: phases, ports, memories, controller spec --------------------------------------------------

def _guard_spec(guards) -> list[dict]:
    """Guards over counters as plain data for the controller: affine terms, const, bound, step."""
    return [{**controller.affine_spec(g.expr), "bound": g.bound, "step": g.step} for g in guards]


@dataclass
class RtlPlan:
    """Everything the templates and the controller need, from the schedule of a kernel."""

    schedule: Schedule
    spec: dict  # the controller's specification (controller.py, lowered by CIRCT)
    units: list[dict]  # one datapath unit per stage phase (templates/rtl/unit.sv.j2)
    memories: list[dict]  # one per buffer: banks, ports, write sources
    packs: list[dict]  # the output phases' data
    cvts: list[dict]  # the fixed-point assignment modules (Cvt.view)
    outputs: list[tuple[str, int]]  # the controller's output ports: name, width
    out_sel_bits: int
    max_in_width: int  # the widest value an input word carries
    muxes: list[dict]  # registered read multiplexers (a bank known at run time)
    pool: dict | None  # the shared multipliers (multiplier_pool), None without mac/mul
    engine: dict | None  # the shared accumulators of the exact mac units (mac_engine), None without two
    reset_cycles: int
    sat: dict | None = None  # the saturation counters (saturation_view), None without them
    sr_calls: list[dict] = field(default_factory=list)  # per command with SR stages: its calls * STEP register
    sr_step: int = stochastic.STEP
    stream_bits: int = 0  # the input word's low bits stages take as operands (Phase.streamed): in_d2 ..
    gates: dict | None = None  # the simulation-only clock gates (sim_gates), None: every block on clk

    @property
    def dsp_blocks(self) -> int:
        """DSP blocks the generated RTL instantiates (its ``fx2fpga_mult``s): the shared multipliers'
        partial products, one set per lane (as wide as the stages reaching it), the side-stream units' own, the
        function tables' interpolation products and the divisions' products."""
        shared = sum(len(lp["product"]["parts"]) for lp in self.pool["lane_plans"]) if self.pool else 0
        own = sum(u["lanes"] * len(u["pool"]["product"]["parts"]) for u in self.units if u["own_product"])
        return shared + own + sum(u["lanes"] * len(u["product"]["parts"]) for u in self.units
                                  if u["kind"] in ("table", "normalized"))

    def template_vars(self) -> dict:
        """The fields as template variables (not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def plan(kernel, name: str, dsp_kind: str = "DSP48E1", schedule: Schedule | None = None, target=None) -> RtlPlan:
    """The ``RtlPlan`` of ``kernel``, from its ``schedule`` (computed here when not given). ``target``: the
    board whose idle block RAM takes LUT-RAM banks where logic is the scarcer (``resources.assign_block_ram``);
    None: every bank where synthesis puts it."""
    _check_mappable(kernel)
    s: Schedule = schedule if schedule is not None else sched.run(kernel)
    for n in [b for c in s.codes for b in sum(interface.command_buffers(kernel, c), [])]:
        if kernel.buffers[n].fmt.width > WORD_BITS:
            raise RtlCodegenError(f"buffer {n} ({kernel.buffers[n].fmt}) crosses the {WORD_BITS}-bit word interface")
    cvts = _Cvts()
    counting = saturation.hardware_counters(kernel)
    phases = s.phases()
    pid = {id(p): i + 1 for i, p in enumerate(phases)}
    command_of = {id(p): c for c, ph in s.commands.items() for p in ph}
    sr_commands: list[str] = []  # the commands with a stage rounding SR, in order: each has a call register
    mems = {m.buffer: _memory_view(m) for m in s.memories.values()}
    w = _Wiring(mems)
    counted = {pid[id(ph)]: counting and can_overflow(ph.stage, kernel) for ph in phases if ph.kind == "stage"}
    views = {i: _unit_view(ph, i, kernel, name, cvts, dsp_kind, counted[i])
             for ph in phases if ph.kind == "stage" for i in [pid[id(ph)]]}
    host_of = twin_hosts(views, concurrent_phases(s, pid))
    side = {pid[id(p)] for p in phases if p.stream == streams.SIDE}
    for ph in phases:
        i = pid[id(ph)]
        unit = views.get(i)
        w.add_reads(ph, i)
        w.add_stream(ph, i)
        key = stochastic.stage_key(kernel.meta.get(stochastic.SEED_KEY, 0), ph.stage.out.buffer) \
            if unit is not None and unit["sr"] else None
        w.add_writes(ph, i, counted.get(i, False), key, host_of.get(i, i))
        if i in host_of:
            w.add_guest(views[host_of[i]], ph, i)
        elif unit is not None:
            w.add_unit(unit, ph, i)
            if unit["sr"]:
                command = command_of[id(ph)]
                unit["sr_call"] = _sr_call(command)
                sr_commands += [command] if command not in sr_commands else []
        if ph.kind == "pack":
            m = mems[ph.buffer]
            w.packs.append({"index": len(w.packs), "data": w.data_of[i, 0, 0], "width": m["width"],
                            "signed": m["signed"]})
    pool = multiplier_pool(w.units, dsp_kind)
    engine = mac_engine(w.units, name, pool, cvts)
    act = _acts(w)
    reset_cycles = max([p.write_delay for p in phases] + [sched.PACK_DELAY]) + 4
    gates = sim_gates(w, pool, engine, len(phases), reset_cycles)
    gates["side"] = bool(side)  # the side stream's phase register runs blocks too
    out_sel_bits = bits(len(w.packs) - 1) if len(w.packs) > 1 else 0
    outputs = _controller_outputs(w, act, out_sel_bits, {pid[id(p)]: c for c, ph in s.commands.items() for p in ph},
                                  _writes_apart(s))
    spec = {
        "name": f"{name}_ctrl", "fsm": f"{name}_fsm", "phase_bits": bits(len(phases)),
        "counters": s.counter_count(), "counter_bits": s.counter_bits(),
        "taps": {"addr": sched.ADDR_TAP, "ram": sched.RAM_TAP, "operand": sched.OPERAND_TAP,
                 "out": sched.PACK_DELAY},
        "commands": [_command_spec(s.codes[c], ph, pid) for c, ph in s.commands.items()],
        "phases": [spec for command in s.commands.values() for spec in _phase_specs(command, pid)],
        "group_counter": next((p.group_counter for p in phases if p.group_counter is not None), None),
        "memories": {n: {k: m[k] for k in ("banks", "addr_bits", "bank_bits", "factors", "bank_shape", "ports")}
                     for n, m in mems.items()},
        "reads": w.reads, "writes": w.writes, "go": w.go, "first": w.first, "last": w.last, "act": act,
        "out_sel_bits": out_sel_bits, "outputs": outputs,
        "clocks": {"memories": gates["memories"], "ctrl": gates["ctrl"],
                   "phases": {str(i): u["gate"] for u in w.units for i, _ in unit_stages(u)}},
    }
    max_in = w.in_bits
    for m in mems.values():
        read = m.pop("read_banks")
        m["unread_banks"] = [b for b in range(m["banks"]) if b not in read]
        m["direct_banks"] = sorted(m["direct_banks"])
    p = RtlPlan(schedule=s, spec=spec, units=w.units, memories=list(mems.values()), packs=w.packs,
                cvts=_used_cvts(w.units, engine, cvts), outputs=outputs,
                out_sel_bits=out_sel_bits, max_in_width=max_in, muxes=w.muxes, pool=pool, engine=engine,
                reset_cycles=reset_cycles, gates=gates, stream_bits=w.stream_bits,
                sat=saturation_view(kernel, mems) if counting else None,
                sr_calls=[{"name": _sr_call(c), "code": s.codes[c]} for c in sr_commands])
    if target is not None:
        resources.assign_block_ram(p, target)
    return p


def _load_through_second_port(w: _Wiring, command_of: dict[int, str]) -> None:
    """Memories whose banks take the input stream on a second port (``m["load_port"]``: the stream's source index
    per bank): initialized (parameters), in block RAM (``resources.bank_mapping``; a port of a true dual-port block
    as wide, in no more blocks), every
    bank written from the input stream and from one datapath source, by commands of which those that write the
    stream read nothing of the memory. The stream's writes then use the read port's address (``port_b`` writes),
    so the bank needs no write-data, address or enable select (Yosys: 35 LUT and 35 FF a 960 x 24 bank)."""
    reading = {(r["memory"], command_of[r["phase"]]) for r in w.reads}
    for m in w.mems.values():
        m["load_port"] = None
        streamed = [wr for wr in w.writes if wr["memory"] == m["name"] and wr.get("stream")]
        mapping = resources.bank_mapping(m["mem_depth"], m["width"], False)
        if (m["read_only"] or not m["init"] or not streamed or m["width"] > resources.TDP_PORT_BITS
                or mapping.kind != "bram"
                or resources.bram36_for(m["mem_depth"], m["width"], dual_port=True) > mapping.bram36
                or any((m["name"], command_of[wr["phase"]]) in reading for wr in streamed)):
            continue
        stream = [[k for k, src in enumerate(srcs) if src.startswith("in_d")] for srcs in m["sources"]]
        if any(len(srcs) != 2 or len(k) != 1 for srcs, k in zip(m["sources"], stream, strict=True)):
            continue
        m["load_port"] = [k[0] for k in stream]
        for wr in streamed:
            wr["port_b"] = True


def _share_read_addresses(w: _Wiring) -> None:
    """Mark the read-address requests (reads, and ``port_b`` writes) whose address may go to every bank of their
    memory (``"any_bank"``): those of a phase whose every such request on that memory of several banks has one row
    (and tap). A bank's read address then needs no bank condition: a bank the phase does not touch reads (or, on
    its second port, is not written at) an address nobody uses, and no two phases send such requests to one memory
    in one cycle (reads issue at one tap, one phase a stream at a time, the streams share no memory; a loading
    phase writes alone). Every bank of a memory whose requests are all marked then gets the same address, one
    register (Yosys merges the banks' equal ones)."""
    reqs = [*w.reads, *(wr for wr in w.writes if wr.get("port_b"))]
    rows = _rows_by_phase(w, reqs)
    for req in reqs:
        if w.mems[req["memory"]]["banks"] > 1:
            req["any_bank"] = len(rows[req["memory"]][req["phase"]]) == 1


def _banks_side_by_side(w: _Wiring, m: dict) -> bool:
    """Whether the banks of memory ``m`` are one RAM, side by side in its word (``banks x width`` bits): every
    phase writing it writes every bank at once (one request a bank, each to one bank known at compile time, from
    one tap, without a guard), so the banks' write enables are equal; its reads and writes each have one address
    for all banks (``any_bank``); nothing but the datapath writes it (no host words, no initial values); and block
    RAM holds the wide word in fewer blocks than the banks one by one (the inference's output of 30 MLPs: 32
    banks of 150 x 16 bits, 16 BRAM36 in RAMB18s, one RAM of 150 x 512 bits in 7.5)."""
    if m["read_only"] or m["init"] or m["banks"] < 2 or m["load_port"] is not None:
        return False
    writes = [wr for wr in w.writes if wr["memory"] == m["name"]]
    if not writes or any(wr["stream"] or len(wr["banks"]) != 1 or wr["guard"] or not wr.get("any_bank")
                         for wr in writes):
        return False
    if not all(r.get("any_bank") for r in w.reads if r["memory"] == m["name"]):
        return False
    by_phase: dict[int, list[dict]] = {}
    for wr in writes:
        by_phase.setdefault(wr["phase"], []).append(wr)
    if any(sorted(wr["banks"][0] for wr in ws) != list(range(m["banks"])) or len({wr["tap"] for wr in ws}) != 1
           or len({wr["last_only"] for wr in ws}) != 1 for ws in by_phase.values()):
        return False
    one = resources.bank_mapping(m["mem_depth"], m["width"], False)
    wide = resources.bank_mapping(m["mem_depth"], m["width"] * m["banks"], False)
    return one.kind == wide.kind == "bram" and wide.bram36 < m["banks"] * one.bram36


def _share_write_addresses(w: _Wiring, apart: set[str]) -> None:
    """Mark the write requests (on the first port) whose address may go to every bank of their memory
    (``"any_bank"``, as ``_share_read_addresses``): on a memory of several banks whose writes by two phases never
    land in one cycle (``apart``: the write enables keep their bank condition, and a bank not written ignores its
    address), each phase writing it at one row from each of its taps. A phase writes from several taps only in a
    serialized drain (backends/drains.py), whose taps never write in one cycle (its slots are fewer than its
    reduction's points, and a reduction writes only at its last point): the controller keeps one address per
    phase and tap (``circt_child.writes``), a bank takes the one that writes."""
    writes = [wr for wr in w.writes if not wr.get("port_b")]
    rows = _rows_by_phase(w, writes)
    for wr in writes:
        if w.mems[wr["memory"]]["banks"] > 1:
            wr["any_bank"] = wr["memory"] in apart and all(len(k) == len({tap for tap, _ in k})
                                                           for k in rows[wr["memory"]].values())


def _rows_by_phase(w: _Wiring, reqs: list[dict]) -> dict[str, dict[int, set]]:
    """memory -> phase -> the (tap, ``_row_key``) pairs of ``reqs`` there: one pair, one address."""
    rows: dict[str, dict[int, set]] = {}
    for req in reqs:
        m = w.mems[req["memory"]]
        key = (req.get("tap"), _row_key(req, m["factors"], m["bank_shape"]))
        rows.setdefault(req["memory"], {}).setdefault(req["phase"], set()).add(key)
    return rows


def _writes_apart(s: sched.Schedule) -> set[str]:
    """The memories whose writes by two phases never land in one cycle. On the main stream a phase B after a phase A
    sets up at least ``drain`` cycles after A's last issue plus the shortest advance of each phase between them, so
    B's first write lands after A's last one where A's latest write tap less B's earliest falls short of that gap;
    the program's passes repeat its stage phases (two passes are checked, the wrap-around included). The side
    stream's phases wait for every write of the phases before them that share a memory (passes/streams.py)."""
    clash: set[str] = set()
    for phases in s.commands.values():
        main = [ph for ph in phases if ph.stream == streams.MAIN]
        body = [k for k, ph in enumerate(main) if ph.kind == "stage"]
        seq = main
        if body and main[body[0]].groups > 1:
            first, last = body[0], body[-1]
            seq = main[:first] + main[first:last + 1] * 2 + main[last + 1:]
        shortest = [min(ph.advance_in(p) for p in range(ph.groups)) for ph in seq]
        for i, a in enumerate(seq):
            gap = 1 + sched.SETUP_CYCLES + a.drain_cycles
            for j in range(i + 1, len(seq)):
                b = seq[j]
                for port in a.writes:
                    late = [q.tap for q in b.writes if q.buffer == port.buffer]
                    if late and port.tap - min(late) >= gap:
                        clash.add(port.buffer)
                gap += shortest[j]
    return {m for phases in s.commands.values() for ph in phases for m in (q.buffer for q in ph.writes)} - clash


def _row_key(req: dict, factors: list[int], bank_shape: list[int]) -> tuple:
    """What a request's row within its bank depends on (``circt_child.locate``): per index dim, for a dim cut
    evenly into the banks its coefficients and constant divided by the bank factor; for a plain sum over ``f``
    banks, ``floor((T + c) / f)`` with ``T`` a multiple of ``g``, the gcd of ``f`` and its coefficients, the same
    for every constant ``c`` of one quotient by ``f`` and one quotient of its remainder by ``g``; else the dim as it
    is. Equal keys in one phase mean one address."""
    key = []
    for a, f, rows, w in zip(req["index"], factors, bank_shape, req["dim_bits"], strict=True):
        if rows <= 1:
            key.append(None)
        elif a["div"] == 1 and not a["mod"] and all(c % f == 0 for _, c in a["terms"]):
            key.append((tuple((k, c // f) for k, c in a["terms"]), a["const"] // f))
        elif a["div"] == 1 and not a["mod"] and a["const"] >= 0:
            g = math.gcd(f, *(c for _, c in a["terms"]))
            key.append((tuple(map(tuple, a["terms"])), a["const"] // f, a["const"] % f // g, w))
        else:
            key.append((tuple(map(tuple, a["terms"])), a["const"], a["div"], a["mod"], w))
    return tuple(key)


def _acts(w: _Wiring) -> dict[str, str]:
    """The controller's ``act_p<i>`` outputs by phase id: a pooled unit's phases (its operands go to the shared
    multipliers this cycle; a host's ``act`` becomes the OR of its own and its guests') and the guests that
    select their operands by them (``_Wiring.add_guest``)."""
    act = {u["inst"][1:]: u["act"] for u in w.units if u["pooled"] and not u["own_product"]} | w.acts
    for u in w.units:
        if u["pooled"] and not u["own_product"] and u["guests"]:
            act.update({str(g): f"act_p{g}" for g, _ in u["guests"]})
            u["act"] = " | ".join([u["act"], *(f"act_p{g}" for g, _ in u["guests"])])
    return dict(sorted(act.items(), key=lambda kv: int(kv[0])))


def sim_gates(w: _Wiring, pool: dict | None, engine: dict | None, phase_count: int, hold: int) -> dict:
    """The blocks' clock gates of the top's simulation-only code (``ifdef VERILATOR``, templates/rtl/top.sv.j2).
    Each datapath unit (and the controller's go, act and first outputs of its phase), each memory (its banks,
    write data, fabric copies and read multiplexers, and the controller's requests and ports of that memory),
    the shared multipliers and the MAC engine get a clock that runs only while a phase that uses them runs
    (the controller's ``phase_q``), ``hold`` cycles after (the reset's drain: longer than any phase's
    issue-to-write delay, so their pipelines empty and the last writes land) and in reset. Verilator evaluates
    a block only at its clock's edges, so idle blocks cost nothing; at its edges a gated block computes what it
    did on ``clk``, and outside them nothing reads it (its requests, writes, operands and results belong to its
    phases, and its pipelines hold their idle values), so results and cycle counts are unchanged. Synthesis
    sees every block on ``clk``."""
    uses: dict[str, set[int]] = {}
    for r in [*w.reads, *w.writes]:
        uses.setdefault(f"m_{r['memory']}", set()).add(r["phase"])
    memories = {m: f"m_{m}" for m in w.mems if f"m_{m}" in uses}
    written = {r["phase"]: memories[r["memory"]] for r in reversed(w.writes)}
    for u in w.units:  # on the clock of the memory it writes (fewer clocks: each costs Verilator every cycle)
        i = int(u["inst"][1:])
        u["gate"] = written.get(i, u["inst"])
        uses.setdefault(u["gate"], set()).update(g for g, _ in unit_stages(u))  # its guests' phases too
    for shared, blk in (("pool", pool), ("eng", engine)):
        if blk is not None:
            uses[shared] = {g for u in blk["users"] for g, _ in unit_stages(u)}
    for x in w.muxes:
        x["gate"] = memories.get(x["memory"], "")
    return {"phase_bits": bits(phase_count), "hold": hold, "hold_bits": hold.bit_length(),
            "gates": [{"name": g, "phases": sorted(ph), "mask": sum(1 << i for i in ph)}
                      for g, ph in sorted(uses.items())],
            "memories": memories, "phase_count": phase_count,
            "ctrl": sorted({*memories.values(), *(u["gate"] for u in w.units)})}  # the controller's clk_<gate> inputs


def _sr_call(command: str) -> str:
    """The top's register of ``command``'s finished calls times ``stochastic.STEP``."""
    return f"sr_call_{_ident(command)}"


def saturation_view(kernel, mems: dict) -> dict:
    """The saturation counters in the top (docs/saturation.md): one per ``saturation.counter_buffers`` buffer,
    in that order, each adding the events of the writes to its memory's banks (``we`` and the written lane's
    ``ovf``); ``read_saturation`` (``code``) streams them out and zeroes them."""
    counters = []
    for k, buffer in enumerate(saturation.counter_buffers(kernel)):
        m = mems.get(buffer)
        if m is None or m["read_only"]:
            raise RtlCodegenError(f"buffer {buffer}: its saturation counter needs it in a written memory; "
                                  "compile without saturation_counters")
        counters.append({"index": k, "buffer": buffer, "banks": m["banks"], "ew": m["banks"].bit_length(),
                         "we": [pt["we"] for pt in m["ports"]]})
    return {"code": interface.COMMANDS[saturation.COMMAND], "command": saturation.COMMAND, "counters": counters,
            "memories": [c["buffer"] for c in counters], "bits": saturation.COUNTER_MAX.bit_length(),
            "left_bits": bits(len(counters))}


def _command_spec(code: int, phases, pid: dict) -> dict:
    """A command for the controller: its code, its main stream's phases in order (the FSM's states), its model
    groups' loop; with side phases (passes/streams.py) those in order and its first and last main stage phases
    (the side stream starts with each pass of the first; the last ends when the side stream is idle)."""
    spec = {"code": code, "phases": [pid[id(p)] for p in phases if p.stream == streams.MAIN],
            "repeat": _repeat(phases, pid)}
    side = [pid[id(phases[i])] for i in streams.side_order(phases)]
    if side:
        main = [pid[id(p)] for p in phases if p.stream == streams.MAIN and p.kind == "stage"]
        spec.update(side=side, first=main[0], last=main[-1])
    return spec


def _phase_specs(command: list, pid: dict) -> list[dict]:
    """The phases of a command for the controller: their counts, reduced counters and drains; with side phases in
    the command each one's stream, write delay and the phases whose done flags it waits for (a side phase: every
    main phase up to its wait; a main phase: its side phase) and whether its flag is cleared with each pass (a
    program's phase)."""
    specs = [{"id": pid[id(p)], "name": _ident(p.name), "kind": p.kind, "counters": _phase_counts(p),
              "reduce": list(p.reduce), "drain": p.drain_cycles, "streams": bool(p.streamed), "in_words": p.in_words}
             | ({"lag": p.lag, "groupless_pass": p.groupless_pass} if p.lag is not None else {})
             | ({"idle_drain": p.idle_drain} if p.idle_drain else {})
             for p in command]
    if streams.has_side(command):
        main = [k for k, q in enumerate(command) if q.stream == streams.MAIN]
        stages = [k for k in main if command[k].kind == "stage"]
        for k, (p, spec) in enumerate(zip(command, specs, strict=True)):
            waits = [] if p.wait is None else [command[p.wait]] if p.stream == streams.MAIN else \
                [command[q] for q in main if q <= p.wait]
            spec.update(stream=p.stream, write_delay=p.write_delay, waits=[pid[id(q)] for q in waits],
                        in_body=stages[0] <= k <= stages[-1] or p.stream == streams.SIDE)
    return specs


def _repeat(phases, pid: dict) -> dict | None:
    """A command whose program runs in model groups: its first and last stage phases and the group count."""
    grouped = [p for p in phases if p.group_counter is not None and p.stream == streams.MAIN]
    if not grouped:
        return None
    return {"first": pid[id(grouped[0])], "last": pid[id(grouped[-1])], "count": grouped[0].groups}


def _phase_counts(p) -> list[int]:
    """A phase's counter counts; a phase of model groups also the group counter's (at its index: the counters
    between count 1, loops the phase does not have), a lagging one then its group's (the group counter less one)."""
    counts = [c.count for c in p.counters]
    if p.group_counter is not None:
        counts += [1] * (p.group_counter - len(counts)) + [p.groups] * (2 if p.lag else 1)
    return counts


def _check_mappable(kernel) -> None:
    """Every stage is an op the RTL has a datapath for, and passes the backends' common checks."""
    for prog in kernel.programs.values():
        for st in prog.stages:
            where = f"stage {st.name!r} of program {prog.name!r}"
            if st.op not in RTL_OPS:
                raise RtlCodegenError(f"{where}: op {st.op!r} has no RTL datapath yet (RTL ops: {', '.join(RTL_OPS)})")
            try:
                check_stage(st, kernel, where, prog.groups)
            except Fx2fpgaError as e:
                raise RtlCodegenError(str(e)) from None


def _memory_view(m) -> dict:
    """A scheduled memory as the templates and the controller see it (ports and sources filled in later)."""
    return {"name": m.buffer, "mem": m, "width": m.width, "signed": m.signed, "banks": m.banks,
            "depth": m.depth, "addr_bits": m.addr_bits, "bank_bits": m.bank_bits,
            "read_only": m.read_only, "factors": list(m.factors), "bank_shape": list(m.bank_shape),
            "sources": [[] for _ in range(m.banks)], "ovf_sources": [[] for _ in range(m.banks)],
            "read_banks": set(), "direct_banks": set(),
            "mem_depth": max(2, m.depth), "block_banks": 0,
            "init": m.init is not None or m.read_only}


class _Wiring:
    """The phases' reads, writes and units, connected: which register carries each operand of each lane."""

    def __init__(self, mems: dict):
        self.mems = mems
        self.units, self.reads, self.writes, self.packs, self.muxes = [], [], [], [], []
        self.in_bits = 0  # the input word's bits any unpack phase writes
        self.go: dict[str, str] = {}
        self.first: dict[str, str] = {}
        self.last: dict[str, str] = {}  # each reduction's last point (its unit's result registers take the result)
        self.shared: dict[tuple, list[dict]] = {}  # (buffer, banks) -> the read multiplexers over those banks
        self.data_of: dict[tuple[int, int, int], str] = {}  # (phase id, operand, lane) -> data expression
        self.ok_of: dict[tuple[int, int, int], str] = {}  # (phase id, operand, lane) -> "the guarded read happened"
        self.stream_bits = 0  # the input word's bits a stage takes as operands (add_stream)
        self.acts: dict[str, str] = {}  # a guest phase's "operands arrive" signal where it selects them (add_guest)

    def add_reads(self, ph, i: int) -> None:
        """The read requests of phase ``i`` and where their data arrives."""
        for r, port in enumerate(ph.reads):
            mem = self.mems[port.buffer]
            mem["read_banks"].update(port.banks)
            sel = None
            if len(port.banks) > 1:  # a bank known at run time: a registered multiplexer picks its data
                mux = self._multiplexer(port, i, r)
                sel = mux["sel"]
                self._serve(self.data_of, i, port, mux["name"])
            else:  # one bank: its data's second register, shared by every request of that bank
                self._serve(self.data_of, i, port, f"rdd_{port.buffer}_{port.banks[0]}")
                mem["direct_banks"].add(port.banks[0])
            ok = f"ok_p{i}_r{r}" if port.guard else None
            if ok:
                self._serve(self.ok_of, i, port, ok)
            self.reads.append({"phase": i, "memory": port.buffer,
                               "index": [controller.affine_spec(a) for a in port.index],
                               "banks": list(port.banks), "sel": sel, "ok": ok, "guard": _guard_spec(port.guard),
                               "dim_bits": list(port.dim_bits)})

    def _multiplexer(self, port, i: int, r: int) -> dict:
        """The registered multiplexer over ``port``'s banks that read ``r`` of phase ``i`` takes: one an earlier
        phase reads those banks through (issue windows never overlap and every read selects at the same tap
        after its issue; the controller ORs their selects, each 0 while its request does not hit), else a new one."""
        muxes = self.shared.setdefault((port.buffer, tuple(port.banks)), [])
        for mux in muxes:
            if i not in mux["phases"]:
                mux["phases"].append(i)
                return mux
        mem = self.mems[port.buffer]
        mux = {"name": f"data_p{i}_r{r}", "sel": f"rsel_p{i}_r{r}", "sel_bits": mem["bank_bits"], "memory": port.buffer,
               "width": mem["width"], "banks": [(b, f"rdq_{port.buffer}_{b}") for b in port.banks], "phases": [i]}
        muxes.append(mux)
        self.muxes.append(mux)
        return mux

    @staticmethod
    def _serve(table: dict, i: int, port, signal: str) -> None:
        """``signal`` is operand ``port.operand`` of every lane the read request serves."""
        for lane in port.served:
            table[i, port.operand, lane] = signal

    def add_writes(self, ph, i: int, counted: bool = False, key: int | None = None, unit: int | None = None) -> None:
        """The write requests of phase ``i``, each bank's data sources numbered (``counted``: with the lanes'
        saturation event flags ``p<i>_ovf_<lane>``, else ``1'b0``, in ``ovf_sources``; ``key``: the stage's
        stochastic rounding key, each lane's point plus the key as ``srp_p<i>_<lane>``; ``unit``: the phase whose
        unit computes its results, where not its own: a bank it writes already taking them is not given them twice)."""
        unit = i if unit is None else unit
        for port in ph.writes:
            mem = self.mems[port.buffer]
            if port.field is not None:  # field f of the input word (interface.py's word packing)
                src = self._word_field("in_d1", port.field, mem["width"])
            else:
                src = f"p{unit}_out_{port.lane}"
            ovf = f"p{i}_ovf_{port.lane}" if counted and port.field is None else "1'b0"
            source = {}
            for b in port.banks:
                if unit != i and src in mem["sources"][b]:  # (a guest's ovf is 1'b0, as its host's: twin_hosts)
                    source[str(b)] = mem["sources"][b].index(src)
                    continue
                mem["sources"][b].append(src)
                mem["ovf_sources"][b].append(ovf)
                source[str(b)] = len(mem["sources"][b]) - 1
            self.writes.append({"phase": i, "memory": port.buffer, "stream": port.field is not None,
                                "index": [controller.affine_spec(a) for a in port.index],
                                "banks": list(port.banks), "tap": port.tap, "last_only": port.last_only,
                                "source": source, "guard": _guard_spec(port.guard), "dim_bits": list(port.dim_bits)})
            if key is not None and port.field is None:  # (an input word written is not rounded)
                point = controller.affine_spec(port.point)
                point["const"] = (point["const"] + key) & stochastic.MASK32
                self.writes[-1].update(point=point, srp=f"srp_p{i}_{port.lane}")

    def add_stream(self, ph, i: int) -> None:
        """Phase ``i``'s operands taken from the input stream (``Phase.streamed``): the word's field at the operand
        tap (``in_d<OPERAND_TAP>``, the arriving word's delay line)."""
        for operand, served, f in ph.streamed:
            width = self.mems[ph.stage.ins[operand].buffer]["width"]
            self.stream_bits = max(self.stream_bits, (f + 1) * width)
            for lane in served:
                self.data_of[i, operand, lane] = self._word_field(f"in_d{sched.OPERAND_TAP}", f, width)

    def _word_field(self, word: str, f: int, width: int) -> str:
        """Field ``f`` of ``width`` bits of the input word ``word`` (a register of its delay line); counts the
        word's bits in use (``in_bits``)."""
        lo, hi = f * width, (f + 1) * width
        self.in_bits = max(self.in_bits, hi)
        return word if hi - lo == IN_BITS else f"{word}[{hi - 1}:{lo}]"

    @staticmethod
    def _lane_signal(table: dict, i: int, o: int, lane: int) -> str | None:
        """Operand ``o``'s signal on ``lane`` of phase ``i`` in ``data_of``/``ok_of`` (lane 0's where one request
        serves every lane)."""
        return table.get((i, o, lane), table.get((i, o, 0)))

    def add_unit(self, unit: dict, ph, i: int) -> None:
        """Phase ``i``'s datapath unit, its operands' data and guard signals per lane."""
        unit["inputs"] = [[self._lane_signal(self.data_of, i, o, lane) for lane in range(ph.lanes)]
                          for o in range(len(ph.stage.ins))]
        oks = []
        for o, operand in enumerate(unit["ops"]):
            lanes_ok = [self._lane_signal(self.ok_of, i, o, lane) for lane in range(ph.lanes)]
            operand["guarded"] = any(lanes_ok)
            oks.append([x or "1'b1" for x in lanes_ok])
        unit["oks"] = oks
        if unit["kind"] == "reduce":
            self.go[str(i)] = unit["go"] = f"go_p{i}"
            self.first[str(i)] = unit["first"] = f"first_p{i}"
            self.last[str(i)] = unit["last"] = f"last_p{i}"
        self.units.append(unit)

    def add_guest(self, host: dict, ph, i: int) -> None:
        """Phase ``i`` runs on ``host``, an earlier phase's unit of the same hardware (``twin_hosts``): each of its
        operands that is not the host's own signal reaches the unit in the cycles ``act_p<i>`` says phase ``i``'s
        operands arrive; its ``go``/``first`` join the host's."""
        sel = f"act_p{i}"
        for o, operand in enumerate(host["ops"]):
            for lane in range(ph.lanes):
                data = self._lane_signal(self.data_of, i, o, lane)
                if data != host["inputs"][o][lane]:
                    host["inputs"][o][lane] = f"({sel} ? {data} : {host['inputs'][o][lane]})"
                    self.acts[str(i)] = sel
                ok = self._lane_signal(self.ok_of, i, o, lane) or "1'b1"
                if ok != host["oks"][o][lane]:
                    host["oks"][o][lane] = f"({sel} ? {ok} : {host['oks'][o][lane]})"
                    self.acts[str(i)] = sel
                    operand["guarded"] = True
        if host["kind"] == "reduce":
            host["points"] = min(host["points"], ph.stage.reduction_points)
            self.go[str(i)], self.first[str(i)], self.last[str(i)] = f"go_p{i}", f"first_p{i}", f"last_p{i}"
            host["go"] += f" | go_p{i}"
            host["first"] += f" | first_p{i}"
            host["last"] += f" | last_p{i}"
        host["guests"].append((i, ph.stage))


def _controller_outputs(w: _Wiring, act: dict, out_sel_bits: int, command_of: dict[int, str],
                        apart: set[str]) -> list[tuple[str, int]]:
    """The controller's output ports (name, width); fills in each memory bank's port names (``command_of``: each
    phase id's command; ``_load_through_second_port``), marks the requests whose address every bank may take
    (``apart``: the memories whose writes by two phases never land in one cycle, ``_writes_apart``) and the
    memories whose banks are one RAM side by side (``_banks_side_by_side``)."""
    _load_through_second_port(w, command_of)
    _share_read_addresses(w)
    _share_write_addresses(w, apart)
    for m in w.mems.values():
        m["side_by_side"] = _banks_side_by_side(w, m)
    outputs: list[tuple[str, int]] = [("idle", 1), ("in_ready", 1), ("in_two", 1), ("out_valid", 1),
                                      ("unused_bits", 1)]
    if out_sel_bits:
        outputs.append(("out_sel", out_sel_bits))
    outputs += [(p, 1) for p in [*w.go.values(), *w.first.values(), *w.last.values(), *act.values()]]
    outputs += [(wr["srp"], 32) for wr in w.writes if "srp" in wr]
    sels = set()
    for r in w.reads:
        if r["sel"] and r["sel"] not in sels:
            sels.add(r["sel"])
            outputs.append((r["sel"], w.mems[r["memory"]]["bank_bits"]))
        if r["ok"]:
            outputs.append((r["ok"], 1))
    for m in w.mems.values():
        m["ports"] = []
        for b in range(m["banks"]):
            ports = {"raddr": f"raddr_{m['name']}_{b}"}
            outputs.append((ports["raddr"], m["addr_bits"]))
            if not m["read_only"]:
                ports.update(we=f"we_{m['name']}_{b}", waddr=f"waddr_{m['name']}_{b}")
                outputs += [(ports["we"], 1), (ports["waddr"], m["addr_bits"])]
                if m["load_port"] is not None:  # the stream on the second port, at the read address
                    ports.update(we_b=f"web_{m['name']}_{b}")
                    outputs.append((ports["we_b"], 1))
                elif len(m["sources"][b]) > 1:
                    ports.update(wsel=f"wsel_{m['name']}_{b}", wsel_bits=bits(len(m["sources"][b]) - 1))
                    outputs.append((ports["wsel"], ports["wsel_bits"]))
            m["ports"].append(ports)
    return outputs


# ----- public API ----------------------------------------------------------------------------------------------

_CONTROLLERS: dict[str, dict[str, str]] = {}  # spec digest -> lowered files (a process-wide memo)


def _controller_files(spec: dict) -> dict[str, str]:
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    if key not in _CONTROLLERS:
        _CONTROLLERS[key] = controller.run_child(spec)
    return dict(_CONTROLLERS[key])


def _hex_file(values: list[int], width: int) -> str:
    digits = max(1, -(-width // 4))
    return "".join(f"{_hex(v, width).zfill(digits)}\n" for v in values)


def _stream_note(p: Phase, phases: list[Phase]) -> str:
    """Where a phase of a command with side phases runs (passes/streams.py): the side stream, and what it waits for."""
    if not streams.has_side(phases):
        return ""
    after = f", after `{phases[p.wait].name}`" if p.wait is not None else ""
    return f"side stream{after}" if p.stream == streams.SIDE else (f"main, waits for `{phases[p.wait].name}`"
                                                                    if p.wait is not None else "")


def _schedule_rows(s: Schedule) -> list[dict]:
    rows = []
    for cmd, phases in s.commands.items():
        idle = [p for p in phases if p.idle_drain]
        rows.append({"name": cmd, "cycles": s.call_cycles(cmd), "side": streams.has_side(phases),
                     "passes": idle[0].groups if idle else 0,
                     "idle_drain": max((p.idle_drain for p in idle), default=0),
                     "idle_first": [p.name for p in idle if p.idle_in(0)],
                     "idle_last": [p.name for p in idle if p.idle_in(p.groups - 1)], "phases": [{
            "name": p.name, "kind": p.kind, "op": p.stage.op if p.stage else "", "lanes": p.lanes,
            "stream": _stream_note(p, phases),
            "loops": " x ".join(f"{c.var}:{c.extent}" + (f"/{c.step}" if c.step > 1 else "") for c in p.counters),
            "issues": p.iterations, "delay": p.write_delay, "cycles": p.cycles,
            "drain": p.drain_cycles, "advance": p.advance,
            "util": f"{sched.mac_utilization(p):.3f}" if p.stage is not None and p.stage.op == "mac" else ""}
            for p in phases]})
    return rows


def generate(kernel, version: str, clock_mhz: float = 100.0, dsp_kind: str = "DSP48E1",
             rtl_plan: RtlPlan | None = None) -> dict[str, str]:
    """The ``rtl/`` files of ``kernel``: relative path -> text (deterministic). ``dsp_kind``: the
    target's multiplier block, whose operand widths decide how products are split. ``rtl_plan``:
    the kernel's plan for that ``dsp_kind`` where already made."""
    name = kernel.name
    p = rtl_plan if rtl_plan is not None else plan(kernel, name, dsp_kind)
    banner = f"// Automatically generated by fx2fpga {version} -- do not edit."
    env = template_env()
    ctx = {"banner": banner, "name": name, "version": version, "word_bits": WORD_BITS, "in_bits": IN_BITS,
           "pairs": any(ph.in_words == 2 for ph in p.schedule.phases()), "operand_tap": sched.OPERAND_TAP,
           **p.template_vars()}
    files: dict[str, str] = {}
    for path, text in sorted(_controller_files(p.spec).items()):
        files[f"rtl/{path}"] = f"{banner}\n{text}"
    for c in p.cvts:
        files[f"rtl/{c['name']}.sv"] = env.get_template("rtl/cvt.sv.j2").render(banner=banner, c=c)
    dual_port = ("fx2fpga_ram_tdp",) if any(m["load_port"] is not None for m in p.memories) else ()
    for prim in ("fx2fpga_mult", "fx2fpga_mac", "fx2fpga_ram", "fx2fpga_ram_init", *dual_port, "fx2fpga_rom",
                 "fx2fpga_rom2"):
        files[f"rtl/{prim}.sv"] = env.get_template(f"rtl/{prim}.sv.j2").render(banner=banner)
    if p.sr_calls:
        files["rtl/fx2fpga_srbits.sv"] = env.get_template("rtl/fx2fpga_srbits.sv.j2").render(
            banner=banner, rounds=stochastic.ROUNDS)
    if p.engine:
        files[f"rtl/{p.engine['module']}.sv"] = env.get_template("rtl/engine.sv.j2").render(
            banner=banner, e=p.engine, pool=p.pool)
    for u in p.units:
        files[f"rtl/{u['module']}.sv"] = env.get_template("rtl/unit.sv.j2").render(banner=banner, u=u)
        if u["kind"] in ("table", "normalized"):
            tbl = kernel.buffers[u["table"] if u["kind"] == "table" else u["rom_buffer"]]
            files[f"rtl/{u['rom']}"] = _hex_file(list(tbl.init), tbl.fmt.width)
    for m in p.memories:
        if m["init"]:
            for b, values in enumerate(m["mem"].bank_init()):
                values = values + [0] * (m["mem_depth"] - len(values))
                files[f"rtl/mem/{m['name']}_{b}.hex"] = _hex_file(values, m["width"])
    files[f"rtl/{name}_top.sv"] = env.get_template("rtl/top.sv.j2").render(ctx)
    cmds = command_table(kernel, p.schedule.codes)
    files["rtl/sim_main.cpp"] = env.get_template("rtl/sim_main.cpp.j2").render(ctx, commands=cmds)
    files["rtl/schedule.md"] = env.get_template("rtl/schedule.md.j2").render(
        name=name, version=version, clock_mhz=clock_mhz, commands=_schedule_rows(p.schedule))
    sources = sorted(f[4:] for f in files if f.endswith(".sv") and not f.endswith("_enum_typedefs.sv"))
    files["rtl/files.f"] = "".join(f"{s}\n" for s in sources)
    from . import axi  # the bus top <name>_axi.v (Verilog: Vivado module references) and its harness sim_axi.cpp

    files.update(axi.generate(kernel, p.schedule.codes, banner))
    files["rtl/files.f"] += f"{name}_axi.v\n"  # last: it instantiates {name}_top
    return dict(sorted(files.items()))


def project_files(kernel, version: str, clock_mhz: float = 100.0, dsp_kind: str = "DSP48E1",
                  schedule: Schedule | None = None, rtl_plan: RtlPlan | None = None) -> dict[str, str]:
    """The ``rtl/`` files of a project folder, or ``rtl/README.md`` saying why there is no RTL.
    ``schedule``, ``rtl_plan``: the kernel's, where already made (the pipeline's "schedule" step).

    The HLS project does not depend on the RTL: a kernel the RTL backend cannot map yet (or a
    machine without the ``circt`` package) still gets its folder, and ``load("rtl")`` reports
    the reason written here.
    """
    if importlib.util.find_spec("circt") is None:
        why = "the circt Python package is not installed: pip install 'fx2fpga[rtl]' (or circt) and recompile"
    else:
        try:
            if rtl_plan is None:
                rtl_plan = plan(kernel, kernel.name, dsp_kind, schedule)
            return generate(kernel, version, clock_mhz, dsp_kind, rtl_plan)
        except (RtlCodegenError, sched.ScheduleError, controller.ControllerError) as e:
            why = str(e)
        except Exception as e:  # a bug in the RTL generator must not cost the user the HLS project
            why = f"internal error in the RTL generator ({type(e).__name__}: {e}); please report it"
    return {"rtl/README.md": f"# No RTL for {kernel.name}\n\n{NO_RTL}\n\n{why}\n"}


NO_RTL = "fx2fpga wrote no Verilog for this kernel, so the `rtl` backend cannot run it:"


def dsp_blocks(kernel, dsp_kind: str) -> int:
    """DSP blocks the generated RTL instantiates (its ``fx2fpga_mult``s): the shared multipliers'
    partial products, one set per lane, the function tables' interpolation products and the divisions'
    products."""
    return plan(kernel, kernel.name, dsp_kind).dsp_blocks


def call_cycles(kernel) -> dict[str, int]:
    """Exact clock cycles of each command of ``kernel`` in the generated RTL (the schedule's model)."""
    return sched.run(kernel).cycles()
