"""The PyTorch face: ``FPGAModule`` (an nn.Module over a kernel), ``fx2fpga.fit`` (a DataLoader loop) and
``torch.compile(backend="fx2fpga")`` (a Dynamo backend found by its entry point)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fx2fpga
from fx2fpga.errors import UnsupportedOpError

from ..error_bounds import propagate


@pytest.fixture(scope="module")
def mlp(mlp_example):
    """The digits MLP's training kernel (batch 16) and its model."""
    torch.manual_seed(0)
    model = mlp_example.DigitsMLP()
    sgd = fx2fpga.SGD(mlp_example.loss_fn, mlp_example.example_targets, mlp_example.lr)
    return model, fx2fpga.compile(model, mlp_example.example_inputs, train=sgd, outputs="hls")


def test_forward_takes_any_number_of_rows(mlp, digits_data):
    model, design = mlp
    fpga, kernel = fx2fpga.FPGAModule(design), design.load("emu")
    x = digits_data[0][:37]  # two full batches of 16 and 5 rows padded with zeros
    got = fpga(torch.from_numpy(x))
    assert isinstance(got, torch.Tensor) and got.shape == (37, 10)
    padded = np.concatenate([x, np.zeros((11, 64))])
    want = np.concatenate([kernel.infer(padded[i:i + 16]) for i in (0, 16, 32)])[:37]
    assert np.array_equal(got.numpy(), want.astype(np.float32))
    assert np.array_equal(fpga(torch.from_numpy(x[:16])).numpy(), kernel.infer(x[:16]).astype(np.float32))


def test_train_step_returns_the_kernels_loss_and_refuses_a_partial_batch(mlp, digits_data):
    _, design = mlp
    fpga, kernel = fx2fpga.FPGAModule(design), design.load("emu")
    x, y = digits_data[0][:16], digits_data[1][:16]
    loss = fpga.train_step(torch.from_numpy(x), torch.from_numpy(y))
    assert isinstance(loss, torch.Tensor) and loss.shape == ()
    assert float(loss) == np.float32(kernel.train_step(x, y))
    with pytest.raises(ValueError, match="batches of exactly 16"):
        fpga.train_step(torch.from_numpy(x[:5]), torch.from_numpy(y[:5]))


def test_state_dict_round_trips_under_the_models_keys(mlp, digits_data):
    model, design = mlp
    fpga = fx2fpga.FPGAModule(design)
    saved = fpga.state_dict()
    assert list(saved) == list(model.state_dict())
    assert all(v.dtype == torch.float32 and v.shape == model.state_dict()[k].shape for k, v in saved.items())
    fpga.train_step(torch.from_numpy(digits_data[0][:16]), torch.from_numpy(digits_data[1][:16]))
    assert not torch.equal(fpga.state_dict()["fc1.weight"], saved["fc1.weight"])  # the step changed them
    fpga.load_state_dict(saved)
    assert all(torch.equal(fpga.state_dict()[k], v) for k, v in saved.items())
    with pytest.raises(RuntimeError, match="Unexpected key.*fc9.weight"):
        fpga.load_state_dict({**saved, "fc9.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="Missing key.*fc2.bias"):
        fpga.load_state_dict({k: v for k, v in saved.items() if k != "fc2.bias"})


def test_to_torch_evaluates_within_the_formats_bound_of_the_kernel(mlp, digits_data):
    model, design = mlp
    fpga = fx2fpga.FPGAModule(design)
    x, y = digits_data[0][:16], digits_data[1][:16]
    for _ in range(3):
        fpga.train_step(torch.from_numpy(x), torch.from_numpy(y))
    trained = fpga.to_torch()
    assert type(trained) is type(model) and trained is not model
    k = design.kernel
    params = {b: trained.get_parameter(k.param_names[b]).detach().double().numpy() for b in k.params if b != "lr"}
    infer = k.programs["infer"]
    _, err = propagate(k, "infer", {**params, infer.inputs[0]: x})
    want = trained.double()(torch.from_numpy(x).double()).detach().numpy()
    got = fpga(torch.from_numpy(x)).double().numpy()
    bound = err[infer.outputs[0]] + 2.0 ** -24 * np.abs(want)  # plus float32 rounding of the module's output
    assert np.all(np.abs(got - want) <= bound), (np.abs(got - want).max(), bound.max())


def test_a_kernel_of_two_models_is_a_module_list(mlp_example, digits_data):
    torch.manual_seed(1)
    models = [mlp_example.DigitsMLP(), mlp_example.DigitsMLP()]
    sgd = fx2fpga.SGD(mlp_example.loss_fn, mlp_example.example_targets, [0.1, 0.05])
    design = fx2fpga.compile(models, mlp_example.example_inputs, train=sgd, outputs="hls")
    fpga, kernel = fx2fpga.FPGAModule(design), design.load("emu")
    x = digits_data[0][:20]
    got = fpga(torch.from_numpy(x))
    assert got.shape == (2, 20, 10)
    assert np.array_equal(got[:, :16].numpy(), kernel.infer(x[:16]).astype(np.float32))
    assert list(fpga.state_dict()) == [f"{i}.{k}" for i in range(2) for k in models[0].state_dict()]
    losses = fpga.train_step(torch.from_numpy(x[:16]), torch.from_numpy(digits_data[1][:16]))
    assert losses.shape == (2,)
    trained = fpga.to_torch()
    assert isinstance(trained, nn.ModuleList) and len(trained) == 2
    assert torch.equal(trained[1].fc2.bias.float(), fpga.state_dict()["1.fc2.bias"])


def test_fit_trains_every_full_batch_as_train_step_does(mlp, digits_data):
    _, design = mlp
    x, y = digits_data[0][:72], digits_data[1][:72]  # 4 full batches of 16 and one of 8 per epoch
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=16)
    fpga = fx2fpga.FPGAModule(design)
    with pytest.warns(UserWarning, match="skipped 2 batch"):
        history = fx2fpga.fit(fpga, loader, epochs=2, progress=False)
    assert history["steps"] == 8 and history["skipped"] == 2 and len(history["epoch_loss"]) == 2
    twin = design.load("emu")
    want = [twin.train_step(x[i:i + 16], y[i:i + 16]) for _ in range(2) for i in range(0, 64, 16)]
    assert np.array_equal(np.array(history["loss"]), np.array(want))
    assert np.allclose(history["epoch_loss"], [np.mean(want[:4]), np.mean(want[4:])])
    assert np.array_equal(fpga.state_dict()["fc1.weight"].numpy(), twin.get_params()["fc1.weight"].astype(np.float32))
    runner = design.load("emu")  # a runner from design.load trains the same way
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert fx2fpga.fit(runner, loader, epochs=2, progress=False)["loss"] == history["loss"]


def _compiled(model, x, **options):
    torch._dynamo.reset()
    with torch.no_grad():
        return torch.compile(model, backend="fx2fpga", options={"outputs": "hls", **options})(x)


@pytest.mark.parametrize("example", ["mlp_digits", "cnn_digits"])
def test_torch_compile_backend_equals_the_emulator(example):
    from ..conftest import load_example

    ex = load_example(example)
    model, x = ex.model.eval(), ex.example_inputs[0]
    got = _compiled(model, x)
    want = fx2fpga.compile(model, (x,), outputs="hls").load("emu").infer(x.numpy())
    assert isinstance(got, torch.Tensor) and np.array_equal(got.numpy(), want.astype(np.float32))


class _NormNet(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear: buffers (running statistics) as well as parameters."""

    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def test_torch_compile_keeps_parameters_and_buffers_on_chip_and_reloads_changed_ones():
    torch.manual_seed(2)
    model = _NormNet()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(8, 6)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="fx2fpga", options={"outputs": "hls"})
    with torch.no_grad():
        first, exact = compiled(x), model(x)
    assert np.abs(first.numpy() - exact.numpy()).max() < 2 ** -6  # the running statistics count: without them 0.26 off
    assert np.abs(model.bn.running_mean.numpy()).max() > 0.2
    with torch.no_grad():
        model.fc2.bias.add_(0.5)  # PyTorch changes a parameter: the next call loads it on chip
        second = compiled(x)
    assert np.allclose(second.numpy() - first.numpy(), 0.5, atol=2 ** -8)


class _Cumulative(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.cumsum(self.fc(x), 1)  # no lowering: the backend's error names this line


def test_torch_compile_of_an_unsupported_graph_raises_our_error_at_the_users_line():
    with pytest.raises(UnsupportedOpError) as e:
        _compiled(_Cumulative(), torch.randn(2, 4))
    assert e.value.op == "aten.cumsum.default"
    assert e.value.source.startswith("test_torch_native.py:") and "torch.cumsum" in e.value.source
    assert "aten.addmm.default" in str(e.value)  # the supported set


def test_unknown_backend_options_are_refused():
    torch._dynamo.reset()
    with pytest.raises(Exception, match="unknown options.*'lane'"):
        torch.compile(nn.Linear(2, 2), backend="fx2fpga", options={"lane": 4})(torch.randn(2, 2))
