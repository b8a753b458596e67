"""Differential fuzzing campaign: random small kernels (``tests/fuzz/kernels.py``) on emu, csim and rtl.

Draws ``--cases`` chains with hypothesis (seed ``--seed``), joins ``--batch`` of them into one kernel per
build, runs each kernel's ``--calls`` random input sets on the emulator (fast path and reference), the C
simulation and Verilator (and, every ``--ap-types-every``-th batch, the C simulation on the Xilinx
``ap_types`` headers), word for word. A mismatching chain is rerun alone to confirm it; a failed build is
bisected to the chains that break it. Progress is written after every batch.

    python benchmarks/fuzz.py [--cases 1000] [--batch 25] [--seed 0] -> benchmarks/results/fuzz.json

``FX2FPGA_FUZZ_CASES`` sets the default of ``--cases``. A case is reproduced with
``tests.fuzz.harness.draw_chains(cases, seed)[index]`` (the same ``cases`` and ``seed``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

from tests.fuzz.harness import BatchResult, draw_chains, generate, isolate, run_batch  # noqa: E402
from tests.fuzz.kernels import batch_kernel, op_counts, stage_count  # noqa: E402

FAILURES = ("<codegen>", "<build>", "<run>")  # a backend that could not generate, build or run the batch


def backends_of(batch: int, every: int) -> tuple[str, ...]:
    return ("csim", "rtl", "csim-ap_types") if every and batch % every == 0 else ("csim", "rtl")


def build_culprits(cases, indices: list[int], backend: str, folder: Path) -> list[int]:
    """The chains (by index) that alone make ``backend`` fail to build or run: halves of the batch, recursively."""
    result = run_batch([cases[i] for i in indices], folder / f"bisect{len(indices)}_{indices[0]}", (backend,),
                       calls=1)
    if not any(m.buffer in FAILURES for m in result.mismatches):
        return []
    if len(indices) == 1:
        return indices
    half = len(indices) // 2
    return (build_culprits(cases, indices[:half], backend, folder)
            + build_culprits(cases, indices[half:], backend, folder))


def codegen_culprits(cases, backend: str) -> list[int]:
    """The chains (by index) whose code generation fails alone (no build: cheap)."""
    bad = []
    for i, case in enumerate(cases):
        try:
            generate(batch_kernel([case], "fuzz_one"), backend)
        except Exception:
            bad.append(i)
    return bad


def confirm(case, folder: Path, backend: str, calls: int, vectors, index: int) -> list[str]:
    """The chain alone, on the inputs it had in its batch: its mismatches on ``backend`` (and the emulator's
    reference)."""
    backends = () if backend == "emu-reference" else (backend,)
    return [str(m) for m in isolate(case, folder, backends, calls, batch_vectors=vectors, index=index).mismatches]


def run_campaign(args) -> dict:
    start = time.perf_counter()
    cases = draw_chains(args.cases, args.seed)
    drawn_s = time.perf_counter() - start
    report = {"cases": len(cases), "seed": args.seed, "batch": args.batch, "calls_per_batch": args.calls,
              "stages": stage_count(cases), "ops": op_counts(cases), "draw_seconds": round(drawn_s, 1),
              "batches": [], "mismatching_cases": [], "build_failures": [], "cases_run": 0,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)"}
    work = Path(tempfile.mkdtemp(prefix="fx2fpga-fuzz-"))
    for b, first in enumerate(range(0, len(cases), args.batch)):
        indices = list(range(first, min(first + args.batch, len(cases))))
        backends = backends_of(b, args.ap_types_every)
        t0 = time.perf_counter()
        result = run_batch([cases[i] for i in indices], work / f"b{b}", backends, args.calls, rng_seed=b)
        _record_batch(report, cases, indices, result, work / f"b{b}", args.calls)
        report["batches"].append({"chains": len(indices), "backends": list(backends),
                                  "seconds": {k: round(v, 1) for k, v in result.seconds.items()},
                                  "total_seconds": round(time.perf_counter() - t0, 1),
                                  "mismatches": len(result.mismatches)})
        report["cases_run"] += len(indices)
        report["seconds"] = round(time.perf_counter() - start, 1)
        _write(report, args.out)
        print(f"batch {b}: {len(indices)} chains on {','.join(backends)}: {len(result.mismatches)} mismatches, "
              f"{time.perf_counter() - t0:.1f} s ({report['seconds']} s in all)", flush=True)
        shutil.rmtree(work / f"b{b}", ignore_errors=True)
    _recheck(report, cases, args, work)
    report["mismatches"] = len(report["mismatching_cases"])
    report["seconds"] = round(time.perf_counter() - start, 1)
    _write(report, args.out)
    return report


def _recheck(report: dict, cases, args, work: Path) -> None:
    """Each batch that failed, run again at the end: a failure that does not come back was the working tree
    changing under the run (other engineers' edits of the emitters), not the chains."""
    for failure in report["build_failures"]:
        first, last = failure.get("batch_cases", (0, -1))
        if last < first:
            continue
        result = run_batch(cases[first:last + 1], work / f"recheck{first}", (failure["backend"],), args.calls,
                           rng_seed=first // args.batch)
        failure["recheck"] = [str(m)[:500] for m in result.mismatches] or "passed"


def _record_batch(report: dict, cases, indices: list[int], result: BatchResult, folder: Path, calls: int) -> None:
    """Each mismatching chain confirmed alone; each failed build bisected to its chains."""
    seen = set()
    for m in result.mismatches:
        if m.buffer in FAILURES:
            batch = [cases[j] for j in indices]
            found = (codegen_culprits(batch, m.backend) if m.buffer == "<codegen>"
                     else build_culprits(batch, list(range(len(batch))), m.backend, folder / "bisect"))
            culprits = [indices[i] for i in found]
            report["build_failures"].append({"backend": m.backend, "stage": m.buffer, "error": m.detail[-1500:],
                                             "batch_cases": [indices[0], indices[-1]], "cases": culprits,
                                             "chains": [cases[i].describe() for i in culprits[:3]]})
            continue
        if m.chain < 0:
            report["build_failures"].append({"backend": m.backend, "error": str(m), "cases": []})
            continue
        index = indices[m.chain]
        if (index, m.backend) in seen:
            continue
        seen.add((index, m.backend))
        alone = confirm(cases[index], folder / f"alone{index}_{m.backend}", m.backend, calls, result.vectors, m.chain)
        report["mismatching_cases"].append({"case": index, "backend": m.backend, "in_batch": str(m),
                                            "alone": alone, "chain": cases[index].describe()})


def _write(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=int(os.environ.get("FX2FPGA_FUZZ_CASES", "1000")))
    p.add_argument("--batch", type=int, default=25, help="chains per kernel (per build)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calls", type=int, default=3, help="random input sets per kernel")
    p.add_argument("--ap-types-every", type=int, default=0,
                   help="also run the C simulation on the Xilinx ap_types headers every this many batches (0: never)")
    p.add_argument("--out", type=Path, default=RESULTS / "fuzz.json")
    report = run_campaign(p.parse_args())
    print(f"{report['cases_run']} cases, {report['mismatches']} mismatching, {len(report['build_failures'])} failed "
          f"builds, {report['seconds']} s")


if __name__ == "__main__":
    main()
