"""The optimizers whose update step is traced into the training kernel: ``SGD`` and ``GD``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch


@dataclass
class SGD:
    """Train with SGD: ``p <- p - lr * dloss/dp`` after each step, on chip (with ``momentum``, ``weight_decay``
    and ``nesterov`` as ``torch.optim.SGD``, dampening 0).

    ``loss(output, target) -> scalar tensor``; ``example_targets`` fixes the target shape
    and dtype (integer class indices for cross-entropy, floats for MSE). Compiling a list of
    models, ``lr``, ``momentum`` and ``weight_decay`` may each be a list with one value per
    model (a hyper-parameter sweep in one kernel); one value is every model's.
    """

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    example_targets: Any
    lr: float | list[float] = 0.1
    momentum: float | list[float] = 0.0
    weight_decay: float | list[float] = 0.0
    nesterov: bool = False  # torch.optim.SGD(nesterov=True): the step along g + momentum * v

    def __post_init__(self) -> None:
        if self.nesterov and not (self.momentum if not isinstance(self.momentum, (list, tuple)) else
                                  all(m > 0 for m in self.momentum)):
            raise ValueError("SGD(nesterov=True) needs a momentum > 0 (as torch.optim.SGD)")
        if not callable(self.loss):
            raise TypeError("SGD(loss=...) must be a callable (output, target) -> scalar, e.g. F.cross_entropy")
        if not isinstance(self.example_targets, torch.Tensor):
            self.example_targets = torch.as_tensor(self.example_targets)
        values = {k: _values(k, getattr(self, k)) for k in HYPER_PARAMETERS}
        lengths = {len(v) for v in values.values() if isinstance(v, list)}
        if len(lengths) > 1:
            raise ValueError(f"SGD: the lists of {', '.join(k for k, v in values.items() if isinstance(v, list))} "
                             f"have different lengths ({', '.join(str(n) for n in sorted(lengths))}): "
                             f"give one value per model in each")
        for k, v in values.items():
            setattr(self, k, v)
        for lr, m, wd in zip(*(v if isinstance(v, list) else [v] * max(lengths, default=1)
                               for v in values.values()), strict=True):
            _check_optimizer("SGD", lr, m, wd)

    @property
    def per_model(self) -> bool:
        """Whether a hyper-parameter is a list (one value per model)."""
        return any(isinstance(getattr(self, k), list) for k in HYPER_PARAMETERS)

    def for_models(self, n: int) -> list[SGD]:
        """One ``SGD`` per model of a list of ``n``, each with one value per hyper-parameter."""
        for k in HYPER_PARAMETERS:
            v = getattr(self, k)
            if isinstance(v, list) and len(v) != n:
                raise ValueError(f"SGD({k}=[...]) has {len(v)} values for {n} models: give one value for every "
                                 f"model, or a list of {n}")
        return [replace(self, **{k: v[i] if isinstance(v, list) else v
                                 for k in HYPER_PARAMETERS for v in [getattr(self, k)]}) for i in range(n)]


HYPER_PARAMETERS = ("lr", "momentum", "weight_decay")  # SGD's per-model settings


def _values(name: str, value) -> float | list[float]:
    """One hyper-parameter: a float, or a list of floats (one per model)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"SGD({name}=[]): give one value, or one value per model")
        return [float(v) for v in value]
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) == 1:  # a numpy array or tensor of values
        return _values(name, value.tolist())
    return float(value)


@dataclass
class GD:
    """Gradient descent on a function: ``x <- x - lr * df/dx`` (with ``momentum``, as ``SGD``).

    ``fx2fpga.compile(f, (x0,), train=fx2fpga.GD(lr=0.01))`` keeps the point ``x`` on chip as
    the parameter ``"x"``; ``train_step()`` takes no inputs and returns ``f(x)`` before the
    step, ``infer()`` returns ``f(x)``.
    """

    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _check_optimizer("GD", self.lr, self.momentum, self.weight_decay)


def _check_optimizer(what: str, lr: float, momentum: float, weight_decay: float) -> None:
    if not float(lr) > 0:
        raise ValueError(f"{what} learning rate must be positive, got {lr}")
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"{what} momentum must be in [0, 1), got {momentum}")
    if not float(weight_decay) >= 0.0:
        raise ValueError(f"{what} weight_decay must be >= 0, got {weight_decay}")


def sgd_update(p: torch.Tensor, g: torch.Tensor, v: torch.Tensor | None, lr: float, momentum: float = 0.0,
               weight_decay: float = 0.0, nesterov: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One ``torch.optim.SGD`` step (dampening 0) on one tensor: (new p, new velocity).

    ``g += wd * p; v = momentum * v + g; p -= lr * v`` (Nesterov: ``p -= lr * (g + momentum * v)``).
    The velocity starts at zero, so the first step gives ``v = g``, as torch's ``buf = clone(g)``.
    """
    if weight_decay:
        g = g + weight_decay * p
    if momentum:
        v = momentum * v + g
        g = g + momentum * v if nesterov else v
    return p - g * lr, v  # g * lr: the product's operands in the order of a float lr's (g.mul(lr))
