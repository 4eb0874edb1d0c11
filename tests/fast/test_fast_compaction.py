"""The fast engine's compaction (:class:`snpsim.fast.FastCompactor`, a batch of pages per ``migrate_pages``) against
the reference :class:`snpsim.host.compaction.Compactor` (one call per page).

A lockstep machine drives two hosts with the same calls, one with the reference compactor (and the reference
allocator, direct map and RMP), one with the fast compactor (and either the reference components or the fast
engine's): fragmenting page cache, kernel allocations, pages made private in the RMP (faulting the copies'
destination writes through 2M/1G mappings, or removing them from the direct map), sources removed from the direct
map (faulting the copies' reads), host SNP pages, and every caller of compaction (proactive with a budget, direct,
high-order allocations, ``alloc_contig_range`` of a range). After every step the whole state must be equal: frame
tags, the allocator's free lists and pageblock types, LRU order, the direct map, the RMP, crash records in order,
fault counters, every CPU account (totals, per-operation time and counts, in the order operations first appear),
``compaction_migrated`` and the scanners' cached positions. The hand-derived cases pin the crash ordering when the
reads and writes of one batch fault.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from tests.fast.checked import outcome, same_directmap, same_result, same_rmp, same_state

from snpsim.engine import engine
from snpsim.fast import FastCompactor
from snpsim.fast.kernel import SCALAR_MAX
from snpsim.host import HostKernel, Owner
from snpsim.host.buddy import MAX_PAGE_ORDER, Migratetype
from snpsim.host.compaction import PATH_COMPACT, PATH_CONTIG, Compactor
from snpsim.hw.types import PageSize, RmpStatus
from snpsim.policy import Policy, presets

POLICIES: dict[str, Policy] = {
    "fixup": presets["fixup"],  # directmap keep, rmp_fault fixup
    "keep-oops": dataclasses.replace(presets["fixup"], rmp_fault="oops"),
    "upstream": presets["upstream"],  # split
    "unmap": presets["unmap"],
    "unmap-fixup": dataclasses.replace(presets["unmap"], rmp_fault="fixup"),  # a fixup maps pages back
    "hugetlb": presets["hugetlb"],  # unmap-nosplit: private 2M blocks leave the direct map whole
}


class CountingCompactor(FastCompactor):
    """:class:`FastCompactor` counting the batches that took the vectorised path (tests check it was exercised)."""

    batches = 0

    def _migrate_pages(self, srcs: list[int], dsts: list[int], path: str, *, free_source: bool = True) -> None:
        if len(srcs) > SCALAR_MAX:
            CountingCompactor.batches += 1
        super()._migrate_pages(srcs, dsts, path, free_source=free_source)


def build(nframes: int, policy: Policy, compactor: type[Compactor], components: str = "reference") -> HostKernel:
    c = engine(components)
    return HostKernel(nframes, policy, allocator=c.allocator, directmap=c.directmap, rmp=c.rmp, compactor=compactor)


def same_host(a: HostKernel, b: HostKernel) -> None:
    """The whole state compaction can touch, equal on both hosts."""
    same_state(a.buddy, b.buddy)
    same_directmap(a.directmap, b.directmap)
    same_rmp(a.rmp, b.rmp)
    assert np.array_equal(a.frames.array, b.frames.array), "frame tags"
    assert np.array_equal(a.frames._written, b.frames._written), "frame table segments"
    assert list(a.lru) == list(b.lru), "LRU order"
    assert a.crashes == b.crashes
    for name in ("compaction_migrated", "host_rmp_fault_count", "host_notpresent_fault_count", "fixup_page_count"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.compactor._cached == b.compactor._cached, "cached scanner positions"
    assert list(a.accounts) == list(b.accounts)
    for name, x in a.accounts.items():
        y = b.accounts[name]
        assert (x.pending_ns, x.total_ns) == (y.pending_ns, y.total_ns), name
        assert list(x.by_op.items()) == list(y.by_op.items()), name  # in the order operations first appeared
        assert list(x.count_by_op.items()) == list(y.count_by_op.items()), name


def half_page_cache(h: HostKernel, *, lru: bool = True) -> None:
    """Every even frame of memory is page cache (movable, on the LRU), every odd one free."""
    frames = h.alloc_bulk(0, h.buddy.obtainable(0), Owner.USER, zero=False)
    assert frames is not None
    h.free_bulk(frames[frames % 2 == 1], 0)
    if lru:
        h.lru.update(dict.fromkeys(frames[frames % 2 == 0].tolist()))


# ---------------------------------------------------------------------------------------------- hand-derived cases
COMPACTORS = [Compactor, FastCompactor]


@pytest.mark.parametrize("compactor", COMPACTORS)
def test_destination_writes_through_a_2m_mapping_over_a_private_page_crash_in_order(
    compactor: type[Compactor],
) -> None:
    """keep + oops, 4096 frames (ZONE_DMA: 8 pageblocks): even frames page cache on the LRU, odd ones free; frame
    3584 (the top pageblock, where the free scanner starts) made private, frame 10 (a source in pageblock 0)
    removed from the direct map, which splits the 1G mapping to 2M and 10's 2M to 4K. Proactive compaction
    migrates pageblock 0's 256 pages (0, 2, ..., 510) to the top pageblock's free frames (3585, 3587, ...,
    4095; then the score is 75 <= 80, tests/host/test_compaction.py): every write goes through the 2M mapping of
    [3584, 4096), which holds an assigned page, and oopses; the read of frame 10 (the 6th source) oopses between
    the 5th and the 6th write."""
    h = HostKernel(4096, POLICIES["keep-oops"], compactor=compactor)
    half_page_cache(h)
    assert h.rmp_make_private(3584, 0, PageSize.SIZE_4K, 1) == RmpStatus.SUCCESS
    h.directmap.remove_4k(10)
    assert h.directmap.level(3585) == PageSize.SIZE_2M
    assert h.compactor.proactive() == 256
    writes = [(3585 + 2 * i, "rmp") for i in range(256)]
    assert [(c.pfn, c.kind) for c in h.crashes] == [*writes[:5], (10, "not-present"), *writes[5:]]
    assert all(c.path == PATH_COMPACT for c in h.crashes)
    assert h.host_rmp_fault_count == 256 and h.host_notpresent_fault_count == 1
    # an RMP oops charges host_fault twice (the #PF, then show_fault_oops), a not-present one once; one page_copy
    # per page, first charged after the first write's fault
    acct = h.cpu
    assert acct.count_by_op["host_fault"] == 2 * 256 + 1 and acct.count_by_op["page_copy"] == 256
    assert list(acct.by_op) == ["rmpupdate", "host_fault", "page_copy"]
    # the pages moved, their LRU entries replaced in order at the end, the sources freed (pageblock 0 is free)
    assert (h.frames.tags(3585, 511)[::2] == Owner.USER).all()
    assert list(h.lru)[-256:] == [3585 + 2 * i for i in range(256)]
    assert h.buddy.free_head(0) == 9


@pytest.mark.parametrize("compactor", COMPACTORS)
def test_a_write_to_a_private_destination_mapped_at_4k_oopses_alone(compactor: type[Compactor]) -> None:
    """``upstream`` (split + oops): the free frame 3601 made private splits its 2M to 4K; it is the 9th
    destination (3585 + 2 * 8), the only write that faults (the RMP check of a 4K mapping is the page's own)."""
    h = HostKernel(4096, POLICIES["upstream"], compactor=compactor)
    half_page_cache(h)
    h.rmp_make_private(3601, 0, PageSize.SIZE_4K, 1)
    assert h.compactor.proactive() == 256
    assert [(c.pfn, c.kind, c.path) for c in h.crashes] == [(3601, "rmp", PATH_COMPACT)]
    assert h.frames.get(3601) == Owner.USER and 3601 in h.lru


@pytest.mark.parametrize("compactor", COMPACTORS)
def test_under_fixup_the_first_destination_write_makes_the_page_shared_and_the_read_of_a_missing_source_oopses(
    compactor: type[Compactor],
) -> None:
    """The same host under ``fixup``: the first write (to 3585) faults, the handler makes 3584 shared (one RMPUPDATE)
    and the other 255 writes pass; the read of frame 10 still oopses (a not-present mapping is no RMP fault)."""
    h = HostKernel(4096, POLICIES["fixup"], compactor=compactor)
    half_page_cache(h)
    h.rmp_make_private(3584, 0, PageSize.SIZE_4K, 1)
    h.directmap.remove_4k(10)
    assert h.compactor.proactive() == 256
    assert [(c.pfn, c.kind, c.path) for c in h.crashes] == [(10, "not-present", PATH_COMPACT)]
    assert h.host_rmp_fault_count == 1 and h.fixup_page_count == 1
    assert not h.rmp.rmpread(3584 << 12).assigned
    assert h.cpu.count_by_op["rmpupdate"] == 2  # make_private, then the fixup's make_shared


def test_under_unmap_a_private_source_is_not_present_and_its_read_oopses() -> None:
    """``unmap`` + ``fixup``: frame 12 (a source) made private leaves the direct map (4K): its read oopses (a
    not-present mapping, no fixup), the destination writes never fault."""
    for compactor in COMPACTORS:
        h = HostKernel(4096, POLICIES["unmap-fixup"], compactor=compactor)
        half_page_cache(h)
        h.rmp_make_private(12, 0, PageSize.SIZE_4K, 1)
        assert h.directmap.level(12) is None
        assert h.compactor.proactive() == 256
        assert [(c.pfn, c.kind) for c in h.crashes] == [(12, "not-present")]
        assert h.host_rmp_fault_count == 0


def test_both_compactors_agree_on_the_hand_derived_hosts() -> None:
    for name in ("keep-oops", "fixup", "unmap-fixup"):
        hosts = [HostKernel(4096, POLICIES[name], compactor=c) for c in COMPACTORS]
        for h in hosts:
            half_page_cache(h)
            h.rmp_make_private(3584, 0, PageSize.SIZE_4K, 1)
            h.rmp_make_private(12, 0, PageSize.SIZE_4K, 1)
            h.directmap.remove_4k(10)
            assert h.compactor.proactive() == 256
        same_host(*hosts)


def test_alloc_contig_range_migrates_in_one_batch_with_the_same_faults() -> None:
    """A 1 GiB ``alloc_contig_pages`` on a 3 GiB host (keep + oops): the range [1G, 2G) (DMA32's first aligned one)
    holds 300 page-cache pages, [1G + 20] not present; their targets, DMA32's lowest free frames 4096..4395
    (alloc_migration_target, tests/host/test_compaction.py), lie under the 1G mapping of [0, 1G), in the 2M
    [4096, 4608) that holds the private frame 4607: every write faults, and the read of the 11th source oopses
    just before the 11th write, identically on both compactors."""
    hosts = []
    for compactor in COMPACTORS:
        h = HostKernel(3 << 18, POLICIES["keep-oops"], compactor=compactor)
        lo = 1 << 18
        for pfn in range(lo, lo + 600, 2):
            assert h.buddy.take_page_off_buddy(pfn)
            h.frames.set_range(pfn, 1, Owner.USER)
            h.lru[pfn] = None
        h.directmap.remove_4k(lo + 20)
        h.rmp_make_private(4607, 0, PageSize.SIZE_4K, 1)
        assert h.alloc(18, Owner.GMEM, zero=False) == lo
        assert h.compaction_migrated == 300
        hosts.append(h)
    same_host(*hosts)
    h = hosts[0]
    kinds = [(c.pfn, c.kind, c.path) for c in h.crashes]
    # pair k: source lo + 2k, target 4096 + k
    expected = []
    for k in range(300):
        if lo + 2 * k == lo + 20:
            expected.append((lo + 20, "not-present", PATH_CONTIG))
        expected.append((4096 + k, "rmp", PATH_CONTIG))
    assert kinds == expected
    assert list(h.lru) == [4096 + k for k in range(300)]


def test_a_batch_that_breaks_the_fast_paths_preconditions_runs_the_reference_loop() -> None:
    """Sources out of order (free_bulk would free them in another order) or a destination not tagged free: the
    fast compactor runs the reference loop and agrees."""
    hosts = [HostKernel(4096, POLICIES["keep-oops"], compactor=c) for c in COMPACTORS]
    for h in hosts:
        half_page_cache(h)
        h.rmp_make_private(3584, 0, PageSize.SIZE_4K, 1)
        srcs = list(range(510, 0, -2))[:40]
        dsts = h.buddy.take_free_range(3584, 4096).tolist()[:40]
        h.compactor._migrate_pages(srcs, dsts, PATH_COMPACT)
    same_host(*hosts)
    assert hosts[0].compaction_migrated == 40 and len(hosts[0].crashes) == 40


# ---------------------------------------------------------------------------------------------- lockstep machine
class CompactionLockstep(RuleBasedStateMachine):
    """The same calls on a host with the reference compactor and one with the fast compactor."""

    @initialize(
        policy=st.sampled_from(sorted(POLICIES)),
        components=st.sampled_from(["reference", "fast"]),
        nframes=st.sampled_from([4096, 8192]),
    )
    def setup(self, policy: str, components: str, nframes: int) -> None:
        self.nframes = nframes
        self.ref = build(nframes, POLICIES[policy], Compactor)
        self.fast = build(nframes, POLICIES[policy], CountingCompactor, components)
        self.blocks: list[tuple[int, int]] = []  # unmovable allocations: (pfn, order)

    def both(self, call: Callable[[HostKernel], Any]) -> Any:
        """``call`` on each host: equal results, or the same exception (random RMP states make some calls fail:
        a firmware page allocated on a frame already assigned), after which the states must still be equal."""
        (mine, error), (theirs, their_error) = outcome(lambda: call(self.ref)), outcome(lambda: call(self.fast))
        assert type(error) is type(their_error) and str(error) == str(their_error), (error, their_error)
        same_result("call", mine, theirs)
        return mine

    def _frames_of(self, owner: Owner) -> np.ndarray:
        return np.flatnonzero(self.ref.frames.array == owner)

    # ------------------------------------------------------------------ fragmenting memory
    @rule(count=st.integers(1, 2000), zero=st.booleans(), on_lru=st.integers(0, 2))
    def page_cache(self, count: int, zero: bool, on_lru: int) -> None:
        def alloc(h: HostKernel) -> Any:
            got = h.alloc_bulk(0, min(count, h.buddy.obtainable(0)), Owner.USER, zero=zero)
            if got is not None:
                h.lru.update(dict.fromkeys(got[got % 3 >= on_lru].tolist()))  # some page cache is on no LRU
            return got

        self.both(alloc)

    @rule(stride=st.integers(2, 5), start=st.integers(0, 4), on_lru=st.booleans())
    def fragment(self, stride: int, start: int, on_lru: bool) -> None:
        """Fill free memory with page cache and free every ``stride``-th page of it (a fragmented zone)."""

        def fill(h: HostKernel) -> Any:
            got = h.alloc_bulk(0, h.buddy.obtainable(0), Owner.USER, zero=False)
            if got is not None and got.size:
                gone = got[start % stride :: stride]
                h.free_bulk(gone, 0)
                if on_lru:
                    h.lru.update(dict.fromkeys(np.setdiff1d(got, gone).tolist()))
            return got

        self.both(fill)

    @rule(data=st.data())
    def free_page_cache(self, data: st.DataObject) -> None:
        user = self._frames_of(Owner.USER)
        if not user.size:
            return
        stride = data.draw(st.integers(1, 5), label="stride")
        start = data.draw(st.integers(0, stride - 1), label="start")
        gone = user[start::stride]

        def free(h: HostKernel) -> None:
            h.free_bulk(gone, 0)
            for p in gone.tolist():
                h.lru.pop(p, None)

        self.both(free)

    @rule(order=st.integers(0, 3), owner=st.sampled_from([Owner.KERNEL, Owner.GMEM]))
    def unmovable(self, order: int, owner: Owner) -> None:
        pfn = self.both(lambda h: h.alloc(order, owner, zero=True))
        if pfn is not None:
            self.blocks.append((pfn, order))

    @precondition(lambda self: self.blocks)
    @rule(data=st.data())
    def free_unmovable(self, data: st.DataObject) -> None:
        pfn, order = self.blocks.pop(data.draw(st.integers(0, len(self.blocks) - 1), label="block"))
        self.both(lambda h: h.free(pfn, order))

    @rule()
    def snp_page(self) -> None:
        self.both(lambda h: h.snp_alloc_firmware_pages(0, "test"))

    # ------------------------------------------------------------------ faults for the copies
    @rule(data=st.data(), huge=st.booleans())
    def make_private(self, data: st.DataObject, huge: bool) -> None:
        """Any frame (free, page cache, a kernel page) assigned in the RMP: a 2M one, or a 4K one."""
        if huge:
            pfn = data.draw(st.integers(0, self.nframes // 512 - 1), label="2M") * 512
            self.both(lambda h: h.rmp_make_private(pfn, pfn << 12, PageSize.SIZE_2M, 1))
        else:
            pfn = data.draw(st.integers(0, self.nframes - 1), label="pfn")
            self.both(lambda h: h.rmp_make_private(pfn, pfn << 12, PageSize.SIZE_4K, 1))

    @rule(data=st.data())
    def make_free_frame_private(self, data: st.DataObject) -> None:
        """A free frame in the upper half of memory, where the free scanner isolates destinations, made private:
        under ``keep`` the copies' writes through the 2M or 1G mapping around it fault."""
        free = self._frames_of(Owner.FREE)
        free = free[free >= self.nframes // 2]
        if free.size:
            pfn = int(data.draw(st.sampled_from(free.tolist()), label="free frame"))
            self.both(lambda h: h.rmp_make_private(pfn, pfn << 12, PageSize.SIZE_4K, 1))

    @rule(data=st.data())
    def make_shared(self, data: st.DataObject) -> None:
        assigned = self.ref.rmp.assigned_pages(0, self.nframes)
        if not assigned.size:
            return
        pfn = int(data.draw(st.sampled_from(assigned.tolist()), label="assigned"))
        level = PageSize.SIZE_2M if self.ref.rmp.assigned_2m_mask(np.array([pfn]))[0] else PageSize.SIZE_4K
        head = pfn // 512 * 512 if level == PageSize.SIZE_2M else pfn
        self.both(lambda h: h.rmp_make_shared(head, level))

    @rule(data=st.data())
    def unmap_source(self, data: st.DataObject) -> None:
        """A page-cache frame removed from the direct map (the copy's read of it oopses)."""
        user = self._frames_of(Owner.USER)
        if user.size:
            pfn = int(data.draw(st.sampled_from(user.tolist()), label="source"))
            self.both(lambda h: h.directmap.remove_4k(pfn))

    # ------------------------------------------------------------------ compaction's callers
    @rule(proactiveness=st.sampled_from([20, 60, 100]), budget=st.none() | st.integers(1, 700))
    def proactive(self, proactiveness: int, budget: int | None) -> None:
        self.both(lambda h: h.compactor.proactive(proactiveness, budget))

    @rule(order=st.integers(1, MAX_PAGE_ORDER), mt=st.sampled_from(list(Migratetype)))
    def direct(self, order: int, mt: Migratetype) -> None:
        self.both(lambda h: h.compactor.direct(order, mt))

    @rule(order=st.sampled_from([4, 9, 10]), owner=st.sampled_from([Owner.GMEM, Owner.USER]))
    def high_order(self, order: int, owner: Owner) -> None:
        pfn = self.both(lambda h: h.alloc(order, owner, zero=False))
        if pfn is not None and owner != Owner.USER:
            self.blocks.append((pfn, order))

    @rule(data=st.data(), order=st.sampled_from([9, 10]))
    def contig_range(self, data: st.DataObject, order: int) -> None:
        """``alloc_contig_range`` of one aligned range (taken whole and tagged, as ``alloc_contig_pages`` does)."""
        nr = 1 << order
        pfn = data.draw(st.integers(0, self.nframes // nr - 1), label="range") * nr

        def take(h: HostKernel) -> bool:
            got = h.compactor._try_contig_range(pfn, nr)
            if got:
                h.frames.set_range(pfn, nr, Owner.GMEM)
            return got

        if self.both(take):
            self.blocks.append((pfn, order))

    @invariant()
    def same(self) -> None:
        if hasattr(self, "ref"):
            same_host(self.ref, self.fast)


CompactionLockstep.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestCompactionLockstep = CompactionLockstep.TestCase


def test_the_vectorised_path_is_exercised() -> None:
    before = CountingCompactor.batches
    hosts = [build(4096, POLICIES["keep-oops"], Compactor), build(4096, POLICIES["keep-oops"], CountingCompactor)]
    for h in hosts:
        half_page_cache(h)
        assert h.compactor.proactive() == 256
    same_host(*hosts)
    assert CountingCompactor.batches == before + 1
