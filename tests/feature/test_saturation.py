"""Saturation counters (docs/saturation.md): a kernel driven into saturation on purpose (narrow formats by
precision overrides, large inputs) counts the same events in the emulator's fast path, its reference, a numpy
recount and the generated C++ (csim); the digits MLP with in-range data counts none; a read resets; ``fit``
warns when a gradient saturates."""

from __future__ import annotations

import subprocess
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.emulator import Emulator
from fx2fpga_runtime.saturation import counter_buffers
from fx2fpga_runtime.testbench import replay
from torch import nn

import fx2fpga

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:tests.feature.test_saturation")  # the narrow formats

# infer_addmm: fixed<8,2> (range [-2, 2)), RND, SAT; infer_relu: fixed<6,1> (range [-1, 1)), TRN, WRAP
NARROW = {"overrides": {"infer_addmm": "fixed<8,2>", "infer_relu": "fixed<6,1,TRN,WRAP>"}}


class Net(nn.Module):
    """Linear(4, 6) -> relu -> Linear(6, 3)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _inputs() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(8, 4) * 8  # far outside fixed<8,2> after the first layer


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    """The saturating design, with counters in its C++ (one project folder for the module)."""
    torch.manual_seed(0)
    model, x = Net(), _inputs()
    design = fx2fpga.compile(model, (x,), precision=NARROW, share_memory=False, outputs="hls",
                             saturation_counters=True, out_dir=tmp_path_factory.mktemp("sat") / "net")
    return model, x, design


def _recount(design, x: np.ndarray) -> dict[str, int]:
    """The events of ``infer`` counted with numpy from the formats: the first layer's exact result rounded (RND)
    to fixed<8,2>, the relu of the stored (saturated) result truncated to fixed<6,1>."""
    k = design.kernel
    emu = design.load("emu")
    params = emu.get_params_raw()
    w_name, b_name = (next(b for b in k.params if k.param_names[b] == n) for n in ("fc1.weight", "fc1.bias"))
    xin = k.buffers[k.programs["infer"].inputs[0]].fmt
    fw, fb = k.buffers[w_name].fmt, k.buffers[b_name].fmt
    exact = (xin.quantize(x).astype(np.float64) * 2.0 ** -xin.frac_bits) @ (params[w_name] * 2.0 ** -fw.frac_bits).T
    exact = exact + params[b_name] * 2.0 ** -fb.frac_bits  # exact in float64: a few dozen bits
    h = np.floor(exact * 2**6 + 0.5)  # fixed<8,2>: 6 fraction bits, RND
    first = int(np.count_nonzero((h < -128) | (h > 127)))
    stored = np.clip(h, -128, 127) * 2.0**-6
    r = np.floor(np.maximum(stored, 0) * 2**5)  # fixed<6,1>: 5 fraction bits, TRN
    second = int(np.count_nonzero((r < -32) | (r > 31)))
    return {"infer_addmm": first, "infer_relu": second}


def test_emulator_counts_equal_a_numpy_recount_and_the_reference(narrow):
    _, x, design = narrow
    k = design.kernel
    emu = design.load("emu")
    emu.infer(x.numpy())
    counts = emu.saturation()
    want = _recount(design, x.numpy())
    assert want["infer_addmm"] > 0 and want["infer_relu"] > 0  # driven into saturation, both modes
    assert {b: counts[b] for b in want} == want
    assert set(counts) == {st.out.buffer for st in k.stages()}
    reference = Emulator(k, fast=False)
    for name, raw in emu.get_params_raw().items():
        reference.write(name, raw)
    inp = k.programs["infer"].inputs[0]
    reference.run("infer", {inp: k.buffers[inp].fmt.quantize(x.numpy())})
    assert reference.read_saturation() == counts


def test_a_read_resets_and_counts_add_up_over_calls(narrow):
    _, x, design = narrow
    emu = design.load("emu")
    emu.infer(x.numpy())
    once = emu.saturation()
    assert any(once.values())
    assert not any(emu.saturation().values())
    emu.infer(x.numpy())
    emu.infer(x.numpy())
    assert emu.saturation() == {b: 2 * n for b, n in once.items()}


def test_counters_only_where_overflow_can_happen(narrow):
    _, _, design = narrow
    k = design.kernel
    assert counter_buffers(k) == ["infer_addmm", "infer_relu", "infer_output"]  # fc2's sum may leave fixed<16,6>


def test_digits_mlp_with_in_range_data_counts_nothing(mlp_train_design, digits_data):
    _, design = mlp_train_design
    x, y = digits_data[0], digits_data[1]
    emu = design.load("emu")
    batch = design.kernel.buffers[design.kernel.programs["train_step"].inputs[0]].shape[0]
    for i in range(4):
        emu.train_step(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch])
    emu.infer(x[:batch])
    counts = emu.saturation()
    assert counts and not any(counts.values()), {b: n for b, n in counts.items() if n}


def test_fit_warns_once_naming_the_saturated_gradient():
    torch.manual_seed(1)
    model, x, y = Net(), torch.randn(8, 4) * 4, torch.randint(0, 3, (8,))
    narrow_grad = {"overrides": {"train_mm": "fixed<4,-5>"}}  # fc2's weight gradient: range [-1/64, 1/64)
    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1), precision=narrow_grad,
                             share_memory=False)
    runner = design.load("emu")
    loader = [(x, y)] * 3
    with pytest.warns(fx2fpga.SaturationWarning, match="train_mm") as caught:
        fx2fpga.fit(runner, loader, epochs=2, progress=False)
    assert len([w for w in caught if issubclass(w.category, fx2fpga.SaturationWarning)]) == 1
    wide = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1)).load("emu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", fx2fpga.SaturationWarning)
        fx2fpga.fit(wide, loader, epochs=1, progress=False)


def test_counters_off_generates_no_counter_code(narrow):
    _, x, _ = narrow
    torch.manual_seed(0)
    model = Net()
    off = fx2fpga.compile(model, (x,), precision=NARROW, share_memory=False, outputs="hls").files()
    on = fx2fpga.compile(model, (x,), precision=NARROW, share_memory=False, outputs="hls",
                         saturation_counters=True).files()
    assert not any("sat_" in text for text in off.values())
    assert "sat_check" in on["src/net.cpp"] and "CMD_READ_SATURATION = 5" in on["src/net.h"]
    assert on["src/net.cpp"] != off["src/net.cpp"]


def test_report_states_the_counters_and_their_cost(narrow, tmp_path):
    """report.md names each counter and gives the RTL counters' cost as measured with Yosys (50 LUT, 39 FF each)."""
    _, x, _ = narrow
    torch.manual_seed(0)
    design = fx2fpga.compile(Net(), (x,), precision=NARROW, share_memory=False, saturation_counters=True,
                             out_dir=tmp_path / "p")
    n = len(counter_buffers(design.kernel))
    text = (tmp_path / "p" / "report.md").read_text()
    section = text[text.index("## Saturation counters"):]
    assert f"{n} counters of 32 bits" in section
    assert f"in the RTL about {50 * n:,} LUT and {39 * n:,} FF" in section
    assert all(f"`{b}`" in section for b in counter_buffers(design.kernel))


@pytest.mark.slow
def test_csim_counts_equal_the_emulator(narrow):
    _, x, design = narrow
    emu = design.load("emu")
    with design.load("csim") as csim:
        for scale in (1.0, 0.25):
            xs = (x * scale).numpy()
            assert np.array_equal(emu.infer(xs), csim.infer(xs))
            want, got = emu.saturation(), csim.saturation()
            assert got == want
        assert want["infer_addmm"] > 0
        assert not any(csim.saturation().values())  # read and reset


@pytest.mark.slow
def test_replay_reports_the_same_counts_on_emu_and_csim(narrow):
    _, _, design = narrow
    emu_counts, csim_counts = {}, {}
    replay(design.out_dir, "emu", saturation=emu_counts)
    replay(design.out_dir, "csim", saturation=csim_counts)
    assert emu_counts == csim_counts and emu_counts["infer_addmm"] > 0


@pytest.mark.slow
def test_csim_without_counters_says_how_to_get_them(tmp_path):
    torch.manual_seed(0)
    design = fx2fpga.compile(Net(), (_inputs(),), precision=NARROW, outputs="hls", out_dir=tmp_path / "off")
    with design.load("csim") as csim, pytest.raises(RuntimeError, match="saturation_counters=True"):
        csim.saturation()


# ----- RTL (Verilator) and the same RTL behind the AXI wrapper (pynq driver) ----------------------------------

class ConvNet(nn.Module):
    """Conv2d(1, 3, 3, padding=1) (guarded reads) -> relu -> Linear(48, 6) (6 outputs on 4 lanes: a partial
    lane group) -> relu -> Linear(6, 3)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc1, self.fc2 = nn.Conv2d(1, 3, 3, padding=1), nn.Linear(48, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


# a saturating reduction with guarded reads (SAT), a wrapping elementwise stage, a saturating weight gradient
CONV_NARROW = {"overrides": {"infer_convolution": "fixed<8,2>", "infer_relu": "fixed<6,1,TRN,WRAP>",
                             "train_convolution": "fixed<8,2>", "train_relu": "fixed<6,1,TRN,WRAP>",
                             "train_mm": "fixed<4,-5>"}}


@pytest.fixture(scope="module")
def conv_rtl(tmp_path_factory):
    """The saturating conv training design with counters in its C++ and RTL, its emulator and its Verilator run."""
    torch.manual_seed(0)
    x, y = torch.randn(4, 1, 4, 4) * 6, torch.randint(0, 3, (4,))
    design = fx2fpga.compile(ConvNet(), (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1), precision=CONV_NARROW,
                             share_memory=False, lanes=4, saturation_counters=True,
                             out_dir=tmp_path_factory.mktemp("sat") / "conv")
    with design.load("rtl") as rtl:
        yield x, y, design, rtl


@pytest.mark.slow
def test_rtl_counts_equal_the_emulator_and_keep_the_schedule(conv_rtl):
    x, y, design, rtl = conv_rtl
    emu = design.load("emu")
    emu.set_params_raw(rtl.get_params_raw())
    cycles = design.rtl_cycles()
    seen = set()
    for scale in (1.0, 2.0):
        xs, ys = (x * scale).numpy(), y.numpy()
        assert emu.train_step(xs, ys) == rtl.train_step(xs, ys)
        assert rtl.backend.last_cycles == cycles["train_step"]
        want, got = emu.saturation(), rtl.saturation()
        assert got == want
        seen |= {b for b, n in want.items() if n}
        assert np.array_equal(emu.infer(xs), rtl.infer(xs))
        assert rtl.backend.last_cycles == cycles["infer"]
        want, got = emu.saturation(), rtl.saturation()
        assert got == want
        seen |= {b for b, n in want.items() if n}
    # a reduction with guarded reads (SAT), an elementwise stage (WRAP), a weight gradient (a reduction, 4 lanes)
    assert {"infer_convolution", "infer_relu", "train_convolution", "train_relu", "train_mm"} <= seen
    assert not any(rtl.saturation().values())  # read and reset


@pytest.mark.slow
def test_rtl_with_counters_is_lint_clean(conv_rtl):
    from fx2fpga_runtime.rtl import sources, verilator_env

    _, _, design, _ = conv_rtl
    rtl_dir = design.out_dir / "rtl"
    exe, env = verilator_env()
    for top, flags in ((f"{design.kernel.name}_top", []), (f"{design.kernel.name}_axi", ["+1364-2005ext+v"])):
        proc = subprocess.run([exe, "--lint-only", "-Wall", *flags, "--top-module", top, f"-I{rtl_dir}",
                               *map(str, sources(rtl_dir))], capture_output=True, text=True, env=env)
        assert proc.returncode == 0 and "%Warning" not in proc.stderr, proc.stderr[-3000:]


def test_rtl_without_counters_has_no_counter_logic():
    torch.manual_seed(0)
    model, x = Net(), _inputs()
    off = fx2fpga.compile(model, (x,), precision=NARROW, share_memory=False).files()
    on = fx2fpga.compile(model, (x,), precision=NARROW, share_memory=False, saturation_counters=True).files()
    rtl_off = {p: t for p, t in off.items() if p.startswith("rtl/")}
    assert rtl_off and not any(w in t for t in rtl_off.values() for w in ("ovf", "sat_", "read_saturation"))
    assert "sat_count_0" in on["rtl/net_top.sv"] and "case 5:  // read_saturation" in on["rtl/sim_main.cpp"]
    # the conversions without the flag, the primitives, the memory images and the controller are the same files
    changed = ("_top.sv", "_mac_engine.sv", ".cpp", "_axi.v", "files.f")  # and the units, <name>_p<id>_<stage>.sv
    shared = [p for p in rtl_off if "_p" not in p.rsplit("/", 1)[-1] and not p.endswith(changed)]
    assert shared and all(on[p] == rtl_off[p] for p in shared if p in on)


@pytest.mark.slow
def test_pynq_driver_reads_the_rtl_counters_over_axi(tmp_path, monkeypatch):
    import sys

    from fx2fpga_runtime import rtl_axi
    from fx2fpga_runtime.pynq_backend import PynqBackend
    from fx2fpga_runtime.runner import KernelRunner

    torch.manual_seed(0)
    model, x = Net(), _inputs()
    design = fx2fpga.compile(model, (x,), precision=NARROW, share_memory=False, saturation_counters=True,
                             out_dir=tmp_path / "net")
    monkeypatch.setitem(sys.modules, "pynq", rtl_axi.pynq_module(design.out_dir, seed=1))
    (tmp_path / "stand-in.bit").write_bytes(b"")
    emu, k = design.load("emu"), design.kernel
    with KernelRunner(k, PynqBackend(k, design.out_dir, bitfile=tmp_path / "stand-in.bit")) as board:
        board.set_params_raw(emu.get_params_raw())
        assert np.array_equal(emu.infer(x.numpy()), board.infer(x.numpy()))
        want = emu.saturation()
        assert board.saturation() == want and want["infer_addmm"] > 0 and want["infer_relu"] > 0
        assert not any(board.saturation().values())
