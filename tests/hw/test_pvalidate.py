"""PVALIDATE conformance (amd-snp-arch.md §5, §7 error-code bits, §8; brief rule 4)."""

from __future__ import annotations

import pytest
from rmp_testlib import GPA_OFFSET, TABLE_END, page, region

from snpsim.hw import NestedPageFault, PageSize, Rmp, RmpStatus
from snpsim.hw.types import NPF_RMP, NPF_SIZEM, PAGES_PER_2M

S = RmpStatus
K4 = PageSize.SIZE_4K
M2 = PageSize.SIZE_2M
ASID = 5


def assign(rmp: Rmp, spa: int, size: PageSize = K4, asid: int = ASID, immutable: bool = False) -> None:
    assert (
        rmp.rmpupdate(spa, assigned=True, page_size=size, gpa=spa + GPA_OFFSET, asid=asid, immutable=immutable)
        == S.SUCCESS
    )


def pv(rmp: Rmp, spa: int, size: PageSize = K4, validate: bool = True, **kw: int) -> tuple[RmpStatus, bool]:
    args: dict[str, int] = {"asid": ASID, "gpa": spa + GPA_OFFSET}
    args.update(kw)
    return rmp.pvalidate(spa, page_size=size, validate=validate, **args)  # type: ignore[arg-type]


def expect_npf(rmp: Rmp, spa: int, size: PageSize, *, sizem: bool, **kw: int) -> NestedPageFault:
    gpa = kw.get("gpa", spa + GPA_OFFSET)
    with pytest.raises(NestedPageFault) as ei:
        pv(rmp, spa, size, **kw)
    e = ei.value
    assert e.exit_info1 & NPF_RMP
    assert bool(e.exit_info1 & NPF_SIZEM) == sizem
    assert e.gpa == gpa
    return e


# --------------------------------------------------------------------------- success / CF


def test_validate_and_rescind_4k_cf_semantics(rmp: Rmp) -> None:
    """§5: rFLAGS.CF = 1 <=> Validated unchanged; SUCCESS either way; validate then rescind."""
    spa = page(8)
    assign(rmp, spa)
    assert pv(rmp, spa) == (S.SUCCESS, False)
    assert rmp.rmpread(spa).validated
    assert pv(rmp, spa) == (S.SUCCESS, True)
    assert pv(rmp, spa, validate=False) == (S.SUCCESS, False)
    assert not rmp.rmpread(spa).validated
    assert pv(rmp, spa, validate=False) == (S.SUCCESS, True)


def test_rescind_of_fresh_assigned_page_is_unchanged(rmp: Rmp) -> None:
    """§5: pages start unvalidated when assigned (15.36.6), so rescind reports CF=1."""
    assign(rmp, page(9))
    assert pv(rmp, page(9), validate=False) == (S.SUCCESS, True)


def test_validate_only_touches_its_page(rmp: Rmp) -> None:
    """§5: 4K PVALIDATE changes one RMP entry."""
    assign(rmp, page(1))
    assign(rmp, page(2))
    assert pv(rmp, page(1)) == (S.SUCCESS, False)
    assert not rmp.rmpread(page(2)).validated


def test_validate_2m_sets_all_512_pages(rmp: Rmp) -> None:
    """Rule 4: for a 2M entry Validated is set on all 512 pages."""
    assign(rmp, region(1), M2)
    assert pv(rmp, region(1), M2) == (S.SUCCESS, False)
    assert all(rmp.rmpread(region(1) + page(k)).validated for k in range(PAGES_PER_2M))
    assert pv(rmp, region(1), M2) == (S.SUCCESS, True)
    assert pv(rmp, region(1), M2, validate=False) == (S.SUCCESS, False)
    assert not any(rmp.rmpread(region(1) + page(k)).validated for k in (0, 1, 511))


def test_rmpupdate_after_validate_leaves_page_unvalidated(rmp: Rmp) -> None:
    """§3/§8 [V-tr 15.36.6]: re-assign by RMPUPDATE clears Validated => next PVALIDATE changes it again."""
    assign(rmp, page(4))
    assert pv(rmp, page(4)) == (S.SUCCESS, False)
    assign(rmp, page(4))
    assert pv(rmp, page(4)) == (S.SUCCESS, False)


def test_psmash_then_4k_pvalidate(rmp: Rmp) -> None:
    """§4 KVM flow: 4K PVALIDATE on a 2M entry => NPF(SIZEM); HV PSMASHes; guest retries at 4K (Validated kept)."""
    assign(rmp, region(2), M2)
    assert pv(rmp, region(2), M2) == (S.SUCCESS, False)
    expect_npf(rmp, region(2) + page(3), K4, sizem=True, validate=False)
    assert rmp.psmash(region(2)) == S.SUCCESS
    assert pv(rmp, region(2) + page(3), validate=False) == (S.SUCCESS, False)
    assert not rmp.rmpread(region(2) + page(3)).validated
    assert rmp.rmpread(region(2) + page(4)).validated


# --------------------------------------------------------------------------- FAIL_INPUT / FAIL_PERMISSION


@pytest.mark.parametrize(
    ("spa", "size", "gpa_delta"),
    [
        (region(1), PageSize.SIZE_1G, 0),
        (region(1) + page(1), M2, 0),  # spa not 2M aligned (gpa is then not aligned either)
        (region(1), M2, page(1)),  # gpa not aligned
        (region(1), M2, page(256)),
    ],
)
def test_fail_input(rmp: Rmp, spa: int, size: PageSize, gpa_delta: int) -> None:
    """Rule 4 / §5 [I]: size not 4K/2M or 2M with an unaligned gpa => (FAIL_INPUT, False), no change."""
    assign(rmp, region(1), M2)
    before = rmp.rmpread(spa)
    assert pv(rmp, spa, size, gpa=spa + GPA_OFFSET + gpa_delta) == (S.FAIL_INPUT, False)
    assert rmp.rmpread(spa) == before


def test_2m_request_with_aligned_gpa_on_unaligned_spa_is_not_an_input_error(rmp: Rmp) -> None:
    """§5: PVALIDATE's operand is a guest address, so only the GPA must be 2M-aligned (rmp.py assumption
    ``guest-instr-align``). An SPA inside a 2M entry then fails the Reverse-Map check (the entry's GPA for that
    page is gpa + offset) => #NPF with RMP; an SPA on a 4K entry fails the size check => FAIL_SIZEMISMATCH
    (Table 15-40), which is what a guest meets when a 2M-aligned GPA is mapped by 4K NPT entries to scattered
    frames."""
    assign(rmp, region(1), M2)
    with pytest.raises(NestedPageFault) as exc:
        pv(rmp, region(1) + page(1), M2, gpa=region(1) + GPA_OFFSET)
    assert exc.value.exit_info1 & NPF_RMP
    spa4k = region(2) + page(3)
    assert rmp.rmpupdate(spa4k, assigned=True, gpa=region(5) + GPA_OFFSET, asid=ASID) == S.SUCCESS
    assert pv(rmp, spa4k, M2, gpa=region(5) + GPA_OFFSET) == (S.FAIL_SIZEMISMATCH, False)
    assert not rmp.rmpread(spa4k).validated


def test_fail_input_before_rmp_checks(rmp: Rmp) -> None:
    """Rule 4 order: input checks come before the RMP checks (no NPF on a hypervisor page)."""
    assert pv(rmp, page(1), M2) == (S.FAIL_INPUT, False)
    assert pv(rmp, TABLE_END + page(1), M2) == (S.FAIL_INPUT, False)


@pytest.mark.parametrize("vmpl", [1, 2, 3])
def test_not_vmpl0_is_fail_permission(rmp: Rmp, vmpl: int) -> None:
    """§5 'PVALIDATE can only be performed at VMPL0'; rule 4: vmpl != 0 => FAIL_PERMISSION, no change,
    checked before the RMP checks."""
    assign(rmp, page(3))
    assert rmp.pvalidate(page(3), asid=ASID, gpa=page(3) + GPA_OFFSET, page_size=K4, validate=True, vmpl=vmpl) == (
        S.FAIL_PERMISSION,
        False,
    )
    assert not rmp.rmpread(page(3)).validated
    # hypervisor-owned page: still FAIL_PERMISSION rather than #NPF
    assert rmp.pvalidate(page(50), asid=ASID, gpa=0, page_size=K4, validate=True, vmpl=vmpl) == (
        S.FAIL_PERMISSION,
        False,
    )


# --------------------------------------------------------------------------- #NPF (RMP checks)


def test_npf_hypervisor_owned(rmp: Rmp) -> None:
    """§5 [I]: Assigned=0 => #VMEXIT(NPF) with the RMP bit (31), SIZEM clear; EXITINFO2 = the GPA."""
    expect_npf(rmp, page(6), K4, sizem=False)


def test_npf_beyond_table(rmp: Rmp) -> None:
    """§1 uncovered pages are hypervisor-owned => NPF RMP (rule 4)."""
    expect_npf(rmp, TABLE_END, K4, sizem=False)
    expect_npf(rmp, TABLE_END + region(2), M2, sizem=False)


def test_npf_immutable(rmp: Rmp) -> None:
    """§5 [I]: Immutable=1 => NPF RMP (pre-guest state, §2)."""
    assign(rmp, page(6), immutable=True)
    expect_npf(rmp, page(6), K4, sizem=False)
    assert not rmp.rmpread(page(6)).validated


def test_npf_asid_mismatch(rmp: Rmp) -> None:
    """§5 [I]: ASID != guest ASID => NPF RMP."""
    assign(rmp, page(6))
    expect_npf(rmp, page(6), K4, sizem=False, asid=ASID + 1)
    assert not rmp.rmpread(page(6)).validated


def test_npf_gpa_mismatch(rmp: Rmp) -> None:
    """§5 [I] / §7 Reverse-Map: GPA != translated GPA => NPF RMP (EXITINFO2 is the argument GPA)."""
    assign(rmp, page(6))
    e = expect_npf(rmp, page(6), K4, sizem=False, gpa=page(7) + GPA_OFFSET)
    assert e.gpa == page(7) + GPA_OFFSET


def test_npf_gpa_mismatch_2m(rmp: Rmp) -> None:
    """Rule 4: a 2M request with the wrong (aligned) GPA fails the Reverse-Map check."""
    assign(rmp, region(1), M2)
    expect_npf(rmp, region(1), M2, sizem=False, gpa=region(2) + GPA_OFFSET)


def test_ownership_checks_before_size(rmp: Rmp) -> None:
    """Rule 4 order: ownership NPF (no SIZEM) before the size rules."""
    assign(rmp, region(1), M2)
    expect_npf(rmp, region(1) + page(2), K4, sizem=False, asid=ASID + 1)
    assign(rmp, page(3))
    expect_npf(rmp, region(0), M2, sizem=False)  # head hypervisor-owned: NPF, not FAIL_SIZEMISMATCH


# --------------------------------------------------------------------------- size mismatch (Table 15-40)


@pytest.mark.parametrize("k", [0, 1, 511])
def test_4k_request_on_2m_entry_is_npf_sizem(rmp: Rmp, k: int) -> None:
    """§5 Table 15-40: request 4K on a 2M RMP entry => #VMEXIT(NPF) with SIZEM; Validated unchanged."""
    assign(rmp, region(1), M2)
    expect_npf(rmp, region(1) + page(k), K4, sizem=True)
    assert not rmp.rmpread(region(1) + page(k)).validated


def test_2m_request_on_4k_entry_is_fail_sizemismatch(rmp: Rmp) -> None:
    """§5 Table 15-40: request 2M on 4K RMP entries => EAX FAIL_SIZEMISMATCH (6), CF clear; guest falls back."""
    for k in range(PAGES_PER_2M):
        assign(rmp, region(2) + page(k))
    assert pv(rmp, region(2), M2) == (S.FAIL_SIZEMISMATCH, False)
    assert not rmp.rmpread(region(2)).validated
    for k in range(PAGES_PER_2M):
        assert pv(rmp, region(2) + page(k)) == (S.SUCCESS, False)
