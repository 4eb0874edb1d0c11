"""Who owns each host frame: the model's stand-in for ``struct page`` state (page flags, mapping, migratetype).

The real kernel knows from ``struct page`` whether a frame is free, a kernel allocation, movable user memory,
VMM guest memory or guest_memfd memory (``include/linux/page-flags.h``, ``mm/page_alloc.c``). The kernel writers of
:mod:`snpsim.host.writers` pick their targets by this tag, as compaction picks movable pages and KSM scans
``MADV_MERGEABLE`` memory. One byte per frame in lazily zeroed memory (a 1 GiB range never tagged costs nothing and is
never scanned).

:data:`ALLOCATION` is the one table of who allocates what: for each owner the migratetype its allocations ask for
(the ``gfp`` flags of its allocation site), whether its pages are on an LRU list (``PageLRU``: counted as movable
by ``prep_move_freepages_block``) and whether compaction / ``alloc_contig_range`` can migrate them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from snpsim.host.buddy import Migratetype
from snpsim.pfnmap import lazy_zeros

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
    #: reclaimable kernel allocation (slab caches created with SLAB_RECLAIM_ACCOUNT: dentries, inodes)
    KERNEL_RECLAIMABLE = 8
    #: not RAM the allocator manages: holes, the BIOS-reserved RMP table, the first MiB (snpsim.host.e820);
    #: never allocated, migrated, scanned or saved
    RESERVED = 9


@dataclass(frozen=True, slots=True)
class PageKind:
    """How the pages of one owner are allocated and what the allocator and compaction may do with them."""

    migratetype: Migratetype
    #: ``PageLRU``: on an LRU list, so ``prep_move_freepages_block`` counts it as movable
    lru: bool
    #: compaction (``isolate_migratepages_block``) and ``alloc_contig_range`` migrate it
    migratable: bool
    #: the allocation site and its gfp flags
    source: str


#: Who allocates what (issue 12; linux-snp-host.md §9). The migratetype is ``gfp_migratetype(gfp)`` of the site.
ALLOCATION: dict[Owner, PageKind] = {
    Owner.KERNEL: PageKind(
        Migratetype.UNMOVABLE,
        False,
        False,
        "slab (kmalloc GFP_KERNEL), page tables (GFP_PGTABLE_KERNEL), VMSAs (snp_safe_alloc_page GFP_KERNEL_ACCOUNT)",
    ),
    Owner.KERNEL_RECLAIMABLE: PageKind(
        Migratetype.RECLAIMABLE, False, False, "SLAB_RECLAIM_ACCOUNT caches: allocate_slab() adds __GFP_RECLAIMABLE"
    ),
    Owner.USER: PageKind(
        Migratetype.MOVABLE,
        True,
        True,
        "page cache (inode_init_always: mapping gfp GFP_HIGHUSER_MOVABLE), anonymous memory (GFP_HIGHUSER_MOVABLE)",
    ),
    # QEMU's guest RAM is anonymous memory (THP: vma_thp_gfp_mask, also movable). Linux migrates it through KVM's
    # mmu notifier; the model does not (the VMM's and KVM's maps would have to follow): compaction and
    # alloc_contig_range treat it as unmovable, so they find fewer sources than Linux would.
    Owner.VMM_SHARED: PageKind(Migratetype.MOVABLE, True, False, "QEMU guest RAM: anonymous GFP_HIGHUSER_MOVABLE"),
    # Pre-UPM SEV pins guest memory (sev_pin_memory: pin_user_pages_fast(FOLL_LONGTERM)); a long-term pinned folio
    # fails migration (folio_maybe_dma_pinned), though it stays on the LRU in its movable pageblock.
    Owner.VMM_PRIVATE: PageKind(Migratetype.MOVABLE, True, False, "anonymous, pinned by sev_pin_memory"),
    # __kvm_gmem_create: mapping_set_gfp_mask(GFP_HIGHUSER) (no __GFP_MOVABLE), mapping_set_unmovable /
    # mapping_set_inaccessible ("guest_memfd memory is neither migratable nor swappable"); filemap_add_folio puts
    # the folio on the (unevictable) LRU.
    Owner.GMEM: PageKind(Migratetype.UNMOVABLE, True, False, "kvm_gmem_get_folio: GFP_HIGHUSER, unmovable mapping"),
    # htlb_alloc_mask(): GFP_HIGHUSER_MOVABLE when hugepage_movable_supported() (2M); 1G pages come from
    # alloc_contig_pages() (alloc_gigantic_folio), also in movable pageblocks. Hugetlb folios are not on the LRU.
    Owner.HUGETLB_POOL: PageKind(Migratetype.MOVABLE, False, False, "alloc_buddy_hugetlb_folio / alloc_contig_pages"),
    Owner.IMAGE: PageKind(Migratetype.UNMOVABLE, False, False, "kernel/power/snapshot.c get_image_page: GFP_ATOMIC"),
}

#: per owner value: on an LRU list / migratable (indexable by a tag array)
LRU_OWNERS: npt.NDArray[np.bool_] = np.zeros(max(Owner) + 1, dtype=bool)
MIGRATABLE_OWNERS: npt.NDArray[np.bool_] = np.zeros(max(Owner) + 1, dtype=bool)
for _owner, _kind in ALLOCATION.items():
    LRU_OWNERS[_owner] = _kind.lru
    MIGRATABLE_OWNERS[_owner] = _kind.migratable


class FrameTable:
    """Owner tag per frame over ``[0, nframes)``: one lazily zeroed byte array (:func:`snpsim.pfnmap.lazy_zeros`),
    and which 1 GiB segments were ever written (the others are all ``FREE`` and never read)."""

    def __init__(self, nframes: int) -> None:
        self.nframes = int(nframes)
        #: the tags, one byte per frame (the allocator's fast path reads them: :mod:`snpsim.fast`)
        self.array = lazy_zeros(self.nframes, np.uint8)
        self._written = np.zeros((self.nframes + _SEG_PAGES - 1) >> _SEG_SHIFT, dtype=bool)

    def __getstate__(self) -> dict[str, object]:
        return {"nframes": self.nframes, "written": self._written, "segs": self.segments()}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["nframes"])  # type: ignore[misc, arg-type]
        segs: list[npt.NDArray[np.uint8] | None] = state["segs"]  # type: ignore[assignment]
        for s, seg in enumerate(segs):
            if seg is not None:
                self.array[s << _SEG_SHIFT : (s << _SEG_SHIFT) + seg.size] = seg
        self._written[:] = state["written"]  # type: ignore[index]

    def tag(self, pfn: int) -> int:
        """The raw tag of ``pfn`` (``get`` without the enum)."""
        return int(self.array[pfn])

    def get(self, pfn: int) -> Owner:
        return Owner(int(self.array[pfn]))

    def set_range(self, pfn: int, npages: int, owner: Owner) -> None:
        if npages <= 0:
            return
        s0, s1 = pfn >> _SEG_SHIFT, (pfn + npages - 1) >> _SEG_SHIFT
        if owner != Owner.FREE:
            self._written[s0 : s1 + 1] = True
        elif not self._written[s0 : s1 + 1].any():
            return  # never written: already free, and left untouched (no memory)
        self.array[pfn : pfn + npages] = owner

    def set_many(self, pfns: npt.NDArray[np.int64], owner: Owner) -> None:
        if pfns.size == 0:
            return
        self._written[pfns >> _SEG_SHIFT] = True
        self.array[pfns] = owner

    def find(self, owners: tuple[Owner, ...], start: int, limit: int, max_scan: int) -> npt.NDArray[np.int64]:
        """Up to ``limit`` frames at or after ``start`` tagged with one of ``owners``, scanning at most ``max_scan``
        frames (wrapping around at the end of memory), in ascending scan order."""
        out: list[npt.NDArray[np.int64]] = []
        found = 0
        scanned = 0
        pfn = start % max(self.nframes, 1)
        wanted = np.zeros(256, dtype=bool)  # a lookup table per tag byte: one gather, where np.isin sorts
        wanted[[int(o) for o in owners]] = True
        while found < limit and scanned < min(max_scan, self.nframes):
            s = pfn >> _SEG_SHIFT
            stop = min(self.nframes, (s + 1) << _SEG_SHIFT, pfn + (max_scan - scanned))
            if self._written[s]:
                chunk = self.array[pfn:stop]
                hits = np.flatnonzero(wanted[chunk])[: limit - found] + pfn
                out.append(hits.astype(np.int64))
                found += hits.size
            scanned += stop - pfn
            pfn = stop % self.nframes
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    segment_pages = _SEG_PAGES

    def segments(self) -> list[npt.NDArray[np.uint8] | None]:
        """The tags of each 1 GiB segment (None: never tagged, all free)."""
        return [self.array[s << _SEG_SHIFT : (s + 1) << _SEG_SHIFT] if w else None for s, w in enumerate(self._written)]

    def tags(self, pfn: int, npages: int) -> npt.NDArray[np.uint8]:
        """Tags of ``[pfn, pfn+npages)`` (a copy)."""
        return self.array[pfn : pfn + npages].copy()

    def tags_of(self, pfns: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
        """Tags of the frames ``pfns`` (any order)."""
        return self.array[pfns]

    def count(self, owner: Owner) -> int:
        return sum(int(np.count_nonzero(seg == owner)) for seg in self.segments() if seg is not None)
