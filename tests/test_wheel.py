"""The built wheel carries everything: installed alone, it compiles the example from another folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_wheel_installed_elsewhere_compiles_the_example(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheels.glob("fx2fpga-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    # the wheel's copy comes first on sys.path, ahead of the editable checkout
    env = {**os.environ, "PYTHONPATH": str(site)}
    script = ("import fx2fpga, fx2fpga_runtime, sys; from fx2fpga.cli import main; "
              "assert fx2fpga.__file__.startswith(sys.argv[1]), fx2fpga.__file__; "
              "assert fx2fpga_runtime.__file__.startswith(sys.argv[1]); "
              "sys.exit(main(['compile', sys.argv[2], '--train', '-o', 'proj']))")
    r = subprocess.run([sys.executable, "-c", script, str(site), str(ROOT / "examples" / "mlp_digits.py")],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    proj = tmp_path / "proj"
    for f in ("src/mlp_digits.cpp", "build.tcl", "hls.tcl", "driver/fx2fpga_runtime/emulator.py", "manifest.json"):
        assert (proj / f).is_file(), f
