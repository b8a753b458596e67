"""Tiling: how many lanes (parallel datapath copies) each stage gets.

Every stage with a non-reduced loop (matmuls, elementwise ops, sums, pools) gets ``lanes``
copies of its datapath working on consecutive outputs of its innermost non-reduced loop;
lane counts divide that loop's extent, so every lane has equal work and the arrays partition
evenly.

``lanes`` is either a number (the same request for every stage) or ``"auto"``: start every
stage at one lane and repeatedly widen the stage that takes the most cycles to its next lane
count, as long as the resource estimate stays within ``AUTO_BUDGET`` of the target's DSPs and
block RAMs.

Finally the lanes are checked against the RTL backend's memory banking (``schedule.run``):
a stage whose lanes would need two different words of one RAM bank in a cycle (e.g. a pooling
window read by a transposed index) falls back to fewer lanes, so every kernel stays mappable.
"""

from __future__ import annotations

from fx2fpga_runtime.ir import MODEL_VAR, Kernel, Stage

from . import estimate, group_swap, model_groups, schedule

AUTO_BUDGET = 0.8  # share of the target's DSP and BRAM the automatic choice may use


def divisors(n: int) -> list[int]:
    """The divisors of ``n``, ascending: the lane counts that split a loop of ``n`` evenly."""
    return [d for d in range(1, n + 1) if n % d == 0]


def lane_count(extent: int, requested: int) -> int:
    """The largest divisor of ``extent`` that is at most ``requested``."""
    return max(d for d in range(1, min(extent, requested) + 1) if extent % d == 0)


def free_loops(stage: Stage) -> list:
    """The loops lanes may run over: not reduced, longer than one, not the model loop (outermost first); none for
    a group swap's copy (``passes/group_swap.py``: one element a cycle over the DDR port)."""
    if group_swap.is_swap_copy(stage):
        return []
    return [lp for lp in stage.loops if lp.var not in stage.reduce and lp.extent > 1 and lp.var != MODEL_VAR]


def _lane_loop(stage: Stage, requested: int | None = None):
    """The non-reduced loop the lanes run over by default: the one allowing the most lanes (``requested``:
    at most that many; None: the longest loop), the innermost of equals."""
    free = free_loops(stage)
    if not free:
        return None
    return max(reversed(free), key=lambda lp: lane_count(lp.extent, requested) if requested else lp.extent)


def choose_lanes(stage: Stage, requested: int) -> None:
    loop = _lane_loop(stage, requested)
    if loop is None or requested <= 1:
        stage.lanes, stage.lane_var = 1, None  # (an earlier try's lanes do not stay)
        return
    stage.lanes = lane_count(loop.extent, requested)
    stage.lane_var = loop.var if stage.lanes > 1 else None


def _fits(kernel: Kernel, target) -> bool:
    res = estimate.resources(kernel, target)
    return res.dsp <= AUTO_BUDGET * target.dsp and res.bram36 <= AUTO_BUDGET * target.bram36


def auto_lanes(kernel: Kernel, target) -> None:
    """Greedy: widen the slowest stage while the estimate fits the budget."""
    stages = [s for s in kernel.stages() if _lane_loop(s) is not None]
    frozen: set[int] = set()
    while True:
        open_stages = [s for s in stages if id(s) not in frozen]
        if not open_stages:
            return
        slowest = max(open_stages, key=estimate.stage_cycles)
        extent = _lane_loop(slowest).extent
        wider = [d for d in divisors(extent) if d > slowest.lanes]
        if not wider:
            frozen.add(id(slowest))
            continue
        before = (slowest.lanes, slowest.lane_var)
        slowest.lanes, slowest.lane_var = wider[0], _lane_loop(slowest).var
        if not _fits(kernel, target):
            slowest.lanes, slowest.lane_var = before
            frozen.add(id(slowest))


def keep_banks_mappable(kernel: Kernel) -> schedule.Schedule:
    """Narrow the stages whose lanes would clash in one RAM bank of the RTL schedule; returns the
    schedule of the lanes kept (raises ``ScheduleError`` when the kernel cannot map for another reason)."""
    while True:
        try:
            return schedule.run(kernel)
        except schedule.ScheduleError as e:
            stage = getattr(e, "stage", None)
            if stage is None or stage.lanes <= 1:
                raise  # not a lane problem: the RTL generator reports it
            if stage.outer_lanes > 1:  # lanes in two dims: back to one dim first
                stage.outer_lanes, stage.outer_lane_var = 1, None
                continue
            extent = next(lp.extent for lp in stage.loops if lp.var == stage.lane_var)
            stage.lanes = lane_count(extent, stage.lanes - 1)
            stage.lane_var = stage.lane_var if stage.lanes > 1 else None


def assign_model_lanes(kernel: Kernel, model_lanes: int) -> None:
    """Run a stacked kernel's models in groups of ``model_lanes`` (a divisor of the model count; rounded down
    to one), the models of a group side by side in every stage (``passes/model_groups.py``); the per-model
    buffers in DDR then go through on-chip tiles of one group (``passes/group_swap.py``)."""
    if not isinstance(model_lanes, int) or model_lanes < 1:
        raise ValueError(f"model_lanes must be a positive integer or 'auto', got {model_lanes!r}")
    size = lane_count(model_groups.model_count(kernel), model_lanes)
    model_groups.regroup(kernel, size)
    group_swap.run(kernel, size)
    for stage in kernel.stages():
        stage.model_lanes = size if any(lp.var == MODEL_VAR for lp in stage.loops) else 1


def set_stage_lanes(stage: Stage, model_lanes: int, lanes: int, lane_var: str | None = None, outer_lanes: int = 1,
                    outer_lane_var: str | None = None) -> None:
    """Give ``stage`` that many model lanes, lanes over its loop ``lane_var`` (None: its longest free loop) and,
    beside those, ``outer_lanes`` over a second loop ``outer_lane_var``."""
    loop = _lane_loop_named(stage, lane_var)
    stage.model_lanes = model_lanes
    stage.lanes, stage.lane_var = (lanes, loop.var) if lanes > 1 and loop is not None else (1, None)
    stage.outer_lanes, stage.outer_lane_var = 1, None
    if outer_lanes > 1 and stage.lanes > 1:
        outer = _lane_loop_named(stage, outer_lane_var)
        if outer.var == stage.lane_var:
            raise ValueError(f"stage {stage.name}: its outer lanes need a loop other than {stage.lane_var!r}")
        stage.outer_lanes, stage.outer_lane_var = outer_lanes, outer.var


def _lane_loop_named(stage: Stage, var: str | None):
    """The loop ``var`` of ``stage``, which lanes may run over (else a ``ValueError`` naming those that may);
    ``var`` None: the default, its longest free loop (``_lane_loop``)."""
    if var is None:
        return _lane_loop(stage)
    loop = next((lp for lp in free_loops(stage) if lp.var == var), None)
    if loop is None:
        free = ", ".join(lp.var for lp in free_loops(stage)) or "none"
        raise ValueError(f"stage {stage.name}: lanes cannot run over {var!r} (its loops that may: {free})")
    return loop


def assign_stage_lanes(kernel: Kernel, lanes: dict, group_size: int) -> None:
    """Per-stage lanes, as a design point of the explorer records them (``DesignPoint.stage_lanes``): the models
    in groups of ``group_size``, and stage name -> ``[model lanes, lanes]``, ``[model lanes, lanes, lane loop]``
    (the loop's variable; without it the stage's longest free loop) or ``[model lanes, lanes, lane loop, outer
    lanes, outer loop]`` (lanes in two loops). A stage not named gets one lane."""
    assign_model_lanes(kernel, group_size)
    stages = {st.name: st for st in kernel.stages()}
    unknown = sorted(set(lanes) - set(stages))
    if unknown:
        raise ValueError(f"lanes names stages the kernel does not have: {', '.join(unknown)} (its stages: "
                         f"{', '.join(stages)})")
    size = model_groups.group_size(kernel)
    for name, st in stages.items():
        m, ln, *rest = lanes.get(name, (1, 1))
        var, outer, outer_var = (list(rest) + [None, 1, None][len(rest):])[:3]
        loop = _lane_loop_named(st, var)
        extent = loop.extent if loop is not None else 1
        outer_extent = _lane_loop_named(st, outer_var).extent if outer > 1 else 1
        if m < 1 or size % m or ln < 1 or extent % ln or outer < 1 or outer_extent % outer:
            raise ValueError(f"stage {name}: {list(lanes.get(name))} lanes do not divide its {size} models of a "
                             f"group and its lane loops of {extent}" + (f" and {outer_extent}" if outer > 1 else ""))
        set_stage_lanes(st, m, ln, var, outer, outer_var)


def twin_key(kernel: Kernel, st: Stage) -> tuple:
    """What makes two stages of different programs the same computation: the op, the loop extents, and the
    parameters and constants they read (an inference's matmul and the training step's forward one)."""
    tiles = set(group_swap.tile_of(kernel).values())  # a parameter's group tile stands for it
    shared = tuple(sorted(a.buffer for a in st.ins if kernel.buffers[a.buffer].role in ("param", "const")
                          or a.buffer in tiles))
    reduced = tuple(lp.extent for lp in st.loops if lp.var in st.reduce)
    return st.op, tuple(lp.extent for lp in st.loops), reduced, shared


def mirror_twin_lanes(kernel: Kernel, main: str) -> None:
    """Give each stage of the other programs the lanes of its twin in program ``main`` (``twin_key``, matched in
    program order), over the loop at the same position: the training kernel's ``infer`` then reads the banks its
    twins' lanes banked the parameters by, one per lane, instead of selecting among them at run time."""
    twins: dict[tuple, list[Stage]] = {}
    for st in kernel.programs[main].stages:
        twins.setdefault(twin_key(kernel, st), []).append(st)
    for name, prog in kernel.programs.items():
        if name == main:
            continue
        taken: dict[tuple, int] = {}
        for st in prog.stages:
            key = twin_key(kernel, st)
            i = taken.get(key, 0)
            if i >= len(twins.get(key, [])):
                continue
            taken[key] = i + 1
            twin = twins[key][i]
            pos = {lp.var: k for k, lp in enumerate(twin.loops)}
            var = st.loops[pos[twin.lane_var]].var if twin.lane_var else None
            outer = st.loops[pos[twin.outer_lane_var]].var if twin.outer_lane_var else None
            set_stage_lanes(st, twin.model_lanes, twin.lanes, var, twin.outer_lanes, outer)


def stream_lanes(kernel: Kernel, program: str, word_bits: int) -> dict[str, tuple] | None:
    """Lanes for ``program``'s first stage that read its input in the order the input words bring it
    (``schedule.fuse_input_stream`` then overlaps the transfer with the stage): as many lanes over the input's laned
    loop as values fit in a word, and the stage's other kept loop whole over its lanes. ``{stage: (model lanes,
    lanes, lane loop, outer lanes, outer loop)}`` for ``allocate.allocate``'s ``pinned``; None where that shape does
    not apply (model groups, no packed input, other loop nests)."""
    prog = kernel.programs[program]
    if prog.groups > 1 or not prog.stages:
        return None
    st = prog.stages[0]
    acc = next((a for a in st.ins if a.buffer in prog.inputs), None)
    kept = [lp for lp in st.loops if lp.var not in st.reduce]
    if acc is None or len(kept) != 2:
        return None
    per_word = word_bits // kernel.buffers[acc.buffer].fmt.width
    used = {v for ix in acc.index for v in ix.vars()}
    packed = [lp for lp in kept if lp.var in used]
    other = [lp for lp in kept if lp.var not in used]
    if per_word < 2 or len(packed) != 1 or len(other) != 1 or packed[0].extent % per_word:
        return None
    return {st.name: (st.model_lanes, other[0].extent, other[0].var, per_word, packed[0].var)}


def assign_lanes(kernel: Kernel, lanes: int | str | dict, target=None, model_lanes: int | str = 1) -> None:
    """Set ``lanes``/``lane_var`` on every stage: a number per stage, ``"auto"`` (not yet bank-checked) or a
    dict of per-stage lanes (``assign_stage_lanes``, groups of ``model_lanes``); on a stacked kernel also
    ``model_lanes`` (``"auto"``: every model at once)."""
    if isinstance(lanes, dict):
        return assign_stage_lanes(kernel, lanes, 1 if model_lanes == "auto" else model_lanes)
    assign_model_lanes(kernel, model_groups.model_count(kernel) if model_lanes == "auto" else model_lanes)
    if lanes == "auto":
        if target is None:
            raise ValueError("lanes='auto' needs the target's budget")
        auto_lanes(kernel, target)
    elif not isinstance(lanes, int) or lanes < 1:
        raise ValueError(f"lanes must be a positive integer or 'auto', got {lanes!r}")
    else:
        for stage in kernel.stages():
            choose_lanes(stage, lanes)


def run(kernel: Kernel, lanes: int | str, target=None) -> Kernel:
    """Set ``lanes``/``lane_var`` on every stage (a number per stage, or ``"auto"``), kept RTL-bankable."""
    assign_lanes(kernel, lanes, target)
    try:
        keep_banks_mappable(kernel)
    except schedule.ScheduleError:
        pass  # not a lane problem: the RTL generator reports it
    return kernel
