"""Model throughput: digits MLPs (64-32-10, batch 16, SGD) trained per second, FPGA against PyTorch.

- fx2fpga on the PYNQ-Z1 at 100 MHz: per training step, the RTL kernel's exact cycles (the schedule's
  model, which Verilator measures to the cycle: tests/feature/test_rtl.py) plus what the bus adds to them
  through the AXI wrapper (``explore.bus_cycles``: the core's unpack phases take the batch's words as the bus
  delivers them, so only a slower bus waits, at the target's measured AXI DMA rate ``bus_mbytes_per_s``; the
  loss words' write-back and the wrapper's start and finish, measured in its Verilator harness:
  tests/feature/test_rtl_axi.py). One
  model at lanes 4, and N models in one kernel at ``lanes="auto"`` (the explorer's choice on the
  calibrated RTL resource model: models of one architecture on a model axis, in groups, lanes per
  stage; ``passes/explore.py``); also N digits CNNs (``--cnns``).
  MAC-lane utilization: useful multiplies / (multiplier lanes x cycles), per multiplying stage and
  over the whole step.
- PyTorch on this machine's CPU, in the same run: an eager loop over N models and ``torch.func.vmap``
  over N models, at 1 thread and at all threads.
- A GPU figure from ``torch_baseline_gpu.json`` (``benchmarks/torch_baseline.py`` on a lent GPU
  machine: not the same run, so compare its ratios with care).

    python benchmarks/model_throughput.py [--models 1,8,30] [--cnns 30] [--cpu-only]
        -> benchmarks/results/model_throughput.{json,png}

``--cpu-only`` keeps the stored FPGA rows (exact RTL cycles and the calibrated model: the same on any machine) and
measures PyTorch again, for a run whose CPU figures other jobs disturbed (``fpga_date``, ``cpu_date``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "examples"))

import mlp_digits as ex  # noqa: E402


def _mlps(n: int) -> list:
    models = []
    for seed in range(n):
        torch.manual_seed(seed)
        models.append(ex.DigitsMLP())
    return models


def mac_utilization(design, macs: int) -> dict:
    """Useful multiplies (``macs`` per step) / (multiplier lanes x cycles), per multiplying stage and over the
    training step."""
    from fx2fpga_runtime.ops import OPS_TABLE

    phases = design.schedule.commands["train_step"]
    pool = design.rtl_plan().pool
    lanes = pool["lanes"] if pool else 1
    stages = {}
    for p in phases:
        if p.kind == "stage" and OPS_TABLE[p.stage.op].multiplies:
            stages[p.stage.name] = round(p.stage.iterations / (p.lanes * p.cycles), 3)
    return {"multiplier_lanes": lanes, "step": round(macs / (lanes * design.rtl_cycles()["train_step"]), 3),
            "stages": stages}


def fpga(n_models: int, lanes, model: str = "mlp") -> dict | None:
    """One kernel training ``n_models`` MLPs (or CNNs) at once: cycles, bus time, model-steps/s at the target
    clock, and the explorer's chosen point."""
    import fx2fpga
    from fx2fpga.errors import Fx2fpgaError
    from fx2fpga.project import roofline

    models, mod = _models(n_models, model)
    sgd = fx2fpga.SGD(mod.loss_fn, mod.example_targets, mod.lr)
    t0 = time.perf_counter()
    try:
        design = fx2fpga.compile(models if n_models > 1 else models[0], mod.example_inputs, train=sgd, lanes=lanes,
                                 progress=lambda m: print(f"  {m}", flush=True) if "explore" in m else None)
    except (TypeError, ValueError, Fx2fpgaError) as e:
        print(f"fpga {n_models} {model}s, lanes {lanes}: not compiled ({type(e).__name__}: {e})", flush=True)
        return {"model": model, "models": n_models, "lanes": lanes, "error": f"{type(e).__name__}: {e}"}
    seconds = time.perf_counter() - t0
    t = design.target
    points = roofline.program_points(design.kernel, design.rtl_cycles(), t.clock_mhz)
    point = next(p for p in points if p.program == "train_step")
    from fx2fpga.passes import explore

    cycles, bus_bytes = point.cycles, point.bus_bytes
    bus_cycles = explore.bus_cycles(design.kernel, "train_step", t)
    step_s = (cycles + bus_cycles) / (t.clock_mhz * 1e6)
    exploration = design.context.exploration
    chosen = exploration.chosen if exploration else None
    if exploration is not None:  # the design points behind the choice: explore_<n>_<model>s.{json,png}
        from fx2fpga.project import exploration as explore_files

        explore_files.write(exploration, RESULTS, f"{n_models} digits {model.upper()}s on {t.name} at "
                            f"{t.clock_mhz:g} MHz", stem=f"explore_{n_models}_{model}s")
    from fx2fpga.passes import resources

    pred = resources.rtl_resources(design, t)
    return {"model": model, "models": n_models, "lanes": lanes, "target": t.name, "clock_mhz": t.clock_mhz,
            "chosen": chosen.label if chosen else None, "pipeline_cut": chosen.pipeline_cut if chosen else None,
            "groups": design.kernel.programs["train_step"].groups, "compile_seconds": round(seconds, 1),
            "cycles_per_step": cycles, "bus_bytes_per_step": bus_bytes, "bus_cycles_per_step": bus_cycles,
            "model_steps_per_s": n_models / step_s, "dsp_blocks": design.rtl_dsp_blocks(),
            "predicted": {"lut": pred.lut, "ff": pred.ff, "dsp": pred.dsp, "bram36": pred.bram36},
            "fits_budget": pred.lut <= t.lut and pred.ff <= t.ff and pred.dsp <= t.dsp and pred.bram36 <= t.bram36,
            "mac_utilization": mac_utilization(design, point.macs),
            "source": f"exact RTL cycles + what the AXI wrapper adds (input words at {t.bus_mbytes_per_s:g} MB/s "
                      f"({t.bus_source}) as the core takes them, output write-back, start and finish); resources: "
                      "the calibrated RTL model"}


def _models(n: int, model: str):
    """``n`` seeded MLPs or CNNs and their example module."""
    if model == "mlp":
        return _mlps(n), ex
    import cnn_digits as cx

    models = []
    for seed in range(n):
        torch.manual_seed(seed)
        models.append(cx.DigitsCNN())
    return models, cx


def _torch_data(n: int):
    x = torch.rand(n, 16, 64)
    y = torch.randint(0, 10, (n, 16))
    return x, y


def torch_eager(n_models: int, threads: int, seconds: float = 1.0) -> float:
    """Model-steps/s of a Python loop of torch.optim.SGD steps over ``n_models`` models."""
    torch.set_num_threads(threads)
    models = _mlps(n_models)
    opts = [torch.optim.SGD(m.parameters(), lr=ex.lr) for m in models]
    x, y = _torch_data(n_models)

    def step():
        for i, (m, o) in enumerate(zip(models, opts, strict=True)):
            o.zero_grad()
            F.cross_entropy(m(x[i]), y[i]).backward()
            o.step()

    return n_models * _steps_per_s(step, seconds)


def torch_vmap(n_models: int, threads: int, seconds: float = 1.0) -> float:
    """Model-steps/s of ``n_models`` models trained at once with ``torch.func.vmap``."""
    torch.set_num_threads(threads)
    params, buffers = stack_module_state(_mlps(n_models))
    base = ex.DigitsMLP().to("meta")
    x, y = _torch_data(n_models)

    def loss(p, b, xb, yb):
        return F.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    g = vmap(grad(loss))
    state = {"p": params}

    def step():
        with torch.no_grad():
            gr = g(state["p"], buffers, x, y)
            state["p"] = {k: v - ex.lr * gr[k] for k, v in state["p"].items()}

    return n_models * _steps_per_s(step, seconds)


def _steps_per_s(step, seconds: float) -> float:
    for _ in range(3):
        step()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - t0)


def gpu_rows() -> dict | None:
    """The stored GPU baseline (vmap over N MLPs), if one was measured."""
    path = RESULTS / "torch_baseline_gpu.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return {"gpu": data.get("gpu"), "date": data.get("date"), "torch": data.get("torch"),
            "vmap_model_steps_per_s": {str(r["n_models"]): r["model_steps_per_s"] for r in data["cuda"]["mlp"]}}


def plot(result: dict, png: Path) -> None:
    """Bars: model-steps/s of every configuration (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, colors = [], [], []
    for f in result["fpga"]:
        if "error" in f:
            continue
        how = f"lanes {f['lanes']}" if f["chosen"] is None else f"auto: {f['chosen']}"
        what = "MLP" if f["model"] == "mlp" else "CNN"
        labels.append(f"PYNQ-Z1: {f['models']} {what}{'s' * (f['models'] > 1)}, {how}")
        values.append(f["model_steps_per_s"])
        colors.append("#c44e52" if f["model"] == "mlp" else "#dd8452")
    for kind, color in (("eager", "#8172b2"), ("vmap", "#4c72b0")):
        for row in result["torch_cpu"][kind]:
            labels.append(f"CPU {kind}, {row['threads']} thread{'s' * (row['threads'] > 1)}, {row['models']} models")
            values.append(row["model_steps_per_s"])
            colors.append(color)
    gpu = result.get("torch_gpu")
    if gpu:
        n = max(gpu["vmap_model_steps_per_s"], key=lambda k: int(k))
        labels.append(f"{gpu['gpu']} vmap, {n} models (stored run {gpu['date']})")
        values.append(gpu["vmap_model_steps_per_s"][n])
        colors.append("#55a868")
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(labels) + 1.5))
    ax.barh(labels, values, color=colors)
    ax.set_xscale("log")
    ax.set_xlabel("model training steps per second (log)")
    fig.suptitle("digits MLP 64-32-10 and CNN, batch 16, SGD: training throughput")  # (over the labels too)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="1,8,30", help="MLP counts (FPGA kernels and PyTorch)")
    ap.add_argument("--cnns", default="30", help="digits CNN counts (FPGA kernels; '' for none)")
    ap.add_argument("--cpu-only", action="store_true",
                    help="keep the FPGA rows of the stored JSON (exact cycles: the same on any machine) and measure "
                         "PyTorch again, e.g. where other jobs loaded the machine during the full run")
    a = ap.parse_args()
    counts = [int(n) for n in a.models.split(",")]
    threads = sorted({1, os.cpu_count() or 1})
    if a.cpu_only:
        stored = json.loads((RESULTS / "model_throughput.json").read_text())
        fpga_rows = stored["fpga"]
        fpga_date = stored.get("fpga_date", stored["date"])
    else:
        fpga_rows = [fpga(1, 4)] + [fpga(n, "auto") for n in counts]
        fpga_rows += [fpga(int(n), "auto", "cnn") for n in a.cnns.split(",") if n]
        fpga_date = time.strftime("%Y-%m-%d %H:%M")
    cpu = {"eager": [], "vmap": []}
    for n in counts:
        for th in threads:
            cpu["eager"].append({"models": n, "threads": th, "model_steps_per_s": torch_eager(n, th)})
            cpu["vmap"].append({"models": n, "threads": th, "model_steps_per_s": torch_vmap(n, th)})
    result = {"model": "digits MLP 64-32-10, batch 16, SGD", "fpga": fpga_rows, "torch_cpu": cpu,
              "torch_gpu": gpu_rows(), "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                                   "cpu_threads": os.cpu_count()},
              "date": time.strftime("%Y-%m-%d"), "fpga_date": fpga_date,
              "cpu_date": time.strftime("%Y-%m-%d %H:%M")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "model_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / "model_throughput.png")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
