"""State machine over HostKernel (RMP + direct map + #PF handler) under every preset, with the policy invariants.

Invariants (issues 2 and 12; linux-snp-host.md §3, §9, amd-snp-arch.md §7):
- the DirectMap counters equal a recount and always sum to the direct-mapped memory (direct_pages_count[] counts
  entries, present or not), on a flat host and on a server e820 layout with the ISA hole and the RMP table;
- no large mapping ever covers an assigned 4K RMP entry unless the policy allows it (``keep``): ``split``/``bulk``
  map 2M ranges holding a 4K-private page at 4K; ``unmap``/``unmap-nosplit`` never map an assigned page at all;
- a kernel write either succeeds on a page whose 2M range it may write, or crashes / is fixed up; after a
  successful write under ``fixup`` the written page's RMP check passes;
- with ``oops``, every RMP fault is a crash; with ``fixup``, none is;
- the memory picture (``snpsim.host.blockmap``) agrees with a frame-by-frame recount from the frame tags, the
  RMP and the direct map.
- the allocator (issue 12): the buddy free lists are consistent (``BuddyAllocator.check_invariants``: aligned,
  disjoint, coalesced, each on its pageblock's migratetype list) and the frame table's FREE tags are exactly the
  buddy's free frames; compaction keeps every movable page (it moves them) and moves nothing else.
- hugetlb (mm/hugetlb.c): reservations never exceed the pool's free pages (``hugetlb_reserve_pages`` gathers
  surplus pages or fails whole), the frames tagged as the pool are exactly its free pages, the surplus pages are at
  most the pool's free and faulted pages, and unreserving everything after freeing every page leaves no pool.
"""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from snpsim.host import HostKernel, Owner, server_memory_map
from snpsim.host import blockmap as bm
from snpsim.hw import HostPageFault, PageSize
from snpsim.policy import presets

GIB = 262144
NFRAMES = GIB + 3 * 512 + 7  # one GiB, three 2M ranges mapped at 2M and a 4K tail
# The server layout of the same DRAM (all below the PCI hole): the ISA range [640K, 1M) and the RMP table at
# 277M, 5 MiB long ((NFRAMES * 16 + 16K) rounded up to 1M), cut the first GiB: no 1G mapping, 4K around both.
RMP_LO, RMP_HI = 277 * 256, 282 * 256
# Interesting frames: inside the first GiB (first two 2M ranges), around the RMP table, at the GiB's end, and in
# the 2M/4K-mapped tail.
PFNS = st.one_of(
    st.integers(0, 1023), st.integers(RMP_LO - 600, RMP_HI + 600), st.integers(GIB - 600, GIB + 3 * 512 + 6)
)
HEADS_2M = st.sampled_from([0, 512, 138 * 512, 139 * 512, 141 * 512, GIB - 512, GIB, GIB + 512])


class HostMachine(RuleBasedStateMachine):
    @initialize(name=st.sampled_from(sorted(presets)), server=st.booleans())
    def setup(self, name: str, server: bool) -> None:
        self.policy = presets[name]
        if server:
            mm = server_memory_map(NFRAMES * 4096)
            assert mm.rmp == (RMP_LO * 4096, RMP_HI * 4096)
            self.h = HostKernel(NFRAMES, self.policy, memory_map=mm)
            self.mapped = NFRAMES - (RMP_HI - RMP_LO)  # everything but the RMP: the ISA range is mapped
        else:
            self.h = HostKernel(NFRAMES, self.policy)
            self.mapped = NFRAMES
        self.unit = self.policy.private_page_bytes // 4096
        #: blocks allocated for owners compaction never moves (page cache is left to it, untracked)
        self.allocated: list[tuple[int, int]] = []
        #: hugetlb pages reserved and not faulted, and faulted pages
        self.hugetlb_resv = 0
        self.hugetlb_pages: list[int] = []

    def _unit_ok(self, pfn: int) -> bool:
        # With 2M+ private granularity, guest memory comes in whole aligned folios: keep the 4K tail out.
        return self.unit == 1 or pfn < GIB + 3 * 512

    @rule(pfn=PFNS, gfn=st.integers(0, 4096))
    def make_private_4k(self, pfn: int, gfn: int) -> None:
        if self._unit_ok(pfn):
            self.h.rmp_make_private(pfn, gfn * 4096, PageSize.SIZE_4K, 1)

    @rule(head=HEADS_2M)
    def make_private_2m(self, head: int) -> None:
        self.h.rmp_make_private(head, head * 4096, PageSize.SIZE_2M, 1)

    @rule(pfn=PFNS)
    def make_shared_4k(self, pfn: int) -> None:
        self.h.rmp_make_shared(pfn, PageSize.SIZE_4K)

    @rule(head=HEADS_2M)
    def make_shared_2m(self, head: int) -> None:
        self.h.rmp_make_shared(head, PageSize.SIZE_2M)

    @rule(head=HEADS_2M)
    def psmash(self, head: int) -> None:
        self.h.rmp.psmash(head * 4096)

    @rule(pfn=PFNS, n=st.integers(1, 700))
    def private_range(self, pfn: int, n: int) -> None:
        n = min(n, NFRAMES - pfn)
        if self._unit_ok(pfn + n - 1):
            self.h.rmp_make_private_range(pfn, n, 0, 1)

    @rule(pfn=PFNS, n=st.integers(1, 700))
    def shared_range(self, pfn: int, n: int) -> None:
        self.h.rmp_make_shared_range(pfn, min(n, NFRAMES - pfn))

    @rule(pfn=PFNS)
    def release(self, pfn: int) -> None:
        self.h.release_frames(np.array([pfn]))

    @rule(pfn=PFNS)
    def register(self, pfn: int) -> None:
        self.h.register_frames(np.array([pfn]))

    @rule(pfn=PFNS)
    def unregister(self, pfn: int) -> None:
        self.h.unregister_frames(np.array([pfn]))

    @rule(pfn=PFNS)
    def kernel_write(self, pfn: int) -> None:
        crashes = self.h.host_crash_count
        faults = self.h.host_rmp_fault_count
        level = self.h.directmap.level(pfn)
        ok = self.h.kernel_write(pfn, "test")
        if ok:
            assert level is not None
            self.h.rmp.check_host_write(pfn * 4096, level)  # must not raise now
        else:
            assert self.h.host_crash_count == crashes + 1
        if self.policy.rmp_fault == "fixup":
            assert self.h.host_crash_count - crashes <= (1 if level is None else 0)
        else:
            assert self.h.host_rmp_fault_count - faults == (self.h.host_crash_count - crashes) - (level is None)

    @rule(
        pfn=PFNS,
        n=st.integers(1, 700),
        owner=st.sampled_from([o for o in Owner if o not in (Owner.FREE, Owner.RESERVED, Owner.HUGETLB_POOL)]),
    )
    def tag(self, pfn: int, n: int, owner: Owner) -> None:
        """Give allocated frames another owner (the memory picture's recount must follow); free frames stay the
        allocator's, e820 holes and the RMP stay reserved, free hugetlb pool pages the pool's."""
        tags = self.h.frames.tags(pfn, min(n, NFRAMES - pfn))
        keep = (tags == Owner.RESERVED) | (tags == Owner.FREE) | (tags == Owner.HUGETLB_POOL)
        for k in np.flatnonzero(~keep).tolist():
            self.h.frames.set_range(pfn + k, 1, owner)

    @invariant()
    def blockmap_agrees_with_a_frame_by_frame_recount(self) -> None:
        m = bm.snapshot(self.h)
        nb = -(-NFRAMES // 512)
        pad = nb * 512 - NFRAMES
        tags = np.concatenate([self.h.frames.tags(0, NFRAMES), np.zeros(pad, dtype=np.uint8)]).reshape(nb, 512)
        assigned = np.zeros(nb * 512, dtype=bool)
        assigned[self.h.rmp.assigned_pages(0, NFRAMES)] = True
        assigned = assigned.reshape(nb, 512)
        levels = np.concatenate([self.h.directmap.levels(0, NFRAMES), np.full(pad, -9, np.int8)]).reshape(nb, 512)
        ram = np.full(nb, 512)
        ram[-1] -= pad
        category = np.zeros(256, dtype=np.uint8)  # tag -> picture category (blockmap's STATES)
        for owner, cat in (
            (Owner.FREE, bm.FREE), (Owner.KERNEL, bm.KERNEL), (Owner.IMAGE, bm.KERNEL), (Owner.USER, bm.USER),
            (Owner.RESERVED, bm.KERNEL), (Owner.KERNEL_RECLAIMABLE, bm.KERNEL),
            (Owner.HUGETLB_POOL, bm.HUGETLB), (Owner.VMM_SHARED, bm.SHARED), (Owner.VMM_PRIVATE, bm.SHARED),
            (Owner.GMEM, bm.SHARED),
        ):  # fmt: skip
            category[owner] = cat
        guest = np.isin(tags, [Owner.FREE, Owner.VMM_SHARED, Owner.VMM_PRIVATE, Owner.GMEM])
        cats = np.where(assigned & guest, bm.PRIVATE, category[tags])
        if pad:
            cats[-1, 512 - pad :] = 255  # beyond the end of memory
        per = np.stack([(cats == c).sum(axis=1) for c in range(bm.PRIVATE + 1)], axis=1)
        used = per[:, bm.KERNEL :].sum(axis=1)
        # the most frequent used category, ties to the lower code; FREE when nothing is used
        best = np.array([max(range(bm.KERNEL, bm.PRIVATE + 1), key=lambda c: (row[c], -c)) for row in per])
        state = np.where(used > 0, best, bm.FREE)
        lo, hi = levels.min(axis=1, initial=9, where=levels != -9), levels.max(axis=1, where=levels != -9, initial=-9)
        level = np.select(
            [(lo == 2) & (hi == 2), (lo == 1) & (hi == 1), (lo == 0) & (hi == 0), hi == -1],
            [bm.L_1G, bm.L_2M, bm.L_4K, bm.L_NONE],
            bm.L_4K_HOLES,
        )
        assert m.state.tolist() == state.tolist()
        assert m.level.tolist() == level.tolist()
        assert m.used.tolist() == used.tolist()
        assert m.assigned.tolist() == assigned.sum(axis=1).tolist()
        assert m.ram.tolist() == ram.tolist()

    @rule(
        order=st.sampled_from([0, 0, 1, 3, 9]),
        owner=st.sampled_from([Owner.USER, Owner.GMEM, Owner.KERNEL, Owner.VMM_SHARED, Owner.KERNEL_RECLAIMABLE]),
        count=st.integers(1, 40),
    )
    def alloc(self, order: int, owner: Owner, count: int) -> None:
        got = self.h.alloc_bulk(order, count, owner, zero=False)
        if got is not None and owner != Owner.USER:
            self.allocated.extend((int(p), order) for p in got)

    @precondition(lambda self: self.allocated)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        order = data.draw(st.sampled_from(sorted({o for _, o in self.allocated})))
        same = [b for b in self.allocated if b[1] == order]
        chosen = data.draw(st.lists(st.sampled_from(same), unique=True, min_size=1, max_size=len(same)))
        for b in chosen:
            self.allocated.remove(b)
        self.h.free_bulk(np.array([p for p, _ in chosen], dtype=np.int64), order)

    @rule(count=st.integers(0, 24))
    def hugetlb_mmap(self, count: int) -> None:
        """A hugetlbfs mmap: its reservation is had whole or not at all."""
        h = self.h
        resv, free = h.hugetlb_reserved(9), h.hugetlb_pool_free(9)
        if h.hugetlb_reserve_pages(9, count):
            self.hugetlb_resv += count
            assert h.hugetlb_reserved(9) == resv + count
        else:
            assert (h.hugetlb_reserved(9), h.hugetlb_pool_free(9)) == (resv, free)

    @precondition(lambda self: self.hugetlb_resv > 0)
    @rule()
    def hugetlb_fault(self) -> None:
        pfn = self.h.alloc(9, Owner.VMM_SHARED, hugetlb=True, reserved=True, zero=False)
        assert pfn is not None  # a reservation guarantees the fault
        self.hugetlb_resv -= 1
        self.hugetlb_pages.append(pfn)

    @precondition(lambda self: self.hugetlb_pages)
    @rule(data=st.data())
    def hugetlb_free(self, data: st.DataObject) -> None:
        pfn = data.draw(st.sampled_from(self.hugetlb_pages))
        self.hugetlb_pages.remove(pfn)
        self.h.free(pfn, 9)

    @precondition(lambda self: self.hugetlb_resv > 0)
    @rule(data=st.data())
    def hugetlb_munmap(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, self.hugetlb_resv))
        self.hugetlb_resv -= n
        self.h.hugetlb_unreserve_pages(9, n)

    @invariant()
    def hugetlb_accounting(self) -> None:
        h = self.h
        pool = h.hugetlb_pool_free(9)
        assert h.hugetlb_reserved(9) == self.hugetlb_resv <= pool
        assert h.frames.count(Owner.HUGETLB_POOL) == pool * 512
        assert 0 <= h.hugetlb_surplus(9) <= pool + len(self.hugetlb_pages)
        if not self.hugetlb_resv and not self.hugetlb_pages:
            assert pool == h.hugetlb_surplus(9) == 0  # no pool at boot: every page was gathered as surplus

    @rule()
    def compact(self) -> None:
        before = {o: self.h.frames.count(o) for o in Owner}
        pinned = [self.h.frames.tags(p, 1 << o).copy() for p, o in self.allocated]
        self.h.compactor.proactive(proactiveness=100, budget=64)
        assert {o: self.h.frames.count(o) for o in Owner} == before  # migration moves pages, never loses one
        assert all(
            np.array_equal(self.h.frames.tags(p, 1 << o), t) for (p, o), t in zip(self.allocated, pinned, strict=True)
        )

    @invariant()
    def allocator_consistent(self) -> None:
        b = self.h.buddy
        b.check_invariants()
        free = np.zeros(NFRAMES, dtype=bool)
        for pfn, order in b.free_blocks():
            free[pfn : pfn + (1 << order)] = True
        assert np.array_equal(free, self.h.frames.tags(0, NFRAMES) == Owner.FREE)
        ram = sum(hi - lo for lo, hi in self.h.memory_map.ram_ranges)
        assert b.used_frames == ram - int(free.sum())

    @invariant()
    def directmap_consistent(self) -> None:
        dm = self.h.directmap
        dm.check_invariants()
        c4k, c2m, c1g, absent = dm.count_levels(0, NFRAMES)
        # /proc/meminfo's three lines always sum to the direct-mapped memory, whatever was removed
        assert dm.directmap_4k + dm.directmap_2m + dm.directmap_1g == dm.mapped_bytes == self.mapped * 4096
        assert dm.present_bytes == (NFRAMES - absent) * 4096
        assert c4k * 4096 <= dm.directmap_4k and c2m * 4096 <= dm.directmap_2m and c1g * 4096 <= dm.directmap_1g
        assert dm.level2_splits + dm.level3_splits == dm.split_count
        # the RMP table is never mapped; the frames outside the RAM stay reserved
        assert dm.count_levels(RMP_LO, RMP_HI - RMP_LO)[3] == RMP_HI - RMP_LO or self.mapped == NFRAMES
        assert self.h.buddy.free_frames + self.h.buddy.used_frames == sum(
            hi - lo for lo, hi in self.h.memory_map.ram_ranges
        )
        if self.mapped < NFRAMES:  # server layout (on the flat one the frame is RAM, which the tag rule may retag)
            assert self.h.frames.get(RMP_LO) == Owner.RESERVED

    @invariant()
    def no_large_mapping_over_a_mixed_2m_range(self) -> None:
        """``split``/``bulk``: a present 2M/1G mapping never covers a 2M range mixing private and shared pages
        (PSMASH of a 2M private entry leaves 512 private 4K entries, which a large mapping may still cover: no
        hypervisor-owned page is there to write). ``unmap``/``unmap-nosplit``: no private page is mapped."""
        dm = self.policy.directmap
        if dm == "keep":
            return
        levels = self.h.directmap.levels(0, NFRAMES)
        assigned = np.zeros(NFRAMES, dtype=bool)
        assigned[self.h.rmp.assigned_pages(0, NFRAMES)] = True
        if dm in ("unmap", "unmap-nosplit"):
            assert (levels[assigned] == -1).all()
            return
        full = NFRAMES // 512 * 512
        count = assigned[:full].reshape(-1, 512).sum(axis=1)
        large = (levels[:full].reshape(-1, 512) >= int(PageSize.SIZE_2M)).any(axis=1)
        mixed = (count > 0) & (count < 512)
        assert not (large & mixed).any(), np.flatnonzero(large & mixed)

    @invariant()
    def kernel_writes_to_shared_neighbours_succeed_unless_keep(self) -> None:
        if self.policy.directmap == "keep":
            return
        for pfn in (3, 700, GIB - 1, GIB + 600):
            level = self.h.directmap.level(pfn)
            if level is None or self.h.rmp.rmpread(pfn * 4096).assigned:
                continue
            try:
                self.h.rmp.check_host_write(pfn * 4096, level)
            except HostPageFault as exc:  # pragma: no cover - an invariant violation
                raise AssertionError(f"write to shared pfn {pfn} through {level!r} would fault") from exc


HostMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestHostMachine = HostMachine.TestCase
