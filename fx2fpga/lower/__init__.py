"""Lowering: traced ATen graphs -> kernel IR stages, by rule tables per op family.

``RULES`` maps each supported ATen op to its rule; an op not in it raises ``UnsupportedOpError``
naming the op, the model's line and ``supported_ops()``.
"""

from __future__ import annotations

import torch
from fx2fpga_runtime.ir import Kernel

from ..handoffs import graph_info
from . import cse, elementwise, layers, reductions, shapes, update_fold
from .graph import GraphLowering, KernelBuilder, supported_op_names
from .model_axis import stack, stackable
from .models import ModelEntry, describe_model, merge

RULES: dict = {**reductions.RULES, **elementwise.RULES, **shapes.RULES, **layers.RULES}


def supported_ops() -> list[str]:
    """Names of the ATen ops that lower to the kernel IR."""
    return supported_op_names(RULES)


def run(graphs: list[torch.fx.GraphModule], name: str, fold_updates: bool = True) -> Kernel:
    """Lower traced graphs (inference and/or training step) into one kernel, without repeated stages
    (``cse.py``); ``fold_updates``: plain SGD's update folded into its gradient's reduction (``update_fold.py``)."""
    kb = KernelBuilder(name)
    for gm in graphs:
        info = graph_info(gm)
        kb.programs[info.program] = GraphLowering(kb, gm, info.program, info.prefix, RULES).run()
    kernel = cse.run(kb.build())
    return update_fold.run(kernel) if fold_updates else kernel


def run_models(graphs: list[list[torch.fx.GraphModule]], name: str, entries: list[ModelEntry],
               stack_models: bool = True, fold_updates: bool = True) -> Kernel:
    """Lower each model's graphs alone, then join them into one kernel: stacked on a model axis
    when they share one architecture and ``stack_models`` (``lower/model_axis.py``), else merged
    to run one after another (``lower/models.py``)."""
    kernels = [run(g, f"{name}_m{i}", fold_updates) for i, g in enumerate(graphs)]
    if stack_models and stackable(kernels):
        return stack(kernels, name, entries)
    return merge(kernels, name, entries)


__all__ = ["RULES", "describe_model", "run", "run_models", "supported_ops"]
