"""Fixtures for the hw conformance tests."""

from __future__ import annotations

import pytest
from rmp_testlib import NPAGES

from snpsim.hw import Rmp


@pytest.fixture
def rmp() -> Rmp:
    """A fresh 8 MiB table (4 x 2M regions); every entry hypervisor-owned (§1)."""
    return Rmp(NPAGES)
