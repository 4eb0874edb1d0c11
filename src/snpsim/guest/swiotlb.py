"""The SWIOTLB slot allocator of a Linux SNP guest, for streaming DMA (``kernel/dma/swiotlb.c``).

In an SNP guest every streaming DMA mapping bounces (``SWIOTLB_FORCE``; guest-workloads.md §2 row #9,
linux-snp-host.md §9): ``swiotlb_tbl_map_single()`` -> ``swiotlb_find_slots()`` takes slots of the shared bounce
pool and the guest copies the buffer into them - for ``DMA_TO_DEVICE``, and for ``DMA_FROM_DEVICE`` too ("copy the
original buffer to the TLB buffer before initiating DMA in order to preserve the original's data if the device
does a partial write"). So every mapping is a guest write of shared memory, and the slots it writes get backed by
the host; the device side (the host reading or writing the slots) is the host model's business.

The allocator, as :meth:`SwiotlbPool.map` follows it:

* a pool holds ``nslabs`` 2 KiB slots (``IO_TLB_SIZE``) in ``nareas`` areas of ``area_nslabs = nslabs / nareas``
  (``swiotlb_init_io_tlb_pool()``); ``nareas`` = possible CPUs rounded up to a power of two, at most one area per
  ``IO_TLB_SEGSIZE`` (128) slots (``swiotlb_adjust_nareas()``, ``limit_nareas()``:
  :func:`snpsim.guest.linux.swiotlb_nareas`);
* ``swiotlb_find_slots()`` on CPU ``c`` tries area ``(c + i) & (nareas - 1)`` for ``i = 0, 1, ...`` in every pool of
  ``mem->pools``, newest first (``add_mem_pool()`` adds with ``list_add_rcu()``, at the head);
* ``swiotlb_search_pool_area()`` is a first fit from the area's cursor ``area->index``: a mapping of
  ``alloc_size >= PAGE_SIZE`` takes only slots whose address bit 11 equals the buffer's (``iotlb_align_mask |=
  ~PAGE_MASK``, then ``&= ~(IO_TLB_SIZE - 1)``), stepping by ``stride = 2``; a slot fits when its free run to the
  end of its 128-slot segment (``slots[i].list``) holds ``nr_slots(alloc_size)``; then ``area->index =
  wrap_area_index(index + nslots)`` (0 at the end of the area).

Assumptions [I-model]: buffers are page-aligned, so mappings of a page or more start on a page; every slot is free
again when the cursor comes back to it (streaming mappings are unmapped at I/O completion, long before the cursor
has walked the area), so the first area tried always has room and the cursor walks the whole area over time.
This maps each mapping to the slots Linux would pick on an idle pool; under a pool kept full by long-lived
mappings the real slots would differ (and the dynamic pools of :func:`~snpsim.guest.workloads.swiotlb_dynamic`
would take the overflow), which moves *which* shared pages are written, not how many mappings there are.
"""

from __future__ import annotations

__all__ = ["IO_TLB_SEGSIZE", "IO_TLB_SIZE", "SwiotlbPool"]

PAGE_SIZE = 4096
#: ``IO_TLB_SIZE`` (1 << IO_TLB_SHIFT): one slot.
IO_TLB_SIZE = 2048
#: ``IO_TLB_SEGSIZE``: slots per segment; no mapping crosses a segment, so at most 256 KiB.
IO_TLB_SEGSIZE = 128


class SwiotlbPool:
    """One ``struct io_tlb_pool`` at GFN ``gfn``: ``nslabs`` slots in ``nareas`` areas, each with its cursor."""

    def __init__(self, gfn: int, nslabs: int, nareas: int) -> None:
        if nslabs <= 0 or nareas <= 0 or nareas & (nareas - 1):
            raise ValueError(f"bad pool: nslabs={nslabs}, nareas={nareas} (a power of two)")
        self.gfn = gfn
        self.nslabs = nslabs
        self.nareas = nareas
        self.area_nslabs = nslabs // nareas
        #: ``area->index`` of each area.
        self.index = [0] * nareas

    @property
    def npages(self) -> int:
        return -(-self.nslabs * IO_TLB_SIZE // PAGE_SIZE)

    def _fits(self, slot: int, nslots: int) -> bool:
        """``slots[slot].list >= nslots`` on an all-free pool: the free run ends at the segment or pool end."""
        return min(IO_TLB_SEGSIZE - slot % IO_TLB_SEGSIZE, self.nslabs - slot) >= nslots

    def map(self, cpu: int, nbytes: int) -> tuple[int, int]:
        """``swiotlb_search_pool_area()`` for a ``nbytes`` mapping from CPU ``cpu``: the ``(gfn, npages)`` written.

        Raises ``ValueError`` for a mapping over ``IO_TLB_SEGSIZE * IO_TLB_SIZE`` (``swiotlb_find_slots()``
        refuses it) or one that no slot of the area fits.
        """
        nslots = -(-nbytes // IO_TLB_SIZE)
        if not 0 < nslots <= IO_TLB_SEGSIZE:
            raise ValueError(f"mapping of {nbytes} B: must be in (0, {IO_TLB_SEGSIZE * IO_TLB_SIZE}]")
        area = cpu & (self.nareas - 1)
        base = area * self.area_nslabs
        stride = 2 if nbytes >= PAGE_SIZE else 1
        index = self.index[area]
        checked = 0
        while checked < self.area_nslabs:
            slot = base + index
            if stride == 2 and slot % 2:  # the slot's bit 11 differs from the page-aligned buffer's
                index = index + 1 if index + 1 < self.area_nslabs else 0
                checked += 1
                continue
            if self._fits(slot, nslots):
                nxt = index + nslots
                self.index[area] = nxt if nxt < self.area_nslabs else 0
                lo = slot * IO_TLB_SIZE // PAGE_SIZE
                hi = -(-(slot + nslots) * IO_TLB_SIZE // PAGE_SIZE)
                return self.gfn + lo, hi - lo
            # no room to the end of this segment: the next candidates that can fit start the next segment
            skip = max(stride, IO_TLB_SEGSIZE - slot % IO_TLB_SEGSIZE)
            index = index + skip if index + skip < self.area_nslabs else 0
            checked += skip
        raise ValueError(f"no {nslots} free slots in area {area} ({self.area_nslabs} slots)")
