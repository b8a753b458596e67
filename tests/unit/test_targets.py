"""Targets are data: TOML files read into frozen ``Target`` records."""

from __future__ import annotations

import dataclasses

import pytest

from fx2fpga.errors import UnknownTargetError
from fx2fpga.targets import DdrBus, Target, TargetFileError, _parse, list_targets, load_target


def test_pynq_z1_numbers():
    t = load_target("pynq-z1")
    assert isinstance(t, Target)
    assert (t.part, t.clock_mhz, t.lut, t.ff, t.bram36, t.dsp) == ("xc7z020clg400-1", 100.0, 53_200, 106_400, 140, 220)
    assert (t.dsp_kind, t.ps, t.toolchain, t.family) == ("DSP48E1", "zynq7", "vivado", "xc7")
    assert t.board_part == "www.digilentinc.com:pynq-z1:part0:1.0"


def test_pynq_z2_same_chip_other_board():
    z1, z2 = load_target("pynq-z1"), load_target("pynq-z2")
    assert z2.board_part == "tul.com.tw:pynq-z2:part0:1.0"
    assert dataclasses.replace(z2, name=z1.name, description=z1.description, board_part=z1.board_part) == z1


def test_list_targets_sorted_and_loadable():
    targets = list_targets()
    names = [t.name for t in targets]
    assert names == sorted(names) and {"pynq-z1", "pynq-z2"} <= set(names)
    assert all(load_target(n) == t for n, t in zip(names, targets, strict=True))
    assert load_target("PYNQ-Z1") is load_target("pynq-z1")


def test_target_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_target("pynq-z1").dsp = 1  # type: ignore[misc]


def test_unknown_target_lists_known_ones():
    with pytest.raises(UnknownTargetError) as info:
        load_target("zedboard")
    message = str(info.value)
    assert "'zedboard'" in message
    for t in list_targets():
        assert t.name in message
    assert info.value.known == [t.name for t in list_targets()]


GOOD = """
name = "x"
description = "d"
part = "p"
family = "xc7"
clock_mhz = 100
lut = 1
ff = 2
bram36 = 3
dsp = 4
dsp_kind = "DSP48E1"
toolchain = "vivado"
"""


def test_minimal_toml_parses_with_optional_fields_absent():
    t = _parse("x.toml", GOOD)
    assert t.clock_mhz == 100.0 and isinstance(t.clock_mhz, float)
    assert t.ps is None and t.board_part is None


@pytest.mark.parametrize(
    "edit,words",
    [
        (lambda s: s.replace("lut = 1", 'lut = "many"'), ["lut", "positive integer"]),
        (lambda s: s.replace("lut = 1", "lut = 0"), ["lut", "positive integer"]),
        (lambda s: s.replace("dsp = 4", "dsp = true"), ["dsp", "positive integer"]),
        (lambda s: s.replace("clock_mhz = 100", "clock_mhz = -5"), ["clock_mhz"]),
        (lambda s: s.replace('part = "p"\n', ""), ["missing", "part"]),
        (lambda s: s + "uram = 4\n", ["unknown field", "uram"]),
        (lambda s: s.replace('"vivado"', '"quartus-pro-max"'), ["toolchain", "vivado"]),
        (lambda s: s + "ps = 7\n", ["ps"]),
        (lambda s: s.replace('name = "x"', "name = "), ["not valid TOML"]),
    ],
)
def test_malformed_toml_errors_name_file_and_field(edit, words):
    with pytest.raises(TargetFileError) as info:
        _parse("bad.toml", edit(GOOD))
    message = str(info.value)
    assert message.startswith("bad.toml: ")
    for w in words:
        assert w in message


def test_zynq_boards_carry_the_ddr_path_figures():
    """The figures the tiling pass costs DDR tiles with (docs/offchip.md), each sourced in the TOML's comments."""
    for name in ("pynq-z1", "pynq-z2"):
        t = load_target(name)
        assert t.ddr is not None
        ddr = t.ddr
        assert (ddr.port, ddr.bytes_per_cycle, ddr.burst_beats, ddr.port_burst_beats) == ("S_AXI_HP0", 8, 256, 16)
        assert (ddr.read_latency_cycles, ddr.mbytes_for_pl) == (40, 128)
        assert "UG585" in ddr.source and "estimate" in ddr.source  # the latency is an estimate and says so
        assert ddr.peak_mbytes_per_s(t.clock_mhz) == 800.0  # 64 bits a cycle at 100 MHz
        # the kernel's own bus reaches the host's words through the same port, at its peak (not measured)
        assert ddr.peak_mbytes_per_s(t.clock_mhz) == t.bus_mbytes_per_s and "not measured" in t.bus_source


def test_ulx3s_has_no_ddr_path():
    assert load_target("ulx3s").ddr is None  # SDR SDRAM on pins, no hard controller: no [ddr] table


DDR = """
[ddr]
port = "S_AXI_HP0"
bytes_per_cycle = 8
burst_beats = 256
port_burst_beats = 16
read_latency_cycles = 40
mbytes_for_pl = 128
source = "s"
"""


def test_ddr_table_parses_into_a_frozen_record():
    ddr = _parse("x.toml", GOOD + DDR).ddr
    assert ddr == DdrBus("S_AXI_HP0", 8, 256, 16, 40, 128, "s")
    assert _parse("x.toml", GOOD).ddr is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        ddr.burst_beats = 16  # type: ignore[misc]


@pytest.mark.parametrize(
    "edit,words",
    [
        (lambda s: s.replace("bytes_per_cycle = 8", "bytes_per_cycle = 6"), ["bytes_per_cycle", "power of two"]),
        (lambda s: s.replace("bytes_per_cycle = 8", "bytes_per_cycle = 0"), ["bytes_per_cycle", "positive"]),
        (lambda s: s.replace("burst_beats = 256", "burst_beats = 512"), ["burst_beats 512", "256"]),
        (lambda s: s.replace("\nburst_beats = 256", "\nburst_beats = 8"),
         ["port_burst_beats 16", "over burst_beats 8"]),
        (lambda s: s.replace("read_latency_cycles = 40", "read_latency_cycles = 4.5"), ["read_latency_cycles"]),
        (lambda s: s.replace("mbytes_for_pl = 128\n", ""), ["[ddr]", "missing", "mbytes_for_pl"]),
        (lambda s: s + "width_bits = 64\n", ["[ddr]", "unknown", "width_bits"]),
        (lambda s: s.replace('source = "s"', 'source = ""'), ["[ddr] source", "non-empty"]),
        (lambda s: s.replace("[ddr]\n", "ddr = 5\n").split("\nport")[0], ["ddr must be a table"]),
    ],
)
def test_malformed_ddr_table_errors_name_file_and_field(edit, words):
    with pytest.raises(TargetFileError) as info:
        _parse("bad.toml", GOOD + edit(DDR))
    message = str(info.value)
    assert message.startswith("bad.toml: ")
    for w in words:
        assert w in message
