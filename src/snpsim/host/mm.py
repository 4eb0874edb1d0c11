"""A user process's memory mapping as the host kernel manages it: anonymous or shmem 4K pages, THP, or hugetlbfs pages.

The VMM maps guest RAM (a QEMU RAM block, ``system/physmem.c``) and the host kernel backs it. The kind of backing
is the QEMU memory backend of the policy's ``shared_backing`` (:mod:`snpsim.policy`):

- ``4k``: memory-backend-memfd (shmem, ``transparent_hugepage/shmem_enabled`` = never, its default) or anonymous
  memory without THP. Pages are faulted in on first touch (``handle_mm_fault``; KVM reaches them through
  ``hva_to_pfn`` / ``get_user_pages``) and a discard (``fallocate(PUNCH_HOLE)`` + ``madvise(MADV_DONTNEED)``,
  QEMU's ``ram_block_discard_range``) frees exactly the pages inside it.
- ``thp``: memory-backend-ram, anonymous memory that ``ram_block_add`` madvises ``QEMU_MADV_HUGEPAGE`` (checked in
  qemu/qemu system/physmem.c at 02825d1e5577: still applied to every RAM block with a host mapping, guest_memfd
  ones included: the madvise covers the shared half, guest_memfd is never mapped by QEMU). With the host's
  ``transparent_hugepage/enabled`` = always or madvise (:attr:`HostKernel.thp_enabled`) a fault takes a 2 MiB
  THP when the whole aligned 2M range is RAM and untouched and a 2M block can be had (``do_huge_pmd_anonymous_page``,
  with direct compaction and reclaim: ``defrag`` = madvise), else 4K pages. A fault for one page maps all 512:
  one GHCB page made shared allocates 2 MiB. A discard (``MADV_DONTNEED``) covering the whole THP frees it
  (``zap_huge_pmd``); one covering part of it only splits the PMD (``__split_huge_pmd``): the zapped 4K pages are
  unmapped but stay allocated in the folio, which goes on the host's deferred split queue
  (:mod:`snpsim.host.vmscan`) and gives them back when reclaim runs the shrinker (:meth:`UserMemory.split_deferred`),
  or at once when its last mapped page goes.
- ``hugetlb-2m`` / ``hugetlb-1g``: memory-backend-file on hugetlbfs. The ``mmap`` of the RAM block reserves its
  huge pages (``hugetlb_reserve_pages``, :meth:`HostKernel.hugetlb_reserve_pages`); a reservation that cannot be
  had fails the mapping (:class:`MmapError`, ENOMEM: QEMU exits) instead of a SIGBUS at a later fault. Faults take
  the reserved pages; a destroyed mapping unreserves what it never faulted (``hugetlb_unreserve_pages``). A punch
  hole frees only the huge pages wholly inside it (``hugetlbfs_punch_hole`` rounds inward), but QEMU never discards
  hugetlb RAM (its page size is not the host's).

Sources: ``shared/reference/guest-workloads.md`` §1, §6; ``linux-snp-host.md`` §5, §9; mm/huge_memory.c,
mm/memory.c ``zap_pmd_range``, mm/hugetlb.c.

With ``private_backing = gmem`` this memory backs only the guest's *shared* pages; with ``vmm`` (pre-UPM SNP) it
backs every page and KVM converts private pages in place by RMPUPDATE. Whether a conversion discards is the VMM's
decision (QEMU never discards hugetlb-backed RAM), not this mapping's.

Simplifications: a 2M range that is only partly guest RAM (the first, holding the legacy VGA/BIOS hole) is backed
by 4K pages, THP or hugetlb alike (QEMU's RAM block has memory behind the hole), so a hugetlb RAM block reserves
one huge page fewer than QEMU's file size; shmem THP (memory-backend-memfd with ``shmem_enabled`` other than
never) is not modelled.
"""

from __future__ import annotations

import errno
import os

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


class MmapError(OSError):
    """The ``mmap`` of a RAM block failed (a hugetlbfs reservation that cannot be had: ENOMEM)."""

    def __init__(self, err: int, why: str) -> None:
        super().__init__(err, os.strerror(err))
        self.why = why


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
        self.hugetlb = kind.startswith("hugetlb")
        #: the huge page unit in 4K pages: 1 for 4K backing, and for THP on a host with THP disabled
        self.unit = 1 if kind == "thp" and not host.thp_enabled else GRANULE_BYTES[kind] >> PAGE_SHIFT
        self.order = self.unit.bit_length() - 1
        #: host frame backing each gfn (mapped by the VMM), -1 where none
        self.pfn = PfnMap(self.npages, host.nframes)
        nunits = -(-self.npages // self.unit)
        #: unit mapped by one huge page (a PMD-mapped THP, or a hugetlb page)
        self.huge = lazy_zeros(nunits, bool)  # one per 4K page for 4K backing, and never written then
        #: PTE-mapped THPs on the deferred split queue: unit -> the folio's first frame
        self.partial: dict[int, int] = {}
        #: pages mapped; pages of partly mapped THPs unmapped but still allocated; huge pages reserved, not faulted
        self.allocated_pages = 0
        self.held_pages = 0
        self.reserved_units = 0
        self.peak_pages = 0
        self.discarded_pages = 0
        if self.hugetlb:
            self._reserve()

    # ------------------------------------------------------------------ mmap (hugetlbfs reservation)
    def _whole_units(self) -> int:
        """The units the mapping backs with huge pages: 2M/1G ranges that are wholly RAM."""
        n = self.npages // self.unit
        return int(np.count_nonzero(self.ram[: n * self.unit].reshape(n, self.unit).all(axis=1)))

    def _reserve(self) -> None:
        want = self._whole_units()
        if not self.host.hugetlb_reserve_pages(self.order, want):
            raise MmapError(errno.ENOMEM, f"{want} hugetlb pages of {GRANULE_BYTES[self.kind] >> 20} MiB")
        self.reserved_units = want

    # ------------------------------------------------------------------ what the mapping holds
    @property
    def page_size(self) -> int:
        """The mapping's page size as userspace sees it (``qemu_ram_pagesize``): the huge page size for
        hugetlbfs, the base page size for anonymous memory, THP included."""
        return GRANULE_BYTES[self.kind] if self.hugetlb else 1 << PAGE_SHIFT

    @property
    def total_pages(self) -> int:
        """Host pages the mapping holds: mapped, held by partly mapped THPs, and reserved huge pages."""
        return self.allocated_pages + self.held_pages + self.reserved_units * self.unit

    @property
    def bytes(self) -> int:
        """Host memory the mapping holds (:attr:`total_pages`): what its cgroup and the host pay."""
        return self.total_pages << PAGE_SHIFT

    def pfns(self, gfn: int, npages: int) -> IntArray:
        return self.pfn[gfn : gfn + npages]

    def host_level(self, gfn: int) -> PageSize:
        """Size of the host (userspace) mapping backing ``gfn``."""
        return _HUGE_LEVEL[self.kind] if self.unit > 1 and self.huge[gfn // self.unit] else PageSize.SIZE_4K

    def held_frames(self) -> IntArray:
        """The frames partly mapped THPs hold unmapped (sorted)."""
        out = [self._unmapped_subpages(u, head) for u, head in sorted(self.partial.items())]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def _subpage_mapped(self, u: int, head: int) -> npt.NDArray[np.bool_]:
        """Which pages of the folio at ``head`` (unit ``u``) are still mapped at their gfn."""
        lo = u * self.unit
        return self.pfn[lo : lo + self.unit] == head + np.arange(self.unit, dtype=np.int64)

    def _unmapped_subpages(self, u: int, head: int) -> IntArray:
        return head + np.flatnonzero(~self._subpage_mapped(u, head)).astype(np.int64)

    # ------------------------------------------------------------------ faults
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
                    reserved = self.hugetlb and self.reserved_units > 0
                    got = self.host.alloc(self.order, self.owner, hugetlb=self.hugetlb, reserved=reserved)
                    if got is None and self.hugetlb:
                        return None  # no reservation left (a punched hole) and none to be had: SIGBUS
                    if got is not None:
                        self.reserved_units -= int(reserved)
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
        self.peak_pages = max(self.peak_pages, self.total_pages)
        if self.register:
            self.host.register_frames(frames)

    # ------------------------------------------------------------------ discard
    def discard(self, gfn: int, npages: int) -> int:
        """``madvise(MADV_DONTNEED)`` / ``fallocate(PUNCH_HOLE)`` over ``[gfn, gfn+npages)``: unmap the backing
        pages inside it and free what nothing else holds; returns the pages freed now."""
        if npages <= 0:
            return 0
        lo, hi = gfn, gfn + npages
        freed = 0
        touched: list[int] = []  # partly mapped THPs the range reaches
        if self.unit > 1:
            u0, u1 = lo // self.unit, (hi - 1) // self.unit + 1
            for u in (np.flatnonzero(self.huge[u0:u1]) + u0).tolist():
                ulo = u * self.unit
                if lo <= ulo and ulo + self.unit <= hi:  # zap_huge_pmd: the whole huge page goes
                    self.host.free(self.pfn[ulo], self.order)
                    self.pfn.clear(ulo, ulo + self.unit)
                    self.huge[u] = False
                    freed += self.unit
                    self.allocated_pages -= self.unit
                elif not self.hugetlb:  # __split_huge_pmd: PTE-mapped from now on, the folio stays whole
                    self.huge[u] = False
                    self.partial[u] = int(self.pfn[ulo])
                    self.host.charge("tlb_flush", self.host.costs.tlb_flush_ns)  # pmdp_invalidate
                # else hugetlbfs_punch_hole rounds inward: a partly covered hugetlb page is only zeroed
            if self.partial:
                touched = [u for u in sorted(self.partial) if u0 <= u < u1]
        backed = self.pfn.present(lo, hi)
        if touched:  # pages of a partly mapped THP are unmapped, not freed
            for u in touched:
                head, ulo = self.partial[u], u * self.unit
                a, b = max(lo, ulo), min(hi, ulo + self.unit)
                sub = self.pfn[a:b] == head + np.arange(a - ulo, b - ulo, dtype=np.int64)
                n = int(np.count_nonzero(sub))
                if n:
                    self.pfn.clear(a, b, sub)
                    backed[a - lo : b - lo] &= ~sub
                    self.allocated_pages -= n
                    self._hold(n)
        have = self.pfn[lo:hi][backed]
        if have.size:
            self.host.free_bulk(np.sort(have), 0)
            self.pfn.clear(lo, hi, backed)
            freed += int(have.size)
            self.allocated_pages -= int(have.size)
        for u in touched:
            head = self.partial[u]
            if not self._subpage_mapped(u, head).any():  # the last mapping went: the folio is freed whole
                del self.partial[u]
                self.host.deferred_split.remove(self, u)
                self.host.free(head, self.order)
                self._hold(-self.unit)
                freed += self.unit
            else:
                self.host.deferred_split.add(self, u)  # deferred_split_folio(folio, partially_mapped=true)
        self.discarded_pages += freed
        return freed

    def _hold(self, n: int) -> None:
        self.held_pages += n
        self.host.thp_held_pages += n

    def split_deferred(self, unit: int) -> int:
        """The deferred split shrinker's ``split_folio`` of the partly mapped THP at ``unit``: its mapped pages
        become 4K pages, its unmapped pages are freed; returns the pages freed."""
        head = self.partial.pop(unit, None)
        if head is None:
            return 0
        frames = self._unmapped_subpages(unit, head)
        if frames.size:
            self.host.free_bulk(frames, 0)
            self._hold(-int(frames.size))
        return int(frames.size)

    # ------------------------------------------------------------------ munmap
    def release_all(self) -> IntArray:
        """Unmap the whole RAMBlock (VM destroyed); returns the frames freed (4K granularity)."""
        host = self.host
        present = np.flatnonzero(self.pfn.present())
        folio_pages = np.zeros(self.npages, dtype=bool)
        heads = []
        for u in np.flatnonzero(self.huge).tolist():
            heads.append(int(self.pfn[u * self.unit]))
            folio_pages[u * self.unit : (u + 1) * self.unit] = True
        held = self.held_frames()
        for u, head in sorted(self.partial.items()):
            host.deferred_split.remove(self, u)
            heads.append(head)
            lo = u * self.unit
            folio_pages[lo : lo + self.unit] |= self._subpage_mapped(u, head)
        frames = np.sort(np.concatenate([self.pfn[present], held]))
        for head in heads:
            host.free(head, self.order)
        rest = self.pfn[present[~folio_pages[present]]]
        if rest.size:
            host.free_bulk(np.sort(rest), 0)
        if self.reserved_units:
            host.hugetlb_unreserve_pages(self.order, self.reserved_units)
        self._hold(-self.held_pages)
        self.pfn = PfnMap(self.npages, host.nframes)  # empty again, without writing every entry
        self.huge = lazy_zeros(self.huge.size, bool)
        self.partial = {}
        self.allocated_pages = 0
        self.reserved_units = 0
        return frames
