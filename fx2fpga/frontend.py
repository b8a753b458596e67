"""Tracing: a model (or a plain function) -> a torch.fx graph of core ATen ops.

- Inference: ``torch.export.export(...).run_decompositions()``.
- Training: one pure SGD step ``(params..., buffers..., x, y) -> (loss, new params...,
  new buffers...)`` traced with ``make_fx(functionalize(step))`` and the core ATen
  decompositions, so the autograd backward graph and the update are ordinary graph nodes.

Every placeholder carries ``node.meta["fx2fpga_role"]`` (``param``, ``buffer``, ``input``,
``target``) and ``node.meta["fx2fpga_name"]`` (the model's dotted name, or the input's
name); the graph module carries ``gm.meta["fx2fpga_outputs"]``, the role of each output
(``output``, ``loss``, ``param:<name>``, ``buffer:<name>``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import nn

from .errors import TraceError, UnsupportedOpError

aten = torch.ops.aten


@dataclass
class SGD:
    """Train with plain SGD: ``p <- p - lr * dloss/dp`` after each step, on chip.

    ``loss(output, target) -> scalar tensor``; ``example_targets`` fixes the target shape
    and dtype (integer class indices for cross-entropy, floats for MSE).
    """

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    example_targets: Any
    lr: float = 0.1

    def __post_init__(self) -> None:
        if not callable(self.loss):
            raise TypeError("SGD(loss=...) must be a callable (output, target) -> scalar, e.g. F.cross_entropy")
        if not isinstance(self.example_targets, torch.Tensor):
            self.example_targets = torch.as_tensor(self.example_targets)
        if not float(self.lr) > 0:
            raise ValueError(f"SGD learning rate must be positive, got {self.lr}")


class _FunctionModule(nn.Module):
    """Wraps a plain function of tensors so torch.export can take it."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def as_module(model) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    if callable(model):
        return _FunctionModule(model)
    raise TypeError(f"expected an nn.Module or a function of tensors, got {type(model).__name__}")


def _as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


# ----- decompositions for the loss functions ------------------------------------------------
# PyTorch's own nll_loss decomposition handles ignore_index with data-dependent counts and a
# division by them. Targets on the fabric are always valid class indices (the runtime checks
# them), so nll is a one-hot select and the mean a multiply by the constant 1/N.

def _one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    return target.unsqueeze(1) == torch.arange(num_classes, device=target.device).unsqueeze(0)


def _nll_scale(reduction: int, n: int) -> float:
    if reduction == 1:  # mean
        return 1.0 / n
    if reduction == 2:  # sum
        return 1.0
    raise UnsupportedOpError("nll_loss(reduction='none')", "", ["reduction='mean'", "reduction='sum'"])


def _nll_loss_forward(self, target, weight, reduction, ignore_index):
    if weight is not None or self.dim() != 2:
        raise UnsupportedOpError("nll_loss", "", ["nll_loss / cross_entropy on (N, C) inputs without class weights"])
    n, c = self.shape
    picked = torch.where(_one_hot(target, c), self, 0.0).sum(dim=1)
    total = picked.sum() * (-_nll_scale(reduction, n))
    return total, torch.full((), float(n))


def _nll_loss_backward(grad_output, self, target, weight, reduction, ignore_index, total_weight):
    n, c = self.shape
    g = grad_output * (-_nll_scale(reduction, n))
    return torch.where(_one_hot(target, c), g, 0.0)


def decomposition_table() -> dict:
    from torch._decomp import core_aten_decompositions, get_decompositions

    table = dict(core_aten_decompositions())
    table.update(get_decompositions([aten._log_softmax, aten._softmax, aten.mse_loss, aten.mse_loss_backward]))
    table[aten.nll_loss_forward.default] = _nll_loss_forward
    table[aten.nll_loss_backward.default] = _nll_loss_backward
    return table


# ----- inference --------------------------------------------------------------------------

def trace_inference(model, example_inputs) -> torch.fx.GraphModule:
    """The inference graph of ``model`` on ``example_inputs`` (core ATen ops)."""
    module = as_module(model).eval()
    args = _as_tuple(example_inputs)
    try:
        with warnings.catch_warnings():  # torch's own deprecation noise, not the user's business
            warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
            ep = torch.export.export(module, args).run_decompositions(decomposition_table())
    except UnsupportedOpError:
        raise
    except Exception as e:  # torch raises many kinds; the user needs the gist
        raise TraceError(f"torch.export could not trace the model: {type(e).__name__}: {e}") from e
    gm = ep.graph_module
    sig = ep.graph_signature
    roles = {}
    for spec in sig.input_specs:
        kind = spec.kind.name
        name = spec.arg.name
        if kind == "PARAMETER":
            roles[name] = ("param", spec.target)
        elif kind == "BUFFER":
            roles[name] = ("buffer", spec.target)
        elif kind == "USER_INPUT":
            roles[name] = ("input", name)
        else:
            raise TraceError(f"unsupported graph input kind {kind} for {name}")
    state = dict(ep.state_dict)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            role, target = roles[node.name]
            node.meta["fx2fpga_role"], node.meta["fx2fpga_name"] = role, target
            if role in ("param", "buffer"):
                node.meta["fx2fpga_value"] = state[target].detach().clone()
    gm.meta["fx2fpga_outputs"] = ["output"] * len(sig.output_specs)
    gm.meta["fx2fpga_kind"] = "infer"
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    user_args = iter(args)
    profile(gm, [n.meta["fx2fpga_value"] if "fx2fpga_value" in n.meta else next(user_args) for n in placeholders])
    return gm


# ----- training -------------------------------------------------------------------------

def trace_training(model, example_inputs, train: SGD) -> torch.fx.GraphModule:
    """The joint graph of one SGD step: (params, buffers, x, y) -> (loss, new params, new buffers)."""
    from torch._dispatch.python import enable_python_dispatcher
    from torch.func import functional_call, functionalize, grad_and_value
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.traceback import preserve_node_meta

    module = as_module(model).train()
    args = _as_tuple(example_inputs)
    if len(args) != 1:
        raise TraceError(f"training kernels take one input tensor (a batch), got {len(args)}")
    params = {k: v.detach() for k, v in module.named_parameters()}
    if not params:
        raise TraceError("the model has no parameters to train")
    buffers = {k: v.detach() for k, v in module.named_buffers()}
    pnames, bnames = list(params), list(buffers)
    loss_fn, lr = train.loss, float(train.lr)

    def step(*flat):
        ps = dict(zip(pnames, flat[: len(pnames)], strict=True))
        bs = dict(zip(bnames, flat[len(pnames): len(pnames) + len(bnames)], strict=True))
        x, y = flat[len(pnames) + len(bnames):]

        def loss_of(p):
            out = functional_call(module, (p, bs), (x,))
            loss = loss_fn(out, y)
            if loss.dim() != 0:
                raise TraceError(f"the loss function must return a scalar, got shape {tuple(loss.shape)}")
            return loss

        grads, loss = grad_and_value(loss_of)(ps)
        return (loss, *[ps[k] - lr * grads[k] for k in pnames], *[bs[k] for k in bnames])

    flat_inputs = [*params.values(), *buffers.values(), args[0], train.example_targets]
    try:
        with enable_python_dispatcher(), preserve_node_meta():
            gm = make_fx(
                functionalize(step, remove="mutations"),
                decomposition_table=decomposition_table(),
                tracing_mode="fake",
                record_stack_traces=True,
            )(*flat_inputs)
    except (UnsupportedOpError, TraceError):
        raise
    except Exception as e:
        raise TraceError(f"could not trace the training step: {type(e).__name__}: {e}") from e

    roles = [("param", k, params[k]) for k in pnames] + [("buffer", k, buffers[k]) for k in bnames]
    roles += [("input", "x", None), ("target", "y", None)]
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, (role, name, value) in zip(placeholders, roles, strict=True):
        node.meta["fx2fpga_role"], node.meta["fx2fpga_name"] = role, name
        if value is not None:
            node.meta["fx2fpga_value"] = value.clone()
    _inherit_stack_traces(gm)
    gm.meta["fx2fpga_outputs"] = ["loss"] + [f"param:{k}" for k in pnames] + [f"buffer:{k}" for k in bnames]
    gm.meta["fx2fpga_kind"] = "train_step"
    gm.meta["fx2fpga_lr"] = lr
    profile(gm, flat_inputs)
    return gm


class _RangeRecorder(torch.fx.Interpreter):
    def run_node(self, n):
        result = super().run_node(n)
        if isinstance(result, torch.Tensor) and result.numel() and result.dtype.is_floating_point:
            n.meta["fx2fpga_absmax"] = float(result.detach().abs().max())
        return result


def profile(gm: torch.fx.GraphModule, example_args: list) -> None:
    """Run the graph in float on the example values; record each node's largest magnitude."""
    with torch.no_grad():
        _RangeRecorder(gm).run(*example_args)


def _inherit_stack_traces(gm: torch.fx.GraphModule) -> None:
    """Backward nodes have no stack trace: give them the one of their forward op (same seq_nr)."""
    by_seq = {}
    for node in gm.graph.nodes:
        st, seq = node.meta.get("stack_trace"), node.meta.get("seq_nr")
        if st and seq is not None:
            by_seq.setdefault(seq, st)
    for node in gm.graph.nodes:
        if not node.meta.get("stack_trace") and node.meta.get("seq_nr") in by_seq:
            node.meta["stack_trace"] = by_seq[node.meta["seq_nr"]]


def trace(model, example_inputs, train: SGD | None = None) -> torch.fx.GraphModule:
    """Trace ``model`` to a torch.fx graph: inference, or one SGD step when ``train`` is given."""
    if train is None:
        return trace_inference(model, example_inputs)
    return trace_training(model, example_inputs, train)
