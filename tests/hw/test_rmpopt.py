"""RMPOPT, the instruction (``Rmp.rmpopt``): its per-CPU table of one bit per 1 GiB region.

From the RMPOPT series' cover letter (v4, lkml 2604.3/10874): verify-and-report "verif[ies] the entire 1GB
region starting at the provided SPA is HV-owned ... checks that all RMP entries in this region are HV-owned (i.e,
not in assigned state) and then accordingly updates the RMPOPT table"; "Hardware automatically clears bits in the
RMPOPT table when RMP contents are changed during RMPUPDATE instruction" (assumption ``rmpopt-clear``: an
assigning RMPUPDATE clears its region on every CPU).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snpsim.hw import PageSize, Rmp, RmpStatus
from snpsim.hw.rmp import RMPOPT_FUNC_REPORT_STATUS, RMPOPT_FUNC_VERIFY_AND_REPORT_STATUS

G1 = 1 << 30
REGION_PAGES = G1 >> 12
NREGIONS = 4
VERIFY, REPORT = RMPOPT_FUNC_VERIFY_AND_REPORT_STATUS, RMPOPT_FUNC_REPORT_STATUS


def scan(rmp: Rmp, ncpus: int) -> list[bool]:
    return [all(rmp.rmpopt(r * G1, VERIFY, c) for c in range(ncpus)) for r in range(NREGIONS)]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(0, NREGIONS * REGION_PAGES - 1), max_size=12, unique=True),
    st.integers(1, 3),
)
def test_bit_is_set_exactly_for_regions_without_an_assigned_entry(pfns: list[int], ncpus: int) -> None:
    rmp = Rmp(NREGIONS * REGION_PAGES)
    rmp.enable_rmpopt(ncpus)
    for p in pfns:
        assert rmp.rmpupdate(p << 12, assigned=True, gpa=p << 12, asid=1) == RmpStatus.SUCCESS
    got = scan(rmp, ncpus)
    # by hand: a region is "entirely hypervisor-owned" iff none of the assigned pages lies in it
    assert got == [not any(p // REGION_PAGES == r for p in pfns) for r in range(NREGIONS)]
    assert list(rmp.rmpopt_regions_all_cpus()) == got


def test_report_status_reads_without_verifying() -> None:
    rmp = Rmp(NREGIONS * REGION_PAGES)
    rmp.enable_rmpopt(2)
    assert rmp.rmpopt(0, REPORT, 0) is False  # nothing scanned yet: the table starts clear
    assert rmp.rmpopt(G1 + 12345 * 4096, VERIFY, 0) is True  # any SPA in the region: RAX & PUD_MASK
    assert rmp.rmpopt(G1, REPORT, 0) is True
    assert rmp.rmpopt(G1, REPORT, 1) is False  # per-CPU: CPU 1 did not run it


@pytest.mark.parametrize("path", ["single", "range", "pfns", "2m"])
def test_assigning_rmpupdate_clears_its_region_on_every_cpu(path: str) -> None:
    rmp = Rmp(NREGIONS * REGION_PAGES)
    rmp.enable_rmpopt(2)
    assert all(scan(rmp, 2))
    base = 2 * REGION_PAGES + 1024  # region 2, 2M-aligned
    if path == "single":
        rmp.rmpupdate(base << 12, assigned=True, asid=1)
    elif path == "range":
        rmp.rmpupdate_range(base << 12, 100, assigned=True, asid=1)
    elif path == "pfns":
        rmp.rmpupdate_pfns(np.arange(base, base + 200, dtype=np.int64), assigned=True, asid=1)
    else:
        rmp.rmpupdate(base << 12, assigned=True, page_size=PageSize.SIZE_2M, asid=1)
    assert list(rmp.rmpopt_regions_all_cpus()) == [True, True, False, True]
    assert [rmp.rmpopt(2 * G1, REPORT, c) for c in range(2)] == [False, False]


def test_unassigning_or_failed_rmpupdate_leaves_the_bits() -> None:
    rmp = Rmp(NREGIONS * REGION_PAGES)
    rmp.enable_rmpopt(1)
    scan(rmp, 1)
    assert rmp.rmpupdate(5 << 12, assigned=False) == RmpStatus.SUCCESS
    assert rmp.rmpupdate((5 << 12) + 1, assigned=True, asid=1) == RmpStatus.FAIL_INPUT  # misaligned: no write
    assert list(rmp.rmpopt_regions_all_cpus()) == [True] * NREGIONS


def test_a_cleared_bit_stays_clear_until_the_next_scan() -> None:
    rmp = Rmp(NREGIONS * REGION_PAGES)
    rmp.enable_rmpopt(1)
    scan(rmp, 1)
    rmp.rmpupdate(7 << 12, assigned=True, asid=1)
    rmp.rmpupdate(7 << 12, assigned=False)  # the region is all hypervisor-owned again, but not re-verified
    assert rmp.rmpopt(0, REPORT, 0) is False
    assert rmp.rmpopt(0, VERIFY, 0) is True
