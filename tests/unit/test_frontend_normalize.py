"""Tracing and lowering: graph roles, plain functions, views as index maps, constant folding."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import fx2fpga
from fx2fpga.handoffs import OutputRole, graph_info, placeholder
from fx2fpga.lower import supported_ops


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_trace_training_graph_roles_and_outputs():
    gm = fx2fpga.trace(MLP(), (torch.randn(4, 8),), fx2fpga.SGD(F.cross_entropy, torch.tensor([0, 1, 2, 0])))
    roles = [(placeholder(n).role, placeholder(n).name) for n in gm.graph.nodes if n.op == "placeholder"]
    assert roles == [("param", "fc1.weight"), ("param", "fc1.bias"), ("param", "fc2.weight"),
                     ("param", "fc2.bias"), ("hyper", "lr"), ("input", "x"), ("target", "y")]
    assert graph_info(gm).program == "train_step"
    assert graph_info(gm).outputs == (OutputRole("loss"), OutputRole("param", "fc1.weight"),
                                      OutputRole("param", "fc1.bias"), OutputRole("param", "fc2.weight"),
                                      OutputRole("param", "fc2.bias"))
    ops = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert "aten.mm.default" in ops and "aten.nll_loss_forward.default" not in ops


def test_inference_graph_is_core_aten():
    gm = fx2fpga.trace(MLP(), (torch.randn(4, 8),))
    ops = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert ops <= {"aten.permute.default", "aten.addmm.default", "aten.relu.default"}
    assert all(f"aten.{o.split('.')[1]}" in " ".join(supported_ops()) for o in ops)


def test_plain_function_compiles_and_matches_float():
    def f(x):
        return torch.relu(x * 0.5 - 1.0) + x.sum(dim=1, keepdim=True) / 4

    x = torch.randn(3, 4)
    k = fx2fpga.compile(f, (x,), name="f").load("emu")
    assert np.abs(k.infer(x.numpy()) - f(x).numpy()).max() < 4 * 2.0 ** -10


class Views(nn.Module):
    """Reshapes, transposes, slices and broadcasts: all index maps, no data movement."""

    def forward(self, x):  # x: (2, 3, 4)
        a = x.permute(0, 2, 1).reshape(2, 12)      # merge two dims of a permuted view
        b = a[:, 1::2] * 2                          # a strided slice
        c = b.reshape(2, 2, 3).transpose(1, 2)      # split, then swap
        return c.sum(dim=2) + x[:, 0, :3]           # broadcasted add of a selected row


def test_views_are_index_maps_and_exact():
    x = torch.randn(2, 3, 4)
    design = fx2fpga.compile(Views(), (x,), precision="fixed<20,8>")
    ops = [s.op for s in design.kernel.programs["infer"].stages]
    assert "copy" not in ops  # every view composed into an index
    out = design.load("emu").infer(x.numpy())
    assert np.abs(out - Views()(x).numpy()).max() <= 8 * 2.0 ** -12


def test_constant_folding_leaves_no_stage_for_constants():
    sgd = fx2fpga.SGD(F.cross_entropy, torch.tensor([0, 1, 2, 0]))
    design = fx2fpga.compile(MLP(), (torch.randn(4, 8),), train=sgd)
    kernel = design.kernel
    consts = [b for b in kernel.buffers.values() if b.role == "const" and not b.name.endswith("_table")]
    assert consts and all(b.init is not None for b in consts)
    # the loss seed (1) times -1/N folds into one constant: -0.25
    values = {tuple(b.fmt.to_float(np.array(b.init))) for b in consts}
    assert (-0.25,) in values
    assert kernel.meta["num_classes"] == {"train_y": 3}


def test_params_updated_in_place():
    sgd = fx2fpga.SGD(F.cross_entropy, torch.tensor([0, 1, 2, 0]))
    design = fx2fpga.compile(MLP(), (torch.randn(4, 8),), train=sgd)
    stages = design.kernel.programs["train_step"].stages
    writers = {s.out.buffer for s in stages}
    assert set(design.kernel.params) - {"lr"} <= writers and "lr" not in writers  # the lr register is read only
    assert not [s for s in stages if s.origin.startswith("update of")]  # no fallback copy stages
    updates = [s for s in stages if s.out.buffer in design.kernel.params]
    # plain SGD: each update is its gradient's reduction, started from the parameter (lower/update_fold.py)
    assert sorted(s.op for s in updates) == ["mac", "mac", "sum", "sum"] and all(s.ins[-1] == s.out for s in updates)
    unfolded = fx2fpga.compile(MLP(), (torch.randn(4, 8),), train=sgd, fold_updates=False)
    updates = [s for s in unfolded.kernel.programs["train_step"].stages if s.out.buffer in unfolded.kernel.params]
    assert all(s.ins[0].buffer == s.out.buffer for s in updates)
    assert [s.op for s in updates] == ["msub"] * len(updates)  # p - lr * g, fused (passes/fuse.py)
