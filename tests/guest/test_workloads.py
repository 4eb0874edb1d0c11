"""Tests for snpsim.guest.workloads: run-time streams and the scenario registry (guest-workloads.md §2).

The central check replays every stream into the guest's own view: a conversion must flip every page it covers
(to-shared from validated private; to-private from shared or unaccepted), an access must hit pages in the state it
claims, nothing may leave RAM, and times never go backwards.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import snpsim
from snpsim import ConfigError
from snpsim.guest.events import Access, Booted, Conversion, Protocol, Timed
from snpsim.guest.linux import (
    BOOT_END_NS,
    GuestMemoryView,
    LinuxGuestConfig,
    PageState,
    boot_events,
    guest_layout,
)
from snpsim.guest.workloads import (
    WORKLOADS,
    dma_churn,
    lazy_accept,
    private_touch,
    random_conversions,
    swiotlb_dynamic,
)

MIB, GIB = 1 << 20, 1 << 30
GFN_4G = 0x100000
SEC = 1_000_000_000


def cfg(mem: int = 4 * GIB, vcpus: int = 4, **kw: object) -> LinuxGuestConfig:
    return LinuxGuestConfig(mem, vcpus, **kw)  # type: ignore[arg-type]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def booted_view(c: LinuxGuestConfig) -> GuestMemoryView:
    view = GuestMemoryView(c)
    view.replay(boot_events(c))
    return view


def replay(c: LinuxGuestConfig, events: Iterable[Timed], view: GuestMemoryView | None = None) -> GuestMemoryView:
    view = view or GuestMemoryView(c)
    last = -1
    for t in events:
        assert t.time_ns >= last
        last = t.time_ns
        ev = t.event
        if isinstance(ev, Conversion):
            allowed = {PageState.SHARED, PageState.UNACCEPTED} if ev.to_private else {PageState.PRIVATE}
            states = {s for _, _, s in view.runs(ev.gfn, ev.npages)}
            assert ev.npages > 0 and states <= allowed, (t, states)
        elif isinstance(ev, Access):
            want = PageState.PRIVATE if ev.private else PageState.SHARED
            assert view.all_in(ev.gfn, ev.npages, want), t
        view.apply(t, strict=True)
    return view


def conversions(events: Iterable[Timed]) -> list[Conversion]:
    return [t.event for t in events if isinstance(t.event, Conversion)]


def inside(region: tuple[int, int], gfn: int, npages: int) -> bool:
    return region[0] <= gfn and gfn + npages <= region[0] + region[1]


# --------------------------------------------------------------------------------------------- lazy accept


def test_lazy_accept_accepts_the_rest_of_high_ram_in_blocks() -> None:
    c = cfg()
    # 4 MiB per second, evenly spaced: block k (k >= 1) at BOOT_END + k s.
    ev = list(lazy_accept(c, rng(), 4 * MIB, None, poisson=False))
    acc = conversions(ev)
    # The boot accepted [0, 6M) of high RAM (the ZONE_NORMAL pool's block + guard) and, top-down, the memblock
    # allocations down to 1552384 = GFN_4G + 503808 (test_linux_boot BOOT4_ACCEPTS); zone->unaccepted_pages holds
    # blocks 1..491 = [4M, 1968M). accept_memory(block, 4M) + guard: block 1 -> [6M, 10M), ..., block 490 ->
    # [1962M, 1966M), block 491 = [1964M, 1968M) + guard [1968M, 1970M) (accepted) -> [1966M, 1968M).
    assert len(acc) == 491
    assert (acc[0].gfn, acc[0].npages) == (GFN_4G + 1536, 1024)
    assert (acc[-1].gfn, acc[-1].npages) == (GFN_4G + 503808 - 512, 512)
    assert all(a.to_private and a.huge_ok and a.protocol is Protocol.GHCB and a.what == "accept" for a in acc)
    g = GFN_4G + 1536
    for a in acc:
        assert a.gfn == g
        g += a.npages
    assert g == GFN_4G + 503808
    # each conversion is followed, at the same time, by a private access of its 4 MiB block
    for k, i in enumerate(range(0, len(ev), 2), start=1):
        conv, access = ev[i], ev[i + 1]
        assert conv.time_ns == access.time_ns == BOOT_END_NS + k * SEC
        assert isinstance(access.event, Access) and access.event.private
        assert (access.event.gfn, access.event.npages) == (GFN_4G + 1024 * k, 1024)
    view = replay(c, ev, booted_view(c))
    assert view.pages(PageState.UNACCEPTED) == 0


def test_lazy_accept_until_and_rate() -> None:
    c = cfg()
    ev = list(lazy_accept(c, rng(1), 256 * MIB, BOOT_END_NS + 2 * SEC))
    n = len(conversions(ev))
    # 512 MiB in 2 s at 256 MiB/s = 128 blocks on average (Poisson): well within +-40
    assert 88 <= n <= 168
    assert all(t.time_ns < BOOT_END_NS + 2 * SEC for t in ev)


def test_lazy_accept_nothing_to_do() -> None:
    assert list(lazy_accept(cfg(lazy_accept=False), rng())) == []
    assert list(lazy_accept(cfg(2 * GIB), rng())) == []


# ------------------------------------------------------------------------------------------ alloc/free streams


def test_dma_churn_pairs_and_sizes() -> None:
    c = cfg()
    region = guest_layout(c).runtime_region
    ev = list(dma_churn(c, rng(3), 200.0, BOOT_END_NS + 5 * SEC, mean_lifetime_ns=0.5e9))
    convs = conversions(ev)
    allocs = [x for x in convs if not x.to_private]
    frees = [x for x in convs if x.to_private]
    assert len(allocs) > 500 and frees
    assert all(x.what == "dma-coherent" and x.huge_ok and inside(region, x.gfn, x.npages) for x in convs)
    # PFN_UP(size) for sizes in [256 B, 1 MiB]
    assert all(1 <= x.npages <= 256 for x in allocs)
    live: set[tuple[int, int]] = set()
    for x in convs:
        key = (x.gfn, x.npages)
        if x.to_private:
            live.remove(key)
        else:
            assert key not in live
            live.add(key)
    # every allocation is written (shared) right after its conversion
    for i, t in enumerate(ev):
        if isinstance(t.event, Conversion) and not t.event.to_private:
            nxt = ev[i + 1].event
            assert isinstance(nxt, Access) and not nxt.private and (nxt.gfn, nxt.npages) == key_of(t.event)
    replay(c, ev, booted_view(c))


def key_of(c: Conversion) -> tuple[int, int]:
    return (c.gfn, c.npages)


def test_swiotlb_dynamic_pools() -> None:
    c = cfg()
    region = guest_layout(c).runtime_region
    ev = list(swiotlb_dynamic(c, rng(5), 50.0, BOOT_END_NS + 5 * SEC, max_pools=8))
    convs = conversions(ev)
    pools = [x for x in convs if x.what == "swiotlb-dynamic"]
    transient = [x for x in convs if x.what == "swiotlb-transient"]
    assert len(pools) == 8 and all(x.npages == 1024 and not x.to_private for x in pools)  # 4 MiB, never freed
    assert all(x.gfn % 1024 == 0 for x in pools)  # naturally aligned (MAX_ORDER block)
    t_alloc = [x for x in transient if not x.to_private]
    t_free = [x for x in transient if x.to_private]
    assert t_alloc and len(t_free) >= len(t_alloc) - 2
    assert all(1 <= x.npages <= 64 for x in transient)  # <= 256 KiB mappings
    assert all(inside(region, x.gfn, x.npages) and x.huge_ok for x in convs)
    replay(c, ev, booted_view(c))


def test_swiotlb_dynamic_pool_lifetime_frees_pools() -> None:
    c = cfg()
    ev = list(
        swiotlb_dynamic(c, rng(6), 10.0, BOOT_END_NS + 3 * SEC, transient_fraction=0.0, pool_lifetime_ns=SEC // 2)
    )
    pools = [x for x in conversions(ev) if x.what == "swiotlb-dynamic"]
    assert any(x.to_private for x in pools) and any(not x.to_private for x in pools)
    replay(c, ev, booted_view(c))


def test_pool_bytes_limit() -> None:
    with pytest.raises(ValueError):
        list(swiotlb_dynamic(cfg(), rng(), pool_bytes=8 * MIB))
    with pytest.raises(ValueError):
        list(dma_churn(cfg(), rng(), 0.0))
    with pytest.raises(ValueError):
        list(dma_churn(cfg(), rng(), bounce_max_bytes=256 * 1024 + 1))
    with pytest.raises(ValueError):
        list(dma_churn(cfg(), rng(), bounce_rate_per_s=-1.0))


def bounces(events: Iterable[Timed]) -> list[Access]:
    return [t.event for t in events if isinstance(t.event, Access) and t.event.what == "swiotlb-bounce"]


def test_dma_churn_bounces_through_the_default_pool_in_cursor_order() -> None:
    c = cfg(1 * GIB, 1)
    sw = guest_layout(c).swiotlb  # 64 MiB: 32768 slots, one area (1 CPU)
    # one-page mappings (stride 2, nslots 2): each takes the next page of the area, from the pool's first page
    ev = list(
        dma_churn(
            c, rng(9), 1e-3, BOOT_END_NS + SEC, bounce_rate_per_s=5000.0, bounce_min_bytes=4096, bounce_max_bytes=4096
        )
    )
    b = bounces(ev)
    assert 4500 <= len(b) <= 5500  # Poisson, 5000 expected
    assert [(x.gfn, x.npages, x.private, x.write) for x in b] == [(sw.gfn + k, 1, False, True) for k in range(len(b))]
    assert conversions(ev) == []  # no coherent allocation at 1e-3/s in 1 s (seeded)
    replay(c, ev, booted_view(c))


def test_dma_churn_bounce_areas_follow_the_cpu() -> None:
    c = cfg()  # 4 vCPUs: 4 areas of the 256 MiB pool, 32768 slots = 16384 pages each
    sw = guest_layout(c).swiotlb
    b = bounces(dma_churn(c, rng(10), 1.0, BOOT_END_NS + SEC // 10))
    assert b and {x.vcpu for x in b} == {0, 1, 2, 3}
    for x in b:
        lo = sw.gfn + 16384 * x.vcpu
        assert lo <= x.gfn and x.gfn + x.npages <= lo + 16384
    replay(c, list(dma_churn(c, rng(10), 1.0, BOOT_END_NS + SEC // 10)), booted_view(c))


def test_swiotlb_dynamic_bounces_through_the_newest_pool() -> None:
    c = cfg()
    sw = guest_layout(c).swiotlb
    ev = list(swiotlb_dynamic(c, rng(5), 50.0, BOOT_END_NS + SEC, max_pools=2, transient_fraction=0.0))
    pools = [x for x in conversions(ev) if x.what == "swiotlb-dynamic"]
    assert len(pools) == 2
    t_pool = [t.time_ns for t in ev if isinstance(t.event, Conversion) and t.event.what == "swiotlb-dynamic"]
    for t in ev:
        x = t.event
        if not (isinstance(x, Access) and x.what == "swiotlb-bounce"):
            continue
        # mem->pools is searched from its head; add_mem_pool() puts each new pool there
        newest = [p for p, tp in zip(pools, t_pool, strict=True) if tp <= t.time_ns]
        lo, n = (newest[-1].gfn, newest[-1].npages) if newest else (sw.gfn, sw.npages)
        assert lo <= x.gfn and x.gfn + x.npages <= lo + n
    replay(c, ev, booted_view(c))


def test_transient_pools_are_written() -> None:
    ev = list(swiotlb_dynamic(cfg(), rng(5), 50.0, BOOT_END_NS + SEC, transient_fraction=1.0, bounce_rate_per_s=0))
    for i, t in enumerate(ev):
        x = t.event
        if isinstance(x, Conversion) and x.what == "swiotlb-transient" and not x.to_private:
            nxt = ev[i + 1].event
            assert isinstance(nxt, Access) and (nxt.gfn, nxt.npages, nxt.private) == (x.gfn, x.npages, False)
    assert not bounces(ev)


# -------------------------------------------------------------------------------------------- synthetic streams


def test_random_conversions_only_flip_and_stay_in_region() -> None:
    c = cfg()
    region = guest_layout(c).runtime_region
    ev = list(random_conversions(c, rng(7), 500.0, 4096, 0.5, BOOT_END_NS + 2 * SEC))
    convs = conversions(ev)
    assert any(x.to_private for x in convs) and any(not x.to_private for x in convs)
    assert all(inside(region, x.gfn, x.npages) for x in convs)
    replay(c, ev, booted_view(c))


@given(seed=st.integers(0, 2**32), frac=st.floats(0.0, 1.0), max_pages=st.integers(1, 3000))
@settings(max_examples=15, deadline=None)
def test_random_conversions_property(seed: int, frac: float, max_pages: int) -> None:
    c = cfg(1 * GIB, 2)
    region = (guest_layout(c).runtime_region[0], 4096)
    ev = list(random_conversions(c, rng(seed), 1000.0, max_pages, frac, BOOT_END_NS + SEC // 5, region=region))
    assert all(inside(region, x.gfn, x.npages) for x in conversions(ev))
    replay(c, ev, booted_view(c))


def test_private_touch_hits_stable_private_memory() -> None:
    c = cfg()
    lay = guest_layout(c)
    ev = list(private_touch(c, rng(8), 10_000.0, BOOT_END_NS + SEC, pages_per_touch=4))
    assert 9000 <= len(ev) <= 11000
    assert all(isinstance(t.event, Access) and t.event.private for t in ev)
    assert all(any(inside(r, t.event.gfn, t.event.npages) for r in lay.stable_private) for t in ev)
    assert {t.event.write for t in ev} == {True, False}
    replay(c, ev, booted_view(c))
    only = list(private_touch(c, rng(8), 1000.0, BOOT_END_NS + SEC, ranges=[(5000, 10)], pages_per_touch=4))
    assert all(5000 <= t.event.gfn < 5010 and t.event.gfn + t.event.npages <= 5010 for t in only)


# ---------------------------------------------------------------------------------------------------- registry


NAMES = {
    "linux-boot",
    "lazy-accept",
    "swiotlb-dynamic",
    "dma-churn",
    "random-conversion",
    "kexec",
    "idle",
    "hostile-convert",
}


def test_registry_names() -> None:
    assert set(WORKLOADS) == NAMES


@pytest.mark.parametrize("name", sorted(NAMES))
def test_registry_streams_are_consistent_and_deterministic(name: str) -> None:
    c = cfg()
    duration = 4 * SEC
    ev = list(WORKLOADS[name](c, rng(11), duration))
    again = list(WORKLOADS[name](c, rng(11), duration))
    assert ev == again
    assert all(t.time_ns < duration for t in ev)
    if name == "idle":
        assert ev == []
        return
    boot = boot_events(c)
    assert ev[: len(boot)] == boot
    assert any(isinstance(t.event, Access) and t.event.what == "touch" for t in ev)
    replay(c, ev)
    if name != "linux-boot":
        other = list(WORKLOADS[name](c, rng(12), duration))
        assert other != ev


def test_registry_lazy_accept_accepts_in_runtime() -> None:
    ev = list(WORKLOADS["lazy-accept"](cfg(), rng(2), 3 * SEC))
    runtime = [x for x in conversions(ev) if x.what == "accept" and x.gfn > GFN_4G]
    assert len(runtime) > 50  # ~128 blocks in 2 s at 256 MiB/s


def test_registry_kexec_unshares_everything_then_reboots() -> None:
    c = cfg()
    ev = list(WORKLOADS["kexec"](c, rng(4), 6 * SEC))
    whats = [t.event.what for t in ev]
    last_ghcb = max(i for i, w in enumerate(whats) if w == "kexec-ghcb")
    assert whats.count("kexec-ghcb") == 4
    view = replay(c, ev[: last_ghcb + 1])
    assert view.shared_ranges() == [(g, 1) for g in guest_layout(c).ovmf_ghcbs]  # e820-reserved, left shared
    # the kexec'd kernel boots again without firmware: a second set of GHCB conversions (3 per CPU), no OVMF,
    # no acceptance
    after = [t.event for t in ev[last_ghcb + 1 :] if isinstance(t.event, Conversion)]
    assert [x.what for x in after].count("ghcb") == 12
    assert not {"ovmf-prevalidate", "ovmf-ghcb", "accept"} & {x.what for x in after}
    replay(c, ev)


def test_registry_truncates_boot() -> None:
    ev = list(WORKLOADS["linux-boot"](cfg(), rng(), 200_000_000))
    assert ev and all(t.time_ns < 200_000_000 for t in ev)
    assert not any(t.event.what == "swiotlb" for t in ev)


@given(seed=st.integers(0, 2**32))
@settings(max_examples=5, deadline=None)
def test_determinism_for_a_seed(seed: int) -> None:
    c = cfg(1 * GIB, 2)
    for name in ("random-conversion", "dma-churn", "swiotlb-dynamic"):
        a = list(WORKLOADS[name](c, rng(seed), 2 * SEC))
        b = list(WORKLOADS[name](c, rng(seed), 2 * SEC))
        assert a == b


def test_registry_params() -> None:
    c = cfg()
    # a string rate; 16 MiB/s for 2 s after boot: ~8 blocks instead of ~128
    ev = list(WORKLOADS["lazy-accept"](c, rng(), 3 * SEC, rate_bytes_per_s="16M", touch_rate_per_s=0))
    runtime = [t for t in ev if t.time_ns >= BOOT_END_NS and not isinstance(t.event, Booted)]
    assert runtime and all(t.event.what == "accept" for t in runtime)
    assert len(conversions(runtime)) < 40
    with pytest.raises(ConfigError) as exc:
        WORKLOADS["dma-churn"](c, rng(), SEC, bogus=1)
    assert exc.value.field == "params.bogus"
    with pytest.raises(ConfigError):
        WORKLOADS["random-conversion"](c, rng(), SEC, rate_per_s=-1.0)
    with pytest.raises(ConfigError):
        WORKLOADS["idle"](c, rng(), SEC, touch_rate_per_s=1)
    ev = list(WORKLOADS["kexec"](c, rng(), 5 * SEC, kexec_at_ns="2s", alloc_rate_per_s=50.0))
    first = next(t for t in ev if getattr(t.event, "what", "") == "kexec-unshare")
    assert first.time_ns == 2 * SEC
    replay(c, ev)


def test_a_dma_churn_run_backs_the_swiotlb_pages_it_touches() -> None:
    """Through the whole stack (snpsim.run): the bounce slots the guest writes get shared backing.

    A 1 GiB, 1-vCPU guest has a 64 MiB pool (clamp(6 % of 1 GiB, 64 MiB, 1 GiB)) = 32768 slots in one area.
    One-page mappings take 2 slots each from the area's cursor (stride 2: "if (alloc_size >= PAGE_SIZE)
    iotlb_align_mask |= ~PAGE_MASK"), so 16384 of them write every one of its 16384 pages once; at 20,000 per
    second (Poisson) there are ~20,000 in the first second after boot (16384 is 25 standard deviations below),
    and a 4 s run leaves at least a second after the boot, which the host's costs stretch from 1 s to ~2 s. With
    4K shared backing (upstream) and nothing else touching shared memory after boot (no coherent allocation at
    1e-6 per second, no idle touches), the run's shared backing exceeds a plain boot's by exactly 64 MiB.
    """

    def run(workload: str, params: dict[str, object], prefault: bool = False) -> dict[str, int | float]:
        vm = {"memory": "1G", "vcpus": 1, "workload": workload, "params": {"touch_rate_per_s": 0, **params}}
        policy = {"preset": "upstream", "prefault_on_convert": prefault}
        scenario = {"seed": 3, "policy": policy, "host": {"memory": "4G"}, "vms": [vm], "duration": "4s"}
        return snpsim.run(scenario).summary

    base = run("linux-boot", {})
    bounce = {
        "alloc_rate_per_s": 1e-6,
        "bounce_rate_per_s": 20000.0,
        "bounce_min_bytes": 4096,
        "bounce_max_bytes": 4096,
    }
    churn = run("dma-churn", bounce)
    assert churn["shared_bytes"] - base["shared_bytes"] == 64 * MIB
    assert churn["to_shared_count"] == base["to_shared_count"]  # no conversion: the pool was shared at boot
    # QEMU's pre-fault on page-state changes (4cdc489eb9c2: KVM_PRE_FAULT_MEMORY "for the size of the page state
    # change", to shared too) backs the whole pool when the guest shares it at boot: the bounces add nothing
    with_prefault = run("linux-boot", {}, prefault=True)
    assert with_prefault["shared_bytes"] >= 64 * MIB
    assert run("dma-churn", bounce, prefault=True)["shared_bytes"] == with_prefault["shared_bytes"]
