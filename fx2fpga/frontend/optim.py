"""The optimizers whose update step is traced into the training kernel: ``SGD`` and ``GD``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class SGD:
    """Train with plain SGD: ``p <- p - lr * dloss/dp`` after each step, on chip.

    ``loss(output, target) -> scalar tensor``; ``example_targets`` fixes the target shape
    and dtype (integer class indices for cross-entropy, floats for MSE).
    """

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    example_targets: Any
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not callable(self.loss):
            raise TypeError("SGD(loss=...) must be a callable (output, target) -> scalar, e.g. F.cross_entropy")
        if not isinstance(self.example_targets, torch.Tensor):
            self.example_targets = torch.as_tensor(self.example_targets)
        _check_optimizer("SGD", self.lr, self.momentum, self.weight_decay)


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
               weight_decay: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One ``torch.optim.SGD`` step (dampening 0, no Nesterov) on one tensor: (new p, new velocity).

    ``g += wd * p; v = momentum * v + g; p -= lr * v``. The velocity starts at zero, so the
    first step gives ``v = g``, as torch's ``buf = clone(g)``.
    """
    if weight_decay:
        g = g + weight_decay * p
    if momentum:
        v = momentum * v + g
        g = v
    return p - lr * g, v
