"""``fx2fpga compile | explore | sim | build | report | targets``."""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import time
import traceback
import warnings
from pathlib import Path

from .errors import Fx2fpgaError, ModelFileError


def _progress(msg: str) -> None:
    print(f"fx2fpga: {msg}", file=sys.stderr, flush=True)


def load_model_file(path: Path, train: bool) -> dict:
    """Run a model.py and return what it defines (``model`` or ``models``, ``example_inputs``, ...)."""
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    ns = _run_model_file(path)
    need = ["model" if "models" not in ns else "models", "example_inputs"]
    need += ["loss_fn", "example_targets"] if train else []
    missing = [n for n in need if n not in ns]
    if missing:
        hint = " (needed for --train)" if train and set(missing) & {"loss_fn", "example_targets"} else ""
        raise ModelFileError(f"{path} does not define {', '.join(missing)}{hint}; a model file defines "
                             f"'model' (an nn.Module or function) or 'models' (a list of them: one kernel), "
                             f"'example_inputs' (a tensor or tuple), and for --train also 'loss_fn', "
                             f"'example_targets' and optionally 'lr', 'momentum', 'weight_decay' (with 'models': "
                             f"one value, or a list with one per model)")
    if "models" in ns and not isinstance(ns["models"], (list, tuple)):
        raise ModelFileError(f"{path}: 'models' must be a list of models, got {type(ns['models']).__name__}")
    return ns


def _run_model_file(path: Path) -> dict:
    """The namespace of running ``path``; an exception it raises becomes a ``ModelFileError`` naming the file,
    its line and the exception (no traceback dump)."""
    try:
        return runpy.run_path(str(path), run_name="__fx2fpga__")
    except Exception as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == path.resolve()]
        where = f"{path}:{frames[-1].lineno}: {(frames[-1].line or '').strip()}" if frames else str(path)
        if isinstance(e, SyntaxError) and e.lineno:
            where = f"{path}:{e.lineno}: {(e.text or '').strip()}"
        raise ModelFileError(f"{where}: running the model file raised {type(e).__name__}: {e}\n"
                             f"fix the file (python {path} shows the whole traceback)") from e


def _setting(ns: dict, key: str, default: float):
    """A hyper-parameter of a model file: one number, or (a list of models) a list of numbers."""
    value = ns.get(key, default)
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else float(value)


def _renamed(args, old: str, new: str) -> str:
    """The value of option ``--new``, or of its deprecated old spelling ``--old`` (with a warning)."""
    value = getattr(args, old)
    if value is None:
        return getattr(args, new)
    warnings.warn(f"--{old} is now --{new}; --{old} goes in the next release", DeprecationWarning, stacklevel=2)
    _progress(f"warning: --{old} is deprecated, use --{new}")
    return value


def _model_and_train(path: Path, train: bool):
    """What a model file defines: (its namespace, the model or list of models, its SGD or None)."""
    import fx2fpga

    ns = load_model_file(path, train)
    sgd = fx2fpga.SGD(ns["loss_fn"], ns["example_targets"], _setting(ns, "lr", 0.1), _setting(ns, "momentum", 0.0),
                      _setting(ns, "weight_decay", 0.0)) if train else None
    return ns, (list(ns["models"]) if "models" in ns else ns["model"]), sgd


def cmd_compile(args) -> int:
    import fx2fpga

    path = Path(args.model)
    ns, model, train = _model_and_train(path, args.train)
    out_dir = Path(args.output or f"{path.stem}_{args.target}")
    t0 = time.perf_counter()
    what = f"{len(model)} models in one " if isinstance(model, list) else ""
    _progress(f"compiling {path} for {args.target} ({what}{'training' if train else 'inference'} kernel)")
    design = fx2fpga.compile(model, ns["example_inputs"], target=args.target, train=train,
                             precision=args.precision, lanes=args.lanes, name=args.name or path.stem,
                             progress=_progress, outputs=_renamed(args, "backend", "outputs"),
                             model_lanes=args.model_lanes, placement=args.placement)
    design.write(out_dir)
    _progress(f"wrote {out_dir}/ in {time.perf_counter() - t0:.1f} s")
    print(out_dir)
    return 0


def cmd_explore(args) -> int:
    import fx2fpga

    path = Path(args.model)
    ns, model, train = _model_and_train(path, args.train)
    out_dir = Path(args.output or f"{path.stem}_{args.target}_explore")
    result = fx2fpga.explore(model, ns["example_inputs"], target=args.target, train=train, precision=args.precision,
                             lanes=args.lanes, model_lanes=args.model_lanes, out_dir=out_dir, name=path.stem,
                             progress=_progress)
    print(f"{'model lanes x lanes':>19s} {'cycles':>9s} {'bus':>6s} {'model-steps/s':>14s} {'LUT':>8s} {'FF':>8s} "
          f"{'DSP':>5s} {'BRAM36':>7s} {'budget':>7s} {'allowed':>7s}")
    for p in result.points:
        mark = " chosen" if p.chosen else (" front" if p.pareto else "")
        print(f"{p.label:>19s} {p.cycles:9,d} {p.bus_cycles:6,d} {p.model_steps_per_s:14,.0f} {p.lut:8,d} {p.ff:8,d} "
              f"{p.dsp:5d} {p.bram36:7g} {p.usage:7.0%} {p.load:7.0%}{mark}")
    if result.skipped:
        skipped = ", ".join(f"{m}x{ln}" for m, ln in result.skipped)
        print(f"not evaluated (more lanes than a point over 100% of the LUTs, FFs or DSPs): {skipped}")
    print(f"wrote {out_dir}/explore.json" + (" and explore.png" if (out_dir / "explore.png").is_file() else ""))
    if result.chosen is None:
        print(f"no point fits {result.budget:.0%} of {result.target}'s budget")
        return 1
    return 0


def cmd_sim(args) -> int:
    from fx2fpga_runtime.testbench import replay

    sim = _renamed(args, "backend", "sim")
    counts: dict = {}
    results = replay(Path(args.project), sim, log=_progress, saturation=counts)
    failed = sum(r["mismatches"] for r in results)
    for r in results:
        status = "ok" if r["mismatches"] == 0 else f"{r['mismatches']} MISMATCHES"
        print(f"{r['command']:12s} {r['words']:6d} words  {status}")
    total = sum(r["words"] for r in results)
    print(f"{sim}: {total - failed} words match, {failed} differ from the emulator's golden vectors")
    _print_saturation(counts)
    return 1 if failed else 0


def _print_saturation(counts: dict) -> None:
    """The buffers whose assignments saturated (or wrapped) during the replay, with their counts."""
    hit = {b: n for b, n in counts.items() if n}
    for b, n in hit.items():
        print(f"saturated {b:24s} {n:8d} times")
    if counts and not hit:
        print("no value saturated")


def cmd_report(args) -> int:
    report = Path(args.project) / "report.md"
    if not report.is_file():
        raise Fx2fpgaError(f"{args.project} has no report.md: is it an fx2fpga project folder?")
    from .project import roofline

    roofline.add_to_report(Path(args.project))
    if not args.no_synth and (Path(args.project) / "rtl" / "files.f").is_file():
        from .project.report import rtl_model_resources
        from .toolchains.yosys import add_to_report

        add_to_report(Path(args.project), log=_progress, model=rtl_model_resources(Path(args.project)))
    print(report.read_text())
    return 0


def cmd_build(args) -> int:
    from .targets import load_target

    project = Path(args.project)
    if not (project / "manifest.json").is_file():
        raise Fx2fpgaError(f"{project} has no manifest.json: is it an fx2fpga project folder?")
    manifest = json.loads((project / "manifest.json").read_text())
    if load_target(manifest["target"]["name"]).family == "ecp5":
        return _build_ecp5(project)
    from .toolchains import vivado

    return vivado.build(project, manifest["target"]["name"], log=_progress)


def _build_ecp5(project: Path) -> int:
    from .toolchains.ecp5 import build

    t0 = time.perf_counter()
    result = build(project, log=_progress)
    _progress(f"wrote {result.bitstream} in {time.perf_counter() - t0:.0f} s"
              f"{' (cached place and route)' if result.cached else ''}")
    path = result.report.critical_path or {}
    if result.timing_met:
        print(f"{result.bitstream}: Fmax {result.fmax_mhz:.1f} MHz >= {result.clock_mhz:g} MHz, timing met")
        return 0
    print(f"{result.bitstream}: Fmax {result.fmax_mhz:.1f} MHz < {result.clock_mhz:g} MHz: TIMING NOT MET "
          f"(the bitstream may not work at {result.clock_mhz:g} MHz). Critical path {path.get('delay_ns', 0):.1f} "
          f"ns: {path.get('start')} -> {path.get('end')}; see {project / 'report.md'}")
    return 1


def cmd_targets(args) -> int:
    from .targets import list_targets

    print(f"{'target':10s} {'part':22s} {'MHz':>5s} {'LUT':>8s} {'FF':>8s} {'BRAM36':>7s} {'DSP':>16s}  toolchain")
    for t in list_targets():
        print(f"{t.name:10s} {t.part:22s} {t.clock_mhz:5g} {t.lut:8,d} {t.ff:8,d} {t.bram36:7d} "
              f"{f'{t.dsp} {t.dsp_kind}':>16s}  {t.toolchain}")
    print("LUT: 6-input (Xilinx) or 4-input (ECP5); BRAM36: 36 kb block RAMs, or the equivalent in 18 kb blocks")
    return 0


def _lanes(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _placement(text: str) -> str | dict:
    """``--placement``: ``ddr`` (every parameter and temporary array in DDR) or a JSON object buffer -> place, as
    ``compile(placement=...)`` takes it; the places themselves are checked by the "place" step."""
    if text == "ddr":
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected 'ddr' or a JSON object such as '{{\"conv1_weight\": \"ddr\"}}', "
                                         f"got {text!r} ({e.msg} at character {e.pos})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected 'ddr' or a JSON object buffer -> \"ddr\" | \"chip\", got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fx2fpga", description="Compile PyTorch models and their training step "
                                "to fixed-point FPGA kernels.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="compile a model.py into a project folder")
    c.add_argument("model", help="a Python file defining model (or models, a list of models: one kernel that "
                   "trains them all on each batch) and example_inputs (and loss_fn, example_targets, lr, momentum, "
                   "weight_decay for --train; with models, each of lr, momentum, weight_decay may be a list with "
                   "one value per model)")
    c.add_argument("--target", default="pynq-z1", help="board (see: fx2fpga targets)")
    c.add_argument("--train", action="store_true", help="compile the SGD training step too")
    c.add_argument("-o", "--output", help="output folder (default: <model>_<target>)")
    c.add_argument("--precision", help="default fixed-point format, e.g. 'fixed<16,6>'")
    c.add_argument("--lanes", type=_lanes, default=None,
                   help="parallel datapath copies per stage, or 'auto' to fill the board's budget (default 4, or 2 "
                        "or 1 where the budget needs it)")
    c.add_argument("--model-lanes", type=_lanes, default="auto",
                   help="models of one architecture computed at once (a list of models), or 'auto' (default)")
    c.add_argument("--name", help="kernel name (default: the model file's name)")
    c.add_argument("--outputs", choices=["hls", "rtl", "both"],
                   help="what the folder holds: HLS C++ for Vitis (hls), Verilog (rtl), or both (default: both for "
                        "Xilinx boards, rtl for ECP5)")
    c.add_argument("--backend", choices=["hls", "rtl", "both"], help=argparse.SUPPRESS)  # deprecated: --outputs
    c.add_argument("--placement", type=_placement, default=None,
                   help="where buffers live: 'ddr' (every parameter and temporary array in DDR) or a JSON object "
                        "buffer -> place, e.g. '{\"conv1_weight\": \"ddr\"}' (default: on chip, or for "
                        "--outputs hls the largest arrays in DDR until the block RAM fits; docs/offchip.md)")
    c.set_defaults(func=cmd_compile)
    e = sub.add_parser("explore", help="weigh lane choices (and models side by side) on exact RTL cycles and the "
                       "calibrated resource model: writes the Pareto front as explore.json and explore.png")
    e.add_argument("model", help="a Python file defining model or models (as for compile)")
    e.add_argument("--target", default="pynq-z1", help="board (an xc7 one: the resource model's family)")
    e.add_argument("--train", action="store_true", help="explore the training kernel")
    e.add_argument("-o", "--output", help="folder for explore.json/png (default: <model>_<target>_explore)")
    e.add_argument("--precision", help="default fixed-point format, e.g. 'fixed<16,6>'")
    e.add_argument("--lanes", type=_lanes, default="auto", help="lanes per stage to try: a number, or 'auto' (all)")
    e.add_argument("--model-lanes", type=_lanes, default="auto", help="models at once: a number, or 'auto' (all)")
    e.set_defaults(func=cmd_explore)
    s = sub.add_parser("sim", help="replay the testbench vectors of a project on a simulator")
    s.add_argument("project")
    s.add_argument("--sim", default="emu", choices=["emu", "csim", "rtl"],
                   help="emu (numpy), csim (g++ on the HLS C++) or rtl (Verilator); default emu")
    s.add_argument("--backend", choices=["emu", "csim", "rtl"], help=argparse.SUPPRESS)  # deprecated: --sim
    s.set_defaults(func=cmd_sim)
    b = sub.add_parser("build", help="make the bitstream: Vitis HLS and Vivado for Xilinx boards (where installed), "
                       "Yosys + nextpnr (pip: yowasp) for ECP5 boards")
    b.add_argument("project")
    b.set_defaults(func=cmd_build)
    r = sub.add_parser("report", help="print a project's report, with its roofline (reports/roofline.png) and "
                                      "Yosys resource counts of its RTL")
    r.add_argument("project")
    r.add_argument("--no-synth", action="store_true", help="do not run Yosys on the project's rtl/")
    r.set_defaults(func=cmd_report)
    t = sub.add_parser("targets", help="list the boards")
    t.set_defaults(func=cmd_targets)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (Fx2fpgaError, FileNotFoundError) as e:
        print(f"fx2fpga: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
