"""Build the ECP5 bitstream of the digits MLP training kernel (ulx3s, lanes 4) and record it:
Fmax, utilization, critical path and the time of each tool in benchmarks/results/ecp5_mlp.json.

    python benchmarks/ecp5_build.py [--lanes 4] [--cpus 0,1]

Places and routes for real (a private fx2fpga cache, so no cached result is reused): about
20 minutes (Yosys 2, nextpnr 16; the YoWASP tools run on one core). ``--cpus`` pins the tools
to those CPUs (``taskset``), as on CI's 2 cores.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lanes", default="4")
    ap.add_argument("--cpus", help="CPU list for taskset, e.g. 0,1")
    ap.add_argument("--out", default=str(RESULTS / "ecp5_mlp.json"))
    args = ap.parse_args()
    pin = ["taskset", "-c", args.cpus] if args.cpus else []
    cli = [*pin, sys.executable, "-m", "fx2fpga.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "FX2FPGA_CACHE": str(Path(tmp) / "cache")}
        project = Path(tmp) / "mlp"
        t0 = time.perf_counter()
        subprocess.run([*cli, "compile", str(ROOT / "examples" / "mlp_digits.py"), "--train", "--target", "ulx3s",
                        "--lanes", args.lanes, "--outputs", "rtl", "-o", str(project)], check=True, env=env)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rc = subprocess.run([*cli, "build", str(project)], env=env).returncode
        build_s = time.perf_counter() - t0
        if rc not in (0, 1):  # 1: built, timing not met
            sys.exit(f"fx2fpga build failed ({rc})")
        record = json.loads((project / "reports" / "ecp5.json").read_text())
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    result = {
        "kernel": "examples/mlp_digits.py --train (64-32-10, batch 16)", "target": "ulx3s", "lanes": args.lanes,
        "commit": commit or "unknown",
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                    "cpus": args.cpus or f"all {os.cpu_count()}"},
        "compile_seconds": round(compile_s, 1), "build_seconds": round(build_s, 1),
        **{k: record[k] for k in ("fmax_mhz", "clock_mhz", "timing_met", "clocks", "utilization", "critical_path",
                                  "yosys_cells", "seconds", "tools", "nextpnr_args", "bitstream_bytes")},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"Fmax {result['fmax_mhz']:.1f} MHz (clock {result['clock_mhz']:g} MHz), build {build_s:.0f} s "
          f"(yosys {record['seconds']['yosys']:.0f} s, nextpnr {record['seconds']['nextpnr']:.0f} s) -> {args.out}")


if __name__ == "__main__":
    main()
