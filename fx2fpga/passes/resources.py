"""The RTL resource model: LUT, FF, DSP and BRAM36 of the generated Verilog, calibrated against Yosys.

``rtl_resources(plan_or_design, target)`` predicts what Yosys ``synth_xilinx`` counts for a kernel's
RTL from its ``RtlPlan`` (``backends/rtl/emit.py``) alone, in milliseconds instead of minutes:

- **DSP** is exact: ``RtlPlan.dsp_blocks`` (the shared multipliers' partial products per lane, plus the
  function tables' interpolation products and the divisions' products) is what the RTL instantiates.
- **BRAM36** follows Yosys' memory mapping (``memory_libmap`` with the xc7 libraries) bank by bank:
  ``bank_mapping`` says whether a bank of ``depth x width`` becomes distributed RAM (LUT-RAM), block RAM
  (RAMB18/RAMB36, whichever is cheaper) or, for a small ROM, logic.
- **LUT** and **FF** are a linear model over features of the plan (``rtl_features``): per unit kind the
  datapath's adder, fixed-point conversion and multiplexer bits times lanes, the multiplier pool's operand
  multiplexing, the memories' registers and write-source multiplexers, the controller's counters and
  address generators, LUT-RAM LUTs, table ROM bits, and the delay lines Yosys maps to SRL16E shift registers
  (``srl_bits``). The coefficients are data:
  ``fx2fpga/targets/xc7_rtl_costs.json``, fitted by non-negative least squares to Yosys counts of a set of
  calibration designs (``benchmarks/calibrate_resources.py``, which also states the fit's errors).

The model says nothing about timing and is calibrated for 7-series targets (``synth_xilinx -family xc7``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources as pkg_resources

from fx2fpga_runtime.ops import is_compare_select

from ..errors import Fx2fpgaError
from . import schedule as sched

COSTS_FILE = "xc7_rtl_costs.json"
LUT_FEATURES = ("const", "adder_bits", "cvt_bits", "select_bits", "ctrl_bits", "lutram_luts", "block_lutram_luts",
                "rom_bits", "sr_bits", "srl_bits")
FF_FEATURES = ("const", "unit_reg_bits", "mem_reg_bits", "pool_reg_bits", "ctrl_bits")
RESOURCES = ("lut", "ff", "dsp", "bram36")
# The share of each of a target's resources a design is planned to fill at most (its allowance): the margin is the
# model's error. LUT and FF are fitted (the LUT model's largest leave-one-out error is 15%: docs/rtl.md); the DSP
# blocks are exact (the plan instantiates them) and block RAM within the fit's largest error (1.8%). Until session 26
# one margin held for all four (85%), leaving 15% of the DSPs and block RAM idle on designs they bind.
ALLOWED_SHARE = {"lut": 0.85, "ff": 0.85, "dsp": 1.0, "bram36": 0.98}


def allowance_text() -> str:
    """``ALLOWED_SHARE`` in words, for messages."""
    return ", ".join(f"{share:.0%} of the {r.upper()}" for r, share in ALLOWED_SHARE.items())


def allowance(target) -> dict[str, float]:
    """What a design may be planned to use of each of ``target``'s resources (``ALLOWED_SHARE`` of each)."""
    return {r: ALLOWED_SHARE[r] * getattr(target, r) for r in RESOURCES}


@dataclass(frozen=True)
class PredictedResources:
    """Predicted resources of the generated RTL (Yosys' measured ones: ``toolchains.yosys.Resources``): LUTs
    (logic and LUT-RAM), flip-flops, DSP blocks, BRAM36."""

    lut: int
    ff: int
    dsp: int
    bram36: float

    def shares(self, target) -> dict[str, float]:
        """The share of each of ``target``'s resources it uses."""
        return {r: getattr(self, r) / getattr(target, r) for r in RESOURCES}

    def load(self, target) -> float:
        """The largest share of a resource's allowance (``allowance``) it uses: at most 1 where it may be chosen."""
        return max(getattr(self, r) / cap for r, cap in allowance(target).items())

    def over_allowance(self, target) -> list[tuple[str, float, float]]:
        """(resource, needed, available) for each resource above its allowance on ``target`` (``allowance``)."""
        return [(r.upper(), getattr(self, r), getattr(target, r)) for r, cap in allowance(target).items()
                if getattr(self, r) > cap]

    def over_budget(self, target, share: float = 1.0) -> list[tuple[str, float, float]]:
        """(resource, needed, available) for each resource above ``share`` of the target's (as
        ``estimate.ResourceEstimate.over_budget``)."""
        return [(r.upper(), getattr(self, r), getattr(target, r)) for r, used in self.shares(target).items()
                if used > share]


@dataclass(frozen=True)
class BankMapping:
    """How Yosys maps one RAM/ROM bank: ``kind`` is ``lutram``, ``bram`` or ``logic``; ``luts``: LUT-RAM
    LUTs (RAM32M/RAM64M: 4 LUTs each); ``bram36``: RAMB36 plus half of each RAMB18."""

    kind: str
    luts: int = 0
    bram36: float = 0.0


def _bram_width(depth: int, full: int, dual_port: bool = False) -> int:
    """The widest port of a block RAM of ``full`` bits (18 or 36 kb, with the SDP mode's doubled width unless
    ``dual_port``: two ports that both write) that holds ``depth`` words: 36 bits for 512 words of a RAMB18, 18 for
    1024, 9 for 2048, ..."""
    words = 1024 if dual_port else 512  # at the widest port: 512 words of 36 (RAMB18, SDP) or 72 (RAMB36) bits
    width = (18 if dual_port else 36) * full // (18 * 1024)
    while depth > words and width > 1:
        words, width = words * 2, {72: 36, 36: 18, 18: 9, 9: 4, 4: 2, 2: 1}[width]
    return width if depth <= words else 0


TDP_PORT_BITS = 36  # the widest port of a true dual-port block RAM (a RAMB36 as 1K x 36)


def bram36_for(depth: int, width: int, dual_port: bool = False) -> float:
    """BRAM36 of one ``depth x width`` bank in block RAM: RAMB18s (0.5 each) or RAMB36s, the cheaper
    (``dual_port``: both ports write, so no SDP mode)."""
    w18, w36 = _bram_width(depth, 18 * 1024, dual_port), _bram_width(depth, 36 * 1024, dual_port)
    n18 = math.ceil(width / w18) if w18 else math.inf
    n36 = math.ceil(width / w36) * math.ceil(depth / (32 * 1024)) if w36 else math.inf
    if not (w18 or w36):  # deeper than one block RAM holds: blocks side by side and stacked in depth
        return float(min(math.ceil(width / w) * math.ceil(depth / words)  # a RAMB36's (width, words) shapes
                         for w, words in ((1, 32768), (2, 16384), (4, 8192), (9, 4096), (18, 2048), (36, 1024))))
    return min(0.5 * n18, float(n36))


def lutram_prims(depth: int, width: int) -> tuple[int, int]:
    """(primitives, depth replicas) of the cheaper simple dual-port LUT-RAM for ``depth x width``: RAM32M
    (32 x 6) or RAM64M (64 x 3), 4 LUTs each."""
    return min((math.ceil(depth / 32) * math.ceil(width / 6), math.ceil(depth / 32)),
               (math.ceil(depth / 64) * math.ceil(width / 3), math.ceil(depth / 64)))


def lutram_luts(depth: int, width: int) -> int:
    """LUTs of a ``depth x width`` simple dual-port LUT-RAM (``lutram_prims``, 4 LUTs each)."""
    return 4 * lutram_prims(depth, width)[0]


def bank_mapping(depth: int, width: int, read_only: bool) -> BankMapping:
    """Where Yosys puts one memory bank (``fx2fpga_ram``/``fx2fpga_rom``): the cheapest by ``memory_libmap``'s
    costs (xc7 libraries): logic 1 per bit (1/16 per ROM bit), a LUT-RAM primitive 8 (plus, as fitted to the
    calibration designs' mappings, half the width per extra depth replica for the read multiplexer: 128 x 24
    and 144 x 16 go to block RAM, 80 x 24 and 128 x 16 to LUT-RAM), a RAMB18 129, a RAMB36 257. LUT-RAM
    holds no ROM."""
    depth = max(2, depth)
    bram = bram36_for(depth, width)
    options = []  # (cost, mapping): the first of equal costs wins (an 8 x 1 RAM: LUT-RAM, not logic)
    if not read_only:
        prims, replicas = lutram_prims(depth, width)
        options.append((8 * prims + (replicas - 1) * width / 2, BankMapping("lutram", luts=4 * prims)))
    options += [(depth * width / (16 if read_only else 1), BankMapping("logic")),
                (258 * bram, BankMapping("bram", bram36=bram))]
    return min(options, key=lambda o: o[0])[1]


TABLE_BRAM36_MAX = 1.0  # a function table at most this big in block RAM goes there (rom_style "block")


def table_bram36(depth: int, width: int) -> float:
    """BRAM36 of a function table read twice a cycle (``fx2fpga_rom2``): true dual-port mode, whose widest
    shapes are a RAMB18's 1K x 18 (2K x 9, ...) and a RAMB36's 1K x 36 (2K x 18, 4K x 9, ...)."""
    shapes18 = ((1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))
    shapes36 = ((1024, 36), (2048, 18), (4096, 9), (8192, 4), (16384, 2), (32768, 1))
    n18 = min((math.ceil(width / w) for words, w in shapes18 if depth <= words), default=math.inf)
    n36 = min((math.ceil(width / w) for words, w in shapes36 if depth <= words), default=math.inf)
    return min(0.5 * n18, float(n36))


def table_mapping(depth: int, width: int) -> BankMapping:
    """Where a function table's ROM goes (``fx2fpga_rom2``: two reads a cycle): block RAM when it takes at most
    ``TABLE_BRAM36_MAX`` (the RTL asks for it, ``rom_style = "block"``: Yosys put a 1025 x 16 and a 534 x 24 table
    in 488 and 454 LUTs per lane without it, one RAMB36 each with it), else logic, Yosys' own choice."""
    bram = table_bram36(depth, width)
    return BankMapping("bram", bram36=bram) if bram <= TABLE_BRAM36_MAX else BankMapping("logic")


def unit_rom(u: dict) -> tuple[BankMapping, int] | None:
    """One lane's ROM: a table unit's (``fx2fpga_rom2``, two reads: two copies in logic) or a division unit's
    (``fx2fpga_rom``, one read); where Yosys puts it and its bits in logic. None: a unit without one."""
    if u["kind"] == "table":
        return table_mapping(u["depth"], u["table_width"]), u["depth"] * u["table_width"] * 2
    if u["kind"] == "normalized":
        return bank_mapping(u["depth"], u["rom_width"], read_only=True), u["depth"] * u["rom_width"]
    return None


# ----- features of a plan -------------------------------------------------------------------------------------

def unit_stages(u: dict) -> list[tuple[int, object]]:
    """(phase id, stage) of every phase a unit runs: its own, then its guests' (``emit.twin_hosts``)."""
    return [(int(u["inst"][1:]), u["stage"]), *u["guests"]]


def _unit_adder_bits(u: dict) -> int:
    """One lane's adder/comparator bits: the accumulator's sum or compare, an elementwise op's result, a
    table's clip and interpolation."""
    if u["engine"]:  # the MAC engine accumulates (engine_features)
        return 0
    if u["kind"] == "reduce":
        return u.get("sum_width", 2 * u["acc_iw"])  # max/argmax: a compare and a select
    if u["kind"] == "table":
        return 2 * u["xw"] + u["rw"] + u["yw"]
    if u["kind"] == "normalized":  # max(b, 1), the leading one, the ROM address
        return 2 * u["bw"] + u["t"]
    if u["op"] in ("add", "sub", "msub", "neg", "abs", "eq", "ne", "lt", "le", "gt", "ge"):
        return u["res_width"]
    if is_compare_select(u["op"]):  # the fused comparison's subtraction
        return u["cast_width"]
    return 0


def _unit_cvt_bits(u: dict) -> int:
    """One lane's fixed-point conversion outputs (rounding and saturation logic)."""
    if u["engine"]:  # only the initial value's: the engine converts the result
        return u["acc_width"] * ("cvt_init" in u)
    if u["kind"] == "reduce":
        return u["acc_width"] * (("cvt_sum" in u) + ("cvt_init" in u) + ("cvt_term" in u)) + u["out_width"]
    return u["out_width"] + u.get("mid_width", 0)


def _unit_reg_bits(u: dict) -> int:
    """One lane's pipeline registers: the operands, the term, the accumulator, the aligned initial value, the
    result; a table unit's clip, segment, ROM data and products; a unit's own multiplier (a side-stream phase's:
    its operands, partial products and product, as the shared ones have)."""
    if u.get("own_product"):
        prod = u["pool"]["product"]
        own = u["ma_width"] + u["mb_width"] + sum(w for _, _, w, _ in prod["parts"]) + prod["width"]
        return own + _unit_reg_bits(u | {"own_product": False})
    ops = sum(o["iw"] for o in u["ops"])
    if u.get("mask_by") is not None:  # ReLU's backward: its gate's delay to the result
        ops += u["term_stage"] + 2
    if u["engine"]:  # the operands only: the engine holds the initial value's delay, the sum and the result
        return ops
    if u["kind"] == "reduce":
        n = u["term_stage"]
        init = u["acc_width"] * (n - 1) if "cvt_init" in u else 0
        term = 0 if u["pooled"] else u["term_width"]
        return ops + term + u["acc_width"] + init + u["out_width"] + u.get("pos_width", 0) * 2
    if u["kind"] == "table":
        return ops + u["xw"] + u["rw"] + 2 * u["tw"] + u["pw"] + u["yw"] + u["out_width"] + u["latency"] * 4
    if u["kind"] == "normalized":  # the divisor (2), the shifts (3-10), m, the ROM data, the dividend's delay,
        # the product, the shifted product
        return (ops + 2 * u["bw"] + u["sw"] + 8 * u["ew"] + u["t"] + u["rom_width"] + 5 * u["ops"][0]["iw"]
                + 2 * u["pw"] + u["out_width"])
    if u["kind"] == "msub":  # also the first operand's delay to meet the product, and the product's assignment
        return ops + 6 * u["ops"][0]["iw"] + u["mid_width"] + u["res_width"] + u["out_width"]
    return ops + u["res_width"] + u["out_width"]


def unit_sr_bits(u: dict) -> int:
    """One lane's stochastic rounding bits (``fx2fpga_srbits``): its 32-bit adder and the random bits it mixes."""
    return 32 + u["sr"] if u.get("sr") else 0


def _shifter_bits(u: dict) -> int:
    """A division unit's two variable shifts as multiplexers: the divisor's normalization, the product's shift."""
    return u["t"] * u["sw"] + u["pw"] * u["ew"]


def _memory_features(p, block_ram: bool = True) -> dict[str, float]:
    """Registers, write-source and read multiplexers, LUT-RAM LUTs and block RAM of the plan's memories
    (``block_ram``: with the banks ``assign_block_ram`` moved to block RAM; False: where Yosys alone puts them)."""
    f = dict.fromkeys(("mem_reg_bits", "select_bits", "lutram_luts", "block_lutram_luts", "rom_bits", "bram36"), 0.0)
    for m in p.memories:
        read = m["banks"] - len(m["unread_banks"])
        f["mem_reg_bits"] += m["width"] * (read + len(m["direct_banks"]))
        block = m.get("block_banks", 0) if block_ram else 0
        if m.get("load_port") is not None:  # block RAM in true dual-port shapes (emit._load_through_second_port)
            own = BankMapping("bram", bram36=bram36_for(max(2, m["depth"]), m["width"], dual_port=True))
        else:
            own = bank_mapping(m["depth"], m["width"], m["read_only"])
        # a bank moved to block RAM: in ``lutram_luts`` still (the logic around a LUT-RAM bank, which its fitted cost
        # carries, stays) and in ``block_lutram_luts`` (whose cost, held at -1, takes its LUT-RAM's own LUTs off)
        f["lutram_luts"] += block * own.luts
        f["block_lutram_luts"] += block * own.luts
        forced = BankMapping("bram", bram36=bram36_for(max(2, m["depth"]), m["width"]))
        for mapping, banks in ((own, m["banks"] - block), (forced, block)):
            f["lutram_luts"] += banks * mapping.luts
            f["bram36"] += 0.0 if m.get("side_by_side") else banks * mapping.bram36
            if mapping.kind == "logic" and m["read_only"]:
                f["rom_bits"] += banks * max(2, m["depth"]) * m["width"]
            elif mapping.kind == "logic":  # a tiny RAM in flip-flops
                f["mem_reg_bits"] += banks * max(2, m["depth"]) * m["width"]
            if mapping.kind == "lutram":
                f["mem_reg_bits"] += banks * m["width"]  # the read register LUT-RAM does not have
        if m.get("side_by_side"):  # one RAM of the banks side by side (emit._banks_side_by_side)
            f["bram36"] += bank_mapping(m["depth"], m["banks"] * m["width"], False).bram36
        if m.get("load_port") is not None:  # the registered write data of both ports, no select
            f["mem_reg_bits"] += 2 * m["banks"] * m["width"]
        elif not m["read_only"]:
            f["mem_reg_bits"] += m["banks"] * m["width"]  # the registered write data
            f["select_bits"] += sum(m["width"] * (len(s) - 1) for s in m["sources"])
    for x in p.muxes:
        f["mem_reg_bits"] += x["width"]
        f["select_bits"] += x["width"] * (len(x["banks"]) - 1)
    return f


def _pool_features(p) -> dict[str, float]:
    """The shared multipliers: the operand ORs (``pool_select_bits``: on each lane, the operand bits of every pooled
    unit wide enough to reach it but the first, which is a wire; a lane one stage alone uses needs no OR), their
    registers. The partial products' sum (``pool_adder_bits``) costs no LUTs: Yosys builds it into the DSP blocks'
    cascade (a separate feature for it was fitted to 0), so it is reported but not counted."""
    pool = p.pool
    if pool is None:
        return {"pool_select_bits": 0.0, "pool_adder_bits": 0.0, "pool_reg_bits": 0.0}
    ored = adder = regs = 0
    in_dsp = p.engine["dsp_acc"] if p.engine else []  # lanes multiplying and accumulating in fx2fpga_mac
    for lane, lp in enumerate(pool["lane_plans"]):
        reaching = [u["ma_width"] + u["mb_width"] for u in pool["users"] if u["lanes"] > lane]
        ored += sum(reaching[1:])
        prod = lp["product"]
        if lane < len(in_dsp) and in_dsp[lane]:  # one operand register in the fabric, the rest in the DSP block
            regs += 2 * (lp["wa"] + lp["wb"])
            continue
        adder += prod["width"] * (len(prod["parts"]) - 1)
        regs += lp["wa"] + lp["wb"] + sum(w for _, _, w, _ in prod["parts"]) + pool["product"]["width"]
    return {"pool_select_bits": float(ored), "pool_adder_bits": float(adder), "pool_reg_bits": float(regs)}


def engine_features(engine: dict | None) -> dict[str, float]:
    """The MAC engine (``emit.mac_engine``) per lane, at the lane's width: its accumulator's adder and register (none
    where the lane accumulates in its DSP block), the initial values' OR and delay, the output conversions and their
    registers."""
    if engine is None:
        return {"adder_bits": 0.0, "cvt_bits": 0.0, "unit_reg_bits": 0.0, "select_bits": 0.0}
    n = engine["term_stage"]
    outs = sum(o["lanes"] * o["ow"] for o in engine["outs"])
    inits = [u for u in engine["users"] if "cvt_init" in u]
    acc = sum(w for w, dsp in zip(engine["lane_widths"], engine["dsp_acc"], strict=True) if not dsp)
    ored = sum(w * max(0, sum(u["lanes"] > lane for u in inits) - 1) for lane, w in enumerate(engine["lane_widths"]))
    delay = sum(engine["lane_widths"]) * (1 if engine["hold_init"] else n - 1) if inits else 0
    return {"adder_bits": float(acc), "cvt_bits": float(outs), "unit_reg_bits": float(acc + delay + outs),
            "select_bits": float(ored)}


def _side_stream(p) -> tuple[int, list[dict]]:
    """The plan's side-stream phases (passes/streams.py) and the phases whose done flags some phase waits for."""
    phases = {ph["id"]: ph for ph in p.spec["phases"]}
    flagged = sorted({q for ph in phases.values() for q in ph.get("waits", [])})
    return sum(1 for ph in phases.values() if ph.get("stream")), [phases[q] for q in flagged]


def _ctrl_bits(p) -> float:
    """The controller: loop counters, and each bank port's registered address (the address generators); with a
    side stream (passes/streams.py) its counters and phase register too, and a done flag per phase waited for."""
    s = p.schedule
    reads, writes = _by_memory(p.spec["reads"]), _by_memory(p.spec["writes"])
    ports = sum(_address_registers(m, reads.get(m["name"], []), writes.get(m["name"], [])) * m["addr_bits"]
                for m in p.memories)
    requests = sum(sum(d for d in r["dim_bits"]) for r in p.spec["reads"] + p.spec["writes"])
    side, flagged = _side_stream(p)
    phase_bits = sched.bits(len(s.phases()))
    return float((2 if side else 1) * s.counter_count() * s.counter_bits() + ports + requests
                 + (len(s.phases()) + side) * phase_bits + len(flagged))


def _by_memory(requests: list[dict]) -> dict[str, list[dict]]:
    """The controller's requests by the memory they address."""
    out: dict[str, list[dict]] = {}
    for r in requests:
        out.setdefault(r["memory"], []).append(r)
    return out


def _address_registers(m: dict, reads: list[dict], writes: list[dict]) -> int:
    """A memory's read- and write-address registers (``reads``, ``writes``: its requests): for each port, one its
    banks share where every request that sets it may go to every bank (``emit._share_read_addresses``,
    ``emit._share_write_addresses``), else one a bank."""
    reads = reads + [w for w in writes if w.get("port_b")]
    ports = [reads] if m["read_only"] else [reads, [w for w in writes if not w.get("port_b")]]
    return sum(1 if reqs and all(r.get("any_bank") for r in reqs) else m["banks"] for reqs in ports)


# ----- delay lines Yosys maps to shift-register LUTs (SRL16E) ---------------------------------------------------
# ``synth_xilinx`` maps a chain of at least 3 registers without reset or enable whose inner registers feed nothing else
# (``shregmap -minlen 3``) to one SRL16E per bit (up to 16 stages), after merging registers with equal inputs. Each
# helper below counts the bits of one source of such chains, one SRL LUT per bit; the chains may run across module
# boundaries (the design is flattened): a memory's read registers, a unit's operand register and its term or initial
# value's delay form one chain.

def _engine_init_srl_bits(engine: dict | None) -> float:
    """The MAC engine's initial-value delay line (``init_<l>_s2..sn``, n - 1 >= 2 registers after the operand's):
    per lane, the bits the initial values of the stages reaching it occupy (the union of [shift, shift + width) of
    their init operands: the bits below are constant 0, the bits above sign copies, which Yosys merges)."""
    if engine is None or not engine["has_init"] or engine["term_stage"] < 3 or engine["hold_init"]:
        return 0.0  # (held: one register a lane, emit.mac_engine)
    inits = [u for u in engine["users"] if "cvt_init" in u]
    bits = 0
    for lane in range(engine["lanes"]):
        spans = [(u["acc_frac"] - u["ops"][u["n_ops"]]["frac"], u["ops"][u["n_ops"]]["iw"]) for u in inits
                 if u["lanes"] > lane]
        if spans:
            bits += max(s + w for s, w in spans) - min(s for s, _ in spans)
    return float(bits)


def _unit_srl_bits(u: dict) -> int:
    """One lane's delay lines in a unit (``unit.sv.j2``): an accumulating unit's initial value (operand register and
    its alignment) and its term (a plain operand register, then ``term``: with the read register before it, three);
    a table's segment base (5 stages) and its ``t`` delay; a multiply-subtract's first operand (6 stages); a
    division's dividend (5) and shift (7)."""
    if u["kind"] == "reduce" and not u["engine"]:
        init = u["ops"][u["n_ops"]]["iw"] if "cvt_init" in u else 0
        return init + (0 if u["pooled"] else u["term_width"])
    if u["kind"] == "table":
        return u["tw"] + u["rw"]
    if u["kind"] == "msub":
        return u["ops"][0]["iw"]
    if u["kind"] == "normalized":
        return u["ops"][0]["iw"] + u["ew"]
    return 0


def _read_srl_bits(p) -> float:
    """A LUT-RAM bank read straight into a lane (``rdd_*``): the RAM's read register, its fabric copy ``rdq`` and
    ``rdd``, three registers, when no bank multiplexer also reads ``rdq`` (a tap breaks the chain)."""
    muxed = {rd for x in p.muxes for _, rd in x["banks"]}
    bits = 0
    for m in p.memories:
        if bank_mapping(m["depth"], m["width"], m["read_only"]).kind != "lutram":
            continue
        bits += m["width"] * sum(1 for b in m["direct_banks"]
                                 if b >= m.get("block_banks", 0) and f"rdq_{m['name']}_{b}" not in muxed)
    return float(bits)


def _ctrl_srl_bits(p) -> float:
    """The controller's issue and phase-tag delay lines (``circt_child.delay_line``): one bit and the phase bits
    (per stream), and each done flag's one-bit delay of its phase's last issue to its last write (streams.py).
    (The read requests' bank-select delays are mostly merged by Yosys, registers of equal inputs: not counted.)"""
    side, flagged = _side_stream(p)  # a flag's delay is one bit: an SRL16E per 16 stages
    return float((2 if side else 1) * (1 + p.spec["phase_bits"]) + sum(-(-ph["write_delay"] // 16) for ph in flagged))


def srl_bits(p) -> float:
    """Bits of the plan's delay lines that Yosys maps to SRL16E shift registers, one LUT each (see above)."""
    return (_engine_init_srl_bits(p.engine) + sum(u["lanes"] * _unit_srl_bits(u) for u in p.units)
            + _read_srl_bits(p) + _ctrl_srl_bits(p))


def rtl_features(p, block_ram: bool = True) -> dict[str, float]:
    """The resource model's features of an ``RtlPlan`` (each a count of bits or LUTs; see the module doc;
    ``block_ram=False``: every bank where Yosys alone puts it, as before ``assign_block_ram``)."""
    f = dict.fromkeys(("adder_bits", "cvt_bits", "unit_reg_bits", "table_rom_bits", "table_bram36", "sr_bits"), 0.0)
    f["const"] = 1.0
    for u in p.units:
        lanes = u["lanes"]
        f["sr_bits"] += lanes * unit_sr_bits(u)
        f["adder_bits"] += lanes * _unit_adder_bits(u)
        f["cvt_bits"] += lanes * _unit_cvt_bits(u)
        f["unit_reg_bits"] += lanes * _unit_reg_bits(u)
        rom = unit_rom(u)
        if rom is not None:  # a table's or a division's ROM and product
            f["table_bram36"] += lanes * rom[0].bram36
            if rom[0].kind == "logic":
                f["table_rom_bits"] += lanes * rom[1]
            f["adder_bits"] += lanes * u["product"]["width"] * (len(u["product"]["parts"]) - 1)
    sel = sum(u["lanes"] * u["res_width"] for u in p.units
              if u["op"] in ("relu", "select") or is_compare_select(u["op"]))  # a fused comparison's mux too
    sel += sum(u["lanes"] * _shifter_bits(u) for u in p.units if u["kind"] == "normalized")
    sel += sum(u["lanes"] * u["out_width"] for u in p.units if u["relu"] and not u["engine"])  # a fused ReLU's mux
    sel += sum(o["lanes"] * o["ow"] for o in (p.engine["outs"] if p.engine else ()) if o["relu"])
    sel += sum(u["lanes"] * (u["out_width"] + u["ops"][u["mask_by"]]["iw"]) for u in p.units
               if u.get("mask_by") is not None)  # ReLU's backward: the gate's zero test, the result's mask
    mem = _memory_features(p, block_ram)
    pool = _pool_features(p)
    engine = engine_features(p.engine)
    f["adder_bits"] += engine["adder_bits"]
    f["cvt_bits"] += engine["cvt_bits"]
    f["unit_reg_bits"] += engine["unit_reg_bits"]
    f["select_bits"] = sel + mem["select_bits"] + pool["pool_select_bits"] + engine["select_bits"]
    f["mem_reg_bits"] = mem["mem_reg_bits"]
    f["pool_reg_bits"] = pool["pool_reg_bits"]
    f["ctrl_bits"] = _ctrl_bits(p)
    f["lutram_luts"] = mem["lutram_luts"]
    f["block_lutram_luts"] = mem["block_lutram_luts"]
    f["rom_bits"] = mem["rom_bits"] + f.pop("table_rom_bits")
    f["bram36"] = mem["bram36"] + f.pop("table_bram36")
    f["srl_bits"] = srl_bits(p)
    f["dsp"] = float(p.dsp_blocks)
    return f


# ----- the calibrated model -----------------------------------------------------------------------------------

@cache
def load_costs(name: str = COSTS_FILE) -> dict:
    """The calibrated coefficients (``fx2fpga/targets/<name>``): {"lut": {feature: cost}, "ff": {...}, ...}."""
    try:
        text = pkg_resources.files("fx2fpga.targets").joinpath(name).read_text()
    except FileNotFoundError:
        raise Fx2fpgaError(f"no RTL cost file {name} in fx2fpga/targets: run benchmarks/calibrate_resources.py") \
            from None
    return json.loads(text)


def predict(features: dict[str, float], costs: dict) -> PredictedResources:
    """Resources from a plan's features and a cost table (``load_costs()``)."""
    lut = sum(c * features[k] for k, c in costs["lut"].items())
    ff = sum(c * features[k] for k, c in costs["ff"].items())
    return PredictedResources(lut=round(lut), ff=round(ff), dsp=int(features["dsp"]), bram36=features["bram36"])


def _plan_of(plan_or_design):
    """The ``RtlPlan`` of a plan or of a ``Design`` (the backend imports this package, not the reverse)."""
    if hasattr(plan_or_design, "rtl_plan"):
        p = plan_or_design.rtl_plan()
        if p is None:
            raise Fx2fpgaError(f"{plan_or_design.name} has no RTL plan: the RTL cannot map it")
        return p
    return plan_or_design


def rtl_resources(plan_or_design, target=None, block_ram: bool = True) -> PredictedResources:
    """Predicted Yosys ``synth_xilinx`` resources of the RTL of an ``RtlPlan`` or a ``Design`` (``target``:
    its family must be xc7, the family the cost file is calibrated for; None: xc7; ``block_ram=False``: as if
    every bank were where Yosys alone puts it, before ``assign_block_ram``)."""
    family = getattr(target, "family", "xc7")
    if family != "xc7":
        raise Fx2fpgaError(f"the RTL resource model is calibrated for xc7 targets only, not {family}")
    return predict(rtl_features(_plan_of(plan_or_design), block_ram), load_costs())


# ----- idle block RAM takes LUT-RAM banks ---------------------------------------------------------------------

@dataclass(frozen=True)
class BlockRamCandidate:
    """A memory whose banks Yosys would put in LUT-RAM, and what each bank saves and takes in block RAM."""

    name: str
    banks: int
    lut: float  # LUTs one bank saves (its LUT-RAM's own: ``block_lutram_luts``' cost per LUT-RAM LUT)
    ff: float  # flip-flops one bank saves (the read register a block RAM has inside)
    bram36: float  # BRAM36 one bank takes


def block_ram_candidate(name: str, banks: int, mapping: BankMapping, depth: int, width: int,
                        costs: dict) -> BlockRamCandidate | None:
    """The candidate of a memory of ``banks`` banks of ``depth x width`` that Yosys maps as ``mapping``
    (``bank_mapping``); None where that is not LUT-RAM (a ROM, a tiny RAM in flip-flops, a bank already in block
    RAM). A bank moved to block RAM saves its LUT-RAM's own LUTs (``block_lutram_luts``' cost, held at -1:
    measured) and its read register."""
    saved = -mapping.luts * costs["lut"]["block_lutram_luts"]
    if mapping.kind != "lutram" or saved <= 0:
        return None
    return BlockRamCandidate(name, banks, saved, width * costs["ff"]["mem_reg_bits"], bram36_for(max(2, depth), width))


BLOCK_RAM_FROM = 0.5  # idle block RAM takes LUT-RAM banks only while the logic uses more of the target than this


def balance_block_ram(used: dict[str, float], candidates: list[BlockRamCandidate], target
                      ) -> tuple[dict[str, int], dict[str, float]]:
    """Move LUT-RAM banks into block RAM (``ram_style = "block"``) while that lowers the largest share of the
    allowance of ``target``'s LUT, FF and BRAM36 (``allowance``) that ``used`` takes and that share is above
    ``BLOCK_RAM_FROM``: the banks that
    save the most LUTs per BRAM36 first, and none once block RAM is as scarce as logic. So idle block RAM relieves
    the LUTs where they bind a large design (the explorer and the allocator widen stages into what it frees); a
    design whose block RAM is the scarcer, or that uses less than half the logic, keeps Yosys' own mapping.
    Returns (banks moved per memory, ``used`` after the moves)."""
    lut, ff, bram = used["lut"], used["ff"], used["bram36"]
    caps = allowance(target)
    moved: dict[str, int] = {}
    for c in sorted(candidates, key=lambda c: (-c.lut / c.bram36, c.name)):
        # the j-th bank moves while (bram + j b) / B < (x - (j - 1) s) / X for x = lut or ff (each over its
        # allowance), and that share is still above BLOCK_RAM_FROM: the most such j
        k = max(min(_banks_while_below(bram, c.bram36, caps["bram36"], x, step, cap),
                    _banks_while_below(BLOCK_RAM_FROM * cap, 0.0, cap, x, step, cap))
                for x, step, cap in ((lut, c.lut, caps["lut"]), (ff, c.ff, caps["ff"])))
        k = min(c.banks, k)
        lut, ff, bram = lut - k * c.lut, ff - k * c.ff, bram + k * c.bram36
        if k:
            moved[c.name] = k
        if k < c.banks:
            break
    return moved, {**used, "lut": lut, "ff": ff, "bram36": bram}


def _banks_while_below(rising: float, step_up: float, cap_up: float, falling: float, step_down: float,
                       cap_down: float) -> int:
    """The most banks j such that, for every i <= j, (rising + i step_up) / cap_up < (falling - (i - 1)
    step_down) / cap_down: the share that grows stays below the share that shrinks, as it was before the i-th."""
    if step_down <= 0:  # (a share that does not shrink is not relieved)
        return 0
    room = falling / cap_down + step_down / cap_down - rising / cap_up
    return max(0, math.ceil(room / (step_up / cap_up + step_down / cap_down)) - 1)


def assign_block_ram(p, target) -> None:
    """Give each memory of the ``RtlPlan`` its ``block_banks``: how many of its banks (the first ones) the RTL
    asks to be block RAM (``balance_block_ram`` on the plan's predicted resources). The model is calibrated
    for xc7: on other families every bank stays where Yosys puts it."""
    for m in p.memories:
        m["block_banks"] = 0
    if getattr(target, "family", None) != "xc7":
        return
    costs = load_costs()
    used = predict(rtl_features(p, block_ram=False), costs)
    candidates = [c for m in p.memories if not m.get("side_by_side")
                  if (c := block_ram_candidate(m["name"], m["banks"], bank_mapping(m["depth"], m["width"],
                                                                                   m["read_only"]),
                                               m["depth"], m["width"], costs))]
    moved, _ = balance_block_ram({"lut": used.lut, "ff": used.ff, "bram36": used.bram36}, candidates, target)
    for m in p.memories:
        m["block_banks"] = moved.get(m["name"], 0)
