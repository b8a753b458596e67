"""Tracing: a model (or a plain function) -> a torch.fx graph of core ATen ops.

- Inference: ``(params..., buffers..., inputs...) -> outputs`` of the module in eval mode, traced
  with ``make_fx(functionalize(forward))`` and the same decompositions.
- Training: one pure SGD step ``(params..., buffers..., states..., lr, x, y) -> (loss, new
  params..., new buffers..., new states...)`` traced with ``make_fx(functionalize(step))``
  and the core ATen decompositions, so the autograd backward graph and the update are
  ordinary graph nodes. States are the optimizer's (``momentum:<param name>``); the learning
  rate is an input of the step (role ``hyper``), so it becomes a register on chip that the
  host writes (``set_lr``) instead of a constant.

Every node carries a ``handoffs.NodeInfo``: each placeholder its ``Placeholder`` (role ``param``,
``buffer``, ``state``, ``input`` or ``target``, the model's dotted name or the input's name, the
initial value), each float node its profiled ``ValueProfile``; the graph module carries a
``handoffs.GraphInfo``: the program (``infer``, ``train_step``) and each output's ``OutputRole``
(``output``, ``loss``, or ``param``/``buffer``/``state`` with its name).
"""

from __future__ import annotations

import contextlib
import logging
import sysconfig
import traceback
from pathlib import Path

import torch
import torch.fx
from fx2fpga_runtime.ir import LR_PARAM

from ..errors import ExampleInputError, TraceError, UnsupportedOpError
from ..handoffs import (
    LR_REACH_BITS,
    META_KEY,
    GraphInfo,
    OutputRole,
    Placeholder,
    ValueProfile,
    node_info,
    set_node_info,
)
from ..lower.graph import _LIBRARY_DIRS, _class_count
from . import dropout, embedding
from .modules import PointModule, _as_tuple, as_module, check_modules
from .optim import ADAM_KIND, ADAM_NORMALIZED, GD, SGD, optimizer_states, optimizer_update, states_at_bound

aten = torch.ops.aten


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


# BatchNorm as plain ops with one rsqrt table (PyTorch's own uses var_mean, or sqrt and a
# reciprocal in eval mode); the running stats follow PyTorch's update (unbiased variance).
# The squares, the variance and 1/std are annotated as statistics: ``passes.quantize`` fits
# their formats to the profiled range (small variances need many fraction bits). The annotation
# (torch.fx's ``meta["custom"]``) becomes ``NodeInfo.statistic`` right after tracing.
_STATISTIC = "fx2fpga_statistic"


def _statistics():
    import torch.fx.traceback as fx_traceback

    return fx_traceback.annotate({_STATISTIC: True})


def _mark_statistics(gm: torch.fx.GraphModule) -> None:
    """``NodeInfo.statistic`` on the nodes traced inside ``_statistics()``."""
    for node in gm.graph.nodes:
        if (node.meta.get("custom") or {}).get(_STATISTIC):
            set_node_info(node, statistic=True)


def _mark_optimizer(gm: torch.fx.GraphModule) -> None:
    """``NodeInfo.moment``, ``scale`` and ``normalized`` on the nodes of Adam's update (``optim._tagged``)."""
    for node in gm.graph.nodes:
        custom = node.meta.get("custom") or {}
        if ADAM_KIND in custom:
            kind = custom[ADAM_KIND]
            set_node_info(node, moment=kind == "moment", scale=kind == "scale",
                          normalized=bool(custom.get(ADAM_NORMALIZED)))


def _bn_shape(x: torch.Tensor) -> list[int]:
    return [1, -1] + [1] * (x.dim() - 2)


def _bn_affine(out, weight, bias, shape):
    if weight is not None:
        out = out * weight.reshape(shape)
    return out + bias.reshape(shape) if bias is not None else out


def _batch_norm_functional(input, weight, bias, running_mean, running_var, training, momentum, eps):
    if not training:
        out, _, _ = _batch_norm_eval(input, weight, bias, running_mean, running_var, momentum, eps)
        return out, running_mean.new_zeros(0), running_var.new_zeros(0), running_mean, running_var
    dims, shape = [0] + list(range(2, input.dim())), _bn_shape(input)
    n = input.numel() // input.shape[1]
    mean = input.sum(dims) * (1.0 / n)
    centered = input - mean.reshape(shape)
    with _statistics():
        var = (centered * centered).sum(dims) * (1.0 / n)
        invstd = torch.rsqrt(var + eps)
    out = _bn_affine(centered * invstd.reshape(shape), weight, bias, shape)
    new_mean = running_mean * (1 - momentum) + mean * momentum
    new_var = running_var * (1 - momentum) + var * (momentum * n / max(n - 1, 1))
    return out, mean, invstd, new_mean, new_var


def _batch_norm_no_stats(input, weight, bias, training, momentum, eps):
    """BatchNorm without running stats: batch statistics, in training and in eval mode."""
    zeros = input.new_zeros(input.shape[1])
    out, mean, invstd, _, _ = _batch_norm_functional(input, weight, bias, zeros, zeros, True, momentum, eps)
    return out, mean, invstd


def _batch_norm_eval(input, weight, bias, running_mean, running_var, momentum, eps):
    shape = _bn_shape(input)
    with _statistics():
        invstd = torch.rsqrt(running_var + eps)
    out = _bn_affine((input - running_mean.reshape(shape)) * invstd.reshape(shape), weight, bias, shape)
    return out, input.new_zeros(0), input.new_zeros(0)


# ----- activations and LayerNorm ---------------------------------------------------------------
# Where PyTorch's own decompositions use ops we do not lower (isnan and bitwise_or in clamp,
# expm1 in elu, prims.maximum, empty_permuted in SiLU's backward, var_mean in layer_norm), the
# same function in ops we have: compares, where, mul, exp and the rsqrt table.

def _clamp(x, min=None, max=None):
    """clamp and hardtanh: two selects (bounds are Python numbers or tensors)."""
    if min is not None:
        x = torch.where(x < min, min, x)
    if max is not None:
        x = torch.where(x > max, max, x)
    return x


def _hardtanh_backward(grad_output, x, min_val, max_val):
    return torch.where(x <= min_val, 0.0, torch.where(x >= max_val, 0.0, grad_output))


def _elu(x, alpha=1.0, scale=1.0, input_scale=1.0):
    return torch.where(x > 0, x * scale, (torch.exp(x * input_scale) - 1) * (alpha * scale))


def _empty_like(x, *, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    """An uninitialized tensor (SiLU's backward fills one with ones): zeros, folded at compile time,
    where PyTorch's decomposition makes an ``empty_permuted`` we do not lower."""
    return torch.zeros_like(x, dtype=dtype)


def _maximum(a, b):
    return torch.where(a > b, a, b)


def _minimum(a, b):
    return torch.where(a < b, a, b)


def _layer_norm(input, normalized_shape, weight, bias, eps):
    """LayerNorm as plain ops with one rsqrt table, as BatchNorm: (out, mean, 1/std), the statistics
    keeping the normalized dims (size 1), as ``native_layer_norm`` returns them."""
    dims = list(range(input.dim() - len(normalized_shape), input.dim()))
    n = 1
    for d in normalized_shape:
        n *= d
    mean = input.sum(dims, keepdim=True) * (1.0 / n)
    centered = input - mean
    with _statistics():
        var = (centered * centered).sum(dims, keepdim=True) * (1.0 / n)
        invstd = torch.rsqrt(var + eps)
    out = centered * invstd
    if weight is not None:
        out = out * weight
    return (out + bias if bias is not None else out), mean, invstd


def _activation_decompositions() -> dict:
    from torch._decomp import get_decompositions

    table = get_decompositions([aten.leaky_relu, aten.leaky_relu_backward, aten.elu_backward, aten.gelu,
                                aten.gelu_backward, aten.native_layer_norm_backward])
    table.update({aten.clamp.default: _clamp, aten.clamp.Tensor: _clamp, aten.hardtanh.default: _clamp,
                  aten.hardtanh_backward.default: _hardtanh_backward, aten.elu.default: _elu,
                  aten.empty_like.default: _empty_like, aten.maximum.default: _maximum,
                  aten.minimum.default: _minimum, aten.native_layer_norm.default: _layer_norm})
    return table


def decomposition_table() -> dict:
    from torch._decomp import core_aten_decompositions, get_decompositions

    table = dict(core_aten_decompositions())
    table.update(get_decompositions([aten._log_softmax, aten._softmax, aten.mse_loss, aten.mse_loss_backward]))
    table[aten.nll_loss_forward.default] = _nll_loss_forward
    table[aten.nll_loss_backward.default] = _nll_loss_backward
    table[aten.nll_loss2d_forward.default] = _nll_loss_forward  # (N, C, ...) inputs: refused clearly
    table[aten._native_batch_norm_legit_functional.default] = _batch_norm_functional
    table[aten._native_batch_norm_legit_no_training.default] = _batch_norm_eval
    table[aten._native_batch_norm_legit.no_stats] = _batch_norm_no_stats
    table.update(embedding.DECOMPOSITIONS)  # a one-hot matrix product
    table.update(dropout.DECOMPOSITIONS)  # random ops in a forward: refused (nn.Dropout draws on chip)
    table.update(_activation_decompositions())
    return table


# ----- inference --------------------------------------------------------------------------

def trace_inference(model, example_inputs) -> torch.fx.GraphModule:
    """The inference graph of ``model`` on ``example_inputs`` (core ATen ops): ``(params..., buffers...,
    inputs...) -> outputs`` of the module in eval mode, traced with ``make_fx(functionalize(...))`` as the
    training step is (``torch.export`` would cost a second and a half of ``torch._dynamo`` import per process)."""
    from torch.func import functional_call

    module = as_module(model).eval()
    args = _as_tuple(example_inputs)
    params = {k: v.detach() for k, v in module.named_parameters()}
    buffers = {k: v.detach() for k, v in module.named_buffers()}
    n_state = len(params) + len(buffers)

    def forward(*flat):
        state = dict(zip([*params, *buffers], flat[:n_state], strict=True))
        out = functional_call(module, state, tuple(flat[n_state:]))
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    flat_inputs = [*params.values(), *buffers.values(), *args]
    gm = _make_fx(forward, flat_inputs, "the model")
    roles = [("param", k, v) for k, v in params.items()] + [("buffer", k, v) for k, v in buffers.items()]
    roles += [("input", name, None) for name in _input_names(module, len(args))]
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, (role, name, value) in zip(placeholders, roles, strict=True):
        set_node_info(node, placeholder=Placeholder(role, name, None if value is None else value.clone()))
    _mark_statistics(gm)
    _mark_optimizer(gm)
    _inherit_stack_traces(gm)
    n_out = len(next(n for n in gm.graph.nodes if n.op == "output").args[0])
    gm.meta[META_KEY] = GraphInfo("infer", tuple(OutputRole("output") for _ in range(n_out)))
    profile(gm, flat_inputs)
    return gm


def _input_names(module: torch.nn.Module, n: int) -> list[str]:
    """The names of ``module.forward``'s first ``n`` arguments (``x``; ``input`` for ``nn.Sequential``)."""
    import inspect

    names = [p.name for p in inspect.signature(module.forward).parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return names[:n] + [f"input{i}" for i in range(len(names), n)]


# ----- training -------------------------------------------------------------------------


def trace_training(model, example_inputs, train: SGD | GD) -> torch.fx.GraphModule:
    """The joint graph of one training step: (params, buffers, states, lr, x, y) -> (loss, new params, new
    buffers, new states). The states are the optimizer's (``optim.optimizer_states``: SGD's velocities
    ``momentum:<param>``, with momentum only; Adam's moments and powers); ``lr`` is a 0-d input (the
    learning rate register); ``GD`` takes no x and y and its loss is the model's output."""
    from torch.func import functional_call, grad_and_value

    module = as_module(model).train()
    args = _as_tuple(example_inputs)
    gd = isinstance(train, GD)
    if gd and args:
        raise TraceError("GD kernels take no inputs: compile f with fx2fpga.compile(f, (x0,), train=GD(...))")
    if not gd and not args:
        raise TraceError("training kernels take at least one input tensor (a batch)")
    params = {k: v.detach() for k, v in module.named_parameters()}
    if not params:
        raise TraceError("the model has no parameters to train")
    buffers = {k: v.detach() for k, v in module.named_buffers()}
    pnames, bnames = list(params), list(buffers)
    loss_fn, lr = (None if gd else train.loss), float(train.lr)
    states = optimizer_states(train, params)
    hypers = {LR_PARAM: torch.tensor(lr, dtype=torch.get_default_dtype())}
    n_state = len(pnames) + len(bnames)  # where the states start in the step's arguments

    def step(*flat):
        ps = dict(zip(pnames, flat[: len(pnames)], strict=True))
        bs = dict(zip(bnames, flat[len(pnames): n_state], strict=True))
        vs = dict(zip(states, flat[n_state: n_state + len(states)], strict=True))
        rate = flat[n_state + len(states)]
        data = flat[n_state + len(states) + len(hypers):]  # (x, y), or () for GD

        def loss_of(p, b):
            b = {k: v.clone() for k, v in b.items()}  # BatchNorm updates its running stats in place
            out = functional_call(module, (p, b), tuple(data[:len(args)]))
            loss = out if loss_fn is None else loss_fn(out, data[len(args)])  # out: a tuple for several outputs
            if loss.dim() != 0:
                raise TraceError(f"the loss function must return a scalar, got shape {tuple(loss.shape)}")
            return loss, b

        grads, (loss, new_bs) = grad_and_value(loss_of, has_aux=True)(ps, bs)
        new_ps, new_states = optimizer_update(train, ps, grads, vs, rate)
        return (loss, *[new_ps[k] for k in pnames], *[new_bs[k] for k in bnames], *[new_states[k] for k in states])

    targets = [] if gd else [train.example_targets]
    flat_inputs = [*params.values(), *buffers.values(), *states.values(), *hypers.values(), *args, *targets]
    gm = _make_fx(step, flat_inputs)
    _annotate_training_graph(gm, params, buffers, states, hypers, [] if gd else _input_names(module, len(args)), lr)
    profile(gm, flat_inputs)
    if states:  # once more from the states a long run reaches (velocities at g / (1 - momentum), ...)
        with torch.no_grad():
            new_vs = gm(*flat_inputs)[-len(states):]
        at_bound = list(states_at_bound(train, dict(zip(states, new_vs, strict=True))).values())
        flat_inputs = flat_inputs[:n_state] + at_bound + flat_inputs[n_state + len(states):]
        profile(gm, flat_inputs)
    at_reach = list(flat_inputs)  # and at the largest learning rate set_lr may write: its update must fit too
    at_reach[n_state + len(states)] = hypers[LR_PARAM] * 2 ** LR_REACH_BITS
    profile(gm, at_reach)
    return gm


def _make_fx(step, flat_inputs: list, what: str = "the training step") -> torch.fx.GraphModule:
    """``make_fx(functionalize(step))`` with our decompositions; a failure is a ``TraceError``."""
    from torch._dispatch.python import enable_python_dispatcher
    from torch.func import functionalize
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.traceback import preserve_node_meta

    try:
        with enable_python_dispatcher(), preserve_node_meta(), _quiet_fake_tensors():
            return make_fx(
                functionalize(step, remove="mutations"),
                decomposition_table=decomposition_table(),
                tracing_mode="fake",
                record_stack_traces=True,
            )(*flat_inputs)
    except (UnsupportedOpError, TraceError):
        raise
    except Exception as e:
        where = _user_frame(e)
        at = f" at {where}" if where else ""
        if _data_dependent(e):
            raise TraceError(f"could not trace {what}: its control flow depends on the values of a tensor{at} "
                             "(an if or while on a tensor, .item(), bool(tensor)); a kernel runs one fixed graph "
                             "for every input: compute both branches and select with torch.where(cond, a, b)"
                             ) from None
        raise TraceError(f"could not trace {what}{at}: {type(e).__name__}: {_first_lines(e)}") from e


@contextlib.contextmanager
def _quiet_fake_tensors():
    """Silence the traceback torch's fake tensors log when a kernel fails while tracing (the failure becomes
    our ``TraceError``)."""
    log = logging.getLogger("torch._subclasses.fake_tensor")
    before, log.disabled = log.disabled, True
    try:
        yield
    finally:
        log.disabled = before


def _data_dependent(e: Exception) -> bool:
    """Whether tracing failed on a value the fake tensors do not have (control flow on tensor data)."""
    from torch._subclasses.fake_tensor import DataDependentOutputException
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    return isinstance(e, (GuardOnDataDependentSymNode, DataDependentOutputException))


_NOT_USER = (*_LIBRARY_DIRS, sysconfig.get_paths()["stdlib"], "<")


def _user_frame(e: BaseException) -> str:
    """``model.py:12: code`` of the innermost frame of ``e``'s traceback outside torch, fx2fpga and the
    standard library (the user's line being traced); "" if none."""
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        if not frame.filename.startswith(_NOT_USER):
            return f"{Path(frame.filename).name}:{frame.lineno}: {(frame.line or '').strip()}"
    return ""


def _first_lines(e: Exception, n: int = 3) -> str:
    """The first lines of ``e``'s message (torch appends pages of debugging advice)."""
    return "\n".join(str(e).strip().splitlines()[:n])


# ----- the example inputs ------------------------------------------------------------------------

def check_example_inputs(modules: list[torch.nn.Module], example_inputs: tuple, targets=None) -> None:
    """An ``ExampleInputError`` for example inputs (or targets) the compiler cannot take: NaN or Inf, an
    empty batch, integers where no ``nn.Embedding`` takes them as indices."""
    embeds = all(_takes_indices(module) for module in modules)
    for i, t in enumerate(example_inputs):
        what = f"example input {i} (shape {tuple(t.shape)}, {t.dtype})"
        _check_example_values(t, what)
        if t.dtype.is_complex or (not t.dtype.is_floating_point and not embeds):
            raise ExampleInputError(f"{what} is not a float tensor: the model computes on floats (fixed point on "
                                    "chip): pass x.float(); integer inputs are for nn.Embedding's indices only")
    if targets is not None:
        _check_example_values(targets, f"the example targets (shape {tuple(targets.shape)}, {targets.dtype})")


def _takes_indices(module: torch.nn.Module) -> bool:
    """Whether ``module`` looks up embeddings (integer inputs as indices): it holds an ``nn.Embedding``, or a
    torch.fx graph (``torch.compile``'s) that calls an embedding."""
    for m in module.modules():
        if isinstance(m, torch.nn.Embedding):
            return True
        if isinstance(m, torch.fx.GraphModule) and any("embedding" in str(n.target) for n in m.graph.nodes):
            return True
    return False


def _check_example_values(t: torch.Tensor, what: str) -> None:
    """No NaN or Inf (they have no fixed-point format) and at least one row (the batch is compiled in)."""
    if t.dim() > 0 and t.numel() == 0:
        raise ExampleInputError(f"empty batch in {what}: the kernel is compiled for the example's batch size: give "
                                "a batch of at least one row")
    if t.dtype.is_floating_point:
        bad = ~torch.isfinite(t.detach())
        if bad.any():
            first = tuple(int(i) for i in bad.nonzero()[0])
            raise ExampleInputError(f"NaN or Inf in {what}: {int(bad.sum())} value(s), the first "
                                    f"{t.detach()[first].item()} at index {first}; the formats are sized from the "
                                    "example's values: give finite ones (e.g. torch.nan_to_num)")


def check_class_targets(gm: torch.fx.GraphModule, targets: torch.Tensor) -> None:
    """An ``ExampleInputError`` for integer example targets that are not class indices ``0..C-1`` of the
    classification loss (C: the width of its input)."""
    for node in gm.graph.nodes:
        ph = node_info(node).placeholder if node.op == "placeholder" else None
        if ph is None or ph.role != "target" or targets.dtype.is_floating_point:
            continue
        classes = _class_count(node)
        bad = ((targets < 0) | (targets >= classes)) if classes is not None else torch.zeros(0, dtype=torch.bool)
        if bad.any():
            first = tuple(int(i) for i in bad.nonzero()[0])
            raise ExampleInputError(f"the example targets hold class index {int(targets[first])} at index {first}; the "
                                    f"loss takes {classes} classes: give indices in 0..{classes - 1}")


def _annotate_training_graph(gm: torch.fx.GraphModule, params: dict, buffers: dict, states: dict, hypers: dict,
                             inputs: list[str], lr: float) -> None:
    """The step's placeholders get their roles (param, buffer, state, hyper, input, target) and values;
    the graph its outputs' roles (loss, new params, buffers and states). ``inputs``: the model's input
    names (none for GD, whose step takes no data)."""
    roles = [("param", k, v) for k, v in params.items()] + [("buffer", k, v) for k, v in buffers.items()]
    roles += [("state", k, v) for k, v in states.items()] + [("hyper", k, v) for k, v in hypers.items()]
    roles += [("input", "x" if len(inputs) == 1 else name, None) for name in inputs]
    roles += [("target", "y", None)] if inputs else []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, (role, name, value) in zip(placeholders, roles, strict=True):
        set_node_info(node, placeholder=Placeholder(role, name, None if value is None else value.clone()))
    _mark_statistics(gm)
    _mark_optimizer(gm)
    _inherit_stack_traces(gm)
    outputs = ([OutputRole("loss")] + [OutputRole("param", k) for k in params]
               + [OutputRole("buffer", k) for k in buffers] + [OutputRole("state", k) for k in states])
    gm.meta[META_KEY] = GraphInfo("train_step", tuple(outputs), lr)


class _RangeRecorder(torch.fx.Interpreter):
    def run_node(self, n):
        result = super().run_node(n)
        if isinstance(result, torch.Tensor) and result.numel() and result.dtype.is_floating_point:
            r = result.detach()  # several runs (momentum) keep the widest range
            old = node_info(n).profile or ValueProfile()
            set_node_info(n, profile=old.widened(float(r.min()), float(r.max()), float(r.abs().max())))
        return result


def profile(gm: torch.fx.GraphModule, example_args: list) -> None:
    """Run the graph in float on the example values; record each node's range (``NodeInfo.profile``)."""
    try:
        with torch.no_grad():
            _RangeRecorder(gm).run(*example_args)
    except Exception as e:
        raise TraceError(f"could not run the traced graph on the example inputs: {type(e).__name__}: "
                         f"{_first_lines(e, 8)}") from e


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


def trace(model, example_inputs, train: SGD | GD | None = None) -> torch.fx.GraphModule:
    """Trace ``model`` to a torch.fx graph: inference, or one SGD step when ``train`` is given.

    With ``GD``, ``model`` is a function ``f(x)`` and ``example_inputs`` the point ``(x0,)``.
    """
    if isinstance(train, GD) and not isinstance(model, PointModule):
        model, example_inputs = PointModule(model, _as_tuple(example_inputs)[0]), ()
    check_modules(as_module(model), training=train is not None)
    if train is not None:  # nn.Dropout -> OnChipDropout, in a copy of the model (frontend/dropout.py)
        model = dropout.with_on_chip_dropout(as_module(model), _as_tuple(example_inputs),
                                             getattr(train, "dropout_seed", 0))
    gm = trace_inference(model, example_inputs) if train is None else trace_training(model, example_inputs, train)
    if isinstance(train, SGD):
        check_class_targets(gm, train.example_targets)
    dropout.rename_states(gm, as_module(model))  # its generator's states: dropout:<module path>
    return gm
