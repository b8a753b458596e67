"""Running fuzz cases: chains drawn with hypothesis, batched into kernels, each kernel run on the emulator
(its fast path and its reference, ``Emulator(fast=False)``), the C simulation and Verilator, word for word.

``draw_chains(n, seed)`` draws ``n`` chains reproducibly; ``run_batch`` builds one kernel of many chains,
runs it on each backend and returns the mismatches, each named by its chain (``Mismatch``);
``isolate`` reruns one chain alone (the first step of minimizing it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fx2fpga_runtime.csim import CsimBackend
from fx2fpga_runtime.emulator import Emulator
from fx2fpga_runtime.ir import Kernel
from fx2fpga_runtime.rtl import RtlBackend
from fx2fpga_runtime.runner import EmuBackend, KernelRunner
from hypothesis import HealthCheck, Phase, given, seed, settings

from fx2fpga.backends.hls import emit as hls
from fx2fpga.backends.rtl import emit as verilog

from .kernels import Chain, batch_kernel, chain_of, chain_prefix, chains, random_inputs

VERSION = "0.1.0-fuzz"
BACKENDS = ("csim", "rtl")  # also "csim-ap_types": the C simulation on the Xilinx headers


ROUND = 10  # chains per hypothesis run: its later examples mutate its earlier ones, so short runs vary more


def draw_chains(n: int, seed_value: int) -> list[Chain]:
    """``n`` chains, the same ones for the same seed (``draw_chains(m, s)[:n]`` for any ``m >= n``): hypothesis'
    generate phase, no database, in runs of ``ROUND`` examples, each run seeded from ``seed_value``."""
    found: list[Chain] = []
    run = 0
    while len(found) < n:
        drawn = _draw_round(seed_value * 1_000_003 + run)
        found += drawn if run == 0 else drawn[1:]  # a run's first example is the simplest chain, every time
        run += 1
    return found[:n]


def _draw_round(seed_value: int) -> list[Chain]:
    found: list[Chain] = []

    @settings(max_examples=ROUND, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @seed(seed_value)
    @given(chains())
    def collect(chain):
        found.append(chain)

    collect()
    return found


@dataclass
class Mismatch:
    """A backend's output word that differs from the emulator's (or a build that failed)."""

    chain: int
    backend: str
    buffer: str
    detail: str

    def __str__(self) -> str:
        return f"chain {self.chain} {self.backend} {self.buffer}: {self.detail}"


@dataclass
class BatchResult:
    chains: int
    mismatches: list[Mismatch] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # per backend: build and run
    vectors: list[dict] = field(default_factory=list)  # the raw inputs of each call


def write_files(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def compare(want: dict, got: dict, backend: str, call: int) -> list[Mismatch]:
    """Every differing output buffer of one call, named by its chain."""
    out = []
    for name in want:
        w, g = np.asarray(want[name]).reshape(-1), np.asarray(got[name]).reshape(-1)
        bad = np.flatnonzero(w != g)
        if bad.size:
            out.append(Mismatch(chain_of(name), backend, name,
                                f"call {call}: {bad.size} of {w.size} words differ, first at flat index {bad[0]}: "
                                f"emu {w[bad[0]]}, {backend} {g[bad[0]]}"))
    return out


def generate(kernel: Kernel, backend: str) -> dict[str, str]:
    """The backend's generated sources."""
    return hls.generate(kernel, VERSION) if backend.startswith("csim") else verilog.generate(kernel, VERSION)


def _start(kernel: Kernel, backend: str, folder: Path):
    """Build the sources in ``folder`` and start the backend."""
    if backend.startswith("csim"):  # "csim": the default headers; "csim-ap_types": Xilinx's
        headers = backend.partition("-")[2]
        return CsimBackend(kernel, folder, headers=headers) if headers else CsimBackend(kernel, folder)
    return RtlBackend(kernel, folder)


def run_kernel(kernel: Kernel, folder: Path, backends=BACKENDS, calls: int = 3, rng_seed: int = 0,
               vectors: list[dict] | None = None) -> BatchResult:
    """Run ``calls`` random input sets (or ``vectors``) on the emulator (fast and reference) and on each backend."""
    rng = np.random.default_rng(rng_seed)
    vectors = vectors or [random_inputs(kernel, rng) for _ in range(calls)]
    emu = KernelRunner(kernel, EmuBackend(kernel))
    want = [emu.call_raw("infer", v) for v in vectors]
    result = BatchResult(len({chain_of(n) for n in kernel.buffers if n.startswith("c")}), vectors=vectors)
    reference = Emulator(kernel, fast=False)
    for i, v in enumerate(vectors):
        result.mismatches += compare(want[i], reference.run("infer", v), "emu-reference", i)
    for backend in backends:
        start = time.perf_counter()
        result.mismatches += _run_backend(kernel, folder / backend, backend, vectors, want)
        result.seconds[backend] = time.perf_counter() - start
    return result


def _run_backend(kernel: Kernel, folder: Path, backend: str, vectors, want) -> list[Mismatch]:
    try:
        write_files(folder, generate(kernel, backend))
    except Exception as e:  # the code generator's failure: the whole batch, chain -1
        return [Mismatch(-1, backend, "<codegen>", f"{type(e).__name__}: {str(e)[-2000:]}")]
    try:
        runner = KernelRunner(kernel, _start(kernel, backend, folder))
    except Exception as e:  # a build failure (g++, Verilator)
        return [Mismatch(-1, backend, "<build>", f"{type(e).__name__}: {str(e)[-2000:]}")]
    out = []
    with runner:
        for i, v in enumerate(vectors):
            try:
                got = runner.call_raw("infer", v)
            except Exception as e:  # the simulation died (an assertion of the headers, a crash)
                return [*out, Mismatch(-1, backend, "<run>", f"call {i}: {type(e).__name__}: {str(e)[-2000:]}")]
            out += compare(want[i], got, backend, i)
            if backend == "rtl" and runner.backend.last_cycles != verilog.call_cycles(kernel)["infer"]:
                out.append(Mismatch(-1, backend, "<cycles>", f"call {i}: {runner.backend.last_cycles} cycles, "
                                    f"the schedule says {verilog.call_cycles(kernel)['infer']}"))
    return out


def run_batch(cases: list[Chain], folder: Path, backends=BACKENDS, calls: int = 3, rng_seed: int = 0,
              name: str = "fuzz") -> BatchResult:
    """The chains in one kernel, run on every backend (see ``run_kernel``)."""
    return run_kernel(batch_kernel(cases, name), folder, backends, calls, rng_seed)


def isolate(case: Chain, folder: Path, backends=BACKENDS, calls: int = 3, rng_seed: int = 0,
            batch_vectors: list[dict] | None = None, index: int = 0) -> BatchResult:
    """One chain alone in its own kernel; ``batch_vectors``: the inputs it had as chain ``index`` of a batch."""
    vectors = None
    if batch_vectors:
        prefix = chain_prefix(index)
        vectors = [{chain_prefix(0) + n[len(prefix):]: v for n, v in vec.items() if n.startswith(prefix)}
                   for vec in batch_vectors]
    return run_kernel(batch_kernel([case], "fuzz_one"), folder, backends, calls, rng_seed, vectors)
