"""Random small kernels for differential fuzzing, drawn with hypothesis straight in the Kernel IR (no PyTorch).

A *chain* is one fuzz case: 1-3 input buffers over a loop box of rank 0-3 (extents 1-5), then 1-6 stages,
each reading the previous stage's result (and other tensors of the chain, broadcast), any op of
``ops.OPS_TABLE`` (tables with their const ROM, ``msub`` with its ``mid`` format, ``div``/``div_sqrt`` with
their normalized ROM, reductions with an accumulator and an optional init input), random formats (widths
1-40, int bits from below 0 to beyond the width, signed or not, every rounding and overflow mode), loop
orders, reversed reads and lanes. Many chains are joined side by side into one kernel (``batch_kernel``), so
one csim or Verilator build checks them all.

Every drawn stage keeps its exact values inside int64 (the emulator's raw integers): ``fits`` checks the
operand alignments and the draws bound each format's frac bits so that its assignment cannot overflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from fx2fpga_runtime.fixed import FORMAT_ROUNDINGS, OVERFLOW_MODES, ROUNDING_MODES, Fixed
from fx2fpga_runtime.ir import Access, Affine, Buffer, Kernel, Loop, Program, Stage
from fx2fpga_runtime.ops import COMPARISONS, NORM_INDEX_BITS, OPS_TABLE, is_compare_select, norm_rom_values
from hypothesis import strategies as st

AXES = ("i", "j", "k")  # the chain's loop variables, by axis
MAX_WIDTH = 40  # buffers inside a chain
PORT_WIDTH = 32  # inputs and outputs cross the 32-bit word interface
EXACT_BITS = 61  # every exact intermediate stays below 2**61 in magnitude (int64 with room)
FRAC_MARGIN = 4  # int bits from -4 to width + 4
OP_NAMES = tuple(OPS_TABLE)  # copy first: hypothesis shrinks towards it
NORMALIZED_ROOTS = {"div": 1, "div_sqrt": 2}
MIN_ROM_FRAC, MAX_ROM_FRAC = NORM_INDEX_BITS + 2, 32  # quantize._build_normalized_rom's range of q


@dataclass(frozen=True)
class Tensor:
    """A buffer of the chain: its name, the chain axes it spans (in order) and its format."""

    name: str
    axes: tuple[int, ...]
    fmt: Fixed


@dataclass
class Chain:
    """One fuzz case: its buffers (local names) and stages, in order; ``outputs`` are read back."""

    extents: tuple[int, ...]
    buffers: dict[str, Buffer] = field(default_factory=dict)
    stages: list[Stage] = field(default_factory=list)
    pool: list[Tensor] = field(default_factory=list)

    @property
    def inputs(self) -> list[str]:
        return [n for n, b in self.buffers.items() if b.role == "input"]

    @property
    def outputs(self) -> list[str]:
        return [n for n, b in self.buffers.items() if b.role == "output"]

    def shape(self, axes: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(self.extents[a] for a in axes)

    def add(self, name: str, axes: tuple[int, ...], fmt: Fixed, role: str) -> Tensor:
        self.buffers[name] = Buffer(name, self.shape(axes), fmt, role)
        t = Tensor(name, axes, fmt)
        self.pool.append(t)
        return t

    def describe(self) -> str:
        """The chain in a few lines (a mismatch report, a regression test's docstring)."""
        lines = [f"extents {self.extents}"]
        lines += [f"  {b.name}{list(b.shape)}: {b.fmt} ({b.role})" for b in self.buffers.values() if b.init is None]
        for s in self.stages:
            ins = ", ".join(a.c_expr() for a in s.ins)
            extra = f" reduce {s.reduce} acc {s.acc}" if s.reduce else ""
            lanes = f" lanes {s.lanes} on {s.lane_var}" if s.lanes > 1 else ""
            attrs = {k: v for k, v in s.attrs.items() if k != "fn"}
            loops = ",".join(f"{lp.var}{lp.extent}" for lp in s.loops)
            lines.append(f"  {s.out.c_expr()} = {s.op}({ins}) loops [{loops}]{extra}{lanes} {attrs or ''}")
        return "\n".join(lines)


# ----- formats ------------------------------------------------------------------------------------------

@st.composite
def formats(draw, max_width: int = MAX_WIDTH, frac_max: int | None = None, frac_min: int | None = None,
            roundings: tuple[str, ...] = ROUNDING_MODES) -> Fixed:
    """A format of width 1..max_width, frac bits in ``-4..width + 4`` cut to ``[frac_min, frac_max]`` (where
    the cut leaves nothing, the bound nearest to the width's range), any sign, overflow mode and rounding of
    ``roundings`` (a stage's output may round SR; an accumulator, a product's ``mid`` or an input may not)."""
    width = draw(st.integers(1, max_width))
    signed = draw(st.booleans())
    lo, hi = -FRAC_MARGIN, width + FRAC_MARGIN
    if frac_min is not None:
        lo = max(lo, frac_min)
    if frac_max is not None:
        hi = min(hi, frac_max)
    if lo > hi:  # the int64 bound wins: frac_max (or frac_min) itself
        lo = hi = frac_max if frac_max is not None and frac_max < lo else lo
    frac = draw(st.integers(lo, hi))
    if signed and width == 1 and frac > 0:
        signed = False  # a signed 1-bit format needs its one bit for the sign
    rounding = draw(st.sampled_from(roundings))
    overflow = draw(st.sampled_from(OVERFLOW_MODES))
    return Fixed(width, width - frac, signed, rounding, overflow)


def assign_frac_max(bits: int, frac: int) -> int:
    """The most frac bits a format may have to take an exact value of ``bits`` bits at ``frac`` frac bits
    (the left shift of the assignment must stay within ``EXACT_BITS``)."""
    return frac + EXACT_BITS - bits


# ----- exact results ------------------------------------------------------------------------------------

def aligned_bits(fmts: list[Fixed]) -> int:
    """Bits of the widest operand once all are aligned to their largest frac bits."""
    f = max(x.frac_bits for x in fmts)
    return max(x.width + f - x.frac_bits for x in fmts)


def exact_result(op: str, fmts: list[Fixed], attrs: dict, buffers: dict[str, Buffer]) -> tuple[int, int] | None:
    """(bits, frac bits) of the exact result of an elementwise op (a reduction: of one term), or ``None``
    where an intermediate could leave ``EXACT_BITS``."""
    fr = [f.frac_bits for f in fmts]
    if op in ("copy", "neg", "relu", "abs", "sum", "max", "argmax"):
        return fmts[0].width + 1, fr[0]
    if op in ("add", "sub"):
        bits = aligned_bits(fmts) + 1
        return (bits, max(fr)) if bits <= EXACT_BITS else None
    if op in COMPARISONS:
        return (2, 0) if aligned_bits(fmts) <= EXACT_BITS else None
    if op == "select":
        bits = aligned_bits(fmts[1:])
        return (bits, max(fr[1:])) if bits <= EXACT_BITS else None
    if is_compare_select(op):  # a fused comparison and select: all four operands aligned
        bits = aligned_bits(fmts)
        return (bits, max(fr)) if bits <= EXACT_BITS else None
    if op in ("mul", "mac"):
        bits = fmts[0].width + fmts[1].width
        return (bits, fr[0] + fr[1]) if bits <= EXACT_BITS else None
    if op == "msub":
        mid = Fixed.parse(attrs["mid"])
        if fmts[1].width + fmts[2].width > EXACT_BITS or aligned_bits([fmts[0], mid]) + 1 > EXACT_BITS:
            return None
        return aligned_bits([fmts[0], mid]) + 1, max(fr[0], mid.frac_bits)
    if op == "table":
        tbl = buffers[attrs["table"]].fmt
        return tbl.width + 2, tbl.frac_bits
    if op in NORMALIZED_ROOTS:
        q, root = int(attrs["q"]), NORMALIZED_ROOTS[op]
        return fmts[0].width + q + 2, fr[0] + q + 1 - (fr[1] + root - 1) // root
    raise ValueError(f"the fuzzer does not know op {op!r}: add it to exact_result")


# ----- accesses, loops, lanes ---------------------------------------------------------------------------

def union_axes(tensors: list[Tensor]) -> tuple[int, ...]:
    return tuple(sorted({a for t in tensors for a in t.axes}))


@st.composite
def reads(draw, tensors: list[Tensor], chain: Chain) -> tuple[Access, ...]:
    """Each tensor's read; a buffer read twice is read at one index (one memory port per bank in the RTL)."""
    made: dict[str, Access] = {}
    for t in tensors:
        if t.name not in made:
            made[t.name] = draw(read(t, chain))
    return tuple(made[t.name] for t in tensors)


@st.composite
def read(draw, t: Tensor, chain: Chain) -> Access:
    """``t`` read at the loop variables of its axes, each dim reversed (``e - 1 - v``) now and then."""
    index = []
    for a in t.axes:
        e = chain.extents[a]
        if e > 1 and draw(st.integers(0, 5)) == 0:
            index.append(Affine(((AXES[a], -1),), e - 1))
        else:
            index.append(Affine.var(AXES[a]))
    return Access(t.name, tuple(index))


def write(t: Tensor) -> Access:
    return Access(t.name, tuple(Affine.var(AXES[a]) for a in t.axes))


@st.composite
def loop_nest(draw, axes: tuple[int, ...], chain: Chain) -> tuple[Loop, ...]:
    """The loops over ``axes``, in their order or (now and then) permuted."""
    order = list(axes)
    if len(order) > 1 and draw(st.booleans()):
        order = draw(st.permutations(order))
    return tuple(Loop(AXES[a], chain.extents[a]) for a in order)


@st.composite
def lanes(draw, loops: tuple[Loop, ...], reduce: tuple[str, ...]) -> dict:
    """``lanes`` 1-4 on a loop that is not reduced (1 where there is none)."""
    free = [lp.var for lp in loops if lp.var not in reduce]
    n = draw(st.sampled_from((1, 1, 2, 3, 4)))
    if not free or n == 1:
        return {}
    return {"lanes": n, "lane_var": draw(st.sampled_from(free))}


# ----- stages -------------------------------------------------------------------------------------------

@st.composite
def operands(draw, chain: Chain, head: Tensor, n: int) -> list[Tensor]:
    """``n`` tensors of the chain, ``head`` (the last result) among them at a random place."""
    picked = [draw(st.sampled_from(chain.pool)) for _ in range(n)]
    picked[draw(st.integers(0, n - 1))] = head
    return picked


@st.composite
def op_attrs(draw, op: str, ins: list[Tensor], chain: Chain, name: str) -> dict:
    """The attrs an op reads: a table and its const entries, ``msub``'s mid format, a division's ROM."""
    if op == "table":
        fin = ins[0].fmt
        n = draw(st.integers(1, 8))
        tfmt = draw(formats(max_width=24))
        entries = tuple(draw(st.integers(tfmt.raw_min, tfmt.raw_max)) for _ in range(n + 1))
        tname = f"{name}_tbl"
        chain.buffers[tname] = Buffer(tname, (n + 1,), tfmt, "const", "const", init=entries)
        shift = draw(st.integers(0, 6))
        lo = draw(st.integers(fin.raw_min - (n << shift), fin.raw_max))
        return {"fn": "fuzz", "table": tname, "lo": lo, "shift": shift}
    if op == "msub":
        b, c = ins[1].fmt, ins[2].fmt
        mid = draw(formats(frac_max=assign_frac_max(b.width + c.width, b.frac_bits + c.frac_bits)))
        return {"mid": str(mid)}
    if op in NORMALIZED_ROOTS:
        q = draw(st.integers(MIN_ROM_FRAC, min(MAX_ROM_FRAC, EXACT_BITS - 2 - ins[0].fmt.width)))
        rom = f"rom_{op}_q{q}"
        if rom not in chain.buffers:
            entries = tuple(int(v) for v in norm_rom_values(NORMALIZED_ROOTS[op], q))
            chain.buffers[rom] = Buffer(rom, (len(entries),), Fixed(q + 2, q + 2, signed=False), "const", "const",
                                        init=entries)
        return {"rom": rom, "q": q}
    return {}


def output_role(last: bool, fmt_width: int, keep: bool) -> str:
    return "output" if last or (keep and fmt_width <= PORT_WIDTH) else "temp"


@st.composite
def elementwise_stage(draw, chain: Chain, head: Tensor, op: str, name: str, last: bool) -> Tensor:
    """An elementwise stage over the union of its operands' axes; ``copy`` where the op's exact result
    would leave int64."""
    ins = draw(operands(chain, head, OPS_TABLE[op].arity))
    attrs = draw(op_attrs(op, ins, chain, name))
    exact = exact_result(op, [t.fmt for t in ins], attrs, chain.buffers)
    if exact is None:
        op, ins, attrs = "copy", [head], {}
        exact = exact_result(op, [head.fmt], attrs, chain.buffers)
    axes = union_axes(ins)
    keep = draw(st.booleans())
    fmt = draw(formats(max_width=PORT_WIDTH if last or keep else MAX_WIDTH, frac_max=assign_frac_max(*exact),
                       roundings=FORMAT_ROUNDINGS))
    out = chain.add(name, axes, fmt, output_role(last, fmt.width, keep))
    loops = draw(loop_nest(axes, chain))
    accesses = draw(reads(ins, chain))
    chain.stages.append(Stage(name, op, loops, write(out), accesses, attrs=attrs, **draw(lanes(loops, ())),
                              origin=f"fuzz.{op}"))
    return out


@st.composite
def reduction_stage(draw, chain: Chain, head: Tensor, op: str, name: str, last: bool) -> Tensor | None:
    """A reduction over a non-empty subset of its loops, in loop order; ``None`` where there is no loop."""
    spec = OPS_TABLE[op]
    ins = draw(operands(chain, head, spec.arity))
    term = exact_result(op, [t.fmt for t in ins], {}, chain.buffers)
    if term is None:  # a product past int64: sum the head instead
        op, spec, ins = "sum", OPS_TABLE["sum"], [head]
        term = exact_result(op, [head.fmt], {}, chain.buffers)
    axes = union_axes(ins)
    if not axes:
        return None
    loops = draw(loop_nest(axes, chain))
    picked = draw(st.lists(st.sampled_from([lp.var for lp in loops]), min_size=1, unique=True))
    reduce = tuple(lp.var for lp in loops if lp.var in picked)
    out_axes = tuple(a for a in axes if AXES[a] not in reduce)
    tbits, tfrac = term
    acc_w = draw(st.integers(1, 48))
    frac_max = tfrac + EXACT_BITS - tbits
    init = None
    if spec.init_input and draw(st.booleans()):
        fits = [t for t in chain.pool if set(t.axes) <= set(out_axes)]
        init = draw(st.sampled_from(fits)) if fits and draw(st.booleans()) else chain.add(
            f"{name}_init", out_axes, draw(formats(max_width=PORT_WIDTH)), "input")
        frac_max = min(frac_max, assign_frac_max(init.fmt.width, init.fmt.frac_bits))
    acc = draw(formats(max_width=acc_w, frac_min=tfrac + acc_w - EXACT_BITS, frac_max=frac_max))
    keep = draw(st.booleans())
    res_bits, res_frac = (8, 0) if op == "argmax" else (acc.width, acc.frac_bits)
    fmt = draw(formats(max_width=PORT_WIDTH if last or keep else MAX_WIDTH,
                       frac_max=assign_frac_max(res_bits, res_frac),
                       roundings=ROUNDING_MODES if op == "argmax" else FORMAT_ROUNDINGS))  # argmax: a position
    out = chain.add(name, out_axes, fmt, output_role(last, fmt.width, keep))
    accesses = draw(reads(ins if init is None else [*ins, init], chain))
    chain.stages.append(Stage(name, op, loops, write(out), accesses, reduce=reduce, acc=acc,
                              **draw(lanes(loops, reduce)), origin=f"fuzz.{op}"))
    return out


@st.composite
def chains(draw) -> Chain:
    """One fuzz case: inputs over a random loop box, then 1-6 stages, each fed by the one before."""
    rank = draw(st.integers(0, 3))
    chain = Chain(tuple(draw(st.integers(1, 5)) for _ in range(rank)))
    head = chain.add("x0", tuple(range(rank)), draw(formats(max_width=PORT_WIDTH)), "input")
    for n in range(1, draw(st.integers(1, 3))):
        axes = tuple(a for a in range(rank) if draw(st.booleans()))
        chain.add(f"x{n}", axes, draw(formats(max_width=PORT_WIDTH)), "input")
    stages = draw(st.integers(1, 6))
    for s in range(stages):
        op, name, last = draw(st.sampled_from(OP_NAMES)), f"s{s}", s == stages - 1
        out = None
        if OPS_TABLE[op].reduction:
            out = draw(reduction_stage(chain, head, op, name, last))
            if out is None:  # nothing to reduce (a scalar chain): an elementwise op instead
                op = "neg"
        if out is None:
            out = draw(elementwise_stage(chain, head, op, name, last))
        head = out
    return chain


# ----- batches ------------------------------------------------------------------------------------------

def _renamed_access(a: Access, prefix: str, shared: set[str]) -> Access:
    return replace(a, buffer=a.buffer if a.buffer in shared else prefix + a.buffer)


def _renamed_stage(s: Stage, prefix: str, shared: set[str]) -> Stage:
    attrs = dict(s.attrs)
    if "table" in attrs:
        attrs["table"] = prefix + attrs["table"]
    return replace(s, name=prefix + s.name, out=_renamed_access(s.out, prefix, shared),
                   ins=tuple(_renamed_access(a, prefix, shared) for a in s.ins), attrs=attrs)


def chain_prefix(n: int) -> str:
    return f"c{n}_"


def batch_kernel(cases: list[Chain], name: str = "fuzz") -> Kernel:
    """The chains side by side in one kernel (program ``infer``), chain ``n``'s buffers and stages prefixed
    ``c{n}_``; the division ROMs (one per op and q) are shared."""
    buffers: dict[str, Buffer] = {}
    stages: list[Stage] = []
    for n, chain in enumerate(cases):
        prefix = chain_prefix(n)
        shared = {b for b in chain.buffers if b.startswith("rom_")}
        for b in chain.buffers.values():
            if b.name in shared:
                buffers.setdefault(b.name, b)
            else:
                buffers[prefix + b.name] = replace(b, name=prefix + b.name)
        stages += [_renamed_stage(s, prefix, shared) for s in chain.stages]
    inputs = [n for n, b in buffers.items() if b.role == "input"]
    outputs = [n for n, b in buffers.items() if b.role == "output"]
    return Kernel(name, buffers, {"infer": Program("infer", inputs, outputs, stages)}, params=[])


def chain_of(buffer: str) -> int:
    """The chain a batch kernel's buffer belongs to (``c3_s1`` -> 3)."""
    return int(buffer.split("_", 1)[0][1:])


def random_inputs(kernel: Kernel, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Raw values over each input's whole format, its extremes (min, max, 0, +-1) planted at random places."""
    out = {}
    for name in kernel.programs["infer"].inputs:
        buf = kernel.buffers[name]
        fmt = buf.fmt
        raw = rng.integers(fmt.raw_min, fmt.raw_max + 1, size=buf.size, dtype=np.int64)
        edges = np.array([v for v in (fmt.raw_min, fmt.raw_max, 0, 1, -1) if fmt.raw_min <= v <= fmt.raw_max])
        planted = rng.random(buf.size) < 0.3
        raw[planted] = rng.choice(edges, size=int(planted.sum()))
        out[name] = raw.reshape(buf.shape)
    return out


def op_counts(cases: list[Chain]) -> dict[str, int]:
    """How many stages of each op the chains hold."""
    counts = dict.fromkeys(OPS_TABLE, 0)
    for c in cases:
        for s in c.stages:
            counts[s.op] += 1
    return counts


def stage_count(cases: list[Chain]) -> int:
    return sum(len(c.stages) for c in cases)


__all__ = ["Chain", "batch_kernel", "chain_of", "chains", "formats", "op_counts", "random_inputs"]
