"""Common subexpressions dropped after lowering (``fx2fpga/lower/cse.py``)."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from fx2fpga_runtime.emulator import Emulator
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Access, Affine, Buffer, Kernel, Loop, Program, Stage

import fx2fpga
from fx2fpga.lower import cse

FMT = Fixed(16, 6)


def _kernel(write_between: bool) -> Kernel:
    """``a = relu(x)``, (optionally ``x = -x`` in place), ``b = relu(x)``, ``y = a + b`` over 8 values."""
    i = (Affine.var("i"),)
    loops = (Loop("i", 8),)
    buffers = {n: Buffer(n, (8,), FMT, role) for n, role in (("x", "input"), ("a", "temp"), ("b", "temp"),
                                                              ("y", "output"))}
    stages = [Stage("relu_a", "relu", loops, Access("a", i), (Access("x", i),)),
              Stage("relu_b", "relu", loops, Access("b", i), (Access("x", i),)),
              Stage("sum", "add", loops, Access("y", i), (Access("a", i), Access("b", i)))]
    if write_between:
        stages.insert(1, Stage("negate", "neg", loops, Access("x", i), (Access("x", i),)))
    return Kernel("k", buffers, {"infer": Program("infer", ["x"], ["y"], stages)}, [])


def _infer(kernel: Kernel, x: np.ndarray) -> np.ndarray:
    return Emulator(kernel).run("infer", {"x": FMT.quantize(x)})["y"]


def test_a_repeated_stage_is_dropped_and_its_readers_read_its_twin():
    x = np.arange(-4, 4) * 0.75  # exact in fixed<16,6>
    before = _infer(_kernel(False), x)
    k = cse.run(_kernel(False))
    assert [s.name for s in k.programs["infer"].stages] == ["relu_a", "sum"] and "b" not in k.buffers
    assert k.programs["infer"].stages[1].ins[1].buffer == "a" and k.meta["aliases"] == {"b": "a"}
    assert np.array_equal(_infer(k, x), before) and np.array_equal(FMT.to_float(before), 2 * np.maximum(x, 0))


def test_a_stage_after_a_write_to_its_operand_is_not_a_twin():
    k = cse.run(_kernel(True))
    assert [s.name for s in k.programs["infer"].stages] == ["relu_a", "negate", "relu_b", "sum"]


def test_cross_entropy_compares_the_targets_once(mlp_example):
    """Cross-entropy's forward and backward each compare the targets with the classes: one stage does it now,
    read by both."""
    k = fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, until="lower",
                        train=fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, 0.1))
    stages = k.programs["train_step"].stages
    eqs = [s for s in stages if s.op == "eq"]
    assert [s.name for s in eqs] == ["train_eq"]
    assert [s.name for s in stages if "train_eq" in {a.buffer for a in s.ins}] == ["train_where", "train_where_1"]
