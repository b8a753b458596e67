"""Model throughput: SGD steps per second of the digits MLP (batch 16), one model and many.

- fx2fpga on the PYNQ-Z1: the RTL kernel's exact cycles per step (the schedule's latency model,
  which the Verilator simulation of the generated Verilog measures to the cycle: tests/feature/test_rtl.py)
  and the HLS estimate, at the target clock, and how many copies of the kernel fit the board by
  the resource estimate (replicated kernels train independent models).
- PyTorch on this machine's CPU: one model, and N models at once with torch.func.vmap.

    python benchmarks/model_throughput.py      -> benchmarks/results/model_throughput.{json,png}
"""

from __future__ import annotations

import json
import math
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


def fpga_estimate(lanes) -> dict:
    import mlp_digits as ex

    import fx2fpga
    from fx2fpga.passes import estimate

    sgd = fx2fpga.SGD(ex.loss_fn, ex.example_targets, ex.lr)
    design = fx2fpga.compile(ex.model, ex.example_inputs, train=sgd, lanes=lanes)
    t = design.target
    from fx2fpga.backends.rtl import emit as verilog

    cycles = verilog.call_cycles(design.kernel)["train_step"]
    res = estimate.resources(design.kernel)
    copies = max(1, min(t.dsp // max(res.dsp, 1), math.floor(t.bram36 / max(res.bram36, 0.5))))
    per_kernel = t.clock_mhz * 1e6 / cycles
    return {"lanes": lanes, "target": t.name, "clock_mhz": t.clock_mhz, "cycles_per_step": cycles,
            "hls_estimate_cycles_per_step": estimate.program_cycles(design.kernel, "train_step"),
            "steps_per_s": per_kernel,
            "kernel_dsp": res.dsp, "kernel_bram36": res.bram36, "copies_that_fit": copies,
            "model_steps_per_s": per_kernel * copies,
            "source": "RTL cycles (exact, = Verilator) at the target clock; copies from the resource estimate"}


def torch_cpu(n_models: int, steps: int = 200) -> float:
    """Model-steps per second for n_models MLPs trained at once (vmap) on this CPU."""
    import mlp_digits as ex

    torch.set_num_threads(1)
    models = [ex.DigitsMLP() for _ in range(n_models)]
    params, buffers = stack_module_state(models)
    base = ex.DigitsMLP().to("meta")
    x = torch.randn(n_models, 16, 64)
    y = torch.randint(0, 10, (n_models, 16))

    def loss(p, b, xb, yb):
        return F.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    g = vmap(grad(loss))
    with torch.no_grad():
        for _ in range(5):
            gr = g(params, buffers, x, y)
        t0 = time.perf_counter()
        for _ in range(steps):
            gr = g(params, buffers, x, y)
            params = {k: v - 0.1 * gr[k] for k, v in params.items()}
        dt = time.perf_counter() - t0
    return n_models * steps / dt


def main() -> None:
    fpga = {str(lanes): fpga_estimate(lanes) for lanes in (4, "auto")}
    cpu = {n: torch_cpu(n) for n in (1, 8, 64)}
    result = {"model": "digits MLP 64-32-10, batch 16, SGD", "fpga": fpga,
              "torch_cpu_1_thread": {str(n): v for n, v in cpu.items()},
              "machine": {"python": platform.python_version(), "cpu": platform.machine()},
              "gpu": "not measured: no GPU was lent to this session"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "model_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"CPU 1 thread, {n} model{'s' * (n > 1)}" for n in cpu]
    values = list(cpu.values())
    for lanes, f in fpga.items():
        labels += [f"PYNQ-Z1 lanes={lanes}, 1 kernel (RTL cycles)",
                   f"PYNQ-Z1 lanes={lanes}, {f['copies_that_fit']} kernel{'s' * (f['copies_that_fit'] > 1)} (est. fit)"]
        values += [f["steps_per_s"], f["model_steps_per_s"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(labels, values, color=["#4c72b0"] * len(cpu) + ["#dd8452", "#c44e52"] * len(fpga))
    ax.set_xscale("log")
    ax.set_xlabel("model training steps per second (log)")
    ax.set_title("digits MLP, batch 16: training throughput")
    fig.tight_layout()
    fig.savefig(RESULTS / "model_throughput.png", dpi=120)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
