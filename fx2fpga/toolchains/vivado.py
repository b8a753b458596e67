"""The AMD flow for the Zynq boards (``fx2fpga build DIR``): Vitis HLS, then Vivado, where they are installed.

``build(project_dir)`` runs, in the project folder, ``vitis_hls -f hls.tcl`` (C simulation, synthesis, IP
export) and ``vivado -mode batch -source build.tcl`` (block design, implementation, bitstream). Both are found
with ``require_tool`` (``$FX2FPGA_VITIS_HLS``, ``$FX2FPGA_VIVADO``, the venv, PATH); when either is missing the
error says how to run the two steps on a machine that has them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ..errors import ToolNotFoundError
from . import require_tool

TOOLS = ("vitis_hls", "vivado")


def find_tools(project: Path, target_name: str) -> dict[str, str]:
    """The paths of Vitis HLS and Vivado; ``ToolNotFoundError`` naming each missing one and what to run."""
    found, missing = {}, []
    for name in TOOLS:
        try:
            found[name] = require_tool(name)
        except ToolNotFoundError:
            missing.append(name)
    if missing:
        raise ToolNotFoundError(
            f"{' and '.join(missing)} not found on PATH: building a bitstream for {target_name} "
            f"needs AMD Vivado and Vitis HLS (2022.1 or newer). On a machine that has them run, in {project}:\n"
            f"  vitis_hls -f hls.tcl && vivado -mode batch -source build.tcl\n"
            f"Everything before that runs here: fx2fpga sim {project} --sim csim")
    return found


def build(project_dir: str | Path, target_name: str, log=None) -> int:
    """Vitis HLS, then Vivado, in the project folder; raises ``CalledProcessError`` when one fails."""
    project = Path(project_dir)
    tools = find_tools(project, target_name)
    say = log or (lambda _msg: None)
    say("running Vitis HLS (C simulation, synthesis, IP export)")
    subprocess.run([tools["vitis_hls"], "-f", "hls.tcl"], cwd=project, check=True)
    say("running Vivado (block design, implementation, bitstream)")
    subprocess.run([tools["vivado"], "-mode", "batch", "-source", "build.tcl"], cwd=project, check=True)
    return 0
