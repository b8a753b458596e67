"""Buffers placed in DDR (issue 17, docs/offchip.md): the "place" step, the HLS ``m_axi`` ports, csim.

The digits CNN (``examples/cnn_digits.py``) with every parameter and temporary array forced to DDR
(``placement="ddr"``) computes in csim exactly what the on-chip kernel computes in the emulator; the RTL refuses
it with the reason, and the project folder reports where each buffer lives.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime import make_backend
from fx2fpga_runtime.ir import CHIP, DDR, Kernel

import fx2fpga
from fx2fpga.errors import PlacementError
from fx2fpga.passes import estimate, placement
from fx2fpga.targets import load_target
from tests.conftest import assert_backend_equals_emu, float_params, load_example

cnn = load_example("cnn_digits")
BYTES_IN_DDR = 105_864  # the DDR buffers as the driver allocates them (84,222 at ceil(width / 8) bytes a value)
PARAMS = ["conv1_weight", "conv1_bias", "conv2_weight", "conv2_bias", "fc_weight", "fc_bias"]


def _model():
    torch.manual_seed(0)
    return cnn.DigitsCNN()


def _compile(model, **kw):
    return fx2fpga.compile(model, cnn.example_inputs, train=fx2fpga.SGD(cnn.loss_fn, cnn.example_targets, lr=cnn.lr),
                           **kw)


@pytest.fixture(scope="module")
def ddr_cnn(tmp_path_factory):
    """The digits CNN, every parameter and temporary array in DDR, folder written (HLS and the RTL's README)."""
    model = _model()
    return model, _compile(model, placement="ddr", out_dir=tmp_path_factory.mktemp("ddr") / "cnn")


@pytest.fixture(scope="module")
def chip_cnn():
    """The same CNN wholly on chip (the emulator only)."""
    return _compile(_model())


def test_ddr_places_every_parameter_and_temporary_array(ddr_cnn, chip_cnn):
    _, design = ddr_cnn
    k = design.kernel
    ddr = k.ddr_buffers()
    assert len(ddr) == 35 and ddr[:6] == PARAMS  # the six weight arrays, then the temporaries in declaration order
    assert set(ddr) == {n for n, b in k.buffers.items() if b.role in ("param", "temp") and b.shape}
    on_chip = {n: b for n, b in k.buffers.items() if b.place == CHIP}
    assert on_chip["lr"].shape == () and on_chip["train_sum_3"].shape == ()  # scalars stay registers
    assert {b.role for b in on_chip.values()} == {"param", "input", "target", "output", "temp", "const"}
    assert {"infer_x", "train_x", "train_y", "infer_output", "train_loss"} <= set(on_chip)  # the word streams
    assert all(b.place == CHIP for b in chip_cnn.kernel.buffers.values())  # nothing moves without a request
    assert list(k.buffers) == list(chip_cnn.kernel.buffers)  # the same buffers, only their places differ


def test_manifest_and_report_show_places_and_bytes(ddr_cnn):
    _, design = ddr_cnn
    k = design.kernel
    manifest = json.loads((design.out_dir / "manifest.json").read_text())
    rows = {r["buffer"]: r for r in manifest["buffers"]}
    assert [n for n, r in rows.items() if r["place"] == DDR] == k.ddr_buffers()
    # the weights: fixed<24,8>, in DDR 4 bytes a value (the m_axi array's element, a power of two of bytes):
    # 4x1x3x3 + 4 + 8x4x3x3 + 8 + 10x32 + 10 values
    assert sum(rows[p]["bytes"] for p in PARAMS) == (36 + 4 + 288 + 8 + 320 + 10) * 4 == 2_664
    tot = manifest["placement"]
    assert tot["ddr"] == {"buffers": 35, "bytes": 105_864, "bits": 672_592}
    assert tot["chip"] == {"buffers": 15, "bytes": 9_550, "bits": 76_324}
    assert tot["ddr"]["bytes"] == sum(r["bytes"] for r in manifest["ddr_buffers"])  # what the driver allocates
    assert tot["chip"]["bits"] == manifest["estimated_resources"]["memory_bits"]  # the estimate: on chip only
    report = (design.out_dir / "report.md").read_text()
    assert "| `conv1_weight` | 4x1x3x3 | fixed<24,8> | param | weight | ddr | 864 | 144 |" in report
    assert "| `lr` | scalar | fixed<18,2> | param | hyper | chip | 18 | 3 |" in report
    assert "In DDR: 35 buffers, 105,864 bytes." in report and "On chip: 15 buffers, 9,550 bytes" in report
    assert "On-chip memory: 76,324 bits in 15 arrays." in report
    assert "placement requested: 35 buffers in DDR (conv1_weight, conv1_bias," in report


def test_the_estimate_counts_no_block_ram_for_ddr_buffers(ddr_cnn, chip_cnn):
    _, design = ddr_cnn
    t = design.target
    chip, ddr = estimate.resources(chip_cnn.kernel, t), estimate.resources(design.kernel, t)
    assert placement.totals(chip_cnn.kernel, t)["chip"] == {"buffers": 50, "bytes": 93_772, "bits": 748_916}
    assert (chip.bram36, chip.memory_bits) == (59.5, 748_916)
    assert (ddr.bram36, ddr.memory_bits) == (5.5, 76_324)  # the inputs, outputs, small scalars and ROMs
    assert ddr.dsp == chip.dsp == 80  # the arithmetic is the same


def test_kernel_cpp_has_an_m_axi_port_and_no_array_per_ddr_buffer(ddr_cnn):
    _, design = ddr_cnn
    k = design.kernel
    src = (design.out_dir / "src" / f"{k.name}.cpp").read_text()
    header = (design.out_dir / "src" / f"{k.name}.h").read_text()
    ports = re.findall(r"#pragma HLS INTERFACE m_axi port=(\w+) offset=slave depth=(\d+) bundle=(\w+)", src)
    ddr = k.ddr_buffers()
    assert ports[:2] == [("in_words", "1040", "gmem"), ("out_words", "667", "gmem")]
    assert ports[2:] == [(n, str(k.buffers[n].size), f"gmem{i}") for i, n in enumerate(ddr, 1)]
    assert re.findall(r"#pragma HLS INTERFACE s_axilite port=(\w+)", src) == [*ddr, "cmd", "return"]
    statics = set(re.findall(r"^static (?:const )?\w+ (\w+)[\[ ;]", src, re.M))
    assert not statics & set(ddr) and {"lr", "train_x", "k_eq"} <= statics  # on chip: still static arrays
    partitioned = set(re.findall(r"ARRAY_PARTITION variable=(\w+)", src))
    assert partitioned and not partitioned & set(ddr)
    # the top function takes each DDR buffer with its on-chip type and shape, in declaration order
    top = re.search(r"void digitscnn_top\((.*?)\);", header, re.S).group(1)
    assert top.split(",\n    ")[1:3] == ["fixed_24_8_t conv1_weight[4][1][3][3]", "fixed_24_8_t conv1_bias[4]"]
    assert len(top.split(",\n    ")) == 1 + len(ddr)
    # a stage takes exactly the DDR buffers it touches: the first convolution reads its weight and bias, writes mem0
    assert ("static void stage_infer_convolution(fixed_24_8_t conv1_weight[4][1][3][3], fixed_24_8_t conv1_bias[4], "
            "fixed_16_6_t mem0[16][4][8][8]) {") in src
    harness = (design.out_dir / "src" / "csim_main.cpp").read_text()
    assert "static fixed_24_8_t conv1_weight[4][1][3][3] = {" in harness  # with the initial weights
    assert re.search(r"digitscnn_top\(cmd, in_words, out_words, conv1_weight, conv1_bias, .*, "
                     r"train_step_neg_lr_train_sub_2\);", harness)


def test_csim_in_ddr_equals_the_on_chip_emulator_over_two_steps(ddr_cnn, chip_cnn, digits_data):
    """Two training steps then an inference: the DDR kernel's csim equals the emulator word for word after each call
    (parameters included), and its losses and parameters equal the on-chip kernel's emulator bit for bit."""
    model, design = ddr_cnn
    x_train, y_train, x_test, _ = digits_data
    steps = [("train_step", [cnn.images(x_train[16 * s:16 * s + 16]), y_train[16 * s:16 * s + 16]]) for s in range(2)]
    assert_backend_equals_emu(design, "csim", [*steps, ("infer", [cnn.images(x_test[:16])])],
                              params=float_params(model))
    chip = chip_cnn.load("emu")
    with design.load("csim") as csim:
        for runner in (chip, csim):
            runner.set_params(float_params(model))
        for _, (x, y) in steps:
            assert chip.train_step(x, y) == csim.train_step(x, y)
            want, got = chip.get_params_raw(), csim.get_params_raw()
            assert want.keys() == got.keys() and len(want) == 7
            assert all(np.array_equal(want[n], got[n]) for n in want)
        start = design.kernel.buffers["conv1_weight"].init
        assert not np.array_equal(got["conv1_weight"].reshape(-1), start)  # the weights in DDR did change
        new = {n: v * 0.5 for n, v in csim.get_params().items() if n in model.state_dict()}
        csim.set_params(new, partial=True)  # set_params writes the DDR arrays through load_params
        chip.set_params(new, partial=True)
        assert np.array_equal(csim.get_params_raw()["fc_weight"], chip.get_params_raw()["fc_weight"])


def test_recompiling_gives_byte_identical_files(ddr_cnn):
    model, design = ddr_cnn
    again = _compile(model, placement="ddr")
    first, second = design.files(), again.files()
    assert first.keys() == second.keys() and "src/digitscnn.cpp" in first
    assert [f for f in first if first[f] != second[f]] == []


def test_both_outputs_write_the_rtl_refusal_into_its_readme(ddr_cnn):
    _, design = ddr_cnn
    assert design.schedule is None and design.rtl_cycles() is None
    readme = (design.out_dir / "rtl" / "README.md").read_text()
    assert ("buffer 'conv1_weight' (and 34 more: the manifest's buffers list them) is placed in DDR; the RTL's AXI "
            "master for DDR buffers is not built yet (issue 17): use outputs='hls'") in readme
    assert not list((design.out_dir / "rtl").glob("*.sv"))


def test_rtl_output_with_a_ddr_buffer_is_refused_naming_it():
    with pytest.raises(PlacementError) as info:
        _compile(_model(), placement={"fc_weight": "ddr"}, outputs="rtl", until="place")
    assert str(info.value).startswith("buffer 'fc_weight' is placed in DDR; the RTL's AXI master")
    assert "use outputs='hls'" in str(info.value)


def test_an_unknown_buffer_is_a_clear_error_naming_the_buffers():
    with pytest.raises(PlacementError) as info:
        _compile(_model(), placement={"conv9_weight": "ddr"}, until="place")
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert msg.startswith("placement names an unknown buffer 'conv9_weight'; the buffers of digitscnn are: "
                          "conv1_weight, conv1_bias, conv2_weight,")
    assert "train_loss" in msg


@pytest.mark.parametrize("request_, message", [
    ({"lr": "ddr"}, "buffer 'lr' cannot be placed in DDR: it is a scalar (a register on chip)"),
    ({"k_eq": "ddr"}, "buffer 'k_eq' cannot be placed in DDR: it is a constant (a ROM on chip)"),
    ({"conv1_weight": "sram"}, "placement of 'conv1_weight': 'sram' is not a place; the places are chip, ddr"),
    ("everything", "placement must be None, \"ddr\" or a dict buffer -> \"ddr\" | \"chip\", got 'everything'"),
    ({"train_relu": "ddr", "infer_relu": "chip"}, "placement puts array 'mem0' both on chip and in DDR"),
])
def test_placements_that_cannot_be_honoured_are_refused(request_, message):
    with pytest.raises(PlacementError, match=re.escape(message)):
        _compile(_model(), placement=request_, until="place")


def test_a_tensor_sharing_an_array_places_that_array():
    k = _compile(_model(), placement={"train_relu": "ddr", "conv1_weight": "chip"}, until="place")
    assert k.meta["memory"]["mem0"] == ["infer_relu", "train_relu"]
    assert k.ddr_buffers() == ["mem0"]


def test_automatic_placement_moves_the_largest_arrays_until_the_block_ram_fits():
    """outputs='hls' on a target whose block RAM is too small: the largest free arrays go to DDR, largest first,
    and no more than needed; with RTL in the folder nothing moves (the RTL cannot reach DDR). The step runs before
    lanes (one lane a stage: 30.5 BRAM36 on chip); the tile step then keeps the most lanes that fit."""
    small = dataclasses.replace(load_target("pynq-z1"), bram36=20)
    k = _compile(_model(), target=small, outputs="hls", until="place")
    moved = k.ddr_buffers()
    by_bytes = sorted(placement.ddr_candidates(k), key=lambda n: -placement.placement_bytes(k.buffers[n]))
    assert moved and set(moved) == set(by_bytes[:len(moved)])  # the largest, by bytes
    assert estimate.resources(k, small).bram36 <= 20
    k.buffers[moved[-1]].place = CHIP  # one fewer does not fit: no more than needed
    assert estimate.resources(k, small).bram36 > 20
    assert _compile(_model(), target=small, outputs="both", until="place").ddr_buffers() == []
    kept = _compile(_model(), target=small, outputs="hls", placement={by_bytes[0]: "chip"}, until="place")
    assert kept.buffers[by_bytes[0]].place == CHIP and by_bytes[1] in kept.ddr_buffers()  # a forced place holds


def test_lanes_auto_with_a_ddr_buffer_falls_back_to_the_hls_estimate():
    """The explorer prices RTL design points, and the RTL cannot map a DDR buffer: lanes='auto' widens stages on
    the HLS estimate instead (as for outputs='hls'), with no exploration."""
    design = _compile(_model(), placement={"mem0": "ddr"}, lanes="auto", outputs="both")
    assert design.context.exploration is None and design.schedule is None
    assert max(s.lanes for s in design.kernel.stages()) > 1


def test_kernel_json_records_only_the_ddr_places(ddr_cnn):
    _, design = ddr_cnn
    text = (design.out_dir / "kernel.json").read_text()
    plain = json.loads(text)["buffers"]
    assert plain["conv1_weight"]["place"] == DDR and "place" not in plain["lr"]
    assert set(Kernel.from_json(text).ddr_buffers()) == set(design.kernel.ddr_buffers())  # (kernel.json sorts keys)


def test_the_manifest_lays_out_the_ddr_buffers_for_the_board_driver(ddr_cnn, monkeypatch):
    """One m_axi address register per DDR buffer after out_words (0x24), 0xC bytes apart, in declaration order;
    each value in a power of two of bytes. The driver accepts the kernel (tests/feature/test_pynq_backend.py runs
    it); off the board it stops at the missing pynq package."""
    _, design = ddr_cnn
    rows = json.loads((design.out_dir / "manifest.json").read_text())["ddr_buffers"]
    assert [r["buffer"] for r in rows] == design.kernel.ddr_buffers()
    assert [int(r["register"], 16) for r in rows] == [0x30 + 0xC * i for i in range(35)]
    assert {r["format"]: r["element_bytes"] for r in rows if r["buffer"] in PARAMS} == {"fixed<24,8>": 4}
    assert sum(r["bytes"] for r in rows) == BYTES_IN_DDR
    monkeypatch.setitem(sys.modules, "pynq", None)
    with pytest.raises(ImportError, match="runs on a PYNQ board"):
        make_backend(design.kernel, "pynq", design.out_dir)


def test_stacked_models_in_groups_with_ddr_buffers_equal_emu_in_csim(mlp_example, digits_data):
    """4 digits MLPs on a model axis, 2 at a time (the program loops over groups, parameters indexed by group):
    every parameter and temporary array in DDR, the per-model learning rates too; csim equals emu over 2 steps."""
    torch.manual_seed(0)
    models = [mlp_example.DigitsMLP() for _ in range(4)]
    design = fx2fpga.compile(models, mlp_example.example_inputs, outputs="hls", lanes=2, model_lanes=2,
                             train=fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, lr=0.1),
                             placement="ddr")
    k = design.kernel
    assert [p.groups for p in k.programs.values()] == [2, 2]
    assert k.buffers["lr"].shape == (4,) and k.buffers["lr"].place == DDR  # one rate per model: an array
    assert len(k.ddr_buffers()) == 20  # (ReLU's backward is applied as its gradient's matmul writes: no unmasked
    # gradient array)
    x_train, y_train, _, _ = digits_data
    assert_backend_equals_emu(design, "csim", [("train_step", [x_train[16 * s:16 * s + 16],
                                                               y_train[16 * s:16 * s + 16]]) for s in range(2)])


def test_ddr_traffic_per_call_counts_padding_and_every_parameter(ddr_cnn):
    """``manifest.json``'s DDR traffic (``passes/ddr_traffic.py``). By hand, in ``infer``: the second convolution
    (3x3, padding 1, 4 -> 8 channels on 4x4) reads its pooled input ``mem1`` where the padding guard holds,
    16 x 8 x 4 x (3 x 4 - 2)^2 = 51,200 times (not 16 x 8 x 4 x 144); the first max pool writes it once per
    output, 16 x 4 x 4 x 4 = 1,024 times. load_params writes each parameter in DDR once (2,664 bytes: 4 a value)."""
    _, design = ddr_cnn
    k = design.kernel
    traffic = json.loads((design.out_dir / "manifest.json").read_text())["ddr_traffic"]
    per_value = placement.bytes_per_value(k.buffers["mem1"].fmt.width, DDR)
    assert traffic["infer"]["buffers"]["mem1"] == {"read_bytes": 51_200 * per_value, "write_bytes": 1_024 * per_value}
    assert traffic["load_params"]["write_bytes"] == traffic["read_params"]["read_bytes"] == 2_664
    assert traffic["infer"]["buffers"]["conv1_weight"]["read_bytes"] == 16 * 4 * 8 * 8 * 9 * 4  # every point
    assert (traffic["infer"]["bytes"], traffic["train_step"]["bytes"]) == (628_352, 1_982_640)
    assert traffic["train_step"]["min_cycles"] == 247_830  # 1,982,640 bytes at 8 a cycle: 2.48 ms at 100 MHz
    assert traffic["train_step"]["min_cycles"] > estimate.program_cycles(k, "train_step")  # DDR-bound, untiled
    assert set(traffic["train_step"]["buffers"]) == set(k.ddr_buffers())  # all 35 touched
    assert "| `train_step` | 1,875,784 | 106,856 | 1,982,640 | 247,830 | 2,478.3 |" in design.report
