"""THP on the VMM's RAM block and the deferred split queue (snpsim.host.mm, snpsim.host.vmscan), figures by hand.

Sources quoted at each test: mm/huge_memory.c (``do_huge_pmd_anonymous_page``, ``__split_huge_pmd``,
``deferred_split_folio``, ``deferred_split_scan``), mm/memory.c ``zap_pmd_range``, mm/vmscan.c (who calls
``shrink_slab``), mm/page_alloc.c and mm/khugepaged.c (watermarks).
"""

from __future__ import annotations

import numpy as np
import pytest

from snpsim.arch import PageSize
from snpsim.host import HostKernel, Owner
from snpsim.host.mm import UserMemory
from snpsim.host.vmscan import low_watermark_pages, min_free_kbytes
from snpsim.policy import presets

K4 = 4096
P2M = 512
M2 = 2 << 20


def host(nframes: int = 262144, thp: str = "always") -> HostKernel:
    return HostKernel(nframes, presets["upstream"], transparent_hugepage=thp, zero_on_alloc=False)


def ram_block(h: HostKernel, kind: str = "thp", pages: int = 8 * P2M) -> UserMemory:
    return UserMemory(h, np.ones(pages, dtype=bool), kind, Owner.VMM_SHARED)


def test_one_shared_page_faults_in_a_whole_2m_thp() -> None:
    # do_huge_pmd_anonymous_page: the fault of one 4K page of an untouched, aligned 2M range of a VMA madvised
    # MADV_HUGEPAGE (QEMU ram_block_add: qemu_madvise(..., QEMU_MADV_HUGEPAGE)) maps one PMD: all 512 pages
    h = host()
    m = ram_block(h)
    free0 = h.buddy.free_frames
    pfns = m.get_pfns(P2M + 3, 1)  # the GHCB page at gfn 515
    assert pfns is not None
    assert m.bytes == M2 and m.allocated_pages == P2M
    assert free0 - h.buddy.free_frames == P2M
    assert m.host_level(P2M) == m.host_level(2 * P2M - 1) == PageSize.SIZE_2M
    head = int(m.pfn[P2M])
    assert head % P2M == 0 and int(pfns[0]) == head + 3  # subpage 3 of an order-9 block


@pytest.mark.parametrize("kind", ["4k", "thp-never"])
def test_memfd_backing_and_thp_disabled_fault_4k_only(kind: str) -> None:
    # memory-backend-memfd: shmem, THP per shmem_enabled = never (its default); memory-backend-ram on a host with
    # transparent_hugepage = never: thp_vma_allowable_order() is false. Either way one 4K page per fault.
    h = host(thp="never" if kind == "thp-never" else "always")
    m = ram_block(h, "4k" if kind == "4k" else "thp")
    m.get_pfns(P2M + 3, 1)
    assert m.bytes == K4 and m.host_level(P2M + 3) == PageSize.SIZE_4K


def test_a_partial_discard_splits_the_pmd_and_the_thp_is_held_until_the_shrinker_runs() -> None:
    h = host()
    m = ram_block(h)
    m.get_pfns(P2M, 1)
    head = int(m.pfn[P2M])
    free0 = h.buddy.free_frames
    # zap_pmd_range: "if (next - addr != HPAGE_PMD_SIZE) __split_huge_pmd(...)": 100 PTEs zapped, nothing freed;
    # __folio_remove_rmap finds the folio partly mapped: deferred_split_folio(folio, true)
    assert m.discard(P2M + 10, 100) == 0
    assert h.buddy.free_frames == free0
    assert m.bytes == M2 and m.allocated_pages == P2M - 100 and m.held_pages == 100
    assert h.metrics()["thp_deferred_split_bytes"] == 100 * K4
    assert m.host_level(P2M) == PageSize.SIZE_4K  # PTE-mapped now
    assert len(h.deferred_split) == 1 and h.deferred_split.queued_count == 1
    # more zapping of the same folio queues it once (it is already on the list)
    assert m.discard(P2M + 200, 1) == 0 and m.held_pages == 101 and h.deferred_split.queued_count == 1
    # no memory pressure, no reclaim: nothing runs the shrinker, the memory stays held
    h.alloc_bulk(0, 1000, Owner.USER)
    assert m.held_pages == 101
    # reclaim: deferred_split_scan -> split_folio: "Subpages may be freed if there wasn't any mapping"
    free1 = h.buddy.free_frames
    assert h.drop_caches() == 101
    assert h.buddy.free_frames == free1 + 101
    assert m.bytes == (P2M - 101) * K4 and m.held_pages == 0 and h.metrics()["thp_deferred_split_bytes"] == 0
    assert h.metrics()["thp_split_page_count"] == 1 and len(h.deferred_split) == 0
    # the mapped pages are 4K pages of the former folio, still at their gfns
    assert int(m.pfn[P2M]) == head and int(m.pfn[P2M + 9]) == head + 9 and int(m.pfn[P2M + 10]) == -1
    assert h.frames.tag(head + 10) == Owner.FREE and h.frames.tag(head + 9) == Owner.VMM_SHARED


def test_the_thp_is_freed_whole_when_its_last_mapped_page_goes() -> None:
    h = host()
    m = ram_block(h)
    m.get_pfns(0, 1)
    free0 = h.buddy.free_frames
    assert m.discard(0, 256) == 0 and m.held_pages == 256
    # the rest of the folio: no page mapped any more, folio_put frees the whole order-9 block, off the queue
    assert m.discard(256, 256) == P2M
    assert h.buddy.free_frames == free0 + P2M
    assert m.bytes == 0 and m.held_pages == 0 and len(h.deferred_split) == 0
    # a discard covering a PMD-mapped THP whole frees it at once (zap_huge_pmd), never queued
    m.get_pfns(P2M, 1)
    assert m.discard(P2M - 5, P2M + 10) == P2M and h.deferred_split.queued_count == 1


def test_a_discarded_page_faults_back_as_a_new_4k_page_while_the_folio_holds_the_old_one() -> None:
    h = host()
    m = ram_block(h)
    m.get_pfns(0, 1)
    head = int(m.pfn[0])
    m.discard(7, 1)
    again = m.get_pfns(7, 1)
    assert again is not None and int(again[0]) != head + 7  # do_anonymous_page: a new page, not the folio's
    assert m.bytes == (P2M + 1) * K4 and m.held_pages == 1
    freed = h.drop_caches()  # the split frees the folio's page 7; the new page stays mapped
    assert freed == 1 and m.bytes == P2M * K4 and int(m.pfn[7]) == int(again[0])


def test_release_frees_mapped_held_and_refaulted_pages() -> None:
    h = host()
    m = ram_block(h)
    m.get_pfns(0, 3 * P2M)  # three THPs
    m.discard(5, 10)  # first THP partly unmapped
    m.get_pfns(6, 1)  # one 4K page in its hole
    m.discard(P2M, 1)
    frames = m.release_all()
    assert frames.size == 3 * P2M + 1  # 3 folios (mapped + held pages) and the refaulted 4K page
    assert h.buddy.free_frames == h.buddy.managed_frames
    assert h.thp_held_pages == 0 and len(h.deferred_split) == 0


def test_min_free_kbytes_and_the_low_watermark_by_hand() -> None:
    # A flat 1 GiB host: ZONE_DMA 4096 frames, ZONE_DMA32 258048 (x86-64 MAX_DMA_PFN = 16 MiB).
    h = host(262144)
    assert [h.buddy.zone_managed_frames(z) for z in range(3)] == [4096, 258048, 0]
    # calculate_min_free_kbytes: int_sqrt(1 GiB in KiB * 16) = int_sqrt(16777216) = 4096 KiB
    assert min_free_kbytes(262144, 2, thp=False) == 4096
    # set_recommended_min_free_kbytes: 512 * 2 zones * 2 + 512 * 2 * 3 * 3 = 11264 pages = 45056 KiB, below 5 %
    # of lowmem (262144 / 20 = 13107 pages), above 4096: "raising min_free_kbytes ... to help transparent hugepage"
    assert min_free_kbytes(262144, 2, thp=True) == 45056
    # __setup_per_zone_wmarks: min share by managed pages; low = min + max(min >> 2, managed * 10 / 10000)
    # DMA: 11264 * 4096 // 262144 = 176, + max(44, 4) = 220; DMA32: 11264 * 258048 // 262144 = 11088,
    # + max(2772, 258) = 13860; total 14080. Without THP: 1024 pages: DMA 16 + max(4, 4) = 20; DMA32 1008 +
    # max(252, 258) = 1266; total 1286.
    assert h.low_wmark_pages == low_watermark_pages(h.buddy, thp=True) == 14080
    assert host(262144, thp="never").low_wmark_pages == 1286


def test_kswapd_runs_the_shrinker_when_free_memory_falls_below_the_low_watermark() -> None:
    # A 64 MiB host: min_free_kbytes = max(int_sqrt(65536 * 16) = 1024, min(11264, 16384 / 20 = 819) * 4 = 3276)
    # = 3276 KiB = 819 pages; DMA (4096 frames): 204 + max(51, 4) = 255; DMA32 (12288): 614 + max(153, 12) = 767.
    h = host(16384)
    assert h.low_wmark_pages == 1022
    m = ram_block(h, pages=4 * P2M)
    m.get_pfns(0, 1)
    m.discard(0, 1)
    assert m.held_pages == 1
    # wakeup_kswapd only below WMARK_LOW: take free memory down to exactly 1022 pages, then one page more
    assert h.alloc_bulk(0, h.buddy.free_frames - 1022, Owner.USER) is not None
    assert h.buddy.free_frames == 1022 and m.held_pages == 1
    assert h.alloc(0, Owner.USER) is not None  # 1021 < 1022: kswapd -> balance_pgdat -> shrink_node -> shrink_slab
    assert m.held_pages == 0 and h.buddy.free_frames == 1022 and h.reclaim_count == 1
    assert h.accounts["kthread/kswapd0"].count_by_op["thp_split"] == 1  # kswapd's CPU, not the caller's


def test_direct_reclaim_frees_held_pages_for_an_allocation_that_would_fail() -> None:
    # __alloc_pages_slowpath -> __alloc_pages_direct_reclaim -> try_to_free_pages -> ... -> shrink_slab: an
    # allocation larger than the free memory fails first, then reclaim runs and the allocation is retried
    h = host(16384)
    m = ram_block(h, pages=4 * P2M)
    m.get_pfns(0, 1)
    m.discard(0, 10)
    free = h.buddy.free_frames
    assert h.alloc_bulk(0, free + 11, Owner.USER) is None  # more than free + held: all or nothing, still fails
    assert m.held_pages == 0  # but the failed attempt's direct reclaim split the THP
    assert h.alloc_bulk(0, free + 10, Owner.USER) is not None and h.buddy.free_frames == 0
