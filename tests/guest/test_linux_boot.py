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
    ghcbs = convs(boot4, "ghcb")
    assert len(ghcbs) == 4
    assert all(c.protocol is MSR and c.npages == 1 and not c.to_private for c in ghcbs)
    assert sum(count_requests(c) for c in ghcbs) == 4
    assert len({c.gfn for c in ghcbs}) == 4
    # each followed by a shared write of that page, by its CPU
    for i, t in enumerate(boot4):
        if isinstance(t.event, Conversion) and t.event.what == "ghcb":
            nxt = boot4[i + 1].event
            assert isinstance(nxt, Access)
            assert (nxt.gfn, nxt.npages, nxt.private, nxt.write) == (t.event.gfn, 1, False, True)
    assert sorted(a.event.vcpu for a in boot4 if isinstance(a.event, Access) and a.event.what == "ghcb") == [0, 1, 2, 3]


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
    # only MSR-protocol PSCs of the boot: 512 bss + 4 GHCB + 4 per-CPU pages (row #3, early_set_memory_decrypted)
    assert sum(count_requests(c) for c in convs(boot4) if c.protocol is MSR) == 512 + 4 + 4


def test_percpu_decrypted_row3(boot4: list[Timed]) -> None:
    pc = convs(boot4, "percpu-decrypted")
    assert len(pc) == 4 and all(c.npages == 1 and c.protocol is MSR and not c.to_private for c in pc)
    ghcb_pc = convs(boot_events(cfg(percpu_decrypted_protocol=GHCB, percpu_decrypted_pages=2)), "percpu-decrypted")
    assert len(ghcb_pc) == 4 and all(c.npages == 2 and c.protocol is GHCB for c in ghcb_pc)


def test_swiotlb_row5(boot4: list[Timed]) -> None:
    (sw,) = convs(boot4, "swiotlb")
    assert sw.npages == 65536  # 256 MiB
    assert sw.huge_ok and not sw.to_private and sw.protocol is GHCB
    assert sw.gfn % 512 == 0 and sw.gfn + sw.npages <= 524288  # low RAM, below 4 GiB
    assert entry_runs(sw) == [(sw.gfn, 128, 1)]  # 128 2M entries
    assert count_requests(sw) == 2  # 2 descriptors of 64
    # placement: top-down under 12 GHCB-data + 4 per-CPU pages (524288 - 16 = 524272), 2M-aligned:
    # floor((524272 - 65536) / 512) * 512 = 458240.
    assert sw.gfn == 458240


def test_swiotlb_unaligned_placement_adds_4k_head_and_tail() -> None:
    (sw,) = convs(boot_events(cfg(swiotlb_2m_aligned=False)), "swiotlb")
    # memblock 4K alignment: ends right under the per-CPU pages at 524272 -> starts at 458736 = 895*512 + 496.
    assert (sw.gfn, sw.npages) == (458736, 65536)
    assert entry_runs(sw) == [(458736, 16, 0), (458752, 127, 1), (523776, 496, 0)]


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


def test_ovmf_prevalidation_and_lazy_acceptance_rows12_13(boot4: list[Timed]) -> None:
    first = boot4[0]
    assert first.time_ns == 0
    assert first.event == Conversion(0, 524288, True, GHCB, True, "ovmf-prevalidate")
    assert count_requests(first.event) == 16  # 2 GiB = 1024 2M entries / 64
    # lazy: high RAM untouched except the block holding the ZONE_NORMAL pool: 4 MiB block + 2 MiB guard unit.
    (acc,) = convs(boot4, "accept")
    assert (acc.gfn, acc.npages, acc.to_private, acc.huge_ok) == (GFN_4G, 1536, True, True)
    (acc2,) = convs(boot_events(cfg(accept_guard_unit=False)), "accept")
    assert acc2.npages == 1024
    # it happens right before the pool is made shared
    i = next(i for i, t in enumerate(boot4) if t.event.what == "accept")
    assert boot4[i + 1].event.what == "atomic-pool-normal"


def test_eager_acceptance_row12() -> None:
    ev = boot_events(cfg(lazy_accept=False))
    acc = convs(ev, "accept")
    # blocks 0..511 of 2 GiB: [0, 6M), [6M, 10M), ..., [2042M, 2046M), [2046M, 2048M)
    assert len(acc) == 512
    assert (acc[0].gfn, acc[0].npages) == (GFN_4G, 1536)
    assert all(c.npages == 1024 for c in acc[1:-1])
    assert (acc[-1].gfn, acc[-1].npages) == (GFN_4G + 524288 - 512, 512)
    g = GFN_4G
    for c in acc:
        assert c.gfn == g and c.to_private and c.huge_ok
        g += c.npages
    assert g == GFN_4G + 524288
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
    # shared: 4 GHCB + 3 bss + 4 per-CPU + 65536 SWIOTLB + 3 * 128 pools + 7 * 2 vrings + 2 attestation
    assert view.pages(PageState.SHARED) == 4 + 3 + 4 + 65536 + 384 + 14 + 2
    assert view.pages(PageState.UNACCEPTED) == 524288 - 1536
    kinds = Counter(t.event.what for t in boot4 if isinstance(t.event, Conversion))
    assert kinds == {
        "ovmf-prevalidate": 1,
        "bss-decrypted": 1,
        "ghcb": 4,
        "percpu-decrypted": 4,
        "swiotlb": 1,
        "accept": 1,
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
    # SWIOTLB [458240, 523776) is 2M-aligned but not 1G-aligned: 128 2M mappings
    sw = [k for k in ks if 458240 <= k.gfn < 523776]
    assert len(sw) == 128 and all(k.npages == 512 for k in sw)
    # the bss part, in one call
    assert [(k.gfn, k.npages) for k in ks if k.what == "kexec-bss-decrypted"] == [(lay.bss_decrypted.gfn, 3)]
    # exactly the shared pages, each once
    covered = sorted((k.gfn, k.npages) for k in ks)
    for (g1, n1), (g2, _) in itertools.pairwise(covered):
        assert g1 + n1 <= g2
    assert sum(k.npages for k in ks) == sum(n for _, n in shared)
    check_consistent(c, [Timed(0, k) for k in ks], view)
    assert view.shared_ranges() == []


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
    accept_unit_bytes=st.sampled_from([2 * MIB, 4 * MIB, 16 * MIB]),
    accept_guard_unit=st.booleans(),
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
    assert len(convs(ev, "ghcb")) == c.vcpus
    if not c.lazy_accept:
        assert view.pages(PageState.UNACCEPTED) == 0
    assert view.pages(PageState.UNACCEPTED) <= c.high_pages
    # kexec leaves nothing shared
    check_consistent(c, [Timed(0, k) for k in kexec_events(c, view.shared_ranges())], view)
    assert view.pages(PageState.SHARED) == 0


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
    assert convs(ev, "accept") == []  # the kernel has nothing left to accept, eagerly or lazily
    # it happens in the firmware phase, right after PEI's pre-validation of low RAM
    order = [t.event.what for t in ev if isinstance(t.event, Conversion)]
    assert order.index("ovmf-accept-all") == order.index("ovmf-prevalidate") + 1
    view = check_consistent(c, ev)
    assert view.pages(PageState.UNACCEPTED) == 0
    assert not c.accepts_lazily and cfg().accepts_lazily
