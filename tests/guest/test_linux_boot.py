"""Tests for snpsim.guest.linux: q35 RAM map, sizes, placement, boot sequence and kexec (guest-workloads.md §2).

Expected numbers are computed by hand from the reference rows (cited per test), not by running the code.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snpsim import ConfigError
from snpsim.guest.events import Access, Conversion, Protocol, Timed
from snpsim.guest.linux import (
    BOOT_END_NS,
    GuestMemoryView,
    GuestPhysAllocator,
    IntervalMap,
    LinuxGuestConfig,
    PageState,
    Placement,
    atomic_pool_bytes,
    atomic_pool_zones,
    boot_events,
    guest_layout,
    kexec_events,
    kvmclock_pages,
    swiotlb_bytes,
)
from snpsim.guest.psc import build_requests, count_requests, entry_runs

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
GFN_4G = 0x100000  # 4 GiB >> 12
GHCB, MSR = Protocol.GHCB, Protocol.MSR


def cfg(mem: int = 4 * GIB, vcpus: int = 4, **kw: object) -> LinuxGuestConfig:
    return LinuxGuestConfig(mem, vcpus, **kw)  # type: ignore[arg-type]


def convs(events: list[Timed], what: str | None = None) -> list[Conversion]:
    out = [t.event for t in events if isinstance(t.event, Conversion)]
    return [c for c in out if what is None or c.what == what]


def check_consistent(c: LinuxGuestConfig, events: list[Timed], view: GuestMemoryView | None = None) -> GuestMemoryView:
    """Replay: every conversion is inside RAM and flips every page it covers; accesses hit the right state."""
    view = view or GuestMemoryView(c)
    for t in events:
        ev = t.event
        if isinstance(ev, Conversion):
            allowed = {PageState.SHARED, PageState.UNACCEPTED} if ev.to_private else {PageState.PRIVATE}
            states = {s for _, _, s in view.runs(ev.gfn, ev.npages)}
            assert states <= allowed, (ev, states)
        else:
            want = PageState.PRIVATE if ev.private else PageState.SHARED
            assert view.all_in(ev.gfn, ev.npages, want), ev
        view.apply(t, strict=True)
    return view


# ------------------------------------------------------------------------------------------------- RAM map


@pytest.mark.parametrize(
    ("mem", "ranges"),
    [
        (4 * GIB, [(0, 524288), (GFN_4G, 524288)]),  # >= 2.75 GiB: 2 GiB low, 2 GiB from 4 GiB
        (2 * GIB, [(0, 524288)]),  # all low
        (0xB000_0000, [(0, 524288), (GFN_4G, 196608)]),  # exactly 2.75 GiB: 2 GiB low + 768 MiB high
        (0xB000_0000 - 2 * MIB, [(0, 720384)]),  # just below: all low (2814 MiB = 720384 pages)
        (64 * MIB, [(0, 16384)]),
    ],
)
def test_q35_ram_ranges(mem: int, ranges: list[tuple[int, int]]) -> None:
    c = cfg(mem)
    assert c.ram_ranges() == ranges
    assert sum(n for _, n in ranges) == c.total_pages


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"mem": 65 * MIB}, "memory_bytes"),  # not a multiple of 2 MiB
        ({"mem": 62 * MIB}, "memory_bytes"),  # < 64 MiB
        ({"vcpus": 0}, "vcpus"),
        ({"vcpus": 4097}, "vcpus"),
        ({"bss_decrypted_used_pages": 0}, "bss_decrypted_used_pages"),
        ({"bss_decrypted_used_pages": 513}, "bss_decrypted_used_pages"),
        ({"accept_unit_bytes": 3 * MIB}, "accept_unit_bytes"),
        ({"accept_unit_bytes": 1 * MIB}, "accept_unit_bytes"),  # smaller than the 2 MiB bitmap unit
        ({"vring_pages": 0}, "vring_pages"),
        ({"lazy_accept": 1}, "lazy_accept"),
        ({"kernel_load_bytes": 17 * MIB}, "kernel_load_bytes"),
        ({"blk_queues": -1}, "blk_queues"),
        ({"percpu_static_bytes": 212993}, "percpu_static_bytes"),  # the decrypted section ends it page-aligned
        ({"percpu_static_bytes": 4096, "percpu_decrypted_pages": 2}, "percpu_static_bytes"),
        ({"node_data_bytes": 0}, "node_data_bytes"),
        ({"ovmf_iommu_reserved_pool": 1}, "ovmf_iommu_reserved_pool"),
    ],
)
def test_validate_names_the_field(kw: dict[str, object], field: str) -> None:
    args = {"mem": 4 * GIB, "vcpus": 4, **kw}
    c = cfg(args.pop("mem"), args.pop("vcpus"), **args)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as exc:
        c.validate()
    assert exc.value.field == field


def test_too_small_for_many_vcpus_is_a_config_error() -> None:
    # 64 MiB guest, 4096 vCPUs: 3 pages of GHCB data + 1 per-CPU page each = 64 MiB alone.
    with pytest.raises(ConfigError) as exc:
        guest_layout(cfg(64 * MIB, 4096))
    assert exc.value.field == "memory_bytes"


def test_from_dict() -> None:
    c = LinuxGuestConfig.from_dict({"memory": "4G", "vcpus": 2, "lazy_accept": False, "accept_unit_bytes": "2M"})
    assert (c.memory_bytes, c.vcpus, c.lazy_accept, c.accept_unit_bytes) == (4 * GIB, 2, False, 2 * MIB)
    assert LinuxGuestConfig.from_dict({"memory": "1G", "vcpus": 1, "percpu_decrypted_protocol": "ghcb"}) == cfg(
        1 * GIB, 1, percpu_decrypted_protocol=GHCB
    )
    with pytest.raises(ConfigError, match=r"vm\.bogus"):
        LinuxGuestConfig.from_dict({"memory": "4G", "vcpus": 2, "bogus": 1})
    with pytest.raises(ConfigError, match=r"vm\.vcpus"):
        LinuxGuestConfig.from_dict({"memory": "4G"})
    with pytest.raises(ConfigError) as exc:
        LinuxGuestConfig.from_dict({"memory": "4G", "vcpus": 0})
    assert exc.value.field == "vm.vcpus"
    # direct construction accepts the same strings (the runner passes [vms.guest] as keywords)
    direct = LinuxGuestConfig(4 * GIB, 2, accept_unit_bytes="2M", percpu_decrypted_protocol="ghcb")  # type: ignore[arg-type]
    assert direct.accept_unit_bytes == 2 * MIB and direct.percpu_decrypted_protocol is GHCB
    with pytest.raises(ConfigError):
        cfg(percpu_decrypted_protocol="tdx").validate()


# --------------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("mem", "size"),
    [(1 * GIB, 64 * MIB), (4 * GIB, 256 * MIB), (8 * GIB, 512 * MIB), (16 * GIB, 1 * GIB), (64 * GIB, 1 * GIB)],
)
def test_swiotlb_size_row5(mem: int, size: int) -> None:
    assert swiotlb_bytes(cfg(mem)) == size


def test_swiotlb_without_pow2_rounding() -> None:
    # 6% of 4 GiB = 257,698,037 B -> 125,830 slabs -> aligned to 128: 125,952 slabs * 2 KiB.
    assert swiotlb_bytes(cfg(4 * GIB, swiotlb_round_pow2=False)) == 125952 * 2048


def test_swiotlb_areas_minimum() -> None:
    # 1024 vCPUs: at least 128 slabs (256 KiB) per area -> 1024 * 256 KiB = 256 MiB even for a 1 GiB guest.
    assert swiotlb_bytes(cfg(1 * GIB, 1024)) == 256 * MIB


@pytest.mark.parametrize(
    ("mem", "size"),
    [
        (4 * GIB, 512 * KIB),  # 1M pages / 8192 = 128 pages
        (1 * GIB, 128 * KIB),  # 32 pages
        (64 * MIB, 128 * KIB),  # 2 pages -> minimum 128 KiB
        (64 * GIB, 4 * MIB),  # 2048 pages -> MAX_ORDER_NR_PAGES = 1024
        (3 * GIB, 512 * KIB),  # 96 pages = 384 KiB -> order 7 allocation = 512 KiB
    ],
)
def test_atomic_pool_size_row7(mem: int, size: int) -> None:
    assert atomic_pool_bytes(cfg(mem)) == size


def test_atomic_pool_zones_follow_q35() -> None:
    assert atomic_pool_zones(cfg(4 * GIB)) == ("normal", "dma", "dma32")
    assert atomic_pool_zones(cfg(3 * GIB)) == ("normal", "dma", "dma32")  # >= 2.75 GiB: RAM above 4 GiB
    assert atomic_pool_zones(cfg(2 * GIB)) == ("dma", "dma32")
    assert atomic_pool_zones(cfg(0xB000_0000 - 2 * MIB)) == ("dma", "dma32")


@pytest.mark.parametrize(("vcpus", "pages"), [(1, 0), (64, 0), (65, 1), (128, 1), (129, 2), (193, 4), (4096, 64)])
def test_kvmclock_pages_row4(vcpus: int, pages: int) -> None:
    # (V-64)*64 B: 65 -> 64 B -> 1 page; 128 -> 4096 B -> 1 page; 129 -> 4160 B -> 2 pages;
    # 193 -> 8256 B -> 3 pages -> order 2 = 4; 4096 -> 258,048 B -> 63 pages -> 64.
    assert kvmclock_pages(cfg(8 * GIB, vcpus)) == pages


# ------------------------------------------------------------------------------------- the 4 vCPU 4 GiB boot


@pytest.fixture(scope="module")
def boot4() -> list[Timed]:
    return boot_events(cfg())


def test_ghcbs_via_msr_row1(boot4: list[Timed]) -> None:
    lay = guest_layout(cfg())
    ghcbs = convs(boot4, "ghcb")
    # early_set_memory_decrypted(): shared, private, shared per page (snp_memcpy(decrypt=true), then
    # __set_clr_pte_enc()), all with the MSR protocol, one page each
    assert len(ghcbs) == 3 * 4
    assert all(c.protocol is MSR and c.npages == 1 for c in ghcbs)
    assert [c.to_private for c in ghcbs] == [False, True, False] * 4
    assert sum(count_requests(c) for c in ghcbs) == 12
    assert [c.gfn for c in ghcbs[::3]] == list(lay.ghcbs)
    # memblock_alloc(sizeof(struct sev_es_runtime_data) = 3 pages, PAGE_SIZE) per CPU, top-down from the top of
    # high RAM [4G, 6G) = GFN 1572864: the probe's 2 MiB [1572352, 1572864) holds NODE_DATA (44 pages,
    # [1572820, 1572864)), the vmemmap PUD and PMD tables (1572819, 1572818), the page table of the per-CPU split
    # (1572817); CPU 0's data is [1572814, 1572817), then the page table of its split (1572813); CPUs 1-3 follow
    assert lay.ghcbs == (1572814, 1572810, 1572807, 1572804)
    # after the three conversions the boot CPU zeroes it through the decrypted mapping
    for g in lay.ghcbs:
        last = max(i for i, t in enumerate(boot4) if isinstance(t.event, Conversion) and t.event.gfn == g)
        nxt = boot4[last + 1].event
        assert isinstance(nxt, Access)
        assert (nxt.gfn, nxt.npages, nxt.private, nxt.write, nxt.vcpu, nxt.what) == (g, 1, False, True, 0, "ghcb")


def test_bss_decrypted_row2(boot4: list[Timed]) -> None:
    lay = guest_layout(cfg())
    (shared,) = convs(boot4, "bss-decrypted")
    assert (shared.npages, shared.protocol, shared.to_private) == (512, MSR, False)
    assert shared.gfn % 512 == 0
    assert lay.kernel_image.gfn <= shared.gfn and shared.gfn + 512 <= lay.kernel_image.end
    assert count_requests(shared) == 512
    (tail,) = convs(boot4, "bss-decrypted-unused")
    assert (tail.gfn, tail.npages, tail.to_private) == (shared.gfn + 3, 509, True)
    assert tail.protocol is GHCB and not tail.huge_ok
    assert count_requests(tail) == 8  # 7 * 64 = 448, + 61
    assert [len(r.entries) for r in build_requests(tail)] == [64] * 7 + [61]
    # the tail goes back late: it is the last boot event, after the attestation pages
    assert boot4[-1].event == tail
    assert boot4[-1].time_ns > max(t.time_ns for t in boot4 if t.event.what == "attestation")
    # only MSR-protocol PSCs of the boot: 512 bss + 3 per GHCB page (4) + 3 per per-CPU page (4)
    assert sum(count_requests(c) for c in convs(boot4) if c.protocol is MSR) == 512 + 12 + 12


def test_percpu_decrypted_row3(boot4: list[Timed]) -> None:
    lay = guest_layout(cfg())
    pc = convs(boot4, "percpu-decrypted")
    assert len(pc) == 12 and all(c.npages == 1 and c.protocol is MSR for c in pc)
    assert [c.to_private for c in pc] == [False, True, False] * 4
    # The per-CPU chunk: 4 units of 512 KiB (pcpu_build_alloc_info), 2 MiB-aligned, top-down under the memmap
    # [1555968, 1572352) -> [1555456, 1555968); each CPU's decrypted page is the last page of its 52-page static
    # area (212,992 B): unit base + 51
    assert lay.percpu_area == Placement("percpu", 1555456, 512) and lay.percpu_unit_pages == 128
    assert [c.gfn for c in pc[::3]] == [1555456 + 128 * cpu + 51 for cpu in range(4)]
    ghcb_pc = convs(boot_events(cfg(percpu_decrypted_protocol=GHCB, percpu_decrypted_pages=2)), "percpu-decrypted")
    assert len(ghcb_pc) == 4 and all(c.npages == 2 and c.protocol is GHCB and not c.to_private for c in ghcb_pc)


def test_swiotlb_row5(boot4: list[Timed]) -> None:
    (sw,) = convs(boot4, "swiotlb")
    assert sw.npages == 65536  # 256 MiB
    assert sw.huge_ok and not sw.to_private and sw.protocol is GHCB
    assert sw.gfn % 512 == 0 and sw.gfn + sw.npages <= 524288  # low RAM, below 4 GiB
    assert entry_runs(sw) == [(sw.gfn, 128, 1)]  # 128 2M entries
    assert count_requests(sw) == 2  # 2 descriptors of 64
    # placement: memblock_alloc_low, top-down under OVMF's GHCB area (8 pages) and IoMmu pool (1,429 pages) at the
    # top of low RAM: 524288 - 8 - 1429 = 522851; 2M-aligned: floor((522851 - 65536) / 512) * 512 = 457216.
    assert sw.gfn == 457216


def test_swiotlb_unaligned_placement_adds_4k_head_and_tail() -> None:
    (sw,) = convs(boot_events(cfg(swiotlb_2m_aligned=False)), "swiotlb")
    # memblock 4K alignment: ends right under OVMF's pool at 522851 -> starts at 457315 = 893*512 + 99; 413 4K
    # entries to 457728 = 894*512, 127 2M entries to 522752, 99 4K entries.
    assert (sw.gfn, sw.npages) == (457315, 65536)
    assert entry_runs(sw) == [(457315, 413, 0), (457728, 127, 1), (522752, 99, 0)]


@pytest.mark.parametrize(("mem", "pages"), [(1 * GIB, 16384), (16 * GIB, 262144), (64 * GIB, 262144)])
def test_swiotlb_conversion_size(mem: int, pages: int) -> None:
    (sw,) = convs(boot_events(cfg(mem)), "swiotlb")
    assert sw.npages == pages


def test_atomic_pools_row7(boot4: list[Timed]) -> None:
    pools = [c for c in convs(boot4) if c.what.startswith("atomic-pool-")]
    assert [c.what for c in pools] == ["atomic-pool-normal", "atomic-pool-dma", "atomic-pool-dma32"]
    for c in pools:
        assert c.npages == 128 and c.gfn % 128 == 0 and c.huge_ok and not c.to_private
        assert count_requests(c) == 2  # 128 4K entries: a 512 KiB pool holds no whole 2M
    normal, dma, dma32 = pools
    assert normal.gfn == GFN_4G
    assert dma.gfn + dma.npages <= 4096  # below 16 MiB
    assert dma32.gfn >= 4096 and dma32.gfn + dma32.npages <= 524288
    two = [c.what for c in convs(boot_events(cfg(2 * GIB))) if c.what.startswith("atomic-pool-")]
    assert two == ["atomic-pool-dma", "atomic-pool-dma32"]


def test_kvmclock_conversion_row4() -> None:
    assert convs(boot_events(cfg(vcpus=64)), "kvmclock") == []
    (k65,) = convs(boot_events(cfg(vcpus=65)), "kvmclock")
    (k129,) = convs(boot_events(cfg(vcpus=129)), "kvmclock")
    assert (k65.npages, k129.npages) == (1, 2)
    assert k129.gfn % 2 == 0 and k129.protocol is GHCB


def test_vrings_and_attestation_rows8a_10(boot4: list[Timed]) -> None:
    vr = convs(boot4, "vring")
    assert len(vr) == 3 + 4 and all(c.npages == 2 and c.huge_ok and not c.to_private for c in vr)
    assert len(convs(boot_events(cfg(blk_queues=1)), "vring")) == 4
    att = convs(boot4, "attestation")
    assert len(att) == 2 and all(c.npages == 1 and not c.to_private for c in att)


def test_ovmf_prevalidation_rows12_13(boot4: list[Timed]) -> None:
    first = boot4[0]
    assert first.time_ns == 0
    assert first.event == Conversion(0, 524288, True, GHCB, True, "ovmf-prevalidate", max_entries=253)
    # 2 GiB = 1024 2M entries, SNP_PAGE_STATE_MAX_ENTRY = 253 per VMGEXIT: 253 * 4 = 1012, then 12
    assert count_requests(first.event) == 5


# The 4 GiB, 4-vCPU guest's high RAM is [1048576, 1572864). Its boot accepts, top-down from 1572864 (each
# memblock_alloc_range_nid() ends in "accept_memory(found, size);", 2 MiB units, +1 unit when the end is aligned):
BOOT4_ACCEPTS = [
    # memory_map_top_down(): "memblock_phys_alloc_range(PMD_SIZE, PMD_SIZE, map_start, map_end)", then freed
    ("setup-arch", 1572352, 512),
    # sparse_buffer_init(map_count * section_map_size()): 16 + 16 sections * 2 MiB = 64 MiB, 2 MiB-aligned under
    # NODE_DATA (which sits in the probed 2 MiB): floor((1572820 - 16384) / 512) * 512 = 1555968
    ("setup-arch", 1555968, 16384),
    # the per-CPU first chunk: 4 units * 512 KiB = 2 MiB, aligned to the 2 MiB atom
    ("percpu", 1555456, 512),
    # dentry hash: nr_kernel_pages = 1048576 - 256 (first MiB) - 8192 (kernel) - 8 (OVMF GHCBs) - 1429 (IoMmu pool)
    # - 44 (NODE_DATA) - 16384 (memmap) - 2 (vmemmap tables) = 1022261; round_up to 256 -> 1022464; >> 1 = 511232
    # -> roundup_pow_of_two 2^19 buckets * 8 B = 4 MiB; inode: >> 2 = 255616 -> 2^18 * 8 B = 2 MiB
    ("vfs-caches", 1554432, 1024),
    ("vfs-caches", 1553920, 512),
    # SWIOTLB slots: 131072 slabs * 24 B = 3 MiB at [1553152, 1553920): units [1552896, 1553920)
    ("mm-init", 1552896, 1024),
    # memblock_free_all(): [1048576, 1553152) is 492 whole 4 MiB blocks (listed) and the chunk [1552384, 1553152):
    # "Accept chunks smaller than MAX_PAGE_ORDER upfront" -> unit [1552384, 1552896)
    ("mm-init", 1552384, 512),
    # dma_atomic_pool_init() in ZONE_NORMAL: try_to_accept_memory_one() on the first listed block, + guard unit
    ("postcore-initcall", 1048576, 1536),
]


def test_lazy_acceptance_at_boot_row12(boot4: list[Timed]) -> None:
    lay = guest_layout(cfg())
    assert [(a.phase, a.gfn, a.npages) for a in lay.boot_accepts] == BOOT4_ACCEPTS
    acc = convs(boot4, "accept")
    assert [(c.gfn, c.npages) for c in acc] == [(g, n) for _, g, n in BOOT4_ACCEPTS]
    assert all(c.to_private and c.huge_ok and c.protocol is GHCB and c.max_entries is None for c in acc)
    # 22016 pages = 86 MiB of high RAM at boot; 491 blocks stay on zone->unaccepted_pages, from 1049600
    assert lay.boot_accepted_high_pages == 22016
    assert len(lay.unaccepted_blocks) == 491 and lay.unaccepted_blocks[0] == 1049600
    # the pool's acceptance happens right before the pool is made shared
    i = max(i for i, t in enumerate(boot4) if t.event.what == "accept")
    assert boot4[i + 1].event.what == "atomic-pool-normal"
    # without the guard unit the pool's block is 4 MiB, and the slot array's units are its own 2 (3 MiB -> 4 MiB)
    no_guard = [(c.gfn, c.npages) for c in convs(boot_events(cfg(accept_guard_unit=False)), "accept")]
    assert no_guard[-1] == (GFN_4G, 1024)


def test_16g_guest_accepts_296_mib_in_memblock_and_6_for_the_pool() -> None:
    """The issue's example: a 16 GiB, 4-vCPU, lazily accepting guest. High RAM [4G, 18G) = [1048576, 4718592).

    - probe: [4718080, 4718592) = 2 MiB
    - memmap: 16 + 112 sections * 2 MiB ("section_map_size()") = 256 MiB, under NODE_DATA: [4652544, 4718080)
    - per-CPU: 2 MiB at [4652032, 4652544)
    - hashes: nr_kernel_pages = 4194304 - 256 - 8192 - 8 - 1429 - 44 - 65536 - 2 = 4118837 -> round_up 4119040
      -> dentry >> 1 = 2059520 -> 2^21 * 8 B = 16 MiB; inode >> 2 = 1029760 -> 2^20 * 8 B = 8 MiB
    - SWIOTLB slots: 1 GiB pool = 524288 slabs * 24 B = 12 MiB, ending 2 MiB-aligned
    - memblock_free_all(): the rest, [4G, 18G - 296M), is whole 4 MiB blocks (18136 MiB / 4): nothing more
    296 MiB in all, then the ZONE_NORMAL pool's 4 MiB block + 2 MiB guard unit at 4 GiB.
    """
    lay = guest_layout(cfg(16 * GIB))
    mib = [(a.phase, a.npages // 256) for a in lay.boot_accepts]
    assert mib == [
        ("setup-arch", 2),
        ("setup-arch", 256),
        ("percpu", 2),
        ("vfs-caches", 16),
        ("vfs-caches", 8),
        ("mm-init", 12),
        ("postcore-initcall", 6),
    ]
    assert sum(n for p, n in mib if p != "postcore-initcall") == 296
    assert lay.boot_accepted_high_pages == (296 + 6) * 256
    assert lay.memmap == Placement("memmap", 4652544, 65536)
    assert lay.boot_accepts[0].gfn == 4718080


def test_eager_acceptance_row12() -> None:
    ev = boot_events(cfg(lazy_accept=False))
    acc = convs(ev, "accept")
    # the same six memblock acceptances (BOOT4_ACCEPTS[:6]), then memblock_free_all() accepts each of the 492 free
    # blocks of [1048576, 1552384) ("accept_memory(page_to_phys(page), PAGE_SIZE << order)"): [0, 6M), then each
    # next block shifted by the 2 MiB guard: [6M, 10M), ..., block 491 -> [1551872, 1552896); the chunk
    # [1552384, 1553152) then finds nothing left. No block is left for the ZONE_NORMAL pool to accept.
    assert [(c.gfn, c.npages) for c in acc[:6]] == [(g, n) for _, g, n in BOOT4_ACCEPTS[:6]]
    rest = acc[6:]
    assert len(rest) == 492
    assert (rest[0].gfn, rest[0].npages) == (GFN_4G, 1536)
    assert all(c.npages == 1024 for c in rest[1:])
    assert rest[-1].gfn == 1551872
    g = GFN_4G
    for c in rest:
        assert c.gfn == g and c.to_private and c.huge_ok
        g += c.npages
    assert g == 1552896
    view = check_consistent(cfg(lazy_accept=False), ev)
    assert view.pages(PageState.UNACCEPTED) == 0


def test_no_ovmf_prevalidation_accepts_low_ram_in_blocks() -> None:
    ev = boot_events(cfg(2 * GIB, ovmf_prevalidate_below_4g=False))
    assert convs(ev, "ovmf-prevalidate") == []
    low = [c for c in convs(ev, "accept") if c.gfn < GFN_4G]
    assert sum(c.npages for c in low) == 524288 and low[0].gfn == 0
    check_consistent(cfg(2 * GIB, ovmf_prevalidate_below_4g=False), ev)


def test_boot_timing(boot4: list[Timed]) -> None:
    times = [t.time_ns for t in boot4]
    assert times == sorted(times)
    assert times[-1] < BOOT_END_NS
    later = boot_events(cfg(), start_ns=5 * BOOT_END_NS)
    assert [t.time_ns - 5 * BOOT_END_NS for t in later] == times


def test_boot_state_after_boot(boot4: list[Timed]) -> None:
    view = check_consistent(cfg(), boot4)
    # shared: 4 OVMF GHCBs + 4 GHCB + 3 bss + 4 per-CPU + 65536 SWIOTLB + 3 * 128 pools + 7 * 2 vrings +
    # 2 attestation (the IoMmu pool went back to private at ExitBootServices)
    assert view.pages(PageState.SHARED) == 4 + 4 + 3 + 4 + 65536 + 384 + 14 + 2
    assert view.pages(PageState.UNACCEPTED) == 524288 - 22016
    kinds = Counter(t.event.what for t in boot4 if isinstance(t.event, Conversion))
    assert kinds == {
        "ovmf-prevalidate": 1,
        "ovmf-ghcb": 4,
        "ovmf-iommu": 17,
        "ovmf-iommu-release": 17,
        "bss-decrypted": 1,
        "ghcb": 12,
        "percpu-decrypted": 12,
        "swiotlb": 1,
        "accept": 8,
        "atomic-pool-normal": 1,
        "atomic-pool-dma": 1,
        "atomic-pool-dma32": 1,
        "vring": 7,
        "attestation": 2,
        "bss-decrypted-unused": 1,
    }


def test_kexec_boot_skips_firmware_and_acceptance() -> None:
    ev = boot_events(cfg(), firmware=False)
    kinds = {t.event.what for t in ev}
    assert "ovmf-prevalidate" not in kinds and "accept" not in kinds and "ghcb" in kinds


# --------------------------------------------------------------------------------------------------- kexec


def test_kexec_row14(boot4: list[Timed]) -> None:
    c = cfg()
    view = check_consistent(c, boot4)
    shared = view.shared_ranges()
    ks = kexec_events(c, shared)
    lay = guest_layout(c)
    # GHCBs last, one page at a time, MSR protocol
    assert [(k.gfn, k.npages, k.protocol) for k in ks[-4:]] == [(g, 1, MSR) for g in lay.ghcbs]
    assert all(k.protocol is GHCB and k.to_private for k in ks[:-4])
    # SWIOTLB [457216, 522752) is 2M-aligned but not 1G-aligned: 128 2M mappings
    sw = [k for k in ks if 457216 <= k.gfn < 522752]
    assert len(sw) == 128 and all(k.npages == 512 for k in sw)
    # the bss part, in one call
    assert [(k.gfn, k.npages) for k in ks if k.what == "kexec-bss-decrypted"] == [(lay.bss_decrypted.gfn, 3)]
    # exactly the shared pages, each once
    covered = sorted((k.gfn, k.npages) for k in ks)
    for (g1, n1), (g2, _) in itertools.pairwise(covered):
        assert g1 + n1 <= g2
    # every shared page but OVMF's 4 GHCB pages (e820-reserved: not in the direct map), each once
    assert sum(k.npages for k in ks) == sum(n for _, n in shared) - 4
    check_consistent(c, [Timed(0, k) for k in ks], view)
    assert view.shared_ranges() == [(g, 1) for g in lay.ovmf_ghcbs]


def test_kexec_mapping_sizes() -> None:
    c = cfg(8 * GIB)
    lay = guest_layout(c)
    ks = kexec_events(c, [(0x100000, 262144), (0x180000 - 3, 3 + 512 + 1)])
    body = [(k.gfn, k.npages) for k in ks if k.what == "kexec-unshare"]
    assert body == [(0x100000, 262144), (0x17FFFD, 1), (0x17FFFE, 1), (0x17FFFF, 1), (0x180000, 512), (0x180200, 1)]
    assert len([k for k in ks if k.what == "kexec-ghcb"]) == len(lay.ghcbs)


# ------------------------------------------------------------------------------------------------ properties


guest_configs = st.builds(
    LinuxGuestConfig,
    memory_bytes=st.integers(32, 12 * 512).map(lambda n: n * 2 * MIB),
    vcpus=st.one_of(st.integers(1, 16), st.integers(17, 300)),
    lazy_accept=st.booleans(),
    ovmf_prevalidate_below_4g=st.booleans(),
    swiotlb_2m_aligned=st.booleans(),
    bss_decrypted_used_pages=st.integers(1, 512),
    percpu_decrypted_pages=st.integers(0, 3),
    blk_queues=st.one_of(st.none(), st.integers(0, 8)),
    accept_unit_bytes=st.sampled_from([4 * MIB, 16 * MIB]),
    accept_bitmap_unit_bytes=st.sampled_from([2 * MIB, 4 * MIB]),
    accept_guard_unit=st.booleans(),
    allow_unaccepted_memory=st.booleans(),
    percpu_static_bytes=st.sampled_from([65536, 212992, 1 << 20]),
    node_data_bytes=st.sampled_from([4096, 176 * KIB, 3 * MIB]),
    ovmf_iommu_reserved_pool=st.booleans(),
)


def layout_or_skip(c: LinuxGuestConfig):
    try:
        return guest_layout(c)
    except ConfigError as e:
        assert e.field == "memory_bytes"
        return None


@given(c=guest_configs)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_placements_disjoint_and_in_ram(c: LinuxGuestConfig) -> None:
    lay = layout_or_skip(c)
    if lay is None:
        return
    allocs = sorted(lay.allocations, key=lambda p: p.gfn)
    for a, b in itertools.pairwise(allocs):
        assert a.end <= b.gfn, (a, b)
    ram = c.ram_ranges()
    for p in allocs:
        assert any(g <= p.gfn and p.end <= g + n for g, n in ram), p
    rg, rn = lay.runtime_region
    assert rn > 0 and all(p.end <= rg or p.gfn >= rg + rn for p in allocs)
    # memblock_alloc_range_nid() accepts what it hands out: no boot allocation is left unaccepted
    for p in allocs:
        assert not any(g < p.end and p.gfn < g + n for g, n in lay.unaccepted), p
    # acceptances are whole bitmap units, disjoint, inside RAM, and with the unaccepted rest they tile RAM
    unit = c.accept_bitmap_unit_bytes >> 12
    acc = sorted((a.gfn, a.npages) for a in lay.boot_accepts if a.gfn >= GFN_4G or not c.ovmf_prevalidate_below_4g)
    for (g1, n1), (g2, _) in itertools.pairwise(acc):
        assert g1 + n1 <= g2
    for g, n in acc:
        assert any(r <= g and g + n <= r + m for r, m in ram)
        assert (g % unit, n % unit) == (0, 0) or (g, n) in c.ram_ranges() or n < 2 * unit
    high = c.high_pages if c.allow_unaccepted_memory else 0
    accepted_high = sum(n for g, n in acc if g >= GFN_4G)
    assert accepted_high + sum(n for _, n in lay.unaccepted) == high
    for g, n in lay.stable_private:
        assert n > 0 and (g + n <= rg or g >= rg + rn)
        assert lay.bss_decrypted.end <= g or g + n <= lay.bss_decrypted.gfn


@given(c=guest_configs)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_boot_conversions_inside_ram_and_consistent(c: LinuxGuestConfig) -> None:
    if layout_or_skip(c) is None:
        return
    ev = boot_events(c)
    times = [t.time_ns for t in ev]
    assert times == sorted(times)
    view = check_consistent(c, ev)
    assert len(convs(ev, "ghcb")) == 3 * c.vcpus
    if not c.lazy_accept:
        assert view.pages(PageState.UNACCEPTED) == 0
    assert view.pages(PageState.UNACCEPTED) <= c.high_pages
    # kexec leaves nothing shared but OVMF's GHCB pages
    check_consistent(c, [Timed(0, k) for k in kexec_events(c, view.shared_ranges())], view)
    assert view.pages(PageState.SHARED) == c.vcpus
    # what the boot accepted is exactly what is no longer unaccepted
    lay = guest_layout(c)
    assert view.pages(PageState.UNACCEPTED) == sum(n for _, n in lay.unaccepted)


# ---------------------------------------------------------------------------------------------- primitives


def test_allocator_top_down_alignment_and_free() -> None:
    a = GuestPhysAllocator([(0, 1000), (2000, 100)])
    assert a.alloc("x", 10).gfn == 2090
    assert a.alloc("y", 64, align=64, hi=1000).gfn == 896
    assert a.alloc("z", 3, top_down=False).gfn == 0
    with pytest.raises(MemoryError):
        a.reserve("k", 890, 10)  # overlaps y
    with pytest.raises(MemoryError):
        a.alloc("big", 2000)
    a.free(896, 64)
    assert a.free_ranges() == [(3, 997), (2000, 90)]  # merged with both neighbours
    with pytest.raises(ValueError):
        a.free(900, 1)  # already free


@given(ops=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(0, 3)), max_size=40))
@settings(max_examples=100, deadline=None)
def test_interval_map_matches_naive(ops: list[tuple[int, int, int]]) -> None:
    m = IntervalMap(0)
    naive = [0] * 70
    for lo, hi, v in ops:
        m.assign(lo, hi, v)
        for i in range(lo, min(hi, 70)):
            naive[i] = v
    assert [m.get(i) for i in range(70)] == naive
    runs = m.runs(0, 70)
    assert [v for s, e, v in runs for _ in range(s, e)] == naive
    assert all(a[2] != b[2] for a, b in itertools.pairwise(runs))


def test_without_allow_unaccepted_memory_ovmf_accepts_everything_at_exit_boot_services() -> None:
    """guest-workloads.md §2 OVMF notes: no AllowUnacceptedMemory() -> OVMF accepts all remaining RAM."""
    c = cfg(allow_unaccepted_memory=False)  # lazy_accept stays True: it has no effect now
    ev = boot_events(c)
    every = convs(ev, "ovmf-accept-all")
    assert len(every) == 1
    conv = every[0]
    assert (conv.gfn, conv.npages, conv.to_private, conv.huge_ok) == (GFN_4G, c.high_pages, True, True)
    assert convs(ev, "accept") == []  # no unaccepted table: the kernel's accept_memory() has nothing to do
    assert conv.max_entries == 253 and count_requests(conv) == 5  # 1024 2M entries: 253 * 4, then 12
    # it is the last firmware conversion, at ExitBootServices, after the GHCB pages and the IoMmu pool release
    order = [t.event.what for t in ev if isinstance(t.event, Conversion)]
    assert order[: 1 + 4 + 17 + 17 + 1] == [
        "ovmf-prevalidate",
        *["ovmf-ghcb"] * 4,
        *["ovmf-iommu"] * 17,
        *["ovmf-iommu-release"] * 17,
        "ovmf-accept-all",
    ]
    view = check_consistent(c, ev)
    assert view.pages(PageState.UNACCEPTED) == 0
    assert not c.accepts_lazily and cfg().accepts_lazily


def test_ovmf_ghcb_pages_and_iommu_pool() -> None:
    lay = guest_layout(cfg())
    # AmdSevEsInitialize(): mMaxCpuCount * 2 reserved pages at the top of low RAM, every other one a GHCB
    assert lay.ovmf_ghcb_area == Placement("ovmf-ghcb", 524288 - 8, 8)
    assert lay.ovmf_ghcbs == (524280, 524282, 524284, 524286)
    # IoMmuBuffer.c mReservedMemRanges: 4 x 4K, 8 x 32K, 2 x 128K, 1 x 1M, 2 x 2M data pieces, each after a 4K
    # header, in one AllocatePages() of 1,429 pages right under the GHCB area: [522851, 524280)
    pieces = lay.ovmf_iommu
    assert [p.npages for p in pieces] == [1] * 4 + [8] * 8 + [32] * 2 + [256] + [512] * 2
    assert pieces[0].gfn == 522852 and pieces[-1].end == 524280
    for a, b in itertools.pairwise(pieces):
        assert b.gfn == a.end + 1  # the next piece's header page
    # without the pool, SWIOTLB ends under the GHCB area: floor((524280 - 65536) / 512) * 512 = 458240
    off = guest_layout(cfg(ovmf_iommu_reserved_pool=False))
    assert off.ovmf_iommu == () and off.swiotlb.gfn == 458240
    assert not [c for c in convs(boot_events(cfg(ovmf_iommu_reserved_pool=False))) if c.what.startswith("ovmf-iommu")]
