"""``nn.Dropout`` in training, its masks drawn on chip by a per-element linear congruential generator.

Before a training step is traced, a copy of the model gets an ``OnChipDropout`` in place of each
``nn.Dropout`` (and ``Dropout1d/2d/3d``): it owns a persistent buffer ``state`` of int32 values, one
per element of its mask: a step keeps an element where ``state < threshold`` (a signed comparison,
decided by the high bits; the low bits of an LCG are weak and are not read), then advances the state
as ``state <- (A * state + C) mod 2**32`` (an IR ``mul`` and ``add`` in the format
``fixed<32,32,TRN,WRAP>``, whose wrap-around is the modulo). The kernel, the emulator and this module in float
torch draw the same masks bit for bit, so the float model is a reference the kernel is compared to.

The state is a buffer the step updates, as BatchNorm's running statistics are; its on-chip name is
``dropout:<module path>`` (like the optimizer's ``momentum:<param>``, it is not one of the model's
``state_dict`` keys). In eval mode ``OnChipDropout`` is the identity, and inference kernels trace
the user's model itself, where ``nn.Dropout`` is the identity.
"""

from __future__ import annotations

import copy
import dataclasses
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.fx.traceback as fx_traceback
from torch import nn

from ..errors import UnsupportedOpError
from ..handoffs import META_KEY, graph_info, node_info, set_node_info
from ..lower.graph import _LIBRARY_DIRS, RANDOM_ANNOTATION, RANDOM_STATE_PREFIX

aten = torch.ops.aten

LCG_MULTIPLIER = 1664525  # Numerical Recipes' full-period LCG modulo 2**32 (A = 1 mod 4, C odd)
LCG_INCREMENT = 1013904223
STATE_BUFFER = "state"
# the dropout modules replaced: one mask element per input element, or (channel-wise) per (sample, channel)
# of a batched input of the given rank
_ELEMENTWISE, _CHANNELWISE = (nn.Dropout,), {nn.Dropout1d: 3, nn.Dropout2d: 4, nn.Dropout3d: 5}


def keep_threshold(p: float) -> int:
    """The signed 32-bit threshold below which a uniformly distributed state keeps its element:
    ``round((1 - p) * 2**32)`` of the ``2**32`` states lie below it."""
    return -(2 ** 31) + round((1.0 - p) * 2 ** 32)


def advance(state: torch.Tensor) -> None:
    """One LCG step on int32 values in place, ``A * state + C`` wrapping modulo 2**32 (traced as ``mul`` and
    ``add``, annotated so that their buffers get the generator's wrapping format; in place, so that the traced
    step returns the new state as BatchNorm's running statistics)."""
    with fx_traceback.annotate({RANDOM_ANNOTATION: True}):
        state.mul_(LCG_MULTIPLIER).add_(LCG_INCREMENT)


def lcg_reference(state: np.ndarray, steps: int = 1) -> np.ndarray:
    """``steps`` LCG steps in numpy int64 arithmetic, the result as signed 32-bit values (a reference for tests)."""
    s = np.asarray(state, dtype=np.int64)
    for _ in range(steps):
        s = (s * LCG_MULTIPLIER + LCG_INCREMENT + 2 ** 31) % 2 ** 32 - 2 ** 31
    return s


class OnChipDropout(nn.Module):
    """Dropout whose mask comes from the buffer ``state`` (int32, the mask's shape): in training each call
    keeps the elements whose state is below ``keep_threshold(p)``, scaled by ``1 / (1 - p)``, and advances the
    state one LCG step for the next call; in eval mode the identity. A mask of fewer dims than the input
    (channel-wise dropout, ``(N, C, 1, 1)``) broadcasts over the rest."""

    def __init__(self, p: float, initial_state: torch.Tensor):
        super().__init__()
        self.p = float(p)
        self.register_buffer(STATE_BUFFER, initial_state.to(torch.int32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = self.state < keep_threshold(self.p)
        advance(self.state)  # after the comparison: the kernel's add then writes the state buffer in place
        return torch.where(keep, x * (1.0 / (1.0 - self.p)), 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p}, mask={tuple(self.state.shape)}"


# ----- the model copy with on-chip dropout ---------------------------------------------------------

def _is_dropout(mod: nn.Module) -> bool:
    return type(mod) in _ELEMENTWISE or type(mod) in _CHANNELWISE


def _dropout_sites(model: nn.Module) -> list[str]:
    """The paths of the model's dropout modules that drop something (``p > 0``); refuses the others."""
    sites = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.dropout._DropoutNd) and not _is_dropout(mod) and mod.p > 0:
            raise UnsupportedOpError(f"{type(mod).__name__} in training", f"module {name!r}",
                                     [t.__name__ for t in (*_ELEMENTWISE, *_CHANNELWISE)],
                                     "its masks are not drawn on chip; use nn.Dropout")
        if _is_dropout(mod) and mod.p > 0:
            if mod.p >= 1:
                raise UnsupportedOpError(f"{type(mod).__name__}(p={mod.p}) in training", f"module {name!r}",
                                         ["nn.Dropout(p) with 0 <= p < 1"], "it drops every element")
            sites.append(name)
    return sites


def _input_shapes(model: nn.Module, sites: list[str], example_inputs: tuple) -> dict[str, list[tuple]]:
    """The shapes of the inputs each dropout site sees in one forward of a copy on the example inputs
    (eval mode, without gradients: nothing of the model changes)."""
    probe = copy.deepcopy(model).eval()
    shapes: dict[str, list[tuple]] = {name: [] for name in sites}
    mods = dict(probe.named_modules())
    handles = [mods[name].register_forward_pre_hook(
        lambda _m, args, name=name: shapes[name].append(tuple(args[0].shape))) for name in sites]
    try:
        with torch.no_grad():
            probe(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    return shapes


def _mask_shape(mod: nn.Module, name: str, shapes: list[tuple]) -> tuple[int, ...]:
    """The mask of one site: the input's shape, or ``(N, C, 1, ...)`` for channel-wise dropout."""
    if len(shapes) != 1:
        raise UnsupportedOpError(f"{type(mod).__name__} called {len(shapes)} times in one forward",
                                 f"module {name!r}", ["one call per dropout module"],
                                 "each call draws its own mask: give each call its own nn.Dropout")
    shape = shapes[0]
    rank = _CHANNELWISE.get(type(mod))
    if rank is None:
        return shape
    if len(shape) != rank:
        raise UnsupportedOpError(f"{type(mod).__name__} on a {len(shape)}-d input", f"module {name!r}",
                                 [f"{type(mod).__name__} on batched {rank}-d inputs (N, C, ...)"])
    return shape[:2] + (1,) * (rank - 2)


def initial_state(shape: tuple[int, ...], seed: int, site: int) -> torch.Tensor:
    """A site's first state: uniform int32 values from ``numpy.random.default_rng([seed, site])``."""
    values = np.random.default_rng([seed, site]).integers(-(2 ** 31), 2 ** 31, size=shape, dtype=np.int64)
    return torch.from_numpy(values.astype(np.int32))


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def with_on_chip_dropout(model: nn.Module, example_inputs: tuple, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose dropout modules are ``OnChipDropout`` (``model`` itself when it has none):
    the model the training step is traced from, and in float torch the reference with the same masks."""
    sites = _dropout_sites(model)
    if not sites:
        return model
    shapes = _input_shapes(model, sites, tuple(example_inputs))
    out = copy.deepcopy(model)
    for index, name in enumerate(sites):
        mod = out.get_submodule(name)
        mask = _mask_shape(mod, name, shapes[name])
        _set_submodule(out, name, OnChipDropout(mod.p, initial_state(mask, seed, index)))
    return out


def state_name(path: str) -> str:
    """The on-chip name of the state of the ``OnChipDropout`` at ``path``: ``dropout:<path>``."""
    return f"{RANDOM_STATE_PREFIX}{path}"


def rename_states(gm: torch.fx.GraphModule, model: nn.Module) -> None:
    """Give the traced step's dropout states (placeholders and outputs) their on-chip names ``dropout:<path>``."""
    names = {f"{path}.{STATE_BUFFER}": state_name(path)
             for path, mod in model.named_modules() if isinstance(mod, OnChipDropout)}
    if not names:
        return
    for node in gm.graph.nodes:
        ph = node_info(node).placeholder
        if node.op == "placeholder" and ph is not None and ph.role == "buffer" and ph.name in names:
            set_node_info(node, placeholder=dataclasses.replace(ph, name=names[ph.name]))
    info = graph_info(gm)
    outputs = tuple(dataclasses.replace(r, name=names[r.name]) if r.kind == "buffer" and r.name in names else r
                    for r in info.outputs)
    gm.meta[META_KEY] = dataclasses.replace(info, outputs=outputs)


# ----- F.dropout in a forward: refused ----------------------------------------------------------

def _caller_source() -> str:
    """``model.py:12: code`` of the innermost frame outside torch and fx2fpga (the user's line being traced)."""
    for frame in reversed(traceback.extract_stack()):
        if not frame.filename.startswith(_LIBRARY_DIRS):
            return f"{Path(frame.filename).name}:{frame.lineno}: {(frame.line or '').strip()}"
    return ""


def _refuse_random(op: str):
    def decomposition(*args, **kwargs):
        raise UnsupportedOpError(op, _caller_source(), ["nn.Dropout", "nn.Dropout1d", "nn.Dropout2d", "nn.Dropout3d"],
                                 "random masks drawn in a forward (F.dropout(x, p, training=True), torch.bernoulli) "
                                 "are not supported: use an nn.Dropout module, whose masks come from an on-chip "
                                 "generator in training (docs/layers/dropout.md)")
    return decomposition


DECOMPOSITIONS = {op: _refuse_random(f"aten.{op.__name__}") for op in (
    aten.bernoulli.p, aten.bernoulli.default, aten.bernoulli.Tensor, aten.native_dropout.default)}
