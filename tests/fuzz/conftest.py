"""The fuzz tests' marker and build cache."""

from __future__ import annotations

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "fuzz: the opt-in differential fuzzing run (FX2FPGA_FUZZ_CASES cases)")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Builds go to the session's temporary cache, not the user's."""
    monkeypatch.setenv("FX2FPGA_CACHE", str(tmp_path_factory.getbasetemp() / "fx2fpga-cache"))
