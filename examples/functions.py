"""Optimization test functions in PyTorch, for any dimension: ``f(x) -> scalar tensor``.

Each is a plain function of a 1-D tensor, so ``fx2fpga.compile(f, (x0,), train=fx2fpga.GD(lr))``
descends it on chip. ``PROBLEMS`` holds a starting point and a stable learning rate for each.
"""

from __future__ import annotations

import math

import torch


def sphere(x: torch.Tensor) -> torch.Tensor:
    """``sum x_i^2``; minimum 0 at 0."""
    return (x * x).sum()


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    """``sum 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2``; minimum 0 at (1, ..., 1)."""
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


def rastrigin(x: torch.Tensor) -> torch.Tensor:
    """``10 n + sum x_i^2 - 10 cos(2 pi x_i)``; minimum 0 at 0, a local minimum near every integer point."""
    return 10.0 * x.numel() + (x * x - 10.0 * torch.cos(2 * math.pi * x)).sum()


def start(name: str, dim: int) -> torch.Tensor:
    """A fixed starting point (values on a 2**-8 grid, so every format holds them exactly)."""
    i = torch.arange(dim, dtype=torch.float64)
    if name == "sphere":
        x = 2.0 - 3.5 * i / max(dim - 1, 1)  # from 2 to -1.5
    elif name == "rosenbrock":
        x = torch.where(i % 2 == 0, -1.2, 1.0)  # the classic start (-1.2, 1, -1.2, 1, ...)
    else:
        x = 2.3 - 4.1 * i / max(dim - 1, 1)  # from 2.3 to -1.8, near several local minima
    return (torch.round(x * 256) / 256).float()


FUNCTIONS = {"sphere": sphere, "rosenbrock": rosenbrock, "rastrigin": rastrigin}
LEARNING_RATES = {"sphere": 0.1, "rosenbrock": 0.0005, "rastrigin": 0.002}

# The formats of the GD kernels: the point x (a parameter) fixed<28,6>, values of f and its terms
# fixed<24,8>, gradients fixed<28,8>; integer parts widened to 8x the largest value seen at the
# start (range_margin_bits=3), since terms of f can grow along the descent (Rastrigin's sum of
# x^2 - 10 cos(2 pi x) goes from about +18 to -80 in 10 dimensions).
PRECISION = {"weight": "fixed<28,6>", "activation": "fixed<24,8>", "gradient": "fixed<28,8>", "range_margin_bits": 3}
# The default formats (fixed<24,8> / fixed<16,6> / fixed<24,6>) with the same margin, for comparison.
DEFAULT_PRECISION = {"range_margin_bits": 3}
