"""Who owns each host frame: the model's stand-in for ``struct page`` state (page flags, mapping, migratetype).

The real kernel knows from ``struct page`` whether a frame is free, a kernel allocation, movable user memory,
VMM guest memory or guest_memfd memory (``include/linux/page-flags.h``, ``mm/page_alloc.c``). The kernel writers of
:mod:`snpsim.host.writers` pick their targets by this tag, as compaction picks movable pages and KSM scans
``MADV_MERGEABLE`` memory. One byte per frame, in 1 GiB segments allocated on first write (a frame never tagged
costs nothing), as the segmented RMP of :mod:`snpsim.hw.rmp`.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import numpy.typing as npt

from snpsim.segments import by_segment

_SEG_SHIFT = 18
_SEG_PAGES = 1 << _SEG_SHIFT


class Owner(IntEnum):
    """Frame owner tags."""

    FREE = 0
    #: unmovable kernel allocation (slab, page tables)
    KERNEL = 1
    #: movable user memory and page cache (compaction migrates it)
    USER = 2
    #: VMM (QEMU) anonymous memory backing guest *shared* pages; MADV_MERGEABLE (KSM scans it)
    VMM_SHARED = 3
    #: VMM memory backing guest *private* pages before UPM (private_backing = vmm); pinned, KSM scans it
    VMM_PRIVATE = 4
    #: guest_memfd folio (private_backing = gmem): unmovable, unmappable, not mergeable
    GMEM = 5
    #: hugetlb pool page (reserved, not yet handed to a VM)
    HUGETLB_POOL = 6
    #: hibernation image page
    IMAGE = 7
    #: not RAM the allocator manages: holes, the BIOS-reserved RMP table, the first MiB (snpsim.host.e820);
    #: never allocated, migrated, scanned or saved
    RESERVED = 8


class FrameTable:
    """Owner tag per frame over ``[0, nframes)``."""

    def __init__(self, nframes: int) -> None:
        self.nframes = int(nframes)
        self._segs: list[npt.NDArray[np.uint8] | None] = [None] * ((self.nframes + _SEG_PAGES - 1) >> _SEG_SHIFT)

    def _seg_w(self, s: int) -> npt.NDArray[np.uint8]:
        seg = self._segs[s]
        if seg is None:
            seg = np.zeros(min(_SEG_PAGES, self.nframes - (s << _SEG_SHIFT)), dtype=np.uint8)
            self._segs[s] = seg
        return seg

    def get(self, pfn: int) -> Owner:
        seg = self._segs[pfn >> _SEG_SHIFT]
        return Owner.FREE if seg is None else Owner(int(seg[pfn & (_SEG_PAGES - 1)]))

    def set_range(self, pfn: int, npages: int, owner: Owner) -> None:
        end = pfn + npages
        while pfn < end:
            s = pfn >> _SEG_SHIFT
            stop = min(end, (s + 1) << _SEG_SHIFT)
            if owner != Owner.FREE or self._segs[s] is not None:
                self._seg_w(s)[pfn - (s << _SEG_SHIFT) : stop - (s << _SEG_SHIFT)] = owner
            pfn = stop

    def set_many(self, pfns: npt.NDArray[np.int64], owner: Owner) -> None:
        if pfns.size == 0:
            return
        for s, sel in by_segment(pfns, _SEG_SHIFT):
            self._seg_w(s)[pfns[sel] & (_SEG_PAGES - 1)] = owner

    def find(self, owners: tuple[Owner, ...], start: int, limit: int, max_scan: int) -> npt.NDArray[np.int64]:
        """Up to ``limit`` frames at or after ``start`` tagged with one of ``owners``, scanning at most ``max_scan``
        frames (wrapping around at the end of memory), in ascending scan order."""
        out: list[npt.NDArray[np.int64]] = []
        found = 0
        scanned = 0
        pfn = start % max(self.nframes, 1)
        wanted = np.array([int(o) for o in owners], dtype=np.uint8)
        while found < limit and scanned < min(max_scan, self.nframes):
            s = pfn >> _SEG_SHIFT
            stop = min(self.nframes, (s + 1) << _SEG_SHIFT, pfn + (max_scan - scanned))
            seg = self._segs[s]
            if seg is not None:
                chunk = seg[pfn - (s << _SEG_SHIFT) : stop - (s << _SEG_SHIFT)]
                hits = np.flatnonzero(np.isin(chunk, wanted))[: limit - found] + pfn
                out.append(hits.astype(np.int64))
                found += hits.size
            scanned += stop - pfn
            pfn = stop % self.nframes
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    segment_pages = _SEG_PAGES

    def segments(self) -> list[npt.NDArray[np.uint8] | None]:
        """The tag arrays of the 1 GiB segments (None: never tagged, all free)."""
        return self._segs

    def tags(self, pfn: int, npages: int) -> npt.NDArray[np.uint8]:
        """Tags of ``[pfn, pfn+npages)`` (a copy)."""
        out = np.zeros(npages, dtype=np.uint8)
        end = pfn + npages
        p = pfn
        while p < end:
            s = p >> _SEG_SHIFT
            stop = min(end, (s + 1) << _SEG_SHIFT)
            seg = self._segs[s]
            if seg is not None:
                out[p - pfn : stop - pfn] = seg[p - (s << _SEG_SHIFT) : stop - (s << _SEG_SHIFT)]
            p = stop
        return out

    def tags_of(self, pfns: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
        """Tags of the frames ``pfns`` (any order)."""
        out = np.zeros(pfns.size, dtype=np.uint8)
        for s, sel in by_segment(pfns, _SEG_SHIFT):
            seg = self._segs[s]
            if seg is not None:
                out[sel] = seg[pfns[sel] & (_SEG_PAGES - 1)]
        return out

    def count(self, owner: Owner) -> int:
        return sum(int(np.count_nonzero(seg == owner)) for seg in self._segs if seg is not None)
