"""Tests for snpsim.host.buddy: hand-computed cases, bulk == loop properties, and a model-based state machine."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from snpsim.host.buddy import BuddyAllocator

# ---------------------------------------------------------------------------------------------------- helpers


class NaiveBuddy:
    """Reference model: one bool per frame, blocks recomputed from scratch on every call.

    A fully coalesced buddy allocator's free lists are a function of the set of free frames: the maximal
    aligned fully-free blocks of order <= max_order. Allocation: smallest fitting order, then lowest PFN.
    """

    def __init__(self, nframes: int, max_order: int) -> None:
        self.nframes = nframes
        self.max_order = max_order
        self.free = [True] * nframes

    def blocks(self) -> list[tuple[int, int]]:
        out = []
        p = 0
        while p < self.nframes:
            if not self.free[p]:
                p += 1
                continue
            k = 0
            while (
                k + 1 <= self.max_order
                and p % (1 << (k + 1)) == 0
                and p + (1 << (k + 1)) <= self.nframes
                and all(self.free[p : p + (1 << (k + 1))])
            ):
                k += 1
            out.append((p, k))
            p += 1 << k
        return out

    def alloc(self, order: int) -> int | None:
        cands = [(o, p) for p, o in self.blocks() if o >= order]
        if not cands:
            return None
        _, p = min(cands)
        for i in range(p, p + (1 << order)):
            self.free[i] = False
        return p

    def free_block(self, pfn: int, order: int) -> None:
        for i in range(pfn, pfn + (1 << order)):
            assert not self.free[i]
            self.free[i] = True

    def free_count(self) -> int:
        return sum(self.free)


def check_structure(b: BuddyAllocator) -> None:
    """Structural invariants of any buddy state."""
    blocks = b.free_blocks()
    assert b.free_frames + b.used_frames == b.nframes
    assert b.free_frames == sum(1 << o for _, o in blocks)
    info = b.buddyinfo()
    assert len(info) == b.max_order + 1
    assert info == [sum(1 for _, o in blocks if o == k) for k in range(b.max_order + 1)]
    end = 0
    for pfn, o in blocks:  # sorted by pfn: non-overlapping, aligned, in range
        assert pfn >= end
        assert pfn % (1 << o) == 0
        end = pfn + (1 << o)
        assert end <= b.nframes
    as_set = set(blocks)
    for pfn, o in blocks:  # fully coalesced
        if o < b.max_order:
            assert (pfn ^ (1 << o), o) not in as_set


def alloc_loop(b: BuddyAllocator, order: int, count: int) -> list[int] | None:
    """``count`` successive alloc() calls, all-or-nothing like alloc_bulk."""
    saved = copy.deepcopy(b)
    out = []
    for _ in range(count):
        pfn = b.alloc(order)
        if pfn is None:
            b.__dict__.update(saved.__dict__)
            return None
        out.append(pfn)
    return out


@st.composite
def fragmented_allocators(draw: st.DrawFn, max_nframes: int = 300) -> tuple[BuddyAllocator, list[tuple[int, int]]]:
    """A small allocator after a random history of alloc/free; returns it and the allocated blocks."""
    max_order = draw(st.integers(0, 7))
    nframes = draw(st.integers(1, max_nframes))
    b = BuddyAllocator(nframes, max_order)
    allocated: list[tuple[int, int]] = []
    for _ in range(draw(st.integers(0, 40))):
        if allocated and draw(st.booleans()):
            pfn, o = allocated.pop(draw(st.integers(0, len(allocated) - 1)))
            b.free(pfn, o)
        else:
            o = draw(st.integers(0, max_order))
            pfn = b.alloc(o)
            if pfn is not None:
                allocated.append((pfn, o))
    return b, allocated


# ---------------------------------------------------------------------------------------------------- by hand


def test_initial_power_of_two() -> None:
    b = BuddyAllocator(1024, max_order=10)
    assert b.nframes == 1024
    assert b.max_order == 10
    assert b.buddyinfo() == [0] * 10 + [1]
    assert b.free_frames == 1024
    assert b.used_frames == 0
    assert b.largest_free_order() == 10
    assert b.free_blocks() == [(0, 10)]


def test_two_order0_allocs_and_coalesce_back() -> None:
    b = BuddyAllocator(1024, max_order=10)
    assert b.alloc(0) == 0
    # expand(): 1024 -> halves 512@9, 256@8, 128@7, 64@6, 32@5, 16@4, 8@3, 4@2, 2@1, 1@0
    assert b.buddyinfo() == [1] * 10 + [0]
    assert b.free_blocks() == [
        (1, 0),
        (2, 1),
        (4, 2),
        (8, 3),
        (16, 4),
        (32, 5),
        (64, 6),
        (128, 7),
        (256, 8),
        (512, 9),
    ]
    assert b.alloc(0) == 1  # the order-0 buddy left by the split
    assert b.buddyinfo() == [0] + [1] * 9 + [0]
    assert (b.free_frames, b.used_frames) == (1022, 2)
    b.free(0, 0)  # buddy 1 still allocated: no merge
    assert b.buddyinfo() == [1] * 10 + [0]
    b.free(1, 0)  # merges 0+1 -> 0@1, +2@1 -> 0@2, ... -> 0@10
    assert b.buddyinfo() == [0] * 10 + [1]
    assert b.free_frames == 1024


def test_non_power_of_two_decomposition() -> None:
    b = BuddyAllocator(1000, max_order=10)
    # 1000 = 512 + 256 + 128 + 64 + 32 + 8
    assert b.free_blocks() == [(0, 9), (512, 8), (768, 7), (896, 6), (960, 5), (992, 3)]
    assert b.buddyinfo() == [0, 0, 0, 1, 0, 1, 1, 1, 1, 1, 0]
    assert b.free_frames == 1000
    assert b.largest_free_order() == 9


def test_tiny_and_ragged_sizes() -> None:
    assert BuddyAllocator(3).free_blocks() == [(0, 1), (2, 0)]
    assert BuddyAllocator(1).free_blocks() == [(0, 0)]
    b = BuddyAllocator(0)
    assert b.free_blocks() == []
    assert b.alloc(0) is None
    assert b.largest_free_order() == -1
    # 2 GiB + 2 MiB + 4 KiB with the default max_order 18
    b = BuddyAllocator(2 * (1 << 18) + 512 + 1)
    assert b.free_blocks() == [(0, 18), (1 << 18, 18), (1 << 19, 9), ((1 << 19) + 512, 0)]


def test_max_order_caps_blocks() -> None:
    b = BuddyAllocator(1024, max_order=3)
    assert b.buddyinfo() == [0, 0, 0, 128]
    assert b.alloc(0) == 0
    assert b.buddyinfo() == [1, 1, 1, 127]
    b.free(0, 0)
    assert b.buddyinfo() == [0, 0, 0, 128]  # coalescing stops at max_order


def test_smallest_fitting_block_is_split() -> None:
    b = BuddyAllocator(1000, max_order=10)
    assert b.alloc(4) == 960  # smallest order >= 4 with a free block is 5 (960); 976@4 goes back
    assert (976, 4) in b.free_blocks()
    assert b.alloc(3) == 992  # an exact order-3 block exists
    assert b.alloc(3) == 976  # now split 976@4: take 976, 984@3 goes back
    assert b.free_blocks() == [(0, 9), (512, 8), (768, 7), (896, 6), (984, 3)]


def test_lowest_pfn_first_within_an_order() -> None:
    b = BuddyAllocator(16, max_order=4)
    assert b.alloc_bulk(0, 16).tolist() == list(range(16))
    for pfn in (12, 9, 3):
        b.free(pfn, 0)
    b.free(6, 1)  # two order-0 pages given back as one order-1 block is fine
    assert b.free_blocks() == [(3, 0), (6, 1), (9, 0), (12, 0)]
    assert [b.alloc(0), b.alloc(0), b.alloc(0)] == [3, 9, 12]
    assert b.alloc(0) == 6  # order 0 exhausted: split 6@1
    assert b.free_blocks() == [(7, 0)]


def test_alloc_failure_returns_none() -> None:
    b = BuddyAllocator(1000, max_order=10)
    assert b.alloc(10) is None
    assert b.alloc(9) == 0
    assert b.alloc(9) is None
    assert b.alloc(8) == 512
    b = BuddyAllocator(4, max_order=2)
    assert b.alloc(2) == 0
    assert b.alloc(0) is None
    assert b.free_frames == 0
    with pytest.raises(ValueError):
        b.alloc(3)
    with pytest.raises(ValueError):
        b.alloc(-1)


def test_free_rejects_bad_blocks() -> None:
    b = BuddyAllocator(1024, max_order=10)
    with pytest.raises(ValueError, match="aligned"):
        b.free(1, 1)
    with pytest.raises(ValueError, match="range"):
        b.free(1024, 0)
    with pytest.raises(ValueError, match="range"):
        b.free(-2, 1)
    with pytest.raises(ValueError, match="order"):
        b.free(0, 11)
    with pytest.raises(ValueError, match="double free"):
        b.free(4, 2)  # inside the free order-10 block
    assert b.alloc(0) == 0
    assert b.alloc(0) == 1
    b.free(1, 0)
    with pytest.raises(ValueError, match="double free"):
        b.free(1, 0)  # exact block on a free list
    b.free(0, 0)
    with pytest.raises(ValueError, match="double free"):
        b.free(0, 0)  # its coalesced parent is free
    b = BuddyAllocator(8, max_order=3)
    assert b.alloc(1) == 0  # free: 2@1, 4@2
    with pytest.raises(ValueError, match="double free"):
        b.free(0, 2)  # [0, 4) overlaps the free 2@1 at its end
    assert b.free_blocks() == [(2, 1), (4, 2)]  # rejected frees change nothing
    assert b.free_frames == 6


def test_is_free() -> None:
    b = BuddyAllocator(1000, max_order=10)
    assert b.is_free(0) and b.is_free(999)
    assert b.alloc(3) == 992
    assert not b.is_free(992) and not b.is_free(999)
    assert b.is_free(991)
    with pytest.raises(ValueError):
        b.is_free(1000)
    with pytest.raises(ValueError):
        b.is_free(-1)


def test_fragmentation_index_by_hand() -> None:
    b = BuddyAllocator(1024, max_order=10)
    assert b.fragmentation_index(0) == 0.0
    assert b.fragmentation_index(10) == 0.0
    b.alloc(0)  # free: one block of each order 0..9, 1023 pages
    assert b.fragmentation_index(0) == 0.0
    # order 9: one suitable block (512@9) -> (1023 - 512) / 1023
    assert b.fragmentation_index(9) == pytest.approx(511 / 1023)
    # order 8: 512@9 gives 2 blocks, 256@8 one -> 3 * 256 usable
    assert b.fragmentation_index(8) == pytest.approx((1023 - 768) / 1023)
    assert b.fragmentation_index(10) == 1.0
    # order 1: everything but the single order-0 page is usable
    assert b.fragmentation_index(1) == pytest.approx(1 / 1023)
    full = BuddyAllocator(4, max_order=2)
    full.alloc(2)
    assert full.fragmentation_index(0) == 1.0  # no free memory = all unusable (kernel convention)
    with pytest.raises(ValueError):
        b.fragmentation_index(11)


def test_alloc_bulk_by_hand() -> None:
    b = BuddyAllocator(1024, max_order=10)
    got = b.alloc_bulk(0, 3)
    assert got is not None
    assert got.dtype == np.int64
    assert got.tolist() == [0, 1, 2]
    assert b.buddyinfo() == [1, 0] + [1] * 8 + [0]  # 3@0, 4@2, 8@3, ..., 512@9
    assert b.free_blocks()[:2] == [(3, 0), (4, 2)]
    before = b.free_blocks()
    assert b.alloc_bulk(0, 1022) is None  # 1021 free
    assert b.free_blocks() == before
    empty = b.alloc_bulk(0, 0)
    assert empty is not None and empty.size == 0
    with pytest.raises(ValueError):
        b.alloc_bulk(0, -1)
    got = b.alloc_bulk(0, 1021)
    assert got is not None and sorted(got.tolist()) == list(range(3, 1024))
    assert b.free_frames == 0


def test_alloc_bulk_mixed_orders_by_hand() -> None:
    b = BuddyAllocator(1000, max_order=10)
    got = b.alloc_bulk(3, 6)
    # exact order 3: 992; then order 5 (960) whole: 960..984; then order 6 (896) partially: 896
    assert got is not None and got.tolist() == [992, 960, 968, 976, 984, 896]
    assert b.free_blocks() == [(0, 9), (512, 8), (768, 7), (904, 3), (912, 4), (928, 5)]
    assert BuddyAllocator(1024, 10).alloc_bulk(9, 2).tolist() == [0, 512]  # type: ignore[union-attr]


def test_free_bulk_by_hand() -> None:
    b = BuddyAllocator(1024, max_order=10)
    pfns = b.alloc_bulk(0, 1000)
    assert pfns is not None
    b.free_bulk(pfns[::-1], 0)
    assert b.free_blocks() == [(0, 10)]
    assert b.free_frames == 1024
    b.free_bulk(np.empty(0, dtype=np.int64), 0)


@pytest.mark.parametrize("threshold", [0, 1000])
def test_free_bulk_rejects_bad_batches(threshold: int) -> None:
    b = BuddyAllocator(1024, max_order=10)
    b._BULK_LOOP_THRESHOLD = threshold  # 0: numpy path, 1000: loop path
    pfns = b.alloc_bulk(1, 100)  # [0, 200) in use; free: 200@3, 208@4, 224@5, 256@8, 512@9
    assert pfns is not None
    state = b.free_blocks()
    assert state == [(200, 3), (208, 4), (224, 5), (256, 8), (512, 9)]
    bad = {
        "twice": ([0, 0], 1),
        "aligned": ([0, 3], 1),
        "range": ([0, 1024], 1),
        "range ": ([0, -2], 1),
        "double free": ([0, 200], 1),  # 200@1 lies inside the free 200@3
        "double free ": ([192], 4),  # [192, 208) ends in the free 200@3
    }
    for match, (batch, order) in bad.items():
        with pytest.raises(ValueError, match=match.strip()):
            b.free_bulk(np.array(batch), order)
        assert b.free_blocks() == state
    with pytest.raises(ValueError, match="order"):
        b.free_bulk(np.array([0]), 11)
    b.free_bulk(pfns, 1)
    assert b.free_blocks() == [(0, 10)]


def test_free_bulk_order_mismatch_overlap() -> None:
    b = BuddyAllocator(64, max_order=6)
    b._BULK_LOOP_THRESHOLD = 0
    assert b.alloc(0) == 0  # free: 1@0, 2@1, 4@2, ..., 32@5
    state = b.free_blocks()
    with pytest.raises(ValueError, match="double free"):
        b.free_bulk(np.array([0]), 3)  # [0, 8) swallows free 1@0, 2@1, 4@2 (strictly inside)
    assert b.free_blocks() == state
    b.free_bulk(np.array([0]), 0)
    assert b.free_blocks() == [(0, 6)]


def test_pools() -> None:
    b = BuddyAllocator(4096, max_order=10)
    assert b.reserve_pool(9, 3) == 3
    assert b.pool_size(9) == 3
    assert b.pool_free_count(9) == 3
    assert b.free_frames == 4096 - 3 * 512
    assert b.free_blocks() == [(1536, 9), (2048, 10), (3072, 10)]  # taken like alloc_bulk(9, 3)
    assert not b.is_free(0)
    assert [b.pool_alloc(9), b.pool_alloc(9), b.pool_alloc(9)] == [0, 512, 1024]
    assert b.pool_alloc(9) is None
    assert b.pool_alloc(10) is None  # no such pool
    assert b.pool_free_count(9) == 0
    b.pool_free(512, 9)
    assert b.pool_free_count(9) == 1
    with pytest.raises(ValueError, match="double free"):
        b.pool_free(512, 9)
    with pytest.raises(ValueError, match="not in"):
        b.pool_free(1536, 9)
    assert b.pool_alloc(9) == 512
    assert b.pool_size(9) == 3
    assert b.free_frames == 4096 - 3 * 512  # pool traffic never touches the buddy lists
    b.pool_free(0, 9)
    b.pool_free(1024, 9)
    assert b.release_pool(9, 1) == 1  # highest unused first: 1024
    assert b.pool_size(9) == 2
    assert b.free_blocks() == [(1024, 10), (2048, 10), (3072, 10)]  # merged with the spare 1536@9
    assert b.release_pool(9) == 1  # only 0 is unused; 512 is still handed out
    assert b.pool_size(9) == 1
    b.pool_free(512, 9)
    assert b.release_pool(9) == 1
    assert b.free_blocks() == [(0, 10), (1024, 10), (2048, 10), (3072, 10)]
    assert b.free_frames == 4096
    # best effort, like nr_hugepages
    small = BuddyAllocator(1024, max_order=10)
    assert small.reserve_pool(9, 5) == 2
    assert small.free_frames == 0
    assert small.release_pool(8) == 0


# ---------------------------------------------------------------------------------------------------- 2 TiB

TWO_TIB_FRAMES = 1 << 29


def test_two_tib_allocator_bulk() -> None:
    b = BuddyAllocator(TWO_TIB_FRAMES)
    assert b.buddyinfo() == [0] * 18 + [2048]
    pages = b.alloc_bulk(0, 1 << 20)
    assert pages is not None
    assert np.array_equal(pages, np.arange(1 << 20, dtype=np.int64))
    assert b.buddyinfo() == [0] * 18 + [2044]
    assert b.alloc(0) == 1 << 20
    assert b.alloc(9) == (1 << 20) + 512
    assert b.alloc(18) == 5 << 18  # blocks 0..3 are used up, block 4 was split above
    b.free(1 << 20, 0)
    b.free((1 << 20) + 512, 9)
    b.free(5 << 18, 18)
    rng = np.random.default_rng(1)
    perm = rng.permutation(pages)
    b.free_bulk(perm[: 1 << 19], 0)  # a random half of the pages: badly fragmented free lists
    assert sum(n << o for o, n in enumerate(b.buddyinfo())) == b.free_frames
    assert b.free_frames == TWO_TIB_FRAMES - (1 << 19)
    assert b.fragmentation_index(1) > 0.0
    b.free_bulk(perm[1 << 19 :], 0)
    assert b.buddyinfo() == [0] * 18 + [2048]
    assert b.largest_free_order() == 18


# ---------------------------------------------------------------------------------------------------- properties


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=fragmented_allocators(), order=st.integers(0, 7), count=st.integers(0, 320))
def test_alloc_bulk_equals_alloc_loop(
    state: tuple[BuddyAllocator, list[tuple[int, int]]], order: int, count: int
) -> None:
    b, _ = state
    order = min(order, b.max_order)
    twin = copy.deepcopy(b)
    expected = alloc_loop(twin, order, count)
    got = b.alloc_bulk(order, count)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert got.tolist() == expected
    assert b.free_blocks() == twin.free_blocks()
    assert b.free_frames == twin.free_frames
    check_structure(b)
    # the heaps behind the free lists still give lowest-PFN-first
    assert [b.alloc(0) for _ in range(5)] == [twin.alloc(0) for _ in range(5)]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=fragmented_allocators(), data=st.data(), numpy_path=st.booleans())
def test_free_bulk_equals_free_loop(
    state: tuple[BuddyAllocator, list[tuple[int, int]]], data: st.DataObject, numpy_path: bool
) -> None:
    b, allocated = state
    order = data.draw(st.integers(0, b.max_order))
    # the blocks of this order: allocated ones, plus order-`order` pieces of bigger allocated blocks
    pieces = [p + i * (1 << order) for p, o in allocated if o >= order for i in range(1 << (o - order))]
    if not pieces:
        return
    chosen = data.draw(st.lists(st.sampled_from(pieces), unique=True, max_size=len(pieces)))
    if numpy_path:
        b._BULK_LOOP_THRESHOLD = 0
    twin = copy.deepcopy(b)
    for pfn in chosen:
        twin.free(pfn, order)
    # valid input: skipping the overlap check (as the host kernel does after its frame-table check) changes nothing
    b.free_bulk(np.array(chosen, dtype=np.int64), order, check_free=data.draw(st.booleans()))
    assert b.free_blocks() == twin.free_blocks()
    assert b.free_frames == twin.free_frames
    check_structure(b)
    assert [b.alloc(0) for _ in range(5)] == [twin.alloc(0) for _ in range(5)]


# ---------------------------------------------------------------------------------------------------- state machine


class BuddyMachine(RuleBasedStateMachine):
    """Random alloc/free/bulk/pool traffic against NaiveBuddy."""

    @initialize(nframes=st.integers(1, 160), max_order=st.integers(0, 6), numpy_path=st.booleans())
    def setup(self, nframes: int, max_order: int, numpy_path: bool) -> None:
        self.b = BuddyAllocator(nframes, max_order)
        if numpy_path:
            self.b._BULK_LOOP_THRESHOLD = 0
        self.model = NaiveBuddy(nframes, max_order)
        self.allocated: list[tuple[int, int]] = []
        self.pool_unused: dict[int, set[int]] = {}
        self.pool_used: dict[int, set[int]] = {}

    def _order(self, order: int) -> int:
        return min(order, self.b.max_order)

    @rule(order=st.integers(0, 6))
    def alloc(self, order: int) -> None:
        order = self._order(order)
        got = self.b.alloc(order)
        assert got == self.model.alloc(order)
        if got is not None:
            self.allocated.append((got, order))

    @precondition(lambda self: self.allocated)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        pfn, order = self.allocated.pop(data.draw(st.integers(0, len(self.allocated) - 1)))
        self.b.free(pfn, order)
        self.model.free_block(pfn, order)

    @rule(order=st.integers(0, 6), count=st.integers(0, 48))
    def alloc_bulk(self, order: int, count: int) -> None:
        order = self._order(order)
        obtainable = sum(1 << (o - order) for _, o in self.model.blocks() if o >= order)
        got = self.b.alloc_bulk(order, count)
        if obtainable < count:
            assert got is None
            return
        expected = [self.model.alloc(order) for _ in range(count)]
        assert got is not None and got.tolist() == expected
        self.allocated.extend((int(p), order) for p in got)

    @precondition(lambda self: self.allocated)
    @rule(data=st.data())
    def free_bulk(self, data: st.DataObject) -> None:
        order = data.draw(st.sampled_from(sorted({o for _, o in self.allocated})))
        same = [blk for blk in self.allocated if blk[1] == order]
        chosen = data.draw(st.lists(st.sampled_from(same), unique=True, min_size=1, max_size=len(same)))
        self.b.free_bulk(np.array([p for p, _ in chosen], dtype=np.int64), order)
        for blk in chosen:
            self.allocated.remove(blk)
            self.model.free_block(*blk)

    @precondition(lambda self: any(o > 0 for _, o in self.allocated))
    @rule(data=st.data())
    def free_as_pages(self, data: st.DataObject) -> None:
        """Free a high-order block as its order-0 pages (like split_page() then freeing each page)."""
        big = [blk for blk in self.allocated if blk[1] > 0]
        pfn, order = data.draw(st.sampled_from(big))
        self.allocated.remove((pfn, order))
        pages = np.arange(pfn, pfn + (1 << order), dtype=np.int64)
        self.b.free_bulk(data.draw(st.permutations(pages.tolist())), 0)
        self.model.free_block(pfn, order)

    @precondition(lambda self: self.b.free_frames > 0)
    @rule(data=st.data())
    def double_free_is_rejected(self, data: st.DataObject) -> None:
        pfn, order = data.draw(st.sampled_from(self.b.free_blocks()))
        sub = data.draw(st.integers(0, order))
        before = self.b.free_blocks()
        with pytest.raises(ValueError):
            self.b.free(pfn, sub)  # a block inside (at the start of) a free block
        with pytest.raises(ValueError):
            self.b.free_bulk(np.array([pfn]), sub)
        assert self.b.free_blocks() == before

    @rule(order=st.integers(0, 6), count=st.integers(0, 4))
    def reserve_pool(self, order: int, count: int) -> None:
        order = self._order(order)
        n = self.b.reserve_pool(order, count)
        got = []
        for _ in range(count):
            pfn = self.model.alloc(order)
            if pfn is None:
                break
            got.append(pfn)
        assert n == len(got)
        self.pool_unused.setdefault(order, set()).update(got)
        self.pool_used.setdefault(order, set())

    @precondition(lambda self: any(self.pool_unused.values()))
    @rule(data=st.data())
    def pool_alloc(self, data: st.DataObject) -> None:
        order = data.draw(st.sampled_from(sorted(o for o, s in self.pool_unused.items() if s)))
        pfn = self.b.pool_alloc(order)
        assert pfn == min(self.pool_unused[order])
        self.pool_unused[order].remove(pfn)
        self.pool_used[order].add(pfn)

    @precondition(lambda self: any(self.pool_used.values()))
    @rule(data=st.data())
    def pool_free(self, data: st.DataObject) -> None:
        order = data.draw(st.sampled_from(sorted(o for o, s in self.pool_used.items() if s)))
        pfn = data.draw(st.sampled_from(sorted(self.pool_used[order])))
        self.b.pool_free(pfn, order)
        self.pool_used[order].remove(pfn)
        self.pool_unused[order].add(pfn)

    @precondition(lambda self: self.pool_unused)
    @rule(data=st.data())
    def release_pool(self, data: st.DataObject) -> None:
        order = data.draw(st.sampled_from(sorted(self.pool_unused)))
        unused = self.pool_unused[order]
        assert self.b.release_pool(order) == len(unused)
        for pfn in unused:
            self.model.free_block(pfn, order)
        unused.clear()

    @invariant()
    def matches_model(self) -> None:
        b = self.b
        check_structure(b)
        assert b.free_blocks() == self.model.blocks()
        assert b.free_frames == self.model.free_count()
        assert [b.is_free(p) for p in range(b.nframes)] == self.model.free
        for order, unused in self.pool_unused.items():
            assert b.pool_free_count(order) == len(unused)
            assert b.pool_size(order) == len(unused) + len(self.pool_used[order])

    @invariant()
    def introspection(self) -> None:
        b = self.b
        info = b.buddyinfo()
        assert b.largest_free_order() == max((o for o, n in enumerate(info) if n), default=-1)
        free_pages = sum(n << o for o, n in enumerate(info))
        for order in range(b.max_order + 1):
            suitable = sum(n << (o - order) for o, n in enumerate(info) if o >= order)
            expected = 1.0 if free_pages == 0 else (free_pages - (suitable << order)) / free_pages
            assert b.fragmentation_index(order) == pytest.approx(expected)
            assert 0.0 <= b.fragmentation_index(order) <= 1.0


BuddyMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestBuddyMachine = BuddyMachine.TestCase


def test_free_bulk_probes_frames_when_free_memory_is_fragmented() -> None:
    """Order-0 batches smaller than the free lists are checked frame by frame; a double free is still caught."""
    b = BuddyAllocator(4096, max_order=10)
    b._BULK_LOOP_THRESHOLD = 0
    frames = b.alloc_bulk(0, 4096)
    assert frames is not None
    b.free_bulk(frames[::2], 0)  # 2048 free single frames: more free blocks than 3 x 11 probes
    state = b.free_blocks()
    with pytest.raises(ValueError, match="double free"):
        b.free_bulk(np.array([1, 3, 4]), 0)  # frame 4 is free
    assert b.free_blocks() == state
    b.free_bulk(np.array([1, 3, 5]), 0)
    assert (0, 2) in b.free_blocks() and (4, 1) in b.free_blocks()
