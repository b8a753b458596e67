"""The optimizers whose update step is traced into the training kernel: ``SGD``, ``Adam``, ``AdamW`` and ``GD``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.fx.traceback as fx_traceback


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
    dropout_seed: int = 0  # seeds the on-chip generator of nn.Dropout's masks (frontend/dropout.py)

    def __post_init__(self) -> None:
        if self.nesterov and not (self.momentum if not isinstance(self.momentum, (list, tuple)) else
                                  all(m > 0 for m in self.momentum)):
            raise ValueError(f"{type(self).__name__}(nesterov=True) needs a momentum > 0 (as torch.optim.SGD)")
        if not callable(self.loss):
            raise TypeError(f"{type(self).__name__}(loss=...) must be a callable (output, target) -> scalar, "
                            "e.g. F.cross_entropy")
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
            _check_optimizer(type(self).__name__, lr, m, wd)

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


@dataclass
class Adam(SGD):
    """Train with Adam on chip, as ``torch.optim.Adam`` (bias correction included; ``amsgrad`` and
    ``maximize`` are not supported): ``fx2fpga.Adam(loss, example_targets, lr, betas, eps, weight_decay)``.

    The first moment ``exp_avg:<param>``, the square root of the second, ``sqrt_exp_avg_sq:<param>`` (its
    square spans twice the bits of the gradient's range: its root fits a word as the first moment does), and
    ``adam:beta1_power``, ``adam:beta2_power`` (``beta ** step``, which hold the step count) live on chip in
    wide fixed-point formats; the divisions and square roots of the update normalize their divisors (the
    IR's ``div`` and ``div_sqrt``), so ``m / (sqrt(v) + eps)`` keeps its relative precision for small
    gradients too.
    ``weight_decay`` adds ``wd * p`` to the gradient (L2), as ``torch.optim.Adam``; ``AdamW`` decouples it.
    ``lr`` and ``weight_decay`` may be lists (one value per model), as SGD's.
    """

    lr: float | list[float] = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    amsgrad: bool = False  # torch's options that the kernel does not have: refused clearly
    maximize: bool = False
    decoupled: ClassVar[bool] = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        for option in ("amsgrad", "maximize"):
            if getattr(self, option):
                raise ValueError(f"{name}({option}=True) is not supported on chip: Adam and AdamW train with "
                                 f"bias-corrected moments only (torch.optim's defaults)")
        if (self.momentum if not isinstance(self.momentum, (list, tuple)) else any(self.momentum)) or self.nesterov:
            raise ValueError(f"{name} takes betas=(beta1, beta2), not momentum or nesterov (those are SGD's)")
        b1, b2 = (float(b) for b in self.betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"{name}: betas must be in [0, 1), got {tuple(self.betas)}")
        if not float(self.eps) >= 0.0:
            raise ValueError(f"{name}: eps must be >= 0, got {self.eps}")
        self.betas, self.eps = (b1, b2), float(self.eps)
        super().__post_init__()


@dataclass
class AdamW(Adam):
    """``torch.optim.AdamW`` on chip: Adam with decoupled weight decay, ``p <- p * (1 - lr * wd)`` before the
    update (``weight_decay`` 0.01 by default, as torch's)."""

    weight_decay: float | list[float] = 1e-2
    decoupled: ClassVar[bool] = True


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


def optimizer_states(train: SGD | GD, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The optimizer's on-chip state before the first step: SGD's velocities (``momentum:<param>``, with
    momentum only), or Adam's moments and powers."""
    if isinstance(train, Adam):
        return adam_states(params)
    return {f"momentum:{k}": torch.zeros_like(v) for k, v in params.items()} if float(train.momentum) else {}


def optimizer_update(train: SGD | GD, params: dict, grads: dict, states: dict, lr: torch.Tensor) -> tuple[dict, dict]:
    """One step of ``train``'s optimizer on every parameter: (new params, new states)."""
    if isinstance(train, Adam):
        return adam_update(params, grads, states, lr, train)
    momentum, weight_decay = float(train.momentum), float(train.weight_decay)
    nesterov = bool(getattr(train, "nesterov", False))
    new_params, new_states = {}, {}
    for k, p in params.items():
        new_params[k], v = sgd_update(p, grads[k], states.get(f"momentum:{k}"), lr, momentum, weight_decay, nesterov)
        if f"momentum:{k}" in states:
            new_states[f"momentum:{k}"] = v
    return new_params, new_states


def states_at_bound(train: SGD | GD, new: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The states a long run reaches, from the first step's (``new``), for profiling the formats: SGD's
    velocities at ``g / (1 - momentum)`` (the step's v is g, from 0); Adam's in ``adam_states_at_bound``."""
    if isinstance(train, Adam):
        return adam_states_at_bound(new, train.betas)
    return {k: v / (1.0 - float(train.momentum)) for k, v in new.items()}


# ----- Adam ------------------------------------------------------------------------------------------

ADAM_KIND, ADAM_NORMALIZED = "fx2fpga_adam_kind", "fx2fpga_normalized"  # node annotations (trace.py reads them)


def _tagged(kind: str, normalized: bool = False):
    """Nodes traced inside get the buffer kind ``kind`` ("moment": wide; "scale": the gradients' width, both
    fit to the profiled range; "gradient"); ``normalized``: a division or square root by the IR's ``div`` or
    ``div_sqrt``."""
    return fx_traceback.annotate({ADAM_KIND: kind, ADAM_NORMALIZED: normalized})


def adam_states(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adam's state before the first step: zero moments and ``beta ** 0 = 1``."""
    states = {f"exp_avg:{k}": torch.zeros_like(v) for k, v in params.items()}
    states.update({f"sqrt_exp_avg_sq:{k}": torch.zeros_like(v) for k, v in params.items()})
    one = torch.tensor(1.0, dtype=torch.get_default_dtype())
    return {**states, "adam:beta1_power": one, "adam:beta2_power": one.clone()}


def adam_states_at_bound(new: dict[str, torch.Tensor], betas: tuple[float, float]) -> dict[str, torch.Tensor]:
    """The states a long run reaches, for profiling: the moments at ``m / (1 - beta1)`` and
    ``sqrt(v / (1 - beta2))`` of the first step's (``new``: the gradient and its magnitude), ``beta ** step``
    at 0."""
    return {k: torch.zeros_like(v) if k.startswith("adam:")
            else v / (1.0 - betas[0]) if k.startswith("exp_avg:") else v / (1.0 - betas[1]) ** 0.5
            for k, v in new.items()}


def adam_update(params: dict, grads: dict, states: dict, lr: torch.Tensor, opt: Adam) -> tuple[dict, dict]:
    """One ``torch.optim.Adam`` (``AdamW``) step on every parameter: (new params, new states), the second
    moment kept as its square root ``r2``: ``v = beta2 * r2**2 + (1 - beta2) * g**2``, ``r2 <- sqrt(v)``.

    Computed as ``p - s * m / (sqrt(v) + eps * r)`` with ``r = sqrt(1 - beta2**t)`` and
    ``s = lr * r / (1 - beta1**t)``: torch's ``p - lr / (1 - beta1**t) * m / (sqrt(v) / r + eps)`` with the
    bias corrections moved onto two scalars."""
    b1, b2 = opt.betas
    wd = float(opt.weight_decay)
    with _tagged("moment"):
        c1, c2 = states["adam:beta1_power"] * b1, states["adam:beta2_power"] * b2
        bc1, bc2 = 1 - c1, 1 - c2
    with _tagged("scale", normalized=True):
        r = torch.sqrt(bc2)
        step = lr / bc1
    with _tagged("scale"):
        s = step * r
    with _tagged("moment"):
        eps_r = r * opt.eps
    new_params, new_states = {}, {"adam:beta1_power": c1, "adam:beta2_power": c2}
    for k, p in params.items():
        g = grads[k]
        if wd and not opt.decoupled:
            g = g + p * wd
        if wd and opt.decoupled:
            with _tagged("scale"):
                keep = 1 - lr * wd
            p = p * keep
        with _tagged("moment"):
            m = states[f"exp_avg:{k}"] * b1 + g * (1 - b1)
            root = states[f"sqrt_exp_avg_sq:{k}"]
            v = (root * root) * b2 + (g * g) * (1 - b2)
            with _tagged("moment", normalized=True):
                root = torch.sqrt(v)
            denom = root + eps_r
        with _tagged("gradient", normalized=True):
            u = m / denom
        new_params[k] = p - s * u
        new_states[f"exp_avg:{k}"], new_states[f"sqrt_exp_avg_sq:{k}"] = m, root
    return new_params, {k: new_states[k] for k in states}
