"""Memory compaction and contiguous allocation: ``mm/compaction.c`` and ``alloc_contig_pages()`` of mm/page_alloc.c.

:class:`Compactor` is ``compact_zone()``: a migration scanner walks the zone's pageblocks from the bottom
(``isolate_migratepages``), a free scanner from the top (``isolate_freepages``); each movable page the first finds
is copied to a free page the second isolated (``migrate_pages`` → ``folio_mc_copy``: a read of the source and a
write of the destination through the direct map, each RMP/present-checked like any kernel access) and the source
is freed. The scanners stop when they meet (``compact_scanners_met``), and their positions are remembered per zone
between runs (``compact_cached_migrate_pfn`` / ``compact_cached_free_pfn``), reset when they met. Which pages move is
the frame owner's :data:`~snpsim.host.frames.ALLOCATION` entry: only page cache and anonymous host memory
(guest_memfd folios, kernel memory and pinned VMM pages do not). Pageblock types are respected
(``suitable_migration_target``: free pages are taken only from MOVABLE pageblocks, and not from one that is already
a free block of the wanted order).

Three callers, as in Linux:

* direct compaction (``__alloc_pages_direct_compact`` → ``try_to_compact_pages``) for a high-order allocation that
  failed: each zone of the zonelist until ``__compact_finished`` sees a suitable free block ("Job done if page is
  free of the right migratetype", or one ``find_suitable_fallback(..., claimable=true)`` would claim);
* proactive compaction by kcompactd (``proactive_compact_node``, order -1): while the zone's fragmentation score
  (``extfrag_for_order(zone, COMPACTION_HPAGE_ORDER)``) is above ``100 - compaction_proactiveness``; the node is
  compacted only when its score exceeds that plus 10 (``should_proactive_compact_node``);
* ``alloc_contig_pages`` for blocks above ``MAX_PAGE_ORDER`` (1 GiB hugetlb pages, ``alloc_gigantic_folio``, and 1G
  guest_memfd folios): the first aligned range of the zonelist's zones, lowest first, that holds only RAM that is
  free or movable (``pfn_range_valid_contig``, then ``start_isolate_page_range``'s ``has_unmovable_pages`` check);
  its movable pages are migrated out and it is taken whole. Its pageblocks stay MOVABLE (``undo_isolate_page_range``
  restores the type alloc_contig_range was called with).

Simplifications: one pass in synchronous mode (every pageblock is a migration source, as ``MIGRATE_SYNC`` after the
async attempt failed: direct compaction succeeds at least as often as Linux's first, asynchronous try); no
``fast_find_migrateblock`` / ``fast_isolate_freepages`` heuristics, skip bits, deferral or watermark checks
(``compaction_suitable``), so the scanners walk every pageblock linearly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from snpsim.host.buddy import PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER, Migratetype, ZoneType
from snpsim.host.frames import MIGRATABLE_OWNERS, Owner

if TYPE_CHECKING:
    from snpsim.host.kernel import HostKernel

IntArray = npt.NDArray[np.int64]

PATH_COMPACT = "mm/compaction.c:compact_zone"
PATH_CONTIG = "mm/page_alloc.c:alloc_contig_range"
#: include/linux/compaction.h ``COMPACTION_HPAGE_ORDER`` (the order of the proactive fragmentation score)
COMPACTION_HPAGE_ORDER = PAGEBLOCK_ORDER
#: mm/compaction.c ``sysctl_compaction_proactiveness`` default
COMPACTION_PROACTIVENESS = 20


def fragmentation_score(host: HostKernel, zone: ZoneType) -> int:
    """``fragmentation_score_zone()`` = ``extfrag_for_order(zone, 9)``: the percentage of the zone's free memory
    not in free blocks of order >= 9 (0 with no free memory)."""
    counts = host.buddy.zone_buddyinfo(zone)
    free = sum(n << o for o, n in enumerate(counts))
    if free == 0:
        return 0
    o0 = COMPACTION_HPAGE_ORDER
    suitable = sum(n << (o - o0) for o, n in enumerate(counts) if o >= o0)
    return (free - (suitable << o0)) * 100 // free


def score_wmark(proactiveness: int, low: bool) -> int:
    """``fragmentation_score_wmark()``: ``max(100 - proactiveness, 5)``, +10 (capped at 100) for the high mark."""
    wmark_low = max(100 - proactiveness, 5)
    return wmark_low if low else min(wmark_low + 10, 100)


class Compactor:
    """``compact_zone()`` for one host, with the per-zone cached scanner positions."""

    def __init__(self, host: HostKernel) -> None:
        self.host = host
        #: zone -> [migrate_pfn, free_pfn] (``compact_cached_migrate_pfn`` / ``compact_cached_free_pfn``)
        self._cached: dict[ZoneType, list[int]] = {}

    def _reset(self, zone: ZoneType) -> list[int]:
        lo, hi = self.host.buddy.zone_span(zone)
        pos = [lo, max(lo, (hi - 1) >> PAGEBLOCK_ORDER << PAGEBLOCK_ORDER)]  # pageblock_start_pfn(zone_end - 1)
        self._cached[zone] = pos
        return pos

    # ------------------------------------------------------------------ callers
    def direct(self, order: int, mt: int) -> bool:
        """``try_to_compact_pages``: compact each zone of the zonelist until an ``order`` block of ``mt`` could be
        allocated; True if one can."""
        return any(self.compact_zone(zone, order, mt) == "success" for zone in self.host.buddy.zonelist())

    def proactive(self, proactiveness: int = COMPACTION_PROACTIVENESS, budget: int | None = None) -> int:
        """kcompactd's ``proactive_compact_node``: if the node's score is above the high mark, compact each zone (order
        -1) until its score falls to the low mark or the scanners meet; at most ``budget`` pages per call. Returns
        the pages migrated."""
        buddy = self.host.buddy
        zones = buddy.zonelist()
        total = sum(buddy.zone_managed_frames(z) for z in zones)
        if proactiveness <= 0 or not total:
            return 0
        node = sum(buddy.zone_managed_frames(z) * fragmentation_score(self.host, z) for z in zones) // total
        if node <= score_wmark(proactiveness, low=False):
            return 0
        before = self.host.compaction_migrated
        for zone in reversed(zones):  # for_each populated zone of the node, lowest first
            left = None if budget is None else budget - (self.host.compaction_migrated - before)
            if left is not None and left <= 0:
                break
            self.compact_zone(zone, -1, Migratetype.MOVABLE, proactiveness=proactiveness, budget=left)
        return self.host.compaction_migrated - before

    # ------------------------------------------------------------------ compact_zone
    def _finished(self, zone: ZoneType, order: int, mt: int, proactiveness: int) -> bool:
        """``__compact_finished`` at a pageblock boundary, for order > 0 or proactive (order -1)."""
        if order < 0:
            return fragmentation_score(self.host, zone) <= score_wmark(proactiveness, low=True)
        return self.host.buddy.suitable_free_block(zone, order, mt)

    def compact_zone(
        self,
        zone: ZoneType,
        order: int,
        mt: int,
        *,
        proactiveness: int = COMPACTION_PROACTIVENESS,
        budget: int | None = None,
    ) -> str:
        """One ``compact_zone()`` run: "success" (done), "complete" (scanners met) or "partial" (budget spent)."""
        host, buddy = self.host, self.host.buddy
        pos = self._cached.get(zone) or self._reset(zone)
        hi = buddy.zone_span(zone)[1]
        target_order = order if order > 0 else PAGEBLOCK_ORDER
        freepages: list[int] = []
        migrated = 0
        result = "complete"
        try:
            while True:
                if self._finished(zone, order, mt, proactiveness):
                    result = "success"
                    break
                if (pos[1] >> PAGEBLOCK_ORDER) <= (pos[0] >> PAGEBLOCK_ORDER):  # compact_scanners_met
                    self._reset(zone)
                    break
                if budget is not None and migrated >= budget:
                    result = "partial"
                    break
                block = pos[0]
                pos[0] = block + PAGEBLOCK_NR_PAGES
                end = min(block + PAGEBLOCK_NR_PAGES, hi)
                tags = host.frames.tags(block, end - block)
                sources = (np.flatnonzero(MIGRATABLE_OWNERS[tags]) + block).tolist()  # isolate_migratepages_block
                done = 0
                while done < len(sources):  # migrate_pages: each source to the next isolated free page
                    if budget is not None and migrated >= budget:
                        break
                    if not freepages and not self._isolate_freepages(pos, target_order, freepages):
                        break  # the free scanner reached the migration scanner: nothing to migrate into
                    # as many as the isolated free pages (and the budget) take before compaction_alloc isolates more
                    n = min(len(sources) - done, len(freepages))
                    if budget is not None:
                        n = min(n, budget - migrated)
                    dsts = freepages[:n]
                    del freepages[:n]
                    self._migrate_pages(sources[done : done + n], dsts, PATH_COMPACT)
                    done += n
                    migrated += n
        finally:
            if freepages:  # release_free_list(): isolated free pages not used go back
                buddy.free_bulk(np.array(freepages, dtype=np.int64), 0, check_free=False)
        return result

    def _isolate_freepages(self, pos: list[int], target_order: int, out: list[int]) -> bool:
        """``isolate_freepages``: from the free scanner's pageblock downwards, isolate the free pages of the first
        suitable target pageblock above the migration scanner; False if there is none."""
        buddy = self.host.buddy
        low = pos[0] + PAGEBLOCK_NR_PAGES  # pageblock_end_pfn(cc->migrate_pfn)
        while pos[1] >= low:
            block = pos[1]
            pos[1] = block - PAGEBLOCK_NR_PAGES
            if buddy.pageblock_migratetype(block) != Migratetype.MOVABLE:
                continue  # suitable_migration_target: "If the block is MIGRATE_MOVABLE or MIGRATE_CMA"
            head = buddy.free_head(block)
            if head is not None and head >= target_order:
                continue  # "If the page is a large free page, then disallow migration"
            zone_hi = buddy.zone_span(buddy.zone_of(block))[1]
            frames = buddy.take_free_range(block, min(block + PAGEBLOCK_NR_PAGES, zone_hi))
            if frames.size:
                out.extend(frames.tolist())
                return True
        return False

    def _migrate_pages(self, srcs: list[int], dsts: list[int], path: str, *, free_source: bool = True) -> None:
        """``migrate_pages`` of a list: :meth:`_migrate` of each source to its destination, in order (the sources
        in use, the destinations isolated free pages). The fast engine's compactor overrides this, and only this,
        to do the same a batch at a time."""
        for src, dst in zip(srcs, dsts, strict=True):
            self._migrate(src, dst, path, free_source=free_source)

    def _migrate(self, src: int, dst: int, path: str, *, free_source: bool = True) -> None:
        """``migrate_pages`` of one page: copy ``src`` to the isolated free page ``dst`` and free ``src`` (to the
        allocator, or, ``free_source`` false, into a range being taken whole)."""
        host = self.host
        owner = host.frames.get(src)
        host.frames.set_range(dst, 1, owner)
        host.kernel_read(src, path)
        host.kernel_write(dst, path)
        host.charge("page_copy", host.costs.page_clear_ns)
        if src in host.lru:
            del host.lru[src]
            host.lru[dst] = None
        host.frames.set_range(src, 1, Owner.FREE)
        if free_source:
            host.buddy.free(src, 0, check_free=False)  # it was tagged in use
        host.compaction_migrated += 1

    # ------------------------------------------------------------------ alloc_contig_pages
    def alloc_contig(self, order: int) -> int | None:
        """``alloc_contig_pages(1 << order)``: the first valid aligned range of the zonelist's zones, emptied of its
        movable pages and taken whole; its PFN, or None."""
        buddy = self.host.buddy
        nr = 1 << order
        for zone in buddy.zonelist():
            lo, hi = buddy.zone_span(zone)
            pfn = -(-lo // nr) * nr
            while pfn + nr <= hi:
                got = self._try_contig_range(pfn, nr)
                if got:
                    return pfn
                pfn += nr
        return None

    def _try_contig_range(self, pfn: int, nr: int) -> bool:
        host, buddy = self.host, self.host.buddy
        if not buddy.is_ram(pfn, nr):  # pfn_range_valid_contig: PageReserved
            return False
        tags = host.frames.tags(pfn, nr)
        used = tags != Owner.FREE
        if not MIGRATABLE_OWNERS[tags[used]].all():  # has_unmovable_pages / a migration that would fail
            return False
        sources = np.flatnonzero(used) + pfn
        isolated = buddy.take_free_range(pfn, pfn + nr)  # start_isolate_page_range: its free pages are out of reach
        dsts = buddy.alloc_bulk(0, int(sources.size), Migratetype.MOVABLE)  # alloc_migration_target
        if dsts is None:  # no room to migrate into outside the range: undo_isolate_page_range
            buddy.free_bulk(isolated, 0, check_free=False)
            return False
        self._migrate_pages(sources.tolist(), dsts.tolist(), PATH_CONTIG, free_source=False)
        return True
