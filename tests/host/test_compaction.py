"""Compaction, alloc_contig_pages and hugetlb pools of the host kernel (snpsim.host.compaction, HostKernel).

Expected values are derived by hand from mm/compaction.c (``compact_zone``: "cc->migrate_pfn = start_pfn" at the
zone start, "cc->free_pfn = pageblock_start_pfn(end_pfn - 1)" at its top; ``suitable_migration_target``;
``__compact_finished``; ``fragmentation_score_wmark``) and mm/page_alloc.c (``alloc_contig_pages``).
"""

from __future__ import annotations

import numpy as np
import pytest

from snpsim.host import HostKernel, Owner
from snpsim.host.buddy import Migratetype, ZoneType
from snpsim.host.compaction import fragmentation_score, score_wmark
from snpsim.policy import presets

U, M = Migratetype.UNMOVABLE, Migratetype.MOVABLE


def host(nframes: int) -> HostKernel:
    return HostKernel(nframes, presets["upstream"])


def half_page_cache(h: HostKernel) -> None:
    """Every even frame of memory is page cache (movable), every odd one free."""
    frames = h.alloc_bulk(0, h.buddy.obtainable(0), Owner.USER, zero=False)
    assert frames is not None
    h.free_bulk(frames[frames % 2 == 1], 0)


def test_direct_compaction_moves_movable_pages_from_the_bottom_to_the_top() -> None:
    h = host(4096)  # ZONE_DMA only: 8 pageblocks of 512 frames
    half_page_cache(h)
    assert h.buddy.largest_free_order() == 0
    pfn = h.alloc(9, Owner.GMEM, zero=False)
    # The migration scanner starts at the zone's first pageblock (0..511: 256 movable pages at even frames), the
    # free scanner at the last one (3584..4095), a MOVABLE pageblock whose first page is not a free order >= 9 block:
    # its 256 free (odd) frames receive the 256 pages. Pageblock 0 is then free (0@9): __compact_finished finds a
    # block find_suitable_fallback would claim, and the unmovable request claims it.
    assert pfn == 0
    assert h.compaction_migrated == 256
    assert all(h.frames.get(p) == Owner.GMEM for p in range(0, 512))
    top = h.frames.tags(3584, 512)
    assert (top == Owner.USER).all()  # the top pageblock is now full of page cache
    assert h.frames.count(Owner.USER) == 2048
    assert h.buddy.pageblock_migratetype(0) == U and h.buddy.pageblock_migratetype(3584) == M
    assert h.crashes == []


def test_compaction_migrates_only_movable_pages() -> None:
    h = host(4096)
    half_page_cache(h)
    # a pinned pre-UPM page, a guest_memfd page and a kernel page in the lowest pageblock
    for pfn, owner in ((1, Owner.VMM_PRIVATE), (3, Owner.GMEM), (5, Owner.KERNEL)):
        assert h.buddy.take_page_off_buddy(pfn)
        h.frames.set_range(pfn, 1, owner)
    pfn = h.alloc(9, Owner.GMEM, zero=False)
    # Pageblock 0 loses its 256 page-cache pages (to pageblock 7) but keeps the three unmovable ones, so it cannot
    # become free; pageblock 1's 256 go to pageblock 6 and it is the first free 2M block.
    assert pfn == 512
    assert h.compaction_migrated == 2 * 256
    assert [h.frames.get(p) for p in (1, 3, 5)] == [Owner.VMM_PRIVATE, Owner.GMEM, Owner.KERNEL]
    assert (h.frames.tags(3072, 1024) == Owner.USER).all()


def test_compaction_fails_when_every_pageblock_holds_an_unmovable_page() -> None:
    h = host(2048)
    frames = h.buddy.alloc_bulk(0, 2048)
    assert frames is not None
    h.buddy.free_bulk(frames[frames % 4 != 0], 0)
    h.frames.set_many(frames[frames % 4 == 0], Owner.KERNEL)
    assert h.alloc(9, Owner.GMEM) is None
    assert h.compaction_migrated == 0


def test_proactive_compaction_runs_above_the_high_mark_and_stops_at_the_low_mark() -> None:
    h = host(4096)
    assert h.compactor.proactive() == 0  # a fresh zone: all free memory in order-10 blocks, score 0
    half_page_cache(h)
    # extfrag_for_order(zone, 9): (free_pages - (free_blocks_suitable << 9)) * 100 / free_pages = 100 with 2048 free
    # order-0 pages; fragmentation_score_wmark(): low = 100 - 20 = 80, high = 90
    assert fragmentation_score(h, ZoneType.DMA) == 100
    assert (score_wmark(20, low=True), score_wmark(20, low=False)) == (80, 90)
    # After one pageblock is emptied (256 pages migrated into the top one) the score is (2048 - 512) * 100 / 2048 =
    # 75 <= 80: __compact_finished for a proactive compaction returns COMPACT_SUCCESS
    assert h.compactor.proactive() == 256
    assert fragmentation_score(h, ZoneType.DMA) == 75
    assert h.compactor.proactive() == 0  # 75 <= 90: should_proactive_compact_node is false


def test_compaction_copies_through_the_direct_map() -> None:
    h = HostKernel(4096, presets["fixup"])
    half_page_cache(h)
    h.rmp_make_private(3584, 0, 0, 1)  # a private page in the top pageblock, where the free scanner starts
    assert h.compactor.proactive() == 256
    # The first copy (folio_mc_copy) writes 3585 through the 1G direct map (fixup keeps it), and any page assigned
    # in the 2M range makes such a write fault: the handler makes 3584 shared and the later writes pass.
    assert h.host_rmp_fault_count == 1 and h.host_crash_count == 0
    assert not h.rmp.rmpread(3584 << 12).assigned


def test_alloc_contig_takes_the_first_aligned_range_of_free_or_movable_memory() -> None:
    h = host(1 << 19)  # 2 GiB: DMA [0, 16M), DMA32 [16M, 2G)
    lo = 1 << 18  # ALIGN(zone_start_pfn of DMA32 = 4096, 2^18): the only 1G candidate
    for pfn in range(lo, lo + 10):
        assert h.buddy.take_page_off_buddy(pfn)
        h.frames.set_range(pfn, 1, Owner.USER)
    pfn = h.alloc(18, Owner.GMEM, zero=False)
    assert pfn == lo
    # the 10 movable pages went to alloc_migration_target's pages: the lowest free movable frames of DMA32
    assert h.compaction_migrated == 10
    assert [h.frames.get(p) for p in range(4096, 4106)] == [Owner.USER] * 10
    assert h.frames.count(Owner.GMEM) == 1 << 18
    h.free(pfn, 18)  # free_contig_range: back as 256 order-10 blocks
    assert h.buddy.free_blocks(10)[-256:] == [(lo + (i << 10), 10) for i in range(256)]


def test_alloc_contig_skips_a_range_with_an_unmovable_page() -> None:
    h = host(1 << 19)
    assert h.buddy.take_page_off_buddy((1 << 18) + 7)
    h.frames.set_range((1 << 18) + 7, 1, Owner.GMEM)  # has_unmovable_pages
    assert h.alloc(18, Owner.GMEM) is None
    assert h.compaction_migrated == 0


def test_hugetlb_pool_pages_come_back_to_the_pool_and_surplus_pages_to_the_allocator() -> None:
    h = host(8192)
    assert h.hugetlb_reserve(9, 3) == 3  # nr_hugepages = 3: movable order-9 blocks, lowest first
    assert h.hugetlb_pool_free(9) == 3
    assert h.frames.count(Owner.HUGETLB_POOL) == 3 * 512
    a = h.alloc(9, Owner.VMM_SHARED, hugetlb=True, zero=False)
    assert a == 4096 and h.hugetlb_pool_free(9) == 2  # DMA32 starts at 4096: the pool's lowest page
    extra = [h.alloc(9, Owner.VMM_SHARED, hugetlb=True, zero=False) for _ in range(3)]
    assert h.hugetlb_pool_free(9) == 0 and None not in extra  # the third is a surplus page
    free_before = h.buddy.free_frames
    for pfn in extra:
        assert pfn is not None
        h.free(pfn, 9)
    assert h.hugetlb_pool_free(9) == 2 and h.buddy.free_frames == free_before + 512  # free_huge_folio
    assert h.hugetlb_release(9) == 2
    h.free(a, 9)
    assert h.hugetlb_pool_free(9) == 1
    assert h.hugetlb_release(9) == 1
    assert h.buddy.free_frames == h.buddy.managed_frames


@pytest.mark.parametrize("count", [1, 2])
def test_one_gib_hugetlb_pool_by_alloc_contig(count: int) -> None:
    h = host(3 << 18)  # 3 GiB: DMA32 holds two aligned 1G ranges, [1G, 2G) and [2G, 3G)
    assert h.hugetlb_reserve(18, count) == count
    assert sorted(p for p in h._hugetlb_pool[18]) == [(i + 1) << 18 for i in range(count)]
    assert h.hugetlb_reserve(18, 5) == 2 - count  # best effort: nothing else is 1G-aligned and free
    np.testing.assert_array_equal(h.buddy.pageblock_types()[512:1536], M)  # contig ranges stay movable


def test_a_failed_bulk_of_1g_blocks_gives_everything_back() -> None:
    h = host(3 << 18)  # two aligned 1G ranges in DMA32
    assert h.alloc_bulk(18, 3, Owner.GMEM, zero=False) is None  # all or nothing: the third has no range
    assert h.buddy.free_frames == h.buddy.managed_frames
    assert h.frames.count(Owner.GMEM) == 0
    got = h.alloc_bulk(18, 2, Owner.GMEM, zero=False)
    assert got is not None and got.tolist() == [1 << 18, 2 << 18]
