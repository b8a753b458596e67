"""lower/models.py: the merge of per-model kernels (names, shared inputs, facts, unification) and SGD per model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fx2fpga
from fx2fpga.handoffs import lowering_facts


def _two_models():
    torch.manual_seed(0)
    return [nn.Linear(8, 3), nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))]


def test_merge_prefixes_everything_but_the_shared_inputs():
    y = torch.tensor([0, 1, 0, 1])
    k = fx2fpga.compile(_two_models(), (torch.randn(4, 8),), train=fx2fpga.SGD(F.cross_entropy, y, lr=[0.1, 0.2]),
                        until="lower")
    shared = {"infer_input", "train_x", "train_y"}
    assert {p: prog.inputs for p, prog in k.programs.items()} == {"infer": ["infer_input"],
                                                                  "train_step": ["train_x", "train_y"]}
    assert all(b in shared or b.startswith(("m0_", "m1_")) for b in k.buffers)
    stages = [s.name for s in k.programs["train_step"].stages]
    first_m1 = next(i for i, s in enumerate(stages) if s.startswith("m1_"))
    assert all(s.startswith("m0_") for s in stages[:first_m1]) and all(s.startswith("m1_") for s in stages[first_m1:])
    assert k.params == ["m0_weight", "m0_bias", "m0_lr", "m1_b_0_weight", "m1_b_0_bias", "m1_b_2_weight",
                        "m1_b_2_bias", "m1_lr"]  # (lowering names a buffer "b_<name>" when it starts with a digit)
    assert k.param_names["m1_b_2_bias"] == "2.bias"
    facts = lowering_facts(k)
    assert set(facts.param_init) == set(k.params)
    assert facts.absmax["train_x"] > 0
    # the class counts differ (3 and 2): the runtime accepts the indices valid for both
    assert k.meta["num_classes"] == {"train_y": 2}
    assert len(k.meta["models_unified"]) == 1 and "train_y: class indices below 3" in k.meta["models_unified"][0]
    assert [(m["model"], m["lr"]) for m in k.meta["models"]] == [("Linear", 0.1), ("Sequential", 0.2)]


def test_report_says_what_was_unified():
    y = torch.tensor([0, 1, 0, 1])
    d = fx2fpga.compile(_two_models(), (torch.randn(4, 8),), train=fx2fpga.SGD(F.cross_entropy, y))
    assert "Formats unified across models: train_y: class indices below 3" in d.report
    k = d.load("emu")
    with pytest.raises(ValueError, match="class indices in 0..1"):
        k.train_step(torch.randn(4, 8).numpy(), [0, 1, 2, 0])
    assert k.infer(torch.randn(4, 8).numpy())[1].shape == (4, 2)  # outputs of two shapes: a list


def test_sgd_per_model_settings():
    sgd = fx2fpga.SGD(F.mse_loss, torch.zeros(2), lr=(0.1, 0.2), momentum=0.9, weight_decay=[0.0, 1e-4])
    assert [(s.lr, s.momentum, s.weight_decay) for s in sgd.for_models(2)] == [(0.1, 0.9, 0.0), (0.2, 0.9, 1e-4)]
    assert sgd.per_model and not fx2fpga.SGD(F.mse_loss, torch.zeros(2), lr=0.1).per_model
    with pytest.raises(ValueError, match=r"SGD\(lr=\[...\]\) has 2 values for 3 models"):
        sgd.for_models(3)
    with pytest.raises(ValueError, match=r"SGD\(lr=\[\]\)"):
        fx2fpga.SGD(F.mse_loss, torch.zeros(2), lr=[])
