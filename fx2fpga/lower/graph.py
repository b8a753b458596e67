"""The lowering builder: one traced ATen graph -> one program of kernel IR stages.

The rules, one per ATen op and grouped by op family, live beside this module (``elementwise``,
``reductions``, ``shapes``, ``layers``); ``lower.RULES`` joins them and an op not in it raises.

Views (permute, reshape, expand, slice...) become index maps and cost nothing; nodes whose
inputs are all compile-time constants are folded with torch; every other node becomes one
``Stage`` writing a new buffer. Formats are not chosen here: ``Buffer.kind`` says what a
buffer holds (activation, gradient, weight, bool, integer, const) and ``passes.quantize``
turns kinds into ``Fixed`` formats.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.fx
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Access, Affine, Buffer, Kernel, Loop, Program, Stage

from ..errors import UnsupportedOpError
from ..handoffs import (
    ADAM_STATES,
    LOWERING_KEY,
    LoweringFacts,
    OutputRole,
    graph_info,
    node_info,
    placeholder,
    profile_of,
)
from . import views as V
from .views import NotAffine, View

aten = torch.ops.aten
PLACEHOLDER_FMT = Fixed(16, 6)  # replaced by passes.quantize
RANDOM_ANNOTATION = "fx2fpga_random"  # meta["custom"] of the dropout generator's ops (frontend/dropout.py)
RANDOM_STATE_PREFIX = "dropout:"  # the generator's state buffers, dropout:<module path>: kind "random"
OUT_VARS = ("i", "j", "l", "m", "n", "p")
RED_VARS = ("k", "r", "s", "t")
CPP_RESERVED = set(keyword.kwlist) | {"int", "float", "double", "char", "long", "short", "static", "const", "cmd",
                                      "in_words", "out_words", "acc", "main", "auto", "case", "switch", "default"}


@dataclass(frozen=True)
class Const:
    """A compile-time constant tensor."""

    value: torch.Tensor


Value = View | Const


# ----- source locations -------------------------------------------------------------------

_FRAME = re.compile(r'File "([^"]+)", line (\d+), in [^\n]*\n\s*([^\n]*)')
_LIBRARY_DIRS = (str(Path(torch.__file__).parent), str(Path(__file__).resolve().parents[1]))


def user_source(node: torch.fx.Node, with_code: bool = False) -> str:
    """``model.py:12`` (and the code line) of the user's frame that created ``node``."""
    for path, line, code in reversed(_FRAME.findall(node.meta.get("stack_trace") or "")):
        if not path.startswith(_LIBRARY_DIRS):
            loc = f"{Path(path).name}:{line}"
            return f"{loc}: {code.strip()}" if with_code else loc
    return ""


def op_name(node: torch.fx.Node) -> str:
    t = node.target
    return f"aten.{t.__name__}" if isinstance(t, torch._ops.OpOverload) else str(t)


# ----- the kernel being built --------------------------------------------------------------

class KernelBuilder:
    """Collects buffers and programs from one or more traced graphs."""

    def __init__(self, name: str):
        self.name = name
        self.buffers: dict[str, Buffer] = {}
        self.programs: dict[str, Program] = {}
        self.params: list[str] = []
        self.param_names: dict[str, str] = {}
        self.meta: dict = {"num_classes": {}}  # serialized in kernel.json (the runtime checks class indices)
        self.facts = LoweringFacts()  # for passes.quantize
        self._consts: dict[tuple, str] = {}

    def unique(self, base: str) -> str:
        name = re.sub(r"\W", "_", base)
        if not re.match(r"[A-Za-z_]", name) or name in CPP_RESERVED or name in OUT_VARS + RED_VARS:
            name = f"b_{name}"
        cand, k = name, 1
        while cand in self.buffers:
            cand, k = f"{name}_{k}", k + 1
        return cand

    def add(self, buf: Buffer) -> Buffer:
        assert buf.name not in self.buffers
        self.buffers[buf.name] = buf
        return buf

    def param(self, model_name: str, value: torch.Tensor, kind: str) -> str:
        """The buffer of a parameter (shared by every program)."""
        for b, n in self.param_names.items():
            if n == model_name:
                return b
        name = self.unique(model_name.replace(".", "_"))
        self.add(Buffer(name, tuple(value.shape), PLACEHOLDER_FMT, "param", kind, None, model_name))
        self.params.append(name)
        self.param_names[name] = model_name
        self.facts.param_init[name] = value.detach().double().reshape(-1).tolist()
        return name

    def const(self, value: torch.Tensor, hint: str) -> View:
        v = value.detach()
        key = (str(v.dtype), tuple(v.shape), tuple(v.reshape(-1).double().tolist()))
        if key not in self._consts:
            name = self.unique(f"k_{hint}")
            kind = "bool" if v.dtype == torch.bool else "const"
            buf = self.add(Buffer(name, tuple(v.shape), PLACEHOLDER_FMT, "const", kind, None, hint))
            self.facts.const_values[buf.name] = key[2]
            self._consts[key] = name
        return View.identity(self._consts[key], tuple(v.shape))

    def build(self) -> Kernel:
        return Kernel(self.name, self.buffers, self.programs, self.params, self.param_names,
                      {**self.meta, LOWERING_KEY: self.facts})


# ----- lowering one graph -------------------------------------------------------------------

class GraphLowering:
    """Lowers one traced graph into one program of the kernel."""

    def __init__(self, kb: KernelBuilder, gm: torch.fx.GraphModule, program: str, prefix: str, rules: dict):
        self.kb, self.gm, self.program, self.prefix = kb, gm, program, prefix
        self.rules = rules  # ATen op -> rule(lowering, node)
        self.values: dict[torch.fx.Node, Value] = {}
        self.stages: list[Stage] = []
        self.node: torch.fx.Node | None = None
        out_node = next(n for n in gm.graph.nodes if n.op == "output")
        self.outputs = list(out_node.args[0])
        self.output_roles: tuple[OutputRole, ...] = graph_info(gm).outputs
        self.forward = self._forward_nodes()

    def _forward_nodes(self) -> set:
        if self.program != "train_step":
            return set(self.gm.graph.nodes)
        seen, todo = set(), [self.outputs[0]]
        while todo:
            n = todo.pop()
            if isinstance(n, torch.fx.Node) and n not in seen:
                seen.add(n)
                todo.extend(n.all_input_nodes)
        return seen

    # --- helpers used by the rules ---
    def kind_of(self, node: torch.fx.Node) -> str:
        dtype = node.meta["val"].dtype
        if dtype == torch.bool:
            return "bool"
        if (node.meta.get("custom") or {}).get(RANDOM_ANNOTATION):  # the dropout generator's LCG step
            return "random"
        if not dtype.is_floating_point:
            return "integer"
        info = node_info(node)
        if info.moment or info.scale:  # Adam's moments and bias corrections, its step sizes
            return "moment" if info.moment else "scale"
        if info.statistic and node in self.forward:  # BatchNorm's statistics
            return "statistic"
        return "activation" if node in self.forward else "gradient"

    def value(self, arg) -> Value:
        if isinstance(arg, torch.fx.Node):
            return self.values[arg]
        if isinstance(arg, (int, float, bool)):
            return Const(torch.tensor(arg))
        raise self.unsupported(f"argument {arg!r} of type {type(arg).__name__}")

    def view(self, val: Value) -> View:
        if isinstance(val, Const):
            return self.kb.const(val.value, self.node.name if self.node is not None else "c")
        return val

    def shape(self, node=None) -> tuple[int, ...]:
        return tuple(int(s) for s in (node or self.node).meta["val"].shape)

    def temp(self, shape: tuple[int, ...], kind: str, suffix: str = "") -> View:
        name = self.kb.unique(f"{self.prefix}_{self.node.name}{suffix}")
        self.kb.add(Buffer(name, shape, PLACEHOLDER_FMT, "temp", kind, None, self.node.name))
        self.record_range(name, self.node)
        return View.identity(name, shape)

    def record_param_range(self, buffer: str, node) -> None:
        """Widen the profiled range of a persistent buffer to cover ``node``'s value too."""
        prof = profile_of(node)
        if prof is not None:
            self.kb.facts.widen(buffer, prof.absmax)

    def record_range(self, buffer: str, node) -> None:
        """The largest magnitude profiled for the node's value (``frontend.profile``)."""
        prof = profile_of(node)
        if prof is not None:
            self.kb.facts.absmax[buffer] = prof.absmax

    def unsupported(self, detail: str = "") -> UnsupportedOpError:
        return UnsupportedOpError(op_name(self.node), user_source(self.node, with_code=True),
                                  supported_op_names(self.rules), detail)

    def emit(self, op: str, out_shape, ins: list[Value], reduce_shape=(), reduce_index=None,
             out_kind: str | None = None, attrs: dict | None = None, suffix: str = "") -> View:
        """Add a stage over ``out_shape`` (x ``reduce_shape``) writing a new temp buffer.

        ``ins`` are broadcast to ``out_shape``; for reductions, ``reduce_index(view_index)``
        maps each input's dims to loop expressions instead.
        """
        out_shape = tuple(out_shape)
        out = self.temp(out_shape, out_kind or self.kind_of(self.node), suffix)
        ovars = [OUT_VARS[i] if i < len(OUT_VARS) else f"i{i}" for i in range(len(out_shape))]
        rvars = [RED_VARS[i] if i < len(RED_VARS) else f"k{i}" for i in range(len(reduce_shape))]
        loops = tuple(Loop(v, n) for v, n in zip(ovars, out_shape, strict=True))
        loops += tuple(Loop(v, n) for v, n in zip(rvars, reduce_shape, strict=True))
        extents = {lp.var: lp.extent for lp in loops}
        out_map = {V.dim_var(i): Affine.var(v) for i, v in enumerate(ovars)}
        accesses = []
        for k, val in enumerate(ins):
            v = self.view(val)
            if reduce_index is not None:
                mapping = reduce_index(k, v, ovars, rvars)
            else:
                v = V.broadcast_to(v, out_shape)
                mapping = out_map
            try:
                accesses.append(v.access(mapping, extents))
            except NotAffine:
                accesses.append(self.materialize(v).access(mapping, extents))
        stage = Stage(
            name=out.buffer, op=op, loops=loops, out=out.access(out_map, extents), ins=tuple(accesses),
            reduce=tuple(rvars), attrs=dict(attrs or {}), source=user_source(self.node),
            origin=f"{self.node.name} = {op_name(self.node)}",
        )
        self.stages.append(stage)
        return out

    def materialize(self, v: View) -> View:
        """Copy a view into a contiguous temp buffer."""
        return self.emit("copy", v.shape, [v], out_kind=self.kb.buffers[v.buffer].kind, suffix="_copy")

    # --- driver ---
    def run(self) -> Program:
        for node in self.gm.graph.nodes:
            self.node = node
            if node.op == "placeholder":
                self.values[node] = self.placeholder(node)
            elif node.op == "call_function" and not node.users:
                pass  # dead (an unused output of a decomposition, e.g. BatchNorm's reserve tensor)
            elif node.op == "call_function":
                self.values[node] = self.call(node)
            elif node.op == "output":
                pass
            else:
                raise self.unsupported(f"graph node kind {node.op}")
        inputs = [self.values[n].buffer for n in self.gm.graph.nodes
                  if n.op == "placeholder" and placeholder(n).role in ("input", "target")]
        outputs = self.bind_outputs()
        return Program(self.program, inputs, outputs, self.stages)

    def placeholder(self, node) -> Value:
        role, name, value = placeholder(node).role, placeholder(node).name, placeholder(node).value
        shape = self.shape(node)
        if role == "param":
            return View.identity(self.kb.param(name, value, "weight"), shape)
        if role == "buffer":  # persists on chip like a parameter (running stats: activation formats)
            kind = "random" if name.startswith(RANDOM_STATE_PREFIX) else (
                "activation" if value.dtype.is_floating_point else "integer")
            buf = self.kb.param(name, value, kind)
            self.record_param_range(buf, node)
            return View.identity(buf, shape)
        if role == "state":  # optimizer state (momentum:<param>): persists on chip, gradient formats (Adam's: wide)
            buf = self.kb.param(name, value, "moment" if name.startswith(ADAM_STATES) else "gradient")
            self.record_param_range(buf, node)
            return View.identity(buf, shape)
        if role == "hyper":  # the learning rate: a register the host writes, read by the update
            return View.identity(self.kb.param(name, value, "hyper"), shape)
        buf_name = self.kb.unique(f"{self.prefix}_{name}")
        kind = self.kind_of(node)
        self.kb.add(Buffer(buf_name, shape, PLACEHOLDER_FMT, role, kind, None, name))
        self.record_range(buf_name, node)
        classes = _class_count(node) if role == "target" and kind == "integer" else None
        if classes is not None:  # the runtime checks class indices against it
            self.kb.meta["num_classes"][buf_name] = classes
        return View.identity(buf_name, shape)

    def call(self, node) -> Value:
        args = [a for a in node.args if isinstance(a, torch.fx.Node)]
        rule = self.rules.get(node.target)
        if node.target in CONSTANT_OPS or (
            rule is not None and args and all(isinstance(self.values[a], Const) for a in args)
        ):
            return self.fold(node)
        if rule is None:
            raise self.unsupported()
        return rule(self, node)

    def fold(self, node) -> Const:
        def real(a):
            if isinstance(a, torch.fx.Node):
                return self.values[a].value
            if isinstance(a, (list, tuple)):
                return type(a)(real(x) for x in a)
            return a

        if node.target in SHAPE_ONLY_OPS:
            like = node.meta["val"]
            fill = {aten.zeros_like.default: 0, aten.ones_like.default: 1}.get(node.target)
            fill = node.args[1] if fill is None else fill
            return Const(torch.full(tuple(like.shape), fill, dtype=like.dtype))
        kwargs = {k: real(v) for k, v in node.kwargs.items()}
        result = node.target(*real(tuple(node.args)), **kwargs)
        if isinstance(result, (tuple, list)):  # several outputs (split): one Const each, read by getitem
            return tuple(Const(t) for t in result)
        return Const(result)

    def bind_outputs(self) -> list[str]:
        outputs = []
        for node, role in zip(self.outputs, self.output_roles, strict=True):
            val = self.values[node]
            self.node = node
            if role.kind == "param":
                self.update_param(val, self.kb.param(role.name, torch.zeros(0), "weight"))
                continue
            if role.kind == "buffer":
                buf = self.kb.param(role.name, torch.zeros(0), "activation")
                if not (isinstance(val, View) and val == View.identity(buf, self.kb.buffers[buf].shape)):
                    self.record_param_range(buf, node)
                    self.update_param(val, buf)  # a buffer the step does not change needs no stage
                continue
            if role.kind == "state":
                self.update_state(val, self.kb.param(role.name, torch.zeros(0), "gradient"))
                continue
            name = f"{self.prefix}_{role}"
            v = self.view(val)
            buf = self.kb.buffers[v.buffer]
            owned = buf.role == "temp" and v.is_identity() and sum(o is node for o in self.outputs) == 1
            if not owned:
                v = self.materialize(v)
                buf = self.kb.buffers[v.buffer]
            buf.role = "output"
            outputs.append(self.rename(buf.name, self.kb.unique(name)))
        return outputs

    def rename(self, old: str, new: str) -> str:
        buf = self.kb.buffers.pop(old)
        buf.name = new
        self.kb.buffers[new] = buf
        self.kb.facts.rename(old, new)  # the profiled range goes with the buffer
        for st in self.stages:
            if st.out.buffer == old:
                st.out = Access(new, st.out.index)
                st.name = new + st.name[len(old):] if st.name.startswith(old) else new  # keeps a cat's _part<k>
            st.ins = tuple(Access(new, a.index, a.guard) if a.buffer == old else a for a in st.ins)
        return new

    def update_param(self, val: Value, param: str) -> None:
        """Write the new value of a parameter back into its buffer (in place if possible)."""
        v = self.view(val)
        producer = next((s for s in reversed(self.stages) if s.out.buffer == v.buffer), None)
        pos = self.stages.index(producer) if producer is not None else -1
        read_later = any(param == a.buffer for s in self.stages[pos + 1:] for a in s.ins)
        other_use = any(v.buffer == a.buffer for s in self.stages for a in s.ins) or sum(
            isinstance(self.values.get(o), View) and self.values[o].buffer == v.buffer for o in self.outputs) > 1
        if (producer is not None and not producer.reduce and v.is_identity() and not read_later
                and not other_use and self.kb.buffers[v.buffer].role == "temp" and self.writers(v.buffer) == 1):
            del self.kb.buffers[v.buffer]
            producer.out = Access(param, producer.out.index)
            producer.name = f"{self.prefix}_update_{param}"
            return
        shape = self.kb.buffers[param].shape
        ovars = OUT_VARS[: len(shape)]
        loops = tuple(Loop(x, n) for x, n in zip(ovars, shape, strict=True))
        ext = {lp.var: lp.extent for lp in loops}
        mapping = {V.dim_var(i): Affine.var(x) for i, x in enumerate(ovars)}
        self.stages.append(Stage(f"{self.prefix}_update_{param}", "copy", loops,
                                 View.identity(param, shape).access(mapping, ext), (v.access(mapping, ext),),
                                 origin=f"update of {self.kb.param_names[param]}"))

    def writers(self, buffer: str) -> int:
        """How many stages write ``buffer`` (a cat's output: one per input)."""
        return sum(st.out.buffer == buffer for st in self.stages)

    def update_state(self, val: Value, param: str) -> None:
        """Write an optimizer state's new value (a momentum velocity) into its buffer.

        The velocity is also read after it is computed (``p -= lr * v``): the stage computing it
        writes the state buffer in place and those later readers read the buffer, so the value
        has the buffer's (wider) format and needs no copy. Else as ``update_param``.
        """
        v = self.view(val)
        producer = next((s for s in reversed(self.stages) if s.out.buffer == v.buffer), None)
        if (producer is None or producer.reduce or not v.is_identity() or self.kb.buffers[v.buffer].role != "temp"
                or self.writers(v.buffer) > 1
                or sum(isinstance(self.values.get(o), View) and self.values[o].buffer == v.buffer
                       for o in self.outputs) > 1):
            return self.update_param(val, param)
        pos = self.stages.index(producer)
        if any(a.buffer == param for s in self.stages[pos + 1:] for a in s.ins):  # the old value is read later
            return self.update_param(val, param)
        del self.kb.buffers[v.buffer]
        for st in self.stages[pos:]:
            st.ins = tuple(replace(a, buffer=param) if a.buffer == v.buffer else a for a in st.ins)
        producer.out = replace(producer.out, buffer=param)
        producer.name = f"{self.prefix}_update_{param}"


# ----- ops folded at compile time -------------------------------------------------------------

CONSTANT_OPS = {
    aten.arange.start_step, aten.arange.default, aten.arange.start, aten.full.default, aten.scalar_tensor.default,
    aten.zeros.default, aten.ones.default, aten.full_like.default, aten.zeros_like.default, aten.ones_like.default,
}
SHAPE_ONLY_OPS = {aten.full_like.default, aten.zeros_like.default, aten.ones_like.default}


def supported_op_names(rules: dict) -> list[str]:
    """Names of the ATen ops that ``rules`` lower, and of the ops folded at compile time."""
    return sorted({f"aten.{op.__name__}" for op in list(rules) + list(CONSTANT_OPS)
                   if isinstance(op, torch._ops.OpOverload)})


def _class_count(target_node) -> int | None:
    """C, when integer targets only feed the one-hot ``unsqueeze(y) == arange(C)`` of nll_loss."""
    for user in target_node.users:
        for u2 in user.users:
            if u2.target == aten.eq.Tensor:
                other = [a for a in u2.args if a is not user][0]
                return int(other.meta["val"].shape[-1])
    return None
