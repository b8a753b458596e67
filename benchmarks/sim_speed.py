"""Simulation speed side by side with PyTorch, in one run: the digits MLP and CNN training steps.

For each model (``examples/mlp_digits.py``, ``examples/cnn_digits.py``; batch 16, SGD), measured here in the
same process and the same minutes, so that the ratios hold on a noisy machine:

- PyTorch eager on the CPU, one thread: ms per training step (the reference of every ratio);
- compile -> first emulator result, in a fresh interpreter (``import fx2fpga`` timed apart);
- per simulator (``emu``, ``csim``, ``rtl``): its build from an empty cache (g++ or Verilator), ms per
  training step and its ratio to PyTorch's; ``emu`` also per step of ``train_steps`` (all steps in one call);
  ``rtl`` also simulated cycles per second (exact cycles of the step / wall time);
- the ``csim`` build of the inference kernel (no training step) from an empty cache.

    python benchmarks/sim_speed.py [--models mlp,cnn] [--sims emu,csim,rtl] [--steps 20]
        -> benchmarks/results/sim_speed.{json,png}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "examples"))

import cnn_digits  # noqa: E402
import mlp_digits  # noqa: E402

import fx2fpga  # noqa: E402

EXAMPLES = {"mlp": (mlp_digits, lambda x: x), "cnn": (cnn_digits, cnn_digits.images)}
REPEATS = 3  # timed loops per figure; the median is kept


@contextmanager
def empty_cache():
    """``$FX2FPGA_CACHE`` pointed at a new empty folder for the block (builds from scratch)."""
    old = os.environ.get("FX2FPGA_CACHE")
    with tempfile.TemporaryDirectory(prefix="fx2fpga_cache_") as tmp:
        os.environ["FX2FPGA_CACHE"] = tmp
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("FX2FPGA_CACHE", None)
            else:
                os.environ["FX2FPGA_CACHE"] = old


def batches(name: str, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``steps`` training batches of the example's data, in the model's input layout."""
    x, y, _, _ = mlp_digits.digits()
    prepare = EXAMPLES[name][1]
    return [(prepare(xb), yb) for xb, yb in mlp_digits.batches(x, y, steps)]


def seconds_per_step(step, data) -> float:
    """Median over ``REPEATS`` loops of the wall time of one ``step(x, y)``."""
    step(*data[0])  # warm up
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for x, y in data:
            step(x, y)
        times.append((time.perf_counter() - t0) / len(data))
    return float(np.median(times))


def torch_eager(name: str, data) -> float:
    """Seconds per SGD step of the example's model in PyTorch eager on one CPU thread."""
    ex = EXAMPLES[name][0]
    torch.set_num_threads(1)
    model = type(ex.model)()
    model.load_state_dict(ex.model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=ex.lr)

    def step(x, y):
        opt.zero_grad()
        ex.loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()

    return seconds_per_step(step, data)


_FIRST_RESULT = """
import sys, time, json
t0 = time.perf_counter()
import fx2fpga
t1 = time.perf_counter()
sys.path.insert(0, {examples!r})
import {module} as ex
t2 = time.perf_counter()
d = fx2fpga.compile(ex.model, ex.example_inputs, train=fx2fpga.SGD(ex.loss_fn, ex.example_targets, ex.lr))
k = d.load("emu")
k.train_step(ex.example_inputs[0].numpy(), ex.example_targets.numpy())
t3 = time.perf_counter()
print(json.dumps({{"import_fx2fpga_s": t1 - t0, "compile_to_first_emu_result_s": t3 - t2}}))
"""


def first_result(name: str) -> dict:
    """In a fresh interpreter: seconds to ``import fx2fpga``, and from ``compile`` to the first emulator step."""
    module = EXAMPLES[name][0].__name__
    code = _FIRST_RESULT.format(examples=str(ROOT / "examples"), module=module)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def simulator(design, sim: str, data) -> dict:
    """Build ``sim`` from an empty cache (timed), then its seconds per training step (and rtl's cycles/s)."""
    with empty_cache():
        t0 = time.perf_counter()
        kernel = design.load(sim)
        build = time.perf_counter() - t0
    with kernel:
        row = {"build_s": build, "step_s": seconds_per_step(kernel.train_step, data)}
        if sim == "emu":  # many steps in one call
            xs, ys = np.stack([x for x, _ in data]), np.stack([y for _, y in data])
            steps_s = seconds_per_step(lambda x, y: kernel.train_steps(x, y), [(xs, ys)])
            row["train_steps_step_s"] = steps_s / len(data)
        if sim == "rtl":
            row["cycles_per_step"] = kernel.backend.last_cycles
            row["cycles_per_s"] = kernel.backend.last_cycles / row["step_s"]
    return row


def csim_inference_build(name: str, out: Path) -> float:
    """Seconds to build the csim of the example's inference kernel from an empty cache."""
    ex = EXAMPLES[name][0]
    design = fx2fpga.compile(ex.model, ex.example_inputs, outputs="hls", out_dir=out)
    with empty_cache():
        t0 = time.perf_counter()
        design.load("csim").close()
        return time.perf_counter() - t0


def measure(name: str, sims: list[str], steps: int, work: Path) -> dict:
    """Every figure of one example model."""
    ex = EXAMPLES[name][0]
    data = batches(name, steps)
    row = {"torch_eager_1_thread_step_s": torch_eager(name, data), "first_result": first_result(name)}
    outputs = "both" if "rtl" in sims else "hls"
    design = fx2fpga.compile(ex.model, ex.example_inputs, train=fx2fpga.SGD(ex.loss_fn, ex.example_targets, ex.lr),
                             outputs=outputs, out_dir=work / f"{name}_train")
    row["sims"] = {}
    for sim in sims:
        row["sims"][sim] = r = simulator(design, sim, data if sim != "rtl" else data[: max(2, steps // 4)])
        r["x_torch_time"] = r["step_s"] / row["torch_eager_1_thread_step_s"]
        if "train_steps_step_s" in r:
            r["train_steps_x_torch_time"] = r["train_steps_step_s"] / row["torch_eager_1_thread_step_s"]
        print(f"{name} {sim}: {r}", flush=True)
    if "csim" in sims:
        row["csim_inference_build_s"] = csim_inference_build(name, work / f"{name}_infer")
    return row


def plot(result: dict, png: Path) -> None:
    """Step time as a multiple of PyTorch's (log scale) and build times, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"])
    sims = sorted({s for m in models for s in result["models"][m]["sims"]}, key=["emu", "csim", "rtl"].index)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    series = [(sim, "x_torch_time") for sim in sims]
    if "emu" in sims:
        series.insert(1, ("emu", "train_steps_x_torch_time"))
    width = 0.8 / len(series)
    for i, (sim, key) in enumerate(series):
        xs = [j + i * width for j, m in enumerate(models) if sim in result["models"][m]["sims"]]
        ys = [result["models"][m]["sims"][sim][key] for m in models if sim in result["models"][m]["sims"]]
        a.bar(xs, ys, width, label=sim if key == "x_torch_time" else f"{sim} train_steps")
    a.axhline(1, color="k", lw=0.8)
    a.axhline(2, color="r", ls="--", lw=0.8, label="2x PyTorch (emu, csim goal)")
    a.set(yscale="log", ylabel="time per training step / PyTorch eager (1 thread)",
          title="simulation speed (lower is faster)")
    a.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(models))], models)
    a.legend(fontsize=7, loc="upper left")
    labels, values = [], []
    for m in models:
        r = result["models"][m]
        if "csim_inference_build_s" in r:
            labels.append(f"{m}\ncsim infer"), values.append(r["csim_inference_build_s"])
        for sim in ("csim", "rtl"):
            if sim in r["sims"]:
                labels.append(f"{m}\n{sim} train"), values.append(r["sims"][sim]["build_s"])
    b.bar(range(len(values)), values, color="#4c72b0")
    b.axhline(4.1, color="g", ls="--", lw=0.8, label="4.1 s (hls4ml's csim build)")
    b.axhline(10, color="r", ls="--", lw=0.8, label="10 s")
    b.set_xticks(range(len(values)), labels, fontsize=7)
    b.set(ylabel="seconds, empty cache", title="simulator build")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--sims", default="emu,csim,rtl")
    ap.add_argument("--steps", type=int, default=20, help="training steps per timed loop")
    args = ap.parse_args()
    sims = args.sims.split(",")
    result = {"machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count(), "torch": torch.__version__},
              "steps_per_loop": args.steps, "repeats": REPEATS, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            result["models"][name] = measure(name, sims, args.steps, Path(tmp))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sim_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / "sim_speed.png")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
