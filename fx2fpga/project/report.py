"""``report.md``: what was built, in numbers a person can check."""

from __future__ import annotations

from pathlib import Path

from fx2fpga_runtime.ir import stage_lag

from ..passes import ddr_traffic, estimate, placement, resources
from ..passes.quant_report import report_lines


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines


def _models_section(k) -> list[str]:
    """A kernel of many models: each model, the inputs they share, and formats unified across them."""
    models = k.meta.get("models")
    if not models:
        return []
    stacked = models[0].get("index") is not None
    if stacked:
        side = max(s.model_lanes for s in k.stages())
        groups = max(p.groups for p in k.programs.values())
        size = len(models) // groups
        how = (f"The models share one architecture, so they share one datapath: every buffer of a model has a "
               f"leading model axis (model i is row i) and every stage loops over `mdl`, on the same inputs (they "
               f"cross the bus once). The programs run in {groups} group{'s' if groups > 1 else ''} of {size} "
               f"model{'s' if size > 1 else ''} (temporaries hold one group), up to {side} side by side in a stage "
               f"(`model_lanes`).")
        for program, how_piped in k.meta.get("pipelined", {}).items():
            lagging = [st.name for st in k.programs[program].stages if stage_lag(st)]
            how += (f" `{program}`'s groups are pipelined (passes/pipeline_groups.py): {len(lagging)} of its stages "
                    f"(those after the forward's multiply-accumulates, `{lagging[0]}` .. `{lagging[-1]}`) run a pass "
                    f"behind, for the group before, so its {groups} groups take {k.programs[program].passes} passes "
                    f"and the loss chain of one group runs beside the next one's forward; double buffered (a copy "
                    f"per group's parity): {', '.join(f'`{b}`' for b in how_piped['double_buffered']) or 'none'}.")
        formats = "one format per buffer serves every model; buffers whose models would differ alone"
    else:
        how = ("Each program runs the models one after another, on the same inputs (they cross the bus once). "
               "Every buffer and stage of model i is prefixed `m<i>_`.")
        formats = "each model's buffers have the formats it gets compiled alone; shared inputs unified"
    out = [f"## Models: {len(models)} in one kernel", "", how, ""]
    rows = [[i, f"row {m['index']}" if stacked else f"`{m['prefix']}`", m["model"], f"{m['values']:,}",
             _setting(m["lr"]), _setting(m["momentum"]), _setting(m["weight_decay"]),
             ", ".join(f"`{b}`" for bs in m["outputs"].values() for b in bs)]
            for i, m in enumerate(models)]
    out += _table(["model", "buffers" if stacked else "prefix", "class", "parameter values", "lr", "momentum",
                   "weight decay", "outputs"], rows)
    shared = sorted({b for p in k.programs.values() for b in p.inputs})
    out += ["", f"Shared inputs: {', '.join(f'`{b}` ({k.buffers[b].fmt})' for b in shared) or 'none'}.",
            f"Formats unified across models: {'; '.join(k.meta.get('models_unified') or []) or 'none'} "
            f"({formats}).", ""]
    return out


def _exploration_section(design) -> list[str]:
    """The design points the tile step weighed (``passes/explore.py``), when it explored."""
    result = getattr(design.context, "exploration", None)
    if result is None or not result.points:
        return []
    t = design.target
    out = ["## Design points", "",
           f"`lanes`/`model_lanes` chosen on exact RTL cycles and the RTL resource model calibrated against Yosys: "
           f"the fastest point within the allowance of every resource of {t.name} ({resources.allowance_text()}: "
           f"the model's margin; \"of allowance\", the largest share of one). Model-steps/s count one call of the "
           f"main program plus its bus transfer at {t.clock_mhz:g} MHz.", ""]
    rows = [[p.label, f"{p.cycles:,}", f"{p.bus_cycles:,}", f"{p.model_steps_per_s:,.0f}",
             f"{p.lut:,}", f"{p.ff:,}", p.dsp, f"{p.bram36:g}", f"{p.usage:.0%}", f"{p.load:.0%}",
             "**chosen**" if p.chosen else ("front" if p.pareto else "")] for p in result.points]
    out += _table(["point (model lanes x lanes, or per stage)", "cycles", "bus cycles", "model-steps/s", "LUT", "FF",
                   "DSP", "BRAM36", "of budget", "of allowance", ""], rows)
    return out + [""]


def _calibrated_rows(design) -> list[list]:
    """The generated RTL's LUT, FF and BRAM36 by the calibrated resource model (xc7 targets with RTL only)."""
    t = design.target
    plan = design.rtl_plan() if t.family == "xc7" else None
    if plan is None:
        return []
    from ..passes import resources

    r = resources.rtl_resources(plan, t)
    return [[f"{name} in the generated RTL, calibrated model", f"{need:,}" if isinstance(need, int) else f"{need:g}",
             have, f"{100 * need / have:.1f}%"]
            for name, need, have in (("LUT", r.lut, t.lut), ("FF", r.ff, t.ff), ("BRAM36", r.bram36, t.bram36))]


def _setting(value) -> str:
    return "-" if value is None else f"{value:g}"


COUNTER_BITS = 32  # one saturation counter (docs/saturation.md)
COUNTER_LUT = 40  # predicted LUTs of one 32-bit saturating counter: 32 in its carry chain, 8 to detect its top
# measured: Yosys synth_xilinx of the digits MLP training kernel at lanes 4, with and without its 16 counters:
# +796 LUT, +627 FF (each counter with its range checks, flags and shift-out; docs/saturation.md)
RTL_COUNTER_LUT, RTL_COUNTER_FF = 50, 39


def _saturation_section(k) -> list[str]:
    """The saturation counters of a kernel compiled with them, and their predicted cost (none: no section)."""
    from fx2fpga_runtime import saturation

    if not saturation.hardware_counters(k):
        return []
    names = saturation.counter_buffers(k)
    out = ["## Saturation counters", "",
           f"{len(names)} counters of {COUNTER_BITS} bits in the HLS C++ and the RTL (read and reset by the "
           f"command `{saturation.COMMAND}`, docs/saturation.md); the other buffers a stage writes cannot overflow.",
           f"Cost: in the HLS kernel {COUNTER_BITS * len(names):,} FF and about {COUNTER_LUT * len(names):,} LUT "
           "for the counters (predicted), plus one range check per counted lane; in the RTL about "
           f"{RTL_COUNTER_LUT * len(names):,} LUT and {RTL_COUNTER_FF * len(names):,} FF with the range checks, "
           f"flags and shift-out ({RTL_COUNTER_LUT} LUT and {RTL_COUNTER_FF} FF per counter, measured with Yosys "
           "on the digits MLP training kernel at lanes 4: +796 LUT and +627 FF for its 16 counters, 7% and 4.5%).",
           ""]
    out += _table(["counter", "buffer", "format"], [[i, f"`{n}`", k.buffers[n].fmt] for i, n in enumerate(names)])
    return out + [""]


def _stochastic_section(k) -> list[str]:
    """The buffers that round SR and their generator (none: no section)."""
    from fx2fpga_runtime import stochastic

    names = [b.name for b in k.buffers.values() if b.fmt.rounding == "SR"]
    if not names:
        return []
    seed = k.meta.get(stochastic.SEED_KEY, 0)
    return ["## Stochastic rounding", "",
            f"{len(names)} buffers round SR where a stage writes them (docs/quantization.md): "
            f"{', '.join(f'`{n}`' for n in names)}.",
            f"Generator: {stochastic.describe(seed)}. The same bits in emu, csim and rtl; in the RTL one "
            "`fx2fpga_srbits` (an adder and XORs) per lane of each such stage, about 2 LUT per bit of its adder "
            "and random bits (measured with Yosys on the digits MLP at lanes 4: 34 lanes, 3,012 LUT), and those "
            "stages keep their own accumulators instead of the shared MAC engine's.", ""]


def report_text(design) -> str:
    """The report of a design as Markdown."""
    k, t = design.kernel, design.target
    res = estimate.resources(k, t)
    out = [f"# {k.name}: fx2fpga report", ""]
    out += [f"- target: **{t.name}** ({t.part}, {t.clock_mhz:g} MHz)",
            f"- programs: {', '.join(k.programs)}",
            f"- parameters: {sum(k.buffers[p].size for p in k.params):,} values in {len(k.params)} on-chip arrays",
            f"- precision: weights {design.precision.weight}, activations {design.precision.activation}, "
            f"gradients {design.precision.gradient}, accumulators {design.precision.accumulator}", ""]
    for step, lines in design.context.notes.items():  # what a pipeline step decided for the user
        out += [f"- {step}: {line}" for line in lines]
    out += [""] if design.context.notes else []
    out += report_lines(design.quantization or [])
    out += _models_section(k)
    out += _exploration_section(design)
    out += _saturation_section(k)
    out += _stochastic_section(k)
    out += ["## Estimated resources (before synthesis)", ""]
    rows = [[f"DSP ({t.dsp_kind})", res.dsp, t.dsp, f"{100 * res.dsp / t.dsp:.1f}%"]]
    rtl_dsp = design.rtl_dsp_blocks()
    if rtl_dsp is not None:
        rows.append([f"DSP ({t.dsp_kind}) in the generated RTL, exact", rtl_dsp, t.dsp,
                     f"{100 * rtl_dsp / t.dsp:.1f}%"])
    rows.append(["BRAM36", f"{res.bram36:g}", t.bram36, f"{100 * res.bram36 / t.bram36:.1f}%"])
    rows += _calibrated_rows(design)
    out += _table(["resource", "estimate", f"{t.name} budget", "use"], rows)
    over = rtl_dsp_over_budget(design)
    if over:
        out += ["", f"**Over budget:** {over}"]
    if rtl_dsp is not None:
        out += ["", "The estimate counts a multiplier per stage and lane (the HLS kernel); the RTL shares one "
                "per lane between all multiplying stages (their issues never overlap), plus the function tables' own."]
    chip = len(k.buffers) - len(k.ddr_buffers())
    out += ["", f"On-chip memory: {res.memory_bits:,} bits in {chip} arrays.", ""]
    for prog in k.programs.values():
        cycles = estimate.program_cycles(k, prog.name)
        us = cycles / t.clock_mhz
        out += [f"## Program `{prog.name}`: ~{cycles:,} cycles ({us:,.1f} us at {t.clock_mhz:g} MHz)", "",
                f"Inputs: {', '.join(prog.inputs)}; outputs: {', '.join(prog.outputs)}.", ""]
        rows = []
        for s in prog.stages:
            loops = " x ".join(f"{lp.var}{lp.extent}" for lp in s.loops) or "scalar"
            lanes = f"{s.outer_lanes} ({s.outer_lane_var}) x {s.lanes} ({s.lane_var})" if s.outer_lanes > 1 else s.lanes
            rows.append([f"`{s.name}`", s.op, loops, lanes, estimate.stage_cycles(s),
                         str(s.acc) if s.acc else "", s.source or "", s.origin])
        out += _table(["stage", "op", "loops", "lanes", "cycles", "accumulator", "model line", "from"], rows)
        out.append("")
    rtl = design.rtl_cycles()
    if rtl:
        out += ["## Cycles in the generated RTL (exact, from its schedule)", ""]
        rows = [[f"`{c}`", f"{n:,}", f"{n / t.clock_mhz:,.1f}",
                 f"{estimate.program_cycles(k, c):,}" if c in k.programs else ""] for c, n in rtl.items()]
        out += _table(["command", "cycles", f"us at {t.clock_mhz:g} MHz", "HLS estimate"], rows)
        out += ["", "The RTL runs stages one after the other; `rtl/schedule.md` has every phase.", ""]
    out += _buffers_section(k, t)
    return "\n".join(out)


def _buffers_section(k, t) -> list[str]:
    """Every buffer with its place (on chip or in DDR), bits and bytes, and the totals against the block RAM."""
    out = ["## Buffers", ""]
    rows = [[f"`{b.name}`", "x".join(map(str, b.shape)) or "scalar", b.fmt, b.role, b.kind, p.place,
             f"{p.bits:,}", f"{p.bytes:,}"] for b, p in zip(k.buffers.values(), placement.placements(k), strict=True)]
    out += _table(["buffer", "shape", "format", "role", "kind", "place", "bits", "bytes"], rows)
    tot = placement.totals(k, t)
    chip, ddr, bram = tot[placement.CHIP], tot[placement.DDR], tot["bram_bytes"]
    out += ["", f"On chip: {chip['buffers']} buffers, {chip['bytes']:,} bytes ({100 * chip['bytes'] / bram:.1f}% of "
            f"{t.name}'s {bram:,} bytes of block RAM: {t.bram36} BRAM36 x {placement.BRAM36_BYTES:,}); "
            f"{chip['bits']:,} bits as stored on chip. In DDR: {ddr['buffers']} buffers, {ddr['bytes']:,} bytes. "
            "Bytes count whole bytes per value (a DDR copy); bits, the format's width per value; block RAM holds "
            "the bits in banks of its own shapes (the BRAM36 estimate above).", ""]
    return out + _ddr_traffic_lines(k, t)


def _ddr_traffic_lines(k, t) -> list[str]:
    """Per command, the DDR bytes one call reads and writes (``passes/ddr_traffic.py``) and the time they take at
    the target's DDR port: a lower bound of the call (none for a kernel wholly on chip)."""
    traffic = ddr_traffic.kernel_traffic(k)
    if not traffic:
        return []
    ddr = t.ddr
    port = (f"{ddr.bytes_per_cycle} bytes a cycle at {t.clock_mhz:g} MHz, {ddr.bytes_per_cycle * t.clock_mhz:,.0f} "
            f"MB/s ({ddr.port})" if ddr else f"{t.name} has no [ddr] table: no time given")
    rows = []
    for c in traffic:
        cycles = c.min_cycles(ddr) if ddr else None
        top = max(c.buffers, key=lambda b: (b.read_bytes + b.write_bytes), default=None)
        rows.append([f"`{c.command}`", f"{c.read_bytes:,}", f"{c.write_bytes:,}", f"{c.bytes:,}",
                     f"{cycles:,}" if ddr else "-", f"{cycles / t.clock_mhz:,.1f}" if ddr else "-",
                     f"`{top.buffer}` ({top.read_bytes + top.write_bytes:,})" if top else "-"])
    out = ["### DDR traffic per call", "",
           "Every access of a DDR buffer's element, as the HLS C++ makes them today (no tiles, no bursts), is one "
           f"DDR access of the element's whole bytes; the port's peak is {port}. The cycles are the bytes at that "
           "peak: a lower bound of the call's time. `manifest.json`'s `ddr_traffic` has the bytes per buffer.", ""]
    out += _table(["command", "bytes read", "bytes written", "bytes", "cycles at the port's peak (at least)",
                   f"us at {t.clock_mhz:g} MHz (at least)", "most traffic"], rows)
    return out + [""]


def rtl_model_resources(project_dir: Path):
    """The calibrated RTL resource model's prediction for a project folder's kernel (``kernel.json``,
    planned again for its target), or None where it does not apply (not an xc7 target, no RTL plan)."""
    import json

    import fx2fpga_runtime

    from ..backends.rtl import emit as verilog
    from ..errors import Fx2fpgaError
    from ..passes import resources
    from ..targets import load_target

    manifest = json.loads((project_dir / "manifest.json").read_text())
    target = load_target(manifest["target"]["name"])
    if target.family != "xc7":
        return None
    kernel = fx2fpga_runtime.read_kernel(project_dir)
    try:
        plan = verilog.plan(kernel, kernel.name, target.dsp_kind, target=target)
    except Fx2fpgaError:  # the RTL cannot map the kernel (its README says why)
        return None
    return resources.rtl_resources(plan, target)


def rtl_dsp_over_budget(design) -> str:
    """What to tell the user when the generated RTL needs more DSP blocks than the target has ("" if it fits).

    The tile step's budget check reads the HLS-style estimate; the RTL's count is exact (``RtlPlan``)."""
    dsp = design.rtl_dsp_blocks()
    t = design.target
    if dsp is None or dsp <= t.dsp:
        return ""
    return (f"the generated RTL instantiates {dsp} {t.dsp_kind} blocks, {t.name} has {t.dsp}: it will not fit. "
            "Compile with fewer lanes (lanes=...) or narrower formats (precision=...).")
