"""RMPUPDATE / RMPREAD conformance (amd-snp-arch.md §1, §2, §3, §6 RMPREAD; brief rules 1 and 2)."""

from __future__ import annotations

import dataclasses
import time
import tracemalloc

import pytest
from rmp_testlib import GPA_OFFSET, NPAGES, TABLE_END, page, region

from snpsim.hw import PageSize, Rmp, RmpEntry, RmpStatus
from snpsim.hw.types import PAGES_PER_2M, PERM_ALL

S = RmpStatus
K4 = PageSize.SIZE_4K
M2 = PageSize.SIZE_2M


def assign(rmp: Rmp, spa: int, size: PageSize = K4, asid: int = 1, immutable: bool = False) -> None:
    assert (
        rmp.rmpupdate(spa, assigned=True, page_size=size, gpa=spa + GPA_OFFSET, asid=asid, immutable=immutable)
        == S.SUCCESS
    )


# --------------------------------------------------------------------------- initial state / RMPREAD


def test_status_and_size_values() -> None:
    """§3/§4/§5 return codes and §1 Page_Size encoding (MS-docs, Linux sev.h)."""
    assert [
        int(s)
        for s in (
            S.SUCCESS,
            S.FAIL_INPUT,
            S.FAIL_PERMISSION,
            S.FAIL_INUSE,
            S.FAIL_OVERLAP,
            S.FAIL_SIZEMISMATCH,
            S.FAIL_BADADDR,
        )
    ] == [0, 1, 2, 3, 4, 6, 7]
    assert (int(K4), int(M2), int(PageSize.SIZE_1G)) == (0, 1, 2)


def test_return_types(rmp: Rmp) -> None:
    """DESIGN.md public API: instructions return RmpStatus, PVALIDATE (RmpStatus, bool), RMPREAD a frozen
    RmpEntry whose vmpl_perms holds one mask per VMPL0..3 (§1 Table 15-34)."""
    st = rmp.rmpupdate(page(1), assigned=True, gpa=GPA_OFFSET, asid=1)
    assert isinstance(st, RmpStatus) and st == S.SUCCESS
    assert isinstance(rmp.rmpupdate(1, assigned=True), RmpStatus)
    assert isinstance(rmp.psmash(0), RmpStatus)
    status, cf = rmp.pvalidate(page(1), asid=1, gpa=GPA_OFFSET, page_size=K4, validate=True)
    assert isinstance(status, RmpStatus) and isinstance(cf, bool)
    e = rmp.rmpread(page(1))
    assert isinstance(e, RmpEntry)
    assert isinstance(e.vmpl_perms, tuple) and len(e.vmpl_perms) == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.assigned = False  # type: ignore[misc]


@pytest.mark.parametrize("n", [0, 1, 511, 512, NPAGES - 1])
def test_all_entries_start_hypervisor_owned(rmp: Rmp, n: int) -> None:
    """§1: all entries start zero => all pages hypervisor-owned (Table 15-35)."""
    assert rmp.rmpread(page(n)) == RmpEntry()


@pytest.mark.parametrize("spa", [TABLE_END, TABLE_END + 4096 * 7, TABLE_END * 16 + 123])
def test_rmpread_beyond_table_is_default(rmp: Rmp, spa: int) -> None:
    """§1 'Pages not covered are permanently hypervisor-owned'; rule 2."""
    assert rmp.rmpread(spa) == RmpEntry()


def test_rmpread_unaligned_reads_containing_page(rmp: Rmp) -> None:
    """Rule 2: a non-4K-aligned spa reads the containing page."""
    assign(rmp, page(5), asid=3)
    assert rmp.rmpread(page(5) + 0x123) == rmp.rmpread(page(5))
    assert rmp.rmpread(page(5) + 0xFFF).asid == 3
    assert not rmp.rmpread(page(6)).assigned


# --------------------------------------------------------------------------- success paths


def test_assign_4k_fields(rmp: Rmp) -> None:
    """§1 fields written by RMPUPDATE; §3 masks reset VMPL0-full/others-none on assignment (15.36.7)."""
    assert rmp.rmpupdate(page(3), assigned=True, gpa=0x7000, asid=9) == S.SUCCESS
    e = rmp.rmpread(page(3))
    assert e == RmpEntry(
        assigned=True,
        page_size=K4,
        immutable=False,
        gpa=0x7000,
        asid=9,
        vmsa=False,
        validated=False,
        vmpl_perms=(PERM_ALL, 0, 0, 0),
    )
    # neighbours untouched
    assert rmp.rmpread(page(2)) == RmpEntry()
    assert rmp.rmpread(page(4)) == RmpEntry()


def test_make_shared_returns_to_hypervisor_state(rmp: Rmp) -> None:
    """§3 make shared = RMPUPDATE(assigned=0, asid=0, gpa=0); §2 Hypervisor state is all-zero."""
    assign(rmp, page(7))
    assert rmp.rmpupdate(page(7), assigned=False) == S.SUCCESS
    assert rmp.rmpread(page(7)) == RmpEntry()


def test_firmware_state_assigned_asid0_immutable(rmp: Rmp) -> None:
    """§2 Firmware state = RMPUPDATE(gpa 0, 4K, asid 0, immutable=1) (Linux rmp_mark_pages_firmware)."""
    assert rmp.rmpupdate(page(1), assigned=True, gpa=0, asid=0, immutable=True) == S.SUCCESS
    e = rmp.rmpread(page(1))
    assert (e.assigned, e.asid, e.immutable, e.page_size) == (True, 0, True, K4)


def test_rmpupdate_clears_validated_vmsa_and_resets_masks(rmp: Rmp) -> None:
    """§3/§8: any RMPUPDATE clears Validated and VMSA and resets the VMPL masks (rule 1), even byte-identical."""
    spa = page(10)
    assign(rmp, spa, asid=2)
    assert rmp.pvalidate(spa, asid=2, gpa=spa + GPA_OFFSET, page_size=K4, validate=True) == (S.SUCCESS, False)
    assert (
        rmp.rmpadjust(spa, asid=2, gpa=spa + GPA_OFFSET, page_size=K4, vmpl=0, target_vmpl=1, perms=0x3, vmsa=True)
        == S.SUCCESS
    )
    before = rmp.rmpread(spa)
    assert before.validated and before.vmsa and before.vmpl_perms == (PERM_ALL, 0x3, 0, 0)
    assign(rmp, spa, asid=2)  # identical values again
    after = rmp.rmpread(spa)
    assert not after.validated and not after.vmsa
    assert after.vmpl_perms == (PERM_ALL, 0, 0, 0)


def test_assign_2m_covers_all_512_pages(rmp: Rmp) -> None:
    """Rule 1 / §1 authoritative 2M entry: every page reads the 2M entry with gpa = entry gpa + offset."""
    g = 0x4000_0000
    assert rmp.rmpupdate(region(1), assigned=True, page_size=M2, gpa=g, asid=4) == S.SUCCESS
    for k in (0, 1, 2, 255, 510, 511):
        e = rmp.rmpread(region(1) + page(k))
        assert e == RmpEntry(
            assigned=True,
            page_size=M2,
            immutable=False,
            gpa=g + page(k),
            asid=4,
            vmsa=False,
            validated=False,
            vmpl_perms=(PERM_ALL, 0, 0, 0),
        )
    assert rmp.rmpread(region(1) - page(1)) == RmpEntry()
    assert rmp.rmpread(region(2)) == RmpEntry()


def test_2m_validated_visible_on_every_page(rmp: Rmp) -> None:
    """Rule 1: rmpread of any page in a 2M entry returns the 2M entry's validated bit."""
    assign(rmp, region(2), M2, asid=1)
    assert rmp.pvalidate(region(2), asid=1, gpa=region(2) + GPA_OFFSET, page_size=M2, validate=True) == (
        S.SUCCESS,
        False,
    )
    assert all(rmp.rmpread(region(2) + page(k)).validated for k in range(PAGES_PER_2M))


def test_2m_over_assigned_4k_head_replaces_it(rmp: Rmp) -> None:
    """Rule 1: the 2M-aligned page itself being an assigned 4K entry is allowed and replaced."""
    assign(rmp, region(1), asid=5)
    assert rmp.rmpupdate(region(1), assigned=True, page_size=M2, gpa=0x20_0000, asid=6) == S.SUCCESS
    e = rmp.rmpread(region(1))
    assert (e.page_size, e.asid, e.gpa) == (M2, 6, 0x20_0000)
    assert rmp.rmpread(region(1) + page(9)).gpa == 0x20_0000 + page(9)


def test_2m_over_existing_2m_entry_replaces_it(rmp: Rmp) -> None:
    """Rule 1: a 2M request when the 2M-aligned entry already is a 2M entry succeeds (no overlap check)."""
    assign(rmp, region(0), M2, asid=1)
    assert rmp.rmpupdate(region(0), assigned=True, page_size=M2, gpa=0x40_0000, asid=2) == S.SUCCESS
    assert rmp.rmpread(page(300)).gpa == 0x40_0000 + page(300)
    assert rmp.rmpread(page(300)).asid == 2
    # and back to a hypervisor-owned 2M entry
    assert rmp.rmpupdate(region(0), assigned=False, page_size=M2) == S.SUCCESS
    for k in (0, 300, 511):
        e = rmp.rmpread(page(k))
        assert (e.assigned, e.page_size, e.asid, e.validated, e.vmpl_perms) == (False, M2, 0, False, (0, 0, 0, 0))


def test_4k_inside_unassigned_2m_demotes(rmp: Rmp) -> None:
    """Rule 1: a 4K request inside an UNASSIGNED 2M entry succeeds and demotes it to 4K entries."""
    assert rmp.rmpupdate(region(1), assigned=False, page_size=M2) == S.SUCCESS
    assert rmp.rmpread(region(1) + page(3)).page_size == M2
    assert rmp.rmpupdate(region(1) + page(3), assigned=True, gpa=0x9000, asid=2) == S.SUCCESS
    e = rmp.rmpread(region(1) + page(3))
    assert (e.assigned, e.page_size, e.gpa, e.asid) == (True, K4, 0x9000, 2)
    for k in (0, 1, 2, 4, 511):
        o = rmp.rmpread(region(1) + page(k))
        assert (o.assigned, o.page_size) == (False, K4)
    # the range is now 4K entries with an assigned one at offset 3 => a 2M request overlaps
    assert rmp.rmpupdate(region(1), assigned=True, page_size=M2, gpa=0, asid=2) == S.FAIL_OVERLAP


def test_4k_on_head_of_unassigned_2m_demotes(rmp: Rmp) -> None:
    """Rule 1 demotion also when the 4K request targets the 2M-aligned page itself."""
    assert rmp.rmpupdate(region(2), assigned=False, page_size=M2) == S.SUCCESS
    assign(rmp, region(2), asid=3)
    assert rmp.rmpread(region(2)).page_size == K4
    o = rmp.rmpread(region(2) + page(100))
    assert (o.assigned, o.page_size) == (False, K4)


# --------------------------------------------------------------------------- FAIL_INPUT


@pytest.mark.parametrize(
    ("spa", "kwargs"),
    [
        (page(1) + 1, {"assigned": True}),  # spa not 4K aligned
        (page(1) + 0x800, {"assigned": False}),
        (TABLE_END, {"assigned": True}),  # beyond the table
        (TABLE_END + region(3), {"assigned": False}),
        (region(4), {"assigned": True, "page_size": M2}),  # 2M range beyond
        (region(0), {"assigned": True, "page_size": PageSize.SIZE_1G}),  # size not 4K/2M
        (region(0), {"assigned": False, "page_size": PageSize.SIZE_1G}),
        (page(1), {"assigned": True, "page_size": M2}),  # 2M spa not aligned
        (region(1) + page(511), {"assigned": True, "page_size": M2}),
        (region(1), {"assigned": True, "page_size": M2, "gpa": 0x1000}),  # 2M gpa not aligned
        (region(1), {"assigned": True, "page_size": M2, "gpa": 0x30_0000}),
        (page(2), {"assigned": True, "gpa": 0x1234}),  # gpa not 4K aligned
        (page(2), {"assigned": True, "gpa": 0x10_0001, "asid": 1}),
        (page(2), {"assigned": False, "asid": 1}),  # shared with asid != 0
        (page(2), {"assigned": False, "immutable": True}),  # shared and immutable
        (region(1), {"assigned": False, "page_size": M2, "asid": 3}),
    ],
)
def test_fail_input(rmp: Rmp, spa: int, kwargs: dict[str, object]) -> None:
    """Rule 1 FAIL_INPUT cases (§3 'Alignment [I]', 'SPA beyond RMP coverage => FAIL_INPUT [I]', §10 item 2)."""
    assign(rmp, page(2), asid=1)  # some state that must not change
    before = [rmp.rmpread(a) for a in (page(1), page(2), region(1), region(1) + page(511))]
    assert rmp.rmpupdate(spa, **kwargs) == S.FAIL_INPUT  # type: ignore[arg-type]
    assert [rmp.rmpread(a) for a in (page(1), page(2), region(1), region(1) + page(511))] == before


def test_2m_range_partly_beyond_table_is_fail_input() -> None:
    """Rule 1: any page of a 2M request beyond the table => FAIL_INPUT (table not a multiple of 2M)."""
    r = Rmp(PAGES_PER_2M + 256)
    assert r.rmpupdate(region(1), assigned=True, page_size=M2, gpa=0, asid=1) == S.FAIL_INPUT
    assert r.rmpupdate(region(0), assigned=True, page_size=M2, gpa=0, asid=1) == S.SUCCESS
    assert r.rmpupdate(region(1) + page(255), assigned=True, gpa=0, asid=1) == S.SUCCESS
    assert r.rmpupdate(region(1) + page(256), assigned=True, gpa=0, asid=1) == S.FAIL_INPUT


def test_fail_input_has_priority_over_inuse(rmp: Rmp) -> None:
    """Rule 1 order: input checks first, then FAIL_INUSE."""
    rmp.mark_in_use(region(1))
    assert rmp.rmpupdate(region(1), assigned=True, page_size=M2, gpa=0x1000, asid=1) == S.FAIL_INPUT


# --------------------------------------------------------------------------- FAIL_INUSE


def test_fail_inuse_4k_and_clear(rmp: Rmp) -> None:
    """§3: VMRUN marks VMCB/VMSA in use; RMPUPDATE returns FAIL_INUSE until #VMEXIT clears it (Table 15-41)."""
    rmp.mark_in_use(page(12))
    assert rmp.rmpupdate(page(12), assigned=True, gpa=0, asid=1) == S.FAIL_INUSE
    assert rmp.rmpread(page(12)) == RmpEntry()
    assert rmp.rmpupdate(page(13), assigned=True, gpa=0, asid=1) == S.SUCCESS
    rmp.clear_in_use(page(12))
    assert rmp.rmpupdate(page(12), assigned=True, gpa=0, asid=1) == S.SUCCESS


def test_fail_inuse_any_page_of_2m_request(rmp: Rmp) -> None:
    """Rule 1: FAIL_INUSE if ANY target page of a 2M request is in use."""
    rmp.mark_in_use(region(1) + page(77))
    assert rmp.rmpupdate(region(1), assigned=True, page_size=M2, gpa=0, asid=1) == S.FAIL_INUSE
    assert rmp.rmpread(region(1)) == RmpEntry()
    rmp.clear_in_use(region(1) + page(77))
    assert rmp.rmpupdate(region(1), assigned=True, page_size=M2, gpa=0, asid=1) == S.SUCCESS


def test_inuse_has_priority_over_immutable(rmp: Rmp) -> None:
    """Rule 1 order: FAIL_INUSE before FAIL_PERMISSION."""
    assign(rmp, page(20), immutable=True)
    rmp.mark_in_use(page(20))
    assert rmp.rmpupdate(page(20), assigned=False) == S.FAIL_INUSE


# --------------------------------------------------------------------------- FAIL_PERMISSION (immutable)


def test_immutable_entry_cannot_be_changed(rmp: Rmp) -> None:
    """§2/§3: the hypervisor can enter an immutable state but not leave it => FAIL_PERMISSION."""
    assign(rmp, page(21), asid=2, immutable=True)
    before = rmp.rmpread(page(21))
    assert rmp.rmpupdate(page(21), assigned=False) == S.FAIL_PERMISSION
    assert rmp.rmpupdate(page(21), assigned=True, gpa=0, asid=2) == S.FAIL_PERMISSION
    assert rmp.rmpread(page(21)) == before


def test_2m_request_over_immutable_4k_page(rmp: Rmp) -> None:
    """Rule 1: FAIL_PERMISSION if the current entry of ANY target page is immutable (checked before overlap)."""
    assign(rmp, region(1) + page(40), immutable=True)
    assert rmp.rmpupdate(region(1), assigned=True, page_size=M2, gpa=0, asid=1) == S.FAIL_PERMISSION


def test_4k_inside_immutable_2m_is_permission_not_overlap(rmp: Rmp) -> None:
    """Rule 1 order: the authoritative (2M) entry is immutable => FAIL_PERMISSION before FAIL_OVERLAP."""
    assign(rmp, region(2), M2, immutable=True)
    assert rmp.rmpupdate(region(2) + page(5), assigned=False) == S.FAIL_PERMISSION
    assert rmp.rmpupdate(region(2), assigned=True, page_size=M2, gpa=0, asid=1) == S.FAIL_PERMISSION


# --------------------------------------------------------------------------- FAIL_OVERLAP


@pytest.mark.parametrize("k", [0, 1, 256, 511])
def test_4k_inside_assigned_2m_overlaps(rmp: Rmp, k: int) -> None:
    """§3 [I]/rule 1: 4K RMPUPDATE inside an assigned 2M entry => FAIL_OVERLAP (KVM PSMASHes first)."""
    assign(rmp, region(1), M2, asid=3)
    before = rmp.rmpread(region(1) + page(k))
    assert rmp.rmpupdate(region(1) + page(k), assigned=False) == S.FAIL_OVERLAP
    assert rmp.rmpupdate(region(1) + page(k), assigned=True, gpa=0, asid=3) == S.FAIL_OVERLAP
    assert rmp.rmpread(region(1) + page(k)) == before


@pytest.mark.parametrize("k", [1, 2, 300, 511])
def test_2m_over_assigned_4k_overlaps(rmp: Rmp, k: int) -> None:
    """§3 [I]/rule 1: 2M RMPUPDATE over a range with another assigned 4K entry => FAIL_OVERLAP
    (KVM is_large_rmp_possible requires all 512 PFNs unassigned)."""
    assign(rmp, region(1) + page(k), asid=1)
    assert rmp.rmpupdate(region(1), assigned=True, page_size=M2, gpa=GPA_OFFSET, asid=1) == S.FAIL_OVERLAP
    assert rmp.rmpupdate(region(1), assigned=False, page_size=M2) == S.FAIL_OVERLAP
    assert rmp.rmpread(region(1)) == RmpEntry()
    assert rmp.rmpread(region(1) + page(k)).assigned


def test_2m_after_psmash_overlaps_then_reassembles_when_cleared(rmp: Rmp) -> None:
    """§4 / rule 1: after PSMASH the range is 512 assigned 4K entries, so a 2M RMPUPDATE overlaps until the
    other 511 pages are made shared."""
    assign(rmp, region(1), M2, asid=1)
    assert rmp.psmash(region(1)) == S.SUCCESS
    assert rmp.rmpupdate(region(1), assigned=True, page_size=M2, gpa=GPA_OFFSET, asid=1) == S.FAIL_OVERLAP
    for k in range(1, PAGES_PER_2M):
        assert rmp.rmpupdate(region(1) + page(k), assigned=False) == S.SUCCESS
    assert rmp.rmpupdate(region(1), assigned=True, page_size=M2, gpa=GPA_OFFSET, asid=1) == S.SUCCESS


# --------------------------------------------------------------------------- lazy segments


def test_1tib_table_is_lazy() -> None:
    """DESIGN.md: Rmp(npages) must model a large host; §1 'all entries start zero' must not be materialised.
    1 TiB = 268435456 pages; an eager table would need >= 256 MiB even at one byte per page."""
    npages = 1 << 28
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        r = Rmp(npages)
        elapsed = time.perf_counter() - t0
        _, peak_construct = tracemalloc.get_traced_memory()
        end = npages * 4096
        spas = [0, region(1000), end // 2, end - region(1)]
        for spa in spas:
            assert r.rmpupdate(spa, assigned=True, page_size=M2, gpa=spa, asid=1) == S.SUCCESS
            neighbour = spa + region(1) if spa + region(1) < end else spa - page(1)
            assert r.rmpupdate(neighbour, assigned=True, gpa=0, asid=2) == S.SUCCESS
        for spa in spas:
            assert r.rmpread(spa + page(3)).gpa == spa + page(3)
        assert r.rmpread(end - page(1)) != RmpEntry()
        assert r.rmpread(end) == RmpEntry()
        assert r.rmpread(end // 4) == RmpEntry()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak_construct < 16 * 2**20
    assert peak < 64 * 2**20
