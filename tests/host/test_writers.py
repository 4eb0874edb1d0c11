"""Kernel writer processes: each touches memory through the direct map the way its kernel path does."""

from __future__ import annotations

import numpy as np
import simpy

from snpsim.host import HostKernel, Owner, writers
from snpsim.hw import PageSize
from snpsim.policy import Policy, presets
from snpsim.runner import host_thread

GIB = 262144
KEEP_OOPS = Policy(
    private_backing="vmm",
    private_granularity="4k",
    shared_backing="4k",
    discard_on_convert=True,
    directmap="keep",
    directmap_restore="never",
    rmp_fault="oops",
)


def make(policy: Policy) -> tuple[simpy.Environment, HostKernel, np.random.Generator]:
    env = simpy.Environment()
    return env, HostKernel(GIB, policy, clock=lambda: env.now), np.random.default_rng(7)


def start(env: simpy.Environment, h: HostKernel, body: writers.Thread) -> None:
    """Run a writer as the engine does: a host thread on its own CPU account."""
    env.process(host_thread(env, h, h.account("writer"), body))


def test_page_zeroing_keeps_a_bounded_lru_and_frees_the_oldest() -> None:
    env, h, rng = make(presets["upstream"])
    start(env, h, writers.page_zeroing(h, rng, interval_ns=1000, batch=10, resident_pages=25))
    # each batch also takes its zeroing time (10 x page_clear_ns): run long enough for more than 3 batches
    env.run(until=20 * (1500 + 10 * h.costs.page_clear_ns))
    assert len(h.lru) == 25
    assert h.frames.count(Owner.USER) == 25
    assert h.buddy.used_frames == 25


def test_page_zeroing_crashes_a_keep_host_next_to_a_private_page() -> None:
    env, h, rng = make(KEEP_OOPS)
    guest = h.alloc_bulk(0, 4, Owner.VMM_PRIVATE)  # frames 0..3 (lowest first)
    assert guest is not None and guest.tolist() == [0, 1, 2, 3]
    h.free_bulk(guest[:3], 0)
    h.rmp_make_private(3, 0, PageSize.SIZE_4K, 1)
    start(env, h, writers.page_zeroing(h, rng, interval_ns=1000, batch=2, resident_pages=100))
    env.run(until=5000)
    # every frame handed out lies in the 2M range of the private frame 3, mapped at 1G: each zeroing faults
    assert 0 < len(h.lru) < 512
    assert 3 not in h.lru
    assert h.host_crash_count == len(h.lru)
    assert {c.path for c in h.crashes} == {writers.PATH_ZERO}
    assert [c.pfn for c in h.crashes] == list(h.lru)


def test_compaction_migrates_lru_pages_without_losing_them() -> None:
    env, h, rng = make(presets["upstream"])
    pages = [h.alloc(0, Owner.USER) for _ in range(40)]
    for p in pages:
        h.lru[p] = None
    # free every other one so the migration scanner finds isolated movable pages
    for p in pages[::2]:
        del h.lru[p]
        h.free(p, 0)
    start(env, h, writers.compaction(h, rng, interval_ns=1000, batch=5))
    env.run(until=5000)
    assert len(h.lru) == 20
    assert all(h.frames.get(p) == Owner.USER for p in h.lru)
    assert h.buddy.used_frames == 20
    assert h.host_crash_count == 0


def test_ksm_reads_crash_only_when_private_pages_are_unmapped() -> None:
    for name, expect_crash in (("unmap", True), ("upstream", False), ("fixup", False)):
        env, h, rng = make(presets[name])
        pfns = h.alloc_bulk(0, 8, Owner.VMM_PRIVATE)
        assert pfns is not None
        h.rmp_make_private(int(pfns[3]), 0, PageSize.SIZE_4K, 1)
        start(env, h, writers.ksm(h, rng, interval_ns=1000, pages_to_scan=100))
        env.run(until=1500)
        assert (h.host_crash_count > 0) == expect_crash, name
        if expect_crash:
            assert h.crashes[0].path == writers.PATH_KSM
            assert h.crashes[0].kind == "not-present"
            assert h.crashes[0].pfn == int(pfns[3])


def test_hibernation_restore_writes_private_pages() -> None:
    env, h, rng = make(presets["upstream"])
    pfns = h.alloc_bulk(0, 16, Owner.GMEM)
    assert pfns is not None
    for p in pfns[:4]:
        h.rmp_make_private(int(p), 0, PageSize.SIZE_4K, 1)
    start(env, h, writers.hibernation(h, rng, at_ns=10))
    env.run(until=100)
    # the snapshot writes only image pages (shared, 4K-split around private ones); the resume copy writes every
    # saved frame back, and the 4 private ones fault through their 4K mappings
    assert h.host_crash_count == 4
    assert {c.path for c in h.crashes} == {writers.PATH_HIBERNATE_RESTORE}
    assert h.frames.count(Owner.IMAGE) == 0


def test_writers_are_deterministic_for_a_seed() -> None:
    def run(seed: int) -> tuple[dict[str, int], int]:
        env = simpy.Environment()
        h = HostKernel(GIB, presets["fixup"], clock=lambda: env.now)
        rng = np.random.default_rng(seed)
        g = h.alloc_bulk(0, 2048, Owner.VMM_PRIVATE)
        assert g is not None
        for p in g[::3]:
            h.rmp_make_private(int(p), 0, PageSize.SIZE_4K, 1)
        h.free_bulk(g[1::3], 0)
        start(env, h, writers.page_zeroing(h, rng, interval_ns=5000, batch=16, resident_pages=500))
        start(env, h, writers.compaction(h, rng, interval_ns=20_000))
        env.run(until=2_000_000)
        return h.metrics(), h.busy_ns

    a, b = run(3), run(3)
    assert a == b
    assert a[0]["host_rmp_fault_count"] > 0
