"""Group swap: a per-model DDR buffer worked on through an on-chip tile that holds one model group (issue 17).

A kernel of N models in groups of ``size`` (``passes/model_groups.py``: ``Program.groups`` passes, ``GROUP_VAR``
the group) keeps its parameters and optimizer state for all N models and indexes them ``GROUP_VAR * size +
MODEL_VAR``. When such a buffer lives in DDR (``passes/placement.py``), the untiled HLS C++ reads it over the
``m_axi`` port at every point of every stage that uses it: a multiply-accumulate reads its weight once per batch
row, and an update reads and writes it again. The swap instead gives the buffer ``<name>_tile``, an on-chip
temporary of shape ``(size, *rest)`` in the same format, and in each program of more than one group:

- the stages read and write ``<name>_tile[MODEL_VAR][rest]`` in place of ``<name>[GROUP_VAR * size +
  MODEL_VAR][rest]`` (the rest of each index, and any guard, unchanged);
- a ``copy`` stage first in the program, ``<name>_tile[mdl][...] = <name>[grp * size + mdl][...]``, loads the
  group's slice, if the program reads the buffer before writing all of it (an in-place update reads it first);
- a ``copy`` stage last in the program, ``<name>[grp * size + mdl][...] = <name>_tile[mdl][...]``, stores it back,
  if the program writes the buffer.

So each pass of a group moves each of its values over the port once in and once out, in loops over consecutive
addresses (``ddr_traffic`` counts them so), and the stages' accesses are on-chip ones. The copies are ordinary
stages (the op table's ``copy``, into the same format: exact), so the emulator, csim and the HLS C++ run them as
they run any stage and compute what they computed before, bit for bit. ``load_params``/``read_params`` (the
unpack and pack of the parameters through the word interface) are not stages: they keep reading and writing the
DDR buffer itself, which holds every model's values between calls.

A buffer is swapped in a program only when every access of the program to it indexes its model dimension as
``GROUP_VAR * size + MODEL_VAR`` (temporaries, which hold one group already, are indexed by ``MODEL_VAR`` alone and
stay where they are), and not when its format rounds stochastically (the stage writing it keys its random bits by
the buffer's name, ``stochastic.stage_key``; writing the tile would change them). A program of one group is left
alone: its buffers would need a tile as large as themselves.

Where in the pipeline: inside the "tile" step, right after ``model_groups.regroup`` fixes the groups
(``tile.assign_model_lanes``). There the tiles exist before the step prices the kernel, so the budget check and
``estimate.resources`` count their block RAM, and their banks follow the lanes of the stages that use them. The
copy stages keep one lane (``tile.free_loops`` offers them none): a DDR port moves one element a cycle in the
pipelined loop over consecutive addresses, and wider lanes would only ask it for more. The stages carry
``attrs["group_swap"]`` (``"load"`` or ``"store"``), and ``kernel.meta["group_swap"]`` maps each DDR buffer swapped
to its tile; a program that has copy stages already is not swapped again (the step may assign lanes twice).
"""

from __future__ import annotations

from dataclasses import replace

from fx2fpga_runtime.ir import CHIP, DDR, GROUP_VAR, MODEL_VAR, Access, Affine, Buffer, Kernel, Loop, Program, Stage

META_KEY = "group_swap"  # kernel.meta: DDR buffer -> its tile
LOAD, STORE = "load", "store"  # a copy stage's attrs["group_swap"]


def is_swap_copy(stage: Stage) -> bool:
    """Whether ``stage`` is a group swap's load or store copy."""
    return META_KEY in stage.attrs


def tile_of(kernel: Kernel) -> dict[str, str]:
    """DDR buffer -> its on-chip tile, for the buffers swapped (empty when none is)."""
    return dict(kernel.meta.get(META_KEY, {}))


def _group_index(size: int) -> Affine:
    return Affine(((GROUP_VAR, size), (MODEL_VAR, 1)))


def _accesses(st: Stage) -> tuple[Access, ...]:
    return (st.out, *st.ins)


def swappable(kernel: Kernel, prog: Program, size: int) -> list[str]:
    """The DDR buffers of ``prog`` whose every access indexes the model dimension ``GROUP_VAR * size + MODEL_VAR``
    (in declaration order); none for a program of one group, or one swapped already."""
    if prog.groups <= 1 or any(is_swap_copy(st) for st in prog.stages):
        return []
    touched: dict[str, bool] = {}
    for st in prog.stages:
        for a in _accesses(st):
            buf = kernel.buffers[a.buffer]
            if buf.place != DDR:
                continue
            ok = bool(a.index) and a.index[0] == _group_index(size) and buf.shape[0] == size * prog.groups
            touched[a.buffer] = touched.get(a.buffer, True) and ok
    return [n for n in kernel.buffers if touched.get(n) and kernel.buffers[n].fmt.rounding != "SR"]


def _covers(st: Stage, buf: Buffer, size: int) -> bool:
    """Whether ``st`` writes every element of one group's slice of ``buf``: an elementwise stage (or a reduction's
    kept loops) whose output index is ``grp * size + mdl`` then one distinct loop variable per dim, each loop as
    long as its dim."""
    extents = {lp.var: lp.extent for lp in st.loops if lp.var not in st.reduce}
    if st.out.index[0] != _group_index(size) or extents.get(MODEL_VAR) != size:
        return False
    names = []
    for ix in st.out.index[1:]:
        if len(ix.terms) != 1 or ix != Affine.var(ix.terms[0][0]):
            return False
        names.append(ix.terms[0][0])
    return (len(names) == len(buf.shape) - 1 and len(set(names)) == len(names)
            and all(extents.get(v) == d for v, d in zip(names, buf.shape[1:], strict=True)))


def _first_touch_reads(prog: Program, name: str, buf: Buffer, size: int) -> bool:
    """Whether the program must load ``name``'s slice: the first stage touching it reads it, or writes only part."""
    for st in prog.stages:
        if any(a.buffer == name for a in st.ins):
            return True
        if st.out.buffer == name:
            return not _covers(st, buf, size)
    return False


def _tile_buffer(kernel: Kernel, name: str, size: int) -> str:
    """The tile of DDR buffer ``name`` (made once, shared by every program): ``<name>_tile``, one group's rows."""
    known = tile_of(kernel)
    if name in known:
        return known[name]
    buf = kernel.buffers[name]
    tile = f"{name}_tile"
    while tile in kernel.buffers:
        tile += "_"
    kernel.buffers[tile] = Buffer(tile, (size, *buf.shape[1:]), buf.fmt, "temp", buf.kind, None, buf.source, CHIP)
    kernel.meta[META_KEY] = {**known, name: tile}
    return tile


def _copy(prog: Program, name: str, tile: str, buf: Buffer, size: int, direction: str) -> Stage:
    """``tile[mdl][...] = name[grp * size + mdl][...]`` (load) or the reverse (store), a plain loop nest."""
    rest = [f"i{d}" for d in range(1, len(buf.shape))]
    loops = (Loop(MODEL_VAR, size), *(Loop(v, n) for v, n in zip(rest, buf.shape[1:], strict=True)))
    on_chip = Access(tile, (Affine.var(MODEL_VAR), *(Affine.var(v) for v in rest)))
    in_ddr = Access(name, (_group_index(size), *(Affine.var(v) for v in rest)))
    out, src = (on_chip, in_ddr) if direction == LOAD else (in_ddr, on_chip)
    return Stage(f"{prog.name}_{direction}_{name}", "copy", loops, out, (src,), attrs={META_KEY: direction},
                 source=buf.source, origin=f"group swap: {direction} one group's {name}")


def _retarget(st: Stage, tiles: dict[str, str]) -> Stage:
    def acc(a: Access) -> Access:
        if a.buffer not in tiles:
            return a
        return replace(a, buffer=tiles[a.buffer], index=(Affine.var(MODEL_VAR), *a.index[1:]))

    if not any(a.buffer in tiles for a in _accesses(st)):
        return st
    return replace(st, out=acc(st.out), ins=tuple(acc(a) for a in st.ins), attrs=dict(st.attrs))


def run(kernel: Kernel, size: int) -> Kernel:
    """Swap every ``swappable`` DDR buffer of each program of ``kernel`` (groups of ``size`` models) through its
    on-chip tile, in place: the load copies first, the stages on the tiles, the store copies last."""
    for prog in kernel.programs.values():
        names = swappable(kernel, prog, size)
        if not names:
            continue
        tiles = {n: _tile_buffer(kernel, n, size) for n in names}
        loads = [_copy(prog, n, tiles[n], kernel.buffers[n], size, LOAD) for n in names
                 if _first_touch_reads(prog, n, kernel.buffers[n], size)]
        stores = [_copy(prog, n, tiles[n], kernel.buffers[n], size, STORE) for n in names
                  if any(st.out.buffer == n for st in prog.stages)]
        prog.stages = [*loads, *(_retarget(st, tiles) for st in prog.stages), *stores]
    return kernel
