"""The quantization report: what each buffer's format does to its tensor's values on the example data.

The traced graphs run once in float on the example data (the values PyTorch computes: parameters,
buffers and optimizer states at their initial values, the example inputs and targets). Every float
tensor the kernel holds in a buffer of its own (parameters, inputs, the outputs of graph nodes) is
compared with itself quantized to that buffer's format (``Fixed.quantize``, then ``to_float``):

- SQNR, ``10 log10(sum x**2 / sum (x - q(x))**2)`` in dB (``inf``: the format holds the values exactly);
- the share of the nonzero values that become 0 (the format's step is too coarse for them);
- the share of the values beyond the format's range (clipped under SAT, wrapped under WRAP).

Each format's own effect, not the error accumulated through the kernel (the emulator's values):
every tensor is quantized from its float value. ``run`` returns one ``TensorQuantization`` per
buffer, worst SQNR first (``Design.quantization``, the table in ``report.md``); ``warn`` raises one
``QuantizationWarning`` per compile naming the tensors a format zeroes or saturates.
"""

from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Kernel

from ..errors import QuantizationWarning
from ..handoffs import LR_SCALED_KEY, graph_info, placeholder

FLOAT_KINDS = ("weight", "activation", "gradient", "statistic", "scale", "moment", "hyper")
MOST_ZEROED = 0.5  # a format that zeroes more than this share of a tensor's nonzero values draws the warning
TOO_SATURATED = 0.01  # ... or that puts more than this share of its values beyond its range
WARNING_TENSORS = 10  # tensors named in the warning (the rest counted)
REPORT_ROWS = 25  # rows of the report.md table (the rest counted)
aten = torch.ops.aten
# the buffer of each output of an op with several, after the op's own name (lower/layers.py names them)
OUTPUT_SUFFIXES = {aten.convolution_backward.default: ("_dx", "_dw", "_db"),
                   aten.max_pool2d_with_indices.default: ("",)}


@dataclass(frozen=True)
class TensorQuantization:
    """One buffer's tensor on the example data against its format."""

    buffer: str  # the kernel buffer (its name before memory sharing)
    tensor: str  # the fx node, or the parameter's, state's or input's name
    fmt: Fixed
    count: int  # values measured (finite ones; a stacked kernel's: every model's)
    sqnr_db: float  # math.inf: held exactly
    zeroed: float  # share of the nonzero values that quantize to 0 (0.0 when all are 0)
    saturated: float  # share of the values beyond [fmt.min_value, fmt.max_value]
    nonzero: int = 0  # nonzero values among ``count``
    role: str = "temp"  # the buffer's role: param (weights, states, the learning rate), input, temp, output
    residue: int = 0  # nonzero float32 values that are rounding residue (``residue``), counted as 0

    def problem(self) -> str | None:
        """Why the format loses this tensor (zeroes all or most of it, or saturates it), or None."""
        if self.nonzero and self.zeroed == 1.0:
            return f"zeroes all {self.nonzero:,} nonzero values" if self.nonzero > 1 else "zeroes its nonzero value"
        if self.zeroed > MOST_ZEROED:
            return f"zeroes {self.zeroed:.0%} of {self.nonzero:,} nonzero values"
        if self.saturated > TOO_SATURATED:
            return f"saturates {self.saturated:.1%} of {self.count:,} values"
        return None

    def as_dict(self) -> dict:
        """JSON-ready: the format as its string, SQNR ``inf`` as None."""
        return {"buffer": self.buffer, "tensor": self.tensor, "format": str(self.fmt), "count": self.count,
                "sqnr_db": None if math.isinf(self.sqnr_db) else self.sqnr_db, "zeroed": self.zeroed,
                "saturated": self.saturated, "nonzero": self.nonzero, "residue": self.residue}


@dataclass
class _Sums:
    """Running sums over the values of one buffer (several models' on a stacked kernel)."""

    count: int = 0
    signal: float = 0.0  # sum x**2
    noise: float = 0.0  # sum (x - q(x))**2
    nonzero: int = 0
    zeroed: int = 0
    saturated: int = 0
    residue: int = 0

    def add(self, values, fmt: Fixed, exact=None) -> None:
        """Add ``values``; with ``exact`` (the same values computed in float64), the values that are
        rounding residue (see ``residue``) count as the 0 they are."""
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        finite = np.isfinite(x)
        x = x[finite]
        if exact is not None:
            noise = residue(x, np.asarray(exact, dtype=np.float64).reshape(-1)[finite])
            x = np.where(noise, 0.0, x)
            self.residue += int(np.count_nonzero(noise))
        q = fmt.to_float(fmt.quantize(x))
        self.count += x.size
        self.signal += float(np.dot(x, x))
        self.noise += float(np.dot(x - q, x - q))
        self.nonzero += int(np.count_nonzero(x))
        self.zeroed += int(np.count_nonzero((x != 0) & (q == 0)))
        self.saturated += int(np.count_nonzero((x > fmt.max_value) | (x < fmt.min_value)))

    def result(self, buffer: str, tensor: str, fmt: Fixed, role: str = "temp") -> TensorQuantization:
        sqnr = math.inf if self.noise == 0 else (
            -math.inf if self.signal == 0 else 10 * math.log10(self.signal / self.noise))
        zeroed = self.zeroed / self.nonzero if self.nonzero else 0.0
        saturated = self.saturated / self.count if self.count else 0.0
        return TensorQuantization(buffer, tensor, fmt, self.count, sqnr, zeroed, saturated, self.nonzero, role,
                                  self.residue)


def residue(values: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Where a nonzero float32 value is rounding residue: float64 gives a value off by more than half of it
    (BatchNorm's input bias gradient is 0 exactly and about 1e-8 in float32): 0 in truth, so a format
    that zeroes it loses nothing."""
    return (values != 0) & (np.abs(values - exact) > np.abs(values) / 2)


def measure(values, fmt: Fixed, buffer: str = "", tensor: str = "", exact=None) -> TensorQuantization:
    """SQNR, zeroed and saturated shares of ``values`` (float) quantized to ``fmt`` (``exact``: ``_Sums.add``)."""
    sums = _Sums()
    sums.add(values, fmt, exact)
    return sums.result(buffer, tensor, fmt)


@dataclass
class _Tensor:
    """One tensor of a traced graph that a buffer holds, with its float value."""

    buffer: str
    gm: torch.fx.GraphModule
    node: str
    value: np.ndarray
    scale: float = 1.0  # a buffer the compiler derives (lower/update_fold.py): ``scale`` times the node's value


def run(graphs: list, kernel: Kernel, example: dict) -> list[TensorQuantization]:
    """Every float buffer's tensor on the example data, worst SQNR first. ``graphs``: the traced
    graphs of one model, or (a kernel of several models) one list per model, in model order.

    A tensor that its format would mostly zero is measured again against the graph in float64, so
    that float32's rounding residue (values that are 0 exactly) counts as 0, not as values zeroed."""
    tensors = _tensors(graphs, kernel, example)
    rows = _rows(tensors, kernel, exact=None)
    suspects = {r.buffer for r in rows if r.zeroed > MOST_ZEROED}
    if suspects:
        exact = _float64_values([t for t in tensors if t.buffer in suspects], example)
        again = _rows([t for t in tensors if t.buffer in suspects], kernel, exact)
        rows = [r for r in rows if r.buffer not in suspects] + again
    return sorted(rows, key=lambda r: (r.sqnr_db, r.buffer))


def _tensors(graphs: list, kernel: Kernel, example: dict) -> list[_Tensor]:
    """Each buffer's tensors with their float values (a stacked buffer: one per model; a parameter once)."""
    models = kernel.meta.get("models")
    per_model = graphs if models else [graphs]
    prefixes = [m["prefix"] for m in models] if models else [""]
    out, seen = [], set()  # (model or None for shared inputs, buffer): a parameter is in both programs
    for i, (model_graphs, prefix) in enumerate(zip(per_model, prefixes, strict=True)):
        for gm in model_graphs:
            where = tensor_buffers(gm, kernel, prefix)
            for node, value in _float_values(gm, graph_inputs(gm, example), set(where)).items():
                key = (None if kernel.buffers[where[node]].role in ("input", "target") else i, where[node])
                if key not in seen:
                    seen.add(key)
                    out.append(_Tensor(where[node], gm, node, value))
    return out + _lr_scaled(out, kernel)


def _lr_scaled(tensors: list[_Tensor], kernel: Kernel) -> list[_Tensor]:
    """The folded SGD update's operands scaled by the learning rate (``LR_SCALED_KEY``): their tensors, from
    the tensor each scales and the model's learning rate."""
    out = []
    for buffer, (source, sign, _) in kernel.meta.get(LR_SCALED_KEY, {}).items():
        for t in tensors:
            if t.buffer == source and buffer in kernel.buffers:
                lr = next(float(placeholder(n).value) for n in t.gm.graph.nodes
                          if n.op == "placeholder" and placeholder(n).role == "hyper")
                out.append(_Tensor(buffer, t.gm, t.node, sign * lr * t.value, sign * lr))
    return out


def _rows(tensors: list[_Tensor], kernel: Kernel, exact: dict | None) -> list[TensorQuantization]:
    """One row per buffer over its tensors (``exact``: float64 values by (graph id, node))."""
    sums: dict[str, _Sums] = {}
    names: dict[str, str] = {}
    for t in tensors:
        fmt = kernel.buffers[t.buffer].fmt
        sums.setdefault(t.buffer, _Sums()).add(t.value, fmt, None if exact is None else
                                               t.scale * exact[id(t.gm), t.node])
        name = _tensor_name(t.gm, t.node)
        names.setdefault(t.buffer, name if t.scale == 1.0 else f"{'-' if t.scale < 0 else ''}lr * {name}")
    return [s.result(b, names[b], kernel.buffers[b].fmt, kernel.buffers[b].role) for b, s in sums.items()]


def _float64_values(tensors: list[_Tensor], example: dict) -> dict[tuple[int, str], np.ndarray]:
    """The tensors' values with the graph run in float64 (its float inputs cast), by (graph id, node)."""
    by_graph: dict[int, tuple] = {}
    for t in tensors:
        by_graph.setdefault(id(t.gm), (t.gm, set()))[1].add(t.node)
    out = {}
    for key, (gm, nodes) in by_graph.items():
        args = [a.double() if a.is_floating_point() else a for a in graph_inputs(gm, example)]
        out.update({(key, n): v for n, v in _float_values(gm, args, nodes).items()})
    return out


def tensor_buffers(gm: torch.fx.GraphModule, kernel: Kernel, model_prefix: str = "") -> dict[str, str]:
    """Graph node name -> the float buffer holding that node's value in full (same number of values, or
    one model's share of a stacked buffer): parameters, buffers and states by the model's name, inputs by
    their name among the program's inputs, other nodes by ``Buffer.source`` (``<program>_<node>``, or the
    program's output). Nodes lowered to views, or to a buffer holding something else, have none."""
    info = graph_info(gm)
    program = kernel.programs[info.program]
    params = {model_name: b for b, model_name in kernel.param_names.items() if b.startswith(model_prefix)}
    inputs = {kernel.buffers[b].source: b for b in program.inputs}
    temp_prefix = f"{model_prefix}{info.prefix}_"
    by_source: dict[str, list[str]] = {}
    for b in kernel.buffers.values():
        if b.role in ("temp", "output") and b.name.startswith(temp_prefix) and b.source:
            by_source.setdefault(b.source, []).append(b.name)
    out = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            ph = placeholder(node)
            buffer = inputs.get(ph.name) if ph.role in ("input", "target") else params.get(ph.name)
        elif node.op == "call_function" and node.target is operator.getitem:
            buffer = _item_buffer(kernel, node, temp_prefix)
        elif node.op == "call_function":
            buffer = _node_buffer(kernel, node.name, by_source.get(node.name, []), temp_prefix)
        else:
            continue
        if buffer is not None and _holds(kernel, buffer, node):
            out[node.name] = buffer
    return out


def _node_buffer(kernel: Kernel, node: str, candidates: list[str], temp_prefix: str) -> str | None:
    """The buffer named after the node, else the program's output it was bound to (renamed)."""
    if f"{temp_prefix}{node}" in candidates:
        return f"{temp_prefix}{node}"
    outputs = [b for b in candidates if kernel.buffers[b].role == "output"]
    return outputs[0] if len(outputs) == 1 else None


def _item_buffer(kernel: Kernel, node: torch.fx.Node, temp_prefix: str) -> str | None:
    """The buffer of ``getitem(op, i)``: the op's name with the suffix of its output ``i``."""
    op, i = node.args
    suffixes = OUTPUT_SUFFIXES.get(getattr(op, "target", None), ())
    name = f"{temp_prefix}{op.name}{suffixes[i]}" if i < len(suffixes) else None
    return name if name in kernel.buffers else None


def _holds(kernel: Kernel, buffer: str, node: torch.fx.Node) -> bool:
    """Whether ``buffer`` is a float buffer with as many values as the node (or a multiple: a model axis)."""
    b = kernel.buffers[buffer]
    val = node.meta.get("val")
    if b.kind not in FLOAT_KINDS or not isinstance(val, torch.Tensor) or not val.dtype.is_floating_point:
        return False
    n = max(val.numel(), 1)
    return b.size % n == 0 and b.size // n in (1, len(kernel.meta.get("models") or [None]))


def _tensor_name(gm: torch.fx.GraphModule, node_name: str) -> str:
    """A placeholder's model name (``fc1.weight``, ``x``), else the fx node's name (``convolution_backward[1]``)."""
    node = next(n for n in gm.graph.nodes if n.name == node_name)
    if node.op == "placeholder":
        return placeholder(node).name
    return f"{node.args[0].name}[{node.args[1]}]" if node.target is operator.getitem else node_name


class _Recorder(torch.fx.Interpreter):
    """Runs the graph, keeping the values of the nodes in ``wanted``."""

    def __init__(self, gm: torch.fx.GraphModule, wanted: set[str]):
        super().__init__(gm)
        self.wanted, self.values = wanted, {}

    def run_node(self, n):
        result = super().run_node(n)
        if n.name in self.wanted and isinstance(result, torch.Tensor):
            self.values[n.name] = result.detach().double().numpy()
        return result


def _float_values(gm: torch.fx.GraphModule, args: list, wanted: set[str]) -> dict[str, np.ndarray]:
    """The values of the ``wanted`` nodes with the graph run on ``args``."""
    recorder = _Recorder(gm, wanted)
    with torch.no_grad():
        recorder.run(*args)
    return recorder.values


def graph_inputs(gm: torch.fx.GraphModule, example: dict) -> list[torch.Tensor]:
    """The placeholders' values: parameters, buffers, states and the learning rate as traced, then the
    example inputs (``example["inputs"]``) and targets (``example["y"]``) in the traced dtypes."""
    inputs = iter(example.get("inputs", []))
    out = []
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        ph = placeholder(node)
        if ph.role in ("input", "target"):
            value = next(inputs) if ph.role == "input" else example["y"]
            out.append(torch.as_tensor(np.asarray(value)).to(node.meta["val"].dtype))
        else:
            out.append(ph.value)
    return out


def problems(report: list[TensorQuantization]) -> list[TensorQuantization]:
    """The tensors a format loses (``TensorQuantization.problem``): parameters and inputs first."""
    lost = [r for r in report if r.problem() is not None]
    return sorted(lost, key=lambda r: (r.role not in ("param", "input"), r.sqnr_db, r.buffer))


def warn(report: list[TensorQuantization], stacklevel: int = 2) -> None:
    """One ``QuantizationWarning`` naming the tensors a format zeroes (all or most) or saturates; none if none."""
    lost = problems(report)
    if not lost:
        return
    named = "; ".join(f"{r.buffer} ({r.tensor}, {r.fmt}) {r.problem()}" for r in lost[:WARNING_TENSORS])
    more = f"; and {len(lost) - WARNING_TENSORS} more" if len(lost) > WARNING_TENSORS else ""
    warnings.warn(f"on the example data, the formats lose {len(lost)} tensor{'s' if len(lost) > 1 else ''}: "
                  f"{named}{more}. Give them more fraction bits or integer bits (precision=...); "
                  f"design.quantization and report.md give every tensor's SQNR.", QuantizationWarning,
                  stacklevel=stacklevel + 1)


def report_lines(report: list[TensorQuantization]) -> list[str]:
    """The ``report.md`` section: a table, worst SQNR first, at most ``REPORT_ROWS`` rows."""
    if not report:
        return []
    out = ["## Quantization on the example data", "",
           "Each tensor's float value on the example data against itself quantized to its buffer's format: "
           "SQNR in dB (exact: no error), the share of its nonzero values that become 0, the share beyond the "
           "format's range. Worst first; `design.quantization` has every tensor.", "",
           "| tensor | buffer | format | values | SQNR dB | zeroed | saturated | |",
           "|---|---|---|---|---|---|---|---|"]
    for r in report[:REPORT_ROWS]:
        out.append(f"| `{r.tensor}` | `{r.buffer}` | {r.fmt} | {r.count:,} | {_sqnr(r.sqnr_db)} | {_share(r.zeroed)} | "
                   f"{_share(r.saturated)} | {_remark(r)} |")
    if len(report) > REPORT_ROWS:
        out += ["", f"{len(report) - REPORT_ROWS} more tensors, each at {_sqnr(report[REPORT_ROWS].sqnr_db)} dB or "
                "better."]
    return out + [""]


def _remark(r: TensorQuantization) -> str:
    """The last column: what the warning says of the tensor, or its float32 residue."""
    if r.problem():
        return f"**{r.problem()}**"
    return f"{r.residue:,} values are float32 residue, 0 in float64" if r.residue else ""


def _sqnr(db: float) -> str:
    return "exact" if db == math.inf else f"{db:.1f}"


def _share(x: float) -> str:
    return "0" if x == 0 else ("100%" if x == 1 else f"{100 * x:.2g}%")
