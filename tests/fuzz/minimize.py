"""The smallest chain a backend gets wrong: hypothesis' ``find`` over ``chains()``, shrunk by hypothesis.

    python -m tests.fuzz.minimize csim-ap_types [--examples 300] [--match "Attempting to read bit"]

Each example is one chain alone in its own kernel, built and run on the backend (a build per example,
seconds each): use it on a mismatch the campaign (``benchmarks/fuzz.py``) found, to get the case kept
in ``tests/fuzz/test_regressions.py``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, Phase, find, settings

from .harness import isolate
from .kernels import Chain, chains


def fails_on(backend: str, match: str = "", calls: int = 3):
    """A predicate: the chain alone mismatches (or fails to build or run) on ``backend``, with ``match`` in
    the report."""
    work = Path(tempfile.mkdtemp(prefix="fx2fpga-min-"))
    count = [0]

    def predicate(chain: Chain) -> bool:
        count[0] += 1
        found = isolate(chain, work / str(count[0]), (backend,) if backend != "emu-reference" else (), calls)
        return any(m.backend == backend and match in str(m) for m in found.mismatches)
    return predicate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("backend")
    p.add_argument("--examples", type=int, default=300)
    p.add_argument("--match", default="")
    args = p.parse_args()
    chain = find(chains(), fails_on(args.backend, args.match),
                 settings=settings(max_examples=args.examples, database=None, deadline=None,
                                   phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck)))
    print(chain.describe())


if __name__ == "__main__":
    main()
