"""Tests for snpsim.host.buddy: hand-computed cases from mm/page_alloc.c, bulk == loop properties, and a state machine
against a from-scratch reference model of the same rules.

Sources quoted in the tests are mm/page_alloc.c of Linux v6.15-v6.19 (``__rmqueue_smallest``, ``__rmqueue_claim``,
``try_to_claim_block``, ``should_try_claim_block``, ``__rmqueue_steal``, ``fallbacks[]``, ``__free_one_page``,
``setup_per_zone_lowmem_reserve``, ``alloc_flags_nofragment``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from snpsim.fast import FastBuddyAllocator
from snpsim.host.buddy import (
    MAX_PAGE_ORDER,
    PAGEBLOCK_NR_PAGES,
    BuddyAllocator,
    Migratetype,
    ZoneType,
    should_try_claim_block,
)

U, M, R = Migratetype.UNMOVABLE, Migratetype.MOVABLE, Migratetype.RECLAIMABLE
FALLBACKS = {U: (R, M), M: (R, U), R: (U, M)}  # mm/page_alloc.c fallbacks[], restated for the reference model

# ---------------------------------------------------------------------------------------------------- reference model


class NaiveBuddy:
    """Reference model: one bool per frame and a type per pageblock; free blocks recomputed from scratch.

    A fully coalesced buddy allocator's free blocks are the maximal aligned free blocks of order <= 10 inside each
    zone; each sits on the list of its pageblock's type (freelist hygiene). The allocation rules are restated from
    mm/page_alloc.c independently of the implementation's data structures.
    """

    def __init__(
        self,
        nframes: int,
        zone_pfns: tuple[int, int] = (4096, 1 << 20),
        ranges: list[tuple[int, int]] | None = None,
        movable: Callable[[int, int], int] | None = None,
    ) -> None:
        self.n = nframes
        self.free = [False] * nframes
        for lo, hi in ranges or [(0, nframes)]:
            for p in range(lo, hi):
                self.free[p] = True
        dma, dma32 = zone_pfns
        self.zones = [(min(0, nframes), min(dma, nframes)), (min(dma, nframes), min(dma32, nframes))]
        self.zones.append((min(dma32, nframes), nframes))
        self.managed = [sum(self.free[lo:hi]) for lo, hi in self.zones]
        self.disabled = sum(self.managed) < PAGEBLOCK_NR_PAGES * 6
        self.pb = [U if self.disabled else M] * ((nframes + 511) // 512)
        # setup_per_zone_lowmem_reserve(): lowmem_reserve[NORMAL] of DMA and DMA32
        self.reserve = [0, 0, 0]
        for i in (0, 1):
            above = sum(self.managed[i + 1 :])
            self.reserve[i] = 0 if not self.managed[2] or not self.managed[i] else above // 256
        self.zonelist = [i for i in (2, 1, 0) if self.managed[i]]
        self.nofrag = bool(self.zonelist) and self.zonelist[0] == 2
        self.movable = movable
        self._blocks: dict[int, list[tuple[int, int]]] = {}  # per zone, dropped whenever a frame changes

    # free blocks
    def zone_blocks(self, z: int) -> list[tuple[int, int]]:
        if z not in self._blocks:
            self._blocks[z] = self._scan(z)
        return self._blocks[z]

    def _scan(self, z: int) -> list[tuple[int, int]]:
        lo, hi = self.zones[z]
        out, p = [], lo
        while p < hi:
            if not self.free[p]:
                p += 1
                continue
            k = 0
            while (
                k < MAX_PAGE_ORDER
                and p % (1 << (k + 1)) == 0
                and p + (1 << (k + 1)) <= hi
                and all(self.free[p : p + (1 << (k + 1))])
            ):
                k += 1
            out.append((p, k))
            p += 1 << k
        return out

    def blocks(self) -> list[tuple[int, int]]:
        return sorted(b for z in range(3) for b in self.zone_blocks(z))

    def typed_blocks(self) -> list[tuple[int, int, int]]:
        return [(p, k, int(self.pb[p >> 9])) for p, k in self.blocks()]

    def zone_free(self, z: int) -> int:
        lo, hi = self.zones[z]
        return sum(self.free[lo:hi])

    def take(self, pfn: int, order: int) -> None:
        self._blocks.clear()
        for p in range(pfn, pfn + (1 << order)):
            assert self.free[p]
            self.free[p] = False

    # the rules
    def alloc(self, order: int, mt: int) -> int | None:
        mt = U if self.disabled else mt
        for nofrag in (True, False) if self.nofrag else (False,):
            for z in self.zonelist:
                if self.zone_free(z) - ((1 << order) - 1) <= self.reserve[z]:
                    continue
                p = self.smallest(z, order, mt)
                if p is None:
                    p = self.claim(z, order, mt, nofrag)
                if p is None and not nofrag:
                    p = self.steal(z, order, mt)
                if p is not None:
                    return p
        return None

    def of_type(self, z: int, order: int, mt: int) -> list[int]:
        return [p for p, k in self.zone_blocks(z) if k == order and self.pb[p >> 9] == mt]

    def smallest(self, z: int, order: int, mt: int) -> int | None:
        cands = [(k, p) for p, k in self.zone_blocks(z) if k >= order and self.pb[p >> 9] == mt]
        if not cands:
            return None
        _, p = min(cands)
        self.take(p, order)
        return p

    def claim(self, z: int, order: int, mt: int, nofrag: bool) -> int | None:
        min_order = 9 if nofrag and order < 9 else order
        for c in range(MAX_PAGE_ORDER, min_order - 1, -1):
            if not self.disabled and not should_try_claim_block(c, mt):
                return None
            for fb in FALLBACKS[Migratetype(mt)]:
                heads = self.of_type(z, c, fb)
                if not heads:
                    continue
                head = heads[0]
                if c >= 9:
                    for b in range(head >> 9, (head >> 9) + (1 << (c - 9))):
                        self.pb[b] = Migratetype(mt)
                    self.take(head, order)
                    return head
                start = head >> 9 << 9
                lo, hi = self.zones[z]
                if start < lo or start + 512 > hi:
                    break
                free = sum(self.free[start : start + 512])
                movable = self.movable(start, 512) if self.movable else 0
                if mt == M:
                    alike = movable
                elif fb == M:
                    alike = 512 - (free + movable)
                else:
                    alike = 0
                if free + alike >= 256 or self.disabled:
                    self.pb[start >> 9] = Migratetype(mt)
                    return self.smallest(z, order, mt)
                break
        return None

    def steal(self, z: int, order: int, mt: int) -> int | None:
        for c in range(order, MAX_PAGE_ORDER + 1):
            for fb in FALLBACKS[Migratetype(mt)]:
                heads = self.of_type(z, c, fb)
                if heads:
                    self.take(heads[0], order)
                    return heads[0]
        return None

    def free_block(self, pfn: int, order: int) -> None:
        self._blocks.clear()
        for p in range(pfn, pfn + (1 << order)):
            assert not self.free[p]
            self.free[p] = True
        # __free_one_page: a 9 -> 10 merge gives the buddy pageblock the freed page's type ("Match buddy type")
        head = pfn >> 10 << 10
        z = next(i for i, (lo, hi) in enumerate(self.zones) if lo <= pfn < hi)
        if order < 10 and head + 1024 <= self.zones[z][1] and all(self.free[head : head + 1024]):
            mine = self.pb[pfn >> 9]
            self.pb[head >> 9] = self.pb[(head >> 9) + 1] = mine

    def free_count(self) -> int:
        return sum(self.free)


def check_structure(b: BuddyAllocator) -> None:
    """Structural invariants of any state: counts, alignment, no overlap, full coalescing, list type = pageblock type,
    free counts per type summing to the free frames."""
    b.check_invariants()
    typed = b.free_blocks_typed()
    blocks = [(p, o) for p, o, _ in typed]
    assert blocks == b.free_blocks()
    assert b.free_frames + b.used_frames == b.managed_frames
    assert b.free_frames == sum(1 << o for _, o in blocks)
    info = b.buddyinfo()
    assert len(info) == MAX_PAGE_ORDER + 1
    assert info == [sum(1 for _, o in blocks if o == k) for k in range(MAX_PAGE_ORDER + 1)]
    end = 0
    for pfn, o in blocks:  # sorted by pfn: non-overlapping, aligned, in range, inside one zone
        assert pfn >= end
        assert pfn % (1 << o) == 0
        end = pfn + (1 << o)
        assert end <= b.nframes
        assert b.zone_of(pfn) == b.zone_of(end - 1)
    as_set = set(blocks)
    for pfn, o in blocks:  # fully coalesced
        if o < MAX_PAGE_ORDER and b.zone_of(pfn ^ (1 << o)) == b.zone_of(pfn):
            assert (pfn ^ (1 << o), o) not in as_set
    pb = b.pageblock_types()
    for pfn, o, mt in typed:  # hygiene: a free block is on the list of its pageblock(s)' type
        for blk in range(pfn >> 9, max(pfn >> 9, (pfn + (1 << o) - 1) >> 9) + 1):
            assert pb[blk] == mt, (pfn, o, mt)
    by_type = b.free_frames_by_type()
    assert sum(by_type.values()) == b.free_frames
    assert by_type == {m: sum(1 << o for _, o, t in typed if t == m) for m in Migratetype}
    per_zone = b.pagetypeinfo()
    assert sum(pt.free_pages(name) for pt in per_zone for name in pt.free) == b.free_frames
    for pt in per_zone:
        zone = ZoneType[pt.zone]
        lo, hi = b.zone_span(zone)
        assert sum(pt.blocks.values()) == (hi - lo + 511) // 512


def alloc_loop(b: BuddyAllocator, order: int, count: int, mt: int = M) -> list[int] | None:
    """``count`` successive alloc() calls, all-or-nothing like alloc_bulk."""
    saved = copy.deepcopy(b)
    out = []
    for _ in range(count):
        pfn = b.alloc(order, mt)
        if pfn is None:
            b.__dict__.update(saved.__dict__)
            return None
        out.append(pfn)
    return out


MTS = st.sampled_from([U, M, R])
# 3 zones of 4 pageblocks each (DMA, DMA32, Normal) plus a ragged tail, so that NOFRAGMENT, lowmem reserves and
# zone fallbacks all take part; 1024-frame allocators have mobility grouping disabled (fewer than 512 * 6 pages).
GEOMETRIES = st.sampled_from([(1024, (1024, 1024)), (6144 + 300, (2048, 4096)), (4096, (4096, 4096))])


@st.composite
def fragmented_allocators(
    draw: st.DrawFn, classes: tuple[type[BuddyAllocator], ...] = (BuddyAllocator,)
) -> tuple[BuddyAllocator, list[tuple[int, int]]]:
    """An allocator (of one of ``classes``) after a random history of alloc/free of mixed types; returns it and the
    allocated blocks."""
    nframes, zones = draw(GEOMETRIES)
    b = draw(st.sampled_from(classes))(nframes, zone_pfns=zones)
    allocated: list[tuple[int, int]] = []
    for _ in range(draw(st.integers(0, 30))):
        if allocated and draw(st.booleans()):
            pfn, o = allocated.pop(draw(st.integers(0, len(allocated) - 1)))
            b.free(pfn, o)
        else:
            o = draw(st.integers(0, MAX_PAGE_ORDER))
            count = draw(st.integers(1, 600 >> o or 1))
            got = b.alloc_bulk(o, count, draw(MTS))
            if got is not None:
                allocated.extend((int(p), o) for p in got)
    return b, allocated


# ---------------------------------------------------------------------------------------------------- by hand: buddy


def test_initial_power_of_two() -> None:
    b = BuddyAllocator(1024)
    assert b.nframes == 1024
    assert b.max_order == 10  # MAX_PAGE_ORDER
    assert b.buddyinfo() == [0] * 10 + [1]
    assert (b.free_frames, b.used_frames) == (1024, 0)
    assert b.largest_free_order() == 10
    assert b.free_blocks() == [(0, 10)]


def test_two_order0_allocs_and_coalesce_back() -> None:
    b = BuddyAllocator(1024)
    assert b.alloc(0) == 0
    # expand(): 1024 -> halves 512@9, 256@8, 128@7, 64@6, 32@5, 16@4, 8@3, 4@2, 2@1, 1@0
    assert b.buddyinfo() == [1] * 10 + [0]
    assert b.free_blocks() == [(1 << k, k) for k in range(10)]
    assert b.alloc(0) == 1  # the order-0 buddy left by the split
    assert b.buddyinfo() == [0] + [1] * 9 + [0]
    assert (b.free_frames, b.used_frames) == (1022, 2)
    b.free(0, 0)  # buddy 1 still allocated: no merge
    assert b.buddyinfo() == [1] * 10 + [0]
    b.free(1, 0)  # merges 0+1 -> 0@1, +2@1 -> 0@2, ... -> 0@10
    assert b.free_blocks() == [(0, 10)]


def test_non_power_of_two_decomposition() -> None:
    b = BuddyAllocator(1000)
    # 1000 = 512 + 256 + 128 + 64 + 32 + 8
    assert b.free_blocks() == [(0, 9), (512, 8), (768, 7), (896, 6), (960, 5), (992, 3)]
    assert b.buddyinfo() == [0, 0, 0, 1, 0, 1, 1, 1, 1, 1, 0]
    assert b.largest_free_order() == 9


def test_tiny_and_ragged_sizes() -> None:
    assert BuddyAllocator(3).free_blocks() == [(0, 1), (2, 0)]
    assert BuddyAllocator(1).free_blocks() == [(0, 0)]
    b = BuddyAllocator(0)
    assert b.free_blocks() == [] and b.alloc(0) is None and b.largest_free_order() == -1
    # 2 GiB + 2 MiB + 4 KiB: blocks stop at MAX_PAGE_ORDER 10 and at the DMA/DMA32 boundary (16 MiB = frame 4096)
    b = BuddyAllocator((1 << 19) + 512 + 1)
    assert b.free_blocks() == [(i << 10, 10) for i in range(512)] + [(1 << 19, 9), ((1 << 19) + 512, 0)]


def test_coalescing_stops_at_max_page_order() -> None:
    b = BuddyAllocator(2048)
    assert b.buddyinfo() == [0] * 10 + [2]
    assert b.alloc(0) == 0
    b.free(0, 0)
    assert b.free_blocks() == [(0, 10), (1024, 10)]  # never one order-11 block


def test_smallest_fitting_block_is_split() -> None:
    b = BuddyAllocator(1000)
    assert b.alloc(4) == 960  # smallest order >= 4 with a free block is 5 (960); 976@4 goes back
    assert (976, 4) in b.free_blocks()
    assert b.alloc(3) == 992  # an exact order-3 block exists
    assert b.alloc(3) == 976  # now split 976@4: take 976, 984@3 goes back
    assert b.free_blocks() == [(0, 9), (512, 8), (768, 7), (896, 6), (984, 3)]


def test_lowest_pfn_first_within_an_order() -> None:
    b = BuddyAllocator(16)
    assert b.alloc_bulk(0, 16).tolist() == list(range(16))  # type: ignore[union-attr]
    for pfn in (12, 9, 3):
        b.free(pfn, 0)
    b.free(6, 1)
    assert b.free_blocks() == [(3, 0), (6, 1), (9, 0), (12, 0)]
    assert [b.alloc(0), b.alloc(0), b.alloc(0)] == [3, 9, 12]
    assert b.alloc(0) == 6  # order 0 exhausted: split 6@1
    assert b.free_blocks() == [(7, 0)]


def test_alloc_failure_returns_none() -> None:
    b = BuddyAllocator(1000)
    assert b.alloc(10) is None
    assert b.alloc(9) == 0
    assert b.alloc(9) is None
    assert b.alloc(8) == 512
    b = BuddyAllocator(4)
    assert b.alloc(2) == 0
    assert b.alloc(0) is None
    with pytest.raises(ValueError):
        b.alloc(11)
    with pytest.raises(ValueError):
        b.alloc(-1)


def test_free_rejects_bad_blocks() -> None:
    b = BuddyAllocator(1024)
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
    assert b.alloc(0) == 0 and b.alloc(0) == 1
    b.free(1, 0)
    with pytest.raises(ValueError, match="double free"):
        b.free(1, 0)
    b.free(0, 0)
    with pytest.raises(ValueError, match="double free"):
        b.free(0, 0)
    b = BuddyAllocator(8)
    assert b.alloc(1) == 0  # free: 2@1, 4@2
    with pytest.raises(ValueError, match="double free"):
        b.free(0, 2)  # [0, 4) overlaps the free 2@1 at its end
    assert b.free_blocks() == [(2, 1), (4, 2)] and b.free_frames == 6


def test_is_free() -> None:
    b = BuddyAllocator(1000)
    assert b.is_free(0) and b.is_free(999)
    assert b.alloc(3) == 992
    assert not b.is_free(992) and not b.is_free(999) and b.is_free(991)
    with pytest.raises(ValueError):
        b.is_free(1000)


def test_fragmentation_index_by_hand() -> None:
    b = BuddyAllocator(1024)
    assert b.fragmentation_index(0) == 0.0 and b.fragmentation_index(10) == 0.0
    b.alloc(0)  # free: one block of each order 0..9, 1023 pages
    assert b.fragmentation_index(9) == pytest.approx(511 / 1023)  # one suitable block, 512@9
    assert b.fragmentation_index(8) == pytest.approx((1023 - 768) / 1023)  # 512@9 gives 2, 256@8 one
    assert b.fragmentation_index(10) == 1.0
    assert b.fragmentation_index(1) == pytest.approx(1 / 1023)
    full = BuddyAllocator(4)
    full.alloc(2)
    assert full.fragmentation_index(0) == 1.0  # no free memory = all unusable (kernel convention)
    with pytest.raises(ValueError):
        b.fragmentation_index(11)


def test_alloc_bulk_by_hand() -> None:
    b = BuddyAllocator(1024)
    got = b.alloc_bulk(0, 3)
    assert got is not None and got.dtype == np.int64 and got.tolist() == [0, 1, 2]
    assert b.buddyinfo() == [1, 0] + [1] * 8 + [0]  # 3@0, 4@2, 8@3, ..., 512@9
    before = b.free_blocks()
    assert b.alloc_bulk(0, 1022) is None  # 1021 free
    assert b.free_blocks() == before
    assert b.alloc_bulk(0, 0).size == 0  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        b.alloc_bulk(0, -1)
    got = b.alloc_bulk(0, 1021)
    assert got is not None and sorted(got.tolist()) == list(range(3, 1024)) and b.free_frames == 0


def test_alloc_bulk_mixed_orders_by_hand() -> None:
    b = BuddyAllocator(1000)
    got = b.alloc_bulk(3, 6)
    # exact order 3: 992; then order 5 (960) whole: 960..984; then order 6 (896) partially: 896
    assert got is not None and got.tolist() == [992, 960, 968, 976, 984, 896]
    assert b.free_blocks() == [(0, 9), (512, 8), (768, 7), (904, 3), (912, 4), (928, 5)]
    assert BuddyAllocator(1024).alloc_bulk(9, 2).tolist() == [0, 512]  # type: ignore[union-attr]


def test_free_bulk_by_hand() -> None:
    b = BuddyAllocator(1024)
    pfns = b.alloc_bulk(0, 1000)
    assert pfns is not None
    b.free_bulk(pfns[::-1], 0)
    assert b.free_blocks() == [(0, 10)]
    b.free_bulk(np.empty(0, dtype=np.int64), 0)


@pytest.mark.parametrize("allocator", [BuddyAllocator, FastBuddyAllocator])
def test_free_bulk_rejects_bad_batches(allocator: type[BuddyAllocator]) -> None:
    b = allocator(1024)
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


# ---------------------------------------------------------------------------------------------------- by hand: zones

GIB = 1 << 18


def test_zones_by_pfn_and_the_zonelist() -> None:
    b = BuddyAllocator(8 * GIB)  # 8 GiB flat: DMA [0, 16M), DMA32 [16M, 4G), Normal [4G, 8G)
    assert b.zone_span(ZoneType.DMA) == (0, 4096)
    assert b.zone_span(ZoneType.DMA32) == (4096, 1 << 20)
    assert b.zone_span(ZoneType.NORMAL) == (1 << 20, 1 << 21)
    assert b.zonelist() == [ZoneType.NORMAL, ZoneType.DMA32, ZoneType.DMA]
    # setup_per_zone_lowmem_reserve(): "zone->lowmem_reserve[j] = managed_pages / ratio" (ratio 256), where
    # managed_pages sums the zones above i up to j
    assert b.lowmem_reserve(ZoneType.DMA) == ((1 << 20) - 4096 + (1 << 20)) // 256 == 8176
    assert b.lowmem_reserve(ZoneType.DMA32) == (1 << 20) // 256 == 4096
    assert b.alloc(0) == 1 << 20  # the first zone of the zonelist, lowest frame
    small = BuddyAllocator(4 * GIB)  # no Normal zone: "if (clear || empty) zone->lowmem_reserve[j] = 0"
    assert small.zonelist() == [ZoneType.DMA32, ZoneType.DMA]
    assert small.lowmem_reserve(ZoneType.DMA) == 0
    assert small.alloc(0) == 4096


def test_lowmem_reserve_keeps_dma_from_normal_requests() -> None:
    b = BuddyAllocator(8 * GIB)
    # __zone_watermark_ok: "if (free_pages <= min + z->lowmem_reserve[highest_zoneidx]) return false" with
    # free_pages = zone free - ((1 << order) - 1) and min = 0: a zone serves (free - reserve) >> order blocks.
    # Normal: 2^20 >> 10 = 1024; DMA32: (2^20 - 4096 - 4096) >> 10 = 1016; DMA: 4096 - 8176 < 0, none
    n = b.obtainable(10)
    assert n == 1024 + 1016
    assert b.alloc_bulk(10, n) is not None
    assert b.zone_free_frames(ZoneType.DMA32) == 4096 and b.zone_free_frames(ZoneType.DMA) == 4096
    assert b.obtainable(0) == 0  # 4096 <= 4096 (DMA32) and 4096 <= 8176 (DMA)
    assert b.alloc(0) is None and b.alloc_bulk(0, 1) is None


def test_nofragment_prefers_dma32_to_mixing_a_normal_pageblock() -> None:
    # Zones of 4 pageblocks each; Normal full but for half of one movable pageblock.
    b = BuddyAllocator(6144, zone_pfns=(2048, 4096))
    got = b.alloc_bulk(0, 2048, M)
    assert got is not None and got[0] == 4096 and got[-1] == 6143  # all of Normal, from its own free lists
    b.free_bulk(np.arange(4096, 4096 + 512, 2), 0)  # 256 free pages in pageblock 8
    # alloc_flags_nofragment(): the preferred zone is Normal, so the first pass runs with ALLOC_NOFRAGMENT and
    # __rmqueue_claim "Do not steal pages from freelists belonging to other pageblocks i.e. orders <
    # pageblock_order": Normal yields nothing, and DMA32's largest movable block (order 10 at 2048) is claimed whole
    assert b.alloc(0, U) == 2048
    assert b.pageblock_migratetype(2048) == U and b.pageblock_migratetype(2048 + 512) == U  # change_pageblock_range
    assert b.pageblock_migratetype(4096) == M


# ---------------------------------------------------------------------------------------------------- by hand: types


def test_boot_pageblocks_are_movable_and_grouping_needs_enough_memory() -> None:
    b = BuddyAllocator(4096)  # 8 pageblocks >= pageblock_nr_pages * MIGRATE_TYPES (512 * 6 = 3072 pages)
    assert not b.mobility_disabled
    assert set(b.pageblock_types().tolist()) == {M}  # memmap_init_range: MIGRATE_MOVABLE
    tiny = BuddyAllocator(3071)  # build_all_zonelists_init: "page_group_by_mobility_disabled = 1"
    assert tiny.mobility_disabled
    assert set(tiny.pageblock_types().tolist()) == {U}
    # gfp_migratetype(): UNMOVABLE for every request; 3071 = 1024 + 1024 + 512 + ... + 1, the smallest block is 3070@0
    assert tiny.alloc(0, M) == 3070 and tiny.free_frames_by_type()[M] == 0


def test_unmovable_request_claims_the_whole_block_of_the_largest_free_block() -> None:
    b = BuddyAllocator(4096)
    assert b.alloc(0, U) == 0
    # __rmqueue_claim: "Find the largest available free page in the other list": order 10 at 0; try_to_claim_block:
    # "if (current_order >= pageblock_order) { ... change_pageblock_range(page, current_order, start_type);
    # nr_added = expand(zone, page, order, current_order, start_type)": both pageblocks of the block turn unmovable
    # and the halves 1@0 ... 512@9 go to the unmovable lists
    assert b.pageblock_types().tolist() == [U, U, M, M, M, M, M, M]
    assert b.free_blocks_typed()[:10] == [(1 << k, k, U) for k in range(10)]
    info = b.pagetypeinfo()[0]
    assert info.blocks == {"Unmovable": 2, "Movable": 6, "Reclaimable": 0}
    assert info.free["Unmovable"] == [1] * 10 + [0] and info.free["Movable"] == [0] * 10 + [3]
    assert b.alloc(0, U) == 1  # __rmqueue_smallest now serves unmovable requests from the claimed block
    assert b.alloc(0, M) == 1024  # and movable ones from their own lists


def test_a_large_unmovable_request_claims_one_order_10_block_after_another() -> None:
    b = BuddyAllocator(8192)  # DMA [0, 4096), DMA32 [4096, 8192): four order-10 movable blocks each
    got = b.alloc_bulk(0, 3000, U)
    # each claim takes "the largest available free page" (the lowest order-10 movable block of DMA32) whole and the
    # following calls consume it in ascending order: 4096..5119, 5120..6143, then 6144.. for the last 952
    assert got is not None and got.tolist() == list(range(4096, 4096 + 3000))
    assert b.pageblock_types().tolist()[8:14] == [U] * 6 and b.pageblock_types().tolist()[14:] == [M, M]
    loop = BuddyAllocator(8192)
    assert [loop.alloc(0, U) for _ in range(3000)] == got.tolist()


def _movable_host_with_holes(sizes: dict[int, int]) -> BuddyAllocator:
    """4096 frames, all allocated movable, then one free block of order ``sizes[blk]`` at the start of each
    pageblock ``blk``."""
    b = BuddyAllocator(4096)
    assert b.alloc_bulk(0, 4096, M) is not None
    for blk, order in sizes.items():
        b.free_bulk(np.arange(blk * 512, blk * 512 + (1 << order)), 0)
    return b


def test_sub_pageblock_claim_counts_non_movable_pages_as_alike() -> None:
    b = _movable_host_with_holes({3: 8, 5: 6})  # 256 free at 1536, 64 free at 2560
    # The largest movable block is order 8, in pageblock 3. try_to_claim_block: with no page on an LRU (no
    # page_tags), "if (block_type == MIGRATE_MOVABLE) alike_pages = pageblock_nr_pages - (free_pages +
    # movable_pages)" = 512 - 256 = 256, and "free_pages + alike_pages >= (1 << (pageblock_order-1))": 512 >= 256
    assert b.alloc(0, U) == 1536
    assert b.pageblock_migratetype(1536) == U and b.pageblock_migratetype(2560) == M
    assert (1537, 0, U) in b.free_blocks_typed()  # __move_freepages_block moved the block's free pages


def test_a_pageblock_half_free_or_alike_is_claimed() -> None:
    tags = np.zeros(4096, dtype=np.uint8)
    tags[1536 + 256 : 2048] = 1  # pageblock 3: 256 pages on an LRU (tag 1 is an LRU owner's)
    b = BuddyAllocator(4096, page_tags=(tags, np.array([False, True])))
    assert b.alloc_bulk(0, 4096, M) is not None
    b.free_bulk(np.arange(1536, 1536 + 128), 0)  # 128 free; the other 128 pages are neither free nor on an LRU
    # alike_pages = pageblock_nr_pages - (free_pages + movable_pages) = 512 - (128 + 256) = 128, and
    # "free_pages + alike_pages >= (1 << (pageblock_order-1))": 256 >= 256, exactly the threshold
    assert b.alloc(0, U) == 1536
    assert b.pageblock_migratetype(1536) == U


def test_a_pageblock_full_of_movable_pages_is_stolen_from_not_claimed() -> None:
    tags = np.ones(4096, dtype=np.uint8)  # every allocated page on an LRU
    b = BuddyAllocator(4096, page_tags=(tags, np.array([False, True])))
    assert b.alloc_bulk(0, 4096, M) is not None
    b.free_bulk(np.arange(1536, 1536 + 128), 0)  # 128 free (order 7) in pageblock 3
    b.free_bulk(np.arange(2560, 2560 + 64), 0)  # 64 free (order 6) in pageblock 5
    tags[1536 : 1536 + 128] = tags[2560 : 2560 + 64] = 0
    # Every allocated page is on an LRU: alike = 512 - (128 + 384) = 0 and 128 < 256, so neither head (order 7 in
    # pageblock 3, order 6 in pageblock 5) is claimed; __rmqueue_steal then takes "the smallest buddy" of a fallback
    # type: order 6 at 2560, and its leftovers stay on the movable lists (page_del_and_expand(..., fallback_mt))
    assert b.alloc(0, U) == 2560
    assert set(b.pageblock_types().tolist()) == {M}
    assert (2561, 0, M) in b.free_blocks_typed()


def test_small_movable_requests_never_claim() -> None:
    b = BuddyAllocator(4096)
    assert b.alloc(0, U) == 0  # pageblocks 0 and 1 unmovable, halves 1@0 ... 512@9 on the unmovable lists
    assert b.alloc_bulk(0, 3072, M) is not None  # every movable page
    # unmovable order 3, smallest first: 8@3, then 16@4 .. 512@9 in ascending order; 126 = 1+2+4+8+16+32+63
    # leaves the last order-3 piece of 512@9 (1016), and 1@0, 2@1, 4@2, taken by seven order-0 requests
    assert b.alloc_bulk(3, 126, U) is not None
    assert b.alloc_bulk(0, 7, U).tolist() == [1, 2, 3, 4, 5, 6, 7]  # type: ignore[union-attr]
    assert b.free_blocks_typed() == [(1016, 3, U)]
    # should_try_claim_block(3, MOVABLE) is false ("Movable pages won't cause permanent fragmentation"), so
    # find_suitable_fallback returns -2 and __rmqueue_claim aborts; __rmqueue_steal takes the block
    assert not should_try_claim_block(3, M) and should_try_claim_block(4, M) and should_try_claim_block(0, U)
    assert b.alloc(0, M) == 1016
    assert b.pageblock_migratetype(1016) == U
    assert b.free_blocks_typed() == [(1017, 0, U), (1018, 1, U), (1020, 2, U)]


def test_unmovable_falls_back_to_reclaimable_before_movable() -> None:
    b = BuddyAllocator(4096)
    assert b.alloc(0, R) == 0  # claims 0..1023 (pageblocks 0, 1) for reclaimable; its halves go to those lists
    # __rmqueue_claim scans from MAX_PAGE_ORDER down, and at order 10 only movable blocks are free: "largest
    # first" comes before the preference order of fallbacks[]
    assert b.alloc(0, U) == 1024
    b2 = BuddyAllocator(4096)
    assert b2.alloc_bulk(10, 3, M).tolist() == [0, 1024, 2048]  # type: ignore[union-attr]
    assert b2.alloc(0, R) == 3072  # claims 3072@10: 3584@9 is left reclaimable
    b2.free(0, 10)
    assert b2.alloc(9, M) == 0  # splits 0@10: 512@9 is left movable
    # Order 10 is empty and order 9 holds 512 (movable) and 3584 (reclaimable): fallbacks[MIGRATE_UNMOVABLE] =
    # { MIGRATE_RECLAIMABLE, MIGRATE_MOVABLE }, so the higher reclaimable block is claimed
    assert b2.alloc(0, U) == 3584
    assert b2.pageblock_migratetype(3584) == U and b2.pageblock_migratetype(512) == M


def test_merging_free_pageblocks_of_two_types_takes_the_freed_pages_type() -> None:
    b = BuddyAllocator(4096)
    assert b.alloc(9, U) == 0  # claims 0@10 whole: pageblocks 0, 1 unmovable, 512@9 free
    assert b.alloc_bulk(10, 3, M).tolist() == [1024, 2048, 3072]  # type: ignore[union-attr]
    assert b.alloc(9, U) == 512
    b.free(512, 9)
    assert b.alloc(9, M) == 512  # "Take ownership for orders >= pageblock_order": pageblock 1 turns movable
    assert b.pageblock_types().tolist()[:2] == [U, M]
    b.free(512, 9)  # its buddy 0@9 is allocated: 512@9 waits on the movable list
    assert (512, 9, M) in b.free_blocks_typed()
    # __free_one_page of 0@9 (unmovable): the buddy is free and movable; "if (unlikely(buddy_mt != migratetype))
    # ... set_pageblock_migratetype(buddy, migratetype)": one unmovable order-10 block
    b.free(0, 9)
    assert b.pageblock_types().tolist()[:2] == [U, U]
    assert (0, 10, U) in b.free_blocks_typed()


def test_take_free_range_splits_straddling_blocks() -> None:
    b = BuddyAllocator(4096)
    frames = b.take_free_range(100, 700)
    assert frames.tolist() == list(range(100, 700))
    assert b.free_frames == 4096 - 600
    check_structure(b)
    assert not b.is_free(100) and b.is_free(99) and b.is_free(700)


# ---------------------------------------------------------------------------------------------------- 2 TiB

TWO_TIB_FRAMES = 1 << 29


def test_two_tib_allocator_bulk() -> None:
    b = BuddyAllocator(TWO_TIB_FRAMES)
    normal_blocks = (TWO_TIB_FRAMES - (1 << 20)) >> 10
    assert b.buddyinfo() == [0] * 10 + [4 + 1020 + normal_blocks]
    pages = b.alloc_bulk(0, 1 << 20)
    assert pages is not None
    assert np.array_equal(pages, np.arange(1 << 20, 1 << 21, dtype=np.int64))  # Normal first, lowest first
    assert b.alloc(0) == 1 << 21
    assert b.alloc(9) == (1 << 21) + 512
    b.free(1 << 21, 0)
    b.free((1 << 21) + 512, 9)
    rng = np.random.default_rng(1)
    perm = rng.permutation(pages)
    b.free_bulk(perm[: 1 << 19], 0)  # a random half: badly fragmented free lists
    assert sum(n << o for o, n in enumerate(b.buddyinfo())) == b.free_frames == TWO_TIB_FRAMES - (1 << 19)
    assert b.fragmentation_index(1) > 0.0
    b.free_bulk(perm[1 << 19 :], 0)
    assert b.buddyinfo() == [0] * 10 + [4 + 1020 + normal_blocks]


# ---------------------------------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(state=fragmented_allocators(), order=st.integers(0, MAX_PAGE_ORDER), count=st.integers(0, 700), mt=MTS)
def test_alloc_bulk_equals_alloc_loop(
    state: tuple[BuddyAllocator, list[tuple[int, int]]], order: int, count: int, mt: Migratetype
) -> None:
    b, _ = state
    count >>= order // 2
    twin = copy.deepcopy(b)
    expected = alloc_loop(twin, order, count, mt)
    got = b.alloc_bulk(order, count, mt)
    if expected is None:
        assert got is None
    else:
        assert got is not None and got.tolist() == expected
    assert b.free_blocks_typed() == twin.free_blocks_typed()
    assert np.array_equal(b.pageblock_types(), twin.pageblock_types())
    check_structure(b)
    assert [b.alloc(0, U) for _ in range(5)] == [twin.alloc(0, U) for _ in range(5)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(state=fragmented_allocators((BuddyAllocator, FastBuddyAllocator)), data=st.data())
def test_free_bulk_equals_free_loop(state: tuple[BuddyAllocator, list[tuple[int, int]]], data: st.DataObject) -> None:
    """Both engines' free_bulk against the documented equivalent, a loop of the reference's free()."""
    b, allocated = state
    order = data.draw(st.integers(0, MAX_PAGE_ORDER))
    pieces = [p + i * (1 << order) for p, o in allocated if o >= order for i in range(1 << (o - order))]
    if not pieces:
        return
    chosen = data.draw(st.lists(st.sampled_from(pieces), unique=True, max_size=len(pieces)))
    twin = BuddyAllocator.__new__(BuddyAllocator)
    twin.__setstate__(copy.deepcopy(b.__getstate__()))  # the same state, the reference's code
    for pfn in sorted(chosen):  # the documented equivalent: a loop of free() in ascending PFN order
        twin.free(pfn, order)
    b.free_bulk(np.array(chosen, dtype=np.int64), order, check_free=data.draw(st.booleans()))
    assert b.free_blocks_typed() == twin.free_blocks_typed()
    assert np.array_equal(b.pageblock_types(), twin.pageblock_types())
    check_structure(b)


# ---------------------------------------------------------------------------------------------------- state machine


class BuddyMachine(RuleBasedStateMachine):
    """Random alloc/free/bulk traffic of every migratetype against NaiveBuddy (of ``allocator``: the fast engine's
    tests run this machine on theirs)."""

    allocator: type[BuddyAllocator] = BuddyAllocator

    @initialize(geometry=GEOMETRIES, lru=st.booleans())
    def setup(self, geometry: tuple[int, tuple[int, int]], lru: bool) -> None:
        nframes, zones = geometry
        self.tags = np.zeros(nframes, dtype=np.uint8)  # 1: on an LRU list
        movable = (lambda pfn, n: int(np.count_nonzero(self.tags[pfn : pfn + n]))) if lru else None
        page_tags = (self.tags, np.array([False, True])) if lru else None
        self.b = self.allocator(nframes, zone_pfns=zones, page_tags=page_tags)
        self.model = NaiveBuddy(nframes, zones, movable=movable)
        self.allocated: list[tuple[int, int]] = []

    def _track(self, pfn: int, order: int, mt: int) -> None:
        self.allocated.append((pfn, order))
        if mt == M:  # movable allocations are on an LRU (page cache, anonymous memory)
            self.tags[pfn : pfn + (1 << order)] = 1

    def _untrack(self, pfn: int, order: int) -> None:
        self.allocated.remove((pfn, order))
        self.tags[pfn : pfn + (1 << order)] = 0

    @rule(order=st.integers(0, MAX_PAGE_ORDER), mt=MTS)
    def alloc(self, order: int, mt: Migratetype) -> None:
        got = self.b.alloc(order, mt)
        assert got == self.model.alloc(order, mt)
        if got is not None:
            self._track(got, order, mt)

    @precondition(lambda self: self.allocated)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        pfn, order = data.draw(st.sampled_from(self.allocated))
        self._untrack(pfn, order)
        self.b.free(pfn, order)
        self.model.free_block(pfn, order)

    @rule(order=st.integers(0, 6), count=st.integers(0, 80), mt=MTS)
    def alloc_bulk(self, order: int, count: int, mt: Migratetype) -> None:
        obtainable = self.b.obtainable(order)
        got = self.b.alloc_bulk(order, count, mt)
        if obtainable < count:
            assert got is None
            probe = copy.deepcopy(self.model)  # the loop gets exactly `obtainable` blocks, then fails
            assert all(probe.alloc(order, mt) is not None for _ in range(obtainable))
            assert probe.alloc(order, mt) is None
            return
        expected = [self.model.alloc(order, mt) for _ in range(count)]
        assert got is not None and got.tolist() == expected
        for p in got.tolist():
            self._track(p, order, mt)

    @precondition(lambda self: self.allocated)
    @rule(data=st.data())
    def free_bulk(self, data: st.DataObject) -> None:
        order = data.draw(st.sampled_from(sorted({o for _, o in self.allocated})))
        same = [blk for blk in self.allocated if blk[1] == order]
        chosen = data.draw(st.lists(st.sampled_from(same), unique=True, min_size=1, max_size=len(same)))
        self.b.free_bulk(np.array([p for p, _ in chosen], dtype=np.int64), order)
        for blk in sorted(chosen):
            self._untrack(*blk)
            self.model.free_block(*blk)

    @precondition(lambda self: any(o > 0 for _, o in self.allocated))
    @rule(data=st.data())
    def free_as_pages(self, data: st.DataObject) -> None:
        """Free a high-order block as its order-0 pages (split_page() then freeing each page)."""
        pfn, order = data.draw(st.sampled_from([blk for blk in self.allocated if blk[1] > 0]))
        self._untrack(pfn, order)
        pages = np.arange(pfn, pfn + (1 << order), dtype=np.int64)
        self.b.free_bulk(data.draw(st.permutations(pages.tolist())), 0)
        for p in pages.tolist():
            self.model.free_block(p, 0)

    @precondition(lambda self: self.b.free_frames > 0)
    @rule(data=st.data())
    def double_free_is_rejected(self, data: st.DataObject) -> None:
        pfn, order = data.draw(st.sampled_from(self.b.free_blocks()))
        sub = data.draw(st.integers(0, order))
        before = self.b.free_blocks_typed()
        with pytest.raises(ValueError):
            self.b.free(pfn, sub)
        with pytest.raises(ValueError):
            self.b.free_bulk(np.array([pfn]), sub)
        assert self.b.free_blocks_typed() == before

    @invariant()
    def matches_model(self) -> None:
        b = self.b
        check_structure(b)
        assert b.free_blocks_typed() == self.model.typed_blocks()
        assert b.pageblock_types().tolist() == [int(t) for t in self.model.pb]
        assert b.free_frames == self.model.free_count()
        # is_free at both ends of every free block, on either side, and on every 97th frame
        edges = {q for p, o in b.free_blocks() for q in (p - 1, p, p + (1 << o) - 1, p + (1 << o))}
        probe = sorted(q for q in edges | set(range(0, b.nframes, 97)) if 0 <= q < b.nframes)
        assert [b.is_free(p) for p in probe] == [self.model.free[p] for p in probe]

    @invariant()
    def introspection(self) -> None:
        b = self.b
        info = b.buddyinfo()
        assert b.largest_free_order() == max((o for o, n in enumerate(info) if n), default=-1)
        free_pages = sum(n << o for o, n in enumerate(info))
        for order in range(MAX_PAGE_ORDER + 1):
            suitable = sum(n << (o - order) for o, n in enumerate(info) if o >= order)
            expected = 1.0 if free_pages == 0 else (free_pages - (suitable << order)) / free_pages
            assert b.fragmentation_index(order) == pytest.approx(expected)


BuddyMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestBuddyMachine = BuddyMachine.TestCase


def test_free_bulk_probes_frames_when_free_memory_is_fragmented() -> None:
    """A double free inside a large fragmented batch is still caught, and nothing changes."""
    b = BuddyAllocator(4096)
    frames = b.alloc_bulk(0, 4096)
    assert frames is not None
    b.free_bulk(frames[::2], 0)
    state = b.free_blocks()
    with pytest.raises(ValueError, match="double free"):
        b.free_bulk(np.array([1, 3, 4]), 0)  # frame 4 is free
    assert b.free_blocks() == state
    b.free_bulk(np.array([1, 3, 5]), 0)
    assert (0, 2) in b.free_blocks() and (4, 1) in b.free_blocks()


def test_ranges_leave_holes_unallocatable() -> None:
    b = BuddyAllocator(4096, ranges=[(0, 1000), (2048, 4096)])
    assert b.managed_frames == 3048 and b.free_frames == 3048
    assert b.free_blocks() == [(0, 9), (512, 8), (768, 7), (896, 6), (960, 5), (992, 3), (2048, 10), (3072, 10)]
    got = b.alloc_bulk(0, 3048, M)
    assert got is not None and not ((got >= 1000) & (got < 2048)).any()
    assert b.alloc(0) is None
    with pytest.raises(ValueError, match="not RAM"):
        b.free(1500, 0)
    b.free_bulk(got, 0)
    assert b.free_frames == 3048
