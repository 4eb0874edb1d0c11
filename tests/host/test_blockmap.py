"""The host memory picture (snpsim.host.blockmap): per-2M-block state, direct-map level, used/assigned frames.

Every expected value is set up by hand on a small host (frame tags written directly, RMP entries by RMPUPDATE,
direct-map entries by set_memory_4k / set_direct_map_invalid_noflush) and derived from the module's rules."""

from __future__ import annotations

import numpy as np

from snpsim.host import HostKernel, Owner
from snpsim.host import blockmap as bm
from snpsim.hw import PageSize
from snpsim.policy import presets

B = 512  # frames per 2M block
GIB = 262144


def _private(h: HostKernel, pfn: int, n: int) -> None:
    for p in range(pfn, pfn + n):
        h.rmp.rmpupdate(p * 4096, assigned=True, gpa=p * 4096, asid=1)


def small_host() -> HostKernel:
    """Four 2M blocks and a 100-frame tail (2148 frames, under 1 GiB: 2M mappings, the tail at 4K)."""
    h = HostKernel(4 * B + 100, presets["fixup"])  # keep: the direct map moves only where the test moves it
    # block 0: all free
    # block 1: 300 page cache + 10 kernel pages: page cache, 310 used
    h.frames.set_range(B, 300, Owner.USER)
    h.frames.set_range(B + 300, 10, Owner.KERNEL)
    # block 2: a whole 2M private guest_memfd folio (one 2M RMP entry): private, not mixed
    h.frames.set_range(2 * B, B, Owner.GMEM)
    h.rmp.rmpupdate(2 * B * 4096, assigned=True, page_size=PageSize.SIZE_2M, gpa=0, asid=1)
    # block 3: 100 private 4K gmem pages, 12 page cache, 30 VMM shared: private (the majority), mixed
    h.frames.set_range(3 * B, 100, Owner.GMEM)
    _private(h, 3 * B, 100)
    h.frames.set_range(3 * B + 100, 12, Owner.USER)
    h.frames.set_range(3 * B + 200, 30, Owner.VMM_SHARED)
    # tail: 100 VMM pages, hypervisor-owned: guest shared
    h.frames.set_range(4 * B, 100, Owner.VMM_PRIVATE)
    return h


def test_states_used_and_assigned_of_a_hand_built_host() -> None:
    m = bm.snapshot(small_host())
    assert m.state.tolist() == [bm.FREE, bm.USER, bm.PRIVATE, bm.PRIVATE, bm.SHARED]
    assert m.used.tolist() == [0, 310, 512, 142, 100]  # 300 + 10; 512; 100 + 12 + 30; 100
    assert m.assigned.tolist() == [0, 0, 512, 100, 0]
    assert m.ram.tolist() == [512, 512, 512, 512, 100]  # the tail block holds 4*512+100 - 4*512 frames
    assert bm.mixed(m).tolist() == [False, False, False, True, False]


def test_levels_follow_the_direct_map() -> None:
    h = small_host()
    m = bm.snapshot(h)
    # under 1 GiB: "2M mappings for the remaining whole 2 MiB ranges, 4K mappings for a tail" (directmap.py)
    assert m.level.tolist() == [bm.L_2M, bm.L_2M, bm.L_2M, bm.L_2M, bm.L_4K]
    h.directmap.set_4k(3 * B + 5)  # set_memory_4k: block 3 becomes a PTE table, every page present
    h.directmap.remove_4k(B + 7)  # set_direct_map_invalid_noflush: block 1 split, one page not present
    h.directmap.remove_2m(2)  # block 2's 2M entry made not present
    for p in range(4 * B, 4 * B + 100):  # every page of the tail not present
        h.directmap.remove_4k(p)
    assert bm.snapshot(h).level.tolist() == [bm.L_2M, bm.L_4K_HOLES, bm.L_NONE, bm.L_4K, bm.L_NONE]


def test_a_gib_mapped_at_1g_and_a_second_frame_table_segment() -> None:
    h = HostKernel(GIB + B, presets["upstream"])  # GiB 0 whole: a 1G entry; one more 2M block after it
    h.frames.set_range(GIB, 3, Owner.HUGETLB_POOL)  # in the frame table's second 1 GiB segment
    h.frames.set_range(GIB + 3, 2, Owner.IMAGE)  # hibernation image pages count as host kernel
    h.frames.set_range(GIB + 5, 2, Owner.KERNEL)
    m = bm.snapshot(h)
    assert m.state.size == 513
    assert (m.level[:512] == bm.L_1G).all() and m.level[512] == bm.L_2M
    # 3 hugetlb against 4 kernel: kernel wins; used 7
    assert m.state[512] == bm.KERNEL and m.used[512] == 7
    assert (m.state[:512] == bm.FREE).all()


def test_ties_go_to_the_lower_code() -> None:
    h = HostKernel(2 * B, presets["upstream"])
    h.frames.set_range(0, 5, Owner.USER)
    h.frames.set_range(5, 5, Owner.KERNEL)  # 5 kernel, 5 page cache: KERNEL (2) < USER (3)
    assert bm.snapshot(h).state[0] == bm.KERNEL


def test_assigned_kernel_pages_stay_kernel_but_make_the_block_mixed() -> None:
    h = HostKernel(2 * B, presets["upstream"])
    h.frames.set_range(0, 4, Owner.KERNEL)
    _private(h, 0, 1)  # a VMSA: host-kernel memory assigned in the RMP (snp_host_bytes)
    m = bm.snapshot(h)
    assert m.state[0] == bm.KERNEL and m.assigned[0] == 1 and bool(bm.mixed(m)[0])


def test_ram_ranges_leave_holes_out() -> None:
    # blocks: [0,512) RAM from 100; [512,1024) RAM to 700; [1024,1536) none; [1536,2048) all
    ram = [(100, 700), (1536, 2048)]
    assert bm.ram_frames_per_block(4 * B, ram).tolist() == [412, 188, 0, 512]
    assert bm.ram_frames_per_block(B + 7, None).tolist() == [512, 7]
    h = HostKernel(4 * B, presets["upstream"])
    h.frames.set_range(600, 20, Owner.USER)
    m = bm.snapshot(h, ram)
    assert m.state.tolist() == [bm.FREE, bm.USER, bm.NOT_RAM, bm.FREE]
    assert m.used.tolist() == [0, 20, 0, 0]
    assert m.ram.tolist() == [412, 188, 0, 512]


def test_levels_2m_counts_present_pages() -> None:
    h = HostKernel(GIB + 2 * B, presets["upstream"])
    dm = h.directmap
    dm.set_4k(GIB + 1)  # block 513 (first after the GiB) split: 512 present
    dm.remove_4k(GIB + 2)  # one of them not present
    dm.remove_2m(GIB // B + 1)  # block 514: a not-present 2M entry
    level, present = dm.levels_2m()
    assert level[:512].tolist() == [int(PageSize.SIZE_1G)] * 512 and present[:512].tolist() == [512] * 512
    assert (int(level[512]), int(present[512])) == (int(PageSize.SIZE_4K), 511)
    assert (int(level[513]), int(present[513])) == (-1, 0)


def test_snapshot_time_is_the_host_clock() -> None:
    h = HostKernel(B, presets["upstream"], clock=lambda: 1234.0)
    assert bm.snapshot(h).time_ns == 1234


def test_the_runner_snapshots_after_boot_mid_run_and_at_the_end() -> None:
    import snpsim

    r = snpsim.run(
        {
            "seed": 2,
            "duration": "1200ms",
            "samples": 6,
            "host": {"memory": "256M", "layout": "flat"},
            "vms": [{"memory": "64M", "vcpus": 1, "workload": "linux-boot"}],
        }
    )
    # runner: step = duration // samples = 200 ms; row 1 (200 ms), row samples // 2 = 3 (600 ms), the end
    assert [m.time_ns for m in r.hostmaps] == [200_000_000, 600_000_000, 1_200_000_000]
    end = r.hostmaps[-1]
    assert end.state.size == (256 << 20) // (2 << 20)
    assert np.array_equal(end.ram, np.full(128, 512))
    # the booted SNP guest holds private (assigned) memory, and assigned frames are used frames
    assert end.assigned.sum() > 0 and (end.assigned <= end.used).all()
