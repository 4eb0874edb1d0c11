"""HostKernel: RMP updates with the direct-map policy, restore points, and the kernel #PF handler.

Expected figures are computed by hand from linux-snp-host.md §3 (adjust_direct_map splits 1G->2M->4K one level
at a time; a 2M RMPUPDATE needs no split) and amd-snp-arch.md §7 (a write through a 2M/1G mapping faults if any
page of the 2M range is assigned).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snpsim.fast import FastHostKernel
from snpsim.host import HostKernel, Owner
from snpsim.hw import PageSize, RmpStatus
from snpsim.policy import Policy, presets

GIB_FRAMES = 262144
K4 = 4096
M2 = 2 << 20
G1 = 1 << 30


def host(policy: Policy | str, nframes: int = GIB_FRAMES) -> HostKernel:
    return HostKernel(nframes, presets[policy] if isinstance(policy, str) else policy)


KEEP_OOPS = Policy(
    private_backing="vmm",
    private_granularity="4k",
    shared_backing="4k",
    discard_on_convert=True,
    directmap="keep",
    directmap_restore="never",
    rmp_fault="oops",
)


def test_upstream_splits_1g_then_2m_for_a_4k_private_page_and_never_merges() -> None:
    h = host("upstream")
    assert h.metrics()["directmap_1g"] == G1
    assert h.rmp_make_private(1000, 0x5000, PageSize.SIZE_4K, 7) == RmpStatus.SUCCESS
    m = h.metrics()
    assert m["directmap_split_count"] == 2
    assert (m["directmap_1g"], m["directmap_2m"], m["directmap_4k"]) == (0, 511 * M2, 512 * K4)
    assert m["rmpupdate_count"] == 1
    assert h.rmp_make_shared(1000, PageSize.SIZE_4K) == RmpStatus.SUCCESS
    h.release_frames(np.array([1000]))
    m = h.metrics()
    assert (m["directmap_1g"], m["directmap_2m"], m["directmap_4k"]) == (0, 511 * M2, 512 * K4)
    assert m["directmap_merge_count"] == 0
    assert m["rmpupdate_count"] == 2


def test_upstream_2m_private_page_needs_no_split() -> None:
    h = host("upstream")
    assert h.rmp_make_private(512, 0x200000, PageSize.SIZE_2M, 7) == RmpStatus.SUCCESS
    assert h.metrics()["directmap_1g"] == G1
    assert h.metrics()["directmap_split_count"] == 0


def test_unmap_removes_the_page_and_restores_it_without_merging() -> None:
    h = host("unmap")
    h.rmp_make_private(1000, 0, PageSize.SIZE_4K, 1)
    m = h.metrics()
    assert m["directmap_split_count"] == 2
    assert (m["direct_map_level3_splits"], m["direct_map_level2_splits"]) == (1, 1)
    # set_direct_map_invalid_noflush(): split 1G -> 2M -> 4K, then clear _PAGE_PRESENT on the PTE, which
    # direct_pages_count[] does not see: DirectMap4k holds all 512 PTEs, the three still sum to the GiB
    assert m["directmap_4k"] == 512 * K4
    assert m["directmap_4k"] + m["directmap_2m"] + m["directmap_1g"] == G1
    assert h.directmap.level(1000) is None
    assert h.directmap.present_bytes == G1 - K4
    h.rmp_make_shared(1000, PageSize.SIZE_4K)
    assert h.metrics()["directmap_4k"] == 512 * K4
    assert h.directmap.present_bytes == G1
    assert h.release_frames(np.array([1000])) == 0  # restore = never
    assert h.metrics()["directmap_merge_count"] == 0


@pytest.mark.parametrize("name", ["unmap", "upm"])
def test_unmap_fragments_the_direct_map_exactly_as_upstream(name: str) -> None:
    """Same private pages, same splits, same /proc/meminfo: removal does not hide 4K entries (issue 12)."""
    pages = [1000, 1001, 5 * 512 + 7, 300 * 512, 300 * 512 + 511]
    hosts = {p: host(p) for p in ("upstream", name)}
    for h in hosts.values():
        for k, pfn in enumerate(pages):
            h.rmp_make_private(pfn, k * K4, PageSize.SIZE_4K, 1)
    up, rm = (hosts[p].metrics() for p in ("upstream", name))
    keys = ("directmap_4k", "directmap_2m", "directmap_1g", "direct_map_level2_splits", "direct_map_level3_splits")
    assert [up[k] for k in keys] == [rm[k] for k in keys]
    # 3 distinct 2M ranges split (1, 5, 300) after the GiB: 3 x 512 PTEs, 509 2M entries, 3 + 1 splits
    assert [rm[k] for k in keys] == [3 * 512 * K4, 509 * M2, 0, 3, 1]
    assert hosts[name].directmap.present_bytes == G1 - len(pages) * K4


def test_removing_more_pages_of_a_split_range_leaves_directmap_4k_unchanged() -> None:
    h = host("unmap")
    h.rmp_make_private(1000, 0, PageSize.SIZE_4K, 1)
    before = h.metrics()
    h.rmp_make_private_range(512, 400, 0x10000, 1)  # 400 more pages of the same 2M range: no split
    after = h.metrics()
    for k in ("directmap_4k", "directmap_2m", "directmap_1g", "directmap_split_count"):
        assert after[k] == before[k]
    assert h.directmap.count_levels(512, 512)[3] == 401  # but 401 of its PTEs are not present


def test_unmap_invalidates_a_2m_private_page_4k_at_a_time() -> None:
    """SNP v5-v10 set_direct_map_invalid_noflush() on each 4K page of a 2M RMPUPDATE (linux-snp-host.md §9):
    the 2M mapping is split 1G -> 2M -> 4K, all 512 PTEs cleared."""
    h = host("unmap")
    assert h.rmp_make_private(512, 0x200000, PageSize.SIZE_2M, 1) == RmpStatus.SUCCESS
    m = h.metrics()
    assert (m["direct_map_level3_splits"], m["direct_map_level2_splits"]) == (1, 1)
    assert (m["directmap_1g"], m["directmap_2m"], m["directmap_4k"]) == (0, 511 * M2, 512 * K4)
    assert h.directmap.count_levels(512, 512) == (0, 0, 0, 512)
    assert h.rmp_make_shared(512, PageSize.SIZE_2M) == RmpStatus.SUCCESS
    assert h.directmap.count_levels(512, 512) == (512, 0, 0, 0)  # present again, still 4K


def test_upm_remerges_at_the_release_point() -> None:
    h = host("upm")
    h.rmp_make_private(1000, 0, PageSize.SIZE_4K, 1)
    h.rmp_make_shared(1000, PageSize.SIZE_4K)
    assert h.release_frames(np.array([1000])) == 2  # the 2M range, then the GiB
    m = h.metrics()
    assert (m["directmap_1g"], m["directmap_2m"], m["directmap_4k"]) == (G1, 0, 0)
    assert m["directmap_merge_count"] == 2


def test_release_does_not_merge_a_range_that_still_holds_a_private_page() -> None:
    h = host("upm")
    h.rmp_make_private(1000, 0, PageSize.SIZE_4K, 1)
    h.rmp_make_private(1001, K4, PageSize.SIZE_4K, 1)
    h.rmp_make_shared(1000, PageSize.SIZE_4K)
    assert h.release_frames(np.array([1000])) == 0
    assert h.directmap.level(1001) is None


def test_unmap_nosplit_removes_whole_2m_mappings_only() -> None:
    h = host("upm-nosplit")
    h.rmp_make_private(1000, 0, PageSize.SIZE_4K, 1)
    m = h.metrics()
    assert m["directmap_split_count"] == 1  # 1G -> 2M, never to 4K
    # the not-present 2M entry of [512, 1024) is still a 2M entry: 512 x 2M
    assert (m["directmap_1g"], m["directmap_2m"], m["directmap_4k"]) == (0, 512 * M2, 0)
    assert h.directmap.level(600) is None  # the whole 2M block [512, 1024) is gone
    h.rmp_make_shared(1000, PageSize.SIZE_4K)
    assert h.metrics()["directmap_2m"] == 512 * M2
    assert h.release_frames(np.arange(512, 1024)) == 1  # the GiB
    assert h.metrics()["directmap_1g"] == G1


def test_unmap_nosplit_keeps_block_removed_while_any_page_is_private() -> None:
    h = host("upm-nosplit")
    h.rmp_make_private(1000, 0, PageSize.SIZE_4K, 1)
    h.rmp_make_private(1001, K4, PageSize.SIZE_4K, 1)
    h.rmp_make_shared(1000, PageSize.SIZE_4K)
    assert h.directmap.level(1000) is None


def test_bulk_splits_the_region_at_registration_and_restores_at_unregister() -> None:
    h = host("bulk")
    h.register_frames(np.arange(0, 1024))
    m = h.metrics()
    assert m["directmap_split_count"] == 3  # the GiB, then 2M ranges 0 and 1
    assert m["directmap_4k"] == 1024 * K4
    h.rmp_make_private(5, 0, PageSize.SIZE_4K, 1)
    assert h.metrics()["directmap_split_count"] == 3  # already 4K: no further split
    assert h.unregister_frames(np.arange(0, 1024)) == 1  # range 1 merges; range 0 holds a private page
    h.rmp_make_shared(5, PageSize.SIZE_4K)
    assert h.unregister_frames(np.arange(0, 1024)) == 2  # range 0, then the GiB
    assert h.metrics()["directmap_1g"] == G1


def test_write_through_1g_mapping_faults_on_a_neighbour_of_a_private_page() -> None:
    h = host(KEEP_OOPS)
    h.rmp_make_private(1000, 0, PageSize.SIZE_4K, 1)
    assert h.kernel_write(1024, "test") is True  # another 2M range
    assert h.kernel_write(1001, "test:neighbour") is False  # hypervisor-owned, same 2M range
    assert h.host_rmp_fault_count == 1
    assert h.host_crash_count == 1
    crash = h.crashes[0]
    assert (crash.pfn, crash.path, crash.kind) == (1001, "test:neighbour", "rmp")
    assert crash.error_code & (1 << 31)


def test_fixup_makes_the_2m_range_shared_and_retries() -> None:
    h = host("fixup")
    seen: list[list[int]] = []
    h.fixup_listeners.append(lambda pfns: seen.append(sorted(int(p) for p in pfns)))
    h.rmp_make_private(1000, 0, PageSize.SIZE_4K, 1)
    h.rmp_make_private(700, K4, PageSize.SIZE_4K, 1)
    assert h.kernel_write(1001, "test") is True
    assert h.host_rmp_fault_count == 1
    assert h.host_crash_count == 0
    assert seen == [[700, 1000]]
    assert h.fixup_page_count == 2
    assert not h.rmp.rmpread(1000 * K4).assigned
    assert not h.rmp.rmpread(700 * K4).assigned
    assert h.metrics()["rmpupdate_count"] == 4


def test_fixup_of_a_2m_private_entry_uses_one_2m_rmpupdate() -> None:
    h = host("fixup")
    h.rmp_make_private(512, 0, PageSize.SIZE_2M, 1)
    assert h.kernel_write(600, "test") is True
    assert h.fixup_page_count == 512
    assert h.metrics()["rmpupdate_count"] == 2
    assert h.rmp.assigned_in_2m(512) == 0


def test_split_mapping_protects_neighbours_but_not_the_private_page_itself() -> None:
    h = host("upstream")
    h.rmp_make_private(1000, 0, PageSize.SIZE_4K, 1)
    assert h.kernel_write(1001, "test") is True
    assert h.kernel_write(1000, "test:self") is False
    assert h.crashes[-1].kind == "rmp"


def test_reads_are_never_rmp_checked_but_unmapped_pages_oops() -> None:
    h = host("upstream")
    h.rmp_make_private(1000, 0, PageSize.SIZE_4K, 1)
    assert h.kernel_read(1000, "test") is True
    u = host("unmap")
    u.rmp_make_private(1000, 0, PageSize.SIZE_4K, 1)
    assert u.kernel_read(1000, "mm/ksm.c:calc_checksum") is False
    assert u.host_notpresent_fault_count == 1
    assert u.crashes[0].kind == "not-present"
    assert u.metrics()["host_rmp_fault_count"] == 0


# A 1 GiB host has ZONE_DMA [0, 16M) and ZONE_DMA32 above; a Normal-zone request's zonelist is DMA32, then DMA
# (get_page_from_freelist), so the first frame handed out is the lowest of DMA32: 16M >> 12.
DMA32_START = (16 << 20) >> 12


def test_allocation_zeroing_hits_the_private_neighbour() -> None:
    h = host(KEEP_OOPS)
    h.rmp_make_private(DMA32_START + 1, 0, PageSize.SIZE_4K, 1)
    pfn = h.alloc(0, Owner.USER)
    assert pfn == DMA32_START  # the lowest free frame of the first zone of the zonelist
    assert h.host_crash_count == 1
    assert h.crashes[0].path == "mm/page_alloc.c:kernel_init_pages"
    assert h.frames.get(DMA32_START) == Owner.USER


def test_alloc_without_zeroing_does_not_write() -> None:
    h = host(KEEP_OOPS)
    h.rmp_make_private(DMA32_START + 1, 0, PageSize.SIZE_4K, 1)
    assert h.alloc(0, Owner.USER, zero=False) == DMA32_START
    assert h.host_crash_count == 0


def test_range_conversions_equal_single_conversions() -> None:
    for name in presets:
        a, b = host(name, 2 * GIB_FRAMES), host(name, 2 * GIB_FRAMES)
        pfn0, n = GIB_FRAMES - 700, 1500  # straddles a GiB boundary
        sa = a.rmp_make_private_range(pfn0, n, 0x10000, 3)
        sb = [b.rmp_make_private(pfn0 + i, 0x10000 + i * K4, PageSize.SIZE_4K, 3) for i in range(n)]
        assert sa.tolist() == [int(s) for s in sb], name
        assert a.metrics() == b.metrics(), name
        half = slice(100, 900)
        ra = a.rmp_make_shared_range(pfn0 + half.start, half.stop - half.start)
        rb = [b.rmp_make_shared(pfn0 + i, PageSize.SIZE_4K) for i in range(half.start, half.stop)]
        assert ra.tolist() == [int(s) for s in rb], name
        assert a.metrics() == b.metrics(), name
        assert np.array_equal(a.directmap.levels(pfn0 - 512, n + 1024), b.directmap.levels(pfn0 - 512, n + 1024))


@pytest.mark.parametrize("name", list(presets))
def test_costs_are_charged(name: str) -> None:
    h = host(name)
    h.rmp_make_private(1000, 0, PageSize.SIZE_4K, 1)
    splits = h.metrics()["directmap_split_count"]
    # set_memory_4k -> change_page_attr_set_clr -> cpa_flush: a TLB flush with each split (the model's rule)
    assert h.busy_ns == h.costs.rmpupdate_ns + splits * (h.costs.directmap_split_ns + h.costs.tlb_flush_ns)
    assert h.cpu.by_op["rmpupdate"] == h.costs.rmpupdate_ns and h.cpu.count_by_op["directmap_split"] == splits


def test_take_page_off_buddy_splits_the_free_block() -> None:
    h = host("upstream", 1024)
    assert h.buddy.take_page_off_buddy(5) is True
    # the order-10 block splits: free halves of orders 9..0 remain, one block each (1023 frames)
    assert h.buddy.buddyinfo()[:11] == [1] * 10 + [0]
    assert h.buddy.free_frames == 1023
    assert h.buddy.take_page_off_buddy(5) is False
    h.buddy.free(5, 0)
    assert h.buddy.buddyinfo()[10] == 1


def test_direct_compaction_migrates_movable_pages_for_a_2m_folio() -> None:
    h = host("upstream", 4096)
    frames = h.buddy.alloc_bulk(0, 4096)
    assert frames is not None
    keep = frames % 2 == 0  # every other frame holds page cache: no free 2M block anywhere
    h.buddy.free_bulk(frames[~keep], 0)
    h.frames.set_many(frames[keep], Owner.USER)
    assert h.buddy.largest_free_order() == 0
    pfn = h.alloc(9, Owner.GMEM)
    assert pfn is not None and pfn % 512 == 0
    # the chosen block held 256 movable pages; each moved to a free frame outside it
    assert h.compaction_migrated == 256
    assert h.frames.count(Owner.USER) == 2048
    assert h.buddy.used_frames == 2048 + 512
    assert all(h.frames.get(p) == Owner.GMEM for p in range(pfn, pfn + 512))


def test_compaction_fails_when_blocks_hold_unmovable_pages() -> None:
    h = host("upstream", 2048)
    frames = h.buddy.alloc_bulk(0, 2048)
    assert frames is not None
    h.buddy.free_bulk(frames[frames % 4 != 0], 0)
    h.frames.set_many(frames[frames % 4 == 0], Owner.KERNEL)  # unmovable
    assert h.alloc(9, Owner.GMEM) is None
    assert h.compaction_migrated == 0


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(presets)),
    private=st.lists(st.integers(0, 4 * 512 - 1), max_size=40, unique=True),
    removed=st.lists(st.integers(0, 4 * 512 - 1), max_size=10, unique=True),
    writes=st.lists(st.integers(0, 4 * 512 - 1), min_size=65, max_size=300),
)
def test_kernel_write_range_equals_the_page_by_page_loop(
    name: str, private: list[int], removed: list[int], writes: list[int]
) -> None:
    """The fast engine's check of the frames at once (:class:`snpsim.fast.FastHostKernel`) gives the reference
    loop's crashes, faults and fixups."""

    def build(cls: type[HostKernel] = HostKernel) -> HostKernel:
        pol = presets[name]
        h = cls(8 * 512, pol)
        for p in private:
            h.rmp_make_private(p, p << 12, PageSize.SIZE_4K, 1)
        for p in removed:
            h.directmap.remove_4k(p)
        return h

    vec, loop = build(FastHostKernel), build()
    pfns = np.array(writes, dtype=np.int64)
    assert vec.kernel_write_range(pfns, "test") == loop.kernel_write_range(pfns, "test")
    assert vec.crashes == loop.crashes and vec.busy_ns == loop.busy_ns
    assert vec.metrics() == loop.metrics()
    assert vec.fixup_page_count == loop.fixup_page_count
    assert np.array_equal(vec.rmp.assigned_mask(np.arange(8 * 512)), loop.rmp.assigned_mask(np.arange(8 * 512)))


@pytest.mark.parametrize("count", [4, 40])  # a few frames and many
def test_free_bulk_rejects_a_double_free_and_frees_nothing(count: int) -> None:
    """The host finds the double free in its frame table (the buddy's own check is skipped) before any change."""
    h = host("upstream", 8 * 512)
    pfns = h.alloc_bulk(0, count, Owner.USER)
    assert pfns is not None
    h.free_bulk(pfns[1:2], 0)
    before = (h.buddy.free_blocks(), h.buddy.free_frames)
    with pytest.raises(ValueError, match=f"double free: frame {int(pfns[1]):#x}"):
        h.free_bulk(pfns, 0)
    assert (h.buddy.free_blocks(), h.buddy.free_frames) == before
    assert h.frames.get(int(pfns[0])) == Owner.USER
    h.free_bulk(np.delete(pfns, 1), 0)
    assert h.buddy.free_frames == 8 * 512
