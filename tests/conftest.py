"""Shared fixtures: the digits data and the compiled digits MLP (compiled once per session)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def assert_backend_equals_emu(design, backend: str, sequence, params=None, after_call=None):
    """Run ``(command, arrays)`` calls on emu and on ``backend`` from the same start (``params``:
    float parameters set on both first): every output word equal, and after each call every
    parameter word. ``after_call(command, runner)`` checks the backend's runner right after each
    call (before the parameters are read back). Returns the emulator runner."""
    emu = design.load("emu")
    with design.load(backend) as other:
        if params is not None:
            emu.set_params(params, partial=True)
            other.set_params(params, partial=True)
        for command, arrays in sequence:
            raw = emu._quantize_inputs(command, arrays)
            want, got = emu.call_raw(command, raw), other.call_raw(command, raw)
            if after_call is not None:
                after_call(command, other)
            assert want.keys() == got.keys()
            for name in want:
                assert np.array_equal(want[name], got[name]), (command, name)
            p_emu, p_other = emu.get_params_raw(), other.get_params_raw()
            assert p_emu.keys() == p_other.keys()
            for name in p_emu:
                assert np.array_equal(p_emu[name], p_other[name]), (command, name)
    return emu


def exact_cycles(design):
    """An ``after_call`` for ``assert_backend_equals_emu`` on "rtl": each call took the cycles the schedule says."""
    cycles = design.rtl_cycles()

    def check(command, runner):
        assert runner.backend.last_cycles == cycles[command], command
    return check


def small_mlp(lanes, sizes=(8, 6, 3), batch: int = 4, **options):
    """A ReLU MLP of ``sizes`` compiled with its SGD step (cross-entropy, lr 0.1) on a random batch (seeded: the same
    every call) at ``lanes``: ``(design, x, y)``, the batch as numpy arrays."""
    import fx2fpga

    torch.manual_seed(0)
    layers = [m for a, b in zip(sizes, sizes[1:], strict=False) for m in (torch.nn.Linear(a, b), torch.nn.ReLU())]
    layers = layers[:-1]  # (no ReLU after the last layer)
    x, y = torch.randn(batch, sizes[0]), torch.randint(0, sizes[-1], (batch,))
    design = fx2fpga.compile(torch.nn.Sequential(*layers), (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1),
                             lanes=lanes, **options)
    return design, x.numpy(), y.numpy()


def load_example(name: str):
    """Import examples/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def mlp_example():
    return load_example("mlp_digits")


@pytest.fixture(scope="session")
def digits_data(mlp_example):
    return mlp_example.digits()


@pytest.fixture(scope="session")
def mlp_train_design(mlp_example, tmp_path_factory):
    """The 64-32-10 digits MLP compiled with its SGD step, project folder written."""
    import fx2fpga

    torch.manual_seed(0)
    model = mlp_example.DigitsMLP()
    out = tmp_path_factory.mktemp("mlp") / "mlp"
    design = fx2fpga.compile(model, mlp_example.example_inputs, target="pynq-z1",
                             train=fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, lr=0.1),
                             out_dir=out)
    return model, design


@pytest.fixture(scope="session")
def mlp_train_csim(mlp_train_design):
    """One csim build of the training kernel, shared (tests reset its parameters)."""
    _, design = mlp_train_design
    runner = design.load("csim")
    yield runner
    runner.close()


def float_params(model) -> dict[str, np.ndarray]:
    return {k: v.detach().double().numpy() for k, v in model.named_parameters()}
