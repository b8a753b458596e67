"""First-order error bounds of a compiled kernel against float, derived from its formats.

Every stage of the kernel assigns its exact result to its output format, so the value it
stores is off by at most half an ulp of that format; a function table by its largest error
near the values it meets (measured on the table itself). Inputs and parameters are
quantized the same way. To first order, an output ``Q_i`` of the traced graph then differs
from its float value by at most::

    sum over graph nodes t and their elements j:  |dQ_i / dt_j| * e_t

with ``e_t`` the half ulps (plus table error) of the buffers node ``t`` is stored in. The
derivatives come from autograd over the same graph run in float64 with a zero perturbation
added to every node. Discrete decisions (ReLU masks, max-pool argmax) are taken as equal.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx
from fx2fpga_runtime.emulator import _table
from fx2fpga_runtime.ir import Kernel

from fx2fpga.handoffs import graph_info, placeholder
from fx2fpga.passes.quantize import FUNCTIONS


def _table_error(kernel: Kernel, stage, inputs: torch.Tensor) -> float:
    """Largest |table - f| over the raw inputs within 25% (+8 ulps) of the float inputs met."""
    fin = kernel.buffers[stage.ins[0].buffer].fmt
    n = kernel.buffers[stage.attrs["table"]].size - 1
    t_lo, t_hi = int(stage.attrs["lo"]), int(stage.attrs["lo"]) + (n << int(stage.attrs["shift"]))
    v = inputs.detach().double().numpy()
    lo, hi = v.min() - 0.25 * abs(v.min()) - 8 * fin.ulp, v.max() + 0.25 * abs(v.max()) + 8 * fin.ulp
    raw = np.arange(max(t_lo, int(np.floor(lo / fin.ulp))), min(t_hi, int(np.ceil(hi / fin.ulp))) + 1)
    assert raw.size, f"{stage.name}: the inputs {v.min()}..{v.max()} lie outside the table"
    y, frac = _table(raw, stage, kernel)
    exact = FUNCTIONS[stage.attrs["fn"]](raw * fin.ulp)
    err = float(np.max(np.abs(np.ldexp(y.astype(np.float64), -frac) - exact)))
    assert np.isfinite(err), stage.name
    return err


def _node_errors(kernel: Kernel, gm: torch.fx.GraphModule, program: str, values: dict) -> dict[str, float]:
    """``e_t`` per node name: the half ulps of the float buffers it is stored in, plus table errors."""
    prefix = "infer_" if program == "infer" else "train_"
    by_model_name = {v: k for k, v in kernel.param_names.items()}
    stages = {s.out.buffer: s for s in kernel.programs[program].stages}
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    roles = dict(zip(out_node.args[0], graph_info(gm).outputs, strict=True))
    err: dict[str, float] = {}

    def half_ulp(name: str) -> float:
        b = kernel.buffers[name]
        return b.fmt.ulp / 2 if b.kind in ("activation", "gradient", "weight", "const") else 0.0

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            role, name = placeholder(node).role, placeholder(node).name
            if role in ("param", "buffer"):
                err[node.name] = half_ulp(by_model_name[name])
            elif role == "input":
                err[node.name] = sum(half_ulp(b.name) for b in kernel.buffers.values()
                                     if b.role == "input" and b.name.startswith(prefix))
            continue
        if node.op != "call_function":
            continue
        src = node.args[0].name if node.target is operator.getitem else node.name
        e = 0.0
        for b in kernel.buffers.values():
            if b.source == src and b.name.startswith(prefix) and b.role != "const":
                e += half_ulp(b.name)
                st = stages.get(b.name)
                if st is not None and st.op == "table":
                    e += _table_error(kernel, st, values[node.args[0].name])
        role = roles.get(node)
        if role is not None and role.kind in ("param", "buffer"):  # updated in place: in the parameter's format
            e += half_ulp(by_model_name[role.name])
        err[node.name] = e
    return err


class _Perturbed(torch.fx.Interpreter):
    """Runs the graph in float64, adding ``eps[node]`` to each float node's value; the values
    of the nodes in ``decisions`` (bool masks, argmax indices) are replaced by the given ones."""

    def __init__(self, gm, eps: dict, decisions: dict):
        super().__init__(gm)
        self.eps, self.decisions = eps, decisions
        self.live: dict[str, torch.Tensor] = {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.decisions:
            return self.decisions[n.name].to(out.dtype).reshape(out.shape)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            out = out.double()
            if n.name in self.eps:
                out = out + self.eps[n.name]
            self.live[n.name] = out
        return out


class GraphBounds:
    """The graph in float64 (with the kernel's discrete decisions, if given) and first-order
    error bounds of any of its values: ``bound(tensor)`` per element."""

    def __init__(self, kernel: Kernel, gm: torch.fx.GraphModule, args: list, decisions: dict | None = None):
        self.gm = gm
        args = [a.detach().double() if a.is_floating_point() else a for a in args]
        with torch.no_grad():
            probe = _Perturbed(gm, {}, decisions or {})
            probe.run(*args)
        err = _node_errors(kernel, gm, graph_info(gm).program, probe.live)
        self.eps = {n: torch.zeros_like(probe.live[n], requires_grad=True)
                    for n, e in err.items() if e > 0 and n in probe.live}
        self.weights = [err[n] for n in self.eps]
        run = _Perturbed(gm, self.eps, decisions or {})
        self.outputs = run.run(*args)
        self.values = run.live

    def bound(self, t: torch.Tensor, index=None) -> np.ndarray:
        """Error bound of each element of ``t`` (or of the flat ``index`` elements)."""
        flat = t.reshape(-1)
        idx = list(range(flat.numel()) if index is None else index)
        seeds = torch.zeros(len(idx), flat.numel(), dtype=flat.dtype)
        seeds[torch.arange(len(idx)), torch.as_tensor(idx, dtype=torch.long)] = 1.0
        try:  # one batched backward pass for all rows of the Jacobian
            grads = torch.autograd.grad(flat, list(self.eps.values()), seeds, retain_graph=True, allow_unused=True,
                                        is_grads_batched=True)
            rows = [w * g.abs().reshape(len(idx), -1).sum(1) for w, g in zip(self.weights, grads, strict=True)
                    if g is not None]
            out = torch.stack(rows).sum(0).numpy() if rows else np.zeros(len(idx))
        except RuntimeError:  # an op without a batching rule: one row at a time
            out = []
            for i in idx:
                g1 = torch.autograd.grad(flat[i], list(self.eps.values()), retain_graph=True, allow_unused=True)
                out.append(sum(w * float(g.abs().sum())
                               for w, g in zip(self.weights, g1, strict=True) if g is not None))
            out = np.asarray(out)
        return out if index is not None else out.reshape(t.shape)


def emulator_decisions(kernel: Kernel, gm: torch.fx.GraphModule, mem: dict) -> dict[str, torch.Tensor]:
    """The bool values (ReLU masks, comparisons) the emulator computed, by graph node name."""
    prefix = graph_info(gm).prefix + "_"
    out = {}
    for b in kernel.buffers.values():
        if b.kind == "bool" and b.name.startswith(prefix) and b.source and b.role == "temp":
            out[b.source] = torch.from_numpy(mem[b.name].astype(bool))
    return out


def flipped_decisions(kernel: Kernel, gm: torch.fx.GraphModule, args: list, mem: dict) -> list[tuple]:
    """Each comparison the emulator decided otherwise than float: (node, element, |a - b|, bound of a - b).

    ``a - b`` is the compared difference in float; a flip is explained by the formats when it
    is within its first-order error bound."""
    decisions = emulator_decisions(kernel, gm, mem)
    plain = GraphBounds(kernel, gm, args)
    flips = []
    for node in gm.graph.nodes:
        if node.name not in decisions or node.op != "call_function":
            continue
        a, b = node.args[0], node.args[1]
        va = plain.values.get(a.name) if isinstance(a, torch.fx.Node) else None
        if va is None:
            continue
        vb = plain.values[b.name] if isinstance(b, torch.fx.Node) and b.name in plain.values else torch.tensor(
            float(b) if not isinstance(b, torch.fx.Node) else 0.0, dtype=torch.float64)
        diff = (va - vb).expand(node.meta["val"].shape)
        mine = getattr(torch, node.target._opname)(va.detach(), vb.detach())
        wrong = np.flatnonzero((mine != decisions[node.name].reshape(mine.shape)).reshape(-1).numpy())
        if wrong.size:
            bounds = plain.bound(diff, wrong)
            for j, bnd in zip(wrong, bounds, strict=True):
                flips.append((node.name, int(j), abs(float(diff.detach().reshape(-1)[j])), float(bnd)))
    return flips
