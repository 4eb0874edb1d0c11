"""Tests for snpsim.guest.swiotlb: the slots swiotlb_search_pool_area() picks, worked out by hand.

kernel/dma/swiotlb.c: "if (alloc_size >= PAGE_SIZE) iotlb_align_mask |= ~PAGE_MASK; iotlb_align_mask &=
~(IO_TLB_SIZE - 1); stride = (iotlb_align_mask >> IO_TLB_SHIFT) + 1;", "if (pool->slots[slot_index].list >= nslots)
goto found;", "area->index = wrap_area_index(pool, index + nslots);".
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from snpsim.guest.swiotlb import IO_TLB_SEGSIZE, SwiotlbPool

KIB = 1 << 10


def pool() -> SwiotlbPool:
    # 1024 slots (2 MiB) at GFN 1000, 4 areas of 256 slots
    return SwiotlbPool(1000, 1024, 4)


def test_area_is_cpu_masked_and_the_cursor_advances() -> None:
    p = pool()
    assert p.npages == 512
    # CPU 1 -> area 1, slots [256, 512); a 512 B mapping takes slot 256 = byte 512 KiB = page 128
    assert p.map(1, 512) == (1128, 1)
    # CPU 5 & (4 - 1) = area 1 again: the cursor is at slot 257, still page 128
    assert p.map(5, 512) == (1128, 1)
    assert p.index[1] == 2
    # 4 KiB (nslots 2, stride 2) at slot 258 = page 129
    assert p.map(1, 4096) == (1129, 1)
    # 3000 B: nslots 2 but below PAGE_SIZE, stride 1: slots 260-261 = page 130
    assert p.map(1, 3000) == (1130, 1)
    assert p.index[1] == 6


def test_page_sized_mappings_skip_an_odd_slot() -> None:
    p = pool()
    p.index[1] = 7  # slot 263: bit 11 of its address is set, a page-aligned buffer's is not
    assert p.map(1, 8 * KIB) == (1000 + 264 // 2, 2)  # slots 264-267 = pages 132-133
    assert p.index[1] == 12


def test_a_mapping_never_crosses_a_segment() -> None:
    p = pool()
    # area 2 = slots [512, 768); 200 KiB = 100 slots from slot 512
    assert p.map(2, 200 * KIB) == (1256, 50)
    # 64 KiB = 32 slots: slot 612 has 128 - 100 = 28 free to the segment end; the next fit starts slot 640
    assert p.map(2, 64 * KIB) == (1320, 16)
    assert p.index[2] == 160


def test_the_cursor_wraps_at_the_end_of_the_area() -> None:
    p = pool()
    # area 3 = slots [768, 1024): two 256 KiB mappings fill it, the cursor goes back to 0
    assert p.map(3, 256 * KIB) == (1384, 64)
    assert p.map(3, 256 * KIB) == (1448, 64)
    assert p.index[3] == 0
    assert p.map(3, 2 * KIB) == (1384, 1)


def test_limits() -> None:
    with pytest.raises(ValueError):
        pool().map(0, 256 * KIB + 1)  # "if (alloc_size > IO_TLB_SEGSIZE * IO_TLB_SIZE) return -1"
    with pytest.raises(ValueError):
        SwiotlbPool(0, 1024, 3)  # areas are a power of two


def kernel_search(p: SwiotlbPool, index: list[int], cpu: int, nbytes: int) -> int:
    """swiotlb_search_pool_area() line by line on an all-free pool: the slot it returns (updates ``index``)."""
    nslots = -(-nbytes // 2048)
    area = cpu & (p.nareas - 1)
    mask = (0xFFF if nbytes >= 4096 else 0) & ~0x7FF
    stride = (mask >> 11) + 1
    i = index[area]
    checked = 0
    while checked < p.area_nslabs:
        slot = area * p.area_nslabs + i
        if (slot * 2048) & mask:  # orig_addr page-aligned: its bit 11 is 0
            i = 0 if i + 1 >= p.area_nslabs else i + 1
            checked += 1
            continue
        if min(IO_TLB_SEGSIZE - slot % IO_TLB_SEGSIZE, p.nslabs - slot) >= nslots:
            index[area] = 0 if i + nslots >= p.area_nslabs else i + nslots
            return slot
        i = 0 if i + stride >= p.area_nslabs else i + stride
        checked += stride
    raise AssertionError("not found")


class PoolMachine(RuleBasedStateMachine):
    """SwiotlbPool.map() picks the slot the kernel's loop picks; mappings stay in their area and segment."""

    def __init__(self) -> None:
        super().__init__()
        self.p = SwiotlbPool(0, 2048, 8)
        self.index = [0] * 8

    @rule(cpu=st.integers(0, 15), nbytes=st.integers(1, 256 * KIB))
    def map(self, cpu: int, nbytes: int) -> None:
        slot = kernel_search(self.p, self.index, cpu, nbytes)
        gfn, npages = self.p.map(cpu, nbytes)
        nslots = -(-nbytes // 2048)
        assert (gfn, npages) == (slot // 2, -(-(slot + nslots) // 2) - slot // 2)
        area = cpu & 7
        assert area * 256 <= slot < (area + 1) * 256
        assert slot % IO_TLB_SEGSIZE + nslots <= IO_TLB_SEGSIZE
        if nbytes >= 4096:
            assert slot % 2 == 0

    @invariant()
    def cursors(self) -> None:
        assert self.p.index == self.index
        assert all(0 <= i < self.p.area_nslabs for i in self.p.index)


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=50, stateful_step_count=40, deadline=None)
