"""What the HLS and RTL backends (and the estimate and the project writer) share, written once.

- ``template_env()``: the Jinja environment of ``fx2fpga/templates``;
- ``check_stage()``: the checks every stage passes before either backend prints it;
- ``command_table()``: each command's code and the words it moves through the word interface;
- ``buffer_banking()``: the one banking rule: how many cyclic banks each buffer dim is split
  into, read by the estimate, the HLS ``ARRAY_PARTITION`` pragmas and the RTL memories (the
  pragmas leave out the lanes' stride: ``BankSpec``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from fx2fpga_runtime import interface
from fx2fpga_runtime.ir import GROUP_VAR, MODEL_VAR, OPS, REDUCTION_OPS, Access, Affine, Buffer, Guard, Kernel, Stage
from fx2fpga_runtime.ops import OPS_TABLE, epilogue_inputs, own_inputs
from jinja2 import Environment, PackageLoader, StrictUndefined

from ..errors import Fx2fpgaError
from . import drains

C_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # loop variables, buffer and kernel names


class KernelCheckError(Fx2fpgaError, ValueError):
    """A stage no backend can print exactly; the message says what to change (each backend
    re-raises it as its own error)."""


def template_env() -> Environment:
    """The Jinja environment of the templates in ``fx2fpga/templates``."""
    return Environment(
        loader=PackageLoader("fx2fpga", "templates"),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


# ----- index ranges ---------------------------------------------------------------------------------------

def affine_range(a: Affine, extents: dict[str, int]) -> tuple[int, int]:
    """Smallest and largest value of an index over the loop box (before ``div``/``mod``)."""
    lo = hi = a.const
    for var, coeff in a.terms:
        top = coeff * (extents[var] - 1)
        lo, hi = lo + min(0, top), hi + max(0, top)
    return lo, hi


def guarded_in_range(a: Affine, size: int, guards: tuple[Guard, ...]) -> bool:
    """Whether a guard keeps index ``a`` inside ``0..size-1`` (and exact before its ``/``) where it holds."""
    linear = (sorted(a.terms), a.const)
    return not a.mod and any((sorted(g.expr.terms), g.expr.const) == linear and g.step % a.div == 0
                             and (g.bound - 1) // a.div < size for g in guards)


# ----- stage checks ---------------------------------------------------------------------------------------

def check_access(acc: Access, buf: Buffer, extents: dict[str, int], where: str) -> None:
    """An access has one in-range index per dim over the stage's loops, and linear guards."""
    if len(acc.index) != len(buf.shape):
        raise KernelCheckError(
            f"{where}: {acc.c_expr()} has {len(acc.index)} indices, {buf.name} has shape {buf.shape}")
    for g in acc.guard:
        if g.expr.div != 1 or g.expr.mod or g.step < 1 or any(v not in extents for v in g.expr.vars()):
            raise KernelCheckError(f"{where}: guard {g.c_expr()} of {acc.c_expr()} must be a linear expression of "
                                   "the stage's loops with a step >= 1")
    for d, (a, size) in enumerate(zip(acc.index, buf.shape, strict=True)):
        unknown = [v for v in a.vars() if v not in extents]
        if unknown:
            raise KernelCheckError(f"{where}: {acc.c_expr()} uses {unknown}, which are not loops of the stage")
        if guarded_in_range(a, size, acc.guard):
            continue
        lo, hi = affine_range(a, extents)
        if lo < 0 and (a.div != 1 or a.mod):
            raise KernelCheckError(
                f"{where}: index {d} of {acc.c_expr()} can be negative before '/' or '%', where C and Python "
                "round differently; shift the index by a constant"
            )
        lo, hi = lo // a.div, hi // a.div
        if a.mod and not (0 <= lo and hi < a.mod):
            lo, hi = 0, a.mod - 1
        if lo < 0 or hi >= size:
            raise KernelCheckError(f"{where}: index {d} of {acc.c_expr()} spans {lo}..{hi}, outside 0..{size - 1}")


def check_stage(st: Stage, kernel: Kernel, where: str, groups: int = 1) -> None:
    """A stage both backends can print: a known op with its arity, loops, reductions, lanes,
    in-range accesses (``GROUP_VAR`` in ``0..groups-1``: its program's model groups) and the in-place
    rules (raises ``KernelCheckError``)."""
    if st.op not in OPS:
        raise KernelCheckError(f"{where}: op {st.op!r} is not one of {', '.join(OPS)}")
    spec = OPS_TABLE[st.op]
    arity = spec.arity
    _check_inputs(st, spec, where)
    extents = {lp.var: lp.extent for lp in st.loops}
    for var in extents:
        if not C_IDENT.match(var):
            raise KernelCheckError(f"{where}: loop variable {var!r} is not a C++ identifier; rename it")
    if (st.op in REDUCTION_OPS) != bool(st.reduce):
        raise KernelCheckError(f"{where}: {st.op} must {'' if st.op in REDUCTION_OPS else 'not '}have reduce vars")
    if any(v not in extents for v in st.reduce):
        raise KernelCheckError(f"{where}: reduce vars {st.reduce} are not all loops of the stage")
    if st.reduce and st.acc is None:
        raise KernelCheckError(f"{where}: a {st.op} reduction needs an accumulator format (stage.acc)")
    if st.out.guard or (st.reduce and any(acc.guard for acc in st.ins[arity:])):
        raise KernelCheckError(f"{where}: only the operands of a stage may be guarded, not its output, init or "
                               "epilogue inputs")
    _check_lanes(st, extents, where)
    for acc in (st.out, *st.ins):
        if acc.buffer not in kernel.buffers:
            raise KernelCheckError(f"{where}: unknown buffer {acc.buffer!r}")
        check_access(acc, kernel.buffers[acc.buffer], {**extents, GROUP_VAR: groups}, where)
    _check_in_place(st, arity, where)
    if spec.reads_table:
        tbl = kernel.buffers.get(st.attrs.get("table", ""))
        if tbl is None or tbl.init is None or len(tbl.shape) != 1 or tbl.size < 2:
            raise KernelCheckError(f"{where}: table needs attrs['table'] naming a 1-D buffer with n+1 >= 2 init values")


def _check_inputs(st: Stage, spec, where: str) -> None:
    """The op's operands, a reduction's optional init input, then its fused epilogue's inputs (a ``mac``'s only:
    other buffers, read at the result's point)."""
    arity = spec.arity
    allowed = (arity, arity + 1) if spec.init_input else (arity,)
    extra = epilogue_inputs(st)
    if extra and not (st.op == "mac" and st.reduce):
        raise KernelCheckError(f"{where}: only a mac takes a fused epilogue ({st.attrs['then']!r})")
    for acc in st.ins[len(st.ins) - extra:]:
        if acc.buffer == st.out.buffer or any(v in st.reduce for ix in acc.index for v in ix.vars()):
            raise KernelCheckError(f"{where}: the epilogue's input {acc.c_expr()} must be another buffer, read at the "
                                   "result's point (no reduced loop in its index)")
    if len(st.ins) - extra not in allowed:
        raise KernelCheckError(f"{where}: {st.op} takes {' or '.join(str(n + extra) for n in allowed)} inputs, got "
                               f"{len(st.ins)}")


def _check_lanes(st: Stage, extents: dict[str, int], where: str) -> None:
    if st.lanes > 1 and (st.lane_var not in extents or st.lane_var in st.reduce or st.lane_var == MODEL_VAR):
        raise KernelCheckError(f"{where}: lanes={st.lanes} needs lane_var to be a loop that is not reduced "
                               f"(nor the model loop {MODEL_VAR})")
    if st.outer_lanes > 1 and (st.outer_lane_var not in extents or st.outer_lane_var in st.reduce
                               or st.outer_lane_var in (MODEL_VAR, st.lane_var) or st.lanes < 2):
        raise KernelCheckError(f"{where}: outer_lanes={st.outer_lanes} needs outer_lane_var to be a loop that is not "
                               f"reduced, not the model loop and not lane_var, beside lanes over lane_var")
    if st.model_lanes > 1 and MODEL_VAR not in extents:
        raise KernelCheckError(f"{where}: model_lanes={st.model_lanes} needs the model loop {MODEL_VAR}")


def _check_in_place(st: Stage, arity: int, where: str) -> None:
    for i, acc in enumerate(own_inputs(st)):
        is_init = st.reduce and i == arity
        if acc.buffer == st.out.buffer and (acc != st.out or (st.reduce and not is_init)):
            raise KernelCheckError(
                f"{where}: reads {acc.c_expr()} while writing {st.out.c_expr()}; a stage may read its output "
                "buffer only at the same index (in-place update) or as a reduction's init"
            )


# ----- the command table ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    """Where one buffer sits in a command's word array: ``size`` words from ``offset``."""

    buffer: str
    offset: int
    size: int


@dataclass(frozen=True)
class Command:
    """One command of the word interface: its code, the buffers it reads from ``in_words`` and
    writes to ``out_words`` (in order), and the program it runs (``""``: a transfer only)."""

    name: str
    code: int
    ins: tuple[Slot, ...]
    outs: tuple[Slot, ...]
    program: str

    @property
    def const(self) -> str:
        """The C++ constant of its code: ``CMD_INFER``."""
        return f"CMD_{self.name.upper()}"

    @property
    def in_words(self) -> int:
        return sum(s.size for s in self.ins)

    @property
    def out_words(self) -> int:
        return sum(s.size for s in self.outs)


def _slots(kernel: Kernel, names: list[str]) -> tuple[Slot, ...]:
    out, pos = [], 0
    for n in names:
        words = interface.buffer_words(kernel, n)
        out.append(Slot(n, pos, words))
        pos += words
    return tuple(out)


def command_table(kernel: Kernel, codes: dict[str, int] | None = None) -> list[Command]:
    """The commands of ``kernel`` (``codes``: those its core answers to; default all), by code."""
    codes = interface.commands_of(kernel) if codes is None else codes
    rows = []
    for name, code in sorted(codes.items(), key=lambda kv: kv[1]):
        ins, outs = interface.command_buffers(kernel, name)
        rows.append(Command(name, code, _slots(kernel, ins), _slots(kernel, outs),
                            name if name in kernel.programs else ""))
    return rows


# ----- banking --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BankSpec:
    """A buffer split cyclically into ``factors[d]`` banks along each dim ``d`` (1: not split;
    the dim's size: one bank per element), so that the lanes of every stage reach distinct banks.
    The RTL's RAMs, the HLS ``ARRAY_PARTITION`` pragmas and the estimate all split by ``factors``;
    strided lanes (a pooling window, a strided convolution's input) need stride x lanes banks."""

    buffer: str
    shape: tuple[int, ...]
    factors: tuple[int, ...]

    @property
    def banks(self) -> int:
        """The number of banks (RAMs of the RTL; at least the HLS partitions)."""
        return math.prod(self.factors)

    def partitions(self) -> list[tuple[int, int]]:
        """``(dim, factor)`` of each dim the HLS pragmas split, dims counted from 1."""
        return [(d + 1, f) for d, f in enumerate(self.factors) if f > 1]


def lane_span(st: Stage, index: Affine, var: str | None = None, lanes: int | None = None) -> int:
    """How many consecutive values of a lane-indexed dim the stage's lanes over ``var`` (default: its
    ``lane_var``, ``lanes``) cover together: the active lanes (at most the loop's extent) times the
    variable's ``|coefficient|`` (a strided convolution's input: stride x lanes; 1 under a ``/`` or ``%``)."""
    var, lanes = (st.lane_var, st.lanes) if var is None else (var, lanes)
    lanes = min(lanes, next(lp.extent for lp in st.loops if lp.var == var))
    coeff = abs(dict(index.terms)[var]) or 1
    return lanes * (coeff if index.div == 1 and not index.mod else 1)


def buffer_banking(kernel: Kernel, names=None, serial_drains: bool = True) -> dict[str, BankSpec]:
    """The banking of every buffer (or of those ``names``): along each dim a lane variable indexes (the model
    loop's included), the least common multiple of the spans the stages' lanes cover there (``lane_span``), at
    most the dim's size. With ``serial_drains`` (the RTL's rule) a reduction whose lanes write over several cycles
    (``drains.write_slots`` under the banking of the other accesses) does not bank its output (nor a fused
    update its initial value, read in the same slots); the HLS pragmas pass False."""
    names = kernel.buffers if names is None else names
    accesses: dict[str, list[tuple[Stage, Access, bool]]] = {name: [] for name in names}
    for st in kernel.stages():
        for k, acc in enumerate((st.out, *st.ins)):
            if acc.buffer in accesses:
                accesses[acc.buffer].append((st, acc, k == 0))
    out = {}
    fewest = drains.fewest_points(kernel)
    for name in names:
        shape = tuple(kernel.buffers[name].shape)
        held = [st for st, _, is_out in accesses[name] if is_out and serial_drains and drains.serializable(st, kernel)]
        while True:
            factors = _lane_factors(shape, [(st, acc) for st, acc, is_out in accesses[name]
                                            if st not in held or not (is_out or acc is drains.own_init(st))])
            over = [st for st in held if drains.fitting_slots(st, kernel, factors, fewest) is None]
            if not over:
                break
            held = [st for st in held if st not in over]  # (more banks: the others' slots only fall)
        out[name] = BankSpec(name, shape, factors)
    return out


def _lane_factors(shape: tuple[int, ...], accesses: list[tuple[Stage, Access]]) -> tuple[int, ...]:
    """``buffer_banking``'s factors of one buffer from the accesses that bank it."""
    f = [1] * len(shape)
    for st, acc in accesses:
        for var, lanes in st.lane_loops():
            for d, ix in enumerate(acc.index):
                if var in ix.vars():
                    f[d] = min(shape[d], math.lcm(f[d], lane_span(st, ix, var, lanes)))
    return tuple(f)
