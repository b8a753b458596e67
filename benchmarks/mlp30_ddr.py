"""30 digits MLPs training with their parameters in DDR, swapped in a group at a time (issue 17, "Group swap" in
docs/offchip.md): block RAM, DDR bytes, the HLS estimate's step time, csim against the emulator, PyTorch.

``examples/mlp_digits.py`` (64-32-10, batch 16, SGD), 30 seeded models (``model_throughput._models(30, "mlp")``)
stacked on a model axis in groups of ``--group`` (default 1), compiled for the pynq-z1 with ``outputs="hls"`` and
``placement="ddr"`` restricted to the parameters (the weights, biases and learning rates: ``PARAMS``), so the
group swap (``passes/group_swap.py``) gives each an on-chip tile of one group. In one run:

- compile time; the HLS estimate's block RAM (``estimate.resources``) against the same kernel wholly on chip;
- the DDR bytes of a training step (``passes/ddr_traffic.py``), and those of the same kernel without the swap
  (each multiply-accumulate reading its weight from DDR);
- the step's time: the HLS estimate's cycles of the stages that compute (``estimate.program_cycles`` less the copy
  stages), plus the DDR time, the larger of the copies' estimate (one element a cycle) and the bytes at the
  port's peak (``[ddr] bytes_per_cycle``), plus the input words over the AXI bus (``explore.bus_cycles``). Summed,
  not overlapped: without double buffering a group's load, its compute and its store follow one another. The
  model throughput is 30 models / that time;
- csim against the emulator over ``--steps`` steps (the losses and every parameter word after each);
- PyTorch on this CPU, one thread, the same 30 MLPs: an eager loop of ``torch.optim.SGD`` steps and
  ``torch.func.vmap`` (``model_throughput.torch_eager`` / ``torch_vmap``), seconds per step of all 30.

    python benchmarks/mlp30_ddr.py [--steps 2] [--group 1] -> benchmarks/results/mlp30_ddr.json
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

import mlp_digits as ex  # noqa: E402
from model_throughput import _models, torch_eager, torch_vmap  # noqa: E402

import fx2fpga  # noqa: E402
from fx2fpga.passes import ddr_traffic, estimate, explore, group_swap, placement  # noqa: E402

N_MODELS = 30
PARAMS = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "lr")


def compile_design(group: int, place: dict | None, out: Path | None = None, until: str | None = None):
    """The 30 MLPs' training kernel in groups of ``group``, HLS only, with ``place``; and the seconds it took."""
    models, mod = _models(N_MODELS, "mlp")
    t0 = time.perf_counter()
    result = fx2fpga.compile(models, mod.example_inputs, target="pynq-z1", outputs="hls", model_lanes=group,
                             train=fx2fpga.SGD(mod.loss_fn, mod.example_targets, lr=mod.lr), placement=place,
                             out_dir=out, until=until)
    return result, time.perf_counter() - t0


def step_figures(k, t) -> dict:
    """The training step of kernel ``k`` on target ``t``: DDR bytes, compute and DDR cycles, the step's time."""
    prog = k.programs["train_step"]
    traffic = ddr_traffic.command_traffic(k, "train_step")
    copies = prog.groups * sum(estimate.stage_cycles(s) for s in prog.stages if group_swap.is_swap_copy(s))
    compute = estimate.program_cycles(k, "train_step") - copies
    at_peak = traffic.min_cycles(t.ddr)
    ddr = max(copies, at_peak)
    bus = explore.bus_cycles(k, "train_step", t)
    step = compute + ddr + bus
    hz = t.clock_mhz * 1e6
    return {"groups": prog.groups, "ddr_read_bytes": traffic.read_bytes, "ddr_write_bytes": traffic.write_bytes,
            "ddr_bytes": traffic.bytes, "ddr_cycles_at_peak": at_peak, "ddr_ms_at_peak": at_peak / hz * 1e3,
            "copy_stage_cycles": copies, "compute_cycles": compute, "bus_cycles": bus, "step_cycles": step,
            "step_ms": step / hz * 1e3, "model_steps_per_s": N_MODELS * hz / step}


def csim_against_emu(design, steps: int) -> dict:
    """``steps`` training steps (digits batches) on csim and on the emulator from the same start: the losses and
    every parameter word after each, and the seconds per step."""
    x, y, _, _ = ex.digits()
    t0 = time.perf_counter()
    csim = design.load("csim")
    build = time.perf_counter() - t0
    emu = design.load("emu")
    rows, equal = [], True
    with csim:
        for s in range(steps):
            xb, yb = x[16 * s:16 * s + 16], y[16 * s:16 * s + 16]
            t0 = time.perf_counter()
            loss_emu = emu.train_step(xb, yb)
            t1 = time.perf_counter()
            loss_csim = csim.train_step(xb, yb)
            t2 = time.perf_counter()
            want, got = emu.get_params_raw(), csim.get_params_raw()
            same = (np.array_equal(loss_emu, loss_csim) and want.keys() == got.keys()
                    and all(np.array_equal(want[n], got[n]) for n in want))
            equal &= same
            rows.append({"params_and_losses_equal": same, "emu_s": t1 - t0, "csim_s": t2 - t1,
                         "mean_loss": float(np.mean(loss_emu))})
            print(f"step {s + 1}: {rows[-1]}", flush=True)
    return {"csim_build_s": build, "csim_equals_emu": equal, "steps": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--group", type=int, default=1, help="models a group (the swap's tile holds one group)")
    ap.add_argument("--out", type=Path, default=RESULTS / "mlp30_ddr.json")
    args = ap.parse_args()
    place = dict.fromkeys(PARAMS, "ddr")
    with tempfile.TemporaryDirectory(prefix="mlp30_ddr_") as work:
        design, compile_s = compile_design(args.group, place, Path(work) / "mlps")
        print(f"compiled in {compile_s:.1f} s", flush=True)
        k, t = design.kernel, design.target
        chip, _ = compile_design(args.group, None, until="tile")
        real_run = group_swap.run
        group_swap.run = lambda kernel, size: kernel  # the same kernel, its parameters read from DDR in place
        try:
            unswapped, _ = compile_design(args.group, place, until="tile")
        finally:
            group_swap.run = real_run
        res, res_chip = estimate.resources(k, t), estimate.resources(chip, t)
        figures = {"swapped": step_figures(k, t), "without_swap": step_figures(unswapped, t),
                   "all_on_chip": {**step_figures(chip, t), "ddr_bytes": 0}}
        print(json.dumps(figures, indent=1), flush=True)
        sims = csim_against_emu(design, args.steps)
    eager = torch_eager(N_MODELS, 1)
    vmap = torch_vmap(N_MODELS, 1)
    lanes = sorted({s.lanes for s in k.stages()})
    result = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine(),
                    "threads": {v: os.environ[v] for v in THREAD_VARS}},
        "models": f"{N_MODELS} x examples/mlp_digits.py (64-32-10, batch 16, SGD), seeds 0..{N_MODELS - 1}",
        "target": t.name, "clock_mhz": t.clock_mhz, "group_size": args.group, "lanes": lanes,
        "placement": list(PARAMS), "compile_s": compile_s,
        "tiles": group_swap.tile_of(k),
        "bram36": {"swapped": res.bram36, "all_on_chip": res_chip.bram36, "target": t.bram36},
        "dsp": {"swapped": res.dsp, "all_on_chip": res_chip.dsp},
        "bytes": {"ddr": placement.totals(k, t)["ddr"]["bytes"], "chip": placement.totals(k, t)["chip"]["bytes"]},
        "ddr_port": {"bytes_per_cycle": t.ddr.bytes_per_cycle, "port": t.ddr.port},
        "train_step": figures,
        "step_time_rule": "compute (HLS estimate, copies excluded) + DDR (max of the copies' estimate at one "
                          "element a cycle and the bytes at the port's peak) + input words on the AXI bus: summed, "
                          "no overlap (no double buffering)",
        **sims,
        "torch_1_thread": {"eager_step_s": N_MODELS / eager, "vmap_step_s": N_MODELS / vmap,
                           "eager_model_steps_per_s": eager, "vmap_model_steps_per_s": vmap},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("train_step", "steps")}, indent=1))


if __name__ == "__main__":
    main()
