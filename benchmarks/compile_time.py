"""Time `fx2fpga compile examples/mlp_digits.py --train` (the folder, no csim build) and a
300-step training run in emu and csim; writes benchmarks/results/compile_time.{json,png}.

    python benchmarks/compile_time.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def time_compile(out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fx2fpga.cli", "compile", str(ROOT / "examples" / "mlp_digits.py"),
                    "--train", "-o", str(out)], check=True, capture_output=True)
    return time.perf_counter() - t0


def time_training(sim: str, steps: int) -> tuple[float, float]:
    """(seconds for `steps` training steps, held-out accuracy) on the simulator `sim`."""
    sys.path.insert(0, str(ROOT / "examples"))
    import mlp_digits as ex  # noqa: PLC0415

    import fx2fpga

    x_train, y_train, x_test, y_test = ex.digits()
    design = fx2fpga.compile(ex.model, ex.example_inputs, train=fx2fpga.SGD(ex.loss_fn, ex.example_targets, ex.lr))
    with design.load(sim) as k:
        t0 = time.perf_counter()
        for xb, yb in ex.batches(x_train, y_train, steps):
            k.train_step(xb, yb)
        seconds = time.perf_counter() - t0
        return seconds, ex.accuracy(k.infer, x_test, y_test)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        compile_s = [time_compile(Path(tmp) / f"p{i}") for i in range(args.repeats)]
    train = {b: time_training(b, args.steps) for b in ("emu", "csim")}
    result = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "compile_cli_seconds": compile_s,
        "train_steps": args.steps,
        "train_seconds": {b: s for b, (s, _) in train.items()},
        "steps_per_second": {b: args.steps / s for b, (s, _) in train.items()},
        "heldout_accuracy": {b: a for b, (_, a) in train.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compile_time.json").write_text(json.dumps(result, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.bar(range(len(compile_s)), compile_s, color="#4c72b0")
    a.axhline(10, color="r", ls="--", label="10 s goal")
    a.set(title="fx2fpga compile --train (digits MLP)", xlabel="run", ylabel="seconds")
    a.legend()
    b.bar(list(result["steps_per_second"]), list(result["steps_per_second"].values()), color="#55a868")
    b.set(title=f"training steps per second ({args.steps} steps)", ylabel="steps / s")
    fig.tight_layout()
    fig.savefig(RESULTS / "compile_time.png", dpi=120)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
