"""Parameter banks in block RAM take the load stream on their second port (``emit._load_through_second_port``): no
write select in the fabric, and the kernel still computes what the emulator does, bit for bit (Verilator)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fx2fpga
from fx2fpga.passes import resources

X = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
Y = torch.tensor([0, 1, 2, 3])


@pytest.fixture(scope="module")
def design(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    return fx2fpga.compile(model, (X,), train=fx2fpga.SGD(F.cross_entropy, Y, lr=0.1), lanes=1, outputs="rtl",
                           out_dir=tmp_path_factory.mktemp("dual_port") / "p")


def test_a_block_ram_parameter_bank_loads_through_its_read_port(design):
    """The first layer's weight (1,024 x 24 bits: a RAMB36 as 1K x 36 either way) takes the stream on its second
    port; the second's (64 words) and the biases are LUT-RAM, which has one write port: they keep the select."""
    plan = design.rtl_plan()
    mems = {m["name"]: m for m in plan.memories}
    dual = sorted(n for n, m in mems.items() if m["load_port"] is not None)
    assert len(dual) == 1 and dual[0].endswith("0_weight"), dual
    m = mems[dual[0]]
    assert m["depth"] == 1024 and resources.bank_mapping(m["depth"], m["width"], False).kind == "bram"
    assert resources.bram36_for(1024, 24, dual_port=True) == resources.bram36_for(1024, 24) == 1.0
    assert resources.bram36_for(512, 24, dual_port=True) == 1.0 > resources.bram36_for(512, 24)  # so not there
    ports = m["ports"][0]
    assert "we_b" in ports and "wsel" not in ports
    assert all("wsel" in p for n, x in mems.items() if n not in dual and not x["read_only"]
               for p in x["ports"] if len(x["sources"][0]) > 1)
    streamed = [w for w in plan.spec["writes"] if w["memory"] == dual[0]]
    assert sorted(bool(w.get("port_b")) for w in streamed) == [False, True]  # the update on port A, the load on B
    top = next((design.out_dir / "rtl").glob("*_top.sv")).read_text()
    assert top.count("fx2fpga_ram_tdp #(") == 1 and f"wsel_{dual[0]}_0" not in top


def test_loading_training_and_reading_back_equal_the_emulator(design):
    emu = design.load("emu")
    with design.load("rtl") as rtl:
        start = {k: v * 0.5 for k, v in emu.get_params().items()}
        emu.set_params(start)
        rtl.set_params(start)
        got, want = rtl.get_params(), emu.get_params()
        assert all(np.array_equal(got[k], want[k]) for k in want)
        for _ in range(2):
            assert np.array_equal(rtl.train_step(X, Y), emu.train_step(X, Y))
            assert rtl.backend.last_cycles == design.schedule.call_cycles("train_step")
        got, want = rtl.get_params(), emu.get_params()
        assert all(np.array_equal(got[k], want[k]) for k in want)
