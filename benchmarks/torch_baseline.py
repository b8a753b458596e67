"""PyTorch baselines for model throughput: SGD steps of many digits MLPs / CNNs trained at once.

Measures, in one run on one machine, model-steps per second of N models of one architecture
trained side by side with ``torch.func.vmap`` (batch 16 each, every model its own batch), on
the CPU with one thread and, where a CUDA GPU is present, on the GPU (plus its power draw read
from ``nvidia-smi`` while it runs, for model-steps per joule). The FPGA numbers to compare with
are in ``model_throughput.json`` (exact RTL cycles at the target clock).

    python benchmarks/torch_baseline.py [--out DIR] [--max-models 4096] [--seconds 1.5]
        -> DIR/torch_baseline_<gpu|cpu>.{json,png}  (default DIR: benchmarks/results)
    python benchmarks/torch_baseline.py --plot benchmarks/results/torch_baseline_gpu.json   (the PNG again)

The GPU rows in ``benchmarks/results`` were measured on a lent H200 machine (the project's
own machines have no GPU); rerun there with the same command.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import cnn_digits  # noqa: E402
import mlp_digits  # noqa: E402

ARCHES = {"mlp": (mlp_digits.DigitsMLP, (16, 64)), "cnn": (cnn_digits.DigitsCNN, (16, 1, 8, 8))}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class PowerReader:
    """Mean GPU board power (W) from ``nvidia-smi`` sampled every 50 ms while the block runs."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=power.draw", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def mean_w(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def model_steps_per_s(arch: str, n_models: int, device: str, seconds: float) -> dict:
    """Train ``n_models`` copies of ``arch`` at once for about ``seconds``; model-steps per second."""
    cls, x_shape = ARCHES[arch]
    models = [cls() for _ in range(n_models)]
    params, buffers = stack_module_state(models)
    params = {k: v.to(device) for k, v in params.items()}
    buffers = {k: v.to(device) for k, v in buffers.items()}
    base = cls().to("meta")
    x = torch.rand(n_models, *x_shape, device=device)
    y = torch.randint(0, 10, (n_models, x_shape[0]), device=device)

    def loss(p, b, xb, yb):
        return F.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    g = vmap(grad(loss))

    def step(params):
        gr = g(params, buffers, x, y)
        return {k: v - 0.1 * gr[k] for k, v in params.items()}

    with torch.no_grad():
        for _ in range(3):
            params = step(params)
        _sync(device)
        t0, steps = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            for _ in range(5):
                params = step(params)
            steps += 5
            _sync(device)
        dt = time.perf_counter() - t0
    return {"n_models": n_models, "steps": steps, "seconds": dt, "model_steps_per_s": n_models * steps / dt}


def sweep(device: str, max_models: int, seconds: float) -> dict:
    """Model-steps/s for 1, 8, 64, ... models of each architecture (and GPU power where readable)."""
    rows = {}
    for arch in ARCHES:
        rows[arch] = []
        n = 1
        while n <= max_models:
            if device == "cuda":
                with PowerReader() as power:
                    r = model_steps_per_s(arch, n, device, seconds)
                r["gpu_power_w"] = power.mean_w
                if power.mean_w:
                    r["model_steps_per_joule"] = r["model_steps_per_s"] / power.mean_w
            else:
                r = model_steps_per_s(arch, n, device, seconds)
            rows[arch].append(r)
            print(f"{device} {arch} {n:5d} models: {r['model_steps_per_s']:12,.0f} model-steps/s", flush=True)
            n *= 8
    return rows


def plot(result: dict, png: Path) -> None:
    """Model-steps/s against the number of models, per device and architecture (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for device, label in (("cpu", "CPU, 1 thread"), ("cuda", result.get("gpu", "GPU"))):
        for arch, marker in (("mlp", "o"), ("cnn", "s")):
            rows = result.get(device, {}).get(arch, [])
            if rows:
                ax.plot([r["n_models"] for r in rows], [r["model_steps_per_s"] for r in rows], marker=marker,
                        linestyle="-" if device == "cuda" else "--", label=f"{label}: digits {arch.upper()}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("models trained at once (torch.func.vmap)")
    ax.set_ylabel("model-steps per second")
    ax.set_title(f"PyTorch {result['torch']}, batch 16 per model ({result['date']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--max-models", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--plot", type=Path, help="only redraw the PNG of this JSON")
    a = ap.parse_args()
    if a.plot:
        plot(json.loads(a.plot.read_text()), a.plot.with_suffix(".png"))
        return
    torch.manual_seed(0)
    torch.set_num_threads(1)
    result = {"what": "PyTorch eager, torch.func.vmap over N models, SGD lr 0.1, batch 16 per model; "
                      "digits MLP 64-32-10 and digits CNN (examples/)",
              "torch": torch.__version__, "python": platform.python_version(),
              "cpu_model": platform.processor() or platform.machine(),
              "cpu_threads": 1, "date": time.strftime("%Y-%m-%d")}
    for device in a.devices.split(","):
        if device == "cuda" and not torch.cuda.is_available():
            continue
        if device == "cuda":
            result["gpu"] = torch.cuda.get_device_name(0)
        result[device] = sweep(device, a.max_models if device == "cuda" else min(a.max_models, 512), a.seconds)
    a.out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if "cuda" in result else "cpu"
    path = a.out / f"torch_baseline_{tag}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, path.with_suffix(".png"))
    print(f"wrote {path} and its .png")


if __name__ == "__main__":
    main()
