"""The fast engine's allocator (:class:`snpsim.fast.FastBuddyAllocator`) against the reference.

Two machines: the reference's own state machine (tests/host/test_buddy.py ``BuddyMachine``, checked against the
naive per-page model of mm/page_alloc.c written there) run on the fast allocator; and a lockstep machine that
drives a reference and a fast allocator with the same calls, compaction's operations (``take_free_range``, compiled
too, and the reference-only ``take_page_off_buddy``) interleaved, and compares their whole state after every step:
every free list's words, counts and top words, the pageblock types and the zone table.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from tests.host.test_buddy import GEOMETRIES, MTS, BuddyMachine

from snpsim.fast import FastBuddyAllocator
from snpsim.host.buddy import MAX_PAGE_ORDER, BuddyAllocator


class FastBuddyMachine(BuddyMachine):
    allocator = FastBuddyAllocator


FastBuddyMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestFastBuddyMachine = FastBuddyMachine.TestCase


def same_state(a: BuddyAllocator, b: BuddyAllocator) -> None:
    sa, sb = a._store, b._store
    assert np.array_equal(sa.words, sb.words)
    assert np.array_equal(sa.count, sb.count)
    assert np.array_equal(sa.top, sb.top)
    assert np.array_equal(a._pb, b._pb)
    assert np.array_equal(a._zt, b._zt)
    assert a.free_frames == b.free_frames


class Lockstep(RuleBasedStateMachine):
    """The same calls on a reference and a fast allocator (LRU tags shared), the whole state compared."""

    @initialize(geometry=GEOMETRIES)
    def setup(self, geometry: tuple[int, tuple[int, int]]) -> None:
        nframes, zones = geometry
        self.tags = np.zeros(nframes, dtype=np.uint8)
        tags = (self.tags, np.array([False, True]))
        self.ref = BuddyAllocator(nframes, zone_pfns=zones, page_tags=tags)
        self.fast = FastBuddyAllocator(nframes, zone_pfns=zones, page_tags=tags)
        self.allocated: list[tuple[int, int]] = []

    def _got(self, pfns: list[int], order: int, mt: int) -> None:
        for p in pfns:
            self.allocated.append((p, order))
            if mt == 1:
                self.tags[p : p + (1 << order)] = 1

    def _gone(self, blocks: list[tuple[int, int]]) -> None:
        for p, o in blocks:
            self.allocated.remove((p, o))
            self.tags[p : p + (1 << o)] = 0

    @rule(order=st.integers(0, MAX_PAGE_ORDER), mt=MTS)
    def alloc(self, order: int, mt: int) -> None:
        got = self.fast.alloc(order, mt)
        assert got == self.ref.alloc(order, mt)
        if got is not None:
            self._got([got], order, mt)

    @rule(order=st.integers(0, 5), count=st.integers(0, 300), mt=MTS)
    def alloc_bulk(self, order: int, count: int, mt: int) -> None:
        got = self.fast.alloc_bulk(order, count, mt)
        want = self.ref.alloc_bulk(order, count, mt)
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            assert got.tolist() == want.tolist()
            self._got(got.tolist(), order, mt)

    @precondition(lambda self: self.allocated)
    @rule(data=st.data())
    def free_bulk(self, data: st.DataObject) -> None:
        order = data.draw(st.sampled_from(sorted({o for _, o in self.allocated})))
        same = [blk for blk in self.allocated if blk[1] == order]
        chosen = data.draw(st.lists(st.sampled_from(same), unique=True, min_size=1, max_size=len(same)))
        pfns = np.array([p for p, _ in chosen], dtype=np.int64)
        self.ref.free_bulk(pfns, order)
        self.fast.free_bulk(pfns, order)
        self._gone(chosen)

    @precondition(lambda self: self.allocated)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        pfn, order = data.draw(st.sampled_from(self.allocated))
        self.ref.free(pfn, order)
        self.fast.free(pfn, order)
        self._gone([(pfn, order)])

    @precondition(lambda self: self.ref.free_frames > 0)
    @rule(data=st.data())
    def double_free(self, data: st.DataObject) -> None:
        pfn, order = data.draw(st.sampled_from(self.ref.free_blocks()))
        for b in (self.ref, self.fast):
            with pytest.raises(ValueError, match="double free"):
                b.free(pfn, order)
            with pytest.raises(ValueError, match="double free"):
                b.free_bulk(np.array([pfn]), order)

    @rule(data=st.data(), whole=st.booleans())
    def take_free_range(self, data: st.DataObject, whole: bool) -> None:
        """Compaction's free scanner (one pageblock's free frames) or ``alloc_contig_range``'s isolation (any range
        inside a zone, not empty as no caller's is: free blocks straddling its ends are carved), then kept
        allocated."""
        if whole:
            b = data.draw(st.integers(0, self.ref.nframes // 512 - 1))
            lo, hi = b * 512, b * 512 + 512
        else:
            lo = data.draw(st.integers(0, self.ref.nframes - 1))
            top = self.ref.zone_span(self.ref.zone_of(lo))[1]
            hi = data.draw(st.integers(lo + 1, min(top, lo + 3000)))
        got = self.fast.take_free_range(lo, hi)
        assert got.tolist() == self.ref.take_free_range(lo, hi).tolist()
        self._got(got.tolist(), 0, 0)

    @rule(data=st.data())
    def take_page_off_buddy(self, data: st.DataObject) -> None:
        pfn = data.draw(st.integers(0, self.ref.nframes - 1))
        taken = self.fast.take_page_off_buddy(pfn)
        assert taken == self.ref.take_page_off_buddy(pfn)
        if taken:
            self._got([pfn], 0, 0)

    @invariant()
    def same(self) -> None:
        same_state(self.ref, self.fast)

    @invariant()
    def consistent(self) -> None:
        self.fast.check_invariants()


Lockstep.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLockstep = Lockstep.TestCase


def test_a_large_host_allocates_as_the_reference() -> None:
    """A 16 GiB host (all zones populated: lowmem reserves, NOFRAGMENT's second pass): 2M-order blocks of every type
    and 300k single pages, as the reference hands them out."""
    n = 1 << 22
    ref, fast = BuddyAllocator(n), FastBuddyAllocator(n)
    for order, count, mt in ((9, 3000, 1), (0, 300_000, 0), (3, 20_000, 2), (0, 500_000, 1), (10, 100, 0)):
        a, b = ref.alloc_bulk(order, count, mt), fast.alloc_bulk(order, count, mt)
        assert a is not None and b is not None and np.array_equal(a, b)
        ref.free_bulk(a[::3], order)
        fast.free_bulk(b[::3], order)
        same_state(ref, fast)


def test_the_fast_allocator_pickles_and_continues() -> None:
    """The explorer snapshots worlds by pickling: the copy is the same state, and the kernels keep running on it."""
    import pickle

    fast = FastBuddyAllocator(4096)
    assert fast.alloc_bulk(0, 700, 1) is not None
    copy = pickle.loads(pickle.dumps(fast))
    same_state(fast, copy)
    assert copy.alloc(2, 0) == fast.alloc(2, 0)
    same_state(fast, copy)
    copy.check_invariants()
