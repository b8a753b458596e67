"""Bad input, a corpus (docs/errors.md): each case gets an fx2fpga error that names what went wrong, where,
and what would work, and writes nothing (no project folder; an existing one is left as it was)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.csim import CXX_FLAGS, ap_types_dir, fastfixed_dir
from fx2fpga_runtime.errors import KernelClosedError as RuntimeKernelClosedError
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.toolchain import require_tool
from torch import nn

import fx2fpga
from fx2fpga.cli import load_model_file
from fx2fpga.cli import main as cli_main
from fx2fpga.errors import (
    ExampleInputError,
    Fx2fpgaError,
    KernelCapabilityError,
    KernelClosedError,
    KernelError,
    KernelInputError,
    KernelParamError,
    ModelFileError,
    TraceError,
)

from ..error_bounds import model_params, propagate
from .test_nonlinear import on_grid

BATCH, WIDTH, CLASSES = 4, 4, 3


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(BATCH, WIDTH, generator=torch.Generator().manual_seed(seed))


def _y() -> torch.Tensor:
    return torch.tensor([0, 1, 2, 1])


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_mentions(err: pytest.ExceptionInfo, *words: str) -> None:
    message = str(err.value)
    for word in words:
        assert word in message, (word, message)


@pytest.fixture(scope="module")
def trained():
    """One training kernel (Linear(4, 3), cross entropy, batch 4) on the emulator, shared by the runtime tests."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(WIDTH, CLASSES))
    design = fx2fpga.compile(model, (_x(),), train=fx2fpga.SGD(F.cross_entropy, _y(), lr=0.1))
    return model, design


# ----- example inputs and targets at compile time ------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_in_example_inputs_is_refused_and_nothing_is_written(tmp_path, bad):
    x = _x()
    x[2, 1] = bad
    with pytest.raises(ExampleInputError) as err:
        fx2fpga.compile(nn.Linear(WIDTH, CLASSES), (x,), out_dir=tmp_path / "proj")
    _assert_mentions(err, "NaN or Inf", "example input 0", "index (2, 1)", "finite", "nan_to_num")
    assert isinstance(err.value, ValueError) and list(tmp_path.iterdir()) == []


def test_nan_in_example_targets_is_refused(tmp_path):
    y = torch.zeros(BATCH, CLASSES)
    y[3, 0] = float("nan")
    with pytest.raises(ExampleInputError) as err:
        fx2fpga.compile(nn.Linear(WIDTH, CLASSES), (_x(),), train=fx2fpga.SGD(F.mse_loss, y, lr=0.1),
                        out_dir=tmp_path / "proj")
    _assert_mentions(err, "NaN or Inf", "example targets", "index (3, 0)", "finite")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_batch_is_refused(tmp_path):
    with pytest.raises(ExampleInputError) as err:
        fx2fpga.compile(nn.Linear(WIDTH, CLASSES), (torch.zeros(0, WIDTH),), out_dir=tmp_path / "proj")
    _assert_mentions(err, "empty batch", "example input 0", "(0, 4)", "at least one row")
    assert list(tmp_path.iterdir()) == []


def test_integer_example_inputs_are_refused_but_embedding_indices_compile(tmp_path):
    with pytest.raises(ExampleInputError) as err:
        fx2fpga.compile(nn.Linear(WIDTH, CLASSES), (torch.randint(0, 5, (BATCH, WIDTH)),), out_dir=tmp_path / "p")
    _assert_mentions(err, "example input 0", "torch.int64", "not a float tensor", "x.float()", "nn.Embedding")
    assert list(tmp_path.iterdir()) == []
    torch.manual_seed(1)
    tokens = nn.Sequential(nn.Embedding(6, 2), nn.Flatten(), nn.Linear(6, 2))
    with torch.no_grad():
        for p in tokens.parameters():
            p.copy_(on_grid(p, Fixed(24, 8)))  # the default weight format: the kernel holds them exactly
    idx = torch.tensor([[1, 5, 0], [2, 2, 3], [4, 0, 1], [5, 1, 1]])
    design = fx2fpga.compile(tokens, (idx,))
    k = design.kernel
    infer = k.programs["infer"]
    _, err = propagate(k, "infer", {**model_params(k, tokens), infer.inputs[0]: idx.numpy()})
    got = design.load("emu").infer(idx.numpy())
    assert np.all(np.abs(got - tokens.double()(idx).detach().numpy()) <= err[infer.outputs[0]] + 1e-12)
    torch._dynamo.reset()  # torch.compile's graph has no nn.Embedding module, only the lookup: allowed too
    with torch.no_grad():
        native = torch.compile(tokens.float().eval(), backend="fx2fpga", options={"outputs": "hls"})(idx)
    assert np.array_equal(native.numpy(), got.astype(np.float32))


@pytest.mark.parametrize("bad", [CLASSES, -1])
def test_example_class_targets_out_of_range_are_refused(tmp_path, bad):
    y = _y()
    y[2] = bad
    with pytest.raises(ExampleInputError) as err:
        fx2fpga.compile(nn.Linear(WIDTH, CLASSES), (_x(),), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1),
                        out_dir=tmp_path / "proj")
    _assert_mentions(err, f"class index {bad}", "index (2,)", f"{CLASSES} classes", f"0..{CLASSES - 1}")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_project_folder_is_left_untouched(tmp_path):
    out = tmp_path / "proj"
    fx2fpga.compile(nn.Linear(WIDTH, CLASSES), (_x(),), out_dir=out, outputs="hls")
    before = _tree(out)
    x = _x(1)
    x[0, 0] = float("nan")
    with pytest.raises(ExampleInputError):
        fx2fpga.compile(nn.Linear(WIDTH, CLASSES), (x,), out_dir=out, outputs="hls")
    with pytest.raises(TraceError):
        fx2fpga.compile(_DataDependent(), (_x(),), out_dir=out, outputs="hls")
    assert _tree(out) == before


# ----- tracing --------------------------------------------------------------------------------------------

class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(WIDTH, CLASSES)

    def forward(self, x):
        if x.sum() > 0:  # the line the error names
            return self.fc(x)
        return -self.fc(x)


def test_data_dependent_control_flow_names_the_users_line_and_prints_nothing(tmp_path, capfd):
    with pytest.raises(TraceError) as err:
        fx2fpga.compile(_DataDependent(), (_x(),), out_dir=tmp_path / "proj")
    _assert_mentions(err, "control flow depends on the values of a tensor",
                     "test_bad_input.py:", "if x.sum() > 0:", "torch.where")
    assert "guard_or_false" not in str(err.value)  # not torch's page of advice
    line = int(re.search(r"test_bad_input\.py:(\d+)", str(err.value)).group(1))
    assert "if x.sum() > 0:" in Path(__file__).read_text().splitlines()[line - 1]
    with pytest.raises(TraceError) as err:  # a meta kernel failing: torch logs a traceback unless silenced
        fx2fpga.compile(nn.Linear(WIDTH, CLASSES), (torch.randn(BATCH, WIDTH + 1),))
    _assert_mentions(err, "could not trace the model", "[4, 5] X [4, 3]")
    assert capfd.readouterr().err == ""
    assert list(tmp_path.iterdir()) == []


# ----- the command line -----------------------------------------------------------------------------------

def test_a_model_file_that_raises_is_named_with_its_line_and_exception(tmp_path, capsys):
    model_file = tmp_path / "broken_model.py"
    model_file.write_text("import torch\nmodel = torch.nn.Linear(4, 3)\nexample_inputs = (torch.randn(4, 4),)\n"
                          "scale = 1 / 0\n")
    out = tmp_path / "out"
    assert cli_main(["compile", str(model_file), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{model_file}:4: scale = 1 / 0" in err and "ZeroDivisionError: division by zero" in err
    assert "Traceback" not in err and f"python {model_file}" in err
    assert not out.exists()
    with pytest.raises(ModelFileError, match="broken_model.py:4"):
        load_model_file(model_file, train=False)


# ----- the runtime: inputs --------------------------------------------------------------------------------

def test_runtime_inputs_of_the_wrong_shape_or_dtype_are_refused(trained):
    _, design = trained
    k = design.load("emu")
    name = design.kernel.programs["infer"].inputs[0]
    with pytest.raises(KernelInputError) as err:
        k.infer(np.zeros((BATCH + 1, WIDTH)))
    _assert_mentions(err, "infer", f"input {name}", "(4, 4)", "compiled for it", "(5, 4)")
    with pytest.raises(KernelInputError) as err:
        k.infer(np.zeros((BATCH, WIDTH), dtype=np.complex128))
    _assert_mentions(err, "infer", f"input {name}", "real numbers", "complex128")
    with pytest.raises(KernelInputError) as err:
        k.train_step(np.full((BATCH, WIDTH), "a"), _y().numpy())
    _assert_mentions(err, "train_step", "real numbers", "<U1")
    with pytest.raises(ValueError, match="train_step takes 2 arrays"):  # still a ValueError for old callers
        k.train_step(_x().numpy())
    x = torch.tensor(_x().numpy(), requires_grad=True)  # a torch tensor, even one that requires grad
    assert np.array_equal(k.infer(x), k.infer(_x().numpy()))


@pytest.mark.parametrize("program", ["infer", "train_step"])
def test_runtime_nan_or_inf_inputs_are_refused(trained, program):
    _, design = trained
    k = design.load("emu")
    before = k.get_params()
    x = _x().numpy()
    x[1, 3] = np.inf
    with pytest.raises(KernelInputError) as err:
        k.infer(x) if program == "infer" else k.train_step(x, _y().numpy())
    _assert_mentions(err, program, "NaN or Inf", "index (1, 3)", "nan_to_num")
    after = k.get_params()
    assert all(np.array_equal(before[n], after[n]) for n in before)  # the step did not run


@pytest.mark.parametrize("bad", [CLASSES, -1, 0.5])
def test_runtime_class_targets_out_of_range_are_refused(trained, bad):
    _, design = trained
    k = design.load("emu")
    y = _y().numpy().astype(np.float64)
    y[3] = bad
    with pytest.raises(KernelInputError) as err:
        k.train_step(_x().numpy(), y)
    _assert_mentions(err, "train_step", f"class indices in 0..{CLASSES - 1}", f"{CLASSES} classes",
                     f"got {bad:g} at index (3,)")
    with pytest.raises(KernelInputError, match=f"got {bad:g} at index \\(1, 3\\)"):
        k.train_steps(np.stack([_x().numpy()] * 2), np.stack([_y().numpy(), y]))


def test_train_step_on_an_inference_kernel_says_how_to_compile_one():
    k = fx2fpga.compile(nn.Linear(WIDTH, CLASSES), (_x(),)).load("emu")
    with pytest.raises(KernelCapabilityError, match=r"inference only: pass train=fx2fpga.SGD\(...\)"):
        k.train_step(_x().numpy(), _y().numpy())


# ----- the runtime: closed kernels ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A tiny inference design with its project folder (HLS and RTL), for the simulators."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(WIDTH, 2))
    return fx2fpga.compile(model, (_x(),), out_dir=tmp_path_factory.mktemp("closed") / "tiny", name="tiny")


@pytest.mark.parametrize("sim", ["emu", pytest.param("csim", marks=pytest.mark.slow),
                                 pytest.param("rtl", marks=pytest.mark.slow)])
def test_a_closed_kernel_refuses_every_call(written, sim):
    x = _x().numpy()
    with written.load(sim) as k:
        want = k.infer(x)
    for call in (lambda: k.infer(x), k.get_params, lambda: k.set_params({}, partial=True), k.saturation):
        with pytest.raises(KernelClosedError) as err:
            call()
        _assert_mentions(err, f"this {sim} kernel of tiny is closed", "with block", f"design.load('{sim}')")
    again = written.load(sim)
    assert np.array_equal(again.infer(x), want)
    again.close()
    again.close()  # closing twice is harmless
    with pytest.raises(KernelClosedError):
        again.infer(x)


# ----- the runtime: set_params ----------------------------------------------------------------------------

def test_set_params_refuses_missing_and_unknown_names_unless_partial(trained):
    model, design = trained
    k = design.load("emu")
    full = {n: p.detach().numpy() for n, p in model.named_parameters()}
    with pytest.raises(KernelParamError) as err:
        k.set_params({"0.weight": full["0.weight"]})
    _assert_mentions(err, "missing parameters ['0.bias']", "partial=True")
    with pytest.raises(KernelParamError) as err:
        k.set_params({**full, "0.wieght": full["0.weight"]})
    _assert_mentions(err, "unknown parameters ['0.wieght']", "this kernel has ['0.bias', '0.weight']")
    with pytest.raises(KeyError):  # unknown names: always, partial or not (and a KeyError, as before)
        k.set_params({"0.wieght": full["0.weight"]}, partial=True)
    k.set_params({"0.bias": np.array([0.5, -0.25, 1.0])}, partial=True)
    got = k.get_params()
    assert np.array_equal(got["0.bias"], [0.5, -0.25, 1.0])
    weight_fmt = design.kernel.buffers[next(b for b, n in design.kernel.param_names.items() if n == "0.weight")].fmt
    assert np.array_equal(got["0.weight"], weight_fmt.to_float(weight_fmt.quantize(full["0.weight"])))  # kept
    bad = dict(full, **{"0.bias": np.array([0.0, np.nan, 0.0])})
    with pytest.raises(KernelInputError, match=r"parameter 0.bias holds 1 NaN or Inf value\(s\)"):
        k.set_params(bad)
    k.set_params(full)  # everything named: no partial needed


def test_the_runtime_errors_share_one_base_importable_from_fx2fpga():
    assert KernelClosedError is RuntimeKernelClosedError
    for cls, builtin in ((KernelInputError, ValueError), (KernelParamError, KeyError), (KernelParamError, ValueError),
                         (KernelClosedError, RuntimeError), (KernelCapabilityError, RuntimeError)):
        assert issubclass(cls, KernelError) and issubclass(cls, builtin)
    assert issubclass(ExampleInputError, Fx2fpgaError) and issubclass(ExampleInputError, ValueError)
    assert str(KernelParamError("plain words")) == "plain words"  # not KeyError's quoted repr


# ----- the generated C testbench --------------------------------------------------------------------------

@pytest.mark.slow
def test_the_c_testbench_of_a_project_exits_non_zero_on_a_corrupted_golden_vector(written, tmp_path):
    """The testbench and its golden vectors as the project folder holds them, built with g++ (the fastfixed
    headers, as the csim simulator builds): it passes, and one expected word off by one LSB fails it."""
    src = written.out_dir / "src"
    data = (src / "tb_tiny_data.h").read_text()
    cxx = require_tool("g++")
    flags = [*CXX_FLAGS, f"-I{fastfixed_dir() or ap_types_dir()}", f"-I{src}"]
    obj = tmp_path / "tiny.o"
    subprocess.run([cxx, *flags, "-c", str(src / "tiny.cpp"), "-o", str(obj)], check=True)
    (tmp_path / "tb_tiny.cpp").write_text((src / "tb_tiny.cpp").read_text())  # beside the header it includes

    def build_and_run(header: str) -> subprocess.CompletedProcess:
        (tmp_path / "tb_tiny_data.h").write_text(header)
        exe = tmp_path / "tb"
        subprocess.run([cxx, *flags, str(tmp_path / "tb_tiny.cpp"), str(obj), "-o", str(exe)], check=True)
        return subprocess.run([str(exe)], capture_output=True, text=True)

    good = build_and_run(data)
    assert good.returncode == 0 and "0 failed -- PASS" in good.stdout, good.stdout
    index = re.search(r"// vector (\d+): infer\n", data).group(1)
    first = re.compile(r"-?\d+").search(data, data.index(f"tb_out_{index}[] = {{") + len(f"tb_out_{index}[] = {{"))
    corrupted = data[:first.start()] + str(int(first.group()) + 1) + data[first.end():]
    bad = build_and_run(corrupted)
    assert bad.returncode != 0
    assert re.search(r"MISMATCH vector \d+ \(infer\) word 0", bad.stdout) and "1 failed -- FAIL" in bad.stdout
