"""The built wheel carries everything: pip-installed into a fresh venv, its console script
compiles the example from another folder (templates, targets and runtime come from the wheel)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_wheel_in_a_fresh_venv_compiles_the_example(tmp_path):
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheels.glob("fx2fpga-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # dependencies (torch, numpy, jinja2, hls4ml) from this interpreter, by path only: a .pth line
    # adds the folder without running its .pth files, so the editable checkout stays invisible
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True)
    probe = "import fx2fpga, fx2fpga_runtime; print(fx2fpga.__file__); print(fx2fpga_runtime.__file__)"
    where = subprocess.run([str(py), "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True)
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout
    r = subprocess.run([str(venv / "bin" / "fx2fpga"), "compile", str(ROOT / "examples" / "mlp_digits.py"),
                        "--train", "-o", "proj"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    proj = tmp_path / "proj"
    for f in ("src/mlp_digits.cpp", "build.tcl", "hls.tcl", "driver/fx2fpga_runtime/emulator.py", "manifest.json"):
        assert (proj / f).is_file(), f
