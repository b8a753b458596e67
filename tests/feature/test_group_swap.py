"""Group swap (issue 17, ``fx2fpga/passes/group_swap.py``, docs/offchip.md "Group swap"): models in groups whose
parameters live in DDR are worked on through on-chip tiles of one group, loaded and stored by copy stages.

4 digits MLPs (``examples/mlp_digits.py``) in groups of 2: csim equals the emulator, and the emulator equals the
same kernel wholly on chip; each parameter value crosses the DDR port once in and once out per group pass.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fx2fpga_runtime.ir import CHIP, DDR, GROUP_VAR, MODEL_VAR

import fx2fpga
from fx2fpga.passes import ddr_traffic, estimate, group_swap
from tests.conftest import assert_backend_equals_emu

WEIGHTS = {"fc1_weight": DDR, "fc2_weight": DDR}
FC1, FC2 = 4 * 32 * 64, 4 * 10 * 32  # the two weights' values, 4 models
BYTES = 4  # a fixed<24,8> value in DDR: its m_axi element


def _compile(mlp_example, **kw):
    torch.manual_seed(0)
    models = [mlp_example.DigitsMLP() for _ in range(4)]
    return fx2fpga.compile(models, mlp_example.example_inputs, outputs="hls", lanes=2, model_lanes=2,
                           train=fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, lr=0.1), **kw)


@pytest.fixture(scope="module")
def weights_in_ddr(mlp_example, tmp_path_factory):
    """The two weight matrices in DDR, folder written."""
    return _compile(mlp_example, placement=WEIGHTS, out_dir=tmp_path_factory.mktemp("swap") / "mlps")


def _batches(digits_data, steps):
    x, y, _, _ = digits_data
    return [("train_step", [x[16 * s:16 * s + 16], y[16 * s:16 * s + 16]]) for s in range(steps)]


def test_each_program_loads_the_group_first_and_stores_it_last(weights_in_ddr):
    k = weights_in_ddr.kernel
    assert group_swap.tile_of(k) == {"fc1_weight": "fc1_weight_tile", "fc2_weight": "fc2_weight_tile"}
    tile = k.buffers["fc1_weight_tile"]
    assert (tile.shape, tile.place, tile.role, tile.fmt) == ((2, 32, 64), CHIP, "temp", k.buffers["fc1_weight"].fmt)
    assert "fc1_weight_tile" not in k.params  # not a parameter: never packed or unpacked
    infer, train = k.programs["infer"].stages, k.programs["train_step"].stages
    assert [s.name for s in infer[:2]] == ["infer_load_fc1_weight", "infer_load_fc2_weight"]
    assert not any(s.attrs.get("group_swap") == "store" for s in infer)  # inference reads the weights only
    assert [s.name for s in train[:2]] == ["train_step_load_fc1_weight", "train_step_load_fc2_weight"]
    assert [s.name for s in train[-2:]] == ["train_step_store_fc1_weight", "train_step_store_fc2_weight"]
    load, store = train[0], train[-2]
    assert (load.op, load.out.c_expr(), load.ins[0].c_expr()) == (
        "copy", "fc1_weight_tile[mdl][i1][i2]", "fc1_weight[2*grp + mdl][i1][i2]")
    assert (store.out.c_expr(), store.ins[0].c_expr()) == ("fc1_weight[2*grp + mdl][i1][i2]",
                                                          "fc1_weight_tile[mdl][i1][i2]")
    assert load.lanes == store.lanes == 1  # one element a cycle over the port
    # every other stage works on the tiles: the DDR buffers appear in the copies only
    for prog in k.programs.values():
        for st in prog.stages:
            names = {a.buffer for a in (st.out, *st.ins)}
            assert bool(names & set(WEIGHTS)) == group_swap.is_swap_copy(st), st.name
    update = next(s for s in train if s.name == "train_update_fc1_weight")
    assert update.out.c_expr() == "fc1_weight_tile[mdl][i][j]" and update.lanes == 2  # the lanes stay
    assert not any(GROUP_VAR in ix.vars() for st in train if not group_swap.is_swap_copy(st)
                   for a in (st.out, *st.ins) if a.buffer.endswith("_tile") for ix in a.index)


def test_ddr_traffic_moves_each_weight_once_in_and_once_out_per_step(weights_in_ddr, mlp_example, monkeypatch):
    """By hand: a step loads each of the 4 models' 2,048 + 320 weights once (2 groups of 2) and stores each once,
    4 bytes a value: 37,888 bytes each way; an inference only loads. Without the swap the same kernel reads fc1's
    weights at every multiply-accumulate point (16 batch rows x 2,048 x 4 models), fc2's in the forward and the
    backward matmul, and both once more as the update's init: 726,016 bytes read a step."""
    traffic = {t.command: t for t in ddr_traffic.kernel_traffic(weights_in_ddr.kernel)}
    each_way = (FC1 + FC2) * BYTES
    assert each_way == 37_888
    step = traffic["train_step"]
    assert {b.buffer: (b.reads, b.writes) for b in step.buffers} == {"fc1_weight": (FC1, FC1),
                                                                    "fc2_weight": (FC2, FC2)}
    assert (step.read_bytes, step.write_bytes) == (each_way, each_way)
    assert (traffic["infer"].read_bytes, traffic["infer"].write_bytes) == (each_way, 0)
    assert traffic["load_params"].write_bytes == traffic["read_params"].read_bytes == each_way  # the DDR arrays
    assert step.min_cycles(weights_in_ddr.target.ddr) == 2 * each_way // 8 == 9_472
    manifest = json.loads((weights_in_ddr.out_dir / "manifest.json").read_text())["ddr_traffic"]["train_step"]
    assert (manifest["bytes"], manifest["min_cycles"]) == (2 * each_way, 9_472)  # (the manifest says the same)

    monkeypatch.setattr(group_swap, "run", lambda kernel, size: kernel)  # the same kernel, unswapped
    plain = {t.command: t for t in ddr_traffic.kernel_traffic(_compile(mlp_example, placement=WEIGHTS).kernel)}
    reads = 16 * FC1 + FC1 + 2 * 16 * FC2 + FC2  # forward (fc1, fc2), backward (fc2), update inits
    assert plain["train_step"].read_bytes == reads * BYTES == 726_016
    assert plain["train_step"].write_bytes == each_way


def test_the_estimate_counts_the_tiles_block_ram(weights_in_ddr):
    k = weights_in_ddr.kernel
    tiles = sum(k.buffers[t].size * k.buffers[t].fmt.width for t in group_swap.tile_of(k).values())
    assert tiles == 2 * (2_048 + 320) * 24
    with_tiles = estimate.resources(k, weights_in_ddr.target)
    for t in group_swap.tile_of(k).values():
        k.buffers[t].place = DDR  # as if the tiles took no block RAM
    try:
        without = estimate.resources(k, weights_in_ddr.target)
    finally:
        for t in group_swap.tile_of(k).values():
            k.buffers[t].place = CHIP
    assert with_tiles.memory_bits - without.memory_bits == tiles
    assert with_tiles.bram36 > without.bram36


def test_the_copies_are_pipelined_loops_over_the_ddr_array(weights_in_ddr):
    k = weights_in_ddr.kernel
    src = (weights_in_ddr.out_dir / "src" / f"{k.name}.cpp").read_text()
    body = re.search(r"static void stage_train_step_load_fc1_weight\((.*?)\) \{\n(.*?)\n\}\n", src, re.S)
    # the m_axi argument, the only DDR buffer: its storage type, 32 bits (docs/offchip.md)
    assert body.group(1) == "ddr_fixed_24_8_t fc1_weight[4][32][64]"
    loops = re.findall(r"for \(int (\w+) = 0; \w+ < (\d+); \w+\+\+\)", body.group(2))
    assert loops == [("mdl", "2"), ("i1", "32"), ("i2", "64")]
    assert body.group(2).count("#pragma HLS PIPELINE II=1") == 1 and "UNROLL" not in body.group(2)
    # each element read converted to the buffer's own type; the store converts before it writes
    assert "fc1_weight_tile[mdl][i1][i2] = fixed_24_8_t(fc1_weight[2*grp + mdl][i1][i2]);" in body.group(2)
    assert "fc1_weight[2*grp + mdl][i1][i2] = fixed_24_8_t(fc1_weight_tile[mdl][i1][i2]);" in src
    assert "static fixed_24_8_t fc1_weight_tile[2][32][64];" in src  # the tile: an on-chip array
    run = re.search(r"static void run_train_step\(.*?\) \{\n(.*?)\n\}\n", src, re.S).group(1)
    calls = re.findall(r"(stage_\w+)\(", run)
    assert calls[:2] == ["stage_train_step_load_fc1_weight", "stage_train_step_load_fc2_weight"]
    assert calls[-2:] == ["stage_train_step_store_fc1_weight", "stage_train_step_store_fc2_weight"]
    assert re.search(r"ARRAY_PARTITION variable=fc1_weight_tile ", src)  # banked for the stages' lanes
    assert not re.search(r"ARRAY_PARTITION variable=fc1_weight ", src)


def test_csim_equals_emu_and_the_on_chip_kernel_over_two_steps(mlp_example, digits_data, tmp_path):
    """Every parameter and temporary array in DDR (the learning rates and biases swapped too): csim equals the
    emulator word for word over two steps and an inference, parameters included; the emulator equals the same
    kernel wholly on chip, loss and parameters, bit for bit (the swap moves values, it computes nothing);
    set_params/get_params go through the DDR arrays."""
    design = _compile(mlp_example, placement="ddr", out_dir=tmp_path / "mlps")
    k = design.kernel
    assert set(group_swap.tile_of(k)) == {"fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "lr"}
    assert all(k.buffers[t].place == CHIP for t in group_swap.tile_of(k).values())
    x_test = digits_data[2]
    sequence = [*_batches(digits_data, 2), ("infer", [x_test[:16]])]
    emu = assert_backend_equals_emu(design, "csim", sequence)
    chip = _compile(mlp_example).load("emu")
    assert group_swap.tile_of(chip.kernel) == {}
    swapped = design.load("emu")
    for command, arrays in sequence:
        raw = chip._quantize_inputs(command, arrays)
        want, got = chip.call_raw(command, raw), swapped.call_raw(command, raw)
        assert want.keys() == got.keys() and all(np.array_equal(want[n], got[n]) for n in want), command
    assert all(np.array_equal(chip.get_params_raw()[n], swapped.get_params_raw()[n]) for n in k.params)
    with design.load("csim") as csim:
        new = [{n: v * 0.5 for n, v in p.items()} for p in emu.get_params()]
        csim.set_params(new, partial=True)
        emu.set_params(new, partial=True)
        got, want = csim.get_params(), emu.get_params()
        assert all(np.array_equal(g[n], w[n]) for g, w in zip(got, want, strict=True) for n in w)
        step = _batches(digits_data, 1)[0][1]
        assert np.array_equal(np.asarray(csim.train_step(*step)), np.asarray(emu.train_step(*step)))


def test_recompiling_gives_byte_identical_files(weights_in_ddr, mlp_example):
    again = _compile(mlp_example, placement=WEIGHTS)
    first, second = weights_in_ddr.files(), again.files()
    assert first.keys() == second.keys() and any(f.startswith("src/") for f in first)
    assert [f for f in first if first[f] != second[f]] == []


def test_a_program_of_one_group_is_not_swapped(mlp_example):
    """All 4 models at once (one group): the tile would be the whole buffer, so the stages read DDR as before."""
    torch.manual_seed(0)
    models = [mlp_example.DigitsMLP() for _ in range(4)]
    k = fx2fpga.compile(models, mlp_example.example_inputs, outputs="hls", lanes=2, model_lanes=4,
                        train=fx2fpga.SGD(F.cross_entropy, mlp_example.example_targets, lr=0.1),
                        placement=WEIGHTS, until="tile")
    assert [p.groups for p in k.programs.values()] == [1, 1] and group_swap.tile_of(k) == {}
    assert any(a.buffer == "fc1_weight" and a.index[0].vars() == (MODEL_VAR,) for st in k.stages() for a in st.ins)
