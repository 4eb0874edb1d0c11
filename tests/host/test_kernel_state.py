"""State machine over HostKernel (RMP + direct map + #PF handler) under every preset, with the policy invariants.

Invariants (issues 2 and 12; linux-snp-host.md §3, §9, amd-snp-arch.md §7):
- the DirectMap counters equal a recount and always sum to the direct-mapped memory (direct_pages_count[] counts
  entries, present or not), on a flat host and on a server e820 layout with the ISA hole and the RMP table;
- no large mapping ever covers an assigned 4K RMP entry unless the policy allows it (``keep``): ``split``/``bulk``
  map 2M ranges holding a 4K-private page at 4K; ``unmap``/``unmap-nosplit`` never map an assigned page at all;
- a kernel write either succeeds on a page whose 2M range it may write, or crashes / is fixed up; after a
  successful write under ``fixup`` the written page's RMP check passes;
- with ``oops``, every RMP fault is a crash; with ``fixup``, none is.
"""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from snpsim.host import HostKernel, Owner, server_memory_map
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
        assert self.h.frames.get(RMP_LO) == (Owner.RESERVED if self.mapped < NFRAMES else Owner.FREE)

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
