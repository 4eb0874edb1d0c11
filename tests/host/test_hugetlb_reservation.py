"""hugetlb reservations (mm/hugetlb.c) as the host kernel keeps them: figures by hand.

``hugetlb_reserve_pages`` → ``hugetlb_acct_memory`` → ``gather_surplus_pages``: "needed = (h->resv_huge_pages +
delta) - h->free_huge_pages"; if positive, that many surplus pages are allocated now (within
``nr_overcommit_hugepages``) or the reservation fails; ``free_huge_folio``: a freed folio goes back to the buddy
allocator while the hstate has surplus pages, else to the pool; ``hugetlb_unreserve_pages`` →
``return_unused_surplus_pages``.
"""

from __future__ import annotations

import pytest

from snpsim.host import HostKernel, Owner
from snpsim.policy import presets

P2M = 512


def host(nframes: int = 8192, hugepages: dict[int, int] | None = None) -> HostKernel:
    return HostKernel(nframes, presets["hugetlb"], zero_on_alloc=False, hugepages=hugepages)


def test_a_reservation_without_a_pool_gathers_surplus_pages_at_once() -> None:
    h = host()  # 32 MiB, no pool: every reservation is gathered as surplus
    free0 = h.buddy.free_frames
    assert h.hugetlb_reserve_pages(9, 3)  # needed = 0 + 3 - 0 = 3 surplus pages, allocated now
    assert (h.hugetlb_pool_free(9), h.hugetlb_surplus(9), h.hugetlb_reserved(9)) == (3, 3, 3)
    assert free0 - h.buddy.free_frames == 3 * P2M and h.frames.count(Owner.HUGETLB_POOL) == 3 * P2M
    pfn = h.alloc(9, Owner.VMM_SHARED, hugetlb=True, reserved=True)  # a fault consumes one reservation
    assert pfn is not None and (h.hugetlb_pool_free(9), h.hugetlb_reserved(9)) == (2, 2)
    h.free(pfn, 9)  # surplus_huge_pages = 3 > 0: back to the buddy allocator, surplus 2
    assert (h.hugetlb_pool_free(9), h.hugetlb_surplus(9)) == (2, 2)
    h.hugetlb_unreserve_pages(9, 2)  # return_unused_surplus_pages: min(2 unused, 2 surplus) pages freed
    assert (h.hugetlb_pool_free(9), h.hugetlb_surplus(9), h.hugetlb_reserved(9)) == (0, 0, 0)
    assert h.buddy.free_frames == free0


def test_a_fixed_pool_without_overcommit_refuses_what_it_does_not_hold() -> None:
    h = host(hugepages={9: 2})  # hugepages=2 at boot; nr_overcommit_hugepages = 0 (Linux's default)
    free0 = h.buddy.free_frames
    assert not h.hugetlb_reserve_pages(9, 3)  # needed = 0 + 3 - 2 = 1 surplus page, over the limit 0
    assert (h.hugetlb_pool_free(9), h.hugetlb_reserved(9), h.hugetlb_surplus(9)) == (2, 0, 0)
    assert h.buddy.free_frames == free0
    assert h.hugetlb_reserve_pages(9, 2)  # needed = 0: the pool covers it
    # both free pool pages are reserved: an unreserved allocation finds none and may not overcommit
    assert h.alloc(9, Owner.VMM_SHARED, hugetlb=True) is None
    assert h.hugetlb_release(9) == 0  # set_max_huge_pages never frees reserved pages
    pfn = h.alloc(9, Owner.VMM_SHARED, hugetlb=True, reserved=True)
    assert pfn is not None
    h.free(pfn, 9)  # no surplus: back to the pool
    assert (h.hugetlb_pool_free(9), h.hugetlb_reserved(9)) == (2, 1)


def test_a_reservation_the_allocator_cannot_back_fails_whole() -> None:
    h = host()  # 32 MiB = 16 order-9 blocks: 17 cannot be had
    assert not h.hugetlb_reserve_pages(9, 17)
    assert h.buddy.free_frames == h.buddy.managed_frames  # the 16 gathered are given back
    assert (h.hugetlb_pool_free(9), h.hugetlb_surplus(9), h.hugetlb_reserved(9)) == (0, 0, 0)
    assert h.hugetlb_reserve_pages(9, 16)


def test_a_reserved_fault_needs_a_reservation() -> None:
    h = host()
    with pytest.raises(ValueError, match="no hugetlb reservation"):
        h.alloc(9, Owner.VMM_SHARED, hugetlb=True, reserved=True)
