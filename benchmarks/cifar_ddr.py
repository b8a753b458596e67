"""The CIFAR-shaped CNN of issue 17 with its largest arrays in DDR, in csim: bit-exact with the emulator, how fast,
and how many DDR bytes a training step moves.

``examples/cnn_cifar.py`` (batch 16, SGD with momentum) compiled for the pynq-z1 with ``outputs="hls"``: the
"place" step moves its largest arrays to DDR until the block RAM fits (docs/offchip.md). In one run:

- compile time, and the DDR traffic of one training step (``passes/ddr_traffic.py``: bytes read and written per
  DDR buffer as the untiled HLS C++ accesses them) with the time it takes at the target's ``[ddr]`` port peak
  (a lower bound of the step on the board) beside the HLS estimate's cycles;
- the csim build from an empty cache (g++), then ``STEPS`` training steps on csim and on the emulator from the same
  parameters: the losses and every parameter word equal after each step (``csim_equals_emu``), and the seconds
  per step of each (the median of the steps after the first, which includes the emulator's one-time plans);
- PyTorch eager on the CPU, one thread, seconds per step of the same model (float), and each simulator's ratio.

Everything runs on one thread: numpy's BLAS too (``THREAD_VARS`` set to 1 unless given), as csim and PyTorch do.
On 2 cores shared with other jobs the emulator's step took 0.04 s with one BLAS thread and 0.07 to 0.8 s with two.

    python benchmarks/cifar_ddr.py [--steps 5] -> benchmarks/results/cifar_ddr.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
for _var in THREAD_VARS:  # before numpy is imported: its BLAS reads them once
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import cnn_cifar as cifar  # noqa: E402
from cifar_data import digits32  # noqa: E402
from sim_speed import empty_cache  # noqa: E402

import fx2fpga  # noqa: E402
from fx2fpga.passes import ddr_traffic, estimate, placement  # noqa: E402
from fx2fpga.project import roofline  # noqa: E402

TOP_BUFFERS = 6  # the DDR buffers with the most traffic listed in the JSON


def training_batches(steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``steps`` batches of 16 digits32 images (3x32x32) and labels, in order."""
    x, y, _, _ = digits32()
    return [(xb, yb) for xb, yb in cifar.batches(x, y, steps)]


def compile_design(out: Path):
    """The training kernel for the pynq-z1, HLS only (automatic placement), and the seconds it took."""
    t0 = time.perf_counter()
    design = fx2fpga.compile(cifar.model, cifar.example_inputs, target="pynq-z1", outputs="hls", out_dir=out,
                             train=fx2fpga.SGD(cifar.loss_fn, cifar.example_targets, lr=cifar.lr,
                                               momentum=cifar.momentum))
    return design, time.perf_counter() - t0


def traffic_figures(design) -> dict:
    """The training step's DDR bytes (read, written, per buffer: the largest), its lower-bound time at the DDR
    port's peak, the HLS estimate's cycles and its MACs per DDR byte (the roofline's x), with the placement
    totals."""
    k, t = design.kernel, design.target
    step = ddr_traffic.command_traffic(k, "train_step")
    infer = ddr_traffic.command_traffic(k, "infer")
    top = sorted(step.buffers, key=lambda b: -(b.read_bytes + b.write_bytes))[:TOP_BUFFERS]
    cycles = step.min_cycles(t.ddr)
    macs = roofline.program_macs(k, "train_step")
    return {"ddr_buffers": len(k.ddr_buffers()), "placement": placement.totals(k, t),
            "train_step": {"read_bytes": step.read_bytes, "write_bytes": step.write_bytes, "bytes": step.bytes,
                           "min_cycles_at_ddr_peak": cycles, "min_ms_at_ddr_peak": cycles / t.clock_mhz / 1e3,
                           "hls_estimate_cycles": estimate.program_cycles(k, "train_step"),
                           "macs": macs, "macs_per_ddr_byte": macs / step.bytes,  # its place on the roofline
                           "largest": {b.buffer: {"read_bytes": b.read_bytes, "write_bytes": b.write_bytes}
                                       for b in top}},
            "infer_bytes": infer.bytes,
            "ddr_port": {"bytes_per_cycle": t.ddr.bytes_per_cycle, "clock_mhz": t.clock_mhz, "port": t.ddr.port}}


def csim_against_emu(design, data) -> dict:
    """Build csim from an empty cache, then run the steps on csim and the emulator from the same parameters:
    whether the losses and every parameter word agree after each step, and the seconds of each."""
    with empty_cache():
        t0 = time.perf_counter()
        csim = design.load("csim")
        build = time.perf_counter() - t0
    emu = design.load("emu")
    rows, equal = [], True
    with csim:
        for x, y in data:
            t0 = time.perf_counter()
            loss_emu = emu.train_step(x, y)
            t1 = time.perf_counter()
            loss_csim = csim.train_step(x, y)
            t2 = time.perf_counter()
            want, got = emu.get_params_raw(), csim.get_params_raw()
            same = (loss_emu == loss_csim and want.keys() == got.keys()
                    and all(np.array_equal(want[n], got[n]) for n in want))
            equal &= same
            rows.append({"loss_emu": float(loss_emu), "loss_csim": float(loss_csim), "params_and_loss_equal": same,
                         "emu_s": t1 - t0, "csim_s": t2 - t1})
            print(f"step {len(rows)}: {rows[-1]}", flush=True)
    timed = rows[1:] or rows  # the first step includes the emulator's one-time plans
    return {"csim_build_s": build, "csim_equals_emu": equal, "steps": rows,
            "emu_step_s": float(np.median([r["emu_s"] for r in timed])),
            "csim_step_s": float(np.median([r["csim_s"] for r in timed]))}


def torch_eager_step_s(data, repeats: int = 5) -> float:
    """Median seconds of one SGD-with-momentum step of the CNN in PyTorch eager, float, one CPU thread."""
    torch.set_num_threads(1)
    net = cifar.CifarCNN()
    net.load_state_dict(cifar.model.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=cifar.lr, momentum=cifar.momentum)
    times = []
    for i in range(repeats + 1):
        x, y = data[i % len(data)]
        t0 = time.perf_counter()
        opt.zero_grad()
        cifar.loss_fn(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))  # the first step warms up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "cifar_ddr.json")
    args = ap.parse_args()
    data = training_batches(args.steps)
    with tempfile.TemporaryDirectory(prefix="cifar_ddr_") as work:
        design, compile_s = compile_design(Path(work) / "cifar")
        print(f"compiled in {compile_s:.1f} s", flush=True)
        traffic = traffic_figures(design)
        print(json.dumps(traffic["train_step"], indent=1), flush=True)
        torch_s = torch_eager_step_s(data)
        sims = csim_against_emu(design, data)
    result = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "processor": platform.processor() or platform.machine(),
                          "threads": {v: os.environ[v] for v in THREAD_VARS}},
              "model": "examples/cnn_cifar.py (batch 16, SGD momentum 0.9), digits32 batches",
              "target": "pynq-z1", "compile_s": compile_s, "ddr": traffic, **sims,
              "torch_eager_1_thread_step_s": torch_s,
              "emu_x_torch_time": sims["emu_step_s"] / torch_s, "csim_x_torch_time": sims["csim_step_s"] / torch_s}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "ddr"}, indent=1))


if __name__ == "__main__":
    main()
