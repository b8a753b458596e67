"""The RTL controller, built as CIRCT IR (``fsm``, ``hw``, ``comb``, ``seq``) and lowered to SystemVerilog.

The controller of a kernel (``<name>_ctrl``) is everything that decides *when* and *where*:

- an ``fsm.machine`` (``<name>_fsm``): one state per phase of every command (see
  ``passes/schedule.py``), entered from ``IDLE`` by the command register and left when the
  phase reports ``done``; its output is the phase code (0 when idle);
- the shared loop counters ``c0, c1, ...`` of the phases, stepping one loop-body issue per
  cycle, and the drain counter that waits for the datapath pipeline after the last issue;
- a delay line of (issue, phase, counters) so that a phase's writes, due ``write_delay``
  cycles after their issue, recompute their addresses from the delayed counters;
- the address generators: every memory request's affine index over the counters, split into
  the RAM bank and the address inside it, multiplexed onto each bank's read and write ports,
  plus the selects that route bank data to the datapath lanes and lane results to the banks.

``backends/rtl/emit.py`` makes the controller's spec (plain data from the schedule); this module
runs ``circt_child.py`` on it in a child process. The child (a standalone script: it imports
neither fx2fpga nor torch, so it starts in well under a second) builds the IR with the
``circt`` Python bindings, verifies it, runs ``convert-fsm-to-sv, canonicalize`` (then fills
the FSM's empty ``default`` case, see ``_fill_fsm_default``), ``lower-seq-to-sv,
canonicalize`` and exports one SystemVerilog file per module. Running
CIRCT in a child means a crash inside it (some malformed IR aborts the process) becomes a
``ControllerError`` naming what happened, not the death of the user's Python.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ...errors import Fx2fpgaError

CHILD = Path(__file__).with_name("circt_child.py")


class ControllerError(Fx2fpgaError, RuntimeError):
    """CIRCT could not build, verify or lower the controller."""


def affine_spec(a) -> dict:
    """An ``Affine`` over counters ``c<k>`` as plain data: terms as [counter, coefficient]."""
    return {"terms": [[int(v[1:]), c] for v, c in a.terms], "const": a.const, "div": a.div, "mod": a.mod}


def run_child(spec: dict, timeout_s: float = 300) -> dict[str, str]:
    """Build and lower the controller described by ``spec`` in a child process; file name -> text."""
    try:
        proc = subprocess.run([sys.executable, str(CHILD)], input=json.dumps(spec),
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ControllerError(f"CIRCT did not finish lowering the controller in {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        raise ControllerError(f"CIRCT failed on the controller {spec['name']} ({how}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)
