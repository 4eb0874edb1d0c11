"""One SNP VM inside KVM: its memslot, memory attributes, guest_memfd, nested page table and fault handling.

Models the path of a guest access or instruction through KVM (``shared/reference/linux-snp-host.md`` §4-§5):

- ``npf_interception`` → ``kvm_mmu_page_fault``: an access whose kind (private C=1 / shared C=0) disagrees with the
  gfn's attribute is a ``KVM_EXIT_MEMORY_FAULT`` to the VMM (an implicit conversion); otherwise the gfn is faulted
  in from guest_memfd (private: ``kvm_gmem_get_pfn`` + ``sev_gmem_prepare``) or from the VMM's memory (shared) and
  mapped at ``kvm_mmu_max_mapping_level``: the largest level whose aligned range is inside the memslot, has uniform
  attributes (``KVM_LPAGE_MIXED_FLAG``), and is no larger than the folio / host mapping and, for private memory,
  the RMP entry (``sev_gmem_max_mapping_level``). Each installed mapping is one #NPF (``npf_count``).
- the hardware RMP check of the access (:meth:`snpsim.hw.rmp.Rmp.check_guest_access`): an RMP #NPF on a 2M RMP
  entry is fixed by ``sev_handle_rmp_fault`` (PSMASH + zap); on an unassigned page (the host took it back) the
  next fault prepares it again, unvalidated, so the guest's access raises #VC 0x404 (``guest_vc_count``).
- ``KVM_SET_MEMORY_ATTRIBUTES`` zaps the SPTEs of the old attribute in the range
  (``kvm_arch_pre_set_memory_attributes``).
- Page State Change VMGEXITs (:mod:`snpsim.kvm.sev`) return ``KVM_HC_MAP_GPA_RANGE`` exits to the VMM.

The VM's address space is one memslot at GPA 0 covering the guest's RAM ranges (``ram`` mask; the PCI hole is
not RAM and never mapped).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from snpsim.guest.psc import PscRequest
from snpsim.host import HostKernel
from snpsim.hw.types import (
    PAGE_SHIFT,
    PAGES_PER_2M,
    NestedPageFault,
    PageSize,
    RmpStatus,
    VmmCommunicationException,
)
from snpsim.kvm.attributes import MemoryAttributes
from snpsim.kvm.gmem import GuestMemfd
from snpsim.kvm.npt import UNMAPPED, NestedPageTable
from snpsim.kvm.sev import MapGpaRange, coalesce_psc, gmem_invalidate, gmem_prepare
from snpsim.metrics import Counters
from snpsim.policy import Policy
from snpsim.segments import SCALAR_MAX, run_starts
from snpsim.vmm.backing import VmmMemory

#: Vectorised re-checks of a guest access's remaining pages before the rest goes page by page.
_MAX_RECHECKS = 8

IntArray = npt.NDArray[np.int64]


class MemoryFaultExit(Exception):
    """``KVM_EXIT_MEMORY_FAULT``: the guest accessed ``[gfn, gfn+npages)`` as ``private`` against its attribute."""

    def __init__(self, gfn: int, npages: int, private: bool) -> None:
        super().__init__(f"memory fault gfn {gfn:#x} +{npages} private={private}")
        self.gfn, self.npages, self.private = gfn, npages, private


class KvmVm:
    """KVM's state of one SNP VM (ASID ``asid``) over gfns ``[0, ram.size)``."""

    def __init__(
        self,
        host: HostKernel,
        policy: Policy,
        ram: npt.NDArray[np.bool_],
        shared: VmmMemory,
        *,
        asid: int,
        counters: Counters,
    ) -> None:
        self.host = host
        self.policy = policy
        self.ram = ram
        self.npages = int(ram.size)
        self.asid = asid
        self.counters = counters
        self.attrs = MemoryAttributes(self.npages)
        self.npt = NestedPageTable(self.npages, host.nframes)
        self.shared = shared
        self.gmem: GuestMemfd | None = None
        if policy.private_backing == "gmem":
            self.gmem = GuestMemfd(
                host, self.npages, policy.private_page_bytes >> PAGE_SHIFT, invalidate=self._invalidate
            )

    # ------------------------------------------------------------------ backing lookups
    def _private_pfns(self, gfn: int, npages: int) -> IntArray | None:
        """Fault in the private backing: guest_memfd folios, or (pre-UPM) the VMM's own pages."""
        if self.gmem is not None:
            return self.gmem.get_pfns(gfn, npages)
        return self.shared.get_pfns(gfn, npages)

    def _invalidate(self, frames: IntArray) -> None:
        gmem_invalidate(self.host, frames)

    # ------------------------------------------------------------------ attributes
    def set_memory_attributes(self, gfn: int, npages: int, private: bool) -> int:
        """``KVM_SET_MEMORY_ATTRIBUTES``; zaps the SPTEs of the old attribute first. Returns gfns changed."""
        if not np.count_nonzero(self.attrs.private[gfn : gfn + npages] != private):
            return 0
        self.npt.zap(gfn, npages, only_private=not private)
        return self.attrs.set(gfn, npages, private)

    # ------------------------------------------------------------------ faults
    def _max_level(self, gfn: int, private: bool, cap: PageSize) -> PageSize:
        for level in (PageSize.SIZE_1G, PageSize.SIZE_2M):
            if level > cap:
                continue
            n = level.npages
            lo = gfn // n * n
            if self.attrs.uniform_value(gfn, level) is private and self.ram[lo : lo + n].all():
                return level
        return PageSize.SIZE_4K

    def _fault_in(self, gfn: int, npages: int, private: bool) -> bool:
        """Map every unmapped (or wrongly mapped) gfn of the range; False if the host ran out of memory."""
        lv = self.npt.level[gfn : gfn + npages]
        need = (lv == UNMAPPED) | (self.npt.private[gfn : gfn + npages] != private)
        if not need.any():
            return True
        pfns = self._pfns_of(gfn, npages, private)
        if pfns is None:
            return False
        if private:
            self._prepare(gfn, npages)
        if self._only_4k(private):
            # Every gfn maps at 4K: one #NPF each, installed in bulk.
            self.counters.npf_count += self.npt.map_4k_where(gfn, need, pfns, private)
            return True
        if private and npages > SCALAR_MAX and self._fault_in_huge_folios(gfn, npages, need, pfns):
            return True
        g = gfn
        end = gfn + npages
        while g < end:
            if not need[g - gfn]:
                rest = np.flatnonzero(need[g - gfn :])
                if not rest.size:
                    break
                g += int(rest[0])
            cap = self._private_cap(g) if private else self.shared.host_level(g)
            level = self._max_level(g, private, cap)
            n = level.npages
            lo = g // n * n
            if level == PageSize.SIZE_4K:
                # 4K mappings for the run of needing gfns up to the next 2M boundary: one #NPF each
                window = need[g - gfn : min(end, (g // PAGES_PER_2M + 1) * PAGES_PER_2M) - gfn]
                stop = g + (int(np.argmin(window)) if not window.all() else int(window.size))
                self._map_4k(g, stop, pfns[g - gfn : stop - gfn], private)
                g = stop
                continue
            mapped = self._pfns_of(lo, n, private)
            if mapped is None:
                return False
            self.npt.map(lo, level, mapped, private)
            self.counters.npf_count += 1
            g = lo + n
        return True

    def _fault_in_huge_folios(self, gfn: int, npages: int, need: npt.NDArray[np.bool_], pfns: IntArray) -> bool:
        """The fault loop below for a private range on 2M/1G folios, vectorised per 2M block (the RMP caps private
        mappings at 2M): a block with a needing gfn maps at 2M (one #NPF) if the frame of its first needing gfn
        has an assigned 2M RMP entry and the whole block is private RAM, else each needing gfn maps at 4K. Blocks
        do not interact unless a 1G mapping spans them (its zap reaches further): then False, for the loop."""
        n2 = PAGES_PER_2M
        b0, b1 = gfn // n2, (gfn + npages - 1) // n2 + 1
        if (self.npt.level[b0 * n2 : b1 * n2] == int(PageSize.SIZE_1G)).any():
            return False
        g = np.flatnonzero(need) + gfn
        starts = run_starts(g // n2)
        first = g[starts]  # the first needing gfn of each block that has one
        blocks = first // n2
        whole = (min(b1 * n2, self.npages) - b0 * n2) // n2  # blocks from b0 lying wholly inside the VM
        ok = np.zeros(b1 - b0, dtype=bool)
        span = slice(b0 * n2, (b0 + whole) * n2)
        ok[:whole] = (self.attrs.private[span].reshape(whole, n2) & self.ram[span].reshape(whole, n2)).all(axis=1)
        huge = ok[blocks - b0] & self.host.rmp.assigned_2m_mask(pfns[first - gfn])
        heads = blocks[huge] * n2
        self.npt.map_2m_many(heads, pfns[first[huge] - gfn] - (first[huge] - heads), True)
        self.counters.npf_count += int(heads.size)
        small = need.copy()
        huge_block = np.zeros(b1 - b0, dtype=bool)
        huge_block[blocks[huge] - b0] = True
        small &= ~np.repeat(huge_block, n2)[gfn - b0 * n2 : gfn - b0 * n2 + npages]
        self.counters.npf_count += self.npt.map_4k_where(gfn, small, pfns, True)
        return True

    def _only_4k(self, private: bool) -> bool:
        """No gfn can map above 4K: 4K folios / VMM pages (private) or 4K host pages (shared)."""
        if private:
            return self.gmem is None or self.gmem.folio_pages < PAGES_PER_2M
        return self.shared.unit == 1

    def _prepare(self, gfn: int, npages: int) -> None:
        """``kvm_gmem_get_pfn`` → ``kvm_gmem_prepare_folio``: prepare every folio the range touches, whole."""
        folio = self.gmem.folio_pages if self.gmem is not None else 1
        lo = gfn // folio * folio
        hi = min(-(-(gfn + npages) // folio) * folio, self.npages)
        pfns = self._private_pfns(lo, hi - lo)
        if pfns is None:
            raise MemoryError("host out of memory")
        ok = pfns >= 0
        gmem_prepare(self.host, np.arange(lo, hi, dtype=np.int64)[ok], pfns[ok], folio, self.asid)

    def _private_cap(self, gfn: int) -> PageSize:
        """``kvm_gmem_max_mapping_level`` ∧ ``sev_gmem_max_mapping_level``: folio order and RMP level."""
        if self.gmem is None or self.gmem.folio_pages < PAGES_PER_2M:
            return PageSize.SIZE_4K
        pfn = int(self.gmem.pfns(gfn, 1)[0])
        entry = self.host.rmp.rmpread(pfn << PAGE_SHIFT)
        return PageSize.SIZE_2M if entry.assigned and entry.page_size == PageSize.SIZE_2M else PageSize.SIZE_4K

    def _pfns_of(self, gfn: int, npages: int, private: bool) -> IntArray | None:
        return self._private_pfns(gfn, npages) if private else self.shared.get_pfns(gfn, npages)

    def _map_4k(self, lo: int, hi: int, pfns: IntArray, private: bool) -> None:
        self.npt.map_4k(lo, hi, pfns, private)
        self.counters.npf_count += hi - lo

    # ------------------------------------------------------------------ guest accesses
    def guest_access(self, gfn: int, npages: int, private: bool, write: bool = True) -> int:
        """The guest touches the range; returns #VCs raised. Raises :class:`MemoryFaultExit` on a mismatch."""
        attrs = self.attrs.private[gfn : gfn + npages]
        bad = np.flatnonzero(attrs != private)
        if bad.size:
            raise MemoryFaultExit(gfn + int(bad[0]), npages - int(bad[0]), private)
        if not self._fault_in(gfn, npages, private):
            raise MemoryError("host out of memory")
        vcs = 0
        start = gfn
        end = gfn + npages
        # Pages are checked in order. Vectorised: the pages that pass the hardware check need nothing else; the
        # first that does not is handled (which may zap or remap later pages), then the rest is checked again.
        # Few pages, or many failures, go page by page.
        for _ in range(_MAX_RECHECKS if npages > SCALAR_MAX else 0):
            lv = self.npt.level[start:end]
            gfns = np.arange(start, end, dtype=np.int64)
            ok = self.host.rmp.guest_access_ok(
                self.npt.pfn[start:end], gfns, asid=self.asid, npt_huge=lv > 0, write=write, encrypted=private
            )
            bad = np.flatnonzero(~ok | (lv == UNMAPPED))
            if not bad.size:
                return vcs
            g = start + int(bad[0])
            vcs += self._checked_access(g, private, write)
            start = g + 1
        for g in range(start, end):
            vcs += self._checked_access(g, private, write)
        return vcs

    def _checked_access(self, gfn: int, private: bool, write: bool) -> int:
        """Run the hardware RMP check of one access, handling #NPFs as KVM does; returns #VCs raised."""
        for _ in range(4):
            if self.npt.level[gfn] == UNMAPPED and not self._fault_in(gfn, 1, private):
                raise MemoryError("host out of memory")  # zapped by an earlier page's RMP #NPF: fault it in again
            level = PageSize(int(self.npt.level[gfn]))
            pfn = self.npt.pfn[gfn]
            try:
                self.host.rmp.check_guest_access(
                    pfn << PAGE_SHIFT,
                    asid=self.asid,
                    gpa=gfn << PAGE_SHIFT,
                    npt_size=level,
                    write=write,
                    encrypted=private,
                )
                return 0
            except VmmCommunicationException:
                self.counters.guest_vc_count += 1
                # The guest sees #VC PAGE_NOT_VALIDATED: a Linux guest panics. Modelled: it re-validates the page
                # at the size of its RMP entry (a 4K PVALIDATE on a 2M entry would itself take an RMP #NPF).
                entry = self.host.rmp.rmpread(pfn << PAGE_SHIFT)
                if entry.page_size == PageSize.SIZE_2M:
                    g2, p2 = gfn // PAGES_PER_2M * PAGES_PER_2M, pfn // PAGES_PER_2M * PAGES_PER_2M
                    self._pvalidate_one(g2, p2, PageSize.SIZE_2M, True)
                else:
                    self._pvalidate_one(gfn, pfn, PageSize.SIZE_4K, True)
                return 1
            except NestedPageFault:
                self.counters.npf_count += 1
                self._handle_rmp_npf(gfn, pfn)
                if not self._fault_in(gfn, 1, private):
                    raise MemoryError("host out of memory") from None
        raise RuntimeError(f"access to gfn {gfn:#x} keeps faulting")  # pragma: no cover - model bug

    def _handle_rmp_npf(self, gfn: int, pfn: int) -> None:
        """``sev_handle_rmp_fault``: PSMASH a 2M entry and zap; an unassigned private page is re-prepared."""
        entry = self.host.rmp.rmpread(pfn << PAGE_SHIFT)
        if entry.assigned and entry.page_size == PageSize.SIZE_2M:
            head = pfn // PAGES_PER_2M * PAGES_PER_2M
            self.host.busy_ns += self.host.costs.psmash_ns
            self.host.rmp.psmash(head << PAGE_SHIFT)
            self.npt.zap(gfn // PAGES_PER_2M * PAGES_PER_2M, PAGES_PER_2M)
        else:
            self.npt.zap(gfn, 1)

    # ------------------------------------------------------------------ guest instructions
    def pvalidate(self, gfn: int, npages: int, size: PageSize, validate: bool) -> int:
        """PVALIDATE over ``[gfn, gfn+npages)`` in ``size`` steps (the guest's ``pvalidate_pages``).

        2M requests on 4K RMP entries fall back to 4K (FAIL_SIZEMISMATCH, as Linux); a 4K request on a 2M entry
        takes an RMP #NPF with SIZEM, which KVM resolves with PSMASH, then the guest retries. Returns the pages
        whose Validated bit changed.
        """
        shared = np.flatnonzero(~self.attrs.private[gfn : gfn + npages])
        if shared.size:  # PVALIDATE is a private access: against a shared attribute it is a memory fault exit
            raise MemoryFaultExit(gfn + int(shared[0]), npages - int(shared[0]), True)
        if not self._fault_in(gfn, npages, True):
            raise MemoryError("host out of memory")
        if size != PageSize.SIZE_2M:
            return self._pvalidate_4k(np.arange(gfn, gfn + npages, dtype=np.int64), validate)
        changed = 0
        fallback: list[int] = []
        for g in range(gfn, gfn + npages, PAGES_PER_2M):
            pfn = self.npt.pfn[g]
            status, cf = self._pvalidate_one(g, pfn, PageSize.SIZE_2M, validate)
            if status == RmpStatus.FAIL_SIZEMISMATCH:
                fallback.append(g)
            elif status == RmpStatus.SUCCESS and not cf:
                changed += PAGES_PER_2M
        if fallback:
            # Linux retries each 2M step as 512 4K PVALIDATEs; the steps touch disjoint pages, so all the
            # retries can run after the 2M attempts, together.
            heads = np.array(fallback, dtype=np.int64)
            changed += self._pvalidate_4k((heads[:, None] + np.arange(PAGES_PER_2M)).ravel(), validate)
        return changed

    def _pvalidate_4k(self, gfns: IntArray, validate: bool) -> int:
        """4K PVALIDATEs of mapped private ``gfns`` (ascending); #NPFs are handled and the page retried."""
        changed = 0
        npages = int(gfns.size)
        pfns = self.npt.pfn[gfns]
        status, cf = self.host.rmp.pvalidate_pfns(pfns, gfns, asid=self.asid, validate=validate)
        self.host.busy_ns += npages * self.host.costs.pvalidate_4k_ns
        changed += int(np.count_nonzero((status == RmpStatus.SUCCESS) & ~cf))
        for k in np.flatnonzero(status < 0).tolist():  # #NPF: handled by KVM, then retried
            g = int(gfns[k])
            self.counters.npf_count += 1
            self._handle_rmp_npf(g, int(pfns[k]))
            self._fault_in(g, 1, True)
            st, c = self._pvalidate_one(g, self.npt.pfn[g], PageSize.SIZE_4K, validate)
            changed += int(st == RmpStatus.SUCCESS and not c)
        return changed

    def _pvalidate_one(self, gfn: int, pfn: int, size: PageSize, validate: bool) -> tuple[RmpStatus, bool]:
        for _ in range(4):
            self.host.busy_ns += (
                self.host.costs.pvalidate_2m_ns if size == PageSize.SIZE_2M else self.host.costs.pvalidate_4k_ns
            )
            try:
                return self.host.rmp.pvalidate(
                    pfn << PAGE_SHIFT, asid=self.asid, gpa=gfn << PAGE_SHIFT, page_size=size, validate=validate
                )
            except NestedPageFault:
                self.counters.npf_count += 1
                self._handle_rmp_npf(gfn, pfn)
                self._fault_in(gfn // size.npages * size.npages, size.npages, True)
                pfn = self.npt.pfn[gfn]
        raise RuntimeError(f"PVALIDATE at gfn {gfn:#x} keeps faulting")  # pragma: no cover - model bug

    # ------------------------------------------------------------------ Page State Change
    def handle_psc(self, request: PscRequest) -> list[MapGpaRange]:
        """A PSC VMGEXIT (MSR protocol or GHCB NAE): the KVM_HC_MAP_GPA_RANGE exits it produces."""
        self.counters.psc_request_count += 1
        self.host.busy_ns += self.host.costs.vmexit_ns
        return coalesce_psc(request)

    # ------------------------------------------------------------------ accounting
    def npt_bytes(self) -> tuple[int, int, int]:
        return (
            self.npt.bytes_at(PageSize.SIZE_4K),
            self.npt.bytes_at(PageSize.SIZE_2M),
            self.npt.bytes_at(PageSize.SIZE_1G),
        )

    def destroy(self) -> None:
        """The VM goes away: guest_memfd folios are released (the release point), the NPT is torn down."""
        self.npt.zap(0, self.npages)
        if self.gmem is not None:
            self.gmem.release_all()
