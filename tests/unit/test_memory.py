"""Memory sharing: temps with disjoint lifetimes share arrays; results are unchanged."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from fx2fpga_runtime.runner import EmuBackend, KernelRunner

import fx2fpga
from fx2fpga.passes import estimate, memory


def test_shared_temps_give_identical_results_and_less_memory(mlp_example, digits_data):
    x_train, y_train, x_test, _ = digits_data
    sgd = fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, 0.1)
    design = fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd, share_memory=False)
    separate = copy.deepcopy(design.kernel)
    shared = memory.run(copy.deepcopy(design.kernel))
    default = fx2fpga.compile(mlp_example.model, mlp_example.example_inputs, train=sgd).kernel  # shares by default
    assert default.meta["memory"] == shared.meta["memory"] and list(default.buffers) == list(shared.buffers)
    assert shared.meta["memory"]["mem0"] == ["infer_relu", "train_relu"]  # programs never run at once
    assert all(len(holds) > 1 for holds in shared.meta["memory"].values())  # a tensor alone keeps its name
    assert "train_log" in shared.buffers
    # no two tensors held by one array are alive at the same stage
    for name, holds in shared.meta["memory"].items():
        for prog in shared.programs.values():
            alive = [set() for _ in prog.stages]
            for tensor in holds:
                uses = [i for i, s in enumerate(separate.programs[prog.name].stages)
                        if tensor in (s.out.buffer, *(a.buffer for a in s.ins))]
                for i in range(min(uses, default=0), max(uses, default=-1) + 1):
                    assert not alive[i], (name, tensor, alive[i])
                    alive[i].add(tensor)
    assert len(shared.buffers) < len(separate.buffers)
    assert estimate.resources(shared).memory_bits < estimate.resources(separate).memory_bits
    a, b = KernelRunner(separate, EmuBackend(separate)), KernelRunner(shared, EmuBackend(shared))
    for xb, yb in mlp_example.batches(x_train, y_train, 30):
        assert a.train_step(xb, yb) == b.train_step(xb, yb)
        assert np.array_equal(a.infer(x_test[:16]), b.infer(x_test[:16]))
    for k, v in a.get_params_raw().items():
        assert np.array_equal(v, b.get_params_raw()[k])


def test_a_kernel_of_several_models_shares_temps_within_one_part_of_its_pipelinable_step():
    """The lagging part of a pipelined step (the loss and the backward) runs beside the next group's forward: a temp
    of one part never shares an array with one of the other, and the logits, which cross the cut, with none."""
    from torch import nn

    from fx2fpga.passes import pipeline_groups

    x, y = torch.randn(6, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3, 1, 0])
    models = [nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)) for _ in range(4)]
    sgd = fx2fpga.SGD(F.cross_entropy, y, lr=0.1)
    separate = fx2fpga.compile(models, (x,), train=sgd, share_memory=False, outputs="rtl").kernel
    cut = pipeline_groups.loss_cut(separate, "train_step")
    stages = separate.programs["train_step"].stages

    def part(tensor):
        uses = [i for i, st in enumerate(stages) if tensor in (st.out.buffer, *(a.buffer for a in st.ins))]
        return "lead" if max(uses) < cut else "lag" if min(uses) >= cut else "both"

    shared = fx2fpga.compile(models, (x,), train=sgd, outputs="rtl").kernel.meta["memory"]
    assert shared == memory.run(copy.deepcopy(separate), {"train_step": cut}).meta["memory"]
    train = {name: [t for t in holds if t.startswith("train_")] for name, holds in shared.items()}
    assert any(len(holds) > 1 for holds in train.values())  # temps still share, within a part
    logits = stages[cut - 1].out.buffer
    assert part(logits) == "both" and not any(logits in holds for holds in shared.values())
    for holds in train.values():  # (one train temp beside inference's: programs never run at once)
        assert len(holds) < 2 or {part(t) for t in holds} in ({"lead"}, {"lag"})
    # without the cut the logits share an array with the softmax chain's temps, and so where no group runs beside
    # another: the HLS C++ alone
    assert any(logits in holds for holds in memory.run(copy.deepcopy(separate)).meta["memory"].values())
    hls = fx2fpga.compile(models, (x,), train=sgd, outputs="hls").kernel.meta["memory"]
    assert hls == memory.run(copy.deepcopy(separate)).meta["memory"]
