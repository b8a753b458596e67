"""Golden test vectors of a project (``testbench/vectors.json``) and their replay on a backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

VECTORS = "testbench/vectors.json"


def vectors_text(vectors: list[tuple[str, np.ndarray, np.ndarray]]) -> str:
    """(command, in_words, expected out_words) as deterministic JSON."""
    rows = [{"command": c, "in": [int(w) for w in i], "out": [int(w) for w in o]} for c, i, o in vectors]
    return json.dumps(rows, separators=(",", ":")) + "\n"


def replay(project_dir: Path, backend: str, log=None, saturation: dict | None = None) -> list[dict]:
    """Run the project's golden vectors on ``backend``; per command, the words that differ. ``saturation``
    (a dict) receives the saturation counts of the replay where the backend has counters."""
    from . import make_backend, read_kernel

    kernel = read_kernel(project_dir)
    rows = json.loads((Path(project_dir) / VECTORS).read_text())
    be = make_backend(kernel, backend, project_dir)
    results = []
    try:
        for row in rows:
            got = be.call(row["command"], np.asarray(row["in"], dtype=np.int32))
            want = np.asarray(row["out"], dtype=np.int64)
            got = np.asarray(got, dtype=np.int64)
            bad = int(np.sum(got != want)) if got.shape == want.shape else max(len(want), 1)
            results.append({"command": row["command"], "words": len(want), "mismatches": bad})
            if log and bad:
                log(f"{row['command']}: {bad} of {len(want)} words differ")
        if saturation is not None:
            _read_saturation(kernel, be, saturation)
    finally:
        be.close()
    return results


def _read_saturation(kernel, backend, into: dict) -> None:
    """The backend's saturation counts into ``into``, where it has counters."""
    from . import saturation

    try:
        into.update(saturation.read(kernel, backend))
    except RuntimeError:
        pass
