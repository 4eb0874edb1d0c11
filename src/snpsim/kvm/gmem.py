"""guest_memfd: the VM's private memory as a file of folios that userspace cannot map.

Models ``virt/kvm/guest_memfd.c`` (``shared/reference/linux-snp-host.md`` §5): folios are allocated on the first
fault or prepare (``kvm_gmem_get_pfn``: zero the folio, then call the arch prepare hook), ``fallocate(PUNCH_HOLE)``
frees the folios inside the hole (each freed folio goes through ``kvm_arch_gmem_invalidate`` = SNP's
``sev_gmem_invalidate``: RMP back to shared), and the freed folio is the *explicit release point* at which the host
may rebuild its direct map (Sean Christopherson, 2022-09-14, §6). The folio size is the policy's
``private_granularity``: upstream is order-0 only; with 2M/1G folios (the THP and hugetlb series, §5) a hole that
does not cover a whole folio frees nothing ("if holes are punched in any ranges less than a full huge page, no
pages are removed from the filemap").

Three out-of-tree designs extend the file (knobs ``gmem_allocator``, ``gmem_conversion``, ``gmem_folio_split``;
``linux-snp-host.md`` §5):

- THP folios ("[PATCH RFC v1 0/5] KVM: gmem: 2MB THP support and preparedness tracking changes", M. Roth,
  20241212063635.712877-1-michael.roth@amd.com): a 2M folio when a free 2M block can be had, else the index range
  falls back to 512 order-0 pages (:attr:`GuestMemfd.small`); no hole smaller than 2M frees anything ("disallow
  hole-punching at sub-2MB granularity"), the fallback pages included.
- HugeTLB folios ("[RFC PATCH v2 00/51] 1G page support for guest_memfd", A. Tng,
  cover.1747264138.git.ackerleytng@google.com): 2M/1G pages from the hugetlb pool, reserved for the whole file at
  creation; "if holes are punched in any ranges less than a full huge page, no pages are removed from the filemap.
  Those ranges are only zeroed"; ``kvm_gmem_restructure_folios_in_range()`` splits the huge folio when part of it
  goes shared and merges it only when ``!kvm_gmem_has_some_shared()`` over the whole huge page
  (:meth:`GuestMemfd.restructure_folios_in_range`; the split changes the folio structure, not the frames).
- In-place conversion ("[PATCH v8 00/46] guest_memfd: In-place conversion support", A. Tng,
  20260618-gmem-inplace-conversion-v8-0-9d2959357853@google.com): the file holds the shared pages too, its
  shareability is per page (the model shares KVM's attribute array: v8 makes guest_memfd the owner of the
  PRIVATE attribute), a conversion "fails with EAGAIN and error_offset" while the host holds extra references to a
  page (:meth:`GuestMemfd.pin_pages`: ``get_user_pages`` / ``pin_user_pages`` of a host accessor), and host
  userspace can map only shared pages: "accesses to guest-private pages ... will result in a SIGBUS"
  (:meth:`GuestMemfd.fault_user`).

With ``private_backing = vmm`` (pre-UPM SNP) there is no guest_memfd: private pages are the VMM's own pages
(:class:`snpsim.host.mm.UserMemory`), converted in place by KVM.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from snpsim.arch import PAGE_SHIFT, PAGES_PER_2M, PageSize
from snpsim.host import HostKernel, Owner
from snpsim.pfnmap import CHUNK_SHIFT, PfnMap, lazy_zeros

IntArray = npt.NDArray[np.int64]

#: where SNP's invalidate hook reads freed private pages through the direct map
PATH_GMEM_INVALIDATE = "arch/x86/kvm/svm/sev.c:sev_gmem_invalidate (clflush_cache_range)"

#: ``-EAGAIN`` as the guest_memfd conversion ioctl returns it
EAGAIN = 11


class SigBus(Exception):
    """Host userspace touched a guest-private page of an in-place guest_memfd mapping (``kvm_gmem_fault_user_mapping``
    returns ``VM_FAULT_SIGBUS``)."""


class GmemReserveError(MemoryError):
    """The hugetlb reservation of a guest_memfd could not be had at ``KVM_CREATE_GUEST_MEMFD`` (ENOMEM)."""


class GupPin:
    """Extra references a host accessor holds on pages ``[gfn, gfn+npages)`` (``pin_user_pages`` by vhost, an
    O_DIRECT read...). ``completes_after``: back-off intervals of the VMM's retry loop until the accessor's I/O
    completes and it unpins (None: held until :meth:`GuestMemfd.unpin_pages`)."""

    def __init__(self, gfn: int, npages: int, completes_after: int | None) -> None:
        self.gfn, self.npages, self.completes_after = gfn, npages, completes_after


class GuestMemfd:
    """One VM's guest_memfd over gfns ``[0, npages)`` with folios of ``folio_pages`` 4K pages."""

    def __init__(
        self,
        host: HostKernel,
        npages: int,
        folio_pages: int,
        *,
        invalidate: Callable[[IntArray], None],
        allocator: str = "buddy",
        split: str = "never",
        private: npt.NDArray[np.bool_] | None = None,
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
        self.allocator = allocator if self.folio_pages > 1 else "buddy"
        self.split = split if self.folio_pages >= PAGES_PER_2M else "never"
        #: the PRIVATE attribute of every index (in-place: guest_memfd's shareability); None: not tracked here
        self.private = private
        #: THP fallback: per-page frames of the folios allocated as 512 order-0 pages
        self.small = PfnMap(self.npages, host.nframes)
        self.small_folio = lazy_zeros(nfolios, np.bool_)
        self.allocated_small_pages = 0
        n2m = -(-self.npages // PAGES_PER_2M)
        #: 2M blocks whose huge folio is split into 4K folios; 1G folios split into 2M folios
        self.split_4k = np.zeros(n2m, dtype=bool)
        self.split_2m = lazy_zeros(nfolios, np.bool_)
        self.split_count = 0
        self.merge_count = 0
        #: extra host references per page (``folio_ref_count`` above what the filemap holds)
        self.refs = lazy_zeros(self.npages, np.int32)
        self.pins: list[GupPin] = []
        self.eagain_count = 0
        self.hugetlb = self.allocator == "hugetlb"
        self.reserved = 0
        if self.hugetlb:  # hugetlbfs-style reservation of the whole file at creation
            if not host.hugetlb_reserve_pages(self.order, nfolios):
                raise GmemReserveError(f"{nfolios} hugetlb pages of {self.folio_pages >> 8} MiB")
            self.reserved = nfolios

    @property
    def private_bytes(self) -> int:
        """Bytes of every allocated folio (shared pages included with in-place conversion)."""
        return (self.allocated_folios * self.folio_pages + self.allocated_small_pages) << PAGE_SHIFT

    def present(self, lo: int, hi: int) -> npt.NDArray[np.bool_]:
        """Whether each index of ``[lo, hi)`` has a page allocated."""
        fp = self.folio_pages
        if fp == 1:
            return self.folio_pfn.present(lo, hi)
        f0 = lo // fp
        out = np.repeat(self.folio_pfn.present(f0, (hi - 1) // fp + 1), fp)[lo - f0 * fp : hi - f0 * fp]
        if self.allocated_small_pages:
            out = out | self.small.present(lo, hi)
        return out

    def frames(self) -> IntArray:
        """Every allocated frame (huge folios' then fallback pages', unsorted)."""
        present = self.folio_pfn[:] >= 0
        bases = self.folio_pfn[:][present]
        big = (bases[:, None] + np.arange(self.folio_pages, dtype=np.int64)).ravel()
        if not self.allocated_small_pages:
            return big
        sm = self.small[:]
        return np.concatenate([big, sm[sm >= 0]])

    def pfns(self, gfn: int, npages: int) -> IntArray:
        """Host frames of ``[gfn, gfn+npages)``, -1 where no folio is allocated."""
        out = self._huge_pfns(gfn, npages)
        if self.allocated_small_pages:
            out = np.where(out >= 0, out, self.small[gfn : gfn + npages])
        return out

    def _huge_pfns(self, gfn: int, npages: int) -> IntArray:
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
        missing = np.flatnonzero(~self.folio_pfn.present(f0, f1) & ~self.small_folio[f0:f1]) + f0
        if missing.size:
            if not self._alloc_folios(missing):
                return None
            self.peak_folios = max(self.peak_folios, self.allocated_folios)
            if self.split != "never":
                for f in missing.tolist():  # a folio allocated over shared indexes is split at once
                    self.restructure_folios_in_range(f * self.folio_pages, self.folio_pages, count=False)
        return self.pfns(gfn, npages)

    def _alloc_folios(self, missing: IntArray) -> bool:
        """Allocate the folios at indexes ``missing``: in bulk from the buddy allocator; from the hugetlb pool
        (reserved first); or as THP, each falling back to 512 order-0 pages when no 2M block can be had."""
        host = self.host
        if self.allocator == "buddy" or (self.allocator == "thp" and missing.size > 1):
            got = host.alloc_bulk(self.order, int(missing.size), Owner.GMEM)
            if got is not None:
                self.folio_pfn[missing] = got
                host.register_frames(got)
                self.allocated_folios += int(missing.size)
                return True
            if self.allocator == "buddy":
                return False
        for f in missing.tolist():
            if self.hugetlb:
                reserved = self.reserved > 0
                pfn = host.alloc(self.order, Owner.GMEM, hugetlb=True, reserved=reserved)
                self.reserved -= int(reserved and pfn is not None)
            else:
                pfn = host.alloc(self.order, Owner.GMEM)
            if pfn is not None:
                self.folio_pfn[f] = pfn
                host.register_frames(np.array([pfn], dtype=np.int64))
                self.allocated_folios += 1
                continue
            if self.allocator != "thp":
                return False
            pages = host.alloc_bulk(0, self.folio_pages, Owner.GMEM)  # the THP fallback: order-0 folios
            if pages is None:
                return False
            lo = f * self.folio_pages
            hi = min(lo + self.folio_pages, self.npages)
            self.small[lo:hi] = pages[: hi - lo]
            if hi - lo < pages.size:
                host.free_bulk(np.sort(pages[hi - lo :]), 0)
            self.small_folio[f] = True
            self.allocated_small_pages += hi - lo
            host.register_frames(pages[: hi - lo])
        return True

    # ------------------------------------------------------------------ folio structure (HugeTLB RFC v2)
    def mapping_level(self, gfn: int) -> PageSize:
        """The largest mapping the folio holding ``gfn`` allows (``kvm_gmem_max_mapping_level``)."""
        f = gfn // self.folio_pages
        if self.folio_pages < PAGES_PER_2M or self.small_folio[f] or self.split_4k[gfn // PAGES_PER_2M]:
            return PageSize.SIZE_4K
        if self.folio_pages == PAGES_PER_2M or self.split_2m[f]:
            return PageSize.SIZE_2M
        return PageSize.SIZE_1G

    def may_map_1g(self, gfn: int, npages: int) -> bool:
        """Whether a folio of ``[gfn, gfn+npages)`` is an unsplit 1G folio (a 1G mapping may be possible)."""
        fp = self.folio_pages
        if fp <= PAGES_PER_2M:
            return False
        f0, f1 = gfn // fp, (gfn + npages - 1) // fp + 1
        per = fp // PAGES_PER_2M
        return bool(
            (~self.split_2m[f0:f1] & ~self.split_4k[f0 * per : f1 * per : per] & ~self.small_folio[f0:f1]).any()
        )

    def huge_blocks(self, blocks: IntArray) -> npt.NDArray[np.bool_]:
        """Per 2M block index: whether its folio is at least 2M (not a 4K fallback, not split to 4K)."""
        if self.folio_pages < PAGES_PER_2M:
            return np.zeros(blocks.size, dtype=bool)
        per = self.folio_pages // PAGES_PER_2M
        return ~self.split_4k[blocks] & ~self.small_folio[blocks // per]

    def restructure_folios_in_range(self, gfn: int, npages: int, *, count: bool = True) -> None:
        """``kvm_gmem_restructure_folios_in_range`` after a conversion of ``[gfn, gfn+npages)``: every huge folio
        it touches is split if any of its pages is shared, merged if all are private (``split`` = ``4k``: the
        whole folio to/from 4K; ``2m-first``: a 1G folio to/from 2M folios, and each 2M folio holding a shared
        page to/from 4K). Counts one split/merge per folio whose structure changed, if it is allocated."""
        if self.split == "never" or self.private is None:
            return
        fp, n2 = self.folio_pages, PAGES_PER_2M
        per = fp // n2
        for f in range(gfn // fp, (gfn + npages - 1) // fp + 1):
            lo, hi = f * fp, min((f + 1) * fp, self.npages)
            shared = ~self.private[lo:hi]
            b0, b1 = lo // n2, -(-hi // n2)
            old4k = self.split_4k[b0:b1].copy()
            old2m = bool(self.split_2m[f])
            if self.split == "4k" or per == 1:
                self.split_4k[b0:b1] = bool(shared.any())
            else:
                pad = np.zeros((b1 - b0) * n2, dtype=bool)
                pad[: shared.size] = shared
                blk = pad.reshape(-1, n2).any(axis=1)
                self.split_4k[b0:b1] = blk
                self.split_2m[f] = bool(blk.any())
            if not count or self.folio_pfn[f] < 0:
                continue
            new4k, new2m = self.split_4k[b0:b1], bool(self.split_2m[f])
            if self.split == "4k" or per == 1:
                self.split_count += int(new4k.any() and not old4k.any())
                self.merge_count += int(old4k.any() and not new4k.any())
            else:
                self.split_count += int(new2m and not old2m) + int(np.count_nonzero(new4k & ~old4k))
                self.merge_count += int(old2m and not new2m) + int(np.count_nonzero(old4k & ~new4k))

    # ------------------------------------------------------------------ references and user mappings (INPLACE)
    def pin_pages(self, gfn: int, npages: int, *, completes_after: int | None = None) -> GupPin:
        """A host accessor takes extra references on shared pages (``pin_user_pages`` on the VMM's mapping of the
        file); a private page cannot be mapped, so it cannot be pinned (SIGBUS)."""
        for g in range(gfn, gfn + npages):
            self.fault_user(g)
        pin = GupPin(gfn, npages, completes_after)
        self.refs[gfn : gfn + npages] += 1
        self.pins.append(pin)
        return pin

    def unpin_pages(self, pin: GupPin) -> None:
        """``unpin_user_pages``: the accessor's I/O completed."""
        self.pins.remove(pin)
        self.refs[pin.gfn : pin.gfn + pin.npages] -= 1

    def backoff(self) -> None:
        """One back-off interval of the VMM's retry loop passes: accessors whose I/O completes in it unpin."""
        for pin in list(self.pins):
            if pin.completes_after is not None:
                pin.completes_after -= 1
                if pin.completes_after <= 0:
                    self.unpin_pages(pin)

    def busy_offset(self, gfn: int, npages: int) -> int | None:
        """The first page of the range with unexpected references (the conversion's ``error_offset``), or None."""
        busy = np.flatnonzero(self.refs[gfn : gfn + npages] > 0)
        return int(busy[0]) if busy.size else None

    def fault_user(self, gfn: int) -> int:
        """Host userspace touches index ``gfn`` through its ``mmap`` of the file (``kvm_gmem_fault_user_mapping``):
        the page's frame, allocated if needed; :class:`SigBus` if the page is private."""
        if self.private is None or self.private[gfn]:
            raise SigBus(f"guest_memfd index {gfn:#x} is private")
        pfns = self.get_pfns(gfn, 1)
        if pfns is None:
            raise MemoryError("host out of memory")
        return int(pfns[0])

    def punch_hole(self, gfn: int, npages: int) -> int:
        """``fallocate(PUNCH_HOLE)``: free every folio wholly inside the range; returns folios freed."""
        f0 = -(-gfn // self.folio_pages)
        f1 = (gfn + npages) // self.folio_pages
        if self.hugetlb:  # the partly covered huge pages are only zeroed
            self._zero_partial(gfn, npages, f0, f1)
        if f1 <= f0:
            return 0
        idx = np.flatnonzero(self.folio_pfn.present(f0, f1) | self.small_folio[f0:f1]) + f0
        if idx.size:
            self._free_folios(idx)
        return int(idx.size)

    def _zero_partial(self, gfn: int, npages: int, f0: int, f1: int) -> None:
        fp = self.folio_pages
        for lo, hi in ((gfn, min(gfn + npages, f0 * fp)), (max(gfn, f1 * fp, f0 * fp), gfn + npages)):
            if hi > lo:
                n = int(np.count_nonzero(self.present(lo, hi)))
                if n:
                    self.host.charge("page_clear", n * self.host.costs.page_clear_ns, n)

    def release_all(self) -> int:
        """The file's last reference is dropped (VM destroyed): every folio is freed, the unused hugetlb
        reservation is given back."""
        idx = np.flatnonzero(self.folio_pfn.present() | self.small_folio)
        if idx.size:
            frames = self.frames()
            self._free_folios(idx)
            self.host.unregister_frames(frames)
        if self.reserved:
            self.host.hugetlb_unreserve_pages(self.order, self.reserved)
            self.reserved = 0
        return int(idx.size)

    def zap_direct_map(self, pfns: IntArray) -> None:
        """``kvm_gmem_folio_zap_direct_map`` after preparation (``gmem_no_direct_map`` on): remove the prepared
        frames from the host direct map."""
        if self.host.policy.gmem_no_direct_map != "off":
            self.host.folio_zap_direct_map(pfns)

    def _invalidate_restoring(self, frames: IntArray) -> None:
        """``sev_gmem_invalidate`` (RMP back to hypervisor-owned) on frames being freed, with the direct map
        restored before or after it as ``gmem_no_direct_map`` says, and its cache flush through the direct map."""
        nodm = self.host.policy.gmem_no_direct_map
        if nodm == "restore-first":
            self.host.folio_restore_direct_map(frames)
        flushed = frames[self.host.rmp_assigned(frames)] if nodm != "off" else frames[:0]
        self._invalidate(frames)
        if nodm != "off":
            self.host.clflush_cache_range(flushed, PATH_GMEM_INVALIDATE)
            if nodm == "invalidate-first":
                self.host.folio_restore_direct_map(frames)

    def _free_folios(self, idx: IntArray) -> None:
        """``kvm_gmem_free_folio`` on each folio (4K fallback pages of a THP-allocator folio page by page). With
        ``gmem_no_direct_map`` the direct map is restored before or after ``kvm_arch_gmem_invalidate`` (the knob's
        value); ``sev_gmem_invalidate`` then flushes every page it made shared through the direct map
        (``clflush_cache_range(__va(pfn_to_hpa(pfn)))``), which is checked only with the knob on (without it every
        design of the model has the page present again by then)."""
        small = idx[self.small_folio[idx]]
        idx = idx[~self.small_folio[idx]]
        fp = self.folio_pages
        if small.size:
            sel = np.zeros(self.npages, dtype=bool)
            for f in small.tolist():
                sel[f * fp : (f + 1) * fp] = True
            pages = self.small[:][sel]
            pages = pages[pages >= 0]
            self._invalidate_restoring(pages)
            self.host.release_frames(pages)
            self.host.free_bulk(np.sort(pages), 0)
            for f in small.tolist():
                self.small.clear(f * fp, min((f + 1) * fp, self.npages))
            self.small_folio[small] = False
            self.allocated_small_pages -= int(pages.size)
        if not idx.size:
            return
        bases = self.folio_pfn[idx]
        frames = (bases[:, None] + np.arange(fp, dtype=np.int64)).ravel()
        self._invalidate_restoring(frames)
        self.host.release_frames(frames)  # the explicit release point
        if self.hugetlb:
            for b in bases.tolist():
                self.host.free(b, self.order)
        else:
            self.host.free_bulk(bases, self.order)
        self.folio_pfn[idx] = -1
        if fp >= PAGES_PER_2M:
            per = fp // PAGES_PER_2M
            for f in idx.tolist():
                self.split_4k[f * per : (f + 1) * per] = False
            self.split_2m[idx] = False
        self.allocated_folios -= int(idx.size)
