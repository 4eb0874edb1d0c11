"""RMPADJUST conformance (amd-snp-arch.md §1 masks, §6 RMPADJUST, §5 size rules; brief rule 5)."""

from __future__ import annotations

import pytest
from rmp_testlib import GPA_OFFSET, TABLE_END, page, region

from snpsim.hw import NestedPageFault, PageSize, Rmp, RmpStatus
from snpsim.hw.types import (
    NPF_RMP,
    NPF_SIZEM,
    PAGES_PER_2M,
    PERM_ALL,
    PERM_EXEC_SUPERVISOR,
    PERM_EXEC_USER,
    PERM_READ,
    PERM_WRITE,
)

S = RmpStatus
K4 = PageSize.SIZE_4K
M2 = PageSize.SIZE_2M
ASID = 3
RW = PERM_READ | PERM_WRITE


def assign(rmp: Rmp, spa: int, size: PageSize = K4, asid: int = ASID, immutable: bool = False) -> None:
    assert (
        rmp.rmpupdate(spa, assigned=True, page_size=size, gpa=spa + GPA_OFFSET, asid=asid, immutable=immutable)
        == S.SUCCESS
    )


def adj(
    rmp: Rmp,
    spa: int,
    *,
    vmpl: int = 0,
    target: int = 1,
    perms: int = RW,
    size: PageSize = K4,
    vmsa: bool = False,
    **kw: int,
) -> RmpStatus:
    args: dict[str, int] = {"asid": ASID, "gpa": spa + GPA_OFFSET}
    args.update(kw)
    return rmp.rmpadjust(spa, page_size=size, vmpl=vmpl, target_vmpl=target, perms=perms, vmsa=vmsa, **args)  # type: ignore[arg-type]


def expect_npf(rmp: Rmp, spa: int, *, sizem: bool, **kw: int) -> None:
    gpa = kw.get("gpa", spa + GPA_OFFSET)
    with pytest.raises(NestedPageFault) as ei:
        adj(rmp, spa, **kw)  # type: ignore[arg-type]
    assert ei.value.exit_info1 & NPF_RMP
    assert bool(ei.value.exit_info1 & NPF_SIZEM) == sizem
    assert ei.value.gpa == gpa


# --------------------------------------------------------------------------- success


def test_vmpl0_grants_lower_vmpls(rmp: Rmp) -> None:
    """§6: VMPL0 may set the masks of higher VMPLs; §1 masks start (0x1F, 0, 0, 0)."""
    assign(rmp, page(2))
    assert adj(rmp, page(2), target=1, perms=0x0B) == S.SUCCESS
    assert adj(rmp, page(2), target=3, perms=PERM_ALL) == S.SUCCESS
    assert rmp.rmpread(page(2)).vmpl_perms == (PERM_ALL, 0x0B, 0, PERM_ALL)
    # lowering permissions is also an RMPADJUST (15.36.15)
    assert adj(rmp, page(2), target=1, perms=0) == S.SUCCESS
    assert rmp.rmpread(page(2)).vmpl_perms == (PERM_ALL, 0, 0, PERM_ALL)


def test_vmpl1_grants_subset_to_vmpl2(rmp: Rmp) -> None:
    """§6: a VMPL may modify a numerically higher VMPL with a subset of its own permissions."""
    assign(rmp, page(2))
    assert adj(rmp, page(2), target=1, perms=PERM_READ | PERM_WRITE | PERM_EXEC_SUPERVISOR) == S.SUCCESS
    assert adj(rmp, page(2), vmpl=1, target=2, perms=PERM_READ | PERM_EXEC_SUPERVISOR) == S.SUCCESS
    assert adj(rmp, page(2), vmpl=1, target=3, perms=PERM_READ) == S.SUCCESS
    assert rmp.rmpread(page(2)).vmpl_perms == (PERM_ALL, 0x0B, 0x09, 0x01)


def test_rmpadjust_does_not_touch_validated(rmp: Rmp) -> None:
    """§1: RMPADJUST writes only masks (+VMSA); Validated is PVALIDATE's."""
    assign(rmp, page(2))
    assert rmp.pvalidate(page(2), asid=ASID, gpa=page(2) + GPA_OFFSET, page_size=K4, validate=True) == (
        S.SUCCESS,
        False,
    )
    assert adj(rmp, page(2)) == S.SUCCESS
    e = rmp.rmpread(page(2))
    assert e.validated and e.assigned and e.asid == ASID


def test_2m_sets_all_pages(rmp: Rmp) -> None:
    """Rule 5: success on a 2M entry sets vmpl_perms[target] on all 512 pages."""
    assign(rmp, region(1), M2)
    assert adj(rmp, region(1), size=M2, target=2, perms=0x3) == S.SUCCESS
    assert all(rmp.rmpread(region(1) + page(k)).vmpl_perms == (PERM_ALL, 0, 0x3, 0) for k in range(PAGES_PER_2M))


# --------------------------------------------------------------------------- VMSA bit


def test_vmsa_set_at_vmpl0(rmp: Rmp) -> None:
    """§6: RDX bit 16 VMSA honoured at VMPL0 (Linux snp_set_vmsa targets VMPL1)."""
    assign(rmp, page(4))
    assert adj(rmp, page(4), target=1, perms=0, vmsa=True) == S.SUCCESS
    assert rmp.rmpread(page(4)).vmsa


def test_vmsa_ignored_above_vmpl0(rmp: Rmp) -> None:
    """§6: VMSA 'ignored when the current VMPL != 0' (rule 5)."""
    assign(rmp, page(4))
    assert adj(rmp, page(4), target=1, perms=PERM_ALL) == S.SUCCESS
    assert adj(rmp, page(4), vmpl=1, target=2, perms=RW, vmsa=True) == S.SUCCESS
    e = rmp.rmpread(page(4))
    assert not e.vmsa
    assert e.vmpl_perms == (PERM_ALL, PERM_ALL, RW, 0)


def test_vmsa_false_at_vmpl0_clears_bit(rmp: Rmp) -> None:
    """§6: the VMSA attribute is RDX bit 16, written by RMPADJUST at VMPL0; Linux snp_set_vmsa(..., false)
    clears a VMSA page with attrs = 1 (target VMPL1, bit 16 clear)."""
    assign(rmp, page(4))
    assert adj(rmp, page(4), target=1, perms=0, vmsa=True) == S.SUCCESS
    assert adj(rmp, page(4), target=1, perms=0, vmsa=False) == S.SUCCESS
    assert not rmp.rmpread(page(4)).vmsa


def test_vmsa_with_2m_is_fail_input(rmp: Rmp) -> None:
    """Rule 5: vmsa with a 2M page_size => FAIL_INPUT (a VMSA is one 4K page)."""
    assign(rmp, region(2), M2)
    assert adj(rmp, region(2), size=M2, vmsa=True) == S.FAIL_INPUT
    e = rmp.rmpread(region(2))
    assert not e.vmsa and e.vmpl_perms == (PERM_ALL, 0, 0, 0)


# --------------------------------------------------------------------------- FAIL_INPUT


@pytest.mark.parametrize("perms", [0x20, 0x40, 0x80, 0xE0, 0x21, 0xFF])
def test_reserved_perm_bits_fail_input(rmp: Rmp, perms: int) -> None:
    """§1 Table 15-36: mask bits 7:5 reserved (SBZ) => FAIL_INPUT (rule 5)."""
    assign(rmp, page(5))
    assert adj(rmp, page(5), perms=perms) == S.FAIL_INPUT
    assert rmp.rmpread(page(5)).vmpl_perms == (PERM_ALL, 0, 0, 0)


@pytest.mark.parametrize("target", [4, 5, 255])
def test_target_vmpl_out_of_range_fail_input(rmp: Rmp, target: int) -> None:
    """Rule 5: target_vmpl > 3 => FAIL_INPUT (SNP implements VMPL0..3)."""
    assign(rmp, page(5))
    assert adj(rmp, page(5), target=target) == S.FAIL_INPUT


@pytest.mark.parametrize(
    ("spa", "gpa_delta"),
    [(region(1) + page(1), 0), (region(1), page(1)), (region(1), page(511))],
)
def test_2m_alignment_fail_input(rmp: Rmp, spa: int, gpa_delta: int) -> None:
    """Rule 5: 2M GPA alignment as for PVALIDATE (§5 [I], ``guest-instr-align``) => FAIL_INPUT."""
    assign(rmp, region(1), M2)
    assert adj(rmp, spa, size=M2, gpa=spa + GPA_OFFSET + gpa_delta) == S.FAIL_INPUT
    assert rmp.rmpread(region(1)).vmpl_perms == (PERM_ALL, 0, 0, 0)


# --------------------------------------------------------------------------- FAIL_PERMISSION


@pytest.mark.parametrize(("vmpl", "target"), [(0, 0), (1, 1), (2, 1), (3, 0), (3, 3), (2, 2)])
def test_target_not_higher_fail_permission(rmp: Rmp, vmpl: int, target: int) -> None:
    """§6: may only modify a numerically higher VMPL => FAIL_PERMISSION (Linux relies on it, targets VMPL1)."""
    assign(rmp, page(6))
    for v in (1, 2, 3):
        assert adj(rmp, page(6), target=v, perms=PERM_ALL) == S.SUCCESS
    assert adj(rmp, page(6), vmpl=vmpl, target=target, perms=0) == S.FAIL_PERMISSION


def test_cannot_grant_more_than_own(rmp: Rmp) -> None:
    """§6: 'cannot grant permissions the current VMPL lacks' => FAIL_PERMISSION; masks unchanged."""
    assign(rmp, page(6))
    assert adj(rmp, page(6), target=1, perms=PERM_READ | PERM_EXEC_SUPERVISOR) == S.SUCCESS
    assert adj(rmp, page(6), vmpl=1, target=2, perms=PERM_EXEC_USER) == S.FAIL_PERMISSION
    assert adj(rmp, page(6), vmpl=1, target=2, perms=PERM_READ | PERM_WRITE) == S.FAIL_PERMISSION
    assert adj(rmp, page(6), vmpl=2, target=3, perms=PERM_READ) == S.FAIL_PERMISSION  # VMPL2 has nothing
    assert rmp.rmpread(page(6)).vmpl_perms == (PERM_ALL, 0x09, 0, 0)


def test_fail_input_before_fail_permission(rmp: Rmp) -> None:
    """Rule 5 order: reserved bits / bad target (FAIL_INPUT) before target <= vmpl (FAIL_PERMISSION)."""
    assign(rmp, page(6))
    assert adj(rmp, page(6), vmpl=1, target=1, perms=0x80) == S.FAIL_INPUT
    assert adj(rmp, page(6), vmpl=3, target=4, perms=0) == S.FAIL_INPUT


# --------------------------------------------------------------------------- RMP checks and size rules


def test_npf_hypervisor_owned(rmp: Rmp) -> None:
    """Rule 5: ownership checks exactly as PVALIDATE (§5 [I]) => NPF RMP, no SIZEM."""
    expect_npf(rmp, page(7), sizem=False, perms=0)


def test_npf_beyond_table(rmp: Rmp) -> None:
    """§1 uncovered => hypervisor-owned => NPF RMP."""
    expect_npf(rmp, TABLE_END + page(3), sizem=False, perms=0)


def test_npf_asid_gpa_immutable(rmp: Rmp) -> None:
    """Rule 5 / §5 [I]: ASID mismatch, GPA mismatch, Immutable => NPF RMP."""
    assign(rmp, page(7))
    expect_npf(rmp, page(7), sizem=False, perms=0, asid=ASID + 1)
    expect_npf(rmp, page(7), sizem=False, perms=0, gpa=GPA_OFFSET + page(8))
    assign(rmp, page(8), immutable=True)
    expect_npf(rmp, page(8), sizem=False, perms=0)
    assert rmp.rmpread(page(7)).vmpl_perms == (PERM_ALL, 0, 0, 0)


@pytest.mark.parametrize("k", [0, 5, 511])
def test_4k_on_2m_entry_npf_sizem(rmp: Rmp, k: int) -> None:
    """§6 'Size mismatch as for PVALIDATE (Table 15-40)': 4K request on 2M entry => NPF RMP|SIZEM."""
    assign(rmp, region(1), M2)
    expect_npf(rmp, region(1) + page(k), sizem=True)
    assert rmp.rmpread(region(1) + page(k)).vmpl_perms == (PERM_ALL, 0, 0, 0)


def test_2m_on_4k_entry_fail_sizemismatch(rmp: Rmp) -> None:
    """§6 / Table 15-40: 2M request on a 4K entry => FAIL_SIZEMISMATCH (6)."""
    assign(rmp, region(2))
    assert adj(rmp, region(2), size=M2) == S.FAIL_SIZEMISMATCH
    assert rmp.rmpread(region(2)).vmpl_perms == (PERM_ALL, 0, 0, 0)


def test_after_psmash_4k_adjust_works(rmp: Rmp) -> None:
    """§4 KVM flow: SIZEM NPF => PSMASH => the 4K RMPADJUST succeeds, masks copied by PSMASH (15.36.11)."""
    assign(rmp, region(3), M2)
    assert adj(rmp, region(3), size=M2, target=1, perms=PERM_READ) == S.SUCCESS
    expect_npf(rmp, region(3) + page(2), sizem=True, target=2, perms=0)
    assert rmp.psmash(region(3)) == S.SUCCESS
    assert adj(rmp, region(3) + page(2), target=2, perms=RW) == S.SUCCESS
    assert rmp.rmpread(region(3) + page(2)).vmpl_perms == (PERM_ALL, PERM_READ, RW, 0)
    assert rmp.rmpread(region(3) + page(3)).vmpl_perms == (PERM_ALL, PERM_READ, 0, 0)
