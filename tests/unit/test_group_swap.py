"""passes/group_swap.py on a hand-built kernel of 4 models in 2 groups: which DDR buffers get a tile, when a
program loads and stores it, and that the emulator computes the same with the swap as without."""

from __future__ import annotations

import copy

import numpy as np
from fx2fpga_runtime.emulator import Emulator
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import CHIP, DDR, GROUP_VAR, MODEL_VAR, Access, Affine, Buffer, Kernel, Loop, Program, Stage

from fx2fpga.passes import group_swap, model_groups, tile

F = Fixed(12, 4)
GRP = Affine(((GROUP_VAR, 2), (MODEL_VAR, 1)))  # grp * 2 + mdl


def _v(name):
    return Affine.var(name)


def _kernel() -> Kernel:
    """4 models, 2 a group. ``w`` (param, DDR): ``t = w + x``, then ``w = w - x`` in place; ``u`` (param, DDR):
    written whole before it is read; ``v`` (param, DDR): written on its first column only, then read whole;
    ``s`` (param, DDR, rounding SR): read; ``c`` (param, DDR): read by every model at row 0, not per model."""
    loops = (Loop(MODEL_VAR, 2), Loop("j", 3))
    per = (GRP, _v("j"))
    bufs = [Buffer("w", (4, 3), F, "param", place=DDR), Buffer("u", (4, 3), F, "param", place=DDR),
            Buffer("v", (4, 3), F, "param", place=DDR), Buffer("s", (4, 3), Fixed(12, 4, rounding="SR"), "param",
                                                               place=DDR),
            Buffer("c", (4, 3), F, "param", place=DDR), Buffer("x", (3,), F, "input"),
            Buffer("t", (2, 3), F, "temp"), Buffer("o", (4, 3), F, "output")]
    x = Access("x", (_v("j"),))
    stages = [
        Stage("t_add", "add", loops, Access("t", (_v(MODEL_VAR), _v("j"))), (Access("w", per), x)),
        Stage("w_sub", "sub", loops, Access("w", per), (Access("w", per), x)),
        Stage("u_set", "add", loops, Access("u", per), (Access("t", (_v(MODEL_VAR), _v("j"))), x)),
        Stage("v_set", "copy", (Loop(MODEL_VAR, 2),), Access("v", (GRP, Affine())), (Access("x", (Affine(),)),)),
        Stage("o_sum", "add", loops, Access("o", per), (Access("u", per), Access("v", per))),
        Stage("o_acc", "add", loops, Access("o", per), (Access("o", per), Access("s", per))),
        Stage("o_c", "add", loops, Access("o", per), (Access("o", per), Access("c", (Affine(), _v("j"))))),
    ]
    k = Kernel("k", {b.name: b for b in bufs}, {"train_step": Program("train_step", ["x"], ["o"], stages, 2)},
               ["w", "u", "v", "s", "c"])
    return k


def test_only_per_model_ddr_buffers_of_a_grouped_program_get_tiles():
    k = group_swap.run(_kernel(), 2)
    assert group_swap.tile_of(k) == {"w": "w_tile", "u": "u_tile", "v": "v_tile"}  # not s (SR) nor c (row 0)
    assert all(k.buffers[t].shape == (2, 3) and k.buffers[t].place == CHIP and k.buffers[t].role == "temp"
               for t in ("w_tile", "u_tile", "v_tile"))
    names = [s.name for s in k.programs["train_step"].stages]
    # w is read first: loaded; u is written whole first: not loaded; v's first write covers one column: loaded
    assert names == ["train_step_load_w", "train_step_load_v", "t_add", "w_sub", "u_set", "v_set", "o_sum", "o_acc",
                     "o_c", "train_step_store_w", "train_step_store_u", "train_step_store_v"]
    st = {s.name: s for s in k.programs["train_step"].stages}
    assert st["w_sub"].out.c_expr() == "w_tile[mdl][j]" and st["v_set"].out.c_expr() == "v_tile[mdl][0]"
    assert st["o_acc"].ins[1].c_expr() == "s[2*grp + mdl][j]" and st["o_c"].ins[1].c_expr() == "c[0][j]"
    assert st["train_step_load_w"].attrs == {"group_swap": "load"}
    assert st["train_step_store_v"].out.c_expr() == "v[2*grp + mdl][i1]"


def test_the_emulator_computes_the_same_with_the_swap():
    rng = np.random.default_rng(0)
    plain, swapped = _kernel(), group_swap.run(_kernel(), 2)
    emus = [Emulator(plain), Emulator(swapped)]
    start = {n: rng.integers(-500, 500, size=(4, 3)) for n in ("w", "u", "v", "s", "c")}
    for emu in emus:
        for n, raw in start.items():
            emu.write(n, raw)
    for _ in range(2):
        x = rng.integers(-100, 100, size=3)
        want, got = (emu.run("train_step", {"x": x})["o"] for emu in emus)
        assert np.array_equal(want, got)
        assert all(np.array_equal(emus[0].read(n), emus[1].read(n)) for n in start)


def test_a_second_run_and_a_second_lane_assignment_change_nothing():
    k = group_swap.run(_kernel(), 2)
    again = group_swap.run(copy.deepcopy(k), 2)
    assert [s.name for s in again.programs["train_step"].stages] == [s.name for s in k.programs["train_step"].stages]
    assert list(again.buffers) == list(k.buffers)
    tile.assign_model_lanes(k, 2)  # regroup keeps a kernel in groups of 2 as it is
    assert model_groups.group_size(k) == 2 and k.programs["train_step"].groups == 2
    assert len(k.programs["train_step"].stages) == 12
    assert tile.free_loops(k.programs["train_step"].stages[0]) == []  # a copy keeps one lane


def test_a_program_of_one_group_keeps_its_ddr_accesses():
    k = _kernel()
    k.programs["train_step"].groups = 1
    assert group_swap.run(k, 2).meta == {} and len(k.programs["train_step"].stages) == 7
