"""The VMM's own guest memory: QEMU's RAMBlock backing as anonymous 4K pages, THP, or hugetlbfs 2M/1G pages.

Models QEMU ``system/physmem.c`` RAM allocation and ``ram_block_discard_range()`` (``madvise(MADV_DONTNEED)`` /
``fallocate(PUNCH_HOLE)``) as seen by the host kernel (``shared/reference/guest-workloads.md`` §1, §6;
``linux-snp-host.md`` §5): pages are faulted in on first touch (a THP region takes a 2M page when the whole
aligned 2M range is untouched and a 2M block is free, else falls back to 4K, like ``do_huge_pmd_anonymous_page``);
a discard frees whole backing pages (a partly discarded THP is split first, ``split_huge_pmd``); hugetlb memory
"can be discarded only when it's not back'ed by hugetlb" (QEMU), so it is never freed on conversion.

With ``private_backing = gmem`` this memory backs only the guest's *shared* pages; with ``vmm`` (pre-UPM SNP) it
backs every page and private pages are converted in place by RMPUPDATE.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from snpsim.host import HostKernel, Owner
from snpsim.hw.types import PAGE_SHIFT, PageSize
from snpsim.pfnmap import PfnMap, lazy_zeros
from snpsim.policy import GRANULE_BYTES

IntArray = npt.NDArray[np.int64]

#: Host mapping level of each backing kind's huge pages (what KVM's host_pfn_mapping_level would find).
_HUGE_LEVEL = {"thp": PageSize.SIZE_2M, "hugetlb-2m": PageSize.SIZE_2M, "hugetlb-1g": PageSize.SIZE_1G}


class VmmMemory:
    """Backing pages of one VM's RAMBlock over gfns ``[0, npages)`` (``ram`` marks which gfns are RAM)."""

    def __init__(
        self, host: HostKernel, ram: npt.NDArray[np.bool_], kind: str, owner: Owner, *, register: bool = False
    ) -> None:
        self.host = host
        #: pre-UPM: the RAMBlock is registered with MEM_ENCRYPT_REG_REGION as it is faulted in
        self.register = register
        self.kind = kind
        self.owner = owner
        self.npages = int(ram.size)
        self.ram = ram
        self.unit = GRANULE_BYTES[kind] >> PAGE_SHIFT
        self.order = self.unit.bit_length() - 1
        #: host frame backing each gfn, -1 where none
        self.pfn = PfnMap(self.npages, host.nframes)
        nunits = -(-self.npages // self.unit)
        #: unit backed by one huge page (THP or hugetlb)
        self.huge = lazy_zeros(nunits, bool)  # one per 4K page for 4K backing, and never written then
        self.allocated_pages = 0
        self.peak_pages = 0
        self.discarded_pages = 0
        #: per-gfn PRIVATE attribute (KVM's array, shared by reference) and the backed private pages it implies
        self.attr_private = lazy_zeros(self.npages, bool)
        self.private_pages = 0

    @property
    def bytes(self) -> int:
        return self.allocated_pages << PAGE_SHIFT

    @property
    def discardable(self) -> bool:
        return not self.kind.startswith("hugetlb")

    def pfns(self, gfn: int, npages: int) -> IntArray:
        return self.pfn[gfn : gfn + npages]

    def host_level(self, gfn: int) -> PageSize:
        """Size of the host (userspace) mapping backing ``gfn``."""
        return _HUGE_LEVEL[self.kind] if self.unit > 1 and self.huge[gfn // self.unit] else PageSize.SIZE_4K

    def get_pfns(self, gfn: int, npages: int) -> IntArray | None:
        """Fault in the missing backing pages of ``[gfn, gfn+npages)``; None if the host is out of memory."""
        if self.pfn.all_present(gfn, gfn + npages):
            return self.pfn[gfn : gfn + npages]
        if self.unit > 1:
            u0, u1 = gfn // self.unit, (gfn + npages - 1) // self.unit + 1
            for u in range(u0, u1):
                lo = u * self.unit
                hi = lo + self.unit
                if hi <= self.npages and self.ram[lo:hi].all() and not self.pfn.present(lo, hi).any():
                    got = self.host.alloc(self.order, self.owner, hugetlb=not self.discardable)
                    if got is None and self.kind != "thp":
                        return None  # hugetlb pool exhausted: SIGBUS in the VMM
                    if got is not None:
                        self.pfn[lo:hi] = np.arange(got, got + self.unit, dtype=np.int64)
                        self.huge[u] = True
                        self._account(np.arange(got, got + self.unit, dtype=np.int64))
                        self.private_pages += int(np.count_nonzero(self.attr_private[lo:hi]))
        missing = np.flatnonzero(~self.pfn.present(gfn, gfn + npages)) + gfn
        if missing.size:
            got_arr = self.host.alloc_bulk(0, int(missing.size), self.owner)
            if got_arr is None:
                return None
            self.pfn[missing] = got_arr
            self._account(got_arr)
            self.private_pages += int(np.count_nonzero(self.attr_private[missing]))
        return self.pfn[gfn : gfn + npages]

    def _account(self, frames: npt.NDArray[np.int64]) -> None:
        self.allocated_pages += int(frames.size)
        self.peak_pages = max(self.peak_pages, self.allocated_pages)
        if self.register:
            self.host.register_frames(frames)

    def discard(self, gfn: int, npages: int) -> int:
        """``ram_block_discard_range``: free the backing pages inside the range; returns pages freed."""
        if not self.discardable or npages <= 0:
            return 0
        lo, hi = gfn, gfn + npages
        freed = 0
        if self.unit > 1:
            for u in np.flatnonzero(self.huge[lo // self.unit : (hi - 1) // self.unit + 1]) + lo // self.unit:
                ulo = int(u) * self.unit
                if lo <= ulo and ulo + self.unit <= hi:
                    self.host.free(self.pfn[ulo], self.order)
                    self.pfn.clear(ulo, ulo + self.unit)
                    self.private_pages -= int(np.count_nonzero(self.attr_private[ulo : ulo + self.unit]))
                    freed += self.unit
                self.huge[u] = False  # a partly discarded huge page is split first; whole ones are gone
        backed = self.pfn.present(lo, hi)
        have = self.pfn[lo:hi][backed]
        if have.size:
            self.host.free_bulk(np.sort(have), 0)
            self.private_pages -= int(np.count_nonzero(backed & self.attr_private[lo:hi]))
            self.pfn.clear(lo, hi, backed)
            freed += int(have.size)
        self.allocated_pages -= freed
        self.discarded_pages += freed
        return freed

    def release_all(self) -> IntArray:
        """Unmap the whole RAMBlock (VM destroyed); returns the frames freed (4K granularity)."""
        frames = self.pfn[np.flatnonzero(self.pfn.present())]
        for u in np.flatnonzero(self.huge).tolist():
            self.host.free(self.pfn[u * self.unit], self.order)
            self.pfn.clear(u * self.unit, (u + 1) * self.unit)
        rest = self.pfn[np.flatnonzero(self.pfn.present())]
        if rest.size:
            self.host.free_bulk(np.sort(rest), 0)
        self.pfn = PfnMap(self.npages, self.host.nframes)  # empty again, without writing every entry
        self.huge = lazy_zeros(self.huge.size, bool)
        self.allocated_pages = 0
        self.private_pages = 0
        return frames

    def attributes_changed(self, gfn: int, npages: int, before: npt.NDArray[np.bool_]) -> None:
        """Keep ``private_pages`` right after KVM changed the attributes of ``[gfn, gfn+npages)``."""
        backed = self.pfn.present(gfn, gfn + npages)
        after = self.attr_private[gfn : gfn + npages]
        self.private_pages += int(np.count_nonzero(backed & after)) - int(np.count_nonzero(backed & before))
