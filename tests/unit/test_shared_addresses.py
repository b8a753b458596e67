"""One read and one write address for all the banks of a memory (``emit._share_read_addresses``,
``emit._share_write_addresses``): the row key is exact, and the controller keeps one address register a port."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import fx2fpga
from fx2fpga.backends.rtl import emit
from fx2fpga.passes.resources import _plan_of


def _request(coefs: list[int], const: int) -> dict:
    return {"index": [{"terms": [[k, c] for k, c in enumerate(coefs)], "const": const, "div": 1, "mod": 0}],
            "dim_bits": [12]}


@given(f=st.sampled_from([2, 3, 4, 6, 8, 16]), coefs=st.lists(st.integers(1, 12), min_size=1, max_size=2),
       c1=st.integers(0, 40), c2=st.integers(0, 40))
def test_equal_row_keys_mean_equal_rows(f, coefs, c1, c2):
    """Two requests of one phase (the same terms, other lane constants) with equal keys read one row of their bank
    at every point of their loops: ``floor((sum(c_k x_k) + const) / f)``."""
    if emit._row_key(_request(coefs, c1), [f], [64]) != emit._row_key(_request(coefs, c2), [f], [64]):
        return
    for x0 in range(12):
        for x1 in range(12 if len(coefs) > 1 else 1):
            t = coefs[0] * x0 + (coefs[1] * x1 if len(coefs) > 1 else 0)
            assert (t + c1) // f == (t + c2) // f, (f, coefs, c1, c2, x0, x1)


def test_row_keys_tell_rows_apart():
    """Lanes 0 and 1 of ``2 i + lane`` over 4 banks share rows (``2 i`` and ``2 i + 1`` never straddle a multiple of
    4); lanes 1 and 2 do not; an index cut evenly into the banks keys on its quotient."""
    key = emit._row_key
    assert key(_request([2], 0), [4], [8]) == key(_request([2], 1), [4], [8])
    assert key(_request([2], 1), [4], [8]) != key(_request([2], 2), [4], [8])
    assert key(_request([4], 1), [4], [8]) == key(_request([4], 3), [4], [8]) != key(_request([4], 4), [4], [8])
    assert key(_request([4], 1), [4], [1]) == (None,)  # one row: no address at all


def test_banks_share_one_address_register(tmp_path):
    """A training MLP at 4 lanes: every memory of several banks whose requests are all marked gets one read (and one
    write) address register in the controller, which every bank's port takes; the step's numbers are checked
    against the emulator by the Verilator tests (test_rtl_banking, test_pipeline_groups, test_dual_port_params)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    x, y = torch.randn(4, 16), torch.randint(0, 4, (4,))
    des = fx2fpga.compile(model, (x,), target="pynq-z1", train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1), lanes=4,
                          outputs="rtl", out_dir=tmp_path / "p")
    plan = _plan_of(des)
    ctrl = next((tmp_path / "p" / "rtl").glob("*_ctrl.sv")).read_text()
    drivers = dict(re.findall(r"assign (\w+) =\s*(\w+);", ctrl))
    shared = 0
    for name, mem in plan.spec["memories"].items():
        if mem["banks"] < 2:
            continue
        for port, reqs in (("raddr", [r for r in plan.spec["reads"] if r["memory"] == name]),
                           ("waddr", [w for w in plan.spec["writes"] if w["memory"] == name])):
            if reqs and all(r.get("any_bank") for r in reqs):
                regs = {drivers[f"{port}_{name}_{b}"] for b in range(mem["banks"])}
                assert len(regs) == 1, (name, port, regs)
                shared += 1
    assert shared >= 4
