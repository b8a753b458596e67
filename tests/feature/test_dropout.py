"""``nn.Dropout`` in training, its masks from an on-chip LCG (``fx2fpga/frontend/dropout.py``,
``docs/layers/dropout.md``).

How each claim is checked:

- *the masks are the generator's*: the state buffer the kernel keeps (``dropout:<path>``) after each of
  3 steps equals a numpy int64 model of the LCG, and the mask each step applied (the emulator's ``lt``
  buffer) is the state it started from below the threshold; the state is updated in place (no copy);
- *the masks keep 1 - p*: over half a million draws of the generator the fraction kept is within 5
  standard deviations of ``1 - p``, and so are each element's sequence over time and the pairs of
  consecutive draws (``(1 - p)**2``);
- *within derived bounds*: one training step in emu against the same model in float64 with the same
  masks (``OnChipDropout`` in torch): every updated parameter within the first-order bound derived from
  the formats (``error_bounds.GraphBounds``), the new state equal; inference against the model in eval
  mode, and equal word for word to the kernel of the model without its dropout;
- *csim, rtl == emu*: every output and parameter word after 2 training steps and an inference (slow);
- *refused clearly*: ``F.dropout(x, p, training=True)`` in a forward, AlphaDropout, p = 1.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fx2fpga
from fx2fpga.errors import UnsupportedOpError
from fx2fpga.frontend import dropout as D
from fx2fpga.frontend import trace
from fx2fpga.handoffs import graph_info, placeholder

from .._replay import graph_args
from ..conftest import assert_backend_equals_emu
from ..error_bounds import outputs_within_bounds
from .test_conv import _float_params, check_against_float

P = 0.25


class DropoutMLP(nn.Module):
    """Linear(6, 8) -> ReLU -> Dropout(p) -> Linear(8, 3)."""

    def __init__(self, dropout: nn.Module):
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(6, 8), dropout, nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def _problem(dropout: nn.Module):
    torch.manual_seed(21)
    model = DropoutMLP(dropout)
    gen = torch.Generator().manual_seed(22)
    return model, torch.randn(8, 6, generator=gen) * 1.5, torch.randint(0, 3, (8,), generator=gen)


def _sgd(y, **options):
    return fx2fpga.SGD(F.cross_entropy, y, lr=0.1, **options)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    model, x, y = _problem(nn.Dropout(P))
    # the bounds read intermediate tensors by name after a call: one array per tensor
    design = fx2fpga.compile(model, (x,), train=_sgd(y), share_memory=False,
                             out_dir=tmp_path_factory.mktemp("dropout") / "dropout")
    return model, x, y, design


def _mask_buffer(design, state: str) -> str:
    """The step's keep mask: the comparison that reads the state buffer."""
    return next(s.out.buffer for s in design.kernel.programs["train_step"].stages
                if s.op == "lt" and s.ins[0].buffer == state)


def test_the_masks_are_the_lcg_over_three_steps(mlp):
    model, x, y, design = mlp
    emu = design.load("emu")
    start = emu.get_params()["dropout:drop"]
    assert start.shape == (8, 8) and np.array_equal(start, D.initial_state((8, 8), seed=0, site=0).numpy())
    state = {v: k for k, v in design.kernel.param_names.items()}["dropout:drop"]
    assert str(design.kernel.buffers[state].fmt) == "fixed<32,32,TRN,WRAP>"
    threshold = D.keep_threshold(P)
    writers = [s.op for s in design.kernel.programs["train_step"].stages if s.out.buffer == state]
    assert writers == ["add"]  # A * state + C written in place
    for step in range(1, 4):
        emu.train_step(x.numpy(), y.numpy())
        assert np.array_equal(emu.get_params()["dropout:drop"], D.lcg_reference(start, step)), step
        mask = emu.backend.emulator.mem[_mask_buffer(design, state)].astype(bool)
        assert np.array_equal(mask, D.lcg_reference(start, step - 1) < threshold), step  # the state before the step
        assert mask.any() and not mask.all()


def test_the_masks_keep_one_minus_p():
    draws = D.lcg_reference(D.initial_state((256, 256), seed=3, site=0).numpy().astype(np.int64), 1)
    kept = []
    for _ in range(8):
        kept.append(draws < D.keep_threshold(P))
        draws = D.lcg_reference(draws, 1)
    kept = np.stack(kept)  # (steps, 256, 256)
    q = round((1 - P) * 2**32) / 2**32  # exactly the fraction of 32-bit states below the threshold
    assert q == 1 - P

    def within(fraction: float, prob: float, n: int) -> bool:
        return abs(fraction - prob) <= 5 * np.sqrt(prob * (1 - prob) / n)

    assert within(kept.mean(), q, kept.size)
    assert all(within(k.mean(), q, k.size) for k in kept)  # each step's mask
    pairs = kept[1:] & kept[:-1]  # consecutive draws of one element: independent
    assert within(pairs.mean(), q * q, pairs.size)
    one = D.lcg_reference(np.array([12345]), 0)
    series = []
    for _ in range(20000):  # one element's sequence over time
        one = D.lcg_reference(one, 1)
        series.append(one[0] < D.keep_threshold(P))
    assert within(np.mean(series), q, len(series))


def _float_step(reference: nn.Module, x, y, lr: float):
    """PyTorch's float64 training step of the model with on-chip dropout: (loss, new state by on-chip name)."""
    ref = copy.deepcopy(reference).double().train()
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    loss = F.cross_entropy(ref(x.double()), y)
    loss.backward()
    opt.step()
    names = {f"{path}.{D.STATE_BUFFER}": D.state_name(path)
             for path, mod in ref.named_modules() if isinstance(mod, D.OnChipDropout)}
    return loss.item(), {names.get(k, k): v.detach() for k, v in ref.state_dict().items()}


def check_step_against_float(design, reference, x, y, runner) -> dict[str, float]:
    """One ``train_step`` in emu against ``reference`` (the model with ``OnChipDropout``, the kernel's masks)
    in float64, as ``test_conv.check_against_float``: the new states equal, the rest within the derived
    first-order bound with the emulator's decisions; decisions taken otherwise within their bounds.
    Returns the largest error / bound per output."""
    gm = trace(reference, (x,), design.train)
    roles = graph_info(gm).outputs
    loss = runner.train_step(x.numpy(), y.numpy())
    got = runner.get_params()
    values = [loss if r.kind == "loss" else got[r.name] for r in roles]
    torch_loss, torch_state = _float_step(reference, x, y, design.train.lr)
    wanted = [torch_loss if r.kind == "loss" else torch_state[r.name].numpy() for r in roles]
    args = graph_args(design.kernel, gm, x, y, quantized=False)
    mem = runner.backend.emulator.mem
    return outputs_within_bounds(design.kernel, gm, args, mem, roles, values, wanted)


def test_step_and_inference_within_derived_bounds(mlp):
    model, x, y, design = mlp
    reference = D.with_on_chip_dropout(model, (x,), seed=0)
    assert isinstance(model.drop, nn.Dropout) and not list(model.buffers())  # the user's model is not changed
    emu = design.load("emu")
    emu.set_params(_float_params(model))
    step = check_step_against_float(design, reference, x, y, emu)
    assert set(step) == {"loss"} | {f"param:{n}" for n, _ in model.named_parameters()}
    assert all(0 < r <= 1 for r in step.values()), step
    emu.set_params(_float_params(model))
    fwd = check_against_float(design, model, x, y, train=False, runner=emu)
    assert 0 < fwd["output"] <= 1, fwd


def test_inference_is_the_model_without_dropout(mlp):
    model, x, y, design = mlp
    infer = design.kernel.programs["infer"]
    assert not any(design.kernel.buffers[a.buffer].kind == "random" for s in infer.stages for a in s.ins)
    plain = copy.deepcopy(model)
    plain.drop = nn.Identity()
    other = fx2fpga.compile(plain, (x,))
    want = other.load("emu").infer(x.numpy())
    assert np.array_equal(design.load("emu").infer(x.numpy()), want)


def test_state_dict_round_trip_leaves_the_generator_out(mlp):
    model, x, y, design = mlp
    fpga = fx2fpga.FPGAModule(design, "emu")
    assert set(fpga.state_dict()) == set(model.state_dict())
    fpga.train_step(x, y)
    emu = fpga.kernel
    params = emu.get_params()
    emu.set_params(params)  # the state (integers up to 2**31) survives a round trip through floats
    assert np.array_equal(emu.get_params()["dropout:drop"], params["dropout:drop"])
    trained = fpga.to_torch()
    assert isinstance(trained.drop, nn.Dropout)
    fpga.load_state_dict(fpga.state_dict())


def _initial_state(model, x, y, **options) -> torch.Tensor:
    gm = trace(model, (x,), _sgd(y, **options))
    return next(placeholder(n).value for n in gm.graph.nodes
                if n.op == "placeholder" and placeholder(n).name == "dropout:drop")


def test_the_seed_chooses_the_masks():
    model, x, y = _problem(nn.Dropout(P))
    first, again = _initial_state(model, x, y), _initial_state(model, x, y, dropout_seed=0)
    assert first.dtype == torch.int32 and torch.equal(first, again)
    assert not torch.equal(first, _initial_state(model, x, y, dropout_seed=1))


class ChannelDropout(nn.Module):
    """Conv2d(1, 2, 3) -> ReLU -> Dropout2d(p) -> Linear(2 * 4 * 4, 3)."""

    def __init__(self):
        super().__init__()
        self.conv, self.drop, self.fc = nn.Conv2d(1, 2, 3, padding=1), nn.Dropout2d(0.5), nn.Linear(32, 3)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.conv(x))).flatten(1))


def test_dropout2d_drops_whole_channels_within_derived_bounds():
    torch.manual_seed(23)
    model = ChannelDropout()
    gen = torch.Generator().manual_seed(24)
    x, y = torch.randn(4, 1, 4, 4, generator=gen), torch.randint(0, 3, (4,), generator=gen)
    design = fx2fpga.compile(model, (x,), train=_sgd(y), share_memory=False)
    emu = design.load("emu")
    assert emu.get_params()["dropout:drop"].shape == (4, 2, 1, 1)
    emu.set_params(_float_params(model))
    step = check_step_against_float(design, D.with_on_chip_dropout(model, (x,)), x, y, emu)
    assert all(0 < r <= 1 for r in step.values()), step


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csim", "rtl"])
def test_backend_equals_emu_word_for_word(mlp, backend):
    model, x, y, design = mlp
    flipped = x.numpy()[:, ::-1].copy()
    assert_backend_equals_emu(design, backend, [("train_step", [x.numpy(), y.numpy()]),
                                                ("train_step", [flipped, y.numpy()]),
                                                ("infer", [x.numpy() * 2])], params=_float_params(model))


class FunctionalDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(F.dropout(x, 0.5, training=True))


@pytest.mark.parametrize("train", [True, False])
def test_functional_dropout_is_refused_clearly(train):
    _, x, y = _problem(nn.Dropout(P))
    with pytest.raises(UnsupportedOpError) as e:
        fx2fpga.compile(FunctionalDropout(), (x,), train=_sgd(y) if train else None, until="trace")
    assert e.value.op == "aten.bernoulli.p"
    assert "test_dropout.py" in e.value.source and "F.dropout(x, 0.5, training=True)" in e.value.source
    assert "use an nn.Dropout module" in str(e.value)


@pytest.mark.parametrize("layer, what", [(nn.AlphaDropout(0.2), "AlphaDropout in training"),
                                         (nn.Dropout(1.0), "Dropout(p=1.0) in training")])
def test_other_dropouts_are_refused_clearly(layer, what):
    model, x, y = _problem(layer)
    with pytest.raises(UnsupportedOpError) as e:
        fx2fpga.compile(model, (x,), train=_sgd(y), until="trace")
    assert e.value.op == what and e.value.source == "module 'drop'"
