"""Reclaim's slab shrinking and the THP deferred split queue: when a partly unmapped THP gives its memory back.

Models three pieces of Linux:

- ``mm/huge_memory.c``: the deferred split queue. ``madvise(MADV_DONTNEED)`` over part of a PMD-mapped anonymous
  THP (QEMU's ``ram_block_discard_range`` on memory-backend-ram) goes ``zap_pmd_range`` → ``__split_huge_pmd``
  ("if (next - addr != HPAGE_PMD_SIZE)"): the PMD becomes 512 PTEs, the zapped PTEs are cleared, and
  ``__folio_remove_rmap`` finds the folio still mapped in part and calls ``deferred_split_folio(folio, true)``
  (vmstat ``thp_split_pmd``, ``thp_deferred_split_page``). The 2 MiB folio stays allocated, unmapped pages
  included, until ``deferred_split_scan`` splits it: ``split_folio`` remaps the still-mapped pages as 4K pages and
  frees the others ("Subpages may be freed if there wasn't any mapping", ``__folio_split``; vmstat
  ``thp_split_page``). A folio whose last mapped page goes is freed whole at once, and leaves the queue.
  Transhuge documentation: "Pages on split queue are going to be split under memory pressure".
- ``mm/vmscan.c``: when the shrinker runs. ``shrink_slab()`` is called by ``shrink_node_memcgs()`` for every
  memcg, from kswapd (``balance_pgdat`` → ``kswapd_shrink_node`` → ``shrink_node``), which is woken when an
  allocation finds the zones below their low watermark, and from direct reclaim (``__alloc_pages_direct_reclaim``
  → ``try_to_free_pages``) when an allocation fails; and from ``drop_slab()`` (``echo 2 >
  /proc/sys/vm/drop_caches``). Nothing runs it on a timer: a host whose free memory stays above its watermarks
  keeps every queued THP whole.
- ``mm/page_alloc.c`` ``calculate_min_free_kbytes`` / ``__setup_per_zone_wmarks`` and ``mm/khugepaged.c``
  ``set_recommended_min_free_kbytes`` (THP enabled raises ``min_free_kbytes`` "to help transparent hugepage
  allocations"): the low watermark that wakes kswapd (:func:`low_watermark_pages`).

Simplifications, and what they move:

- one reclaim pass splits every queued folio. ``do_shrink_slab`` scans ``(freeable >> priority) * 4 / seeks``
  objects per pass (``DEF_PRIORITY`` 12 first, lower as pressure grows), so a light pressure scans a short queue
  only partly: the model gives memory back sooner than Linux, never later (``thp_deferred_split_bytes`` lower);
- kswapd runs synchronously, inside the allocation that took free memory below the low watermark (its CPU time
  goes to the ``kthread/kswapd0`` account), and it only shrinks slab: page-cache reclaim is not modelled (the
  page-cache writers keep their own resident size), so reclaim frees only what the queue holds;
- watermarks are summed over the zones and checked against the host's total free memory; ``nr_free_buffer_pages``
  is taken as the managed pages (Linux subtracts the high watermarks: ``min_free_kbytes`` is a few percent higher
  here);
- ``thp_underused`` (6.12, "mm: split underused THPs") is off at its default ``max_ptes_none`` = 511, and memcg
  (per-cgroup queues, ``memory.max`` reclaim) is not modelled: QEMU's cgroup is unlimited.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Protocol

from snpsim.host.buddy import PAGEBLOCK_NR_PAGES, BuddyAllocator, ZoneType

#: ``MIGRATE_PCPTYPES``: unmovable, movable, reclaimable (include/linux/mmzone.h)
MIGRATE_PCPTYPES = 3
#: ``watermark_scale_factor`` default (mm/page_alloc.c): 10 / 10000 of a zone's managed pages
WATERMARK_SCALE_FACTOR = 10
#: ``calculate_min_free_kbytes`` clamp: ``clamp(new_min_free_kbytes, 128, 262144)``
MIN_FREE_KBYTES_RANGE = (128, 262144)


def min_free_kbytes(managed_pages: int, populated_zones: int, *, thp: bool) -> int:
    """``min_free_kbytes`` at boot: ``int_sqrt(lowmem_kbytes * 16)`` clamped to [128, 262144] KiB
    (``calculate_min_free_kbytes``), raised with THP enabled to ``set_recommended_min_free_kbytes``'s
    ``pageblock_nr_pages * nr_zones * 2 + pageblock_nr_pages * nr_zones * MIGRATE_PCPTYPES * MIGRATE_PCPTYPES``
    pages, at most 5 % of lowmem ("don't ever allow to reserve more than 5% of the lowmem")."""
    lowmem_kbytes = managed_pages * 4
    lo, hi = MIN_FREE_KBYTES_RANGE
    kbytes = min(max(math.isqrt(lowmem_kbytes * 16), lo), hi)
    if thp:
        pages = PAGEBLOCK_NR_PAGES * populated_zones * 2
        pages += PAGEBLOCK_NR_PAGES * populated_zones * MIGRATE_PCPTYPES * MIGRATE_PCPTYPES
        recommended = min(pages, managed_pages // 20) * 4
        kbytes = max(kbytes, recommended)
    return kbytes


def low_watermark_pages(buddy: BuddyAllocator, *, thp: bool) -> int:
    """The zones' ``WMARK_LOW`` summed: each zone's min watermark is its share of ``min_free_kbytes`` (by managed
    pages), and low = min + max(min / 4, managed * watermark_scale_factor / 10000) (``__setup_per_zone_wmarks``)."""
    managed = {z: buddy.zone_managed_frames(z) for z in ZoneType}
    total = sum(managed.values())
    if total == 0:
        return 0
    populated = sum(1 for m in managed.values() if m)
    pages_min = min_free_kbytes(total, populated, thp=thp) // 4
    low = 0
    for m in managed.values():
        zmin = pages_min * m // total
        low += zmin + max(zmin >> 2, m * WATERMARK_SCALE_FACTOR // 10000)
    return low


class SplitQueueOwner(Protocol):
    """A mapping whose THPs can sit on the deferred split queue (:class:`snpsim.host.mm.UserMemory`)."""

    def split_deferred(self, unit: int) -> int:
        """``split_folio`` of the partly mapped THP at ``unit``: free its unmapped pages; returns pages freed."""
        ...


class DeferredSplitQueue:
    """The node's ``deferred_split_queue``: partly mapped THPs in the order they were queued (``list_add_tail``)."""

    def __init__(self) -> None:
        self._queue: OrderedDict[tuple[int, int], SplitQueueOwner] = OrderedDict()
        #: vmstat ``thp_deferred_split_page`` and ``thp_split_page`` (splits by the shrinker)
        self.queued_count = 0
        self.split_count = 0

    def __len__(self) -> int:
        return len(self._queue)

    def queued(self, owner: SplitQueueOwner, unit: int) -> bool:
        return (id(owner), unit) in self._queue

    def add(self, owner: SplitQueueOwner, unit: int) -> None:
        """``deferred_split_folio(folio, partially_mapped=true)``: queue the THP once."""
        key = (id(owner), unit)
        if key not in self._queue:
            self._queue[key] = owner
            self.queued_count += 1

    def remove(self, owner: SplitQueueOwner, unit: int) -> None:
        """The folio was freed (its last mapping went): ``folio_unqueue_deferred_split``."""
        self._queue.pop((id(owner), unit), None)

    def scan(self) -> int:
        """``deferred_split_scan`` over the whole queue: split each THP; returns pages freed."""
        freed = 0
        while self._queue:
            (_, unit), owner = self._queue.popitem(last=False)
            freed += owner.split_deferred(unit)
            self.split_count += 1
        return freed
