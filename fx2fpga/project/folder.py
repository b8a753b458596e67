"""The project folder of a design: sources, scripts, driver, manifest and report."""

from __future__ import annotations

from importlib import resources

import fx2fpga_runtime
import numpy as np
from fx2fpga_runtime import interface
from fx2fpga_runtime.runner import EmuBackend, KernelRunner
from fx2fpga_runtime.testbench import VECTORS, vectors_text

from ..backends.common import template_env
from ..backends.hls import emit as hls
from ..backends.rtl import emit as verilog
from ..passes import ddr_traffic, estimate, placement
from ..version import __version__

REGISTER_MAP = interface.REGISTER_MAP  # one map for the HLS and the RTL kernel (rtl/<name>_axi.v)


def golden_vectors(design) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(command, in_words, out_words) from the emulator on the example inputs."""
    k = design.kernel
    runner = KernelRunner(k, EmuBackend(k))
    vectors = []

    def call(command: str, raw: dict) -> None:
        ins, _ = interface.command_buffers(k, command)
        words_in = interface.pack(k, ins, raw)
        vectors.append((command, words_in, runner.backend.call(command, words_in)))

    def example(program: str) -> dict:  # the model's inputs (and target y) in order; none for GD kernels
        target = [design.example["y"]] if program == "train_step" and "y" in design.example else []
        values = [*design.example.get("inputs", []), *target]
        names = k.programs[program].inputs
        return {b: k.buffers[b].fmt.quantize(v) for b, v in zip(names, values, strict=True)}

    call("load_params", {p: np.asarray(k.buffers[p].init).reshape(k.buffers[p].shape) for p in k.params})
    call("infer", example("infer"))
    if "train_step" in k.programs:
        call("train_step", example("train_step"))
        call("read_params", {})
    return vectors


def manifest(design) -> dict:
    k, t = design.kernel, design.target
    in_words, out_words = interface.port_words(k)
    res = estimate.resources(k, design.target)
    models = {"models": k.meta["models"]} if k.meta.get("models") else {}  # a kernel of many models
    return {**models,
        "version": __version__, "name": k.name, "top": f"{k.name}_top",
        "target": {"name": t.name, "part": t.part, "clock_mhz": t.clock_mhz},
        "precision": design.precision.describe(),
        "commands": interface.commands_of(k),
        "port_words": {"in": in_words, "out": out_words, "word_bits": 32},
        "register_map": {n: f"0x{v:02X}" for n, v in REGISTER_MAP.items()},
        **({"ddr_buffers": ddr} if (ddr := interface.ddr_layout(k)) else {}),  # their m_axi address registers
        "params": [{"buffer": p, "name": k.param_names[p], "shape": list(k.buffers[p].shape),
                    "format": str(k.buffers[p].fmt)} for p in k.params],
        "programs": {p.name: {"inputs": [{"buffer": b, "shape": list(k.buffers[b].shape),
                                          "format": str(k.buffers[b].fmt)} for b in p.inputs],
                              "outputs": [{"buffer": b, "shape": list(k.buffers[b].shape),
                                           "format": str(k.buffers[b].fmt)} for b in p.outputs],
                              "estimated_cycles": estimate.program_cycles(k, p.name)}
                     for p in k.programs.values()},
        "lanes": {s.name: s.lanes for s in k.stages() if s.lanes > 1},
        **({"outer_lanes": {s.name: [s.outer_lanes, s.outer_lane_var] for s in k.stages() if s.outer_lanes > 1}}
           if any(s.outer_lanes > 1 for s in k.stages()) else {}),
        "estimated_resources": {"dsp": res.dsp, "bram36": res.bram36, "memory_bits": res.memory_bits},
        "buffers": [{"buffer": p.buffer, "place": p.place, "role": p.role, "values": p.values, "width": p.width,
                     "bytes": p.bytes} for p in placement.placements(k)],
        "placement": placement.totals(k, t),
        **({"ddr_traffic": ddr_traffic.manifest_entry(traffic, t)} if (traffic := ddr_traffic.kernel_traffic(k))
           else {}),
        "outputs": design.outputs,
        "rtl_cycles": design.rtl_cycles(),
    }


def _runtime_files() -> dict[str, str]:
    pkg = resources.files(fx2fpga_runtime)
    return {f"driver/fx2fpga_runtime/{f.name}": f.read_text() for f in sorted(pkg.iterdir(), key=lambda p: p.name)
            if f.name.endswith(".py")}


def _template_vars(design) -> dict:
    """What the Vitis, Vivado and driver templates read."""
    k = design.kernel
    return {"version": __version__, "name": k.name, "target": design.target,
            "period_ns": f"{1000.0 / design.target.clock_mhz:g}",
            "programs": [{"name": p.name, "args": ", ".join(p.inputs)} for p in k.programs.values()],
            "params": _param_list(k), "models": len(k.meta.get("models") or []), "ddr_bundles": hls.ddr_bundles(k)}


def _param_list(k) -> str:
    """The parameters the driver's docstring lists (per model for a kernel of many models)."""
    models = k.meta.get("models")
    if not models:
        return ", ".join(k.param_names[p] for p in k.params)
    return "; ".join(f"model {i}: " + ", ".join(k.param_names[p] for p in m["params"]) for i, m in enumerate(models))


def vectors_of(design) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The golden vectors of a design, computed once (kept on its compile context)."""
    ctx = design.context
    if ctx.vectors is None:
        ctx.vectors = golden_vectors(design)
    return ctx.vectors


def hls_files(design) -> dict[str, str]:
    """The HLS output: C++ kernel and testbench, and (Xilinx boards) the Vitis HLS and Vivado scripts."""
    k, env, files = design.kernel, template_env(), {}
    if design.target.toolchain == "vivado":  # an ECP5 board builds from rtl/ (fx2fpga build)
        files["hls.tcl"] = env.get_template("tcl/hls.tcl.j2").render(_template_vars(design))
        files["build.tcl"] = env.get_template("tcl/build.tcl.j2").render(_template_vars(design))
    files.update(hls.generate(k, __version__))
    files.update(hls.generate_testbench(k, vectors_of(design), __version__))
    return files


def rtl_files(design) -> dict[str, str]:
    """The RTL output: ``rtl/`` (from the design's schedule and RTL plan) and, for Zynq boards, ``build_rtl.tcl``."""
    k, t = design.kernel, design.target
    files = verilog.project_files(k, __version__, t.clock_mhz, t.dsp_kind, schedule=design.schedule,
                                  rtl_plan=design.rtl_plan())
    if f"rtl/{k.name}_axi.v" in files and t.toolchain == "vivado" and t.ps == "zynq7":
        sources = files["rtl/files.f"].split()  # and the `include files: the .sv files not listed there
        headers = [f[4:] for f in files if f.startswith("rtl/") and f.endswith(".sv") and f[4:] not in sources]
        files["build_rtl.tcl"] = template_env().get_template("tcl/build_rtl.tcl.j2").render(
            _template_vars(design), sources=sources, headers=headers)
    return files


def project_files(design) -> dict[str, str]:
    """Relative path -> text of every file in the project folder (the emitted files from the design's context)."""
    from .writer import manifest_text

    ctx = design.context
    files = {
        "kernel.json": design.kernel.to_json() + "\n",
        "manifest.json": manifest_text(manifest(design)),
        "report.md": design.report,
    }
    if design.target.ps:  # the PYNQ driver runs on the board's processor
        files["driver/driver.py"] = template_env().get_template("driver/driver.py.j2").render(_template_vars(design))
        files.update(_runtime_files())
    files[VECTORS] = vectors_text(vectors_of(design))
    files.update(ctx.hls_files or {})
    files.update(ctx.rtl_files or {})
    return dict(sorted(files.items()))
