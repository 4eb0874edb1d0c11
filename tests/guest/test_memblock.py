"""Tests for snpsim.guest.memblock: the unaccepted bitmap, freeing to the buddy allocator, early allocation sizes.

Expected values are worked out by hand from the quoted kernel lines (drivers/firmware/efi/unaccepted_memory.c,
drivers/firmware/efi/libstub/unaccepted_memory.c, mm/mm_init.c, mm/percpu.c, mm/sparse.c) or from real dmesg lines.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from snpsim.guest.memblock import (
    SECTION_MAP_PAGES,
    GuestPhysAllocator,
    Placement,
    UnacceptedMemory,
    alloc_large_system_hash_pages,
    free_to_buddy,
    pcpu_build_alloc_info,
    present_sections,
    vmemmap_pgtable_pages,
)

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
U = 512  # 2 MiB bitmap unit in pages
B = 1024  # 4 MiB MAX_PAGE_ORDER block in pages


def bitmap(*ranges: tuple[int, int], guard: bool = True) -> UnacceptedMemory:
    m = UnacceptedMemory(U, guard)
    for g, n in ranges:
        m.mark(g, n)
    return m


# --------------------------------------------------------------------------------------------- accept_memory


def test_accept_memory_adds_the_guard_unit_when_end_is_unit_aligned() -> None:
    # "if (!(end % unit_size)) end += unit_size;" -> accepting [0, 4M) clears [0, 6M): one run, one
    # arch_accept_memory() call.
    m = bitmap((0, 4 * U))  # [0, 8M) unaccepted
    assert m.accept_memory(0, 2 * U) == [(0, 3 * U)]
    # the next 4 MiB block [4M, 8M) (+ guard [8M, 10M), not set) finds only [6M, 8M) still set
    assert m.accept_memory(2 * U, 2 * U) == [(3 * U, U)]
    assert m.ranges() == []
    # an unaligned end gets no guard: [8M + 4K, 8M + 8K) is inside unit 4 only
    m = bitmap((0, 8 * U))
    assert m.accept_memory(4 * U + 1, 1) == [(4 * U, U)]
    assert m.ranges() == [(0, 4 * U), (5 * U, 3 * U)]


def test_accept_memory_one_call_per_set_bit_run() -> None:
    # for_each_set_bitrange_from(): units 0,1 set, 2 clear, 3 set -> two arch_accept_memory() calls
    m = bitmap((0, 2 * U), (3 * U, U))
    assert m.accept_memory(0, 4 * U) == [(0, 2 * U), (3 * U, U)]
    assert m.accept_memory(0, 4 * U) == []  # nothing left: bitmap_clear() cleared them
    assert not m.range_contains_unaccepted_memory(0, 4 * U)


def test_without_guard_only_the_touched_units() -> None:
    m = bitmap((0, 4 * U), guard=False)
    assert m.accept_memory(0, 2 * U) == [(0, 2 * U)]
    assert m.ranges() == [(2 * U, 2 * U)]


def test_range_contains_unaccepted_memory_looks_at_the_next_unit() -> None:
    # "Also consider the unaccepted state of the *next* page": [0, 2M) is accepted, [2M, 4M) is not
    m = bitmap((U, U))
    assert m.range_contains_unaccepted_memory(0, U)  # end aligned: unit 1 checked too
    assert not m.range_contains_unaccepted_memory(0, U - 1)
    assert not UnacceptedMemory(U, guard=False).range_contains_unaccepted_memory(0, U)


def test_process_unaccepted_memory_accepts_heads_tails_and_small_ranges() -> None:
    m = UnacceptedMemory(U)
    # "immediately accepting all memory if the range is less than two units"
    assert m.process_unaccepted_memory(100, 2 * U - 1) == [(100, 2 * U - 1)]
    assert m.ranges() == []
    # [1 MiB, 10 MiB + 4K): head [1M, 2M) and tail [10M, 10M + 4K) up front, [2M, 10M) recorded
    assert m.process_unaccepted_memory(256, 10 * 256 + 1 - 256) == [(256, 256), (5 * U, 1)]
    assert m.ranges() == [(U, 4 * U)]
    with pytest.raises(ValueError):
        m.mark(1, U)


# ------------------------------------------------------------------------------------------- free to buddy


def test_free_to_buddy_lists_whole_blocks_and_accepts_chunks() -> None:
    # Free [0, 10M) of all-unaccepted RAM: blocks [0, 4M) and [4M, 8M) are whole -> zone->unaccepted_pages;
    # [8M, 10M) is a chunk smaller than MAX_PAGE_ORDER -> "Accept chunks smaller than MAX_PAGE_ORDER upfront".
    m = bitmap((0, 8 * U))
    accepted, listed = free_to_buddy(m, [(0, 5 * U)], B, lazy=True)
    assert listed == [0, B]
    # the chunk ends unit-aligned: accept_memory() takes the guard unit [10M, 12M) too, in the same run
    assert accepted == [(4 * U, 2 * U)]
    assert m.ranges() == [(0, 4 * U), (6 * U, 2 * U)]


def test_free_to_buddy_eager_accepts_every_block() -> None:
    m = bitmap((0, 8 * U))
    accepted, listed = free_to_buddy(m, [(0, 8 * U)], B, lazy=False)
    # __free_pages_core() -> accept_memory(page, 4M) per block: [0, 6M), then [6M, 10M) -> only [6M, 8M) is set...
    assert listed == [] and accepted == [(0, 3 * U), (3 * U, 2 * U), (5 * U, 2 * U), (7 * U, U)]
    assert m.ranges() == []


def test_free_to_buddy_lists_an_accepted_block_whose_next_unit_is_unaccepted() -> None:
    # page_contains_unaccepted() is range_contains_unaccepted_memory(): a block ending where unaccepted memory
    # starts "contains" the guard unit.
    m = bitmap((2 * U, 2 * U))
    _, listed = free_to_buddy(m, [(0, B)], B, lazy=True)
    assert listed == [0]


def naive_free_to_buddy(
    m: UnacceptedMemory, free: list[tuple[int, int]], lazy: bool
) -> tuple[list[tuple[int, int]], list[int]]:
    """deferred_free_pages() block by block: "if (nr_pages == MAX_ORDER_NR_PAGES && IS_MAX_ORDER_ALIGNED(pfn))"
    -> __free_pages_core(page, MAX_PAGE_ORDER) (listed if lazy and page_contains_unaccepted(), else accepted);
    else "accept_memory(PFN_PHYS(pfn), nr_pages * PAGE_SIZE)"."""
    accepted: list[tuple[int, int]] = []
    listed: list[int] = []
    for gfn, n in free:
        g, end = gfn, gfn + n
        while g < end:
            chunk_end = min(end, (g // B + 1) * B)
            if g % B == 0 and chunk_end - g == B:
                if m.range_contains_unaccepted_memory(g, B):
                    if lazy:
                        listed.append(g)
                    else:
                        accepted += m.accept_memory(g, B)
            else:
                accepted += m.accept_memory(g, chunk_end - g)
            g = chunk_end
    return accepted, listed


@given(
    bits=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 12)), max_size=6),
    free=st.lists(st.tuples(st.integers(0, 40 * U), st.integers(1, 12 * U)), max_size=5),
    lazy=st.booleans(),
    guard=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_free_to_buddy_matches_block_by_block(
    bits: list[tuple[int, int]], free: list[tuple[int, int]], lazy: bool, guard: bool
) -> None:
    a, b = UnacceptedMemory(U, guard), UnacceptedMemory(U, guard)
    for unit, n in bits:
        a.mark(unit * U, n * U)
        b.mark(unit * U, n * U)
    ranges = sorted(free)
    disjoint = [r for i, r in enumerate(ranges) if i == 0 or ranges[i - 1][0] + ranges[i - 1][1] <= r[0]]
    assert free_to_buddy(a, disjoint, B, lazy) == naive_free_to_buddy(b, disjoint, lazy)
    assert a.ranges() == b.ranges()


# -------------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("cpus", "static", "unit", "units"),
    [
        # dmesg "percpu: Embedded 61 pages/cpu s212992 r8192 d28672 u2097152", "nr_cpu_ids:1"
        (1, 212992, 2 * MIB, 1),
        # dmesg "Embedded 67 pages/cpu s237568 r8192 d28672 u524288 alloc=1*2097152", "nr_cpu_ids:12"
        (12, 237568, 512 * KIB, 12),
        # dmesg "Embedded 54 pages/cpu s184320 r8192 d28672 u262144", "nr_cpu_ids:8"
        (8, 184320, 256 * KIB, 8),
        # dmesg "Embedded 51 pages/cpu s172032 r8192 d28672 u262144", "nr_cpu_ids:16"
        (16, 172032, 256 * KIB, 16),
        # 4 CPUs, s212992: size_sum 249856, max_upa 8 wastes 4 > 4 / 3 units; upa 4 wastes none -> 512 KiB
        (4, 212992, 512 * KIB, 4),
        # 5 CPUs: upa 8 wastes 3 > 1; upa 4 -> 2 allocations, 3 wasted > 1; upa 2 -> 3 allocs, 1 wasted;
        # upa 1 -> 5 allocs > 3: stop. 1 MiB units, 6 of them
        (5, 212992, 1 * MIB, 6),
    ],
)
def test_pcpu_build_alloc_info_matches_dmesg(cpus: int, static: int, unit: int, units: int) -> None:
    ai = pcpu_build_alloc_info(cpus, static, 8 * KIB, 28 * KIB, 2 * MIB)
    assert (ai.unit_bytes, ai.nr_units) == (unit, units)
    # "Embedded N pages/cpu" is PFN_DOWN(size_sum)
    assert ai.size_sum_bytes == static + 8192 + 28672


def test_memmap_is_2m_per_section() -> None:
    # section_map_size() = ALIGN(64 * 32768, PMD_SIZE) = 2 MiB = 512 pages
    assert SECTION_MAP_PAGES == 512
    # q35 16 GiB guest: [0, 2G) = sections 0..15, [4G, 18G) = sections 32..143: 128 sections -> 256 MiB
    secs = present_sections([(0, 524288), (1048576, 14 * 262144)])
    assert len(secs) == 128 and secs[:2] == [0, 1] and secs[16] == 32
    # vmemmap of pfn < 16M (64 GiB) is inside the first 1 GiB of vmemmap: one PMD table, one PUD table
    assert vmemmap_pgtable_pages(secs) == 2
    # a section at 64 GiB starts the second PMD table
    assert vmemmap_pgtable_pages([0, 512]) == 3


@pytest.mark.parametrize(
    ("nr_pages", "scale", "pages"),
    [
        # 4,118,837 pages: round_up to 256 -> 4,119,040; >> 1 = 2,059,520; roundup_pow_of_two -> 2^21 buckets
        # * 8 B = 16 MiB; scale 14: >> 2 = 1,029,760 -> 2^20 * 8 B = 8 MiB
        (4_118_837, 13, 4096),
        (4_118_837, 14, 2048),
        # above 64 GiB the scale grows ("for (adapt = ADAPT_SCALE_NPAGES; adapt < numentries; adapt <<= 2)
        # scale++"): 2^25 pages (128 GiB): 2^24 < 2^25 -> scale 14, 2^26 stops; 2^25 >> 2 = 2^23 buckets = 64 MiB
        (1 << 25, 13, (64 * MIB) >> 12),
        # tiny: 16,384 pages -> >> 1 = 8192 buckets = 64 KiB
        (16_384, 13, 16),
    ],
)
def test_alloc_large_system_hash(nr_pages: int, scale: int, pages: int) -> None:
    assert alloc_large_system_hash_pages(nr_pages, nr_pages, 8, scale) == pages


# --------------------------------------------------------------------------------------------- allocator


def test_allocator_find_and_release() -> None:
    a = GuestPhysAllocator([(0, 1000)])
    assert a.find(10, align=8) == 984  # round_down(1000 - 10, 8)
    assert a.free_pages() == 1000  # find takes nothing
    p = a.alloc("chunk", 100)
    assert (p.gfn, p.npages) == (900, 100)
    a.release(920, 30)  # give back the middle of it
    assert a.placements == [Placement("chunk", 900, 20), Placement("chunk", 950, 50)]
    assert a.alloc("small", 30).gfn == 920  # the hole is the highest free fit
    with pytest.raises(ValueError):
        a.release(0, 10)  # free already


# ------------------------------------------------------------------------------------------- state machine


class UnacceptedMachine(RuleBasedStateMachine):
    """accept_memory() against a per-unit list of bools: the same units cleared, each at most once."""

    UNITS = 24

    def __init__(self) -> None:
        super().__init__()
        self.m = UnacceptedMemory(U, guard=True)
        self.m.mark(0, self.UNITS * U)
        self.naive = [True] * self.UNITS
        self.cleared = 0

    @rule(gfn=st.integers(0, 24 * U - 1), npages=st.integers(1, 6 * U))
    def accept(self, gfn: int, npages: int) -> None:
        end = gfn + npages
        if end % U == 0:
            end += U
        want = [u for u in range(gfn // U, min(self.UNITS, -(-end // U))) if self.naive[u]]
        runs = self.m.accept_memory(gfn, npages)
        got = [u for g, n in runs for u in range(g // U, (g + n) // U)]
        assert got == want
        for g, n in runs:
            assert g % U == 0 and n % U == 0 and n > 0
        for u in want:
            self.naive[u] = False
        self.cleared += len(got)

    @rule(gfn=st.integers(0, 24 * U - 1), npages=st.integers(1, 6 * U))
    def contains(self, gfn: int, npages: int) -> None:
        end = gfn + npages + (U if (gfn + npages) % U == 0 else 0)
        want = any(self.naive[u] for u in range(gfn // U, min(self.UNITS, -(-end // U))))
        assert self.m.range_contains_unaccepted_memory(gfn, npages) == want

    @invariant()
    def conserved(self) -> None:
        assert self.m.pages() == sum(self.naive) * U
        assert self.cleared + sum(self.naive) == self.UNITS


TestUnacceptedMachine = UnacceptedMachine.TestCase
TestUnacceptedMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
