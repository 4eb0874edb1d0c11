"""The host kernel's side of SEV-SNP memory: RMP updates with direct-map adjustment, and the kernel #PF handler.

Models these pieces of Linux (``shared/reference/linux-snp-host.md``):

- ``arch/x86/virt/svm/sev.c`` ``rmp_make_private()`` / ``rmp_make_shared()`` → ``rmpupdate()`` →
  ``adjust_direct_map()`` (§1, §3): what the host does to its direct map around an RMPUPDATE. Upstream (v6.9+)
  splits a large mapping to 4K before a 4K RMPUPDATE and does nothing for a 2M one ("even accesses from 1GB
  mappings will be treated as 2MB accesses"); SNP v5-v10 removed private pages from the direct map
  (``set_direct_map_invalid_noflush``) and restored them on unassign; the other options of the seed thread
  (bulk split at ``MEM_ENCRYPT_REG_REGION``, refuse to split) are the other values of the ``directmap`` knob.
  What happens is chosen by the :class:`~snpsim.policy.Policy` knobs only.
- ``arch/x86/mm/fault.c`` (§2): a kernel-mode #PF with ``X86_PF_RMP`` (bit 31) or on a not-present direct-map
  entry goes down the oops path (a host crash). With ``rmp_fault = fixup`` (P. Gonda's rejected proposal, §2)
  the handler makes the offending pages shared and retries the write; the guest later sees #VC.
- the boot-time host memory layout (:mod:`snpsim.host.e820`: e820 RAM, the PCI hole, the BIOS-reserved RMP
  table) and the ``/proc/meminfo`` / ``/proc/vmstat`` direct-map counters (:mod:`snpsim.host.directmap`), reported
  by :meth:`HostKernel.metrics`.
- ``mm/page_alloc.c`` allocation with page zeroing (``kernel_init_pages`` → ``clear_highpage`` through the
  direct map): every frame handed out is written once by the kernel, which is the common way an RMP #PF
  would hit a hypervisor-owned page that shares a 2M direct-map mapping with a private page. Who asks for which
  migratetype is :data:`snpsim.host.frames.ALLOCATION`; the allocator is :mod:`snpsim.host.buddy`, compaction and
  ``alloc_contig_pages`` are :mod:`snpsim.host.compaction`, hugetlb pools and reservations (``mm/hugetlb.c``) are
  here, and reclaim's slab shrinking with the THP deferred split queue is :mod:`snpsim.host.vmscan` (kswapd below
  the low watermark, direct reclaim when an allocation fails).

Hardware checks are those of :class:`snpsim.hw.rmp.Rmp`: a write through a 2M or 1G mapping faults if any 4K
page of the enclosing 2M range is assigned (amd-snp-arch.md §7).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from snpsim.host.buddy import MAX_PAGE_ORDER, BuddyAllocator, Migratetype
from snpsim.host.compaction import Compactor
from snpsim.host.cpu import CpuAccount
from snpsim.host.directmap import NOT_PRESENT, DirectMap
from snpsim.host.e820 import HostMemoryMap, flat_memory_map
from snpsim.host.frames import ALLOCATION, LRU_OWNERS, FrameTable, Owner
from snpsim.host.rmpopt import RmpOptimizer
from snpsim.host.svm import GuestMode
from snpsim.host.uaccess import GuestRam
from snpsim.host.vmscan import DeferredSplitQueue, low_watermark_pages
from snpsim.hw.costs import CostModel
from snpsim.hw.rmp import Rmp
from snpsim.hw.types import PAGE_SHIFT, PAGES_PER_1G, PAGES_PER_2M, HostPageFault, PageSize, RmpStatus
from snpsim.policy import Policy
from snpsim.segments import ascending, unique_ints

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Crash:
    """One host crash: a kernel-mode fault that went down the oops path."""

    time_ns: int
    path: str
    pfn: int
    kind: str  # "rmp" or "not-present"
    error_code: int
    #: the context of the faulting access (:class:`snpsim.host.uaccess.Context`): the kernel writers run in task
    #: context
    context: str = "task"


class HostKernel:
    """Physical memory, the direct map and the RMP of one host, driven by a policy's knobs.

    ``memory_map`` is the host's e820 layout (:class:`snpsim.host.e820.HostMemoryMap`; None: all of
    ``[0, nframes)`` RAM, as unit tests use); with a map, ``nframes`` must be its ``max_pfn``. The direct map is
    built on its memblock memory (``init_mem_mapping()``), the allocator gets its RAM ranges, the frames outside
    them are tagged :attr:`Owner.RESERVED`, and the RMP covers ``memory_map.rmp_pages`` (``[0, max_pfn)`` and the
    table itself). ``transparent_hugepage`` is ``/sys/kernel/mm/transparent_hugepage/enabled`` (``always``, the
    Kconfig default ``TRANSPARENT_HUGEPAGE_ALWAYS``, ``madvise`` or ``never``); ``hugepages`` maps a huge page
    order to the persistent pool allocated at boot (``hugepagesz=... hugepages=N``; then no size may overcommit,
    ``nr_overcommit_hugepages`` = 0 as Linux's default), or is None: no pool, and every hugetlbfs reservation
    gathers surplus pages (the model's assumption of an operator who sized ``nr_overcommit_hugepages`` for the
    guests). ``clock`` returns the current simulated time in ns (the SimPy environment's ``now``). Every operation
    charges its cost-model time to the thread running it (:attr:`cpu`, a :class:`~snpsim.host.cpu.CpuAccount` the
    engine switches as threads run); ``busy_ns`` is the total over all threads.
    """

    def __init__(
        self,
        nframes: int,
        policy: Policy,
        *,
        costs: CostModel | None = None,
        max_level: PageSize = PageSize.SIZE_1G,
        zero_on_alloc: bool = True,
        clock: Callable[[], float] | None = None,
        memory_map: HostMemoryMap | None = None,
        transparent_hugepage: str = "always",
        hugepages: Mapping[int, int] | None = None,
        allocator: type[BuddyAllocator] = BuddyAllocator,
        directmap: type[DirectMap] = DirectMap,
        rmp: type[Rmp] = Rmp,
        compactor: type[Compactor] = Compactor,
    ) -> None:
        """``allocator``, ``directmap``, ``rmp``, ``compactor``: the page allocator's, the direct map's, the RMP's
        and compaction's classes (the engine's: :mod:`snpsim.engine`)."""
        self.nframes = int(nframes)
        if memory_map is not None and memory_map.max_pfn != self.nframes:
            raise ValueError(f"nframes {self.nframes} is not the memory map's max_pfn {memory_map.max_pfn}")
        #: the host's e820 layout (None: all of [0, nframes) RAM)
        self.memory_map = memory_map or flat_memory_map(self.nframes)
        self.policy = policy
        self.costs = costs or CostModel()
        self.rmp = rmp(self.memory_map.rmp_pages)  # covers [0, max_pfn) and the RMP itself
        self.directmap = directmap(self.nframes, max_level=max_level, memory=self.memory_map.memory)
        #: the CPU in guest mode: the hardware checks of SNP guests' accesses and PVALIDATEs
        self.svm = GuestMode(self)
        self.frames = FrameTable(self.nframes)
        self.buddy = allocator(
            self.nframes, ranges=self.memory_map.ram_ranges, page_tags=(self.frames.array, LRU_OWNERS)
        )
        hole = 0
        for lo, hi in (*self.memory_map.ram_ranges, (self.nframes, self.nframes)):
            if lo > hole:
                self.frames.set_range(hole, lo - hole, Owner.RESERVED)
            hole = hi
        self.zero_on_alloc = zero_on_alloc
        self.clock = clock or (lambda: 0)
        #: the thread running now (the engine switches it); every account ever used, by name
        self.cpu = CpuAccount("host")
        self.accounts: dict[str, CpuAccount] = {self.cpu.name: self.cpu}
        self.host_rmp_fault_count = 0
        self.host_notpresent_fault_count = 0
        self.crashes: list[Crash] = []
        #: host accesses to guest memory (:mod:`snpsim.host.uaccess`): writes the guest never sees, uaccesses that
        #: failed with -EFAULT, SIGBUS sent to the VMM, and writes that changed a validated private page (the
        #: guest-integrity oracle: the hardware check forbids them, so this stays empty)
        self.host_lost_write_count = 0
        self.host_efault_count = 0
        self.host_sigbus_count = 0
        self.integrity_violations: list[int] = []
        #: the live VMs' RAM as host accessors see it (the engine registers each VM's :class:`GuestRam`)
        self.guest_rams: list[GuestRam] = []
        #: frames made shared by the ``fixup`` #PF handler (the guest will see #VC on its next private access)
        self.fixup_page_count = 0
        #: called with the array of PFNs the fixup handler made shared (observers: tests, reports); KVM needs no
        #: notification: the guest's next access to such a page fails the hardware RMP check and re-faults
        self.fixup_listeners: list[Callable[[IntArray], None]] = []
        #: movable host pages (page cache / anonymous) oldest first, as the kernel's LRU lists (mm/vmscan.c);
        #: compaction replaces a migrated page here, as migration rewrites the owner's mapping
        self.lru: OrderedDict[int, None] = OrderedDict()
        #: pages moved by compaction (direct or kcompactd) and by alloc_contig_range
        self.compaction_migrated = 0
        self.compactor = compactor(self)
        #: ``transparent_hugepage/enabled``; THP faults need ``always`` or ``madvise`` (QEMU madvises guest RAM)
        if transparent_hugepage not in THP_MODES:
            raise ValueError(f"transparent_hugepage {transparent_hugepage!r} is not one of {', '.join(THP_MODES)}")
        self.transparent_hugepage = transparent_hugepage
        #: the THP deferred split queue, and the pages its THPs hold unmapped (kept by their mappings)
        self.deferred_split = DeferredSplitQueue()
        self.thp_held_pages = 0
        #: kswapd wakes when free memory falls below this (mm/page_alloc.c, mm/khugepaged.c)
        self.low_wmark_pages = low_watermark_pages(self.buddy, thp=self.thp_enabled)
        #: reclaim passes that ran the shrinkers (kswapd wake-ups, direct reclaims, drop_caches)
        self.reclaim_count = 0
        #: hugetlb (mm/hugetlb.c ``struct hstate``), per order: free pool pages, reserved pages
        #: (``resv_huge_pages``), surplus pages (``surplus_huge_pages``) and the overcommit limit (None: unlimited)
        self._hugetlb_pool: dict[int, set[int]] = {}
        self._hugetlb_used: set[int] = set()
        self._hugetlb_resv: dict[int, int] = {}
        self._hugetlb_surplus: dict[int, int] = {}
        self._hugetlb_overcommit: int | None = None if hugepages is None else 0
        for order, count in sorted((hugepages or {}).items()):
            self.hugetlb_reserve(order, count)  # hugepages= on the command line: allocated at boot
        #: host-kernel pages assigned in the RMP (VMSAs, SNP context, guest-request, firmware pages): pfn -> what
        self.snp_pages: dict[int, str] = {}
        #: pages whose reclaim failed, leaked as snp_leak_pages() does (never freed)
        self.snp_leaked: list[int] = []
        #: the SEV-ES TMR given to the firmware at SNP init (:meth:`snp_init`), None before
        self.snp_tmr: int | None = None
        self._removal_pages = (
            self.policy.private_page_bytes >> PAGE_SHIFT if self.policy.directmap == "unmap-nosplit" else 1
        )
        #: RMPOPT (policy ``rmpopt``): the boot-time scan runs now, charged to the ``kthread/rmpopt`` worker
        self.rmpopt: RmpOptimizer | None = None
        if self.policy.rmpopt:
            self.rmpopt = RmpOptimizer(
                self, min_pfn=self.memory_map.ram_ranges[0][0] if self.memory_map.ram_ranges else 0
            )
            caller, self.cpu = self.cpu, self.account("kthread/rmpopt")
            self.rmpopt.scan()
            self.cpu = caller

    # ------------------------------------------------------------------ metrics
    @property
    def host_crash_count(self) -> int:
        return len(self.crashes)

    def metrics(self) -> dict[str, int]:
        """The host-level metrics of DESIGN.md, named as there."""
        return {
            "directmap_4k": self.directmap.directmap_4k,
            "directmap_2m": self.directmap.directmap_2m,
            "directmap_1g": self.directmap.directmap_1g,
            "directmap_split_count": self.directmap.split_count,
            "direct_map_level2_splits": self.directmap.level2_splits,
            "direct_map_level3_splits": self.directmap.level3_splits,
            "directmap_merge_count": self.directmap.merge_count,
            "rmpupdate_count": self.rmp.rmpupdate_count,
            "psmash_count": self.rmp.psmash_count,
            "host_rmp_fault_count": self.host_rmp_fault_count,
            "host_notpresent_fault_count": self.host_notpresent_fault_count,
            "host_crash_count": self.host_crash_count,
            "snp_host_bytes": len(self.snp_pages) << PAGE_SHIFT,
            "host_lost_write_count": self.host_lost_write_count,
            "host_efault_count": self.host_efault_count,
            "host_sigbus_count": self.host_sigbus_count,
            "thp_deferred_split_bytes": self.thp_held_pages << PAGE_SHIFT,
            "thp_split_page_count": self.deferred_split.split_count,
            "rmpopt_bytes": self.rmpopt.optimized_bytes() if self.rmpopt is not None else 0,
        }

    # ------------------------------------------------------------------ CPU time (host.cpu)
    def account(self, name: str) -> CpuAccount:
        """The CPU account of the thread called ``name`` (created on first use)."""
        acct = self.accounts.get(name)
        if acct is None:
            acct = self.accounts[name] = CpuAccount(name)
        return acct

    def charge(self, op: str, ns: int, count: int = 1) -> None:
        """Charge ``count`` operations ``op`` costing ``ns`` in all to the running thread."""
        self.cpu.charge(op, ns, count)

    @property
    def busy_ns(self) -> int:
        """CPU time charged so far, over all threads."""
        return sum(a.total_ns for a in self.accounts.values())

    def _charge_directmap(self, splits_before: int, merges_before: int) -> None:
        """Each split or merge of a direct-map entry, with the TLB flush that follows it (``cpa_flush`` after
        ``__change_page_attr_set_clr``). Simplification: one flush per split or merge, where the kernel flushes
        once per call (a 1G -> 2M -> 4K split in one call costs one flush more here), and none for making an
        entry not present or present again (SNP v5 batched those with ``flush_tlb_kernel_range``): both move
        ``unmap``'s time by a flush per page at most."""
        c = self.costs
        splits = self.directmap.split_count - splits_before
        merges = self.directmap.merge_count - merges_before
        if splits:
            self.charge("directmap_split", splits * c.directmap_split_ns, splits)
        if merges:
            self.charge("directmap_merge", merges * c.directmap_merge_ns, merges)
        if splits or merges:
            self.charge("tlb_flush", (splits + merges) * c.tlb_flush_ns, splits + merges)

    # ------------------------------------------------------------------ allocation (mm/page_alloc.c)
    def alloc(
        self,
        order: int,
        owner: Owner,
        *,
        zero: bool | None = None,
        path: str = "",
        hugetlb: bool = False,
        reserved: bool = False,
    ) -> int | None:
        """Allocate a 2^order block for ``owner`` (its migratetype from :data:`~snpsim.host.frames.ALLOCATION`); zero
        it through the direct map (``kernel_init_pages``).

        A high-order request that finds no free block tries direct compaction first (:meth:`compact`); an order
        above ``MAX_PAGE_ORDER`` is a contiguous range (``alloc_contig_pages``). ``hugetlb``: a huge page from the
        hugetlb pool of that order (:meth:`hugetlb_reserve`): with ``reserved``, one the caller reserved
        (:meth:`hugetlb_reserve_pages`), else an unreserved pool page or a surplus page from the allocator
        (``alloc_surplus_hugetlb_folio``). An allocation that leaves free memory below the low watermark wakes
        kswapd (:meth:`wakeup_kswapd`)."""
        pfn = self._hugetlb_alloc(order, reserved) if hugetlb else self._alloc_pages(order, owner)
        if pfn is None:
            return None
        self.frames.set_range(pfn, 1 << order, owner)
        if self.zero_on_alloc if zero is None else zero:
            self.kernel_write_range(np.arange(pfn, pfn + (1 << order), dtype=np.int64), path or PATH_ZERO)
        self._check_watermark()
        return pfn

    def _alloc_pages(self, order: int, owner: Owner) -> int | None:
        mt = ALLOCATION[owner].migratetype
        if order > MAX_PAGE_ORDER:
            return self.compactor.alloc_contig(order)
        pfn = self.buddy.alloc(order, mt)
        if pfn is None and order > 0 and self.compact(order, mt):
            pfn = self.buddy.alloc(order, mt)
        if pfn is None and self.direct_reclaim():
            pfn = self.buddy.alloc(order, mt)
            if pfn is None and order > 0 and self.compact(order, mt):
                pfn = self.buddy.alloc(order, mt)
        return pfn

    def alloc_bulk(self, order: int, count: int, owner: Owner, *, zero: bool | None = None) -> IntArray | None:
        """``count`` blocks of 2^order (all or nothing), each zeroed like :meth:`alloc`."""
        mt = ALLOCATION[owner].migratetype
        pfns = None if order > MAX_PAGE_ORDER else self.buddy.alloc_bulk(order, count, mt)
        if pfns is None and order == 0 and self.direct_reclaim():
            pfns = self.buddy.alloc_bulk(order, count, mt)
        if pfns is None and order > 0:
            pfns = self._alloc_compacting(order, count, owner)  # each block with compaction, then reclaim
        if pfns is None:
            return None
        frames = _expand(pfns, order)
        self.frames.set_many(frames, owner)
        if self.zero_on_alloc if zero is None else zero:
            self.kernel_write_range(frames, PATH_ZERO)
        self._check_watermark()
        return pfns

    def _alloc_compacting(self, order: int, count: int, owner: Owner) -> IntArray | None:
        """One block at a time, compacting when the free lists have none (all or nothing)."""
        got: list[int] = []
        for _ in range(count):
            pfn = self._alloc_pages(order, owner)
            if pfn is None:
                self._free_pages(np.array(got, dtype=np.int64), order)
                for p in got if order > MAX_PAGE_ORDER else ():
                    self.frames.set_range(p, 1 << order, Owner.FREE)
                return None
            got.append(pfn)
            if order > MAX_PAGE_ORDER:  # tag it now, or the next range search would take it for free memory
                self.frames.set_range(pfn, 1 << order, owner)
        return np.array(got, dtype=np.int64)

    def compact(self, order: int, migratetype: int = Migratetype.MOVABLE) -> bool:
        """Direct compaction (``__alloc_pages_direct_compact``, :class:`~snpsim.host.compaction.Compactor`): migrate
        movable pages from the bottom of each zone to free pages at its top until a free block of ``order`` could
        be allocated for ``migratetype``; True if one can."""
        return self.compactor.direct(order, migratetype)

    # ------------------------------------------------------------------ reclaim (mm/vmscan.c, snpsim.host.vmscan)
    @property
    def thp_enabled(self) -> bool:
        """``hugepage_flags_enabled()`` for QEMU's madvised RAM: ``enabled`` is ``always`` or ``madvise``."""
        return self.transparent_hugepage != "never"

    def shrink_slab(self) -> int:
        """One reclaim pass's ``shrink_slab()``: the deferred split shrinker (``deferred_split_scan``) splits every
        queued THP, each split costing a TLB flush (``split_folio`` unmaps and remaps the folio); returns the pages
        freed."""
        self.reclaim_count += 1
        splits = len(self.deferred_split)
        freed = self.deferred_split.scan()
        if splits:
            self.charge("thp_split", splits * self.costs.tlb_flush_ns, splits)
        return freed

    def _check_watermark(self) -> None:
        """After an allocation: below the low watermark with THPs queued, kswapd runs (nothing else to reclaim)."""
        if len(self.deferred_split) and self.buddy.free_frames < self.low_wmark_pages:
            self.wakeup_kswapd()

    def direct_reclaim(self) -> bool:
        """``__alloc_pages_direct_reclaim``: an allocation failed; True if shrinking freed anything to retry on."""
        return bool(len(self.deferred_split)) and self.shrink_slab() > 0

    def wakeup_kswapd(self) -> int:
        """``wakeup_kswapd`` → ``balance_pgdat``: free memory fell below the low watermark; kswapd shrinks slab (on
        its own CPU account, synchronously here). Returns the pages freed."""
        caller = self.cpu
        self.cpu = self.account("kthread/kswapd0")
        try:
            return self.shrink_slab()
        finally:
            self.cpu = caller

    def drop_caches(self) -> int:
        """``echo 2 > /proc/sys/vm/drop_caches`` (``drop_slab``): run the shrinkers now; returns the pages freed."""
        return self.shrink_slab()

    def free(self, pfn: int, order: int) -> None:
        """Free one block; ValueError for a double free (its first or last frame is tagged free)."""
        if pfn in self._hugetlb_used:
            self._hugetlb_free(pfn, order)
            return
        if not self.frames.tag(pfn) or not self.frames.tag(pfn + (1 << order) - 1):  # Owner.FREE is 0
            raise ValueError(f"double free: block {pfn:#x} order {order} is already free")
        if order > MAX_PAGE_ORDER:
            self._free_pages(np.array([pfn], dtype=np.int64), order, check_free=False)
        else:
            self.buddy.free(pfn, order, check_free=False)
        self.frames.set_range(pfn, 1 << order, Owner.FREE)

    def free_bulk(self, pfns: IntArray, order: int) -> None:
        """Free blocks of 2^order; ValueError (nothing freed) for a double free, found in the frame table."""
        pfns = ascending(np.asarray(pfns, dtype=np.int64))  # one pass per frame-table segment below
        frames = _expand(pfns, order)
        free = np.flatnonzero(self.frames.tags_of(frames) == Owner.FREE)
        if free.size:
            raise ValueError(f"double free: frame {int(frames[free[0]]):#x} is already free")
        self._free_pages(pfns, order, check_free=False)
        self.frames.set_many(frames, Owner.FREE)

    def _free_pages(self, pfns: IntArray, order: int, *, check_free: bool = True) -> None:
        """Give blocks back to the buddy allocator; a block above ``MAX_PAGE_ORDER`` as its ``MAX_PAGE_ORDER`` pieces
        (``free_contig_range``)."""
        if pfns.size == 0:
            return
        if order > MAX_PAGE_ORDER:
            pfns = _expand(pfns, order)[:: 1 << MAX_PAGE_ORDER]
            order = MAX_PAGE_ORDER
        if pfns.size == 1:
            if check_free:
                self.buddy.free(int(pfns[0]), order)
            else:
                self.buddy.free_bulk(pfns, order, check_free=False)
        else:
            self.buddy.free_bulk(pfns, order, check_free=check_free)

    # ------------------------------------------------------------------ hugetlb pool (mm/hugetlb.c)
    def hugetlb_reserve(self, order: int, count: int) -> int:
        """Write ``nr_hugepages``: add up to ``count`` huge pages of ``order`` to the pool (``alloc_pool_huge_folio``:
        movable 2M pages from the buddy allocator, with compaction; 1G pages by ``alloc_contig_pages``). Best effort:
        returns how many were added."""
        added = 0
        for _ in range(count):
            pfn = self._alloc_pages(order, Owner.HUGETLB_POOL)
            if pfn is None:
                break
            self.frames.set_range(pfn, 1 << order, Owner.HUGETLB_POOL)
            self._hugetlb_pool.setdefault(order, set()).add(pfn)
            added += 1
        return added

    def hugetlb_release(self, order: int, count: int | None = None) -> int:
        """Shrink the pool: free up to ``count`` (default: all) unused, unreserved huge pages of ``order``, highest
        first (``set_max_huge_pages`` never goes below the reserved pages)."""
        pool = self._hugetlb_pool.get(order, set())
        spare = max(0, len(pool) - self._hugetlb_resv.get(order, 0))
        victims = sorted(pool, reverse=True)[: spare if count is None else min(spare, max(0, count))]
        for pfn in victims:
            pool.remove(pfn)
            self._free_pages(np.array([pfn], dtype=np.int64), order)
            self.frames.set_range(pfn, 1 << order, Owner.FREE)
        return len(victims)

    def hugetlb_pool_free(self, order: int) -> int:
        """Unused pages in the pool of ``order`` (``free_hugepages``, reserved ones included)."""
        return len(self._hugetlb_pool.get(order, ()))

    def hugetlb_reserved(self, order: int) -> int:
        """Reserved, not yet faulted pages of ``order`` (``resv_hugepages``)."""
        return self._hugetlb_resv.get(order, 0)

    def hugetlb_surplus(self, order: int) -> int:
        """Surplus pages of ``order`` (``surplus_hugepages``)."""
        return self._hugetlb_surplus.get(order, 0)

    def hugetlb_reserve_pages(self, order: int, count: int) -> bool:
        """``hugetlb_reserve_pages`` at a hugetlbfs ``mmap``: reserve ``count`` pages of ``order`` so the mapping's
        faults cannot fail. ``hugetlb_acct_memory`` → ``gather_surplus_pages``: when the pool's free pages do not
        cover the reservations, the missing ones are allocated now as surplus pages (within
        ``nr_overcommit_hugepages``); if they cannot be had, nothing is reserved and the ``mmap`` fails with
        ENOMEM (False)."""
        pool = self._hugetlb_pool.setdefault(order, set())
        resv = self._hugetlb_resv.get(order, 0)
        needed = resv + count - len(pool)
        surplus = self._hugetlb_surplus.get(order, 0)
        if needed > 0:
            limit = self._hugetlb_overcommit
            if limit is not None and surplus + needed > limit:
                return False
            got: list[int] = []
            for _ in range(needed):
                pfn = self._alloc_pages(order, Owner.HUGETLB_POOL)
                if pfn is None:
                    for p in got:  # give back what was gathered
                        self._free_pages(np.array([p], dtype=np.int64), order)
                        self.frames.set_range(p, 1 << order, Owner.FREE)
                    return False
                self.frames.set_range(pfn, 1 << order, Owner.HUGETLB_POOL)
                got.append(pfn)
            pool.update(got)
            self._hugetlb_surplus[order] = surplus + needed
        self._hugetlb_resv[order] = resv + count
        return True

    def hugetlb_unreserve_pages(self, order: int, count: int) -> None:
        """``hugetlb_unreserve_pages`` (the file is truncated or evicted): drop ``count`` unused reservations and
        free as many surplus pages from the pool (``return_unused_surplus_pages``), highest first."""
        if count <= 0:
            return
        self._hugetlb_resv[order] = self._hugetlb_resv.get(order, 0) - count
        pool = self._hugetlb_pool.get(order, set())
        n = min(count, self._hugetlb_surplus.get(order, 0), len(pool))
        for pfn in sorted(pool, reverse=True)[:n]:
            pool.remove(pfn)
            self._free_pages(np.array([pfn], dtype=np.int64), order)
            self.frames.set_range(pfn, 1 << order, Owner.FREE)
        self._hugetlb_surplus[order] = self._hugetlb_surplus.get(order, 0) - n

    def _hugetlb_alloc(self, order: int, reserved: bool) -> int | None:
        """``alloc_hugetlb_folio``: a reserved fault dequeues a pool page; an unreserved one takes a free page the
        reservations leave, else a surplus page from the allocator within the overcommit limit."""
        pool = self._hugetlb_pool.setdefault(order, set())
        resv = self._hugetlb_resv.get(order, 0)
        if reserved:
            if resv <= 0 or not pool:
                raise ValueError(f"no hugetlb reservation of order {order} to fault from")
            self._hugetlb_resv[order] = resv - 1
        if reserved or len(pool) > resv:
            head = min(pool)  # dequeue_hugetlb_folio_node_exact: the model takes the lowest
            pool.remove(head)
            self._hugetlb_used.add(head)
            return head
        surplus = self._hugetlb_surplus.get(order, 0)
        if self._hugetlb_overcommit is not None and surplus >= self._hugetlb_overcommit:
            return None
        pfn = self._alloc_pages(order, Owner.HUGETLB_POOL)
        if pfn is not None:
            self._hugetlb_used.add(pfn)
            self._hugetlb_surplus[order] = surplus + 1
        return pfn

    def _hugetlb_free(self, pfn: int, order: int) -> None:
        """``free_huge_folio``: while the hstate has surplus pages the folio goes back to the buddy allocator
        (``surplus_huge_pages--``), else to the pool."""
        self._hugetlb_used.remove(pfn)
        surplus = self._hugetlb_surplus.get(order, 0)
        if surplus:
            self._hugetlb_surplus[order] = surplus - 1
            self._free_pages(np.array([pfn], dtype=np.int64), order)
            self.frames.set_range(pfn, 1 << order, Owner.FREE)
        else:
            self._hugetlb_pool.setdefault(order, set()).add(pfn)
            self.frames.set_range(pfn, 1 << order, Owner.HUGETLB_POOL)

    # ------------------------------------------------------------------ RMP updates (arch/x86/virt/svm/sev.c)
    def rmp_make_private(
        self, pfn: int, gpa: int, level: PageSize, asid: int, *, immutable: bool = False, kernel: bool = False
    ) -> RmpStatus:
        """``rmp_make_private()``: adjust the direct map per policy, then RMPUPDATE to guest-owned. ``kernel``: the
        page is host-kernel memory (a VMSA, a firmware page: :meth:`snp_make_kernel_page_private`), whose 2M
        neighbours are other kernel objects (see :meth:`_directmap_before_private`)."""
        s0, m0 = self.directmap.split_count, self.directmap.merge_count
        self._directmap_before_private(pfn, level, kernel=kernel)
        self._charge_directmap(s0, m0)
        self.charge("rmpupdate", self.costs.rmpupdate_ns)
        return self.rmp.rmpupdate(
            pfn << PAGE_SHIFT, assigned=True, page_size=level, gpa=gpa, asid=asid, immutable=immutable
        )

    def rmp_make_shared(self, pfn: int, level: PageSize, *, kernel: bool = False) -> RmpStatus:
        """``rmp_make_shared()``: RMPUPDATE to hypervisor-owned, then give the pages back to the direct map
        (``kernel``: as for :meth:`rmp_make_private`)."""
        s0, m0 = self.directmap.split_count, self.directmap.merge_count
        if self.policy.directmap == "split" or self.policy.directmap == "bulk":
            self._split_for(pfn, level)  # upstream adjust_direct_map() runs on every rmpupdate
        self.charge("rmpupdate", self.costs.rmpupdate_ns)
        status = self.rmp.rmpupdate(pfn << PAGE_SHIFT, assigned=False, page_size=level)
        if status == RmpStatus.SUCCESS and not (kernel and self.policy.directmap == "unmap-nosplit"):
            self._directmap_after_shared(pfn, level)
        self._charge_directmap(s0, m0)
        return status

    def rmp_make_private_range(self, pfn: int, npages: int, gpa: int, asid: int) -> IntArray:
        """4K ``rmp_make_private`` over a contiguous range (vectorised; equal to a loop of the single call)."""
        pfns = np.arange(pfn, pfn + npages, dtype=np.int64)
        return self.rmp_make_private_pfns(pfns, pfns - pfn + (gpa >> PAGE_SHIFT), asid)

    def rmp_make_shared_range(self, pfn: int, npages: int) -> IntArray:
        """4K ``rmp_make_shared`` over a contiguous range (vectorised)."""
        return self.rmp_make_shared_pfns(np.arange(pfn, pfn + npages, dtype=np.int64))

    def rmp_make_private_pfns(self, pfns: IntArray, gfns: IntArray, asid: int, *, immutable: bool = False) -> IntArray:
        """4K ``rmp_make_private`` of distinct frames ``pfns`` bound to ``gfns`` (vectorised, any order)."""
        if pfns.size == 0:
            return np.zeros(0, dtype=np.int64)
        s0, m0 = self.directmap.split_count, self.directmap.merge_count
        dm = self.policy.directmap
        if dm in ("split", "bulk"):
            self._split_2m_of(pfns)
        elif dm == "unmap":
            self.directmap.remove_pages(np.sort(pfns))
        elif dm == "unmap-nosplit":
            for block in unique_ints(pfns // self._removal_pages).tolist():
                self._remove_block(block * self._removal_pages)
        self._charge_directmap(s0, m0)
        self.charge("rmpupdate", int(pfns.size) * self.costs.rmpupdate_ns, int(pfns.size))
        return self.rmp.rmpupdate_pfns(pfns, gfns, assigned=True, asid=asid, immutable=immutable)

    def rmp_make_shared_pfns(self, pfns: IntArray) -> IntArray:
        """4K ``rmp_make_shared`` of distinct frames (vectorised, any order)."""
        if pfns.size == 0:
            return np.zeros(0, dtype=np.int64)
        s0, m0 = self.directmap.split_count, self.directmap.merge_count
        if self.policy.directmap in ("split", "bulk"):
            self._split_2m_of(pfns)
        self.charge("rmpupdate", int(pfns.size) * self.costs.rmpupdate_ns, int(pfns.size))
        status = self.rmp.rmpupdate_pfns(pfns, assigned=False)
        done = np.sort(pfns[status == RmpStatus.SUCCESS])
        if done.size:
            if self.policy.directmap == "unmap":
                self.directmap.restore_pages(done)
            elif self.policy.directmap == "unmap-nosplit":
                for block in unique_ints(done // self._removal_pages).tolist():
                    self._restore_block_if_clean(block * self._removal_pages)
        self._charge_directmap(s0, m0)
        return status

    def _split_2m_of(self, pfns: IntArray) -> None:
        """``adjust_direct_map`` for 4K RMPUPDATEs: every 2M range holding one of the frames is mapped at 4K."""
        self.directmap.split_2m_many(pfns // PAGES_PER_2M)

    def _split_for(self, pfn: int, level: PageSize) -> None:
        if level == PageSize.SIZE_4K:
            self.directmap.set_4k(pfn)

    def _block(self, pfn: int) -> tuple[int, int]:
        n = self._removal_pages
        lo = pfn // n * n
        return lo, min(lo + n, self.nframes)

    def _remove_block(self, pfn: int) -> None:
        lo, hi = self._block(pfn)
        if hi - lo == PAGES_PER_1G:
            self.directmap.remove_1g(lo // PAGES_PER_1G)
        else:
            for idx in range(lo // PAGES_PER_2M, (hi - 1) // PAGES_PER_2M + 1):
                self.directmap.remove_2m(idx)

    def _restore_block_if_clean(self, pfn: int) -> None:
        lo, hi = self._block(pfn)
        if self.rmp.assigned_pages(lo, hi - lo).size:
            return
        if hi - lo == PAGES_PER_1G:
            self.directmap.restore_1g(lo // PAGES_PER_1G)
        else:
            for idx in range(lo // PAGES_PER_2M, (hi - 1) // PAGES_PER_2M + 1):
                self.directmap.restore_2m(idx)

    def _directmap_before_private(self, pfn: int, level: PageSize, *, kernel: bool = False) -> None:
        """The policy's direct-map change before an RMPUPDATE to assigned. ``unmap-nosplit`` on a host-kernel 4K
        page (``kernel``): the 2M (or folio-sized) block around it holds other kernel objects, so it can be neither
        removed whole nor left mapped at 2M (every kernel write to a neighbour would take an RMP #PF); the page's
        2M mapping is split to 4K as upstream's ``adjust_direct_map()`` does and the page stays mapped (the knob's
        no-split rule is about guest_memfd memory, which it allocates in whole blocks)."""
        dm = self.policy.directmap
        if kernel and dm == "unmap-nosplit":
            dm = "split"
        if dm in ("split", "bulk"):
            self._split_for(pfn, level)
        elif dm == "unmap":
            # SNP v5-v10 call set_direct_map_invalid_noflush() on every 4K page, also for a 2M RMPUPDATE: the
            # 2M mapping is split to 4K, not made not-present whole (linux-snp-host.md §9)
            if level == PageSize.SIZE_4K:
                self.directmap.remove_4k(pfn)
            else:
                self.directmap.remove_range(pfn // PAGES_PER_2M * PAGES_PER_2M, PAGES_PER_2M)
        elif dm == "unmap-nosplit":
            self._remove_block(pfn)

    def _directmap_after_shared(self, pfn: int, level: PageSize) -> None:
        dm = self.policy.directmap
        if dm == "unmap":
            if level == PageSize.SIZE_4K:
                self.directmap.restore_4k(pfn)
            else:
                self.directmap.restore_range(pfn // PAGES_PER_2M * PAGES_PER_2M, PAGES_PER_2M)
        elif dm == "unmap-nosplit":
            self._restore_block_if_clean(pfn)

    # ------------------------------------------------------------------ host SNP pages (VMSAs, firmware pages)
    def snp_safe_alloc_page(self) -> int | None:
        """``snp_safe_alloc_page_node()`` (arch/x86/kvm/svm/sev.c): "Allocate one extra page, choose a page which
        is not 2MB-aligned, and free the other" (the erratum: an RMP violation #PF "if a hugepage (2MB or 1GB)
        collides with the RMP entry of a 2MB-aligned VMCB, VMSA, or AVIC backing page"): an order-1 UNMOVABLE
        kernel allocation (``GFP_KERNEL_ACCOUNT | __GFP_ZERO``), ``split_page(p, 1)``, and ``__free_page`` of the
        2M-aligned page if the pair starts on one, else of the second page."""
        pfn = self.alloc(1, Owner.KERNEL, path="arch/x86/kvm/svm/sev.c:snp_safe_alloc_page_node")
        if pfn is None:
            return None
        if pfn % PAGES_PER_2M == 0:  # IS_ALIGNED(pfn, PTRS_PER_PMD): __free_page(p++)
            self.free(pfn, 0)
            return pfn + 1
        self.free(pfn + 1, 0)
        return pfn

    def snp_make_kernel_page_private(self, pfn: int, gpa: int, asid: int, what: str) -> RmpStatus:
        """``rmp_make_private(pfn, gpa, PG_LEVEL_4K, asid, true)`` of a host-kernel page (a VMSA:
        ``snp_launch_update_vmsa``; ``asid`` 0: ``rmp_mark_pages_firmware``), through the same direct-map path as
        guest_memfd pages (:meth:`rmp_make_private`); the page counts in ``snp_host_bytes`` while assigned."""
        status = self.rmp_make_private(pfn, gpa, PageSize.SIZE_4K, asid, immutable=True, kernel=True)
        if status == RmpStatus.SUCCESS:
            self.snp_pages[pfn] = what
        return status

    def snp_alloc_firmware_pages(self, order: int, what: str) -> int | None:
        """``__snp_alloc_firmware_pages(gfp, order, locked)`` (drivers/crypto/ccp/sev-dev.c): ``alloc_pages``
        (UNMOVABLE kernel memory), then ``rmp_mark_pages_firmware()``: "rmp_make_private(pfn, 0, PG_LEVEL_4K, 0,
        true)" for each 4K page (the Firmware state: assigned, ASID 0, immutable)."""
        pfn = self.alloc(order, Owner.KERNEL, path="drivers/crypto/ccp/sev-dev.c:__snp_alloc_firmware_pages")
        if pfn is None:
            return None
        for p in range(pfn, pfn + (1 << order)):
            if self.snp_make_kernel_page_private(p, 0, 0, what) != RmpStatus.SUCCESS:
                raise RuntimeError(f"rmp_mark_pages_firmware failed on pfn {p:#x}")
        return pfn

    def snp_launch_update(self, pfns: IntArray, *, vmsa: bool = False) -> int:
        """``SEV_CMD_SNP_LAUNCH_UPDATE`` (``sev_issue_cmd``) of Pre-Guest 4K pages: each measured by the AMD-SP
        and made Guest-Valid (:meth:`snpsim.hw.rmp.Rmp.fw_launch_update`), ``snp_launch_update_ns`` per page;
        returns the pages that failed."""
        n = int(pfns.size)
        if n:
            self.charge("snp_launch_update", n * self.costs.snp_launch_update_ns, n)
        return self.rmp.fw_launch_update_pfns(pfns, vmsa=vmsa)

    def snp_reclaim_pages(self, pfn: int, npages: int, *, firmware: bool = True) -> bool:
        """``snp_reclaim_pages()`` (drivers/crypto/ccp/sev-dev.c) of host-kernel SNP pages: ``SNP_PAGE_RECLAIM`` of
        each (``firmware``; a guest-owned VMSA needs none: ``sev_free_vcpu`` calls ``kvm_rmp_make_shared``
        directly), then ``rmp_make_shared(pfn, PG_LEVEL_4K)``. A page that fails is leaked (``snp_leak_pages``:
        "no longer safe to release it back to the system") and False returned."""
        ok = True
        for p in range(pfn, pfn + npages):
            if firmware:
                self.charge("snp_page_reclaim", self.costs.snp_page_reclaim_ns)
                if self.rmp.fw_page_reclaim(p << PAGE_SHIFT) != RmpStatus.SUCCESS:
                    self.snp_leaked.append(p)
                    ok = False
                    continue
            if self.rmp_make_shared(p, PageSize.SIZE_4K, kernel=True) != RmpStatus.SUCCESS:
                self.snp_leaked.append(p)
                ok = False
                continue
            self.snp_pages.pop(p, None)
        return ok

    def snp_free_firmware_pages(self, pfn: int, order: int) -> None:
        """``__snp_free_firmware_pages()``: reclaim, then ``__free_pages`` (nothing freed if the reclaim failed)."""
        if self.snp_reclaim_pages(pfn, 1 << order):
            self.free(pfn, order)

    def snp_free_vmsa(self, pfn: int) -> None:
        """``sev_free_vcpu()``: "the VMSA was marked in the RMP table as a guest-owned page. Transition the page to
        hypervisor state before releasing it back to the system" (``kvm_rmp_make_shared``), then ``__free_page``;
        a VMSA never made private (the launch did not finish) is freed directly."""
        if pfn in self.snp_pages and not self.snp_reclaim_pages(pfn, 1, firmware=False):
            return
        self.free(pfn, 0)

    def snp_init(self) -> None:
        """SNP platform init (``__sev_snp_init_locked`` then ``__sev_platform_init_handle_tmr``,
        drivers/crypto/ccp/sev-dev.c): with SNP initialised the SEV-ES TMR is allocated as firmware pages, 2 MiB
        ("SNP_TMR_SIZE", 2M-aligned: an order-9 ``__snp_alloc_firmware_pages``). [I] The SNP_INIT_EX HV-Fixed
        ranges (``snp_filter_reserved_mem_regions``: e820-reserved memory) are not RAM the allocator manages and
        are left out; the init-ex NV buffer (only with ``init_ex_path``) too."""
        if self.snp_tmr is None:
            self.snp_tmr = self.snp_alloc_firmware_pages(SNP_TMR_ORDER, "sev-es-tmr")

    # ------------------------------------------------------------------ SNP exports KVM calls (arch/x86/virt/svm/sev.c)
    def psmash(self, pfn: int) -> RmpStatus:
        """``psmash()`` (KVM's ``snp_rmptable_psmash`` aligns ``pfn`` down to 2M): split the 2M RMP entry holding
        ``pfn`` into 512 4K entries, keeping their Validated bits."""
        self.charge("psmash", self.costs.psmash_ns)
        return self.rmp.psmash((pfn // PAGES_PER_2M * PAGES_PER_2M) << PAGE_SHIFT)

    def snp_rmpopt_all_physmem(self) -> None:
        """``snp_rmpopt_all_physmem()`` (RMPOPT v8 5/7), called by KVM when an SNP VM is destroyed: re-arm the
        delayed rescan (nothing without RMPOPT)."""
        if self.rmpopt is not None:
            self.rmpopt.snp_rmpopt_all_physmem()

    def snp_lookup_rmpentry(self, pfn: int) -> tuple[bool, PageSize]:
        """``snp_lookup_rmpentry(pfn, &assigned, &level)``: ``assigned`` from the 4K entry, ``level`` from the
        2M-aligned entry (linux-snp-host.md §1)."""
        size = self.rmp.assigned_size(pfn)
        return (size is not None, PageSize.SIZE_4K if size is None else size)

    def rmp_assigned(self, pfns: IntArray) -> npt.NDArray[np.bool_]:
        """``snp_lookup_rmpentry`` over many frames: whether each is assigned."""
        return self.rmp.assigned_mask(pfns)

    def rmp_assigned_2m(self, pfns: IntArray) -> npt.NDArray[np.bool_]:
        """``snp_lookup_rmpentry`` over many frames: whether each is assigned with a 2M entry."""
        return self.rmp.assigned_2m_mask(pfns)

    def is_pfn_range_shared(self, pfn: int, npages: int) -> bool:
        """KVM's ``is_pfn_range_shared()`` (arch/x86/kvm/svm/sev.c): no frame of the range is assigned."""
        if npages == PAGES_PER_2M and pfn % PAGES_PER_2M == 0:
            return self.rmp.assigned_in_2m(pfn) == 0
        return self.rmp.assigned_pages(pfn, npages).size == 0

    # ------------------------------------------------------------------ region lifetime (restore points)
    def register_frames(self, pfns: IntArray) -> None:
        """``MEM_ENCRYPT_REG_REGION`` / guest memory registration of these frames: ``bulk`` splits every 2M range
        holding one of them to 4K."""
        if self.policy.directmap == "bulk" and pfns.size:
            s0, m0 = self.directmap.split_count, self.directmap.merge_count
            self._split_2m_of(pfns)
            self._charge_directmap(s0, m0)

    def unregister_frames(self, pfns: IntArray) -> int:
        """``MEM_ENCRYPT_UNREG_REGION``: with ``directmap_restore = on-unregister``, re-merge what is clean."""
        return self._restore_point(pfns, "on-unregister")

    def release_frames(self, pfns: IntArray) -> int:
        """guest_memfd released these frames (the explicit release point of UPM): ``on-release`` re-merges."""
        return self._restore_point(pfns, "on-release")

    def _restore_point(self, pfns: IntArray, when: str) -> int:
        if self.policy.directmap_restore != when or pfns.size == 0:
            return 0
        s0, m0 = self.directmap.split_count, self.directmap.merge_count
        merged = self.merge_clean(unique_ints(pfns // PAGES_PER_2M))
        self._charge_directmap(s0, m0)
        return merged

    def merge_clean(self, idx2m: IntArray) -> int:
        """Merge each listed 2M range that holds no assigned page, then each GiB that became all-2M."""
        merges = 0
        for idx in idx2m:
            i = int(idx)
            if self.rmp.assigned_in_2m(i * PAGES_PER_2M) == 0:
                merges += self.directmap.merge_2m(i)
        for gb in unique_ints(idx2m // (PAGES_PER_1G // PAGES_PER_2M)):
            merges += self.directmap.merge_1g(int(gb))
        return merges

    # ------------------------------------------------------------------ guest_memfd direct-map removal (NODM)
    def folio_zap_direct_map(self, pfns: IntArray) -> None:
        """``folio_zap_direct_map()`` (NODM v11 02/16, ``set_direct_map_valid_noflush(..., false)``) of the frames
        still present: their entries become not present, large mappings split to 4K first (the flush is
        optional in the series and not charged beyond the splits')."""
        pfns = np.asarray(pfns, dtype=np.int64)
        if pfns.size == 0:
            return
        live = np.sort(pfns[self.directmap.levels_of(pfns) != NOT_PRESENT])
        s0, m0 = self.directmap.split_count, self.directmap.merge_count
        self.directmap.remove_pages(live)
        self._charge_directmap(s0, m0)

    def folio_restore_direct_map(self, pfns: IntArray) -> None:
        """``folio_restore_direct_map()``: the frames' 4K entries present again; nothing merges (NODM: "direct map
        entries only restored when the folios are freed", at 4K)."""
        pfns = np.asarray(pfns, dtype=np.int64)
        if pfns.size == 0:
            return
        gone = np.sort(pfns[self.directmap.levels_of(pfns) == NOT_PRESENT])
        self.directmap.restore_pages(gone)

    def clflush_cache_range(self, pfns: IntArray, path: str) -> bool:
        """``clflush_cache_range(__va(pfn_to_hpa(pfn)), ...)`` over frames: CLFLUSH takes a #PF on a not-present
        linear address like a read, so the first not-present frame oopses; returns False if it crashed."""
        pfns = np.asarray(pfns, dtype=np.int64)
        if pfns.size == 0:
            return True
        bad = np.flatnonzero(self.directmap.levels_of(pfns) == NOT_PRESENT)
        if bad.size:
            self._oops(int(pfns[bad[0]]), path, "not-present", 0)
            return False
        return True

    # ------------------------------------------------------------------ kernel accesses (arch/x86/mm/fault.c)
    def kernel_read(self, pfn: int, path: str) -> bool:
        """A kernel read through the direct map. Reads are not RMP-checked; a not-present entry oopses."""
        if self.directmap.level(pfn) is None:
            self._oops(pfn, path, "not-present", 0)
            return False
        return True

    def kernel_write(self, pfn: int, path: str) -> bool:
        """A kernel write through the direct map; returns False if it crashed the host."""
        level = self.directmap.level(pfn)
        if level is None:
            self._oops(pfn, path, "not-present", 0x2)
            return False
        if self.rmp.assigned_in_2m(pfn) == 0:
            return True  # nothing assigned in the 2M range: no mapping size can make this write fault
        try:
            self.rmp.check_host_write(pfn << PAGE_SHIFT, level)
        except HostPageFault as fault:
            return self._handle_rmp_fault(pfn, level, path, fault)
        return True

    def kernel_write_range(self, pfns: IntArray, path: str) -> int:
        """:meth:`kernel_write` on each frame in order (page clearing, copies); returns the number of crashes."""
        self.charge("page_clear", int(pfns.size) * self.costs.page_clear_ns, int(pfns.size))
        before = self.host_crash_count
        for pfn in np.asarray(pfns, dtype=np.int64).tolist():
            self.kernel_write(pfn, path)
        return self.host_crash_count - before

    def _handle_rmp_fault(self, pfn: int, level: PageSize, path: str, fault: HostPageFault) -> bool:
        self.host_rmp_fault_count += 1
        self.charge("host_fault", self.costs.host_fault_ns)
        if self.policy.rmp_fault != "fixup":
            self._oops(pfn, path, "rmp", fault.error_code)
            return False
        if not self.fixup_rmp_fault(pfn, level):
            self._oops(pfn, path, "rmp", fault.error_code)
            return False
        return True

    def fixup_rmp_fault(self, pfn: int, level: PageSize) -> bool:
        """The ``fixup`` #PF handler: make every assigned page the faulting write (to ``pfn`` through a mapping of
        ``level``) depends on shared, then retry the write, which now succeeds. Returns False, with nothing
        changed, for a write to a host SNP page itself (:attr:`snp_pages`): [I-model] the handler cannot make it
        shared (a firmware page is immutable; a VMSA is the guest's vCPU state), so the fault is fatal."""
        if pfn in self.snp_pages:
            return False
        if level == PageSize.SIZE_4K:
            victims = np.array([pfn], dtype=np.int64)
        else:
            head = pfn // PAGES_PER_2M * PAGES_PER_2M
            victims = self.rmp.assigned_pages(head, PAGES_PER_2M)
            if any(int(v) in self.snp_pages for v in victims):
                # [I-model] a host-kernel SNP page (VMSA, firmware page) cannot be made shared by the host (it is
                # immutable, or the guest's running VMSA): the handler splits the mapping to 4K and retries, so
                # only writes to the page itself would still fault
                s0, m0 = self.directmap.split_count, self.directmap.merge_count
                self.directmap.set_4k(pfn)
                self._charge_directmap(s0, m0)
                if self.rmp.assigned_size(pfn) is None:
                    return True  # the retried write through the 4K mapping passes the check
                level = PageSize.SIZE_4K
                victims = np.array([pfn], dtype=np.int64)
        for v in victims.tolist():
            entry = self.rmp.rmpread(v << PAGE_SHIFT)
            if not entry.assigned:
                continue  # already made shared with its 2M entry
            if entry.page_size == PageSize.SIZE_2M:
                self.rmp_make_shared(v // PAGES_PER_2M * PAGES_PER_2M, PageSize.SIZE_2M)
            else:
                self.rmp_make_shared(v, PageSize.SIZE_4K)
        self.fixup_page_count += int(victims.size)
        for listener in self.fixup_listeners:
            listener(victims)
        self.rmp.check_host_write(pfn << PAGE_SHIFT, level)  # the retried write now succeeds
        return True

    def _oops(self, pfn: int, path: str, kind: str, error_code: int) -> None:
        self.oops(pfn, path, kind, error_code)

    def oops(self, pfn: int, path: str, kind: str, error_code: int, *, context: str = "task") -> None:
        """A kernel-mode fault went down ``show_fault_oops``: a host crash, recorded with its context."""
        if kind == "not-present":
            self.host_notpresent_fault_count += 1
        self.charge("host_fault", self.costs.host_fault_ns)
        self.crashes.append(Crash(int(self.clock()), path, pfn, kind, error_code, str(context)))


PATH_ZERO = "mm/page_alloc.c:kernel_init_pages"
#: ``SNP_TMR_SIZE`` (2 MiB, drivers/crypto/ccp/sev-dev.c) as a page order
SNP_TMR_ORDER = 9
#: ``/sys/kernel/mm/transparent_hugepage/enabled`` values
THP_MODES = ("always", "madvise", "never")


def _expand(pfns: IntArray, order: int) -> IntArray:
    """All frames of the 2^order blocks starting at ``pfns``."""
    if order == 0:
        return np.asarray(pfns, dtype=np.int64)
    return (np.asarray(pfns, dtype=np.int64)[:, None] + np.arange(1 << order, dtype=np.int64)).ravel()
