"""Child process of ``controller.py``: build the controller as CIRCT IR, verify it, lower it to SystemVerilog.

Run as ``python circt_child.py`` with the controller spec (JSON, made by ``backends/rtl/emit.py``)
on stdin; answers ``{file name: text}`` (JSON) on stdout. Exit code 3: the IR did not verify;
4: a pass or the bindings failed; killed by a signal: CIRCT crashed. The parent turns each
into a ``ControllerError``. This file imports only the standard library and ``circt``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

FSM_LOWERING = "builtin.module(convert-fsm-to-sv,canonicalize)"
LOWERING = "builtin.module(lower-seq-to-sv,canonicalize,hw.module(hw-legalize-modules))"
MERGE_PREP = "builtin.module(hw.module(cse),canonicalize)"  # merge_registers: equal values become one
LOWERING_OPTIONS = "locationInfoStyle=none,disallowLocalVariables,disallowPackedArrays"
CMD_BITS = 8
ICMP = {"eq": 0, "ne": 1, "ult": 6}


class ControllerError(RuntimeError):
    """The controller IR is not what CIRCT accepts."""


class _Net:
    """A tiny netlist builder over the circt bindings: constants, arithmetic, muxes, registers."""

    def __init__(self, ir, hw, comb, seq, clk, rst):
        self.ir, self.hw, self.comb, self.seq = ir, hw, comb, seq
        self.clk, self.rst = clk, rst
        self._consts: dict[tuple[int, int], object] = {}
        self.dropped: list = []  # bits cut off on purpose (truncations, divisions): see `unused_bits`

    def ty(self, width: int):
        return self.ir.IntegerType.get_signless(width)

    @staticmethod
    def width(v) -> int:
        return v.type.width

    def const(self, value: int, width: int):
        value &= (1 << width) - 1
        if value >= 1 << (width - 1):
            value -= 1 << width
        key = (value, width)
        if key not in self._consts:
            self._consts[key] = self.hw.ConstantOp(self.ir.IntegerAttr.get(self.ty(width), value)).result
        return self._consts[key]

    def resize(self, v, width: int):
        """Zero-extend or truncate ``v`` to ``width`` bits."""
        w = self.width(v)
        if w == width:
            return v
        if w > width:
            return self.extract(v, 0, width)
        return self.comb.ConcatOp([self.const(0, width - w), v]).result

    def extract(self, v, low: int, width: int, keep_rest: bool = True):
        """Bits ``low .. low+width-1`` of ``v``; the others are recorded in ``dropped``."""
        w = self.width(v)
        if keep_rest:
            if low:
                self.dropped.append(self.extract(v, 0, low, False))
            if low + width < w:
                self.dropped.append(self.extract(v, low + width, w - low - width, False))
        return self.comb.ExtractOp(self.ty(width), v, self.ir.IntegerAttr.get(self.ty(32), low)).result

    def add(self, *vs):
        return vs[0] if len(vs) == 1 else self.comb.AddOp(list(vs)).result

    def sub(self, a, b):
        return self.comb.SubOp(a, b).result

    def mul_const(self, v, c: int):
        """``v * c`` in ``v``'s width as shifts and adds (a constant multiply would take a DSP block)."""
        w = self.width(v)
        if c < 0:
            return self.sub(self.const(0, w), self.mul_const(v, -c))
        terms = [v if i == 0 else self.comb.ConcatOp([self.extract(v, 0, w - i), self.const(0, i)]).result
                 for i in range(w) if c >> i & 1]
        return self.add(*terms) if terms else self.const(0, w)

    def divu(self, a, b):
        return self.comb.DivUOp(a, b).result

    def modu(self, a, b):
        return self.comb.ModUOp(a, b).result

    def cmp(self, pred: str, a, b):
        return self.comb.ICmpOp(self.ir.IntegerAttr.get(self.ty(64), ICMP[pred]), a, b).result

    def eq_const(self, v, value: int):
        return self.cmp("eq", v, self.const(value, self.width(v)))

    def and_(self, *vs):
        vs = [v for v in vs if v is not True]
        if not vs:
            return self.const(1, 1)
        return vs[0] if len(vs) == 1 else self.comb.AndOp(vs).result

    def or_(self, *vs):
        if not vs:
            return self.const(0, 1)
        return vs[0] if len(vs) == 1 else self.comb.OrOp(list(vs)).result

    def not_(self, v):
        return self.comb.XorOp([v, self.const(-1, self.width(v))]).result

    def mux(self, c, t, f):
        return self.comb.MuxOp(c, t, f).result

    def onehot(self, cases, width: int):
        """OR over ``(condition, value)`` of the values whose condition holds: at most one holds
        at a time (or they agree), so this is a multiplexer as a balanced tree, not a chain."""
        vs = [self.mux(c, v, self.const(0, width)) for c, v in cases]
        return self.or_(*vs) if vs else self.const(0, width)

    def wire(self, width: int):
        """A placeholder value, replaced by ``connect`` (for feedback)."""
        return self.hw.ConstantOp(self.ir.IntegerAttr.get(self.ty(width), 0))

    @staticmethod
    def connect(placeholder, value) -> None:
        placeholder.result.replace_all_uses_with(value)
        placeholder.operation.erase()

    def reg(self, name: str, width: int, reset: int | None = 0):
        """A clocked register; returns (its value, a function that sets its next value)."""
        ph = self.wire(width)
        kw = {"reset": self.rst, "reset_value": self.const(reset, width)} if reset is not None else {}
        r = self.seq.CompRegOp(self.ty(width), ph.result, self.clk, name=name, **kw)
        return r.result, lambda nxt: self.connect(ph, nxt)

    def delayed(self, name: str, v, reset: int | None = None):
        q, set_next = self.reg(name, self.width(v), reset)
        set_next(v)
        return q


def _split(net: _Net, bank, v, w: int, f: int, bw: int):
    """Index ``v`` (``w`` bits) over ``f`` cyclic banks: (bank * f + v % f, v // f or None when 0)."""
    if f & (f - 1) == 0:  # a power of two: the low bits choose the bank, the high bits the row
        k = f.bit_length() - 1
        bank = net.add(net.mul_const(bank, f), net.resize(net.resize(v, min(k, w)), bw))
        return bank, (net.extract(v, k, w - k) if w > k else None)
    if f.bit_length() > w:  # v < 2^w <= f: the bank is v itself, row 0
        return net.add(net.mul_const(bank, f), net.resize(v, bw)), None
    bank = net.add(net.mul_const(bank, f), net.resize(net.modu(v, net.const(f, w)), bw))
    return bank, net.divu(v, net.const(f, w))


def _build_fsm(spec, ir, hw, comb, fsm):
    """The command/phase state machine: inputs (cmd_valid, cmd, done), output the phase code."""
    pw = spec["phase_bits"]
    i1, i8, ip = ir.IntegerType.get_signless(1), ir.IntegerType.get_signless(CMD_BITS), ir.IntegerType.get_signless(pw)
    grouped = any(c.get("repeat") for c in spec["commands"])
    names = ("cmd_valid", "cmd", "done") + (("again",) if grouped else ())
    mach = fsm.MachineOp(spec["fsm"], "IDLE", [("cmd_valid", i1), ("cmd", i8), ("done", i1)]
                         + ([("again", i1)] if grouped else []), [("phase", ip)])
    mach.attributes["in_names"] = ir.ArrayAttr.get([ir.StringAttr.get(n) for n in names])
    mach.attributes["out_names"] = ir.ArrayAttr.get([ir.StringAttr.get("phase")])
    block = mach.body.blocks[0]
    cmd_valid, cmd, done = block.arguments[:3]
    again = block.arguments[3] if grouped else None
    back = {c["repeat"]["last"]: c["repeat"]["first"] for c in spec["commands"] if c.get("repeat")}
    main = [ph for ph in spec["phases"] if not ph.get("stream")]  # the side stream's phases are not its states
    state_of = {ph["id"]: f"P{ph['id']}_{ph['name']}" for ph in main}
    nxt = {}
    for c in spec["commands"]:
        ids = c["phases"]
        for a, b in zip(ids, ids[1:] + [0], strict=True):
            nxt[a] = b
    with ir.InsertionPoint(block):
        def state(name: str, code: int, transitions):
            st = fsm.StateOp(name)
            with ir.InsertionPoint(st.output):
                fsm.OutputOp([hw.ConstantOp(ir.IntegerAttr.get(ip, code)).result])
            with ir.InsertionPoint(st.transitions):
                for to, guard in transitions:
                    t = fsm.TransitionOp(to)
                    if guard is not None:
                        t.set_guard(guard)

        def starts(code: int):
            def guard():
                const = hw.ConstantOp(ir.IntegerAttr.get(i8, code)).result
                hit = comb.ICmpOp(ir.IntegerAttr.get(ir.IntegerType.get_signless(64), 0), cmd, const).result
                return comb.AndOp([cmd_valid, hit]).result
            return guard

        state("IDLE", 0, [(state_of[c["phases"][0]], starts(c["code"])) for c in spec["commands"]])
        for ph in main:
            to = state_of[nxt[ph["id"]]] if nxt[ph["id"]] else "IDLE"
            loop = []  # the last stage phase of a program of model groups: back to its first for the next group
            if ph["id"] in back:
                loop = [(state_of[back[ph["id"]]], lambda: comb.AndOp([done, again]).result)]
            state(state_of[ph["id"]], ph["id"], loop + [(to, lambda: done)])
    return mach


def gated_clocks(spec: dict) -> list[str]:
    """The controller's clock inputs besides ``clk``: the blocks' clocks (emit.sim_gates' ``ctrl``) its requests
    and stream outputs are on (``clk`` itself in synthesis)."""
    return spec.get("clocks", {}).get("ctrl", [])


def takes_pairs(spec: dict) -> bool:
    """Whether some phase of ``spec`` takes a unit of two input words an issue (the controller's ``in_valid2``)."""
    return any(ph.get("in_words", 1) == 2 for ph in spec["phases"])


def build(spec: dict):
    """The controller of ``spec`` as a verified CIRCT module (call inside the child process)."""
    import circt
    from circt import ir
    from circt.dialects import comb, fsm, hw, seq

    ctx = ir.Context()
    circt.register_dialects(ctx)
    with ctx, ir.Location.unknown():
        module = ir.Module.create()
        module.operation.attributes["circt.loweringOptions"] = ir.StringAttr.get(LOWERING_OPTIONS)
        i1 = ir.IntegerType.get_signless(1)
        with ir.InsertionPoint(module.body):
            _build_fsm(spec, ir, hw, comb, fsm)
            inputs = [("clk", seq.ClockType.get()), ("rst", i1), ("cmd_valid", i1),
                      ("cmd", ir.IntegerType.get_signless(CMD_BITS)), ("in_valid", i1)]
            inputs += [("in_valid2", i1)] if takes_pairs(spec) else []
            inputs += [(f"clk_{g}", seq.ClockType.get()) for g in gated_clocks(spec)]
            outputs = [(name, ir.IntegerType.get_signless(w)) for name, w in spec["outputs"]]

            def body(mod):
                args = dict(zip([n for n, _ in inputs], mod.entry_block.arguments, strict=True))
                net = _Net(ir, hw, comb, seq, args["clk"], args["rst"])
                return _body(spec, net, args, fsm, ir)

            hw.HWModuleOp(name=spec["name"], input_ports=inputs, output_ports=outputs, body_builder=body)
        if not module.operation.verify():
            raise ControllerError("the controller IR does not verify")
    return ctx, module


class _Controller:
    """The controller's logic, built step by step on a ``_Net`` (see ``_body``); each step emits its
    registers and gates in the order the generated Verilog depends on."""

    def __init__(self, spec: dict, net: _Net, args: dict):
        self.spec, self.net, self.args = spec, net, args
        self.phases = {ph["id"]: ph for ph in spec["phases"]}
        self.pw, self.cw, self.m = spec["phase_bits"], spec["counter_bits"], spec["counters"]
        self.tap_addr, self.tap_ram, self.tap_operand, self.tap_out = (
            spec["taps"][k] for k in ("addr", "ram", "operand", "out"))
        self.out: dict[str, object] = {}
        self.repeats = [c["repeat"] for c in spec["commands"] if c.get("repeat")]
        self.gc = spec.get("group_counter")  # the group counter's index among the counters (model groups)
        self.stream_of = {p: ph.get("stream", 0) for p, ph in self.phases.items()}
        self.ids = [[p for p in self.phases if self.stream_of[p] == s] for s in (0, 1)]
        self.side = bool(self.ids[1])  # a second issue stream (passes/streams.py)
        self.flag_pulses: list = []  # (phase, stream, placeholder of its last issue): connected after the counters

    def phase_fsm(self, fsm, ir):
        """The FSM, fed back by ``done``; ``on[p]``: the phase, registered one-hot (valid from its setup cycle on)."""
        net, args, spec = self.net, self.args, self.spec
        self.done_ph = net.wire(1)
        self.again = net.wire(1) if self.repeats else None
        fsm_inputs = [args["cmd_valid"], args["cmd"], self.done_ph.result] + ([self.again.result] if self.again else [])
        inst = fsm.HWInstanceOp(outputs=[net.ty(self.pw)], inputs=fsm_inputs,
                                sym_name=ir.StringAttr.get("fsm"), machine=ir.FlatSymbolRefAttr.get(spec["fsm"]),
                                clock=args["clk"], reset=args["rst"])
        self.phase = phase = inst.results[0]
        self.now = {p: net.eq_const(phase, p) for p in self.ids[0]}
        self.on = {p: net.delayed(f"on_p{p}", self.now[p]) for p in self.ids[0]}
        self.phase_q = net.delayed("phase_q", phase)  # at an issue: the phase issuing (the tag at tap 0)
        self.setup = net.not_(net.cmp("eq", phase, self.phase_q))  # a phase's first cycle
        if self.again is not None:  # (or the first of the next group's pass, which may be the same phase)
            self.looped = net.wire(1)
            self.setup = net.or_(self.setup, net.delayed("looped_q", self.looped.result))
        self.running = net.delayed("running", net.not_(net.eq_const(phase, 0)))

    def per_phase(self, name: str, value_of, width: int, stream: int = 0):
        """A register loaded with the phase's constant ``value_of(ph)`` (valid after the setup cycle), over the
        phases of ``stream``."""
        net = self.net
        return net.delayed(name, net.onehot([(self.now[p], net.const(value_of(ph), width))
                                             for p, ph in self.phases.items()
                                             if self.stream_of[p] == stream and value_of(ph)], width))

    def counters(self):
        """Shared counters: every phase counts c0 .. c<m-1> up to its limits (0 for loops it lacks); the
        issue (stalled by setup, draining, an unpack's missing input and a wait for the other stream) and the
        drain counter. With a side stream (passes/streams.py) its own set: ``s1_c0 ..``, the done flags the
        streams wait for, and the main stream's last stage phase held until the side stream is idle."""
        net, phases = self.net, self.phases
        if self.side:
            self.side_fsm()
            flags = self.flags()
        self.cnt, self.issue_at, self.last_all = {}, {}, {}
        self.group_register()
        for stream in (0, 1) if self.side else (0,):
            deps = True
            if self.side and stream == 0:  # a main phase that waits: until its side phase's flag is set
                deps = net.and_(*[net.or_(net.not_(self.on[p]), flags[ph["waits"][0]])
                                  for p, ph in phases.items() if self.stream_of[p] == 0 and ph.get("waits")])
            elif stream == 1:  # a side phase: until every main phase up to its wait has written its last result
                deps = net.or_(*[net.and_(self.on[p], *[flags[q] for q in ph.get("waits", [])])
                                 for p, ph in phases.items() if self.stream_of[p] == 1])
            self._stream_counters(stream, deps)
        for q, stream, pending in self.flag_pulses:
            net.connect(pending, net.and_(self.last_all[stream], self.on[q]))
        self.issue = self.issue_at[0][0]
        self.group_counter()

    def _input_issue(self, ids: list[int], can_issue):
        """The main stream's issue: ``can_issue``, and for a phase taking input words the word there (both words of
        a packed unit for a phase taking units of two: interface.py's word packing)."""
        net, args = self.net, self.args
        # the phases whose issues take input words: unpacks and stages fused with one (schedule.fuse_input_stream)
        self.unpack_ids = [p for p in ids if self.phases[p]["kind"] == "unpack" or self.phases[p].get("streams")]
        pairs = [p for p in self.unpack_ids if self.phases[p]["in_words"] == 2]
        self.is_unpack = (net.delayed("unpack_q", net.or_(*[self.now[p] for p in self.unpack_ids]))
                          if self.unpack_ids else None)
        self.is_pair = net.delayed("pair_q", net.or_(*[self.now[p] for p in pairs])) if pairs else None
        self.can_issue = can_issue
        issue = net.and_(can_issue, net.or_(net.not_(self.is_unpack), args["in_valid"])) if self.unpack_ids \
            else can_issue
        return net.and_(issue, net.or_(net.not_(self.is_pair), args["in_valid2"])) if pairs else issue

    def _stream_counters(self, stream: int, deps) -> None:
        """The counters, issue, drain and done of one stream (``s1_``-prefixed names for the side stream)."""
        net, m, cw = self.net, self.m, self.cw
        pre = "s1_" if stream else ""
        ids = self.ids[stream]
        cnt, set_cnt = zip(*[net.reg(f"{pre}c{k}", cw) for k in range(m)], strict=True) if m else ((), ())
        limit = [self.per_phase(f"{pre}limit{k}", lambda ph, k=k: ph["counters"][k] - 1
                                if k < len(ph["counters"]) else 0, cw, stream)
                 for k in range(m)]
        draining, set_draining = net.reg(f"{pre}draining", 1)
        dw = max(1, max(max(self.phases[p]["drain"], self.phases[p].get("idle_drain", 0)) for p in ids).bit_length())
        dcnt, set_dcnt = net.reg(f"{pre}drain_count", dw)
        idle = self.idle_pass(stream)
        if idle is not None:  # a pipelined phase in the pass it has no group: one issue, a barrier's drain
            limit = [net.mux(idle, net.const(0, cw), lim) for lim in limit]
        running, setup = (self.running, self.setup) if stream == 0 else (self.running1, self.setup1)
        can_issue = net.and_(running, net.not_(setup), net.not_(draining), deps)
        issue = self._input_issue(ids, can_issue) if stream == 0 else can_issue
        lasts = [net.cmp("eq", cnt[k], limit[k]) for k in range(m)]
        for k in range(m):
            stepped = net.mux(lasts[k], net.const(0, cw), net.add(cnt[k], net.const(1, cw)))
            set_cnt[k](net.mux(net.and_(issue, *lasts[k + 1:]), stepped, cnt[k]))
        last_all = net.and_(issue, *lasts)
        no_delay = net.delayed(f"{pre}no_delay", net.or_(*[self.now[p] for p in ids if self.phases[p]["drain"] == 0]))
        drain_init = self.per_phase(f"{pre}drain_init", lambda ph: max(0, ph["drain"] - 1), dw, stream)
        if idle is not None:
            no_delay = net.and_(no_delay, net.not_(idle))
            idle_drain = self.per_phase(f"{pre}idle_drain", lambda ph: max(0, ph.get("idle_drain", 0) - 1), dw,
                                        stream)
            drain_init = net.mux(idle, idle_drain, drain_init)
        free = []  # the main stream's last stage phase of a pass ends only when the side stream is idle
        if stream == 0 and self.side:
            ends = net.delayed("ends_q", net.or_(*[self.now[c["last"]] for c in self.spec["commands"]
                                                   if c.get("side")]))
            free = [net.not_(net.and_(ends, net.not_(net.eq_const(self.state1, 0))))]
        drained = net.and_(draining, net.eq_const(dcnt, 0), *free)
        done = net.or_(net.and_(last_all, no_delay, *free), drained)  # the phase's last cycle
        if free:  # held: it stays draining, its count at 0
            set_draining(net.mux(draining, net.not_(drained), net.and_(last_all, net.not_(net.and_(no_delay, *free)))))
            set_dcnt(net.mux(draining, net.mux(net.eq_const(dcnt, 0), dcnt, net.sub(dcnt, net.const(1, dw))),
                             drain_init))
        else:
            set_draining(net.mux(draining, net.not_(net.eq_const(dcnt, 0)), net.and_(last_all, net.not_(no_delay))))
            set_dcnt(net.mux(draining, net.sub(dcnt, net.const(1, dw)), drain_init))
        if stream == 0:
            self.done = done
            net.connect(self.done_ph, done)
        else:
            net.connect(self.done1_ph, done)
        self.cnt[stream], self.issue_at[stream], self.last_all[stream] = list(cnt), [issue], last_all

    def side_fsm(self) -> None:
        """The side stream's phase register ``side_q``: from 0 to a command's first side phase when its first main
        stage phase sets up (each model group's pass), to the next side phase when one is done, 0 after the last."""
        net, spec = self.net, self.spec
        pw = self.pw
        self.state1, set_state1 = net.reg("side_q", pw)
        self.done1_ph = net.wire(1)
        idle = net.eq_const(self.state1, 0)
        cases = []
        for c in spec["commands"]:
            if not c.get("side"):
                continue
            cases.append((net.and_(idle, self.now[c["first"]], self.setup), net.const(c["side"][0], pw)))
            for a, b in zip(c["side"], c["side"][1:] + [0], strict=True):
                cases.append((net.and_(net.eq_const(self.state1, a), self.done1_ph.result), net.const(b, pw)))
        moves = net.or_(*[cond for cond, _ in cases])
        set_state1(net.mux(moves, net.onehot(cases, pw), self.state1))
        self.now.update({p: net.eq_const(self.state1, p) for p in self.ids[1]})
        self.on.update({p: net.delayed(f"on_p{p}", self.now[p]) for p in self.ids[1]})
        self.state1_q = net.delayed("side_prev", self.state1)
        self.setup1 = net.not_(net.cmp("eq", self.state1, self.state1_q))
        self.running1 = net.delayed("side_running", net.not_(idle))

    def flags(self) -> dict:
        """Done flags (passes/streams.py): set a cycle after a phase's last write (its last issue delayed by its
        write delay); cleared while the kernel is idle and, for a program's stage phases, when its first main
        stage phase sets up (each model group's pass)."""
        net, spec = self.net, self.spec
        needed = sorted({q for ph in self.phases.values() for q in ph.get("waits", [])})
        clear_body = net.or_(*[net.and_(self.now[c["first"]], self.setup) for c in spec["commands"] if c.get("side")])
        idle = net.eq_const(self.phase, 0)
        out = {}
        for q in needed:
            ph, stream = self.phases[q], self.stream_of[q]
            flag, set_flag = net.reg(f"flag_p{q}", 1)
            out[q] = flag
            pending = net.wire(1)  # its last issue, from the stream's counters (made after the flags)
            self.flag_pulses.append((q, stream, pending))
            landed = self.delay(f"flag_p{q}_last", pending.result, ph["write_delay"])
            clear = net.or_(idle, clear_body) if ph.get("in_body") else idle
            set_flag(net.or_(landed, net.and_(flag, net.not_(clear))))
        return out

    def group_register(self):
        """Model groups: the group counter's register ``cgrp`` (its next value: ``group_counter``)."""
        self.cgrp = None
        if self.repeats:
            gw = max(1, max(r["count"] - 1 for r in self.repeats).bit_length())
            self.cgrp, self.set_cgrp = self.net.reg("cgrp", gw)

    def idle_pass(self, stream: int):
        """Pipelined groups: a register, 1 while the stream's phase idles in this pass (``schedule.Phase.idle_in``:
        it has no group there, a lagging phase in the first pass, a leading one in the last, and idles), valid after
        its setup as ``per_phase``'s; None when no phase of the stream idles."""
        net = self.net
        cases = [net.and_(self.now[p], net.eq_const(self.cgrp, ph["groupless_pass"]))
                 for p, ph in self.phases.items() if self.stream_of[p] == stream and ph.get("idle_drain")]
        return net.delayed(f"{'s1_' if stream else ''}idle_pass", net.or_(*cases)) if cases else None

    def group_counter(self):
        """Model groups: the group counter ``cgrp`` (0 in IDLE) counts the passes over a program's stage phases;
        ``again`` (to the FSM) sends its last stage phase back to its first until the last group."""
        self.cgrp_lag = None
        if not self.repeats:
            return
        net = self.net
        cg, set_cg = self.cgrp, self.set_cgrp
        more = [net.and_(self.now[r["last"]], net.not_(net.eq_const(cg, r["count"] - 1))) for r in self.repeats]
        again = net.or_(*more)
        net.connect(self.again, again)
        net.connect(self.looped, net.and_(self.done, again))
        ends = net.and_(self.done, net.or_(*[self.now[r["last"]] for r in self.repeats]))
        gw = net.width(cg)
        step = net.mux(again, net.add(cg, net.const(1, gw)), net.const(0, gw))
        set_cg(net.mux(ends, step, net.mux(net.eq_const(self.phase, 0), net.const(0, gw), cg)))
        # pipelined groups: the lagging phases' group (their writes are off in the first pass: ``writes``)
        if any(ph.get("lag") for ph in self.phases.values()):
            self.cgrp_lag = net.add(cg, net.const(-1, gw))

    def compute_tap(self, port: dict) -> int:
        """A write's address is computed two registers ahead of its port."""
        return port["tap"] - self.tap_ram

    def delay_line(self):
        """The issue and the counters t cycles after issue, per stream; a delayed counter keeps only the bits the
        write requests computed at that tap (or later) need."""
        net, spec, phases, m = self.net, self.spec, self.phases, self.m
        max_tap = max([self.tap_out, self.tap_operand] + [self.compute_tap(w) for w in spec["writes"]])
        self.tag_at, self.counters_at = {}, {}
        for stream in self.issue_at:
            pre = "s1_" if stream else ""
            need = [[0] * max(m, (self.gc or 0) + 2) for _ in range(max_tap + 2)]
            for port in spec["writes"]:
                if self.stream_of[port["phase"]] != stream:
                    continue
                t, ph = self.compute_tap(port), phases[port["phase"]]
                used = {k for a in port["index"] + port.get("guard", []) for k, _ in a["terms"]}
                used |= set(ph["reduce"] if port.get("last_only") else ())
                for k in used:
                    need[t][k] = max(need[t][k], (ph["counters"][k] - 1).bit_length() or 1)
                for k, _ in port["point"]["terms"] if "point" in port else ():
                    need[t - 1][k] = max(need[t - 1][k], (ph["counters"][k] - 1).bit_length() or 1)
            for t in range(max_tap, 0, -1):
                need[t] = [max(a, b) for a, b in zip(need[t], need[t + 1], strict=True)]
            # each issue in flight carries its phase (``tag_at``): the next phase issues while this one drains
            # (passes/overlap.py), so a request at tap t answers to the phase that issued t cycles ago
            issue_at = self.issue_at[stream]
            tag_at = [self.phase_q if stream == 0 else self.state1_q]
            counters_at = [list(self.cnt[stream])]
            for t in range(1, max_tap + 1):
                issue_at.append(net.delayed(f"{pre}issue_d{t}", issue_at[t - 1]))
                tag_at.append(net.delayed(f"{pre}phase_d{t}", tag_at[t - 1]))
                counters_at.append([net.delayed(f"{pre}c{k}_d{t}", net.resize(c, need[t][k]), None)
                                    if need[t][k] else None for k, c in enumerate(counters_at[t - 1])])
            if self.cgrp is not None:  # the group counter changes only between phases: the same at every tap
                for at in counters_at:
                    at += [None] * (self.gc - len(at)) + [self.cgrp] + ([self.cgrp_lag] if self.cgrp_lag else [])
            self.tag_at[stream], self.counters_at[stream] = tag_at, counters_at

    def clock_of(self, memory: str | None = None, phase: int | None = None):
        """The clock of a memory's requests and ports, or of a phase's stream outputs (``clk`` when not gated)."""
        clocks = self.spec.get("clocks", {})
        gate = clocks.get("memories", {}).get(memory) if memory is not None else \
            clocks.get("phases", {}).get(str(phase))
        return self.args[f"clk_{gate}"] if gate else self.args["clk"]

    @contextmanager
    def clocked(self, memory: str | None = None, phase: int | None = None):
        """Registers made inside run on ``clock_of(memory, phase)``; on ``clk`` again after."""
        self.net.clk = self.clock_of(memory=memory, phase=phase)
        try:
            yield
        finally:
            self.net.clk = self.args["clk"]

    def on_at(self, p: int, t: int):
        """1 where the issue t cycles ago (if any) of ``p``'s stream was phase ``p``'s."""
        return self.on[p] if t == 0 else self.net.eq_const(self.tag_at[self.stream_of[p]][t], p)

    def delay(self, name: str, v, cycles: int):
        """``v`` through ``cycles`` registers named ``<name>_d1 ..``."""
        for t in range(cycles):
            v = self.net.delayed(f"{name}_d{t + 1}", v)
        return v

    def affine_at(self, t: int, stream: int = 0):
        """``affine(terms, const, w)``: sum(c * counter) + const in w bits from the stream's counters at tap t."""
        net, counters = self.net, self.counters_at[stream][t]

        def affine(terms, const, w):
            vs = [net.mul_const(net.resize(counters[k], w), c) for k, c in terms]
            return net.add(*vs, net.const(const, w)) if const or not vs else net.add(*vs)
        return affine

    def guard_ok(self, port: dict, t: int):
        """1 where every guard of the request holds (``0 <= e < bound``, ``e % step == 0``), at tap t."""
        net = self.net
        counts = self.phases[port["phase"]]["counters"]
        conds = []
        for g in port.get("guard", []):
            lo = g["const"] + sum(min(0, c * (counts[k] - 1)) for k, c in g["terms"])
            hi = g["const"] + sum(max(0, c * (counts[k] - 1)) for k, c in g["terms"])
            if lo >= 0 and hi < g["bound"] and g["step"] == 1:
                continue  # holds everywhere
            # e in two's complement: a negative e reads as a large unsigned number, >= bound
            w = max(abs(lo).bit_length(), hi.bit_length(), g["bound"].bit_length(), g["step"].bit_length()) + 1
            e = self.affine_at(t, self.stream_of[port["phase"]])(g["terms"], g["const"], w)
            conds.append(net.cmp("ult", e, net.const(g["bound"], w)))
            step = g["step"]
            if step > 1 and step & (step - 1) == 0:
                conds.append(net.eq_const(net.extract(e, 0, step.bit_length() - 1, keep_rest=False), 0))
            elif step > 1:
                conds.append(net.eq_const(net.modu(e, net.const(step, w)), 0))
        return net.and_(*conds) if conds else True

    def locate(self, port: dict, t: int):
        """(bank, address) of a request from the counters at tap t, in exact widths (no unused bits)."""
        net = self.net
        mem = self.spec["memories"][port["memory"]]
        bw, aw = mem["bank_bits"], mem["addr_bits"]
        bank, addr = net.const(0, bw), net.const(0, aw)
        affine = self.affine_at(t, self.stream_of[port["phase"]])
        for a, f, rows, w in zip(port["index"], mem["factors"], mem["bank_shape"], port["dim_bits"], strict=True):
            bank, row = _index_dim(net, affine, bank, a, f, rows, w, bw)
            if row is not None:
                # the row in exactly the bits its rows need: bits above are 0 at every request (dropped)
                rw = max(1, (rows - 1).bit_length())
                addr = net.add(net.mul_const(addr, rows), net.resize(net.resize(row, rw), aw))
        return bank, addr

    def request(self, name: str, port: dict, t: int, *conds):
        """The request's registers at tap t + 1: (hit, bank or None, address), from the counters at tap t."""
        net = self.net
        bank, addr = self.locate(port, t)
        issue_at = self.issue_at[self.stream_of[port["phase"]]]
        hit = net.delayed(f"{name}_hit", net.and_(issue_at[t], self.on_at(port["phase"], t), *conds))
        bank_q = net.delayed(f"{name}_bank", bank, None) if len(port["banks"]) > 1 else None
        return hit, bank_q, net.delayed(f"{name}_addr", addr, None)

    def bank_hit(self, hit, bank_q, b: int):
        """The request's hit on bank ``b`` (its hit when the port has one bank)."""
        return hit if bank_q is None else self.net.and_(hit, self.net.eq_const(bank_q, b))

    def reads(self) -> dict[tuple[str, int], list]:
        """Read requests: registers at tap 1, bank ports at tap 2, data select at operand - 1, guard at
        operand; answers (memory, bank) -> [(hit, address)]."""
        net, out = self.net, self.out
        raddr_cases: dict[tuple[str, int], list] = {}
        users: dict[str, int] = {}
        for port in self.spec["reads"]:
            if port.get("sel"):
                users[port["sel"]] = users.get(port["sel"], 0) + 1
        shared: dict[str, list] = {}  # a multiplexer several phases read through: (hit, bank) per request
        for r, port in enumerate(self.spec["reads"]):
            with self.clocked(memory=port["memory"]):
                ok = self.guard_ok(port, 0)  # a guarded-off request takes no port
                ok_q = net.delayed(f"rd{r}_ok", net.and_(ok)) if port.get("ok") else None
                hit, bank_q, addr = self.request(f"rd{r}", port, 0, ok)
                self.read_address(raddr_cases, port, hit, bank_q, addr)
                if port.get("ok"):
                    out[port["ok"]] = self.delay(port["ok"], ok_q, self.tap_operand - self.tap_addr)
                sel, cycles = port.get("sel"), self.tap_operand - 1 - self.tap_addr
                if sel and users[sel] == 1:
                    out[sel] = self.delay(sel, bank_q, cycles)
                elif sel:
                    shared.setdefault(sel, []).append((self.delay(f"rd{r}_selhit", hit, cycles),
                                                       self.delay(f"rd{r}_sel", bank_q, cycles)))
        for sel, cases in shared.items():
            out[sel] = net.onehot(cases, net.width(cases[0][1]))
        return raddr_cases

    def read_address(self, cases: dict, port: dict, hit, bank_q, addr) -> None:
        """Add a request to its banks' read-address cases: (memory, bank) -> [(hit, address)]; one marked
        ``any_bank`` (emit._share_read_addresses) joins its phase's case for every bank, keyed (memory, None),
        (memory, phase): the OR of their hits, their one address."""
        if port.get("any_bank"):
            self.share_address(cases, port, hit, addr)
            return
        for b in port["banks"]:
            cases.setdefault((port["memory"], b), []).append((self.bank_hit(hit, bank_q, b), addr))

    @staticmethod
    def share_address(cases: dict, port: dict, hit, addr, case=None) -> None:
        """A request marked ``any_bank`` into its phase's case (or ``case``) for every bank of its memory:
        cases[(memory, None)] maps each case to its requests' (hit, address)."""
        key = port["phase"] if case is None else case
        cases.setdefault((port["memory"], None), {}).setdefault(key, []).append((hit, addr))

    def phase_case(self, reqs: list) -> tuple:
        """One phase's requests of one address (``any_bank``) as one case: the OR of their hits, the first's
        address; the others' addresses (equal, or computed from other constants to the same row) are unused."""
        self.net.dropped.extend(a for _, a in reqs[1:])
        return self.net.or_(*[h for h, _ in reqs]), reqs[0][1]

    def writes(self, raddr_cases: dict) -> dict[tuple[str, int], list]:
        """Write requests: registers at tap - 1 (from the counters at tap - 2), bank ports at the tap;
        answers (memory, bank) -> [(hit, address, data source)]; a write on the second port adds its address to
        ``raddr_cases`` (``reads``)."""
        net = self.net
        wport_cases: dict[tuple[str, int], list] = {}
        for w, port in enumerate(self.spec["writes"]):
            with self.clocked(memory=port["memory"]):
                t, ph = self.compute_tap(port), self.phases[port["phase"]]
                stream = self.stream_of[port["phase"]]
                conds = [self.guard_ok(port, t)]
                if ph.get("lag") is not None:  # pipelined groups: no write in the pass the phase has no group
                    conds.append(net.not_(net.eq_const(self.cgrp, ph["groupless_pass"])))
                if port["last_only"]:
                    conds += [net.eq_const(self.counters_at[stream][t][k], ph["counters"][k] - 1)
                              for k in ph["reduce"]]
                hit, bank_q, addr = self.request(f"wr{w}", port, t, *conds)
                if "srp" in port:  # the lane's point (plus its stage's key) at its output conversion, a cycle earlier
                    point = port["point"]
                    self.out[port["srp"]] = net.delayed(
                        port["srp"] + "_q", self.affine_at(t - 1, stream)(point["terms"], point["const"], 32), None)
                shared = port.get("any_bank") and not port.get("port_b")  # its phase's one write address
                for b in port["banks"]:  # (the second port's: "b", the memory and bank; None: the address shared)
                    wport_cases.setdefault(("b", port["memory"], b) if port.get("port_b") else (port["memory"], b),
                                           []).append((self.bank_hit(hit, bank_q, b), None if shared else addr,
                                                       port["source"][str(b)]))
                if shared:  # (one case per tap: a serialized drain's taps never write in one cycle)
                    self.share_address(wport_cases, port, hit, addr, (port["phase"], port["tap"]))
                if port.get("port_b"):  # at the read port's address
                    self.read_address(raddr_cases, port, hit, bank_q, addr)
        return wport_cases

    def bank_ports(self, raddr_cases: dict, wport_cases: dict) -> None:
        """Each bank's read address, write enable, write address and write data select: a registered
        one-hot OR over the requests of that bank, not a priority chain."""
        for name, mem in self.spec["memories"].items():
            with self.clocked(memory=name):
                self._bank_ports(name, mem, raddr_cases, wport_cases)

    def _bank_ports(self, name: str, mem: dict, raddr_cases: dict, wport_cases: dict) -> None:
        """``bank_ports`` for the banks of one memory."""
        net, out = self.net, self.out
        aw = mem["addr_bits"]
        shared = [self.phase_case(reqs) for reqs in raddr_cases.get((name, None), {}).values()]
        shared_w = [self.phase_case(reqs) for reqs in wport_cases.get((name, None), {}).values()]
        for b in range(mem["banks"]):
            ports = mem["ports"][b]
            second = wport_cases.get(("b", name, b), [])  # writes on the read port (emit._load_through_second_port)
            if ports.get("raddr"):
                out[ports["raddr"]] = net.delayed(
                    ports["raddr"] + "_q", net.onehot(raddr_cases.get((name, b), []) + shared, aw), None)
            if ports.get("we_b"):
                out[ports["we_b"]] = net.delayed(ports["we_b"] + "_q", net.or_(*[h for h, _, _ in second]))
            if ports.get("we"):
                cases = wport_cases.get((name, b), [])
                out[ports["we"]] = net.delayed(ports["we"] + "_q", net.or_(*[h for h, _, _ in cases]))
                out[ports["waddr"]] = net.delayed(ports["waddr"] + "_q",
                                                  net.onehot([(h, a) for h, a, _ in cases if a is not None]
                                                             + shared_w, aw), None)
                if ports.get("wsel"):  # the write data's source, one cycle ahead (the top registers the data)
                    sw = ports["wsel_bits"]
                    out[ports["wsel"]] = net.onehot([(h, net.const(s, sw)) for h, _, s in cases if s], sw)

    def stream_control(self) -> None:
        """Datapath (go, act, each reduction's first) and stream (idle, in_ready, out_valid, out_sel) outputs."""
        net, out, spec, on, phases = self.net, self.out, self.spec, self.on, self.phases
        op = self.tap_operand

        def arrive(p: int):  # phase p's operands reach its unit next cycle (go; act: its pooled multipliers' turn)
            return net.and_(self.issue_at[self.stream_of[p]][op - 1], self.on_at(p, op - 1))
        for p, port in [*spec["go"].items(), *spec.get("act", {}).items()]:
            with self.clocked(phase=int(p)):
                out[port] = net.delayed(port + "_q", arrive(int(p)))
        # each reduction's own `first` (a shared one would be merged into one register of huge fanout); with a side
        # stream only at an issue: a phase waiting for the other stream (counters at 0) must not restart the
        # accumulator of a unit it shares with a phase issuing meanwhile. Its `last` always at an issue (the counters
        # rest at their ends while the phase drains): its unit's result registers take the result then and hold it
        # for a serialized drain (backends/drains.py)
        for which, at_end in (("first", False), ("last", True)):
            for p, port in spec.get(which, {}).items():
                with self.clocked(phase=int(p)):
                    stream, ph = self.stream_of[int(p)], phases[int(p)]
                    issuing = [self.issue_at[stream][0]] if self.side or at_end else []
                    point = [net.eq_const(self.cnt[stream][k], ph["counters"][k] - 1 if at_end else 0)
                             for k in ph["reduce"]]
                    out[port] = self.delay(port, net.and_(on[int(p)], *issuing, *point), self.tap_operand)
        out["idle"] = net.and_(net.eq_const(self.phase, 0), net.not_(self.args["rst"]))
        out["in_ready"] = net.and_(self.can_issue, self.is_unpack) if self.unpack_ids else net.const(0, 1)
        out["in_two"] = self.is_pair if self.is_pair is not None else net.const(0, 1)
        packs = [p for p, ph in phases.items() if ph["kind"] == "pack"]
        out["out_valid"] = net.delayed("out_valid_q", net.and_(self.issue_at[0][self.tap_out - 1],
                                                               net.or_(*[self.on_at(p, self.tap_out - 1)
                                                                         for p in packs]))) \
            if packs else net.const(0, 1)
        if spec.get("out_sel_bits"):
            sw = spec["out_sel_bits"]
            out["out_sel"] = net.onehot([(on[p], net.const(i, sw)) for i, p in enumerate(packs) if i], sw)

    def outputs(self) -> dict:
        """The output values by port name, with ``unused_bits``: every bit the address arithmetic drops on
        purpose, folded into one output the top leaves unconnected under an ``unused_`` name
        (Verilator's convention): no lint warning, no logic."""
        net, out = self.net, self.out
        dropped = net.dropped
        out["unused_bits"] = net.comb.ParityOp(net.comb.ConcatOp(dropped).result).result if dropped else net.const(0, 1)
        missing = [n for n, _ in self.spec["outputs"] if n not in out]
        if missing:
            raise ControllerError(f"controller outputs without a driver: {missing}")
        return {n: out[n] for n, _ in self.spec["outputs"]}


def _index_dim(net: _Net, affine, bank, a: dict, f: int, rows: int, w: int, bw: int):
    """One index dimension ``a`` of a request over ``f`` cyclic banks of ``rows`` rows (``w`` bits
    wide): (the bank so far, extended by this dimension; the row, or None for a single row)."""
    rw = max(1, (rows - 1).bit_length())
    if a["div"] == 1 and not a["mod"] and all(c % f == 0 for _, c in a["terms"]):
        # aligned (every lane group starts a bank row): a fixed bank, an exact row
        bank = net.add(net.mul_const(bank, f), net.const(a["const"] % f, bw)) if f > 1 else bank
        row = affine([(k, c // f) for k, c in a["terms"]], a["const"] // f, rw) if rows > 1 else None
        return bank, row
    if a["div"] == 1 and a["mod"] and a["mod"] & (a["mod"] - 1) == 0:  # % 2^m: exact in m bits
        v = affine(a["terms"], a["const"], max(1, a["mod"].bit_length() - 1))
        w = max(1, a["mod"].bit_length() - 1)
    else:
        # wide enough for the divisor and modulus too: a constant truncated to the index's width would
        # divide by 0 (or take % of the wrong number), e.g. lane 1's (4*c + 1) / 2, whose largest value is 1
        w = max(w, a["div"].bit_length(), a["mod"].bit_length())
        v = affine(a["terms"], a["const"], w)
        if a["div"] != 1:
            v = net.divu(v, net.const(a["div"], w))
        if a["mod"]:
            v = net.modu(v, net.const(a["mod"], w))
    if f > 1:
        bank, v = _split(net, bank, v, w, f, bw)
    return bank, ((v if v is not None else net.const(0, 1)) if rows > 1 else None)


def _body(spec: dict, net: _Net, args: dict, fsm, ir) -> dict:
    """The controller's logic. Only the FSM, the loop counters and the drain counter have a reset:
    every other register is a pipeline fed by them, and drains while ``rst`` is held (the top
    stretches it to ``reset_cycles``), so the reset net stays small. Timing (cycles after a
    request's issue, ``spec["taps"]``): the request's bank, address and guard are registered at
    ``addr``, each bank's port at ``ram`` (a one-hot OR over the requests, not a priority chain),
    the bank select of its data at ``operand - 1``. Every output is a register or one gate from
    registers."""
    c = _Controller(spec, net, args)
    c.phase_fsm(fsm, ir)
    c.counters()
    c.delay_line()
    raddr_cases = c.reads()
    wport_cases = c.writes(raddr_cases)
    c.bank_ports(raddr_cases, wport_cases)
    c.stream_control()
    return c.outputs()


def _fill_fsm_default(module, fsm_name: str) -> None:
    """Give the lowered FSM's empty ``default:`` case the IDLE state's assignments.

    ``convert-fsm-to-sv`` leaves the default branch of the state ``case`` empty (bit patterns
    that are no state); in an ``always_comb`` that is a latch for Verilator's lint and for
    synthesis. Cloning the IDLE case there makes every pattern behave as IDLE.
    """
    from circt import ir

    for op in module.body.operations:
        if op.operation.name != "hw.module" or ir.StringAttr(op.attributes["sym_name"]).value != fsm_name:
            continue
        body = list(op.regions[0].blocks[0].operations)
        idle = [o.operands[3] for o in body if o.operation.name == "seq.compreg"
                and ir.StringAttr(o.attributes["name"]).value == "state_reg"]
        for inner in body:
            if inner.operation.name != "sv.alwayscomb":
                continue
            for case in inner.regions[0].blocks[0].operations:
                if case.operation.name != "sv.case" or len(case.regions) < 2 or not idle:
                    continue
                first, last = case.regions[0].blocks[0], case.regions[len(case.regions) - 1].blocks[0]
                if len(list(last.operations)) == 0:
                    for o in first.operations:
                        c = o.operation.clone(ip=ir.InsertionPoint(last))
                        if c.name == "sv.bpassign" and c.operands[1].type == idle[0].type:
                            c.operands[1] = idle[0]  # the next state: IDLE (its reset value)


def merge_registers(module) -> int:
    """Make registers of one value one register (the requests of several lanes or phases often compute the same
    address, hit or delayed select): common subexpressions first, then every ``seq.compreg`` whose operands
    (value, clock, reset) equal an earlier one's gives way to it, until none is left; returns how many went.
    Yosys merges them too, so the hardware is the same; Verilator does not, and evaluates each every cycle."""
    from circt.passmanager import PassManager

    merged = 0
    while True:
        PassManager.parse(MERGE_PREP).run(module.operation)
        before = merged
        for mod in module.body.operations:
            if mod.operation.name != "hw.module":
                continue
            seen: dict[tuple, object] = {}
            for op in list(mod.regions[0].blocks[0].operations):
                if op.operation.name != "seq.compreg":
                    continue
                key = tuple(op.operation.operands)
                if key in seen:
                    op.operation.results[0].replace_all_uses_with(seen[key])
                    op.operation.erase()
                    merged += 1
                else:
                    seen[key] = op.operation.results[0]
        if merged == before:
            return merged


def lower(ctx, module, fsm_name: str) -> dict[str, str]:
    """Run the lowering passes and export one SystemVerilog file per module; file name -> text."""
    import circt
    from circt.passmanager import PassManager

    with ctx:
        PassManager.parse(FSM_LOWERING).run(module.operation)
        _fill_fsm_default(module, fsm_name)
        if not module.operation.verify():
            raise ControllerError("the controller IR does not verify after the FSM lowering")
        merge_registers(module)
        PassManager.parse(LOWERING).run(module.operation)
        with tempfile.TemporaryDirectory() as tmp:
            circt.export_split_verilog(module, tmp)
            files = {}
            for path in sorted(Path(tmp).rglob("*")):
                if path.is_file() and path.suffix in (".sv", ".v", ".svh"):
                    files[path.name] = path.read_text()
    return _scope_typedefs(files, fsm_name)


def _scope_typedefs(files: dict[str, str], fsm_name: str) -> dict[str, str]:
    """CIRCT writes the FSM's state enum to ``fsm_enum_typedefs.sv`` under a fixed include guard:
    two kernels in one Vivado project would share the file and the guard, and the second kernel's
    FSM would see no enum. Name both after this kernel's FSM."""
    old, new = "fsm_enum_typedefs.sv", f"{fsm_name}_enum_typedefs.sv"
    scoped = {}
    for fname, text in files.items():
        text = text.replace(f'`include "{old}"', f'`include "{new}"')
        text = text.replace("_TYPESCOPE_fsm_enum_typedecls", f"_TYPESCOPE_{fsm_name}_enum_typedecls")
        scoped[new if fname == old else fname] = text
    return scoped


def main() -> int:
    """Child entry: controller spec (JSON) on stdin -> {file: text} (JSON) on stdout."""
    spec = json.loads(sys.stdin.read())
    try:
        ctx, module = build(spec)
        files = lower(ctx, module, spec["fsm"])
    except ControllerError as e:
        print(f"fx2fpga: {e}", file=sys.stderr)
        return 3
    except Exception as e:  # an MLIRError from a pass, a binding error: report it, with its type
        print(f"fx2fpga: {type(e).__name__}: {e}", file=sys.stderr)
        return 4
    json.dump(files, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
