"""Where buffers live (``passes/placement.py``): in the manifest and report.md, with bits and whole bytes."""

from __future__ import annotations

import json
import math

import pytest

from fx2fpga.passes import estimate, placement


@pytest.mark.parametrize("width,nbytes", [(1, 1), (2, 1), (8, 1), (9, 2), (16, 2), (18, 3), (24, 3), (33, 5)])
def test_bytes_per_value_rounds_the_width_up_to_whole_bytes(width, nbytes):
    assert placement.bytes_per_value(width) == nbytes


def test_manifest_places_every_buffer_on_chip_with_its_bytes(mlp_train_design):
    _, design = mlp_train_design
    k = design.kernel
    manifest = json.loads((design.out_dir / "manifest.json").read_text())
    rows = {r["buffer"]: r for r in manifest["buffers"]}
    assert list(rows) == list(k.buffers)  # every buffer, in declaration order
    assert {r["place"] for r in rows.values()} == {"chip"}  # today: all on chip
    assert [p["buffer"] for p in manifest["params"]] == ["fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "lr"]
    params = ["fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"]  # the model's (lr: the learning-rate register)
    # the parameters: fixed<24,8>, 3 bytes a value; 32x64 + 32 + 10x32 + 10 values
    assert sum(rows[p]["bytes"] for p in params) == sum(math.prod(k.buffers[p].shape) * 3 for p in params) == 7_230
    assert all(rows[p]["width"] == 24 for p in params)
    assert rows["train_eq"] == {"buffer": "train_eq", "place": "chip", "role": "temp", "values": 160, "width": 1,
                                "bytes": 160}  # a 1-bit flag still takes a byte
    tot = manifest["placement"]
    assert tot["chip"]["bytes"] == sum(r["bytes"] for r in rows.values())
    assert tot["chip"]["buffers"] == len(k.buffers) and tot["ddr"] == {"buffers": 0, "bytes": 0, "bits": 0}
    assert tot["chip"]["bits"] == manifest["estimated_resources"]["memory_bits"]  # the estimate's count, the same
    assert tot["bram_bytes"] == 140 * 4_608 == 645_120  # pynq-z1: 140 BRAM36 of 36 kbit
    # 23,752 bytes: the ReLU's backward where(h <= 0, 0, g) is one le_select stage (passes/fuse.py), so its
    # 16x32 1-bit mask train_le, 512 values of a byte each, is not stored (26,824 bytes with it); fc1's ReLU is
    # applied as its multiply-accumulate writes (fuse.py: mac then relu), so its 16x32 pre-activation at 16 bits,
    # 1,024 bytes, is not stored either; and the ReLU's backward is applied as the gradient's multiply-accumulate
    # writes (mac then relu_mask), so the unmasked 16x32 gradient at 24 bits, 1,536 bytes, is not stored
    assert "train_le" not in rows and "train_mm" not in rows
    assert tot["chip"]["bytes"] == 26_824 - 16 * 32 - 16 * 32 * 2 - 16 * 32 * 3 == 23_752


def test_report_lists_place_bits_and_bytes_and_the_totals(mlp_train_design):
    _, design = mlp_train_design
    report = (design.out_dir / "report.md").read_text()
    section = report[report.index("## Buffers"):]
    assert "| buffer | shape | format | role | kind | place | bits | bytes |" in section
    assert "| `fc1_weight` | 32x64 | fixed<24,8> | param | weight | chip | 49,152 | 6,144 |" in section
    assert (f"On chip: {len(design.kernel.buffers)} buffers, 23,752 bytes (3.7% of pynq-z1's 645,120 bytes of block "
            f"RAM: 140 BRAM36 x 4,608); {estimate.resources(design.kernel).memory_bits:,} bits as stored on chip. "
            "In DDR: 0 buffers, 0 bytes.") in section
