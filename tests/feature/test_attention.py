"""A small self-attention block trains on chip: embedding, LayerNorm, attention (softmax of q k^T, times v), a
LayerNorm and a residual MLP, mean pooling and a linear head, 300 SGD steps in emu next to float training from
the same start and batches; csim and rtl equal emu word for word. The default lanes fall back to what fits."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fx2fpga
import fx2fpga.errors

from ..conftest import assert_backend_equals_emu

VOCAB, DIM, TOKENS, BATCH = 8, 8, 6, 16


class AttentionBlock(nn.Module):
    """Embedding -> LayerNorm, one attention head (residual) -> LayerNorm, MLP (residual) -> mean over tokens
    -> Linear (a pre-norm transformer block)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.q, self.k, self.v = (nn.Linear(DIM, DIM, bias=False) for _ in range(3))
        self.mlp = nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Linear(16, DIM))
        self.head = nn.Linear(DIM, 2)

    def forward(self, idx):
        h = self.emb(idx)
        a = self.norm1(h)
        att = torch.softmax(self.q(a) @ self.k(a).transpose(1, 2) * DIM**-0.5, dim=-1)
        h = h + att @ self.v(a)
        h = h + self.mlp(self.norm2(h))
        return self.head(h.mean(1))


def batch(rng, n: int = BATCH):
    """Token sequences; the class: does token 3 occur more often than token 5 (attention must count)."""
    idx = rng.integers(0, VOCAB, (n, TOKENS))
    return idx, ((idx == 3).sum(1) > (idx == 5).sum(1)).astype(np.int64)


@pytest.fixture(scope="module")
def attention():
    torch.manual_seed(0)
    model = AttentionBlock()
    idx, y = batch(np.random.default_rng(0))
    sgd = fx2fpga.SGD(F.cross_entropy, torch.from_numpy(y), lr=0.1)
    # one lane per stage: at the default 4, the HLS estimate's one multiplier per lane and stage is over the
    # pynq-z1's 220 DSP blocks (374)
    return model, fx2fpga.compile(model, (torch.from_numpy(idx),), train=sgd, lanes=1)


def test_300_steps_train_as_float_does(attention):
    model, design = attention
    fpga = fx2fpga.FPGAModule(design)
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    rng = np.random.default_rng(1)
    fixed, flt = [], []
    for _ in range(300):
        idx, y = (torch.from_numpy(a) for a in batch(rng))
        fixed.append(float(fpga.train_step(idx, y)))
        opt.zero_grad()
        loss = F.cross_entropy(ref(idx), y)
        loss.backward()
        opt.step()
        flt.append(loss.item())
    idx, y = (torch.from_numpy(a) for a in batch(rng, 512))
    acc_fixed = float((fpga(idx).argmax(1) == y).float().mean())
    with torch.no_grad():
        acc_float = float((ref(idx).argmax(1) == y).float().mean())
    assert np.mean(fixed[-50:]) < 0.25 * np.mean(fixed[:50])  # it learned the task
    assert acc_float > 0.9 and acc_fixed >= acc_float - 0.03  # within 3 points of float
    assert abs(np.mean(fixed[-50:]) - np.mean(flt[-50:])) <= 0.1 * np.mean(flt[-50:]) + 0.005


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim", "rtl"])
def test_attention_kernel_equals_emu_word_for_word(attention, backend):
    _, design = attention
    rng = np.random.default_rng(2)
    (a, ya), (b, yb) = batch(rng), batch(rng)
    assert_backend_equals_emu(design, backend, [("infer", [a]), ("train_step", [a, ya]), ("train_step", [b, yb]),
                                                ("infer", [b])])


def test_default_lanes_fall_back_to_the_most_that_fit_and_say_so():
    torch.manual_seed(0)
    model = AttentionBlock()
    idx, y = batch(np.random.default_rng(0))
    sgd = fx2fpga.SGD(F.cross_entropy, torch.from_numpy(y), lr=0.1)
    with pytest.raises(fx2fpga.errors.ResourceBudgetError, match="DSP: needs 374, pynq-z1 has 220"):
        fx2fpga.compile(model, (torch.from_numpy(idx),), train=sgd, lanes=4, outputs="hls")
    design = fx2fpga.compile(model, (torch.from_numpy(idx),), train=sgd, outputs="hls")  # lanes by default
    assert max(st.lanes for st in design.kernel.stages()) == 2
    assert "lanes: 2 per stage (the default 4 is over the pynq-z1's budget" in design.report
