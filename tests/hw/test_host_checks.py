"""Hardware RMP checks on host writes (amd-snp-arch.md §7 Table 15-39 'Host' row, Hypervisor-Owned check,
LKML-1G; brief rule 6)."""

from __future__ import annotations

import pytest
from rmp_testlib import GPA_OFFSET, TABLE_END, page, region

from snpsim.hw import HostPageFault, PageSize, Rmp, RmpStatus
from snpsim.hw.types import PAGES_PER_2M, PF_PRESENT, PF_RMP, PF_WRITE

S = RmpStatus
K4 = PageSize.SIZE_4K
M2 = PageSize.SIZE_2M
G1 = PageSize.SIZE_1G
ALL_SIZES = [K4, M2, G1]


def assign(rmp: Rmp, spa: int, size: PageSize = K4) -> None:
    assert rmp.rmpupdate(spa, assigned=True, page_size=size, gpa=spa + GPA_OFFSET, asid=1) == S.SUCCESS


def expect_fault(rmp: Rmp, spa: int, size: PageSize) -> HostPageFault:
    with pytest.raises(HostPageFault) as ei:
        rmp.check_host_write(spa, size)
    e = ei.value
    bits = PF_RMP | PF_WRITE | PF_PRESENT
    assert e.error_code & bits == bits  # §7: #PF error code bit 31 RMP (Linux X86_PF_RMP)
    assert e.rmp
    assert e.address == spa
    return e


@pytest.mark.parametrize("size", ALL_SIZES)
def test_fresh_table_never_faults(rmp: Rmp, size: PageSize) -> None:
    """§1: all pages start hypervisor-owned => host writes pass the Hypervisor-Owned check."""
    for spa in (0, page(1), region(1) + page(17), region(3) + page(511)):
        rmp.check_host_write(spa, size)


def test_4k_write_to_assigned_page_faults(rmp: Rmp) -> None:
    """§7 Host row: data write to an assigned page => #PF with the RMP bit (rule 6)."""
    assign(rmp, page(9))
    expect_fault(rmp, page(9), K4)
    expect_fault(rmp, page(9) + 0x7F8, K4)  # any byte of the page


def test_4k_write_to_neighbour_is_fine(rmp: Rmp) -> None:
    """Rule 6: a 4K mapping checks only the page written."""
    assign(rmp, page(9))
    rmp.check_host_write(page(8), K4)
    rmp.check_host_write(page(10), K4)
    expect_fault(rmp, page(10) - 1, K4)  # last byte of page 9


@pytest.mark.parametrize("size", [M2, G1])
@pytest.mark.parametrize("k", [0, 1, 100, 511])
def test_large_mapping_faults_if_any_page_in_2m_range_assigned(rmp: Rmp, size: PageSize, k: int) -> None:
    """§7 [V]: 'a write through a 2MB/1GB host mapping faults if any 4KB page in the covering 2MB range is
    assigned, even if the targeted 4KB page is hypervisor-owned'; 1G treated as 2M (LKML-1G)."""
    assign(rmp, region(1) + page(200))
    expect_fault(rmp, region(1) + page(k), size)
    rmp.check_host_write(region(1) + page(k), K4)  # the same write through a 4K mapping is fine


@pytest.mark.parametrize("size", [M2, G1])
def test_large_mapping_other_2m_range_is_fine(rmp: Rmp, size: PageSize) -> None:
    """§7 / LKML-1G: a 1G access is checked as 2M, so an assigned page in ANOTHER 2M range of the same 1G
    range (or a neighbouring 2M range) does not fault."""
    assign(rmp, region(1) + page(200))
    rmp.check_host_write(region(0) + page(511), size)
    rmp.check_host_write(region(2), size)
    rmp.check_host_write(region(3) + page(5), size)


@pytest.mark.parametrize("size", ALL_SIZES)
@pytest.mark.parametrize("k", [0, 1, 511])
def test_assigned_2m_entry_faults_on_every_page(rmp: Rmp, size: PageSize, k: int) -> None:
    """§1 authoritative 2M entry: each of its 512 pages is assigned => every write faults (rule 6)."""
    assign(rmp, region(2), M2)
    expect_fault(rmp, region(2) + page(k), size)


def test_unassigned_2m_entry_does_not_fault(rmp: Rmp) -> None:
    """Rule 6: a hypervisor-owned (Assigned=0) 2M entry passes the check."""
    assert rmp.rmpupdate(region(2), assigned=False, page_size=M2) == S.SUCCESS
    for size in ALL_SIZES:
        rmp.check_host_write(region(2) + page(3), size)


def test_make_shared_stops_faults(rmp: Rmp) -> None:
    """§3 make shared (assigned=0) => page hypervisor-owned again => no #PF."""
    assign(rmp, page(30))
    expect_fault(rmp, page(30), M2)
    assert rmp.rmpupdate(page(30), assigned=False) == S.SUCCESS
    for size in ALL_SIZES:
        rmp.check_host_write(page(30), size)


def test_psmash_keeps_pages_assigned(rmp: Rmp) -> None:
    """§4: PSMASH preserves Assigned => writes still fault (the direct map must avoid them)."""
    assign(rmp, region(1), M2)
    assert rmp.psmash(region(1)) == S.SUCCESS
    expect_fault(rmp, region(1) + page(7), K4)
    expect_fault(rmp, region(1) + page(7), M2)


def test_firmware_page_faults(rmp: Rmp) -> None:
    """§2: firmware pages (assigned, asid 0, immutable) are not hypervisor-owned => #PF."""
    assert rmp.rmpupdate(page(40), assigned=True, gpa=0, asid=0, immutable=True) == S.SUCCESS
    expect_fault(rmp, page(40), K4)


@pytest.mark.parametrize("size", ALL_SIZES)
def test_beyond_table_never_faults(rmp: Rmp, size: PageSize) -> None:
    """§1 'Pages not covered are permanently hypervisor-owned' (RMP-Covered check, §7); rule 6."""
    for k in range(4):
        assign(rmp, region(k), M2)
    for spa in (TABLE_END, TABLE_END + page(1), TABLE_END + region(1) + 5, TABLE_END * 64):
        rmp.check_host_write(spa, size)


def test_no_host_read_check(rmp: Rmp) -> None:
    """§7: host reads are not RMP-checked (absent from Table 15-39) => the model has no check_host_read."""
    assert not hasattr(rmp, "check_host_read")


def test_all_pages_of_a_2m_range(rmp: Rmp) -> None:
    """Rule 6, exhaustively over one 2M range with one assigned page."""
    assign(rmp, region(3) + page(333))
    for k in range(PAGES_PER_2M):
        expect_fault(rmp, region(3) + page(k), M2)
        if k == 333:
            expect_fault(rmp, region(3) + page(k), K4)
        else:
            rmp.check_host_write(region(3) + page(k), K4)
