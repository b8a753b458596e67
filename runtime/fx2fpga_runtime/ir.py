"""The kernel IR: buffers with fixed-point formats and stages that are loop nests.

A ``Kernel`` holds named ``Buffer``s and ``Program``s (``infer``, ``train_step``). A program
is a list of ``Stage``s run in order. A stage is one loop nest::

    for v0 in range(e0): for v1 in range(e1): ...        # stage.loops, outermost first
        out[f(v)] = OP(ins[0][g0(v)], ins[1][g1(v)], ...)   # each index an Affine of loop vars

Semantics every backend must reproduce bit for bit (the emulator is the reference; each op is
declared once, with its exact evaluation, in ``ops.OPS_TABLE``):

Elementwise ops (``reduce == ()``): the exact result of the operation on the input values is
assigned to the output format (its rounding, then its overflow mode), like C++
``out = a + b`` on ``ap_fixed`` types.

- ``copy(a)``, ``neg(a)``, ``relu(a)`` (``a > 0 ? a : 0``), ``add(a, b)``, ``sub(a, b)``,
  ``mul(a, b)``, ``select(c, a, b)`` (``c != 0 ? a : b``)
- ``eq ne lt le gt ge (a, b)``: 1 or 0 in the BOOL format
- ``table(a)``: piecewise-linear function (``attrs``: ``fn``, ``table`` (a const buffer of
  n+1 raw entries at the output's frac bits), ``lo`` (raw input), ``shift``): with ``r`` the
  raw input clipped to ``[lo, lo + (n << shift)]``, ``i = min((r - lo) >> shift, n - 1)``,
  ``t = r - lo - (i << shift)``, result raw = ``T[i] + (((T[i+1] - T[i]) * t) >> shift)``
  (arithmetic shift), then the output's overflow mode.

Reduction ops (``reduce`` names loop vars): an accumulator of format ``stage.acc`` starts at
``init`` (``mac``/``sum``: the optional third/second input, else 0; ``max``: the acc
format's minimum) and takes the reduction points in lexicographic order of the reduce vars;
after each step the exact new value is assigned to ``acc`` (C++ ``acc += a * b``); at the
end ``acc`` is assigned to ``out``.

- ``mac(a, b[, init])``: ``acc += a * b``
- ``sum(a[, init])``: ``acc += a``
- ``max(a)``: ``acc = max(acc, a)``
- ``argmax(a)``: the position of the first maximum. ``acc`` starts at its format's minimum and
  a position counter ``idx`` at 0; at each point ``p`` (the row-major flat index over the
  reduce loops, in their order), ``if (acc(a) > acc) {acc = acc(a); idx = p;}``; at the end
  ``idx`` (an integer) is assigned to ``out``. Ties keep the earlier point, as PyTorch's
  max-pool indices do.

Saturation events (counted per output buffer by every backend: ``saturation.py``, docs/saturation.md):
one assignment to a stage's output (an elementwise stage: one per loop point, every point of the nest,
even where several write the same element; a reduction: its final ``out = acc``, one per point of the
kept loops; argmax: ``out = idx``) whose value, rounded to the output's fraction bits with its rounding
mode, lies outside the output format's range (SAT: it is clipped; WRAP: it wraps). Assignments inside an
op are not events: a reduction's ``acc`` after each step, msub's product assigned to ``mid``, an operand
cast to a function table's range.

Guarded reads (padding, strided transposed convolutions): an input ``Access`` may carry
``guard``, a tuple of ``Guard(expr, bound, step)`` over loop variables, each true when
``0 <= expr < bound and expr % step == 0`` (``expr`` an ``Affine`` without div/mod). Where
every guard holds the read is an ordinary one; where one fails the buffer is not read (its
index need not be in range) and the value read is 0, except in ``max``/``argmax``, where the
point is skipped (equivalently: it reads the accumulator format's minimum). Outputs and the
init input of a reduction are never guarded.

``stage.lanes`` copies of the datapath work on ``lanes`` consecutive values of the
non-reduced loop ``stage.lane_var`` at once; the results do not depend on it. A stage may run
lanes over a second non-reduced loop too (``outer_lanes`` over ``outer_lane_var``: a matmul's
batch rows and output columns at once, each weight read serving every row's lane), so it has
``outer_lanes * lanes`` lanes; lane ``(o, l)`` is lane ``o * lanes + l``.

A kernel of models stacked on a model axis (``fx2fpga/lower/model_axis.py``) gives every
per-model buffer a leading dim of size N and every stage an outermost loop ``MODEL_VAR`` over
the models; ``stage.model_lanes`` copies of the stage's lanes work on that many models at once
(each model's rows in banks of their own), so a stage has ``model_lanes * lanes`` lanes in all.

Model groups (``program.groups > 1``, ``fx2fpga/passes/model_groups.py``): the program runs its
stages ``groups`` times, for the groups of models one after another, with ``GROUP_VAR`` (an index
variable every access may use) bound to 0, 1, ... in turn; the stages' model loop then covers one
group, so temporaries hold one group's rows while parameters and outputs keep every model's
(indexed ``GROUP_VAR * group size + MODEL_VAR``).

Pipelined groups (``fx2fpga/passes/pipeline_groups.py``): a stage may lag (``stage.attrs["lag"]`` = 1): the
program then makes ``groups + 1`` passes over its stages (``Program.passes``), and in pass ``p`` a stage runs
for group ``p - lag`` (not at all where that is no group), so one pass runs the first stages of group ``p``
beside the last ones of group ``p - 1``. ``pass_stages`` lists (pass, stage, group) in the order they run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .fixed import Fixed
from .ops import OPS_TABLE

# Derived from the op table (ops.py), where each op is declared once.
ELEMENTWISE_OPS = tuple(name for name, spec in OPS_TABLE.items() if not spec.reduction)
REDUCTION_OPS = tuple(name for name, spec in OPS_TABLE.items() if spec.reduction)
OPS = ELEMENTWISE_OPS + REDUCTION_OPS
ARITY = {name: spec.arity for name, spec in OPS_TABLE.items()}
ROLES = ("param", "input", "target", "output", "temp", "const")
CHIP, DDR = "chip", "ddr"  # where a buffer lives (Buffer.place)
MODEL_VAR = "mdl"  # the loop over the models of a kernel stacked on a model axis
GROUP_VAR = "grp"  # the group of models a program's stages run for (Program.groups)
LR_PARAM = "lr"  # the learning rate register among a training kernel's parameters (KernelRunner.set_lr)


@dataclass(frozen=True)
class Affine:
    """``((sum(coeff * var) + const) // div) % mod`` over loop variables (mod 0: none)."""

    terms: tuple[tuple[str, int], ...] = ()
    const: int = 0
    div: int = 1
    mod: int = 0

    @classmethod
    def var(cls, name: str, coeff: int = 1) -> Affine:
        return cls(((name, coeff),))

    def vars(self) -> tuple[str, ...]:
        return tuple(v for v, _ in self.terms)

    def evaluate(self, grid: dict, shape: tuple[int, ...]):
        """Its values (int64) where each variable takes the values of ``grid[var]``, an integer array
        broadcastable to ``shape`` (the emulator's index arrays)."""
        v = np.full(shape, self.const, dtype=np.int64)
        for var, coeff in self.terms:
            v = v + coeff * grid[var]
        if self.div != 1:
            v = v // self.div
        if self.mod:
            v = v % self.mod
        return v

    def c_expr(self) -> str:
        """C expression, e.g. ``2*oh + kh - 1`` (also valid Python)."""
        s = ""
        for v, c in self.terms:
            term = v if abs(c) == 1 else f"{abs(c)}*{v}"
            s = (f"-{term}" if c < 0 else term) if not s else f"{s} {'-' if c < 0 else '+'} {term}"
        if self.const:
            s = f"{s} {'+' if self.const > 0 else '-'} {abs(self.const)}" if s else str(self.const)
        s = s or "0"
        if self.div != 1:
            s = f"({s}) / {self.div}"
        if self.mod:
            s = f"({s}) % {self.mod}"
        return s


@dataclass(frozen=True)
class Guard:
    """True where ``0 <= expr < bound and expr % step == 0`` (``expr`` has no div or mod)."""

    expr: Affine
    bound: int
    step: int = 1

    def c_expr(self) -> str:
        """C condition, e.g. ``(h + kh - 1 >= 0 && h + kh - 1 < 8)``; ``&&`` keeps ``%`` off negatives."""
        e = self.expr.c_expr()
        cond = f"{e} >= 0 && {e} < {self.bound}"
        if self.step != 1:
            cond += f" && ({e}) % {self.step} == 0"
        return f"({cond})"


@dataclass(frozen=True)
class Access:
    """``buffer[index[0]][index[1]]...``; a scalar buffer has an empty index.

    ``guard``: conditions under which the read happens; elsewhere it yields 0 (see the module
    docstring).
    """

    buffer: str
    index: tuple[Affine, ...]
    guard: tuple[Guard, ...] = ()

    def c_expr(self) -> str:
        return self.buffer + "".join(f"[{i.c_expr()}]" for i in self.index)

    def guard_expr(self) -> str:
        """The C condition of the guard (``""`` when unguarded)."""
        return " && ".join(g.c_expr() for g in self.guard)


@dataclass(frozen=True)
class Loop:
    var: str
    extent: int


@dataclass
class Buffer:
    """An array of the kernel. ``init`` holds the raw values of a ``const`` buffer, row-major. ``place`` says where
    it lives: ``CHIP`` (block RAM or registers) or ``DDR`` (the board's memory, through an AXI master port); the
    emulator computes the same either way (``fx2fpga/passes/placement.py`` chooses it)."""

    name: str
    shape: tuple[int, ...]
    fmt: Fixed
    role: str = "temp"
    kind: str = "activation"  # activation | weight | gradient | statistic | bool | integer | const
    init: tuple[int, ...] | None = None
    source: str = ""
    place: str = "chip"  # CHIP or DDR

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class Stage:
    """One loop nest: see the module docstring for what each ``op`` computes."""

    name: str
    op: str
    loops: tuple[Loop, ...]
    out: Access
    ins: tuple[Access, ...]
    reduce: tuple[str, ...] = ()
    acc: Fixed | None = None
    attrs: dict = field(default_factory=dict)
    lanes: int = 1
    lane_var: str | None = None
    source: str = ""  # the user's model line, "model.py:12"
    origin: str = ""  # the fx node (and ATen op) the stage came from
    model_lanes: int = 1  # lanes over the model loop MODEL_VAR (a kernel stacked on a model axis)
    outer_lanes: int = 1  # lanes over a second loop, outer_lane_var (lanes in two dims of one model)
    outer_lane_var: str | None = None

    def lane_loops(self) -> tuple[tuple[str, int], ...]:
        """``(loop variable, lanes)`` of each loop the stage's lanes run over, outermost first: the model
        loop (``model_lanes``), ``outer_lane_var``, then ``lane_var``; lane ``(m, o, l)`` is lane
        ``(m * outer_lanes + o) * lanes + l``."""
        out = []
        if self.model_lanes > 1:
            out.append((MODEL_VAR, self.model_lanes))
        if self.outer_lanes > 1 and self.outer_lane_var is not None:
            out.append((self.outer_lane_var, self.outer_lanes))
        if self.lanes > 1 and self.lane_var is not None:
            out.append((self.lane_var, self.lanes))
        return tuple(out)

    @property
    def total_lanes(self) -> int:
        """All the stage's lanes: ``model_lanes * outer_lanes * lanes``."""
        return max(1, self.model_lanes) * max(1, self.outer_lanes) * max(1, self.lanes)

    @property
    def iterations(self) -> int:
        n = 1
        for lp in self.loops:
            n *= lp.extent
        return n

    @property
    def reduction_points(self) -> int:
        """The points of each result's reduction: the extents of the reduced loops multiplied (1 without any)."""
        n = 1
        for lp in self.loops:
            if lp.var in self.reduce:
                n *= lp.extent
        return n


LAG = "lag"  # Stage.attrs key: the passes a stage lags behind (pipelined groups)


def stage_lag(stage: Stage) -> int:
    """The passes a stage lags behind the program's first stages (pipelined groups; 0 for most stages)."""
    return stage.attrs.get(LAG, 0)


@dataclass
class Program:
    """An entry point: host writes ``inputs``, the stages run, host reads ``outputs``."""

    name: str
    inputs: list[str]
    outputs: list[str]
    stages: list[Stage]
    groups: int = 1  # the stages run this many times, GROUP_VAR = 0, 1, ... (model groups)

    @property
    def passes(self) -> int:
        """Passes over the stages: one per group, and one more per pass the lagging stages trail by."""
        return self.groups + max((stage_lag(st) for st in self.stages), default=0)

    def pass_stages(self):
        """``(pass, stage, group)`` of every run of a stage, in the order they run (a lagging stage runs for
        group ``pass - lag``, and only where that is one of the groups)."""
        for p in range(self.passes):
            for st in self.stages:
                if 0 <= p - stage_lag(st) < self.groups:
                    yield p, st, p - stage_lag(st)


@dataclass
class Kernel:
    name: str
    buffers: dict[str, Buffer]
    programs: dict[str, Program]
    params: list[str]  # parameter buffers in load/read order (the model's parameter order)
    param_names: dict[str, str] = field(default_factory=dict)  # buffer -> model's dotted name
    meta: dict = field(default_factory=dict)  # e.g. {"num_classes": {"y": 10}}

    def buffer(self, name: str) -> Buffer:
        return self.buffers[name]

    def stages(self):
        for prog in self.programs.values():
            yield from prog.stages

    def io_buffers(self) -> set[str]:
        """The buffers some program takes in or gives out (the host reads or writes them)."""
        return {b for p in self.programs.values() for b in (*p.inputs, *p.outputs)}

    def ddr_buffers(self) -> list[str]:
        """The buffers placed in DDR (``Buffer.place``), in declaration order."""
        return [n for n, b in self.buffers.items() if b.place == DDR]

    def read_counts(self) -> dict[str, int]:
        """How many stage inputs, over every program, read each buffer (a buffer no stage reads is absent)."""
        reads: dict[str, int] = {}
        for st in self.stages():
            for a in st.ins:
                reads[a.buffer] = reads.get(a.buffer, 0) + 1
        return reads

    # ----- serialization (kernel.json inside a project folder) ---------------------------------
    def to_json(self) -> str:
        return json.dumps(_to_plain(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Kernel:
        d = json.loads(text)
        buffers = {k: _buffer_from(v) for k, v in d["buffers"].items()}
        programs = {k: _program_from(v) for k, v in d["programs"].items()}
        return cls(d["name"], buffers, programs, list(d["params"]), dict(d["param_names"]), dict(d["meta"]))


def _to_plain(k: Kernel) -> dict:
    d = asdict(k)
    for buf in d["buffers"].values():
        if buf["place"] == CHIP:
            del buf["place"]  # (a kernel wholly on chip: kernel.json unchanged)
    for prog in d["programs"].values():
        if prog["groups"] == 1:
            del prog["groups"]  # (a kernel without model groups: kernel.json unchanged)
        for st in prog["stages"]:
            if st["model_lanes"] == 1:
                del st["model_lanes"]  # one model at a time: the kernel.json of a one-model kernel is unchanged
            if st["outer_lanes"] == 1:
                del st["outer_lanes"], st["outer_lane_var"]  # lanes in one dim: kernel.json unchanged
    return d


def _fixed_from(d: dict | None) -> Fixed | None:
    return None if d is None else Fixed(**d)


def _affine_from(d: dict) -> Affine:
    return Affine(tuple((v, c) for v, c in d["terms"]), d["const"], d["div"], d["mod"])


def _access_from(d: dict) -> Access:
    guard = tuple(Guard(_affine_from(g["expr"]), g["bound"], g["step"]) for g in d.get("guard", ()))
    return Access(d["buffer"], tuple(_affine_from(i) for i in d["index"]), guard)


def _buffer_from(d: dict) -> Buffer:
    init = None if d["init"] is None else tuple(d["init"])
    return Buffer(d["name"], tuple(d["shape"]), _fixed_from(d["fmt"]), d["role"], d["kind"], init, d["source"],
                  d.get("place", CHIP))


def _stage_from(d: dict) -> Stage:
    return Stage(
        name=d["name"], op=d["op"], loops=tuple(Loop(**lp) for lp in d["loops"]),
        out=_access_from(d["out"]), ins=tuple(_access_from(a) for a in d["ins"]),
        reduce=tuple(d["reduce"]), acc=_fixed_from(d["acc"]), attrs=dict(d["attrs"]),
        lanes=d["lanes"], lane_var=d["lane_var"], source=d["source"], origin=d["origin"],
        model_lanes=d.get("model_lanes", 1), outer_lanes=d.get("outer_lanes", 1),
        outer_lane_var=d.get("outer_lane_var"),
    )


def _program_from(d: dict) -> Program:
    return Program(d["name"], list(d["inputs"]), list(d["outputs"]), [_stage_from(s) for s in d["stages"]],
                   d.get("groups", 1))


__all__ = [
    "Access", "Affine", "Buffer", "Fixed", "Guard", "Kernel", "Loop", "Program", "Stage",
    "GROUP_VAR", "MODEL_VAR", "LAG", "stage_lag", "OPS", "ELEMENTWISE_OPS", "REDUCTION_OPS", "ARITY", "ROLES",
    "replace",
    "CHIP", "DDR",
]
