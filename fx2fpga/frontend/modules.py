"""The user's model as an ``nn.Module``: wrappers for functions and points, and the checks before
tracing of settings the traced graph would hide."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import UnsupportedOpError
from ..lower import supported_ops


def check_modules(model: torch.nn.Module, training: bool) -> None:
    """Refuse, naming the limit, layer settings whose traced graph would not say what is missing."""
    for name, mod in model.named_modules():
        where = f"module {name!r}" if name else "the model"
        if isinstance(mod, torch.nn.modules.conv._ConvNd) and mod.padding_mode != "zeros":
            raise UnsupportedOpError(f"{type(mod).__name__}(padding_mode={mod.padding_mode!r})", where,
                                     supported_ops(), "only padding_mode='zeros' is supported")
        if training and isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and mod.momentum is None \
                and mod.track_running_stats:
            raise UnsupportedOpError(f"{type(mod).__name__}(momentum=None)", where, supported_ops(),
                                     "the cumulative running average divides by the batch count on chip; "
                                     "give a momentum (e.g. 0.1)")


class PointModule(nn.Module):
    """``f(x)`` as a model without inputs whose parameter ``x`` is the point (for ``GD``)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor):
        super().__init__()
        self.fn = fn
        x0 = torch.as_tensor(x0).detach().clone()
        self.x = nn.Parameter(x0 if x0.dtype.is_floating_point else x0.float())

    def forward(self) -> torch.Tensor:
        return self.fn(self.x)


class _FunctionModule(nn.Module):
    """Wraps a plain function of tensors as a module, so it traces as a model does."""

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
