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
    # the top function takes each DDR buffer with its storage type (32 bits for a fixed<24,8>: the same fraction
    # bits) and its on-chip shape, in declaration order
    assert "typedef ap_fixed<32,16,AP_TRN,AP_WRAP> ddr_fixed_24_8_t;" in header
    top = re.search(r"void digitscnn_top\((.*?)\);", header, re.S).group(1)
    assert top.split(",\n    ")[1:3] == ["ddr_fixed_24_8_t conv1_weight[4][1][3][3]", "ddr_fixed_24_8_t conv1_bias[4]"]
    assert len(top.split(",\n    ")) == 1 + len(ddr)
    # a stage takes exactly the DDR buffers it touches: the first convolution reads its weight and bias, writes mem0
    assert ("static void stage_infer_convolution(ddr_fixed_24_8_t conv1_weight[4][1][3][3], ddr_fixed_24_8_t "
            "conv1_bias[4], ddr_fixed_16_6_t mem0[16][4][8][8]) {") in src
    harness = (design.out_dir / "src" / "csim_main.cpp").read_text()
    assert "static ddr_fixed_24_8_t conv1_weight[4][1][3][3] = {" in harness  # with the initial weights
    assert re.search(r"digitscnn_top\(cmd, in_words, out_words, conv1_weight, conv1_bias, .*, "
                     r"train_step_neg_lr_train_sub_2\);", harness)


def _cpp_type_bits(cpp: str, typedefs: dict[str, str]) -> int:
    """The bits of a C++ element type of the generated header: a typedef's ``ap_[u]fixed<W, ...>``/``ap_[u]int<W>``."""
    m = re.fullmatch(r"ap_u?(?:fixed|int)<(\d+)(?:,.*)?>", typedefs.get(cpp, cpp))
    assert m, f"not an ap_ type: {cpp} ({typedefs.get(cpp)})"
    return int(m.group(1))


def test_every_m_axi_array_has_a_power_of_two_bit_element_type(ddr_cnn):
    """Vitis HLS infers no bursts on an interface type with padding (UG1448, "Burst Inference Failure 11"): every
    ``m_axi`` argument's element is 8, 16, 32 or 64 bits, exactly the bytes the driver allocates a value, in the
    header, every function that takes it, the harness and the manifest; no DDR buffer here is a power of two wide."""
    _, design = ddr_cnn
    k = design.kernel
    src_dir = design.out_dir / "src"
    header, src = (src_dir / f"{k.name}.h").read_text(), (src_dir / f"{k.name}.cpp").read_text()
    typedefs = {name: cpp for cpp, name in re.findall(r"^typedef (.+?) (\w+);", header, re.M)}
    ports = re.findall(r"#pragma HLS INTERFACE m_axi port=(\w+) ", src)
    assert ports[2:] == k.ddr_buffers()
    top = re.search(rf"void {k.name}_top\((.*?)\);", header, re.S).group(1)
    params = dict(reversed(re.match(r"(?:const )?(\w+(?:<[^>]*>)?) (\w+)\[", p).groups())
                  for p in top.split(",\n    ")[1:])
    assert list(params) == k.ddr_buffers()
    layout = {row["buffer"]: row for row in json.loads((design.out_dir / "manifest.json").read_text())["ddr_buffers"]}
    widths = {n: k.buffers[n].fmt.width for n in k.ddr_buffers()}
    assert {24, 16, 1} <= set(widths.values()) and not {8, 32, 64} & set(widths.values())
    for name, cpp in params.items():
        bits = _cpp_type_bits(cpp, typedefs)
        assert bits in (8, 16, 32, 64) and bits == 8 * layout[name]["element_bytes"] >= widths[name], (name, cpp)
        assert layout[name]["type"] == typedefs[cpp]  # the manifest names the storage type
        # every function taking the buffer takes it with that type
        assert set(re.findall(rf"(\w+) {name}\[", src)) == {cpp}, name
    harness = (src_dir / "csim_main.cpp").read_text()
    assert set(re.findall(r"^static (\w+) (\w+)\[", harness, re.M)) == {(t, n) for n, t in params.items()}


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


class SquareMLP(torch.nn.Module):
    """``fc2(relu(fc1(x * x)))``: an elementwise product, a mac fused with its ReLU and, in training, a mac fused with
    ReLU's backward and the parameters' updates, every one written into a DDR buffer."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(6, 8), torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x * x)))


# 24-bit formats that round (RND, RND_CONV) and saturate: x * x (22 fraction bits of 44) saturates at 2 for |x| > 1.41,
# fc1's output (its ReLU fused) at 4, the weights at 1 (lr 8)
SATURATING = {"activation": "fixed<24,2,RND,SAT>", "weight": "fixed<24,1,RND_CONV,SAT>",
              "gradient": "fixed<24,3,RND,SAT>", "overrides": {"mul": "fixed<24,2,RND,SAT>",
                                                                "addmm": "fixed<24,3,RND_CONV,SAT>",
                                                                "relu": "fixed<24,3,RND_CONV,SAT>"}}


@pytest.mark.parametrize("counters", [False, True], ids=["plain", "saturation_counters"])
def test_24_bit_ddr_buffers_round_and_saturate_as_their_own_format_in_csim(tmp_path, counters):
    """Each DDR buffer is a 32-bit storage type (the format's fraction bits, 8 more integer bits): a write that
    assigned the value to it directly would neither saturate at the 24-bit format's range nor round as its mode says.
    Every write converts to the buffer's own type first, so csim equals emu bit for bit over three training steps
    and an inference, and the values written do saturate and round (the counters count the same in both)."""
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-3, 3, size=(4, 6)).astype(np.float32) for _ in range(4)]
    y = np.array([0, 2, 1, 1])
    torch.manual_seed(0)
    with pytest.warns(fx2fpga.QuantizationWarning):
        design = fx2fpga.compile(SquareMLP(), (torch.from_numpy(xs[0]),),
                                 train=fx2fpga.SGD(F.cross_entropy, torch.from_numpy(y), lr=8.0), outputs="hls",
                                 precision=SATURATING, placement="ddr", saturation_counters=counters,
                                 out_dir=tmp_path / "square")
    k = design.kernel
    assert {"mem0", "mem1", "fc1_weight", "fc2_weight"} <= set(k.ddr_buffers())
    assert [str(k.buffers[n].fmt) for n in ("mem0", "mem1", "fc1_weight")] == [
        "fixed<24,2>", "fixed<24,3,RND_CONV,SAT>", "fixed<24,1,RND_CONV,SAT>"]
    src = (design.out_dir / "src" / f"{k.name}.cpp").read_text()
    assert "ddr_fixed_24_2_t mem0[4][6]" in src
    if not counters:  # the writes: elementwise, a mac fused with ReLU, one fused with ReLU's backward, an update
        assert "mem0[i][j] = fixed_24_2_t(infer_x[i][j] * infer_x[i][j]);" in src
        assert "mem1[i][j] = fixed_24_3_rnd_conv_sat_t((pre_v > 0) ? pre_v : fixed_24_3_rnd_conv_sat_t(0));" in src
        assert "train_where_2[i][j] = fixed_24_3_t((fixed_24_3_rnd_conv_sat_t(mem1[i][j]) <= 0) ? " in src
        assert "fc1_weight[i][j] = fixed_24_1_rnd_conv_sat_t(acc[i_lane]);" in src
    calls = [*(("train_step", [x, y]) for x in xs[:3]), ("infer", [xs[3]])]
    emu_counts, saturated = [], {}
    if counters:  # the emulator's counts of each call, from the same start as assert_backend_equals_emu's
        probe = design.load("emu")
        for command, arrays in calls:
            probe.call_raw(command, probe._quantize_inputs(command, arrays))
            emu_counts.append(probe.saturation())

    def after_call(command, runner):  # csim's counters of the call (then reset) equal the emulator's
        if counters:
            got = runner.saturation()
            assert got == emu_counts.pop(0), command
            for name, n in got.items():
                saturated[name] = saturated.get(name, 0) + n

    emu = assert_backend_equals_emu(design, "csim", calls, after_call=after_call)
    # the last call's x * x in DDR: rounded half up to 22 fraction bits, saturated at the format's range
    fmt = k.buffers["mem0"].fmt
    raw = emu._quantize_inputs("infer", [xs[3]])["infer_x"].astype(np.int64)
    exact = raw * raw  # 44 fraction bits
    want = np.clip((exact + (1 << 21)) >> 22, fmt.raw_min, fmt.raw_max)
    assert np.array_equal(emu.backend.emulator.read("mem0"), want)
    assert (want == fmt.raw_max).any() and (exact % (1 << 22) != 0).all()  # saturated, and every value rounded
    weight = emu.backend.emulator.read("fc1_weight")
    assert ((weight == k.buffers["fc1_weight"].fmt.raw_max) | (weight == k.buffers["fc1_weight"].fmt.raw_min)).any()
    if counters:  # saturated in DDR: x * x, fc1's output after its ReLU, both layers' weights and biases
        assert all(saturated[n] > 0 for n in ("mem0", "mem1", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"))
