"""Host physical memory allocator: the Linux buddy page allocator with zones, pageblocks and migratetypes.

Models ``mm/page_alloc.c`` as of v6.15-v6.19 (the "freelist hygiene" series, c0cd6f557b90, and the claim/steal
split of J. Weiner, "mm: page_alloc: don't steal single pages from biggest buddy", 2025-02-25,
20250225001023.1494422-2-hannes@cmpxchg.org, and "speed up fallbacks in rmqueue_bulk()", 2c847f27c37d):

* **Zones** by PFN (arch/x86 ``zone_sizes_init``): DMA ``[0, 16M)``, DMA32 ``[16M, 4G)``, Normal above; a
  request walks the zonelist Normal → DMA32 → DMA (``get_page_from_freelist``), skipping a zone whose free pages
  would fall to its ``lowmem_reserve`` (``setup_per_zone_lowmem_reserve``: the managed pages of the populated
  zones above, divided by ``sysctl_lowmem_reserve_ratio`` = 256; 0 when the upper zone is empty). When the
  preferred zone is Normal, the first pass over the zonelist runs with ``ALLOC_NOFRAGMENT``
  (``alloc_flags_nofragment``): no stealing of sub-pageblock blocks, so DMA32 is used before Normal's pageblocks
  are mixed; a second pass allows it.
* **Pageblocks** of 2 MiB (``pageblock_order`` 9) with a migratetype each (UNMOVABLE, MOVABLE, RECLAIMABLE; all
  MOVABLE at boot, ``memmap_init_range``); free lists per zone, order (0..``MAX_PAGE_ORDER`` = 10) and
  migratetype. With the hygiene rule every free block sits on the list of its pageblock's type, and merging two
  free order-9 buddies of different types gives the merged block the type of the page being freed
  (``__free_one_page``: "Match buddy type").
* ``__rmqueue``: ``__rmqueue_smallest`` (the smallest free block of the requested type, split by ``expand()``),
  then ``__rmqueue_claim`` (from ``MAX_PAGE_ORDER`` down, the first type of ``fallbacks[]`` with a free block of
  that order: "Find the largest available free page in the other list. This roughly approximates finding the
  pageblock with the most free pages"; ``try_to_claim_block`` takes a block of order >= 9 whole and re-types its
  pageblocks, and for a smaller one claims the pageblock when ``free_pages + alike_pages >= 1 <<
  (pageblock_order-1)``; ``should_try_claim_block`` refuses small movable requests below order 4), then
  ``__rmqueue_steal`` (the smallest block of a fallback type, its pageblock left as it was).
* ``page_group_by_mobility_disabled`` below ``pageblock_nr_pages * MIGRATE_TYPES`` pages (tiny hosts): every
  allocation and pageblock is UNMOVABLE, a plain buddy allocator (``build_all_zonelists_init``).

Simplifications (each moves some number, in the direction given):

* no watermarks (min/low/high = 0), kswapd, reclaim or watermark boosting: an allocation succeeds down to the last
  free page above the zone's lowmem reserve (so hosts run fuller than Linux lets them; OOM comes later); the
  classzone of every request is Normal (no ZONE_MOVABLE);
* no per-CPU (pcp) lists: frees merge at once (Linux delays merging by up to ``pcp->high`` pages per CPU, so the
  model's free memory is slightly less fragmented), and no HIGHATOMIC or CMA pageblocks;
* deterministic choice: the "list head" is the lowest PFN of the list (Linux's depends on the order of frees);
  so a fresh host fills from low PFNs up, where Linux fills from the top of each zone down;
* ``prep_move_freepages_block`` learns the number of movable (``PageLRU``) pages in a pageblock from the
  frames' owner tags (``page_tags``: the host kernel's frame table); without them it sees none.

Orders above ``MAX_PAGE_ORDER`` (1 GiB hugetlb pages and guest_memfd folios) are not the buddy allocator's: the host
kernel gets them like ``alloc_contig_pages()`` (:mod:`snpsim.host.compaction`), from a 1G-aligned range it empties
with :meth:`BuddyAllocator.take_free_range`.

Data structures scale to ``nframes = 2**29`` (2 TiB): no Python object per free block, one
:class:`~snpsim.host.bitmap.Bitmap` per (zone, order, migratetype) over block indices, and one byte per
pageblock for its type. ``alloc_bulk``/``free_bulk`` are a loop of ``alloc``/``free`` calls (``free_bulk``: in
ascending PFN order): this module is the readable specification, and the fast engine
(:mod:`snpsim.fast.buddy`) runs the same operations compiled, a run of blocks at a time.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from snpsim.host.bitmap import BitmapStore
from snpsim.segments import ascending

__all__ = [
    "FALLBACKS",
    "MAX_PAGE_ORDER",
    "PAGEBLOCK_NR_PAGES",
    "PAGEBLOCK_ORDER",
    "BuddyAllocator",
    "Migratetype",
    "PageTypeInfo",
    "ZoneType",
]

IntArray = npt.NDArray[np.int64]

#: include/linux/mmzone.h: ``MAX_PAGE_ORDER`` is 10 on x86-64 (4 MiB blocks).
MAX_PAGE_ORDER = 10
#: include/linux/pageblock-flags.h: ``pageblock_order`` = ``HUGETLB_PAGE_ORDER`` = 9 on x86-64 (2 MiB).
PAGEBLOCK_ORDER = 9
PAGEBLOCK_NR_PAGES = 1 << PAGEBLOCK_ORDER
#: ``enum migratetype`` with CONFIG_CMA and CONFIG_MEMORY_ISOLATION (UNMOVABLE, MOVABLE, RECLAIMABLE, HIGHATOMIC,
#: CMA, ISOLATE), as distribution kernels build it; only its count is used here (mobility grouping threshold).
MIGRATE_TYPES = 6
#: mm/page_alloc.c ``sysctl_lowmem_reserve_ratio`` for DMA and DMA32.
LOWMEM_RESERVE_RATIO = 256


class Migratetype(IntEnum):
    """``enum migratetype`` (include/linux/mmzone.h), the three the allocator falls back between."""

    UNMOVABLE = 0
    MOVABLE = 1
    RECLAIMABLE = 2


NTYPES = len(Migratetype)

#: mm/page_alloc.c ``fallbacks[MIGRATE_PCPTYPES][MIGRATE_PCPTYPES - 1]``.
FALLBACKS: dict[Migratetype, tuple[Migratetype, Migratetype]] = {
    Migratetype.UNMOVABLE: (Migratetype.RECLAIMABLE, Migratetype.MOVABLE),
    Migratetype.MOVABLE: (Migratetype.RECLAIMABLE, Migratetype.UNMOVABLE),
    Migratetype.RECLAIMABLE: (Migratetype.UNMOVABLE, Migratetype.MOVABLE),
}
_FALLBACK_IDX = [tuple(int(f) for f in FALLBACKS[Migratetype(m)]) for m in range(NTYPES)]


class ZoneType(IntEnum):
    """``enum zone_type`` on x86-64 (without ZONE_MOVABLE/ZONE_DEVICE)."""

    DMA = 0
    DMA32 = 1
    NORMAL = 2


#: arch/x86/include/asm/dma.h ``MAX_DMA_PFN`` (16 MiB) and ``MAX_DMA32_PFN`` (4 GiB), in 4K frames.
MAX_DMA_PFN = (16 << 20) >> 12
MAX_DMA32_PFN = (4 << 30) >> 12


def should_try_claim_block(order: int, start_mt: int) -> bool:
    """mm/page_alloc.c ``should_try_claim_block()``: is a fallback block of ``order`` worth claiming whole?"""
    if order >= PAGEBLOCK_ORDER:  # "we can actually claim the whole pageblock if this condition met"
        return True
    if order >= PAGEBLOCK_ORDER // 2:  # "Above a certain threshold, always try to claim"
        return True
    # "Unmovable/reclaimable allocations would cause permanent fragmentations if they fell back to allocating
    # from a movable block (polluting it), so we try to claim the whole block regardless of the allocation size."
    return start_mt in (Migratetype.RECLAIMABLE, Migratetype.UNMOVABLE)


#: The allocator's zone table (``int64``, a row per zone kind, then a flags row and the zonelist row):
#: zone rows ``[lo, hi, free_pages, lowmem_reserve]``; row 3 ``[mobility_disabled, nofragment, has_page_tags, 0]``;
#: row 4 the zonelist's zone kinds, -1 padded. Compiled code (:mod:`snpsim.fast.buddy`) reads and updates it in place.
ZONE_COLUMNS = ("lo", "hi", "free_pages", "lowmem_reserve")
ZT_FLAGS, ZT_ZONELIST = 3, 4


def free_list_index(zone: int, order: int, mt: int) -> int:
    """The bitmap of the free list ``(zone, order, migratetype)`` in the allocator's :class:`BitmapStore`."""
    return (zone * (MAX_PAGE_ORDER + 1) + order) * NTYPES + mt


def _free_list_sizes(spans: Sequence[tuple[int, int]]) -> list[int]:
    """Block counts of every free list, in :func:`free_list_index` order, for zones spanning ``spans``."""
    return [(hi - lo + (1 << o) - 1) >> o for lo, hi in spans for o in range(MAX_PAGE_ORDER + 1) for _ in range(NTYPES)]


class _Zone:
    """One ``struct zone``: its PFN span, free lists ``free[order][migratetype]`` (block index = ``(pfn - lo) >>
    order``), free and managed page counts and its lowmem reserve against Normal-zone requests."""

    __slots__ = ("_row", "free", "hi", "kind", "lo", "managed")

    def __init__(self, kind: ZoneType, lo: int, hi: int, store: BitmapStore, table: npt.NDArray[np.int64]) -> None:
        """``store``: the allocator's bitmaps (this zone's list of (order, type) is bitmap ``free_list_index(kind,
        order, type)``); ``table``: the allocator's zone table (:data:`ZONE_COLUMNS`; row ``kind`` is this zone's)."""
        self.kind = kind
        self.lo = lo
        self.hi = hi
        self.free = [
            [store.bitmap(free_list_index(kind, o, m)) for m in range(NTYPES)] for o in range(MAX_PAGE_ORDER + 1)
        ]
        table[kind, :3] = (lo, hi, 0)
        self._row = table[kind].data
        self.managed = 0
        self.reserve = 0

    def __getstate__(self) -> tuple[object, ...]:
        return self.kind, self.lo, self.hi, self.free, self.managed  # the table row is rebound by the allocator

    def __setstate__(self, state: tuple[object, ...]) -> None:
        self.kind, self.lo, self.hi, self.free, self.managed = state  # type: ignore[assignment]

    @property
    def free_pages(self) -> int:
        return self._row[2]  # type: ignore[no-any-return]

    @free_pages.setter
    def free_pages(self, value: int) -> None:
        self._row[2] = value

    @property
    def reserve(self) -> int:
        return self._row[3]  # type: ignore[no-any-return]

    @reserve.setter
    def reserve(self, value: int) -> None:
        self._row[3] = value

    def nr_free(self, order: int) -> int:
        return sum(bm.count for bm in self.free[order])

    def blocks_at_least(self, order: int, mt: int | None = None) -> int:
        """How many ``order`` blocks the free blocks of order >= ``order`` (of one type, or all) hold."""
        if mt is None:
            if order == 0:
                return self.free_pages  # every free page is an order-0 block
            return sum(self.nr_free(o) << (o - order) for o in range(order, MAX_PAGE_ORDER + 1))
        return sum(self.free[o][mt].count << (o - order) for o in range(order, MAX_PAGE_ORDER + 1))

    def cap(self, order: int) -> int:
        """How many more ``order`` allocations the watermark check lets through (``__zone_watermark_ok`` with a
        zero watermark: ``free_pages - ((1 << order) - 1) > lowmem_reserve``)."""
        return max(0, (self.free_pages - self.reserve) >> order)


@dataclass(frozen=True)
class PageTypeInfo:
    """``/proc/pagetypeinfo`` of one zone: free blocks per migratetype and order, pageblocks per migratetype."""

    zone: str
    free: dict[str, list[int]]
    blocks: dict[str, int]

    def free_pages(self, mt: str) -> int:
        return sum(n << o for o, n in enumerate(self.free[mt]))


class BuddyAllocator:
    """Buddy allocator over frames ``[0, nframes)``; free memory is the union of ``ranges`` (``[lo, hi)`` PFN
    ranges; None = all of it). Frames outside the ranges are never handed out.

    ``alloc``/``free`` model one ``__rmqueue``/``__free_one_page`` call; ``alloc_bulk``/``free_bulk`` a loop of
    them (``free_bulk`` in ascending PFN order), with the arguments checked first.
    """

    def __init__(
        self,
        nframes: int,
        *,
        ranges: Sequence[tuple[int, int]] | None = None,
        page_tags: tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]] | None = None,
        zone_pfns: tuple[int, int] = (MAX_DMA_PFN, MAX_DMA32_PFN),
    ) -> None:
        """``zone_pfns``: the ends of ZONE_DMA and ZONE_DMA32 (x86-64's by default; tests shrink them, keeping them
        multiples of ``2**MAX_PAGE_ORDER`` so that no buddy block crosses a zone boundary). ``page_tags``: every
        frame's owner tag and, per tag, whether such a page is on an LRU list (``PageLRU``: what
        ``prep_move_freepages_block`` counts as movable; the host kernel's frame table); None: no page is."""
        if nframes < 0:
            raise ValueError(f"nframes must be >= 0, got {nframes}")
        dma_end, dma32_end = (int(p) for p in zone_pfns)
        if not 0 <= dma_end <= dma32_end or (dma_end | dma32_end) & ((1 << MAX_PAGE_ORDER) - 1):
            raise ValueError(f"zone_pfns must be ascending multiples of {1 << MAX_PAGE_ORDER}, got {zone_pfns}")
        self._dma_end, self._dma32_end = dma_end, dma32_end
        self._nframes = int(nframes)
        self._page_tags = page_tags
        spans = [(0, self._nframes)] if ranges is None else sorted((int(a), int(b)) for a, b in ranges)
        prev = 0
        for lo, hi in spans:
            if lo < prev or hi > self._nframes or lo > hi:
                raise ValueError(f"ranges must be disjoint, inside [0, {self._nframes:#x}): got {spans}")
            prev = hi
        self._ranges = [(lo, hi) for lo, hi in spans if hi > lo]
        self._all_ram = self._ranges == [(0, self._nframes)] or self._nframes == 0
        self._range_starts = [lo for lo, _ in self._ranges]
        #: the same bounds as arrays, for the batch checks of :meth:`_check_in_ram`
        self._range_los = np.array(self._range_starts, dtype=np.int64)
        self._range_his = np.array([hi for _, hi in self._ranges], dtype=np.int64)
        bounds = {ZoneType.DMA: (0, dma_end), ZoneType.DMA32: (dma_end, dma32_end)}
        zspans = []
        for kind in ZoneType:
            lo, hi = bounds.get(kind, (dma32_end, self._nframes))
            lo, hi = min(lo, self._nframes), min(hi, self._nframes)
            zspans.append((lo, max(lo, hi)))
        #: every free list's bitmap (:func:`free_list_index`)
        self._store = BitmapStore(_free_list_sizes(zspans))
        self._zt = np.full((5, 4), -1, dtype=np.int64)  # ZONE_COLUMNS
        self._zones = [
            _Zone(kind, lo, hi, self._store, self._zt) for kind, (lo, hi) in zip(ZoneType, zspans, strict=True)
        ]
        managed = sum(hi - lo for lo, hi in self._ranges)
        #: ``page_group_by_mobility_disabled`` (mm/page_alloc.c ``build_all_zonelists_init``)
        self.mobility_disabled = managed < PAGEBLOCK_NR_PAGES * MIGRATE_TYPES
        boot_mt = Migratetype.UNMOVABLE if self.mobility_disabled else Migratetype.MOVABLE
        self._pb = np.full((self._nframes + PAGEBLOCK_NR_PAGES - 1) >> PAGEBLOCK_ORDER, boot_mt, dtype=np.uint8)
        self._pbv = self._pb.data  # single reads and writes
        for lo, hi in self._ranges:
            for z in self._zones:
                a, b = max(lo, z.lo), min(hi, z.hi)
                if b > a:
                    z.managed += b - a
                    self._add_range(z, a, b, int(boot_mt))
        self._managed = managed
        # setup_per_zone_lowmem_reserve(): reserve of zone i against a Normal request = managed pages of the zones
        # above it, up to Normal, / ratio; 0 if Normal itself (the upper zone j of lowmem_reserve[j]) is empty.
        normal = self._zones[ZoneType.NORMAL]
        for z in self._zones[: ZoneType.NORMAL]:
            above = sum(u.managed for u in self._zones[z.kind + 1 :])
            z.reserve = 0 if not normal.managed or not z.managed else above // LOWMEM_RESERVE_RATIO
        #: (pageblock, requested type) pairs whose claim failed during the current alloc()/alloc_bulk() call
        self._claim_failed: set[tuple[int, int]] = set()
        #: the zonelist of a Normal request, populated zones only: Normal, DMA32, DMA
        self._zonelist = [z for z in reversed(self._zones) if z.managed]
        #: ``alloc_flags_nofragment()``: the preferred zone is Normal
        self._nofragment = bool(self._zonelist) and self._zonelist[0].kind == ZoneType.NORMAL
        self._zt[ZT_FLAGS] = (int(self.mobility_disabled), int(self._nofragment), int(page_tags is not None), 0)
        self._zt[ZT_ZONELIST, : len(self._zonelist)] = [z.kind for z in self._zonelist]

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        del state["_pbv"]  # a memoryview neither copies nor pickles: rebuilt from the array
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._pbv = self._pb.data
        for z in self._zones:  # a memoryview neither copies nor pickles: rebound to the unpickled table
            z._row = self._zt[z.kind].data

    # ------------------------------------------------------------------ properties / introspection
    @property
    def nframes(self) -> int:
        """Number of frames covered (PFNs ``0..nframes-1``), RAM or not."""
        return self._nframes

    @property
    def max_order(self) -> int:
        return MAX_PAGE_ORDER

    @property
    def managed_frames(self) -> int:
        """Frames of RAM the allocator manages (the union of ``ranges``)."""
        return self._managed

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return list(self._ranges)

    @property
    def free_frames(self) -> int:
        """Frames on the free lists."""
        return sum(z.free_pages for z in self._zones)

    @property
    def used_frames(self) -> int:
        """Managed frames not on the free lists (allocated)."""
        return self._managed - self.free_frames

    def gfp_migratetype(self, mt: int) -> Migratetype:
        """``gfp_migratetype()``: the requested type, or UNMOVABLE when mobility grouping is disabled."""
        return Migratetype.UNMOVABLE if self.mobility_disabled else Migratetype(mt)

    def pageblock_migratetype(self, pfn: int) -> Migratetype:
        """``get_pfnblock_migratetype()``."""
        return Migratetype(int(self._pb[int(pfn) >> PAGEBLOCK_ORDER]))

    def pageblock_types(self) -> npt.NDArray[np.uint8]:
        """The migratetype of every pageblock (a copy)."""
        return self._pb.copy()

    def zone_of(self, pfn: int) -> ZoneType:
        return self._zone(int(pfn)).kind

    def zone_span(self, kind: ZoneType) -> tuple[int, int]:
        z = self._zones[kind]
        return z.lo, z.hi

    def zone_free_frames(self, kind: ZoneType) -> int:
        return self._zones[kind].free_pages

    def zone_managed_frames(self, kind: ZoneType) -> int:
        return self._zones[kind].managed

    def lowmem_reserve(self, kind: ZoneType) -> int:
        """The zone's ``lowmem_reserve[ZONE_NORMAL]`` in pages."""
        return self._zones[kind].reserve

    def zonelist(self) -> list[ZoneType]:
        """The populated zones a Normal-zone request tries, in order."""
        return [z.kind for z in self._zonelist]

    def buddyinfo(self) -> list[int]:
        """Free block count for each order ``0..MAX_PAGE_ORDER``, summed over zones (``/proc/buddyinfo``)."""
        return [sum(z.nr_free(o) for z in self._zones) for o in range(MAX_PAGE_ORDER + 1)]

    def pagetypeinfo(self) -> list[PageTypeInfo]:
        """``/proc/pagetypeinfo`` for each populated zone."""
        out = []
        for z in self._zones:
            if not z.managed:
                continue
            free = {m.name.capitalize(): [z.free[o][m].count for o in range(MAX_PAGE_ORDER + 1)] for m in Migratetype}
            a, b = z.lo >> PAGEBLOCK_ORDER, (z.hi + PAGEBLOCK_NR_PAGES - 1) >> PAGEBLOCK_ORDER
            counts = np.bincount(self._pb[a:b], minlength=NTYPES)
            out.append(PageTypeInfo(z.kind.name, free, {m.name.capitalize(): int(counts[m]) for m in Migratetype}))
        return out

    def free_frames_by_type(self) -> dict[Migratetype, int]:
        """Free pages per migratetype, over all zones."""
        return {
            m: sum(z.free[o][m].count << o for z in self._zones for o in range(MAX_PAGE_ORDER + 1)) for m in Migratetype
        }

    def largest_free_order(self) -> int:
        """Highest order with a free block, or -1 when no memory is free."""
        for order in range(MAX_PAGE_ORDER, -1, -1):
            if any(z.nr_free(order) for z in self._zones):
                return order
        return -1

    def fragmentation_index(self, order: int) -> float:
        """Unusable free space index for ``order`` (mm/vmstat.c ``unusable_free_index``, as a fraction).

        ``(free_pages - (free_blocks_suitable << order)) / free_pages``, over all zones; 1 with no free memory."""
        self._check_order(order)
        info = self.buddyinfo()
        free_pages = sum(n << o for o, n in enumerate(info))
        if free_pages == 0:
            return 1.0
        suitable = sum(n << (o - order) for o, n in enumerate(info) if o >= order)
        return (free_pages - (suitable << order)) / free_pages

    def is_free(self, pfn: int) -> bool:
        """Whether frame ``pfn`` lies inside a free buddy block."""
        pfn = int(pfn)
        if not 0 <= pfn < self._nframes:
            raise ValueError(f"pfn {pfn:#x} out of range [0, {self._nframes:#x})")
        return self._free_block_of(pfn) is not None

    def _free_block_of(self, pfn: int) -> tuple[int, int] | None:
        """``(head pfn, order)`` of the free block holding ``pfn``, if any."""
        z = self._zone(pfn)
        rel = pfn - z.lo
        free = z.free
        mt = self._pbv[pfn >> PAGEBLOCK_ORDER]
        for order in range(MAX_PAGE_ORDER + 1):
            if order > PAGEBLOCK_ORDER:  # the block's first pageblock
                mt = self._pbv[(z.lo + ((rel >> order) << order)) >> PAGEBLOCK_ORDER]
            if (rel >> order) in free[order][mt]:
                return z.lo + ((rel >> order) << order), order
        return None

    def free_blocks(self, order: int | None = None) -> list[tuple[int, int]]:
        """Sorted ``(pfn, order)`` of all free blocks (or those of one order). For tests and reports."""
        orders = range(MAX_PAGE_ORDER + 1) if order is None else [order]
        blocks = [
            (z.lo + (int(i) << o), o)
            for z in self._zones
            for o in orders
            for bm in z.free[o]
            for i in bm.members().tolist()
        ]
        blocks.sort()
        return blocks

    def free_blocks_typed(self) -> list[tuple[int, int, Migratetype]]:
        """Sorted ``(pfn, order, free-list migratetype)`` of all free blocks."""
        out = [
            (z.lo + (int(i) << o), o, Migratetype(m))
            for z in self._zones
            for o in range(MAX_PAGE_ORDER + 1)
            for m, bm in enumerate(z.free[o])
            for i in bm.members().tolist()
        ]
        out.sort()
        return out

    def zone_buddyinfo(self, kind: ZoneType) -> list[int]:
        """Free block count per order of one zone (a row of ``/proc/buddyinfo``)."""
        z = self._zones[kind]
        return [z.nr_free(o) for o in range(MAX_PAGE_ORDER + 1)]

    def is_ram(self, pfn: int, npages: int) -> bool:
        """Whether ``[pfn, pfn + npages)`` lies inside one RAM range."""
        i = bisect.bisect_right(self._range_starts, pfn) - 1
        return i >= 0 and pfn + npages <= self._ranges[i][1]

    def free_head(self, pfn: int) -> int | None:
        """The order of the free block starting at ``pfn`` (``PageBuddy`` + ``buddy_order``), or None."""
        pfn = int(pfn)
        z = self._zone(pfn)
        rel = pfn - z.lo
        mt = self._pb[pfn >> PAGEBLOCK_ORDER]
        for order in range(MAX_PAGE_ORDER + 1):
            if rel & ((1 << order) - 1) or pfn + (1 << order) > z.hi:
                break
            if (rel >> order) in z.free[order][mt]:
                return order
        return None

    def suitable_free_block(self, kind: ZoneType, order: int, mt: int) -> bool:
        """``__compact_finished`` for a direct compactor: "Job done if page is free of the right migratetype", or
        if ``find_suitable_fallback(area, order, migratetype, true)`` finds a block the allocation would claim."""
        z = self._zones[kind]
        mt = int(self.gfp_migratetype(mt))
        for o in range(order, MAX_PAGE_ORDER + 1):
            area = z.free[o]
            if area[mt].count:
                return True
            if (self.mobility_disabled or should_try_claim_block(o, mt)) and any(
                area[fb].count for fb in _FALLBACK_IDX[mt]
            ):
                return True
        return False

    def free_pages_in(self, lo: int, hi: int) -> int:
        """Free frames in ``[lo, hi)``, a range inside one zone (blocks straddling an end count in part)."""
        z = self._zone(lo)
        total = 0
        for order in range(MAX_PAGE_ORDER + 1):
            size = 1 << order
            a, b = (lo - z.lo) >> order, (hi - z.lo + size - 1) >> order
            for bm in z.free[order]:
                for i in bm.members_in(a, b).tolist():
                    head = z.lo + (i << order)
                    total += min(head + size, hi) - max(head, lo)
        return total

    def check_invariants(self) -> None:
        """Assert the free lists are consistent (for state machines): every free block aligned, inside its zone and
        RAM, on the list of its pageblock's migratetype (an order-10 block's two pageblocks agree), none
        overlapping another, none with a free buddy of its order (fully coalesced), and the counts right."""
        heads, ends = [], []
        pb = self._pb
        for z in self._zones:
            total = 0
            for order in range(MAX_PAGE_ORDER + 1):
                for mt, bm in enumerate(z.free[order]):
                    bm.check()
                    idx = bm.members()
                    if idx.size == 0:
                        continue
                    h = z.lo + (idx << order)
                    assert (h + (1 << order) <= z.hi).all(), "free block beyond its zone"
                    assert (pb[h >> PAGEBLOCK_ORDER] == mt).all(), f"order-{order} block on a foreign list"
                    if order > PAGEBLOCK_ORDER:
                        assert (pb[(h >> PAGEBLOCK_ORDER) + 1] == mt).all(), "order-10 block of two types"
                    if order < MAX_PAGE_ORDER:
                        bh = h ^ (1 << order)
                        inside = bh + (1 << order) <= z.hi
                        bt = pb[np.minimum(bh, self._nframes - 1) >> PAGEBLOCK_ORDER]
                        for m in range(NTYPES):
                            sel = inside & (bt == m)
                            if sel.any():
                                buddies = (bh[sel] - z.lo) >> order
                                assert not z.free[order][m].contains_many(buddies).any(), "not coalesced"
                    total += int(idx.size) << order
                    heads.append(h)
                    ends.append(h + (1 << order))
            assert total == z.free_pages, (z.kind, total, z.free_pages)
        if heads:
            h, e = np.concatenate(heads), np.concatenate(ends)
            perm = np.argsort(h)
            h, e = h[perm], e[perm]
            assert (e[:-1] <= h[1:]).all(), "overlapping free blocks"
            if not self._all_ram:
                self._check_in_ram(h, 1)
                self._check_in_ram(e - 1, 1)

    # ------------------------------------------------------------------ allocation (mm/page_alloc.c)
    def alloc(self, order: int, migratetype: int = Migratetype.MOVABLE) -> int | None:
        """Allocate an aligned block of ``2**order`` frames of ``migratetype``; its PFN, or None (no free block
        any zone may give)."""
        if not 0 <= order <= MAX_PAGE_ORDER:
            self._check_order(order)
        self._claim_failed.clear()
        return self._alloc_one(order, 0 if self.mobility_disabled else int(migratetype))

    def _alloc_one(self, order: int, mt: int) -> int | None:
        """``get_page_from_freelist`` over the zonelist: the PFN, or None."""
        for nofrag in (True, False) if self._nofragment else (False,):
            for z in self._zonelist:
                if z.free_pages - ((1 << order) - 1) <= z.reserve:
                    continue  # __zone_watermark_ok fails (zero watermark, lowmem_reserve only)
                pfn = self._rmqueue_smallest(z, order, mt)
                if pfn is not None:
                    return pfn
                pfn = self._rmqueue_claim(z, order, mt, nofrag)
                if pfn is None and not nofrag:
                    pfn = self._rmqueue_steal(z, order, mt)
                if pfn is not None:
                    return pfn
        return None

    def _rmqueue_smallest(self, z: _Zone, order: int, mt: int) -> int | None:
        """``__rmqueue_smallest()``: the smallest free block of ``mt``, split down by ``expand()``."""
        free = z.free
        for current in range(order, MAX_PAGE_ORDER + 1):
            bm = free[current][mt]
            if bm.count:
                pfn = z.lo + (bm.pop_first() << current)
                self._expand(z, pfn, order, current, mt)
                z.free_pages -= 1 << order
                return pfn
        return None

    def _expand(self, z: _Zone, pfn: int, low: int, high: int, mt: int) -> None:
        """``expand()``: hand the upper halves of the block back to the ``mt`` lists, largest first."""
        free = z.free
        rel = pfn - z.lo
        while high > low:
            high -= 1
            free[high][mt].add((rel >> high) + 1)

    def _rmqueue_claim(self, z: _Zone, order: int, start_mt: int, nofrag: bool) -> int | None:
        """``__rmqueue_claim()``: claim a pageblock of a fallback type, scanning from the largest free block down."""
        # "Do not steal pages from freelists belonging to other pageblocks i.e. orders < pageblock_order."
        min_order = PAGEBLOCK_ORDER if nofrag and order < PAGEBLOCK_ORDER else order
        for current in range(MAX_PAGE_ORDER, min_order - 1, -1):
            # find_suitable_fallback(area, current, start_mt, claimable=true)
            if not self.mobility_disabled and not should_try_claim_block(current, start_mt):
                return None  # -2: "Advanced into orders too low to claim, abort"
            area = z.free[current]
            for fb in _FALLBACK_IDX[start_mt]:
                if area[fb].count:
                    pfn = self._try_to_claim_block(
                        z, z.lo + (area[fb].first() << current), current, order, start_mt, fb
                    )
                    if pfn is not None:
                        return pfn
                    break  # only the head of the first non-empty fallback list is tried at this order
        return None

    def _try_to_claim_block(
        self, z: _Zone, pfn: int, current: int, order: int, start_mt: int, block_mt: int
    ) -> int | None:
        """``try_to_claim_block()``."""
        if current >= PAGEBLOCK_ORDER:  # "Take ownership for orders >= pageblock_order"
            z.free[current][block_mt].remove((pfn - z.lo) >> current)
            self._pb[pfn >> PAGEBLOCK_ORDER : (pfn >> PAGEBLOCK_ORDER) + (1 << (current - PAGEBLOCK_ORDER))] = start_mt
            self._expand(z, pfn, order, current, start_mt)
            z.free_pages -= 1 << order
            return pfn
        start = pfn >> PAGEBLOCK_ORDER << PAGEBLOCK_ORDER
        if start < z.lo or start + PAGEBLOCK_NR_PAGES > z.hi:
            return None  # prep_move_freepages_block: "don't touch ranges that straddle into other zones"
        if (start, start_mt) in self._claim_failed:
            return None
        free_pages = self._free_in_pageblock(z, start, block_mt)
        movable = self._lru_pages(start, PAGEBLOCK_NR_PAGES)
        if start_mt == Migratetype.MOVABLE:
            alike = movable
        elif block_mt == Migratetype.MOVABLE:
            # "consider all non-movable pages as compatible"
            alike = PAGEBLOCK_NR_PAGES - (free_pages + movable)
        else:
            alike = 0  # "be conservative since we can't distinguish the exact migratetype of non-movable pages"
        if free_pages + alike >= (1 << (PAGEBLOCK_ORDER - 1)) or self.mobility_disabled:
            self._move_freepages_block(z, start, block_mt, start_mt)
            self._pb[start >> PAGEBLOCK_ORDER] = start_mt
            return self._rmqueue_smallest(z, order, start_mt)
        # Within one alloc()/alloc_bulk() call nothing is freed and no page changes owner, so this pageblock's
        # free_pages + alike_pages can only fall (a steal from it takes a free page; for a non-movable request into
        # a movable block the sum is 512 - movable_pages, constant): it fails again, and is not recounted.
        self._claim_failed.add((start, start_mt))
        return None

    def _rmqueue_steal(self, z: _Zone, order: int, start_mt: int) -> int | None:
        """``__rmqueue_steal()``: "Try to steal a single page from some fallback migratetype. Leave the rest of the
        block as its current migratetype, potentially causing fragmentation." Smallest order first."""
        for current in range(order, MAX_PAGE_ORDER + 1):
            area = z.free[current]
            for fb in _FALLBACK_IDX[start_mt]:
                if area[fb].count:
                    pfn = z.lo + (area[fb].pop_first() << current)
                    self._expand(z, pfn, order, current, fb)  # page_del_and_expand(..., fallback_mt)
                    z.free_pages -= 1 << order
                    return pfn
        return None

    def _free_in_pageblock(self, z: _Zone, start: int, mt: int) -> int:
        """Free pages of the pageblock at ``start`` (all on the ``mt`` lists; below order 9 they lie inside it): a
        popcount of the level-0 words of each order's list over the pageblock."""
        rel = start - z.lo
        total = 0
        for order in range(PAGEBLOCK_ORDER):
            words = z.free[order][mt].levels[0]
            lo, n = rel >> order, PAGEBLOCK_NR_PAGES >> order
            if n >= 64:
                count = sum(int(w).bit_count() for w in words[lo >> 6 : (lo + n) >> 6].tolist())
            else:
                count = ((int(words[lo >> 6]) >> (lo & 63)) & ((1 << n) - 1)).bit_count()
            total += count << order
        return total

    def _lru_pages(self, pfn: int, npages: int) -> int:
        """Pages of ``[pfn, pfn + npages)`` on an LRU list (``prep_move_freepages_block``'s movable count)."""
        if self._page_tags is None:
            return 0
        tags, lru = self._page_tags
        return int(np.count_nonzero(lru[tags[pfn : pfn + npages]]))

    def _move_freepages_block(self, z: _Zone, start: int, old_mt: int, new_mt: int) -> None:
        """``__move_freepages_block()``: move the pageblock's free blocks from the ``old_mt`` to the ``new_mt`` lists
        (a free block of order >= 9 is a whole pageblock: it moves with its type in ``try_to_claim_block``)."""
        rel = start - z.lo
        for order in range(PAGEBLOCK_ORDER):
            src, dst = z.free[order][old_mt], z.free[order][new_mt]
            idx = src.members_in(rel >> order, (rel + PAGEBLOCK_NR_PAGES) >> order)
            if idx.size:
                src.remove_many(idx)
                dst.add_many(idx)

    def take_page_off_buddy(self, pfn: int) -> bool:
        """``take_page_off_buddy()``: remove the free frame ``pfn`` from the free lists, splitting the free block that
        holds it and returning the other halves (to its type's lists); False if the frame is not free."""
        found = self._free_block_of(int(pfn))
        if found is None:
            return False
        self._carve(found[0], found[1], int(pfn), int(pfn) + 1)
        return True

    def _carve(self, head: int, order: int, lo: int, hi: int) -> None:
        """Remove the free block ``(head, order)``, giving back its parts outside ``[lo, hi)`` (maximally merged)."""
        z = self._zone(head)
        mt = self._pbv[head >> PAGEBLOCK_ORDER]
        z.free[order][mt].remove((head - z.lo) >> order)
        end = head + (1 << order)
        taken = min(hi, end) - max(lo, head)
        z.free_pages -= taken
        for a, b in ((head, max(head, lo)), (min(end, hi), end)):
            for p, o in _decompose(a, b):
                z.free[o][mt].add((p - z.lo) >> o)

    def take_free_range(self, lo: int, hi: int) -> IntArray:
        """Take every free frame of ``[lo, hi)`` (inside one zone) off the free lists; return them ascending.

        The free scanner of compaction (``isolate_freepages_block``) and ``alloc_contig_range`` (which isolates
        the range and takes its free pages) do this; a free block straddling an end is split."""
        z = self._zone(lo)
        parts: list[IntArray] = []
        for order in range(MAX_PAGE_ORDER + 1):
            size = 1 << order
            a, b = (lo - z.lo) >> order, (hi - z.lo + size - 1) >> order
            for bm in z.free[order]:
                idx = bm.members_in(a, b)
                if idx.size == 0:
                    continue
                heads = z.lo + (idx << order)
                inside = (heads >= lo) & (heads + size <= hi)
                whole = idx[inside]
                if whole.size:
                    bm.remove_many(whole)
                    z.free_pages -= int(whole.size) << order
                    parts.append(_expand_blocks(z.lo + (whole << order), order))
                for head in heads[~inside].tolist():
                    self._carve(head, order, lo, hi)
                    parts.append(np.arange(max(head, lo), min(head + size, hi), dtype=np.int64))
        if not parts:
            return np.zeros(0, dtype=np.int64)
        out = np.concatenate(parts)
        out.sort()
        return out

    # ------------------------------------------------------------------ freeing
    def free(self, pfn: int, order: int, *, check_free: bool = True) -> None:
        """Free the block of ``2**order`` frames at ``pfn`` (``__free_one_page``), merging with free buddies.

        Raises ValueError for a bad order, a misaligned or out-of-range block, a block outside RAM, or (unless the
        caller checked it, ``check_free=False``) a block whose first or last frame is already free (double free,
        freeing inside a free block)."""
        pfn, order = int(pfn), int(order)
        self._check_block(pfn, order)
        if check_free and (
            self._free_block_of(pfn) is not None or (order and self._free_block_of(pfn + (1 << order) - 1))
        ):
            raise ValueError(f"double free: block {pfn:#x} order {order} overlaps free memory")
        self._free_checked(pfn, order)

    def _free_checked(self, pfn: int, order: int) -> None:
        z = self._zone(pfn)
        pb = self._pbv
        mt = pb[pfn >> PAGEBLOCK_ORDER]
        z.free_pages += 1 << order
        free = z.free
        rel = pfn - z.lo
        while order < MAX_PAGE_ORDER:
            brel = rel ^ (1 << order)
            buddy_mt = mt if order < PAGEBLOCK_ORDER else pb[(z.lo + brel) >> PAGEBLOCK_ORDER]
            bidx = brel >> order
            if z.lo + brel + (1 << order) > z.hi or bidx not in free[order][buddy_mt]:
                break
            free[order][buddy_mt].remove(bidx)
            if buddy_mt != mt:  # "Match buddy type": the buddy is a whole pageblock (order >= 9)
                b0 = (z.lo + brel) >> PAGEBLOCK_ORDER
                self._pb[b0 : b0 + (1 << (order - PAGEBLOCK_ORDER))] = mt
            rel &= brel
            order += 1
        free[order][mt].add(rel >> order)

    def free_bulk(self, pfns: npt.ArrayLike, order: int, *, check_free: bool = True) -> None:
        """Free every block in ``pfns`` (all of ``order``); the final state of a loop of ``free`` in ascending PFN
        order.

        Validates the whole batch first and raises ValueError without changing anything if a block is misaligned,
        out of range, repeated, outside RAM or (as in ``free``) overlaps free memory. A caller that knows no block
        overlaps free memory (the host kernel checks its frame table) passes ``check_free=False``."""
        self._check_order(order)
        arr = np.asarray(pfns, dtype=np.int64).ravel()
        n = arr.size
        if n == 0:
            return
        size = 1 << order
        if arr.min() < 0 or int(arr.max()) + size > self._nframes:
            raise ValueError(f"free_bulk: block out of range [0, {self._nframes:#x})")
        if np.any(arr & (size - 1)):
            raise ValueError(f"free_bulk: pfn not aligned to order {order}")
        cur = ascending(arr)
        if n > 1 and np.any(cur[1:] == cur[:-1]):
            raise ValueError("free_bulk: the same block is freed twice")
        self._check_in_ram(cur, size)
        if check_free:
            self._check_no_overlap(cur, size)
        self._free_sorted(cur, order)

    def _free_sorted(self, cur: IntArray, order: int) -> None:
        """Free the validated blocks ``cur`` (ascending) of ``order``: ``_free_checked`` of each, in turn."""
        for pfn in cur.tolist():
            self._free_checked(pfn, order)

    def _check_no_overlap(self, starts: IntArray, size: int) -> None:
        """Raise ValueError if any block ``[s, s+size)`` (sorted starts) intersects a free buddy block."""
        fstarts_parts, fends_parts = [], []
        for z in self._zones:
            for o in range(MAX_PAGE_ORDER + 1):
                for bm in z.free[o]:
                    if bm.count:
                        a = z.lo + (bm.members() << o)
                        fstarts_parts.append(a)
                        fends_parts.append(a + (1 << o))
        if not fstarts_parts:
            return
        fstarts = np.concatenate(fstarts_parts)
        fends = np.concatenate(fends_parts)
        perm = np.argsort(fstarts)
        fstarts, fends = fstarts[perm], fends[perm]
        idx = np.searchsorted(fstarts, starts + size, side="left") - 1
        hit = (idx >= 0) & (fends[np.maximum(idx, 0)] > starts)
        if np.any(hit):
            bad = int(starts[np.argmax(hit)])
            raise ValueError(f"double free: block {bad:#x} (size {size}) overlaps free memory")

    def _check_in_ram(self, starts: IntArray, size: int) -> None:
        """Raise ValueError unless every block ``[s, s+size)`` (sorted starts) lies inside one RAM range."""
        if self._all_ram:
            return
        r = np.searchsorted(self._range_los, starts, side="right") - 1
        ok = (r >= 0) & (starts + size <= self._range_his[np.maximum(r, 0)])
        if not ok.all():
            raise ValueError(f"block {int(starts[np.argmin(ok)]):#x} (size {size}) is not RAM")

    # ------------------------------------------------------------------ bulk allocation
    def obtainable(self, order: int) -> int:
        """How many ``order`` blocks a loop of ``alloc`` calls would get before the first failure (any type: the
        fallbacks can reach every free block; each zone down to its lowmem reserve)."""
        self._check_order(order)
        return sum(min(z.blocks_at_least(order), z.cap(order)) for z in self._zonelist)

    def alloc_bulk(self, order: int, count: int, migratetype: int = Migratetype.MOVABLE) -> IntArray | None:
        """Allocate ``count`` blocks of ``order``; same PFNs, in the same order, as ``count`` ``alloc`` calls.

        All-or-nothing: returns None (state unchanged) if fewer than ``count`` such blocks are obtainable."""
        self._check_order(order)
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if count == 0:
            return np.empty(0, dtype=np.int64)
        mt = int(self.gfp_migratetype(migratetype))
        if self.obtainable(order) < count:
            return None
        return self._alloc_bulk_checked(order, count, mt)

    def _alloc_bulk_checked(self, order: int, count: int, mt: int) -> IntArray:
        """``count`` (> 0, obtainable) successive allocations of ``order`` and type ``mt``: their PFNs."""
        self._claim_failed.clear()
        out = np.empty(count, dtype=np.int64)
        for k in range(count):
            pfn = self._alloc_one(order, mt)
            assert pfn is not None  # obtainable() counted it
            out[k] = pfn
        return out

    # ------------------------------------------------------------------ helpers
    def _zone(self, pfn: int) -> _Zone:
        if pfn < self._dma_end:
            return self._zones[ZoneType.DMA]
        if pfn < self._dma32_end:
            return self._zones[ZoneType.DMA32]
        return self._zones[ZoneType.NORMAL]

    def _add_range(self, z: _Zone, lo: int, hi: int, mt: int) -> None:
        """Give ``[lo, hi)`` to the free lists as maximal aligned blocks (``memblock_free_all`` at boot)."""
        size = 1 << MAX_PAGE_ORDER
        a = min(hi, -(-lo // size) * size)
        b = max(a, hi // size * size)
        for p, o in [*_decompose(lo, a), *_decompose(b, hi)]:
            z.free[o][mt].add((p - z.lo) >> o)
        if b > a:
            z.free[MAX_PAGE_ORDER][mt].add_many(np.arange((a - z.lo) >> MAX_PAGE_ORDER, (b - z.lo) >> MAX_PAGE_ORDER))
        z.free_pages += hi - lo

    def _check_order(self, order: int) -> None:
        if not 0 <= order <= MAX_PAGE_ORDER:
            raise ValueError(f"order must be in 0..{MAX_PAGE_ORDER}, got {order}")

    def _check_block(self, pfn: int, order: int) -> None:
        self._check_order(order)
        size = 1 << order
        if pfn & (size - 1):
            raise ValueError(f"pfn {pfn:#x} is not aligned to order {order}")
        if pfn < 0 or pfn + size > self._nframes:
            raise ValueError(f"block {pfn:#x} order {order} out of range [0, {self._nframes:#x})")
        if not self._all_ram and not self.is_ram(pfn, size):
            raise ValueError(f"block {pfn:#x} (size {size}) is not RAM")

    def __repr__(self) -> str:
        return (
            f"BuddyAllocator(nframes={self._nframes}, free_frames={self.free_frames}, "
            f"buddyinfo={self.buddyinfo()}, zones={self.zonelist()})"
        )


def _decompose(start: int, end: int) -> Iterator[tuple[int, int]]:
    """Maximal aligned blocks (order <= MAX_PAGE_ORDER) covering ``[start, end)``, ascending."""
    pfn = start
    while pfn < end:
        order = MAX_PAGE_ORDER
        if pfn:
            order = min(order, (pfn & -pfn).bit_length() - 1)
        while pfn + (1 << order) > end:
            order -= 1
        yield pfn, order
        pfn += 1 << order


def _expand_blocks(heads: IntArray, order: int) -> IntArray:
    if order == 0:
        return heads
    return (heads[:, None] + np.arange(1 << order, dtype=np.int64)).ravel()
