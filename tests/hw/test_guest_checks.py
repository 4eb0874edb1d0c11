"""Hardware RMP checks on guest accesses (amd-snp-arch.md §7 Table 15-39 guest rows + error-code bits, §8 #VC
PAGE_NOT_VALIDATED; brief rule 7)."""

from __future__ import annotations

import pytest
from rmp_testlib import GPA_OFFSET, TABLE_END, page, region

from snpsim.hw import NestedPageFault, PageSize, Rmp, RmpStatus, VmmCommunicationException
from snpsim.hw.types import (
    NPF_ENC,
    NPF_FETCH,
    NPF_RMP,
    NPF_VMPL,
    NPF_WRITE,
    PERM_EXEC_SUPERVISOR,
    PERM_EXEC_USER,
    PERM_READ,
    PERM_WRITE,
)

S = RmpStatus
K4 = PageSize.SIZE_4K
M2 = PageSize.SIZE_2M
G1 = PageSize.SIZE_1G
ASID = 2
ACCESSES = [(False, False), (True, False), (False, True)]  # (write, fetch): read, write, fetch
ACCESS_IDS = ["read", "write", "fetch"]


def private_page(rmp: Rmp, spa: int, size: PageSize = K4, *, validate: bool = True, asid: int = ASID) -> None:
    """Guest-Valid (§2): assigned to ``asid`` at GPA spa + GPA_OFFSET, validated at VMPL0."""
    gpa = spa + GPA_OFFSET
    assert rmp.rmpupdate(spa, assigned=True, page_size=size, gpa=gpa, asid=asid) == S.SUCCESS
    if validate:
        assert rmp.pvalidate(spa, asid=asid, gpa=gpa, page_size=size, validate=True) == (S.SUCCESS, False)


def access(rmp: Rmp, spa: int, **kw: object) -> None:
    args: dict[str, object] = {"asid": ASID, "gpa": spa + GPA_OFFSET, "npt_size": K4}
    args.update(kw)
    rmp.check_guest_access(spa, **args)  # type: ignore[arg-type]


def expect_npf(rmp: Rmp, spa: int, **kw: object) -> int:
    gpa = kw.get("gpa", spa + GPA_OFFSET)
    with pytest.raises(NestedPageFault) as ei:
        access(rmp, spa, **kw)
    assert ei.value.exit_info1 & NPF_RMP
    assert ei.value.gpa == gpa  # EXITINFO2 = faulting GPA (§7)
    return ei.value.exit_info1


def expect_private_npf(rmp: Rmp, spa: int, write: bool = False, fetch: bool = False, **kw: object) -> None:
    """Rule 7: ownership/size failure of a private access => NPF_RMP|NPF_ENC (|WRITE, |FETCH), not VMPL."""
    info = expect_npf(rmp, spa, write=write, fetch=fetch, **kw)
    assert info & NPF_ENC
    assert bool(info & NPF_WRITE) == write
    assert bool(info & NPF_FETCH) == fetch
    assert not info & NPF_VMPL


def expect_vc(rmp: Rmp, spa: int, **kw: object) -> None:
    gpa = kw.get("gpa", spa + GPA_OFFSET)
    with pytest.raises(VmmCommunicationException) as ei:
        access(rmp, spa, **kw)
    assert ei.value.error_code == 0x404
    assert ei.value.gpa == gpa


# --------------------------------------------------------------------------- passing accesses


@pytest.mark.parametrize(("write", "fetch"), ACCESSES, ids=ACCESS_IDS)
def test_guest_valid_page_all_accesses_pass(rmp: Rmp, write: bool, fetch: bool) -> None:
    """§7: all checks pass for an assigned, own-ASID, matching-GPA, mutable, validated page with VMPL0 perms."""
    private_page(rmp, page(4))
    access(rmp, page(4), write=write, fetch=fetch)
    access(rmp, page(4) + 0x123, gpa=page(4) + GPA_OFFSET + 0x123, write=write, fetch=fetch)


def test_gpa_compare_is_page_granular(rmp: Rmp) -> None:
    """Rule 7: Reverse-Map compares the page's GPA with the argument at page granularity."""
    private_page(rmp, page(4))
    access(rmp, page(4), gpa=page(4) + GPA_OFFSET + 0xFFF)
    access(rmp, page(4) + 0x10, gpa=page(4) + GPA_OFFSET + 0x20)


@pytest.mark.parametrize("npt", [M2, G1])
@pytest.mark.parametrize("k", [0, 1, 511])
def test_2m_entry_with_large_npt_passes(rmp: Rmp, npt: PageSize, k: int) -> None:
    """§7 Page-Size: NPT 2MB/1GB requires RMP Page_Size=1; GPA of page k = entry GPA + k*4K."""
    private_page(rmp, region(1), M2)
    spa = region(1) + page(k)
    access(rmp, spa, npt_size=npt, write=True)
    access(rmp, spa, npt_size=npt, fetch=True)


# --------------------------------------------------------------------------- ownership failures => NPF


@pytest.mark.parametrize(("write", "fetch"), ACCESSES, ids=ACCESS_IDS)
def test_hypervisor_owned_page(rmp: Rmp, write: bool, fetch: bool) -> None:
    """§7 Guest-Owned check (Assigned=0) => #VMEXIT(NPF) with RMP and ENC (effective C=1)."""
    expect_private_npf(rmp, page(6), write=write, fetch=fetch)


@pytest.mark.parametrize(("write", "fetch"), ACCESSES, ids=ACCESS_IDS)
def test_beyond_table(rmp: Rmp, write: bool, fetch: bool) -> None:
    """§7 RMP-Covered check => NPF."""
    expect_private_npf(rmp, TABLE_END + page(2), write=write, fetch=fetch)


@pytest.mark.parametrize(("write", "fetch"), ACCESSES, ids=ACCESS_IDS)
def test_asid_mismatch(rmp: Rmp, write: bool, fetch: bool) -> None:
    """§7 Guest-Owned: RMP.ASID = current ASID; another guest's page => NPF."""
    private_page(rmp, page(6), asid=ASID + 1)
    expect_private_npf(rmp, page(6), write=write, fetch=fetch)


@pytest.mark.parametrize(("write", "fetch"), ACCESSES, ids=ACCESS_IDS)
def test_gpa_mismatch(rmp: Rmp, write: bool, fetch: bool) -> None:
    """§7 Reverse-Map: RMP.GPA = translated GPA, else NPF (remapping detection, §8)."""
    private_page(rmp, page(6))
    expect_private_npf(rmp, page(6), write=write, fetch=fetch, gpa=page(7) + GPA_OFFSET)


@pytest.mark.parametrize(("write", "fetch"), ACCESSES, ids=ACCESS_IDS)
def test_immutable(rmp: Rmp, write: bool, fetch: bool) -> None:
    """§7 Mutable check: Immutable=1 (e.g. Pre-Guest, §2) => NPF."""
    assert rmp.rmpupdate(page(6), assigned=True, gpa=page(6) + GPA_OFFSET, asid=ASID, immutable=True) == S.SUCCESS
    expect_private_npf(rmp, page(6), write=write, fetch=fetch)


@pytest.mark.parametrize("npt", [M2, G1])
def test_large_npt_on_4k_entry(rmp: Rmp, npt: PageSize) -> None:
    """§7 Page-Size (exact match both ways): NPT 2M/1G on a 4K RMP entry => NPF."""
    private_page(rmp, page(6))
    expect_private_npf(rmp, page(6), npt_size=npt)


@pytest.mark.parametrize("k", [0, 3, 511])
def test_4k_npt_on_2m_entry(rmp: Rmp, k: int) -> None:
    """§7 Page-Size: NPT 4K on a 2M RMP entry => NPF (KVM case 2: PSMASH then retry, §4)."""
    private_page(rmp, region(2), M2)
    expect_private_npf(rmp, region(2) + page(k), write=True)
    assert rmp.psmash(region(2)) == S.SUCCESS
    access(rmp, region(2) + page(k), write=True)
    expect_private_npf(rmp, region(2) + page(k), npt_size=M2)


# --------------------------------------------------------------------------- Validated => #VC


@pytest.mark.parametrize(("write", "fetch"), ACCESSES, ids=ACCESS_IDS)
def test_unvalidated_page_raises_vc_404(rmp: Rmp, write: bool, fetch: bool) -> None:
    """§8: Validated check failure => #VC error code PAGE_NOT_VALIDATED 0x404 (Guest-Invalid state, §2)."""
    private_page(rmp, page(11), validate=False)
    expect_vc(rmp, page(11), write=write, fetch=fetch)


def test_rescind_then_vc_and_reassign_then_vc(rmp: Rmp) -> None:
    """§8: RMPUPDATE clears Validated => next private access #VC; rescinded pages #VC too (§5)."""
    private_page(rmp, page(12))
    access(rmp, page(12))
    assert rmp.pvalidate(page(12), asid=ASID, gpa=page(12) + GPA_OFFSET, page_size=K4, validate=False) == (
        S.SUCCESS,
        False,
    )
    expect_vc(rmp, page(12))
    private_page(rmp, page(13))
    assert rmp.rmpupdate(page(13), assigned=True, gpa=page(13) + GPA_OFFSET, asid=ASID) == S.SUCCESS
    expect_vc(rmp, page(13))


def test_npf_has_priority_over_vc(rmp: Rmp) -> None:
    """§7 Priority: 'Page-Size and Validated both failing => NPF, not #VC'; rule 7."""
    private_page(rmp, page(14), validate=False)
    expect_private_npf(rmp, page(14), npt_size=M2)
    expect_private_npf(rmp, page(14), asid=ASID + 1)
    expect_private_npf(rmp, page(14), gpa=GPA_OFFSET)


# --------------------------------------------------------------------------- VMPL permissions


def set_vmpl1(rmp: Rmp, spa: int, perms: int) -> None:
    assert (
        rmp.rmpadjust(spa, asid=ASID, gpa=spa + GPA_OFFSET, page_size=K4, vmpl=0, target_vmpl=1, perms=perms)
        == S.SUCCESS
    )


def expect_vmpl_npf(rmp: Rmp, spa: int, **kw: object) -> None:
    info = expect_npf(rmp, spa, **kw)
    assert info & NPF_VMPL


@pytest.mark.parametrize(("write", "fetch"), ACCESSES, ids=ACCESS_IDS)
@pytest.mark.parametrize("vmpl", [1, 2, 3])
def test_no_permissions_at_lower_vmpl(rmp: Rmp, vmpl: int, write: bool, fetch: bool) -> None:
    """§1: on assignment other VMPLs get no permissions; §7 VMPL check => NPF with the VMPL bit (36)."""
    private_page(rmp, page(15))
    expect_vmpl_npf(rmp, page(15), vmpl=vmpl, write=write, fetch=fetch)
    access(rmp, page(15), vmpl=0, write=write, fetch=fetch)


@pytest.mark.parametrize(
    ("perms", "ok"),
    [
        (PERM_READ, {"read"}),
        (PERM_READ | PERM_WRITE, {"read", "write"}),
        (PERM_READ | PERM_EXEC_USER, {"read"}),  # X-user does not allow a supervisor fetch
        (PERM_READ | PERM_EXEC_SUPERVISOR, {"read", "fetch"}),
        (PERM_EXEC_SUPERVISOR, {"fetch"}),
        (PERM_READ | PERM_WRITE | PERM_EXEC_SUPERVISOR, {"read", "write", "fetch"}),
    ],
)
def test_vmpl_mask_bits(rmp: Rmp, perms: int, ok: set[str]) -> None:
    """§1 Table 15-36 mask bits; rule 7: read needs R, write needs W, fetch needs X-supervisor."""
    private_page(rmp, page(16))
    set_vmpl1(rmp, page(16), perms)
    for name, (write, fetch) in zip(ACCESS_IDS, ACCESSES, strict=True):
        if name in ok:
            access(rmp, page(16), vmpl=1, write=write, fetch=fetch)
        else:
            expect_vmpl_npf(rmp, page(16), vmpl=1, write=write, fetch=fetch)


def test_vc_has_priority_over_vmpl(rmp: Rmp) -> None:
    """§7 Priority: first group > Validated > VMPL => unvalidated + no VMPL1 perms => #VC."""
    private_page(rmp, page(17), validate=False)
    expect_vc(rmp, page(17), vmpl=1)


def test_2m_entry_vmpl_perms(rmp: Rmp) -> None:
    """Rule 5+7: RMPADJUST on a 2M entry grants every page; the VMPL check uses the 2M entry's mask."""
    private_page(rmp, region(3), M2)
    expect_vmpl_npf(rmp, region(3) + page(9), npt_size=M2, vmpl=2)
    assert (
        rmp.rmpadjust(
            region(3), asid=ASID, gpa=region(3) + GPA_OFFSET, page_size=M2, vmpl=0, target_vmpl=2, perms=PERM_READ
        )
        == S.SUCCESS
    )
    access(rmp, region(3) + page(9), npt_size=M2, vmpl=2)
    expect_vmpl_npf(rmp, region(3) + page(9), npt_size=M2, vmpl=2, write=True)


# --------------------------------------------------------------------------- shared (C=0) accesses


@pytest.mark.parametrize("npt", [K4, M2, G1])
def test_shared_reads_never_checked(rmp: Rmp, npt: PageSize) -> None:
    """§7: SNP-guest shared (C=0) reads are not RMP-checked (any page, any owner, beyond the table)."""
    private_page(rmp, page(20))
    private_page(rmp, region(1), M2, validate=False)
    for spa in (page(20), page(21), region(1) + page(4), TABLE_END + page(1)):
        access(rmp, spa, encrypted=False, npt_size=npt, asid=99, gpa=0)


@pytest.mark.parametrize("npt", [K4, M2, G1])
def test_shared_write_to_assigned_page_faults(rmp: Rmp, npt: PageSize) -> None:
    """§7 'Guest, SNP-active, data write, C=0: Hypervisor-Owned => NPF'; ENC clear (C=0), WRITE set."""
    private_page(rmp, page(22))
    info = expect_npf(rmp, page(22), encrypted=False, write=True, npt_size=npt)
    assert info & NPF_WRITE
    assert not info & NPF_ENC
    assert not info & NPF_VMPL


def test_shared_write_to_hypervisor_page_passes(rmp: Rmp) -> None:
    """§7: hypervisor-owned page passes the Hypervisor-Owned check; so does an uncovered page."""
    access(rmp, page(23), encrypted=False, write=True)
    access(rmp, TABLE_END + page(23), encrypted=False, write=True, npt_size=M2)
    assert rmp.rmpupdate(region(2), assigned=False, page_size=M2) == S.SUCCESS
    access(rmp, region(2) + page(8), encrypted=False, write=True, npt_size=M2)


@pytest.mark.parametrize("npt", [M2, G1])
def test_shared_write_large_npt_checks_whole_2m_range(rmp: Rmp, npt: PageSize) -> None:
    """§7: a 2MB (1GB treated as 2MB) mapping requires all 4K pages of the 2M range hypervisor-owned;
    rule 7: shared write with npt 2M/1G faults iff any page of the 2M range is assigned."""
    private_page(rmp, region(1) + page(300))
    expect_npf(rmp, region(1) + page(2), encrypted=False, write=True, npt_size=npt)
    access(rmp, region(1) + page(2), encrypted=False, write=True, npt_size=K4)
    access(rmp, region(2) + page(2), encrypted=False, write=True, npt_size=npt)


def test_fetch_is_always_private(rmp: Rmp) -> None:
    """§7: guest fetches are always private (effective C=1) => checked like C=1 even with encrypted=False."""
    expect_private_npf(rmp, page(24), fetch=True, encrypted=False)
    private_page(rmp, page(25), validate=False)
    expect_vc(rmp, page(25), fetch=True, encrypted=False)
    private_page(rmp, page(26))
    access(rmp, page(26), fetch=True, encrypted=False)
