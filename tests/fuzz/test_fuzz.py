"""Differential fuzzing: random kernels (``kernels.py``) equal on emu, csim and rtl, word for word.

- the generator: its chains cover every op, mode and format edge, pass the backends' stage checks, and
  the emulator's fast path equals its reference on them (no build: fast);
- the CI sample: fixed seeds, a few builds of ~20 chains each (slow-marked);
- the opt-in run: ``FX2FPGA_FUZZ_CASES=1000 pytest tests/fuzz -m fuzz`` (``benchmarks/fuzz.py`` is the
  same with a report: benchmarks/results/fuzz.json).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from fx2fpga_runtime.emulator import Emulator
from fx2fpga_runtime.fixed import FORMAT_ROUNDINGS, OVERFLOW_MODES
from fx2fpga_runtime.ops import OPS_TABLE

from fx2fpga.backends.common import check_stage

from .harness import compare, draw_chains, run_batch
from .kernels import batch_kernel, op_counts, random_inputs

# backend: (chains per build, seeds): one build each, to keep the suite within its 15 minutes (more: the opt-in run)
CI_SAMPLE = {"csim": (30, (101,)), "rtl": (12, (202,))}
BATCH = 25  # chains per build in the opt-in run


@pytest.fixture(scope="module")
def generated():
    """200 chains (seed 0) in one kernel."""
    cases = draw_chains(200, 0)
    return cases, batch_kernel(cases)


def test_generator_covers_ops_modes_and_format_edges(generated):
    cases, kernel = generated
    assert all(n > 0 for n in op_counts(cases).values()), op_counts(cases)
    fmts = [b.fmt for b in kernel.buffers.values()] + [s.acc for s in kernel.stages() if s.acc]
    assert {f.rounding for f in fmts} == set(FORMAT_ROUNDINGS) and {f.overflow for f in fmts} == set(OVERFLOW_MODES)
    widths = {f.width for f in fmts}
    assert 1 in widths and max(widths) >= 38 and {True, False} <= {f.signed for f in fmts}
    assert any(f.int_bits < 0 for f in fmts) and any(f.int_bits > f.width for f in fmts)
    stages = list(kernel.stages())
    assert any(s.lanes > 1 for s in stages) and any(len(s.reduce) > 1 for s in stages)
    assert any(c < 0 for s in stages for a in s.ins for i in a.index for _, c in i.terms)  # reversed reads
    assert any(len(s.ins) == OPS_TABLE[s.op].arity + 1 for s in stages if s.reduce)  # reductions with init
    assert {len(c.stages) for c in cases} == set(range(1, 7))


def test_generated_kernels_pass_the_backends_checks(generated):
    _, kernel = generated
    for st in kernel.stages():
        check_stage(st, kernel, st.name)


def test_emulator_fast_path_equals_reference(generated):
    _, kernel = generated
    rng = np.random.default_rng(0)
    fast, reference = Emulator(kernel), Emulator(kernel, fast=False)
    for call in range(3):
        raw = random_inputs(kernel, rng)
        mismatches = compare(fast.run("infer", raw), reference.run("infer", raw), "emu-reference", call)
        assert not mismatches, "\n".join(map(str, mismatches))


def _assert_equal(cases, result):
    report = [f"{m}\n{cases[m.chain].describe() if m.chain >= 0 else ''}" for m in result.mismatches]
    assert not report, "\n".join(report)


@pytest.mark.slow
@pytest.mark.parametrize("backend", sorted(CI_SAMPLE))
@pytest.mark.parametrize("which", [0])
def test_ci_sample(backend, which, tmp_path):
    """A fixed sample: each build holds its chains side by side; every output word equals the emulator's."""
    chains, seeds = CI_SAMPLE[backend]
    cases = draw_chains(chains, seeds[which])
    result = run_batch(cases, tmp_path, (backend,), calls=2, rng_seed=seeds[which])
    assert result.chains == chains
    _assert_equal(cases, result)


@pytest.mark.fuzz
@pytest.mark.skipif(not os.environ.get("FX2FPGA_FUZZ_CASES"), reason="opt-in: set FX2FPGA_FUZZ_CASES")
def test_fuzz_campaign(tmp_path):
    """``FX2FPGA_FUZZ_CASES`` chains (``FX2FPGA_FUZZ_SEED``, default 0) in builds of ``BATCH``, on csim and rtl."""
    n, seed = int(os.environ["FX2FPGA_FUZZ_CASES"]), int(os.environ.get("FX2FPGA_FUZZ_SEED", "0"))
    cases = draw_chains(n, seed)
    failures = []
    for b, first in enumerate(range(0, n, BATCH)):
        batch = cases[first:first + BATCH]
        result = run_batch(batch, tmp_path / f"b{b}", rng_seed=b)
        failures += [f"case {first + m.chain if m.chain >= 0 else '?'}: {m}" for m in result.mismatches]
    assert not failures, "\n".join(failures)
