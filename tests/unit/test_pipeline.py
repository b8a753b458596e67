"""PIPELINE: every step named and printable, compile(until=...) returns each step's artifact, the
schedule is computed once per compile, and the old option names still work (with a warning)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.ir import Kernel
from torch import nn

import fx2fpga
from fx2fpga.passes import schedule

STEPS = ["trace", "lower", "quantize", "fuse", "share memory", "order", "place", "tile", "schedule", "emit HLS",
         "emit RTL", "write"]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), torch.randn(4, 6)


def test_print_pipeline_lists_every_step_with_its_doc():
    text = str(fx2fpga.PIPELINE)
    assert fx2fpga.PIPELINE.names() == STEPS
    lines = text.splitlines()
    assert len(lines) == len(STEPS)
    for i, (line, step) in enumerate(zip(lines, fx2fpga.PIPELINE, strict=True), 1):
        assert line.startswith(f"{i:2d}. {step.name} ") and line.endswith(step.doc) and step.doc
    assert "12. write" in text and "-> Design" in text and "-> Schedule | None" in text
    assert repr(fx2fpga.PIPELINE).startswith("Pipeline(['trace', 'lower'")


@pytest.mark.parametrize("until, kind", [
    ("trace", list), ("lower", Kernel), ("quantize", Kernel), ("fuse", Kernel), ("share memory", Kernel),
    ("order", Kernel), ("place", Kernel), ("tile", Kernel),
    ("schedule", schedule.Schedule), ("emit HLS", dict), ("emit RTL", dict), ("write", fx2fpga.Design),
])
def test_until_returns_the_artifact_of_that_step(until, kind):
    model, x = _model()
    got = fx2fpga.compile(model, (x,), until=until, name="m")
    assert isinstance(got, kind)
    if until == "trace":
        assert len(got) == 1 and isinstance(got[0], torch.fx.GraphModule)
    if until == "emit HLS":
        assert "src/m.cpp" in got and not any(f.startswith("rtl/") for f in got)
    if until == "emit RTL":
        assert "rtl/m_top.sv" in got and "src/m.cpp" not in got


def test_until_tile_gives_the_tiled_kernel():
    model, x = _model()
    quantized = fx2fpga.compile(model, (x,), lanes=4, until="quantize")
    tiled = fx2fpga.compile(model, (x,), lanes=4, until="tile")
    assert {s.lanes for s in quantized.stages()} == {1}
    lanes = {s.name: s.lanes for s in tiled.stages()}
    assert max(lanes.values()) == 4 and all(s.lane_var for s in tiled.stages() if s.lanes > 1)
    assert isinstance(fx2fpga.compile(model, (x,), until="TILE"), Kernel)  # case and _ do not matter
    assert isinstance(fx2fpga.compile(model, (x,), until="share_memory"), Kernel)


def test_unknown_step_is_a_clear_error_before_any_work():
    model, x = _model()
    with pytest.raises(ValueError, match="unknown step 'optimize'; the steps are: trace, lower, .*, write"):
        fx2fpga.compile(model, (x,), until="optimize")


def test_the_schedule_is_computed_once_per_compile_write_and_report(tmp_path, monkeypatch):
    calls = []
    real = schedule.run

    def counting(kernel):
        calls.append(kernel.name)
        return real(kernel)

    monkeypatch.setattr(schedule, "run", counting)
    model, x = _model()
    lines = []
    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.cross_entropy, torch.tensor([0, 1, 2, 0]), 0.1),
                             name="m", progress=lines.append)
    assert len(calls) == 1  # tile's bank check: its lanes map at once, and its schedule is the one kept
    assert [line.split()[1] for line in lines] == ["trace", "lower", "quantize", "fuse", "share", "order", "place",
                                                    "tile", "schedule"]
    design.write(tmp_path / "m")
    report = design.report
    cycles, dsp = design.rtl_cycles(), design.rtl_dsp_blocks()
    assert len(calls) == 1  # the RTL emitter, the manifest, the report, rtl_cycles and the DSP count reuse it
    assert [line.split()[1] for line in lines[9:]] == ["emit", "emit", "write"]
    assert design.schedule is design.context.schedule and design.rtl_plan().schedule is design.schedule
    assert cycles == {c: design.schedule.call_cycles(c) for c in design.schedule.commands}
    assert f"| `train_step` | {cycles['train_step']:,} |" in report and dsp >= 1
    assert (tmp_path / "m" / "report.md").read_text() == report


def test_old_names_still_work_with_a_deprecation_warning(tmp_path):
    model, x = _model()
    with pytest.warns(DeprecationWarning, match=r"compile\(backend=...\) is now compile\(outputs=...\)"):
        design = fx2fpga.compile(model, (x,), backend="rtl", name="m")
    assert design.outputs == "rtl"
    with pytest.warns(DeprecationWarning, match="Design.outputs"):
        assert design.backend == "rtl"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new names warn about nothing
        assert fx2fpga.compile(model, (x,), outputs="hls", name="m").outputs == "hls"
        emu = design.load(sim="emu")
    with pytest.warns(DeprecationWarning, match=r"load\(sim=...\)"):
        old = design.load(backend="emu")
    assert (emu.infer(x.numpy()) == old.infer(x.numpy())).all()
    with pytest.raises(ValueError, match="outputs must be one of hls, rtl, both"):
        fx2fpga.compile(model, (x,), outputs="verilog")


def test_cli_old_option_names_warn(tmp_path):
    from fx2fpga.cli import build_parser, main

    args = build_parser().parse_args(["compile", "m.py", "--outputs", "rtl"])
    assert args.outputs == "rtl" and args.backend is None
    example = tmp_path / "tiny.py"
    example.write_text("import torch\nfrom torch import nn\ntorch.manual_seed(0)\n"
                       "model = nn.Linear(4, 2)\nexample_inputs = (torch.randn(2, 4),)\n")
    with pytest.warns(DeprecationWarning, match="--backend is now --outputs"):
        assert main(["compile", str(example), "--backend", "hls", "-o", str(tmp_path / "p")]) == 0
    assert '"outputs": "hls"' in (tmp_path / "p" / "manifest.json").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["sim", str(tmp_path / "p"), "--sim", "emu"]) == 0
    with pytest.warns(DeprecationWarning, match="--backend is now --sim"):
        assert main(["sim", str(tmp_path / "p"), "--backend", "emu"]) == 0


def test_a_kernel_the_rtl_cannot_map_has_no_schedule_and_a_readme(monkeypatch):
    """``x + x.T`` with one lane: two words of one single-port RAM bank in a cycle."""
    calls = []
    real = schedule.run
    monkeypatch.setattr(schedule, "run", lambda kernel: calls.append(1) or real(kernel))
    design = fx2fpga.compile(lambda x: x + x.t(), (torch.randn(4, 4),), name="m", lanes=1)
    assert design.schedule is None and "different words of one memory bank" in str(design.context.schedule_error)
    assert design.rtl_cycles() is None and design.rtl_dsp_blocks() is None and len(calls) == 1
    files = design.files()
    assert [f for f in files if f.startswith("rtl/")] == ["rtl/README.md"]
    assert "different words of one memory bank" in files["rtl/README.md"]
    assert len(calls) == 2  # only here: the RTL emitter checks the ops first, then schedules again to say why


def test_share_memory_is_a_step_on_by_default():
    model, x = _model()
    sgd = fx2fpga.SGD(F.cross_entropy, torch.tensor([0, 1, 2, 0]), 0.1)
    shared = fx2fpga.compile(model, (x,), train=sgd, until="share memory")
    separate = fx2fpga.compile(model, (x,), train=sgd, until="share memory", share_memory=False)
    assert "memory" not in separate.meta and len(shared.buffers) < len(separate.buffers)
    assert shared.meta["memory"]["mem0"] == ["infer_relu", "train_relu"]  # infer and train_step never overlap


def test_outputs_default_to_what_the_target_builds():
    """A Xilinx board gets HLS C++ and RTL; an ECP5 board (no vendor HLS to build the C++) RTL alone."""
    model, x = nn.Sequential(nn.Linear(6, 4), nn.ReLU()), torch.randn(2, 6)
    zynq = fx2fpga.compile(model, (x,), target="pynq-z1", name="m")
    ecp5 = fx2fpga.compile(model, (x,), target="ulx3s", name="m")
    assert zynq.outputs == "both" and ecp5.outputs == "rtl"
    assert "src/m.cpp" in zynq.files() and "rtl/m_top.sv" in zynq.files()
    assert not any(f.startswith("src/") for f in ecp5.files()) and "rtl/m_top.sv" in ecp5.files()
    assert fx2fpga.compile(model, (x,), target="ulx3s", name="m", outputs="both").outputs == "both"
