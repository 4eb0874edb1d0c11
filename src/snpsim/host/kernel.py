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
  would hit a hypervisor-owned page that shares a 2M direct-map mapping with a private page.

Hardware checks are those of :class:`snpsim.hw.rmp.Rmp`: a write through a 2M or 1G mapping faults if any 4K
page of the enclosing 2M range is assigned (amd-snp-arch.md §7).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from snpsim.host.buddy import BuddyAllocator
from snpsim.host.cpu import CpuAccount
from snpsim.host.directmap import NOT_PRESENT, DirectMap
from snpsim.host.e820 import HostMemoryMap, flat_memory_map
from snpsim.host.frames import FrameTable, Owner
from snpsim.host.svm import GuestMode
from snpsim.hw.costs import CostModel
from snpsim.hw.rmp import Rmp
from snpsim.hw.types import PAGE_SHIFT, PAGES_PER_1G, PAGES_PER_2M, HostPageFault, PageSize, RmpStatus
from snpsim.policy import Policy
from snpsim.segments import SCALAR_MAX, unique_ints

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Crash:
    """One host crash: a kernel-mode fault that went down the oops path."""

    time_ns: int
    path: str
    pfn: int
    kind: str  # "rmp" or "not-present"
    error_code: int


class HostKernel:
    """Physical memory, the direct map and the RMP of one host, driven by a policy's knobs.

    ``memory_map`` is the host's e820 layout (:class:`snpsim.host.e820.HostMemoryMap`; None: all of
    ``[0, nframes)`` RAM, as unit tests use); with a map, ``nframes`` must be its ``max_pfn``. The direct map is
    built on its memblock memory (``init_mem_mapping()``), the allocator gets its RAM ranges, the frames outside
    them are tagged :attr:`Owner.RESERVED`, and the RMP covers ``memory_map.rmp_pages`` (``[0, max_pfn)`` and the
    table itself). ``clock`` returns the current simulated time in ns (the SimPy environment's ``now``). Every operation
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
    ) -> None:
        self.nframes = int(nframes)
        if memory_map is not None and memory_map.max_pfn != self.nframes:
            raise ValueError(f"nframes {self.nframes} is not the memory map's max_pfn {memory_map.max_pfn}")
        #: the host's e820 layout (None: all of [0, nframes) RAM)
        self.memory_map = memory_map or flat_memory_map(self.nframes)
        self.policy = policy
        self.costs = costs or CostModel()
        self.rmp = Rmp(self.memory_map.rmp_pages)  # covers [0, max_pfn) and the RMP itself
        self.directmap = DirectMap(self.nframes, max_level=max_level, memory=self.memory_map.memory)
        #: the CPU in guest mode: the hardware checks of SNP guests' accesses and PVALIDATEs
        self.svm = GuestMode(self)
        self.buddy = BuddyAllocator(self.nframes, ranges=self.memory_map.ram_ranges)
        self.frames = FrameTable(self.nframes)
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
        #: frames made shared by the ``fixup`` #PF handler (the guest will see #VC on its next private access)
        self.fixup_page_count = 0
        #: called with the array of PFNs the fixup handler made shared (observers: tests, reports); KVM needs no
        #: notification: the guest's next access to such a page fails the hardware RMP check and re-faults
        self.fixup_listeners: list[Callable[[IntArray], None]] = []
        #: movable host pages (page cache / anonymous) oldest first, as the kernel's LRU lists (mm/vmscan.c);
        #: compaction replaces a migrated page here, as migration rewrites the owner's mapping
        self.lru: OrderedDict[int, None] = OrderedDict()
        #: pages moved by direct compaction to make room for high-order allocations
        self.compaction_migrated = 0
        self._removal_pages = (
            self.policy.private_page_bytes >> PAGE_SHIFT if self.policy.directmap == "unmap-nosplit" else 1
        )

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
    def alloc(self, order: int, owner: Owner, *, zero: bool | None = None, path: str = "") -> int | None:
        """Allocate a 2^order block for ``owner``; zero it through the direct map (``kernel_init_pages``).

        A high-order request that finds no free block tries direct compaction first (:meth:`compact`)."""
        pfn = self.buddy.alloc(order)
        if pfn is None and order > 0 and self.compact(order):
            pfn = self.buddy.alloc(order)
        if pfn is None:
            return None
        self.frames.set_range(pfn, 1 << order, owner)
        if self.zero_on_alloc if zero is None else zero:
            self.kernel_write_range(np.arange(pfn, pfn + (1 << order), dtype=np.int64), path or PATH_ZERO)
        return pfn

    def alloc_bulk(self, order: int, count: int, owner: Owner, *, zero: bool | None = None) -> IntArray | None:
        """``count`` blocks of 2^order (all or nothing), each zeroed like :meth:`alloc`."""
        pfns = self.buddy.alloc_bulk(order, count)
        if pfns is None and order > 0:
            pfns = self._alloc_compacting(order, count)
        if pfns is None:
            return None
        frames = _expand(pfns, order)
        self.frames.set_many(frames, owner)
        if self.zero_on_alloc if zero is None else zero:
            self.kernel_write_range(frames, PATH_ZERO)
        return pfns

    def _alloc_compacting(self, order: int, count: int) -> IntArray | None:
        got: list[int] = []
        for _ in range(count):
            pfn = self.buddy.alloc(order)
            if pfn is None and self.compact(order):
                pfn = self.buddy.alloc(order)
            if pfn is None:
                for p in got:
                    self.buddy.free(p, order)
                return None
            got.append(pfn)
        return np.array(got, dtype=np.int64)

    def compact(self, order: int) -> bool:
        """Direct compaction (``mm/compaction.c`` ``__alloc_pages_direct_compact``): free one aligned block of
        2^order frames by migrating the movable pages out of it.

        The block chosen is the one holding only free and movable (``USER``) frames with the fewest movable
        pages; its free frames are isolated (``take_page_off_buddy``), each movable page is copied to a new
        frame through the direct map (``migrate_pages`` → ``folio_mc_copy``: a read of the source and a write of
        the destination, both RMP/present-checked like any kernel access) and the block is freed whole.
        Returns False if no such block exists or memory runs out."""
        n = 1 << order
        best, best_users = -1, n + 1
        for s, seg in enumerate(self.frames.segments()):
            if seg is None or seg.size < n:
                continue
            blocks = seg[: seg.size // n * n].reshape(-1, n)
            movable = ((blocks == Owner.FREE) | (blocks == Owner.USER)).all(axis=1)
            users = (blocks == Owner.USER).sum(axis=1)
            cand = np.flatnonzero(movable & (users > 0))
            if cand.size:
                k = int(cand[np.argmin(users[cand])])
                if users[k] < best_users:
                    best, best_users = (s * self.frames.segment_pages + k * n), int(users[k])
        if best < 0:
            return False
        lo = best
        tags = self.frames.tags(lo, n)
        free_frames = np.flatnonzero(tags == Owner.FREE) + lo
        for f in free_frames.tolist():
            self.buddy.take_page_off_buddy(f)
        migrated: list[int] = []
        for src in (np.flatnonzero(tags == Owner.USER) + lo).tolist():
            dst = self.buddy.alloc(0)
            if dst is None:  # out of memory: give back what was isolated or vacated, the block stays fragmented
                for f in [*free_frames.tolist(), *migrated]:
                    self.frames.set_range(f, 1, Owner.FREE)
                    self.buddy.free(f, 0)
                return False
            migrated.append(src)
            self.frames.set_range(dst, 1, Owner.USER)
            self.kernel_read(src, _MIGRATE_PATH)
            self.kernel_write(dst, _MIGRATE_PATH)
            self.charge("page_copy", self.costs.page_clear_ns)
            if src in self.lru:
                del self.lru[src]
                self.lru[dst] = None
            self.compaction_migrated += 1
        self.frames.set_range(lo, n, Owner.FREE)
        self.buddy.free(lo, order)
        return True

    def free(self, pfn: int, order: int) -> None:
        self.buddy.free(pfn, order)
        self.frames.set_range(pfn, 1 << order, Owner.FREE)

    def free_bulk(self, pfns: IntArray, order: int) -> None:
        """Free blocks of 2^order; ValueError (nothing freed) for a double free, found in the frame table."""
        frames = _expand(pfns, order)
        free = np.flatnonzero(self.frames.tags_of(frames) == Owner.FREE)
        if free.size:
            raise ValueError(f"double free: frame {int(frames[free[0]]):#x} is already free")
        self.buddy.free_bulk(pfns, order, check_free=False)
        self.frames.set_many(frames, Owner.FREE)

    # ------------------------------------------------------------------ RMP updates (arch/x86/virt/svm/sev.c)
    def rmp_make_private(self, pfn: int, gpa: int, level: PageSize, asid: int, *, immutable: bool = False) -> RmpStatus:
        """``rmp_make_private()``: adjust the direct map per policy, then RMPUPDATE to guest-owned."""
        s0, m0 = self.directmap.split_count, self.directmap.merge_count
        self._directmap_before_private(pfn, level)
        self._charge_directmap(s0, m0)
        self.charge("rmpupdate", self.costs.rmpupdate_ns)
        return self.rmp.rmpupdate(
            pfn << PAGE_SHIFT, assigned=True, page_size=level, gpa=gpa, asid=asid, immutable=immutable
        )

    def rmp_make_shared(self, pfn: int, level: PageSize) -> RmpStatus:
        """``rmp_make_shared()``: RMPUPDATE to hypervisor-owned, then give the pages back to the direct map."""
        s0, m0 = self.directmap.split_count, self.directmap.merge_count
        if self.policy.directmap == "split" or self.policy.directmap == "bulk":
            self._split_for(pfn, level)  # upstream adjust_direct_map() runs on every rmpupdate
        self.charge("rmpupdate", self.costs.rmpupdate_ns)
        status = self.rmp.rmpupdate(pfn << PAGE_SHIFT, assigned=False, page_size=level)
        if status == RmpStatus.SUCCESS:
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

    def rmp_make_private_pfns(self, pfns: IntArray, gfns: IntArray, asid: int) -> IntArray:
        """4K ``rmp_make_private`` of distinct frames ``pfns`` bound to ``gfns`` (vectorised, any order)."""
        if pfns.size == 0:
            return np.zeros(0, dtype=np.int64)
        s0, m0 = self.directmap.split_count, self.directmap.merge_count
        dm = self.policy.directmap
        if dm in ("split", "bulk"):
            self._split_2m_of(pfns)
        elif dm == "unmap":
            for lo, hi in _runs(np.sort(pfns)):
                if hi - lo == 1:
                    self.directmap.remove_4k(lo)
                else:
                    self.directmap.remove_range(lo, hi - lo)
        elif dm == "unmap-nosplit":
            for block in unique_ints(pfns // self._removal_pages).tolist():
                self._remove_block(block * self._removal_pages)
        self._charge_directmap(s0, m0)
        self.charge("rmpupdate", int(pfns.size) * self.costs.rmpupdate_ns, int(pfns.size))
        return self.rmp.rmpupdate_pfns(pfns, gfns, assigned=True, asid=asid)

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
                for lo, hi in _runs(done):
                    if hi - lo == 1:
                        self.directmap.restore_4k(lo)
                    else:
                        self.directmap.restore_range(lo, hi - lo)
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

    def _directmap_before_private(self, pfn: int, level: PageSize) -> None:
        dm = self.policy.directmap
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

    # ------------------------------------------------------------------ SNP exports KVM calls (arch/x86/virt/svm/sev.c)
    def psmash(self, pfn: int) -> RmpStatus:
        """``psmash()`` (KVM's ``snp_rmptable_psmash`` aligns ``pfn`` down to 2M): split the 2M RMP entry holding
        ``pfn`` into 512 4K entries, keeping their Validated bits."""
        self.charge("psmash", self.costs.psmash_ns)
        return self.rmp.psmash((pfn // PAGES_PER_2M * PAGES_PER_2M) << PAGE_SHIFT)

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
        """:meth:`kernel_write` on each frame (page clearing, copies); returns the number of crashes."""
        self.charge("page_clear", int(pfns.size) * self.costs.page_clear_ns, int(pfns.size))
        before = self.host_crash_count
        # The writes that fault on the initial state (Rmp.check_host_write, vectorised) go through
        # :meth:`kernel_write` in order. Handling one (an oops, or a fixup that makes pages shared and maps them
        # back) never makes another write fault, so skipping the rest gives the outcome of the per-page loop.
        pfns = np.asarray(pfns, dtype=np.int64)
        if pfns.size <= SCALAR_MAX:  # cheaper page by page than the numpy set-up
            for pfn in pfns.tolist():
                self.kernel_write(pfn, path)
            return self.host_crash_count - before
        level = self.directmap.levels_of(pfns)
        risky = (level == NOT_PRESENT) | ((level > PageSize.SIZE_4K) & (self.rmp.assigned_in_2m_of(pfns) > 0))
        small = np.flatnonzero(level == PageSize.SIZE_4K)
        risky[small] = self.rmp.assigned_mask(pfns[small])
        for pfn in pfns[risky].tolist():
            self.kernel_write(pfn, path)
        return self.host_crash_count - before

    def _handle_rmp_fault(self, pfn: int, level: PageSize, path: str, fault: HostPageFault) -> bool:
        self.host_rmp_fault_count += 1
        self.charge("host_fault", self.costs.host_fault_ns)
        if self.policy.rmp_fault != "fixup":
            self._oops(pfn, path, "rmp", fault.error_code)
            return False
        # fixup: make every assigned page the faulting write depends on shared, then retry the write.
        if level == PageSize.SIZE_4K:
            victims = np.array([pfn], dtype=np.int64)
        else:
            head = pfn // PAGES_PER_2M * PAGES_PER_2M
            victims = self.rmp.assigned_pages(head, PAGES_PER_2M)
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
        if kind == "not-present":
            self.host_notpresent_fault_count += 1
        self.charge("host_fault", self.costs.host_fault_ns)
        self.crashes.append(Crash(int(self.clock()), path, pfn, kind, error_code))


PATH_ZERO = "mm/page_alloc.c:kernel_init_pages"
_MIGRATE_PATH = "mm/compaction.c:compact_zone"


def _expand(pfns: IntArray, order: int) -> IntArray:
    """All frames of the 2^order blocks starting at ``pfns``."""
    if order == 0:
        return np.asarray(pfns, dtype=np.int64)
    return (np.asarray(pfns, dtype=np.int64)[:, None] + np.arange(1 << order, dtype=np.int64)).ravel()


def _runs(sorted_pfns: IntArray) -> list[tuple[int, int]]:
    """Maximal runs ``[lo, hi)`` of consecutive values in a sorted array."""
    if sorted_pfns.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_pfns) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [sorted_pfns.size]))
    return [(int(sorted_pfns[s]), int(sorted_pfns[e - 1]) + 1) for s, e in zip(starts, ends, strict=True)]
