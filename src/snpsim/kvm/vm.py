"""One SNP VM inside KVM: its ioctls, memslot, memory attributes, guest_memfd, nested page table and MMU faults.

Models the VM side of KVM (``shared/reference/linux-snp-host.md`` §4-§5):

- the ioctls the VMM drives it with: ``KVM_CREATE_GUEST_MEMFD`` (:meth:`KvmVm.create_guest_memfd`: the VMM gets
  the file and punches holes in it itself), ``KVM_SET_USER_MEMORY_REGION2`` (:meth:`~KvmVm.set_user_memory_region`:
  one memslot at GPA 0 covering the guest's RAM, backed by the VMM's mapping and, with UPM, the guest_memfd),
  ``KVM_SET_MEMORY_ATTRIBUTES`` (zaps the SPTEs of the old attribute in the range,
  ``kvm_arch_pre_set_memory_attributes``; one xarray store per page), ``KVM_PRE_FAULT_MEMORY``
  (:meth:`~KvmVm.pre_fault_memory`: map a range as a fault would, without exits) and ``KVM_CREATE_VCPU``;
- ``kvm_mmu_page_fault`` → ``kvm_tdp_mmu_map``: a gfn is faulted in from guest_memfd (private:
  ``kvm_gmem_get_pfn`` + ``sev_gmem_prepare``) or from the VMM's memory (shared: ``hva_to_pfn``) and mapped at
  ``kvm_mmu_max_mapping_level``: the largest level whose aligned range is inside the memslot, has uniform
  attributes (``KVM_LPAGE_MIXED_FLAG``), and is no larger than the folio / host mapping and, for private memory,
  the RMP entry (``sev_gmem_max_mapping_level``). Each mapping installed by a fault is one #NPF (``npf_count``).
- what the CPU reports back from guest mode (:mod:`snpsim.host.svm`): an RMP #NPF on a 2M RMP entry is fixed by
  ``sev_handle_rmp_fault`` (PSMASH + zap); on an unassigned page (the host took it back) the next fault prepares
  it again, unvalidated, so the guest's access raises #VC 0x404;
- pre-UPM SNP (``private_backing = vmm``, SNP v5-v8): no guest_memfd and no userspace exit on a conversion: KVM's
  own Page State Change handler (``__snp_handle_page_state_change``) builds the NPT entry of each page
  (``snp_check_and_build_npt``) and RMPUPDATEs the VMM's page in place; an access whose kind disagrees with the
  page's state is converted the same way by the RMP #NPF handler (``snp_handle_rmp_page_fault``). The model keeps
  the per-gfn PRIVATE array for these VMs too, as the state KVM derives from the RMP.

The vCPU side (``KVM_RUN``, the guest's instructions, the exits) is :mod:`snpsim.kvm.vcpu`. KVM reaches the RMP only
through the host's SNP functions (:class:`snpsim.host.HostKernel`: ``rmp_make_private``, ``psmash``,
``snp_lookup_rmpentry``; ``host.svm`` for guest mode), never :mod:`snpsim.hw`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from snpsim.arch import (
    PAGES_PER_2M,
    NestedPageFault,
    PageSize,
    RmpStatus,
    VmmCommunicationException,
)
from snpsim.host import HostKernel, Owner
from snpsim.host.directmap import NOT_PRESENT
from snpsim.host.mm import UserMemory
from snpsim.kvm.attributes import MemoryAttributes
from snpsim.kvm.gmem import GuestMemfd
from snpsim.kvm.npt import UNMAPPED, NestedPageTable
from snpsim.kvm.sev import gmem_invalidate, gmem_prepare
from snpsim.metrics import Counters
from snpsim.policy import Policy
from snpsim.segments import bool_runs, run_starts

#: ``INITIAL_VMSA_GPA`` (arch/x86/kvm/svm/sev.c): the GPA KVM binds every VMSA to at launch ("0xFFFFFFFFF000")
INITIAL_VMSA_GPA = 0xFFFFFFFFF000

IntArray = npt.NDArray[np.int64]


class MemoryFault(Exception):
    """The guest accessed ``gfn`` as ``private`` against its attribute: ``KVM_EXIT_MEMORY_FAULT`` (UPM). ``done``
    pages of the instruction before it were executed, ``changed`` of them changed their Validated bit."""

    def __init__(self, gfn: int, private: bool, done: int = 0, changed: int = 0) -> None:
        super().__init__(f"memory fault gfn {gfn:#x} private={private}")
        self.gfn, self.private, self.done, self.changed = gfn, private, done, changed


class KvmVm:
    """KVM's state of one SNP VM (ASID ``asid``) over gfns ``[0, npages)``."""

    def __init__(self, host: HostKernel, policy: Policy, npages: int, *, asid: int, counters: Counters) -> None:
        self.host = host
        self.policy = policy
        self.npages = int(npages)
        self.asid = asid
        self.counters = counters
        #: pre-UPM KVM (SNP v5): conversions are done in the kernel, on the VMM's own pages
        self.in_kernel_psc = policy.private_backing == "vmm"
        #: INPLACE v8: guest_memfd holds the shared pages too and converts them in place
        self.in_place = policy.gmem_conversion == "in-place" and not self.in_kernel_psc
        self.attrs = MemoryAttributes(self.npages)
        self.npt = NestedPageTable(self.npages, host.nframes)
        self.ram: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self.shared: UserMemory | None = None
        self.gmem: GuestMemfd | None = None
        #: host-kernel SNP pages of this VM (``struct kvm_sev_info``): the SNP context (``snp_context``), the
        #: guest-request page (``guest_req_buf``, an ordinary kernel page) and response page (``guest_resp_buf``,
        #: a firmware page); set by :meth:`snp_launch_start`
        self.snp_context: int | None = None
        self.guest_req_buf: int | None = None
        self.guest_resp_buf: int | None = None
        #: each vCPU's VMSA page (``svm->sev_es.vmsa``, :meth:`sev_es_vcpu_create`), by vCPU index
        self.vmsas: dict[int, int] = {}
        #: the firmware's RAM block outside guest RAM (QEMU's ``pc.bios``, its own guest_memfd): folio -> pfn
        self.bios_folios: dict[int, int] = {}
        #: pages populated by the launch (``kvm_gmem_populate``), and whether ``KVM_SEV_SNP_LAUNCH_FINISH`` ran
        self.launch_pages = 0
        self.launched = False

    # ------------------------------------------------------------------ ioctls (the VMM calls these)
    def create_guest_memfd(self, folio_pages: int) -> GuestMemfd:
        """``KVM_CREATE_GUEST_MEMFD``: a guest_memfd of the VM's size with folios of ``folio_pages``."""
        p = self.policy
        self.gmem = GuestMemfd(
            self.host,
            self.npages,
            folio_pages,
            invalidate=self._invalidate,
            allocator=p.gmem_allocator,
            split=p.gmem_folio_split,
            private=self.attrs.private if self.in_place else None,
        )
        return self.gmem

    def gmem_set_memory_attributes(self, gfn: int, npages: int, private: bool) -> int | None:
        """The guest_memfd conversion ioctl of INPLACE v8 (``KVM_SET_MEMORY_ATTRIBUTES2`` on the guest_memfd):
        refused as a whole with ``-EAGAIN`` and ``error_offset`` (returned: pages from ``gfn``) while the host
        holds extra references to a page of the range (the model's reading: the refcount check precedes any
        change); else the SPTEs of the old attribute are zapped, the shareability updated, a to-shared page's
        RMP entry made shared in place (``kvm_arch_gmem_invalidate`` on its frame, no free) and the huge folios
        restructured (``kvm_gmem_restructure_folios_in_range``). Returns None on success."""
        gm = self.gmem
        assert gm is not None
        c = self.host.costs
        busy = gm.busy_offset(gfn, npages)
        if busy is not None:
            self.host.charge("ioctl", c.ioctl_ns)
            gm.eagain_count += 1
            return busy
        self.set_memory_attributes(gfn, npages, private)
        if not private:
            frames = gm.pfns(gfn, npages)
            self._invalidate(frames[frames >= 0])
        gm.restructure_folios_in_range(gfn, npages)
        return None

    def set_user_memory_region(self, ram: npt.NDArray[np.bool_], shared: UserMemory) -> None:
        """``KVM_SET_USER_MEMORY_REGION2``: the memslot over the guest's RAM (``ram`` marks it; the PCI hole is not
        RAM and never mapped), backed by the VMM's mapping ``shared`` and this VM's guest_memfd if it has one."""
        self.ram = ram
        self.shared = shared

    def set_memory_attributes(self, gfn: int, npages: int, private: bool) -> int:
        """``KVM_SET_MEMORY_ATTRIBUTES``: zap the SPTEs of the old attribute first (``kvm_vm_set_mem_attributes``
        stores each page in the attributes xarray). Returns the gfns changed."""
        c = self.host.costs
        self.host.charge("ioctl", c.ioctl_ns)
        self.host.charge("set_attributes", npages * c.set_attributes_page_ns, npages)
        if not np.count_nonzero(self.attrs.private[gfn : gfn + npages] != private):
            return 0
        self.npt.zap(gfn, npages, only_private=not private)
        return self.attrs.set(gfn, npages, private)

    def pre_fault_memory(self, gfn: int, npages: int) -> None:
        """``KVM_PRE_FAULT_MEMORY`` (``kvm_vcpu_pre_fault_memory`` → ``kvm_tdp_map_page``): map every gfn of the
        range as a guest fault of its current attribute would, without the #NPF exits."""
        self.host.charge("ioctl", self.host.costs.ioctl_ns)
        private = self.attrs.private[gfn : gfn + npages]
        for start, n, value in bool_runs(private):
            if not self._fault_in(gfn + start, n, value, exits=False):
                raise MemoryError("host out of memory")

    # ------------------------------------------------------------------ backing lookups
    def _private_pfns(self, gfn: int, npages: int) -> IntArray | None:
        """Fault in the private backing: guest_memfd folios, or (pre-UPM) the VMM's own pages."""
        if self.gmem is not None:
            return self.gmem.get_pfns(gfn, npages)
        assert self.shared is not None
        return self.shared.get_pfns(gfn, npages)

    def _invalidate(self, frames: IntArray) -> None:
        """``kvm_arch_gmem_invalidate`` → ``sev_gmem_invalidate`` over frames leaving the guest."""
        gmem_invalidate(self.host, frames)

    def _pfns_of(self, gfn: int, npages: int, private: bool) -> IntArray | None:
        if private or self.in_place:
            return self._private_pfns(gfn, npages)
        assert self.shared is not None
        return self.shared.get_pfns(gfn, npages)

    # ------------------------------------------------------------------ MMU faults
    def _max_level(self, gfn: int, private: bool, cap: PageSize) -> PageSize:
        for level in (PageSize.SIZE_1G, PageSize.SIZE_2M):
            if level > cap:
                continue
            n = level.npages
            lo = gfn // n * n
            if self.attrs.uniform_value(gfn, level) is private and self.ram[lo : lo + n].all():
                return level
        return PageSize.SIZE_4K

    def _npf(self, count: int) -> None:
        """``count`` #NPF exits handled by KVM."""
        self.counters.npf_count += count
        self.host.charge("npf", count * self.host.costs.npf_ns, count)

    def _fault_in(self, gfn: int, npages: int, private: bool, *, exits: bool = True) -> bool:
        """Map every unmapped (or wrongly mapped) gfn of the range; False if the host ran out of memory.

        ``exits``: each mapping installed is a #NPF exit (a guest fault), or none (``KVM_PRE_FAULT_MEMORY``)."""
        lv = self.npt.level[gfn : gfn + npages]
        need = (lv == UNMAPPED) | (self.npt.private[gfn : gfn + npages] != private)
        if not need.any():
            return True
        pfns = self._pfns_of(gfn, npages, private)
        if pfns is None:
            return False
        if private:
            self._prepare(gfn, npages)
        faults = self._map_needed(gfn, npages, need, pfns, private)
        if faults is None:
            return False
        if exits:
            self._npf(faults)
        return True

    def _map_needed(
        self, gfn: int, npages: int, need: npt.NDArray[np.bool_], pfns: IntArray, private: bool
    ) -> int | None:
        """``kvm_tdp_mmu_map`` for every gfn of the range marked in ``need`` (``pfns``: the backing of each gfn), in
        order, each at :meth:`_max_level`; the mappings installed (one fault each), or None if the host ran out of
        memory."""
        if self._only_4k(private):
            # Every gfn maps at 4K: one fault each, installed in bulk.
            return self.npt.map_4k_where(gfn, need, pfns, private)
        faults = 0
        g = gfn
        end = gfn + npages
        while g < end:
            if not need[g - gfn]:
                rest = np.flatnonzero(need[g - gfn :])
                if not rest.size:
                    break
                g += int(rest[0])
            assert self.shared is not None
            cap = self._private_cap(g) if private else self._shared_cap(g)
            level = self._max_level(g, private, cap)
            n = level.npages
            lo = g // n * n
            if level == PageSize.SIZE_4K:
                # 4K mappings for the run of needing gfns up to the next 2M boundary: one fault each
                window = need[g - gfn : min(end, (g // PAGES_PER_2M + 1) * PAGES_PER_2M) - gfn]
                stop = g + (int(np.argmin(window)) if not window.all() else int(window.size))
                self.npt.map_4k(g, stop, pfns[g - gfn : stop - gfn], private)
                faults += stop - g
                g = stop
                continue
            mapped = self._pfns_of(lo, n, private)
            if mapped is None:
                return None
            self.npt.map(lo, level, mapped, private)
            faults += 1
            g = lo + n
        return faults

    def _only_4k(self, private: bool) -> bool:
        """No gfn can map above 4K: 4K folios / VMM pages (private) or 4K host pages (shared)."""
        if private:
            return self.gmem is None or self.gmem.folio_pages < PAGES_PER_2M
        assert self.shared is not None
        return self.in_place or self.shared.unit == 1

    def _cap_2m(self, gfn: int, npages: int) -> bool:
        """No private mapping of the range can be above 2M (no unsplit 1G folio in it)."""
        return self.gmem is not None and not self.gmem.may_map_1g(gfn, npages)

    def _shared_cap(self, gfn: int) -> PageSize:
        """The host mapping level of a shared page: in place, guest_memfd's shared folios are 4K."""
        assert self.shared is not None
        return PageSize.SIZE_4K if self.in_place else self.shared.host_level(gfn)

    def _prepare(self, gfn: int, npages: int) -> None:
        """``kvm_gmem_get_pfn`` → ``kvm_gmem_prepare_folio``: prepare every folio the range touches, whole.
        Pre-UPM, a private fault on a page that is not assigned (the host took it back) assigns it again,
        unvalidated: ``snp_handle_rmp_page_fault`` "create[s] a new private RMP entry" (SNP v5)."""
        folio = self.gmem.folio_pages if self.gmem is not None else 1
        # a folio above 2M is prepared 2M at a time, as far as the fault reaches (its RMP entries are at most 2M;
        # a 1G mapping prepares the whole folio first, in _private_cap)
        unit = min(folio, PAGES_PER_2M)
        lo = gfn // unit * unit
        hi = min(-(-(gfn + npages) // unit) * unit, self.npages)
        pfns = self._private_pfns(lo, hi - lo)
        if pfns is None:
            raise MemoryError("host out of memory")
        ok = pfns >= 0
        large = None
        if self.gmem is not None and folio >= PAGES_PER_2M:
            # a 2M RMP entry only over a huge (unsplit) folio's block, and in place only if it is all private
            nb = -(-(hi - lo) // PAGES_PER_2M)
            blk = self.gmem.huge_blocks(np.arange(lo // PAGES_PER_2M, lo // PAGES_PER_2M + nb, dtype=np.int64))
            if self.in_place:
                pad = np.zeros(nb * PAGES_PER_2M, dtype=bool)
                pad[: hi - lo] = self.attrs.private[lo:hi]
                blk &= pad.reshape(nb, PAGES_PER_2M).all(axis=1)
            large = np.repeat(blk, PAGES_PER_2M)[: hi - lo][ok]
        if self.in_place:
            ok &= self.attrs.private[lo:hi]  # shared pages of the file stay hypervisor-owned
            if large is not None:
                large = large[self.attrs.private[lo:hi][pfns >= 0]]
        gfns = np.arange(lo, hi, dtype=np.int64)[ok]
        gmem_prepare(self.host, gfns, pfns[ok], folio, self.asid, large=large)
        if self.gmem is not None:
            self.gmem.zap_direct_map(pfns[ok])  # NODM: kvm_gmem_get_pfn zaps after kvm_gmem_prepare_folio

    def _private_cap(self, gfn: int) -> PageSize:
        """``kvm_gmem_max_mapping_level`` ∧ ``sev_gmem_max_mapping_level``: folio order and RMP level."""
        gm = self.gmem
        if gm is None or gm.folio_pages < PAGES_PER_2M:
            return PageSize.SIZE_4K
        folio = gm.mapping_level(gfn)
        if folio == PageSize.SIZE_4K:
            return folio
        assigned, level = self.host.snp_lookup_rmpentry(int(gm.pfns(gfn, 1)[0]))
        if not (assigned and level == PageSize.SIZE_2M):
            return PageSize.SIZE_4K
        if folio == PageSize.SIZE_1G:
            # a 1G NPT mapping over 512 2M RMP entries: the hardware treats 1G accesses as 2M (amd-snp-arch.md §7:
            # 'NPT says 2MB/1GB => RMP.Page_Size=1')
            n1g = PageSize.SIZE_1G.npages
            lo = gfn // n1g * n1g
            heads = gm.pfns(lo, n1g)[::PAGES_PER_2M]
            if self.attrs.uniform_value(lo, PageSize.SIZE_1G) is True and not self.host.rmp_assigned_2m(heads).all():
                self._prepare(lo, n1g)  # the whole private, unsplit folio, for one 1G mapping
            if heads.size == PageSize.SIZE_1G.npages // PAGES_PER_2M and self.host.rmp_assigned_2m(heads).all():
                return PageSize.SIZE_1G
        return PageSize.SIZE_2M

    # ------------------------------------------------------------------ pre-UPM conversions in KVM
    def snp_page_state_change(self, gfn: int, npages: int, to_private: bool) -> None:
        """SNP v5 ``__snp_handle_page_state_change`` over ``[gfn, gfn+npages)`` (pre-UPM): build the NPT entry of
        each page from the VMM's memory (``snp_check_and_build_npt``: no exit), then RMPUPDATE it in place
        (``rmp_make_private``, or ``snp_make_page_shared`` → ``rmp_make_shared``)."""
        assert self.shared is not None
        pfns = self.shared.get_pfns(gfn, npages)
        if pfns is None:
            raise MemoryError("host out of memory")
        self.npt.zap(gfn, npages)
        self.attrs.set(gfn, npages, to_private)
        if not self._fault_in(gfn, npages, to_private, exits=False):
            raise MemoryError("host out of memory")
        gfns = np.arange(gfn, gfn + npages, dtype=np.int64)
        if to_private:
            gmem_prepare(self.host, gfns, pfns, 1, self.asid)
        else:
            self._invalidate(pfns)

    # ------------------------------------------------------------------ guest accesses (from KVM_RUN)
    def guest_access(self, gfn: int, npages: int, private: bool, write: bool = True) -> int | None:
        """The guest touches the range in order. Returns the gfn whose access raised #VC 0x404 (the pages before
        it were accessed), or None. Raises :class:`MemoryFault` at the first page whose attribute disagrees
        (UPM); pre-UPM KVM converts such a page itself and goes on."""
        mismatch = self._check_kind(gfn, npages, private)
        if mismatch is not None:  # the pages before it first, then the exit
            vc = self.guest_access(gfn, mismatch - gfn, private, write) if mismatch > gfn else None
            if vc is not None:
                return vc
            raise MemoryFault(mismatch, private, mismatch - gfn)
        if not self._fault_in(gfn, npages, private):
            raise MemoryError("host out of memory")
        return self._access_pages(gfn, gfn + npages, private, write)

    def _access_pages(self, start: int, end: int, private: bool, write: bool) -> int | None:
        """The hardware check of each access of ``[start, end)`` in order (the range is faulted in); the gfn whose
        access raised #VC, or None."""
        for g in range(start, end):
            if self._checked_access(g, private, write):
                return g
        return None

    def _check_kind(self, gfn: int, npages: int, private: bool) -> int | None:
        """The first gfn accessed against its attribute, for a ``KVM_EXIT_MEMORY_FAULT`` of one page (UPM:
        ``PAGE_SIZE``), or None. Pre-UPM KVM converts such pages itself in the RMP #NPF handler
        (``snp_handle_rmp_page_fault``) and returns None."""
        while True:
            bad = np.flatnonzero(self.attrs.private[gfn : gfn + npages] != private)
            if not bad.size:
                return None
            g = gfn + int(bad[0])
            if not self.in_kernel_psc:
                return g
            # one RMP #NPF per page, each converting its page: the run of such pages at once (same result)
            good = np.flatnonzero(self.attrs.private[g : gfn + npages] == private)
            n = int(good[0]) if good.size else gfn + npages - g
            self._npf(n)
            self.snp_page_state_change(g, n, private)

    def _checked_access(self, gfn: int, private: bool, write: bool) -> bool:
        """Run the hardware check of one access, handling #NPFs as KVM does; True if it raised #VC."""
        for _ in range(4):
            if self.npt.level[gfn] == UNMAPPED and not self._fault_in(gfn, 1, private):
                raise MemoryError("host out of memory")  # zapped by an earlier page's RMP #NPF: fault it in again
            level = PageSize(int(self.npt.level[gfn]))
            pfn = self.npt.pfn[gfn]
            try:
                self.host.svm.access(pfn, gfn, asid=self.asid, npt_size=level, write=write, private=private)
                return False
            except VmmCommunicationException:
                self.counters.guest_vc_count += 1
                return True
            except NestedPageFault:
                self._npf(1)
                self._handle_rmp_npf(gfn, pfn)
                if not self._fault_in(gfn, 1, private):
                    raise MemoryError("host out of memory") from None
        raise RuntimeError(f"access to gfn {gfn:#x} keeps faulting")  # pragma: no cover - model bug

    def _handle_rmp_npf(self, gfn: int, pfn: int) -> None:
        """``sev_handle_rmp_fault``: PSMASH a 2M entry and zap; an unassigned private page is re-prepared."""
        assigned, level = self.host.snp_lookup_rmpentry(pfn)
        if assigned and level == PageSize.SIZE_2M:
            self.host.psmash(pfn)
            self.npt.zap(gfn // PAGES_PER_2M * PAGES_PER_2M, PAGES_PER_2M)
        else:
            self.npt.zap(gfn, 1)

    # ------------------------------------------------------------------ PVALIDATE (from KVM_RUN)
    def pvalidate(
        self, gfn: int, npages: int, size: PageSize, validate: bool, retry_4k: bool = False
    ) -> tuple[int, RmpStatus, int]:
        """The guest's PVALIDATEs over ``[gfn, gfn+npages)`` in ``size`` steps, in order: (pages done, status of
        the instruction that stopped the loop, pages whose Validated bit changed). PVALIDATE is a private
        access: a page with a shared attribute is a memory fault first. An RMP #NPF (a 4K PVALIDATE on a 2M
        entry: SIZEM) is resolved by KVM with PSMASH and the instruction re-executed; a 2M PVALIDATE on 4K
        entries stops with FAIL_SIZEMISMATCH, for the guest to retry at 4K (``retry_4k``: the guest's loop
        retries each such step as 512 4K PVALIDATEs, done after the 2M steps, together: the same outcome)."""
        mismatch = self._check_kind(gfn, npages, True)
        if mismatch is not None:  # the instructions before it first, then the exit
            step = size.npages
            head = (mismatch - gfn) // step * step
            done, status, changed = (
                self.pvalidate(gfn, head, size, validate, retry_4k) if head else (0, RmpStatus.SUCCESS, 0)
            )
            if status != RmpStatus.SUCCESS:
                return done, status, changed
            raise MemoryFault(mismatch, True, head, changed)
        if not self._fault_in(gfn, npages, True):
            raise MemoryError("host out of memory")
        if size != PageSize.SIZE_2M:
            return self._pvalidate_4k(gfn, npages, validate)
        changed = 0
        retry: list[int] = []
        for g in range(gfn, gfn + npages, PAGES_PER_2M):
            status, cf = self._pvalidate_one(g, PageSize.SIZE_2M, validate)
            if status == RmpStatus.FAIL_SIZEMISMATCH and retry_4k:
                retry.append(g)
                continue
            if status != RmpStatus.SUCCESS:
                return g - gfn, status, changed
            changed += 0 if cf else PAGES_PER_2M
        heads = np.asarray(retry, dtype=np.int64)
        for lo, n in zip(*_runs_of_blocks(heads), strict=True):  # contiguous retried blocks: one 4K loop each
            done, status, small = self._pvalidate_4k(lo, n, validate)
            changed += small
            if status != RmpStatus.SUCCESS:
                return lo - gfn + done, status, changed
        return npages, RmpStatus.SUCCESS, changed

    def _pvalidate_4k(self, gfn: int, npages: int, validate: bool) -> tuple[int, RmpStatus, int]:
        gfns = np.arange(gfn, gfn + npages, dtype=np.int64)
        pfns = self.npt.pfn[gfn : gfn + npages]
        status, cf = self.host.svm.pvalidate_4k_pfns(pfns, gfns, asid=self.asid, validate=validate)
        failed = np.flatnonzero(status > 0)
        stop = int(failed[0]) if failed.size else npages
        head = slice(0, stop)
        changed = int(np.count_nonzero((status[head] == RmpStatus.SUCCESS) & ~cf[head]))
        for k in np.flatnonzero(status[head] < 0).tolist():  # #NPF: handled by KVM, then re-executed
            g = gfn + k
            self._npf(1)
            self._handle_rmp_npf(g, int(pfns[k]))
            self._fault_in(g, 1, True)
            st, c = self._pvalidate_one(g, PageSize.SIZE_4K, validate)
            if st != RmpStatus.SUCCESS:
                return k, st, changed
            changed += 0 if c else 1
        if stop < npages:
            return stop, RmpStatus(int(status[stop])), changed
        return npages, RmpStatus.SUCCESS, changed

    def _pvalidate_one(self, gfn: int, size: PageSize, validate: bool) -> tuple[RmpStatus, bool]:
        for _ in range(4):
            try:
                return self.host.svm.pvalidate(
                    int(self.npt.pfn[gfn]), gfn, asid=self.asid, size=size, validate=validate
                )
            except NestedPageFault:
                self._npf(1)
                self._handle_rmp_npf(gfn, int(self.npt.pfn[gfn]))
                self._fault_in(gfn // size.npages * size.npages, size.npages, True)
        raise RuntimeError(f"PVALIDATE at gfn {gfn:#x} keeps faulting")  # pragma: no cover - model bug

    # ------------------------------------------------------------------ accounting
    # ------------------------------------------------------------------ SNP launch (arch/x86/kvm/svm/sev.c)
    def snp_launch_start(self) -> None:
        """``KVM_SEV_SNP_LAUNCH_START`` → ``snp_launch_start()``: ``snp_context_create()`` allocates the guest
        context as a firmware page ("context = snp_alloc_firmware_page(GFP_KERNEL_ACCOUNT)", then
        SEV_CMD_SNP_GCTX_CREATE), and ``snp_guest_req_init()`` the guest-request buffers: the request page an
        ordinary ``alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO)``, the response page
        ``snp_alloc_firmware_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO)``."""
        host = self.host
        self.host.charge("ioctl", host.costs.ioctl_ns)
        self.snp_context = host.snp_alloc_firmware_pages(0, "snp-context")
        self.guest_req_buf = host.alloc(0, Owner.KERNEL, path="arch/x86/kvm/svm/sev.c:snp_guest_req_init")
        self.guest_resp_buf = host.snp_alloc_firmware_pages(0, "guest-resp")
        if self.snp_context is None or self.guest_req_buf is None or self.guest_resp_buf is None:
            raise MemoryError("host out of memory")

    def sev_es_vcpu_create(self, index: int) -> int:
        """``sev_vcpu_create()``: the vCPU's VMSA, "vmsa_page = snp_safe_alloc_page()" (hypervisor-owned until the
        launch finishes)."""
        pfn = self.vmsas.get(index)
        if pfn is None:
            got = self.host.snp_safe_alloc_page()
            if got is None:
                raise MemoryError("host out of memory")
            pfn = self.vmsas[index] = got
        return pfn

    def snp_launch_update(self, gfn: int, npages: int, page_type: int, *, copy: bool) -> int:
        """``KVM_SEV_SNP_LAUNCH_UPDATE`` → ``snp_launch_update()`` → ``kvm_gmem_populate()`` (virt/kvm/
        guest_memfd.c: the range must be PRIVATE; each folio is taken from guest_memfd and handed to
        ``sev_gmem_post_populate()``). Per 4K page: the source copied in through the direct map (``copy``:
        ``copy_from_user(vaddr, src + i * PAGE_SIZE, PAGE_SIZE)`` for every type but ZERO), then
        ``rmp_make_private(pfn + i, gfn << PAGE_SHIFT, PG_LEVEL_4K, sev->asid, true)`` and SEV_CMD_SNP_LAUNCH_UPDATE
        (the page measured, Guest-Valid). Gfns outside guest RAM are the firmware's own RAM block (``pc.bios``).
        Pre-UPM (SNP v5 ``snp_launch_update``): the VMM's pinned pages, RMPUPDATEd in place. Returns the pages
        populated (``kvm_gmem_populate`` refuses an already-prepared page with -EEXIST: skipped)."""
        host = self.host
        host.charge("ioctl", host.costs.ioctl_ns)
        gfns = np.arange(gfn, gfn + npages, dtype=np.int64)
        in_ram = (gfns < self.npages) & self.ram[np.minimum(gfns, self.npages - 1)] if self.ram.size else gfns < 0
        pfns = np.full(npages, -1, dtype=np.int64)
        for start, n, ram in bool_runs(in_ram):
            got = self._launch_backing(gfn + start, n) if ram else self._bios_backing(gfns[start : start + n])
            if got is None:
                raise MemoryError("host out of memory")
            pfns[start : start + n] = got
        fresh = ~host.rmp_assigned(pfns)
        gfns, pfns = gfns[fresh], pfns[fresh]
        if not pfns.size:
            return 0
        if copy:
            # kmap_local_pfn() is the direct map on x86-64; a page an earlier update's no-split removal took out
            # of it (unmap-nosplit removes the whole folio) is written through a temporary mapping [I-model]
            mapped = host.directmap.levels_of(pfns) != NOT_PRESENT
            host.kernel_write_range(pfns[mapped], "arch/x86/kvm/svm/sev.c:sev_gmem_post_populate")
            unmapped = int(np.count_nonzero(~mapped))
            if unmapped:
                host.charge("page_clear", unmapped * host.costs.page_clear_ns, unmapped)
        host.rmp_make_private_pfns(pfns, gfns, self.asid, immutable=True)
        failed = host.snp_launch_update(pfns)
        if failed:
            raise RuntimeError(f"SNP_LAUNCH_UPDATE failed on {failed} pages of gfn {gfn:#x}")
        self.launch_pages += int(pfns.size)
        return int(pfns.size)

    def _launch_backing(self, gfn: int, npages: int) -> IntArray | None:
        if self.in_kernel_psc:
            self.attrs.set(gfn, npages, True)  # KVM derives the PRIVATE state from the RMP (module docstring)
        elif np.count_nonzero(~self.attrs.private[gfn : gfn + npages]):
            raise ValueError(f"launch update of gfn {gfn:#x}: not PRIVATE (kvm_gmem_populate: -EINVAL)")
        return self._private_pfns(gfn, npages)

    def _bios_backing(self, gfns: IntArray) -> IntArray | None:
        """The firmware RAM block's frames: its own guest_memfd with the VM's folio size (pre-UPM: the VMM's pinned
        pages, 4K, registered as QEMU registers every RAM block: ``sev_ram_block_added()``, target/i386/sev.c,
        "r = kvm_vm_ioctl(kvm_state, KVM_MEMORY_ENCRYPT_REG_REGION, &range)"; ``bulk`` splits them there),
        allocated a folio at a time."""
        fp = self.gmem.folio_pages if self.gmem is not None else 1
        need = sorted({g // fp for g in gfns.tolist()} - self.bios_folios.keys())
        if need:
            owner = Owner.GMEM if self.gmem is not None else Owner.VMM_PRIVATE
            got = self.host.alloc_bulk(fp.bit_length() - 1, len(need), owner)
            if got is None:
                return None
            self.bios_folios.update(zip(need, got.tolist(), strict=True))
            if self.gmem is None:
                self.host.register_frames(got)
        return np.array([self.bios_folios[g // fp] + g % fp for g in gfns.tolist()], dtype=np.int64)

    def snp_launch_finish(self) -> None:
        """``KVM_SEV_SNP_LAUNCH_FINISH`` → ``snp_launch_update_vmsa()``: for each vCPU, "ret =
        rmp_make_private(pfn, INITIAL_VMSA_GPA, PG_LEVEL_4K, sev->asid, true)" and SEV_CMD_SNP_LAUNCH_UPDATE with
        KVM_SEV_SNP_PAGE_TYPE_VMSA (the RMP entry gets the VMSA bit); then SEV_CMD_SNP_LAUNCH_FINISH."""
        host = self.host
        host.charge("ioctl", host.costs.ioctl_ns)
        for index in sorted(self.vmsas):
            pfn = self.vmsas[index]
            if host.snp_make_kernel_page_private(pfn, INITIAL_VMSA_GPA, self.asid, "vmsa") != RmpStatus.SUCCESS:
                raise RuntimeError(f"rmp_make_private of vCPU {index}'s VMSA failed")
            if host.snp_launch_update(np.array([pfn], dtype=np.int64), vmsa=True):
                raise RuntimeError(f"SNP_LAUNCH_UPDATE of vCPU {index}'s VMSA failed")
        self.launched = True

    def sev_vm_destroy(self) -> None:
        """Teardown of the host SNP pages: ``sev_free_vcpu()`` for each VMSA (``kvm_rmp_make_shared``, then
        ``__free_page``), ``snp_decommission_context()`` (SEV_CMD_SNP_DECOMMISSION, then
        ``snp_free_firmware_page(sev->snp_context)``: SNP_PAGE_RECLAIM + ``rmp_make_shared`` + free) and
        ``snp_guest_req_cleanup()`` (``__free_page`` of the request page, ``snp_free_firmware_page`` of the
        response page)."""
        host = self.host
        for index in sorted(self.vmsas):
            host.snp_free_vmsa(self.vmsas.pop(index))
        if self.snp_context is not None:
            host.snp_free_firmware_pages(self.snp_context, 0)
            self.snp_context = None
        if self.guest_req_buf is not None:
            host.free(self.guest_req_buf, 0)
            self.guest_req_buf = None
        if self.guest_resp_buf is not None:
            host.snp_free_firmware_pages(self.guest_resp_buf, 0)
            self.guest_resp_buf = None

    def npt_bytes(self) -> tuple[int, int, int]:
        return (
            self.npt.bytes_at(PageSize.SIZE_4K),
            self.npt.bytes_at(PageSize.SIZE_2M),
            self.npt.bytes_at(PageSize.SIZE_1G),
        )

    def destroy(self) -> None:
        """The VM goes away (``kvm_destroy_vm``): the NPT is torn down; the guest_memfd file's last reference is
        dropped, so its folios are released (the release point); pre-UPM, KVM makes its private pages shared
        again before the VMM unmaps them (``sev_free_vm`` / ``snp_reclaim``)."""
        self.npt.zap(0, self.npages)
        self.sev_vm_destroy()
        if self.gmem is not None:
            self.gmem.release_all()
        elif self.shared is not None:
            mapped = self.shared.pfn.present()
            self._invalidate(self.shared.pfn[np.flatnonzero(mapped & self.attrs.private)])
        if self.bios_folios:  # the firmware RAM block: invalidated (made shared) and freed with its file
            fp = self.gmem.folio_pages if self.gmem is not None else 1
            heads = np.array(sorted(self.bios_folios.values()), dtype=np.int64)
            frames = (heads[:, None] + np.arange(fp, dtype=np.int64)).ravel()
            self._invalidate(frames)
            self.host.free_bulk(heads, fp.bit_length() - 1)
            if self.gmem is not None:
                self.host.release_frames(frames)
            else:  # sev_ram_block_removed(): KVM_MEMORY_ENCRYPT_UNREG_REGION of the firmware RAM block
                self.host.unregister_frames(frames)
            self.bios_folios.clear()
        self.host.snp_rmpopt_all_physmem()  # sev_vm_destroy: queue the RMPOPT rescan (RMPOPT v8 5/7)


def _runs_of_blocks(heads: IntArray) -> tuple[list[int], list[int]]:
    """The ascending 2M-block heads ``heads`` as runs of adjacent blocks: (first gfn, pages) of each."""
    if not heads.size:
        return [], []
    starts = run_starts(heads - np.arange(heads.size, dtype=np.int64) * PAGES_PER_2M)
    counts = np.diff(np.append(starts, heads.size))
    return heads[starts].tolist(), (counts * PAGES_PER_2M).tolist()
