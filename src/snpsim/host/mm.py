"""A user process's memory mapping as the host kernel manages it: anonymous 4K pages, THP, or hugetlbfs 2M/1G pages.

The VMM maps guest RAM (a QEMU RAM block, ``system/physmem.c``) and the host kernel backs it: pages are faulted in
on first touch (``handle_mm_fault``; KVM reaches them through ``hva_to_pfn`` / ``get_user_pages``), a THP region
takes a 2M page when the whole aligned 2M range is untouched and a 2M block is free, else falls back to 4K
(``do_huge_pmd_anonymous_page``), and ``madvise(MADV_DONTNEED)`` / ``fallocate(PUNCH_HOLE)`` (QEMU's
``ram_block_discard_range``) frees whole backing pages (a partly discarded THP is split first, ``split_huge_pmd``).
Sources: ``shared/reference/guest-workloads.md`` §1, §6; ``linux-snp-host.md`` §5.

With ``private_backing = gmem`` this memory backs only the guest's *shared* pages; with ``vmm`` (pre-UPM SNP) it
backs every page and KVM converts private pages in place by RMPUPDATE. Whether a conversion discards is the
VMM's decision (QEMU never discards hugetlb-backed RAM), not this mapping's.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from snpsim.arch import PAGE_SHIFT, PageSize
from snpsim.host.frames import Owner
from snpsim.host.kernel import HostKernel
from snpsim.pfnmap import PfnMap, lazy_zeros
from snpsim.policy import GRANULE_BYTES

IntArray = npt.NDArray[np.int64]

#: Host mapping level of each backing kind's huge pages (what KVM's host_pfn_mapping_level would find).
_HUGE_LEVEL = {"thp": PageSize.SIZE_2M, "hugetlb-2m": PageSize.SIZE_2M, "hugetlb-1g": PageSize.SIZE_1G}


class UserMemory:
    """The backing pages of one guest-RAM mapping of the VMM over gfns ``[0, npages)`` (``ram`` marks the RAM)."""

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

    @property
    def page_size(self) -> int:
        """The mapping's page size as userspace sees it (``qemu_ram_pagesize``): the huge page size for
        hugetlbfs, the base page size for anonymous memory, THP included."""
        return GRANULE_BYTES[self.kind] if self.kind.startswith("hugetlb") else 1 << PAGE_SHIFT

    @property
    def bytes(self) -> int:
        return self.allocated_pages << PAGE_SHIFT

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
                    got = self.host.alloc(self.order, self.owner)
                    if got is None and self.kind != "thp":
                        return None  # hugetlb pool exhausted: SIGBUS in the VMM
                    if got is not None:
                        self.pfn[lo:hi] = np.arange(got, got + self.unit, dtype=np.int64)
                        self.huge[u] = True
                        self._account(np.arange(got, got + self.unit, dtype=np.int64))
        missing = np.flatnonzero(~self.pfn.present(gfn, gfn + npages)) + gfn
        if missing.size:
            got_arr = self.host.alloc_bulk(0, int(missing.size), self.owner)
            if got_arr is None:
                return None
            self.pfn[missing] = got_arr
            self._account(got_arr)
        return self.pfn[gfn : gfn + npages]

    def _account(self, frames: npt.NDArray[np.int64]) -> None:
        self.allocated_pages += int(frames.size)
        self.peak_pages = max(self.peak_pages, self.allocated_pages)
        if self.register:
            self.host.register_frames(frames)

    def discard(self, gfn: int, npages: int) -> int:
        """``madvise(MADV_DONTNEED)`` / ``fallocate(PUNCH_HOLE)``: free the backing pages inside the range; returns
        pages freed."""
        if npages <= 0:
            return 0
        lo, hi = gfn, gfn + npages
        freed = 0
        if self.unit > 1:
            for u in np.flatnonzero(self.huge[lo // self.unit : (hi - 1) // self.unit + 1]) + lo // self.unit:
                ulo = int(u) * self.unit
                if lo <= ulo and ulo + self.unit <= hi:
                    self.host.free(self.pfn[ulo], self.order)
                    self.pfn.clear(ulo, ulo + self.unit)
                    freed += self.unit
                self.huge[u] = False  # a partly discarded huge page is split first; whole ones are gone
        backed = self.pfn.present(lo, hi)
        have = self.pfn[lo:hi][backed]
        if have.size:
            self.host.free_bulk(np.sort(have), 0)
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
        return frames
