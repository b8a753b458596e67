"""Gradient descent on Sphere, Rosenbrock and Rastrigin: the fixed-point kernel against float.

    python examples/gd_functions.py [--sim emu|csim] [--steps 200]

For each function in 2 and 10 dimensions the function is compiled with ``fx2fpga.GD`` (the point
``x`` stays on chip) and descended for ``--steps`` steps in fixed point, with the formats of
``functions.PRECISION`` and with the default formats, and in float64 PyTorch from the same start.
Writes ``benchmarks/results/gd_functions.json`` and ``gd_functions.png`` (f along both trajectories)
and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from functions import DEFAULT_PRECISION, FUNCTIONS, LEARNING_RATES, PRECISION, start  # noqa: E402

import fx2fpga  # noqa: E402

DIMS = (2, 10)


def descend_float(f, x0: torch.Tensor, lr: float, steps: int) -> tuple[list[float], np.ndarray]:
    """f(x_0), ..., f(x_steps) of plain gradient descent in float64, and the last point."""
    x, values = x0.double().clone(), []
    for _ in range(steps):
        xr = x.clone().requires_grad_()
        fx = f(xr)
        (g,) = torch.autograd.grad(fx, xr)
        values.append(fx.item())
        x = x - lr * g
    values.append(f(x).item())
    return values, x.numpy()


def descend_fixed(f, x0: torch.Tensor, lr: float, steps: int, precision: dict, sim: str) -> dict:
    """The same descent on the compiled kernel: ``train_step()`` returns f before each step."""
    t0 = time.perf_counter()
    design = fx2fpga.compile(f, (x0,), train=fx2fpga.GD(lr=lr), precision=precision, name=f.__name__)
    compile_s = time.perf_counter() - t0
    k = design.kernel
    with design.load(sim) as runner:
        t0 = time.perf_counter()
        values = [runner.train_step() for _ in range(steps)]
        run_s = time.perf_counter() - t0
        values.append(float(runner.infer()))
        x = runner.get_params()["x"]
    formats = {"x": str(k.buffers[k.params[0]].fmt), "f": str(k.buffers[k.programs["infer"].outputs[0]].fmt)}
    return {"values": values, "x": x, "formats": formats, "compile_s": compile_s, "run_s": run_s}


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(DIMS), len(FUNCTIONS), figsize=(13, 7), squeeze=False)
    for run in runs:
        ax = axes[DIMS.index(run["dim"])][list(FUNCTIONS).index(run["function"])]
        floor = 1e-12  # f reaches 0 exactly in fixed point: plot f + floor on a log scale
        steps = np.arange(len(run["float"]))
        ax.semilogy(steps, np.asarray(run["float"]) + floor, "k-", lw=2.5, alpha=0.5, label="float64")
        ax.semilogy(steps, np.asarray(run["fixed"]) + floor, "C0-", lw=1.2, label=f"fixed, x {run['formats']['x']}")
        ax.semilogy(steps, np.asarray(run["fixed_default"]) + floor, "C1--", lw=1.2,
                    label=f"fixed, default formats, x {run['formats_default']['x']}")
        for key, color in (("fixed", "C0"), ("fixed_default", "C1")):
            diff = np.abs(np.asarray(run[key]) - np.asarray(run["float"])) + floor
            ax.semilogy(steps, diff, color=color, ls=":", lw=1, label=f"|{key.replace('_', ', ')} - float|")
        ax.set_title(f"{run['function']} n={run['dim']} (lr {run['lr']:g})")
        ax.set_xlabel("step")
        ax.set_ylabel("f(x)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Gradient descent on the fx2fpga kernel (fixed point) vs float64: f(x_t), and the "
                 "difference (dotted)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sim", default="emu", choices=["emu", "csim"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    runs = []
    for name, f in FUNCTIONS.items():
        for dim in DIMS:
            x0, lr = start(name, dim), LEARNING_RATES[name]
            ref, x_float = descend_float(f, x0, lr, args.steps)
            fx = descend_fixed(f, x0, lr, args.steps, PRECISION, args.sim)
            fd = descend_fixed(f, x0, lr, args.steps, DEFAULT_PRECISION, args.sim)
            runs.append({
                "function": name, "dim": dim, "lr": lr, "steps": args.steps, "x0": x0.tolist(),
                "float": ref, "fixed": fx["values"], "fixed_default": fd["values"],
                "final_float": ref[-1], "final_fixed": fx["values"][-1], "final_fixed_default": fd["values"][-1],
                "abs_diff": abs(fx["values"][-1] - ref[-1]), "abs_diff_default": abs(fd["values"][-1] - ref[-1]),
                "max_abs_dx": float(np.abs(fx["x"] - x_float).max()),
                "max_abs_dx_default": float(np.abs(fd["x"] - x_float).max()),
                "formats": fx["formats"], "formats_default": fd["formats"],
                "compile_s": fx["compile_s"], "run_s": fx["run_s"],
            })
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "sim": args.sim, "steps": args.steps, "torch": torch.__version__,
        "precision": fx2fpga.Precision.from_spec(PRECISION).describe(),
        "precision_default": fx2fpga.Precision.from_spec(DEFAULT_PRECISION).describe(),
        "runs": runs,
    }
    (args.out / "gd_functions.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(runs, args.out / "gd_functions.png")
    head = (f"{'function':10s} {'n':>3s} {'lr':>7s} {'f(x0)':>10s} {'float':>11s} {'fixed':>11s} {'|diff|':>9s} "
            f"{'max|dx|':>9s} {'default':>11s} {'|diff|':>9s} {'run s':>6s}")
    print(f"{args.steps} GD steps on {args.sim}; fixed formats: {PRECISION}; default: {DEFAULT_PRECISION}")
    print(head)
    for r in runs:
        print(f"{r['function']:10s} {r['dim']:3d} {r['lr']:7g} {r['float'][0]:10.4f} {r['final_float']:11.5g} "
              f"{r['final_fixed']:11.5g} {r['abs_diff']:9.2g} {r['max_abs_dx']:9.2g} {r['final_fixed_default']:11.5g} "
              f"{r['abs_diff_default']:9.2g} {r['run_s']:6.2f}")
    print(f"wrote {args.out / 'gd_functions.json'} and {args.out / 'gd_functions.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
