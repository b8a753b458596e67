"""Typed hand-offs between the compile steps (no strings or loose dicts between passes).

- The front end (``frontend.trace``) leaves on each traced graph a ``GraphInfo`` (the program
  it is and the role of each output) and on each fx node a ``NodeInfo`` (its placeholder role,
  name and value; its profiled ``ValueProfile``; whether it is a statistic), each under the one
  key ``"fx2fpga"`` of torch.fx's ``meta``.
- Lowering leaves on the kernel a ``LoweringFacts`` (profiled ranges, parameter and constant
  values by buffer) under ``kernel.meta[LOWERING_KEY]``; ``passes.quantize`` takes it off, so it
  never reaches ``kernel.json``.

This module imports nothing of the compiler: every step may read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    import torch.fx

META_KEY = "fx2fpga"  # node.meta / gm.meta key of NodeInfo / GraphInfo
LOWERING_KEY = "fx2fpga_lowering"  # kernel.meta key of LoweringFacts, until quantize takes it

ProgramKind = Literal["infer", "train_step"]
PlaceholderRole = Literal["param", "buffer", "state", "hyper", "input", "target"]  # hyper: the lr register
OutputKind = Literal["output", "loss", "param", "buffer", "state"]
PROGRAM_PREFIX = {"infer": "infer", "train_step": "train"}  # buffer-name prefix of each program
LR_REACH_BITS = 2  # the learning rate register holds up to 4-8x the compiled rate, and the update is profiled at 4x


# ----- front end -> lowering ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ValueProfile:
    """The range a node's value took on the example values (the widest over several runs)."""

    min: float = math.inf
    max: float = -math.inf
    absmax: float = 0.0

    def widened(self, low: float, high: float, absmax: float) -> ValueProfile:
        """This range widened to cover another run's ``low``, ``high`` and largest magnitude."""
        return ValueProfile(min(self.min, low), max(self.max, high), max(self.absmax, absmax))


@dataclass(frozen=True)
class Placeholder:
    """A graph input: its role, the model's dotted name (or the input's name) and, for
    parameters, buffers and optimizer states, its initial value."""

    role: PlaceholderRole
    name: str
    value: torch.Tensor | None = None


ADAM_STATES = ("exp_avg:", "sqrt_exp_avg_sq:", "adam:")  # Adam's on-chip state (adam:beta1_power...): "moment"


@dataclass
class NodeInfo:
    """What the front end knows about one fx node."""

    placeholder: Placeholder | None = None
    profile: ValueProfile | None = None  # None: not profiled (not a float tensor)
    statistic: bool = False  # BatchNorm's squares, variance, 1/std: formats fit to the profiled range
    moment: bool = False  # Adam's moments and bias corrections: wide formats fit to the profiled range
    scale: bool = False  # Adam's step sizes: the gradients' width, fit to the profiled range
    normalized: bool = False  # Adam's divisions and square roots: the IR's div / div_sqrt, not tables


@dataclass(frozen=True)
class OutputRole:
    """The role of one graph output: the model's output, the loss, or the new value of a
    parameter, buffer or optimizer state ``name``."""

    kind: OutputKind
    name: str = ""

    @property
    def persistent(self) -> bool:
        """Whether the output is written back into an on-chip parameter, buffer or state."""
        return self.kind in ("param", "buffer", "state")

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.persistent else self.kind


@dataclass(frozen=True)
class GraphInfo:
    """What the front end knows about one traced graph."""

    program: ProgramKind
    outputs: tuple[OutputRole, ...]
    lr: float | None = None  # the SGD step's learning rate (training graphs)

    @property
    def prefix(self) -> str:
        """The prefix of the buffers lowering makes for this program (``infer``, ``train``)."""
        return PROGRAM_PREFIX[self.program]


def node_info(node: Any) -> NodeInfo:
    """The ``NodeInfo`` of an fx node (an empty one for a node the front end left nothing on,
    or for a non-node argument such as a Python number)."""
    meta = getattr(node, "meta", None)
    info = meta.get(META_KEY) if isinstance(meta, dict) else None
    return info if info is not None else NodeInfo()


def set_node_info(node: torch.fx.Node, **changes) -> NodeInfo:
    """Set fields of the node's ``NodeInfo`` (created if missing); returns it."""
    info = node.meta.get(META_KEY)
    info = NodeInfo() if info is None else info
    node.meta[META_KEY] = replace(info, **changes)
    return node.meta[META_KEY]


def placeholder(node: torch.fx.Node) -> Placeholder:
    """The ``Placeholder`` of a traced graph's input node."""
    ph = node_info(node).placeholder
    if ph is None:
        raise KeyError(f"placeholder {node.name!r} has no fx2fpga role: trace the model with fx2fpga.trace")
    return ph


def profile_of(node: Any) -> ValueProfile | None:
    """The profiled range of an fx node's value, or None (not profiled, or not a node)."""
    return node_info(node).profile


def graph_info(gm: torch.fx.GraphModule) -> GraphInfo:
    """The ``GraphInfo`` of a traced graph."""
    info = gm.meta.get(META_KEY)
    if not isinstance(info, GraphInfo):
        raise KeyError("the graph carries no fx2fpga GraphInfo: trace the model with fx2fpga.trace")
    return info


# ----- lowering -> quantize ----------------------------------------------------------------------------

ALIASES_KEY = "aliases"  # kernel.meta: a buffer lower/cse.py dropped -> the buffer that holds its values
LR_SCALED_KEY = "lr_scaled"  # kernel.meta: buffer -> [the buffer it scales by the learning rate, sign, lr buffer]
# (lower/update_fold.py; passes/quant_report.py measures them)
DERIVED_KEY = "derived_ranges"  # kernel.meta: formats widened to (or kept short of) their derived range
# (passes/derived_ranges.py; the report lists them)
UNIFIED_KEY = "models_unified"  # kernel.meta: formats (and class counts) unified across the models of a kernel

@dataclass
class LoweringFacts:
    """Per buffer values lowering found and ``passes.quantize`` needs: the largest magnitude
    profiled (widens activation and gradient formats, fits statistics), the initial values of
    parameters and the values of constants (quantized into ``Buffer.init``)."""

    absmax: dict[str, float] = field(default_factory=dict)
    param_init: dict[str, list[float]] = field(default_factory=dict)
    const_values: dict[str, tuple[float, ...]] = field(default_factory=dict)
    per_model: list[LoweringFacts] = field(default_factory=list)  # a stacked kernel's: each model's own facts

    def widen(self, buffer: str, absmax: float) -> None:
        """Make ``buffer``'s range cover ``absmax`` too."""
        self.absmax[buffer] = max(self.absmax.get(buffer, 0.0), absmax)

    def rename(self, old: str, new: str) -> None:
        """The profiled range goes with a renamed buffer."""
        if old in self.absmax:
            self.absmax[new] = self.absmax.pop(old)


def lowering_facts(kernel: Any, pop: bool = False) -> LoweringFacts:
    """The kernel's ``LoweringFacts`` (taken off ``kernel.meta`` with ``pop``); empty if none."""
    facts = kernel.meta.pop(LOWERING_KEY, None) if pop else kernel.meta.get(LOWERING_KEY)
    return facts if facts is not None else LoweringFacts()
