"""Check the calibrated RTL resource model against Yosys on designs outside its calibration set.

``python benchmarks/resource_model_check.py [--models N] [--model-lanes M] [--lanes L|auto]`` compiles N
digits MLPs (one kernel; N=1: the model alone) for the pynq-z1, predicts LUT/FF/DSP/BRAM36 with
``fx2fpga.passes.resources.rtl_resources`` and synthesizes the RTL with Yosys ``synth_xilinx`` (system
Yosys, else yowasp: about 5 minutes per design on one core), then appends the comparison to
``benchmarks/results/resource_model_check.json``. With ``--lanes auto`` the design is the point the
explorer chooses, so the check says whether the chosen point fits when synthesized; ``--point
explore_<n>_mlps.json`` takes the chosen point of an exploration written before (its stage lanes, model groups
and pipeline cut: the same design, without exploring again).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "examples"))

import mlp_digits as ex  # noqa: E402


def _lanes(text: str):
    return text if text == "auto" else int(text)


def main() -> None:
    import fx2fpga
    from fx2fpga.passes import resources
    from fx2fpga.toolchains.yosys import synthesize

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--model-lanes", type=_lanes, default=2)
    ap.add_argument("--lanes", type=_lanes, default=4)
    ap.add_argument("--point", type=Path, help="an exploration's JSON: synthesize its chosen point")
    a = ap.parse_args()
    lanes, model_lanes, cut, label = a.lanes, a.model_lanes, None, None
    if a.point:
        chosen = next(p for p in json.loads(a.point.read_text())["points"] if p.get("chosen"))
        lanes, model_lanes, cut = chosen["stage_lanes"], chosen["group_size"], chosen["pipeline_cut"]
        label = f"{chosen['label']} of {a.point.name}"
    models = []
    for seed in range(a.models):
        torch.manual_seed(seed)
        models.append(ex.DigitsMLP())
    with tempfile.TemporaryDirectory() as tmp:
        design = fx2fpga.compile(models if a.models > 1 else models[0], ex.example_inputs,
                                 train=fx2fpga.SGD(F.cross_entropy, ex.example_targets, lr=0.1), lanes=lanes,
                                 model_lanes=model_lanes, pipeline_groups=cut, outputs="rtl",
                                 out_dir=Path(tmp) / "k")
        t = design.target
        predicted = resources.rtl_resources(design, t)
        chosen = design.context.exploration.chosen if design.context.exploration else None
        label = chosen.label if chosen else label
        t0 = time.time()
        measured = synthesize(Path(tmp) / "k", t.family, f"{design.name}_top", log=print)
        seconds = time.time() - t0
    row = {"design": f"{a.models} digits MLPs, model_lanes {model_lanes}, lanes {'per stage' if a.point else lanes}"
                     + (f" (chosen: {label})" if label else ""),
           "cycles": design.rtl_cycles(), "yosys_seconds": round(seconds),
           "predicted": {"lut": predicted.lut, "ff": predicted.ff, "dsp": predicted.dsp, "bram36": predicted.bram36},
           "yosys": {"lut": measured.lut, "lut_logic": measured.lut_logic, "lut_ram": measured.lut_ram,
                     "ff": measured.ff, "dsp": measured.dsp, "bram36": measured.bram36},
           "budget": {"lut": t.lut, "ff": t.ff, "dsp": t.dsp, "bram36": t.bram36, "target": t.name},
           "date": time.strftime("%Y-%m-%d")}
    row["error"] = {k: round((row["predicted"][k] - row["yosys"][k]) / row["yosys"][k], 4) if row["yosys"][k] else 0
                    for k in ("lut", "ff", "dsp", "bram36")}
    row["fits"] = all(row["yosys"][k] <= row["budget"][k] for k in ("lut", "ff", "dsp", "bram36"))
    path = RESULTS / "resource_model_check.json"
    rows = json.loads(path.read_text())["checks"] if path.is_file() else []
    same = ("design", "cycles", "yosys")  # a rerun of the same RTL; a changed RTL at the same cycles is a new row
    rows = [r for r in rows if any(r.get(k) != row[k] for k in same)] + [row]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"about": __doc__.splitlines()[0], "checks": rows}, indent=1) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
