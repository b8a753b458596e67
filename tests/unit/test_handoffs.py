"""The typed hand-offs between the steps (``fx2fpga.handoffs``): what the front end leaves on the
traced graph, and what lowering hands to quantize."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fx2fpga
from fx2fpga import lower
from fx2fpga.handoffs import (
    LOWERING_KEY,
    GraphInfo,
    LoweringFacts,
    OutputRole,
    ValueProfile,
    graph_info,
    lowering_facts,
    node_info,
    placeholder,
    profile_of,
)
from fx2fpga.passes import quantize


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_momentum_training_graph_roles():
    """Placeholders: params, then the velocities (states, zero), the learning rate, then x and y; outputs: the loss,
    the new params, then the new velocities, each a typed role naming its tensor."""
    model, x, y = _mlp(), torch.randn(5, 3), torch.randn(5, 2)
    gm = fx2fpga.trace(model, (x,), fx2fpga.SGD(F.mse_loss, y, lr=0.05, momentum=0.9))
    info = graph_info(gm)
    assert info.program == "train_step" and info.prefix == "train" and info.lr == 0.05
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert info.outputs == (OutputRole("loss"), *[OutputRole("param", n) for n in names],
                            *[OutputRole("state", f"momentum:{n}") for n in names])
    assert [str(r) for r in info.outputs][:2] == ["loss", "param:0.weight"]
    assert [r.persistent for r in info.outputs] == [False] + [True] * 8
    phs = [placeholder(n) for n in gm.graph.nodes if n.op == "placeholder"]
    assert [(p.role, p.name) for p in phs] == ([("param", n) for n in names]
                                               + [("state", f"momentum:{n}") for n in names]
                                               + [("hyper", "lr"), ("input", "x"), ("target", "y")])
    assert torch.equal(phs[0].value, model[0].weight.detach())
    assert all(not p.value.any() for p in phs[4:8]) and phs[9].value is None and phs[10].value is None
    assert abs(float(phs[8].value) - 0.05) < 1e-8  # the learning rate register's initial value (a float32)


def test_inference_graph_info_and_buffer_outputs():
    """Inference: one ``output`` role; a BatchNorm training step: its running stats are ``buffer``
    outputs, and its variance and 1/std are marked statistics (only those)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU())
    x = torch.randn(6, 3)
    inf = graph_info(fx2fpga.trace(model, (x,)))
    assert inf == GraphInfo("infer", (OutputRole("output"),)) and inf.prefix == "infer"
    gm = fx2fpga.trace(model, (x,), fx2fpga.SGD(F.mse_loss, torch.randn(6, 4)))
    outs = graph_info(gm).outputs
    assert [r for r in outs if r.kind == "buffer"] == [OutputRole("buffer", n) for n in (
        "1.running_mean", "1.running_var", "1.num_batches_tracked")]
    stats = [n for n in gm.graph.nodes if node_info(n).statistic]
    assert stats and {str(n.target) for n in stats} <= {"aten.mul.Tensor", "aten.sum.dim_IntList", "aten.add.Tensor",
                                                         "aten.rsqrt.default"}
    assert any(str(n.target) == "aten.rsqrt.default" for n in stats)


def test_profile_ranges_are_the_float_values():
    """Each float node's profile is the exact min, max and largest magnitude of its value."""
    model, x = _mlp(), torch.randn(7, 3)
    gm = fx2fpga.trace(model, (x,))
    with torch.no_grad():
        h = model[0](x)
        r, out = torch.relu(h), model(x)
    nodes = {str(n.target): n for n in gm.graph.nodes if n.op == "call_function"}
    relu = profile_of(nodes["aten.relu.default"])
    assert relu == ValueProfile(float(r.min()), float(r.max()), float(r.abs().max())) and relu.min >= 0
    output = next(n for n in gm.graph.nodes if n.op == "output").args[0][0]
    assert profile_of(output).absmax == pytest.approx(float(out.abs().max()), rel=1e-6)
    assert profile_of(3.0) is None and node_info("not a node").placeholder is None


def test_profile_widens_over_runs():
    p = ValueProfile().widened(-1.0, 2.0, 2.0).widened(-0.5, 3.0, 3.0)
    assert p == ValueProfile(-1.0, 3.0, 3.0)
    assert ValueProfile() == ValueProfile(math.inf, -math.inf, 0.0)


def test_lowering_facts_reach_quantize_and_not_the_json():
    """Lowering hands quantize each buffer's profiled range; a wider range there widens the format
    by exactly the bits it needs; quantize takes the facts off the kernel before kernel.json."""
    model, x = _mlp(), torch.randn(5, 3)
    gm = fx2fpga.trace(model, (x,))
    kernel = lower.run([gm], "k")
    facts = lowering_facts(kernel)
    assert isinstance(facts, LoweringFacts) and set(facts.param_init) == set(kernel.params)
    out = kernel.programs["infer"].outputs[0]
    assert out == "infer_output"  # renamed; the range went with it
    out_node = next(n for n in gm.graph.nodes if n.op == "output").args[0][0]
    assert facts.absmax[out] == profile_of(out_node).absmax

    precision = quantize.Precision.from_spec("fixed<16,6>")
    plain = quantize.run(lower.run([gm], "k"), precision)
    assert LOWERING_KEY not in plain.meta and plain.buffers[out].fmt.int_bits == 6
    facts.absmax[out] = 1000.0  # log2 -> 9, + sign + margin bits
    wide = quantize.run(kernel, precision)
    assert wide.buffers[out].fmt.int_bits == 9 + 2 + precision.range_margin_bits
    assert wide.buffers[out].fmt.frac_bits == plain.buffers[out].fmt.frac_bits
    assert LOWERING_KEY not in json.loads(wide.to_json())["meta"]
