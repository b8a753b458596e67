"""Bus overhead of the RTL kernel: clock cycles of each call through ``<name>_axi`` against the core's.

The digits MLP training kernel (pynq-z1, lanes 4) in Verilator with its AXI harness
(``rtl/sim_axi.cpp``):

- **ideal memory** (READY always high, 2-cycle latency): cycles from the ``ap_start`` write to
  ``irq``, against the core's exact cycles (``verilog.call_cycles``);
- **through the board driver** (``PynqBackend`` on ``rtl_axi.pynq_module``, a 16-cycle bus gap per
  register access, polling ``ap_done``): all the cycles one ``infer`` / ``train_step`` call takes.

    python benchmarks/axi_overhead.py      -> benchmarks/results/axi_overhead.{json,png}
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "examples"))
GAP = 16  # idle bus cycles per register access of the processor


def compile_mlp(out: Path):
    import mlp_digits as ex

    import fx2fpga

    sgd = fx2fpga.SGD(ex.loss_fn, ex.example_targets, ex.lr)
    return fx2fpga.compile(ex.model, ex.example_inputs, target="pynq-z1", train=sgd, lanes=4, out_dir=out,
                           outputs="rtl", progress=lambda line: print(line, flush=True))


def ideal_memory(out: Path, kernel) -> dict:
    """Start-to-interrupt cycles of each command with an ideal memory."""
    from fx2fpga_runtime import interface, rtl_axi

    regs = interface.REGISTER_MAP
    sim = rtl_axi.AxiSimulation(out, seed=0, gap=0)
    sim.write(regs["gie"], 1)
    sim.write(regs["ier"], 0b01)
    rng = np.random.default_rng(0)
    rows = {}
    for cmd, code in interface.commands_of(kernel).items():
        ins, outs = interface.command_buffers(kernel, cmd)
        raw = {b: rng.integers(-100, 100, size=kernel.buffers[b].shape) for b in ins}
        sim.poke(0x3000_0000, interface.pack(kernel, ins, raw))
        sim.start(code, 0x3000_0000, 0x3010_0000)
        rows[cmd] = {"cycles": sim.wait_irq(), "in_words": interface.word_count(kernel, ins),
                     "out_words": interface.word_count(kernel, outs)}
        sim.write(regs["isr"], 1)
    sim.close()
    return rows


def through_driver(out: Path, kernel, tmp: Path) -> dict:
    """Cycles of whole driver calls (register writes, polling, the call) with a bus gap of GAP."""
    from fx2fpga_runtime import rtl_axi
    from fx2fpga_runtime.pynq_backend import PynqBackend
    from fx2fpga_runtime.runner import KernelRunner

    pynq = rtl_axi.pynq_module(out, seed=0, gap=GAP)
    sys.modules["pynq"] = pynq
    (tmp / "stand-in.bit").write_bytes(b"")
    board = KernelRunner(kernel, PynqBackend(kernel, out, bitfile=tmp / "stand-in.bit"))
    x = np.zeros((16, 64), np.float32)
    y = np.zeros(16, np.int64)
    rows = {}
    for method, args in (("infer", (x,)), ("train_step", (x, y))):
        before = pynq.simulation.stats().cycles
        getattr(board, method)(*args)
        rows[method] = pynq.simulation.stats().cycles - before
    board.close()
    pynq.simulation.close()
    del sys.modules["pynq"]
    return rows


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmds = list(result["ideal_memory"])
    core = [result["ideal_memory"][c]["core_cycles"] for c in cmds]
    bus = [result["ideal_memory"][c]["overhead_cycles"] for c in cmds]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.barh(cmds, core, label="core (exact, = schedule model)")
    ax.barh(cmds, bus, left=core, label="AXI overhead (start -> irq)")
    for i, (c, b) in enumerate(zip(core, bus, strict=True)):
        ax.text(c + b, i, f" +{b:,}", va="center", fontsize=8)
    ax.set_xlabel("clock cycles")
    ax.set_title("digits MLP training kernel on its AXI interface (Verilator, ideal memory)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    from fx2fpga.backends.rtl import emit as verilog

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mlp"
        design = compile_mlp(out)
        core = verilog.call_cycles(design.kernel)
        print("fx2fpga: simulating <name>_axi with an ideal memory", flush=True)
        ideal = ideal_memory(out, design.kernel)
        for cmd, row in ideal.items():
            row.update(core_cycles=core[cmd], overhead_cycles=row["cycles"] - core[cmd])
        print(f"fx2fpga: the board driver on <name>_axi (bus gap {GAP} cycles)", flush=True)
        driver = through_driver(out, design.kernel, Path(tmp))
    result = {"kernel": "digits MLP 64-32-10, SGD step, batch 16", "target": "pynq-z1", "lanes": 4,
              "ideal_memory": ideal, "through_driver": {"bus_gap_cycles": GAP, "call_cycles": driver,
                                                        "core_cycles": {c: core[c] for c in driver}},
              "source": "Verilator simulation of rtl/<name>_axi.v (rtl/sim_axi.cpp)"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "axi_overhead.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, RESULTS / "axi_overhead.png")
    for cmd, row in ideal.items():
        print(f"{cmd:12s} core {row['core_cycles']:7,}  start->irq {row['cycles']:7,}  (+{row['overhead_cycles']:,}; "
              f"{row['out_words']:,} output words)")
    for cmd, cycles in driver.items():
        print(f"{cmd:12s} through the driver: {cycles:,} cycles (core {core[cmd]:,})")
    print(f"wrote {RESULTS / 'axi_overhead.json'} and .png")


if __name__ == "__main__":
    main()
