"""guest_memfd: the VM's private memory as a file of folios that userspace cannot map.

Models ``virt/kvm/guest_memfd.c`` (``shared/reference/linux-snp-host.md`` §5): folios are allocated on the first
fault or prepare (``kvm_gmem_get_pfn``: zero the folio, then call the arch prepare hook), ``fallocate(PUNCH_HOLE)``
frees the folios inside the hole (each freed folio goes through ``kvm_arch_gmem_invalidate`` = SNP's
``sev_gmem_invalidate``: RMP back to shared), and the freed folio is the *explicit release point* at which the host
may rebuild its direct map (Sean Christopherson, 2022-09-14, §6). The folio size is the policy's
``private_granularity``: upstream is order-0 only; with 2M/1G folios (the THP and hugetlb series, §5) a hole that
does not cover a whole folio frees nothing ("if holes are punched in any ranges less than a full huge page, no
pages are removed from the filemap").

With ``private_backing = vmm`` (pre-UPM SNP) there is no guest_memfd: private pages are the VMM's own pages
(:class:`snpsim.host.mm.UserMemory`), converted in place by KVM.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from snpsim.arch import PAGE_SHIFT
from snpsim.host import HostKernel, Owner
from snpsim.pfnmap import CHUNK_SHIFT, PfnMap

IntArray = npt.NDArray[np.int64]

#: where SNP's invalidate hook reads freed private pages through the direct map
PATH_GMEM_INVALIDATE = "arch/x86/kvm/svm/sev.c:sev_gmem_invalidate (clflush_cache_range)"


class GuestMemfd:
    """One VM's guest_memfd over gfns ``[0, npages)`` with folios of ``folio_pages`` 4K pages."""

    def __init__(
        self,
        host: HostKernel,
        npages: int,
        folio_pages: int,
        *,
        invalidate: Callable[[IntArray], None],
    ) -> None:
        self.host = host
        self.npages = int(npages)
        self.folio_pages = int(folio_pages)
        self.order = self.folio_pages.bit_length() - 1
        nfolios = -(-self.npages // self.folio_pages)
        #: host frame of each folio's first page, -1 if not allocated
        self.folio_pfn = PfnMap(nfolios, host.nframes, chunk_shift=max(0, CHUNK_SHIFT - self.order))  # 2M chunks
        self._invalidate = invalidate
        self.allocated_folios = 0
        self.peak_folios = 0

    @property
    def private_bytes(self) -> int:
        return self.allocated_folios * self.folio_pages << PAGE_SHIFT

    def pfns(self, gfn: int, npages: int) -> IntArray:
        """Host frames of ``[gfn, gfn+npages)``, -1 where no folio is allocated."""
        fp = self.folio_pages
        if fp == 1:
            return self.folio_pfn[gfn : gfn + npages]
        f0, f1 = gfn // fp, (gfn + npages - 1) // fp + 1
        off = gfn - f0 * fp
        if f1 - f0 == 1:  # inside one folio (a huge mapping's fault): its frames are contiguous
            base = self.folio_pfn[f0]
            if base < 0:
                return np.full(npages, -1, dtype=np.int64)
            return np.arange(base + off, base + off + npages, dtype=np.int64)
        bases = self.folio_pfn[f0:f1]
        frames = bases[:, None] + np.arange(fp, dtype=np.int64)
        frames[bases < 0] = -1
        return frames.ravel()[off : off + npages]

    def get_pfns(self, gfn: int, npages: int) -> IntArray | None:
        """``kvm_gmem_get_pfn`` over a range: allocate (and zero) the missing folios; None if out of memory."""
        f0, f1 = gfn // self.folio_pages, (gfn + npages - 1) // self.folio_pages + 1
        missing = np.flatnonzero(~self.folio_pfn.present(f0, f1)) + f0
        if missing.size:
            got = self.host.alloc_bulk(self.order, int(missing.size), Owner.GMEM)
            if got is None:
                return None
            self.folio_pfn[missing] = got
            self.host.register_frames(got)
            self.allocated_folios += int(missing.size)
            self.peak_folios = max(self.peak_folios, self.allocated_folios)
        return self.pfns(gfn, npages)

    def punch_hole(self, gfn: int, npages: int) -> int:
        """``fallocate(PUNCH_HOLE)``: free every folio wholly inside the range; returns folios freed."""
        f0 = -(-gfn // self.folio_pages)
        f1 = (gfn + npages) // self.folio_pages
        if f1 <= f0:
            return 0
        idx = np.flatnonzero(self.folio_pfn.present(f0, f1)) + f0
        if idx.size:
            self._free_folios(idx)
        return int(idx.size)

    def release_all(self) -> int:
        """The file's last reference is dropped (VM destroyed): every folio is freed."""
        idx = np.flatnonzero(self.folio_pfn.present())
        if idx.size:
            bases = self.folio_pfn[idx]
            self._free_folios(idx)
            self.host.unregister_frames((bases[:, None] + np.arange(self.folio_pages, dtype=np.int64)).ravel())
        return int(idx.size)

    def zap_direct_map(self, pfns: IntArray) -> None:
        """``kvm_gmem_folio_zap_direct_map`` after preparation (``gmem_no_direct_map`` on): remove the prepared
        frames from the host direct map."""
        if self.host.policy.gmem_no_direct_map != "off":
            self.host.folio_zap_direct_map(pfns)

    def _free_folios(self, idx: IntArray) -> None:
        """``kvm_gmem_free_folio`` on each folio. With ``gmem_no_direct_map`` the direct map is restored before or
        after ``kvm_arch_gmem_invalidate`` (the knob's value); ``sev_gmem_invalidate`` then flushes every page it
        made shared through the direct map (``clflush_cache_range(__va(pfn_to_hpa(pfn)))``), which is checked
        only with the knob on (without it every design of the model has the page present again by then)."""
        bases = self.folio_pfn[idx]
        frames = (bases[:, None] + np.arange(self.folio_pages, dtype=np.int64)).ravel()
        nodm = self.host.policy.gmem_no_direct_map
        if nodm == "restore-first":
            self.host.folio_restore_direct_map(frames)
        flushed = frames[self.host.rmp_assigned(frames)] if nodm != "off" else frames[:0]
        self._invalidate(frames)  # sev_gmem_invalidate: RMP back to hypervisor-owned
        if nodm != "off":
            self.host.clflush_cache_range(flushed, PATH_GMEM_INVALIDATE)
            if nodm == "invalidate-first":
                self.host.folio_restore_direct_map(frames)
        self.host.release_frames(frames)  # the explicit release point
        self.host.free_bulk(bases, self.order)
        self.folio_pfn[idx] = -1
        self.allocated_folios -= int(idx.size)
