"""Memory sharing: temps with disjoint lifetimes share arrays; results are unchanged."""

from __future__ import annotations

import copy

import numpy as np
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
