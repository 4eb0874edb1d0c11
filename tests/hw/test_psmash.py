"""PSMASH conformance (amd-snp-arch.md §4; §10 item 1; brief rule 3)."""

from __future__ import annotations

import pytest
from rmp_testlib import GPA_OFFSET, NPAGES, TABLE_END, page, region

from snpsim.hw import PageSize, Rmp, RmpEntry, RmpStatus
from snpsim.hw.types import PAGES_PER_2M, PERM_ALL

S = RmpStatus
K4 = PageSize.SIZE_4K
M2 = PageSize.SIZE_2M


def assign_2m(rmp: Rmp, spa: int, asid: int = 1, immutable: bool = False) -> None:
    assert (
        rmp.rmpupdate(spa, assigned=True, page_size=M2, gpa=spa + GPA_OFFSET, asid=asid, immutable=immutable)
        == S.SUCCESS
    )


def snapshot(rmp: Rmp, spa: int) -> list[RmpEntry]:
    return [rmp.rmpread(spa + page(k)) for k in range(PAGES_PER_2M)]


def test_psmash_preserves_fields_and_gives_consecutive_gpas(rmp: Rmp) -> None:
    """§4 [V-tr 15.36.11]: 512 4K entries, consecutive GPAs, Page_Size=0, all other fields copied
    (Validated, ASID, Immutable, VMSA, masks preserved; Linux 'while preserving the Validated bit')."""
    base = region(1)
    g = base + GPA_OFFSET
    assign_2m(rmp, base, asid=7)
    assert rmp.pvalidate(base, asid=7, gpa=g, page_size=M2, validate=True) == (S.SUCCESS, False)
    assert rmp.rmpadjust(base, asid=7, gpa=g, page_size=M2, vmpl=0, target_vmpl=2, perms=0x9) == S.SUCCESS
    assert rmp.psmash(base) == S.SUCCESS
    for k in range(PAGES_PER_2M):
        assert rmp.rmpread(base + page(k)) == RmpEntry(
            assigned=True,
            page_size=K4,
            immutable=False,
            gpa=g + page(k),
            asid=7,
            vmsa=False,
            validated=True,
            vmpl_perms=(PERM_ALL, 0, 0x9, 0),
        )
    # neighbouring regions untouched
    assert rmp.rmpread(region(0) + page(511)) == RmpEntry()
    assert rmp.rmpread(region(2)) == RmpEntry()


def test_psmash_then_4k_updates_no_longer_overlap(rmp: Rmp) -> None:
    """§4 KVM usage / §3: KVM PSMASHes a 2M-assigned region before a 4K RMPUPDATE of a sub-page."""
    assign_2m(rmp, region(2), asid=3)
    assert rmp.rmpupdate(region(2) + page(9), assigned=False) == S.FAIL_OVERLAP
    assert rmp.psmash(region(2)) == S.SUCCESS
    assert rmp.rmpupdate(region(2) + page(9), assigned=False) == S.SUCCESS
    assert rmp.rmpread(region(2) + page(9)) == RmpEntry()
    e = rmp.rmpread(region(2) + page(10))
    assert (e.assigned, e.page_size, e.asid) == (True, K4, 3)


def test_psmash_immutable_2m_entry(rmp: Rmp) -> None:
    """Rule 3: immutable 2M entries can be smashed; Immutable is copied to the 4K entries (§4)."""
    assign_2m(rmp, region(0), asid=0, immutable=True)
    assert rmp.psmash(region(0)) == S.SUCCESS
    for k in (0, 1, 511):
        e = rmp.rmpread(page(k))
        assert (e.assigned, e.immutable, e.page_size, e.gpa) == (True, True, K4, GPA_OFFSET + page(k))
    # still immutable: RMPUPDATE refuses
    assert rmp.rmpupdate(page(1), assigned=False) == S.FAIL_PERMISSION


@pytest.mark.parametrize("spa", [page(1), region(1) + page(256), region(1) + 1, region(1) - page(1), 0x1000])
def test_psmash_unaligned_is_fail_input(rmp: Rmp, spa: int) -> None:
    """§4: input RAX = 2MB-aligned SPA; rule 3: not 2M-aligned => FAIL_INPUT (even over an assigned 2M entry)."""
    assign_2m(rmp, region(1))
    before = snapshot(rmp, region(1))
    assert rmp.psmash(spa) == S.FAIL_INPUT
    assert snapshot(rmp, region(1)) == before


@pytest.mark.parametrize("spa", [TABLE_END, TABLE_END + region(5)])
def test_psmash_beyond_table_is_fail_input(rmp: Rmp, spa: int) -> None:
    """Rule 3: range beyond the table => FAIL_INPUT."""
    assert rmp.psmash(spa) == S.FAIL_INPUT


def test_psmash_partly_beyond_table_is_fail_input() -> None:
    """Rule 3: a 2M range that is only partly covered => FAIL_INPUT."""
    r = Rmp(PAGES_PER_2M + 100)
    assert r.psmash(region(1)) == S.FAIL_INPUT


def test_psmash_in_use_head(rmp: Rmp) -> None:
    """§3/§4: a page marked in use by VMRUN => FAIL_INUSE (3, Linux PSMASH_FAIL_INUSE); cleared => SUCCESS."""
    assign_2m(rmp, region(1))
    rmp.mark_in_use(region(1))
    before = snapshot(rmp, region(1))
    assert rmp.psmash(region(1)) == S.FAIL_INUSE
    assert snapshot(rmp, region(1)) == before
    rmp.clear_in_use(region(1))
    assert rmp.psmash(region(1)) == S.SUCCESS


def test_psmash_in_use_before_badaddr(rmp: Rmp) -> None:
    """Rule 3 order: FAIL_INUSE is checked before the 'not an assigned 2M entry' check."""
    rmp.mark_in_use(region(2))
    assert rmp.psmash(region(2)) == S.FAIL_INUSE


def test_psmash_input_before_in_use(rmp: Rmp) -> None:
    """Rule 3 order: FAIL_INPUT first."""
    rmp.mark_in_use(region(2) + page(1))
    assert rmp.psmash(region(2) + page(1)) == S.FAIL_INPUT


def test_psmash_hypervisor_owned_region_is_badaddr(rmp: Rmp) -> None:
    """§4/§10 item 1: not an assigned 2M entry => 7 ('page doesn't meet the requirements for expansion')."""
    assert rmp.psmash(region(0)) == S.FAIL_BADADDR
    assert int(rmp.psmash(region(3))) == 7


def test_psmash_4k_region_is_badaddr(rmp: Rmp) -> None:
    """Rule 3: the 2M-aligned entry is an assigned 4K entry => FAIL_BADADDR; nothing changes."""
    assert rmp.rmpupdate(region(1), assigned=True, gpa=GPA_OFFSET, asid=1) == S.SUCCESS
    before = rmp.rmpread(region(1))
    assert rmp.psmash(region(1)) == S.FAIL_BADADDR
    assert rmp.rmpread(region(1)) == before


def test_psmash_unassigned_2m_entry_is_badaddr(rmp: Rmp) -> None:
    """Rule 3: an unassigned 2M entry is not (assigned and SIZE_2M) => FAIL_BADADDR."""
    assert rmp.rmpupdate(region(1), assigned=False, page_size=M2) == S.SUCCESS
    assert rmp.psmash(region(1)) == S.FAIL_BADADDR
    assert rmp.rmpread(region(1) + page(5)).page_size == M2


def test_psmash_twice(rmp: Rmp) -> None:
    """§4: no instruction reverses PSMASH; a second PSMASH finds 4K entries => FAIL_BADADDR."""
    assign_2m(rmp, region(3))
    assert rmp.psmash(region(3)) == S.SUCCESS
    assert rmp.psmash(region(3)) == S.FAIL_BADADDR
    assert rmp.rmpread(region(3) + page(511)).page_size == K4


def test_psmash_last_region_of_table(rmp: Rmp) -> None:
    """Rule 3: the last fully covered 2M range can be smashed."""
    last = region(NPAGES // PAGES_PER_2M - 1)
    assign_2m(rmp, last)
    assert rmp.psmash(last) == S.SUCCESS
    assert rmp.rmpread(TABLE_END - page(1)).gpa == last + GPA_OFFSET + page(511)
