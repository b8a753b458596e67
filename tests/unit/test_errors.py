"""Bad input gets a clear error that names what to fix, and loses nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fx2fpga
from fx2fpga.cli import main as cli_main
from fx2fpga.errors import OutputPathError, PrecisionError, UnknownTargetError, UnsupportedOpError


class Sorts(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = self.fc(x)
        return torch.cumsum(h, dim=1)  # the unsupported line


def test_unsupported_op_names_op_line_and_supported_set():
    with pytest.raises(UnsupportedOpError) as ei:
        fx2fpga.compile(Sorts(), (torch.randn(2, 8),))
    msg = str(ei.value)
    assert "aten.cumsum" in msg
    assert "test_errors.py:" in msg and "torch.cumsum(h, dim=1)" in msg
    assert "aten.addmm" in msg and "aten.relu" in msg  # the supported set
    assert ei.value.source.startswith("test_errors.py:")


def test_unsupported_op_in_backward_is_reported_too():
    class Divides(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            h = self.fc(x)
            return h / (h.sum() - 1000.0)  # division by a tensor that is not positive

    with pytest.raises(UnsupportedOpError, match="aten.div"):
        fx2fpga.compile(Divides(), (torch.randn(2, 8),))


def test_unknown_target_lists_known_ones():
    with pytest.raises(UnknownTargetError) as ei:
        fx2fpga.compile(nn.Linear(4, 2), (torch.randn(1, 4),), target="pynq-z9")
    assert "pynq-z9" in str(ei.value) and "pynq-z1" in str(ei.value) and "pynq-z2" in str(ei.value)


@pytest.mark.parametrize("spec", ["fixed<16>", "float32", "fixed<0,0>", "fixed<16,6,NEAREST,SAT>"])
def test_malformed_precision(spec):
    with pytest.raises(PrecisionError) as ei:
        fx2fpga.compile(nn.Linear(4, 2), (torch.randn(1, 4),), precision=spec)
    assert "fixed<WIDTH,INT_BITS>" in str(ei.value)


def test_precision_override_of_unknown_tensor():
    with pytest.raises(PrecisionError, match="no_such_node"):
        fx2fpga.compile(nn.Linear(4, 2), (torch.randn(1, 4),), precision={"overrides": {"no_such_node": "fixed<8,4>"}})


def test_output_path_that_is_a_file_is_left_alone(tmp_path):
    f = tmp_path / "out"
    f.write_text("precious")
    with pytest.raises(OutputPathError):
        fx2fpga.compile(nn.Linear(4, 2), (torch.randn(1, 4),), out_dir=f)
    assert f.read_text() == "precious"


def test_foreign_folder_is_not_overwritten(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("keep")
    with pytest.raises(OutputPathError):
        fx2fpga.compile(nn.Linear(4, 2), (torch.randn(1, 4),), out_dir=d)
    assert (d / "notes.txt").read_text() == "keep" and len(list(d.iterdir())) == 1


def test_cli_model_file_without_model(tmp_path, capsys):
    f = tmp_path / "empty_model.py"
    f.write_text("import torch\nexample_inputs = (torch.randn(1, 4),)\n")
    assert cli_main(["compile", str(f), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not define model" in err and not (tmp_path / "o").exists()


def test_cli_train_needs_loss(tmp_path, capsys):
    f = tmp_path / "m.py"
    f.write_text("import torch\nmodel = torch.nn.Linear(4, 2)\nexample_inputs = (torch.randn(1, 4),)\n")
    assert cli_main(["compile", str(f), "--train", "-o", str(tmp_path / "o")]) == 2
    assert "loss_fn, example_targets" in capsys.readouterr().err


def test_cli_unknown_target(tmp_path, capsys):
    f = tmp_path / "m.py"
    f.write_text("import torch\nmodel = torch.nn.Linear(4, 2)\nexample_inputs = (torch.randn(1, 4),)\n")
    assert cli_main(["compile", str(f), "--target", "nope"]) == 2
    assert "known targets: pynq-z1" in capsys.readouterr().err


def test_class_targets_out_of_range_are_refused():
    model = nn.Sequential(nn.Linear(4, 3))
    d = fx2fpga.compile(model, (torch.randn(2, 4),), train=fx2fpga.SGD(F.cross_entropy, torch.tensor([0, 2])))
    k = d.load("emu")
    with pytest.raises(ValueError, match="class indices in 0..2"):
        k.train_step(torch.randn(2, 4).numpy(), [0, 3])


def test_design_over_budget_shows_needed_and_available():
    from fx2fpga.errors import ResourceBudgetError

    big = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512))
    with pytest.raises(ResourceBudgetError) as ei:
        fx2fpga.compile(big, (torch.randn(64, 512),), lanes=64)
    msg = str(ei.value)
    assert "does not fit pynq-z1" in msg and "BRAM36: needs" in msg and "pynq-z1 has 140" in msg
    needed = dict((r, n) for r, n, _ in ei.value.over)
    assert needed["BRAM36"] > 140
