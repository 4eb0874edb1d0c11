"""The aged host (snpsim.host.aging): page cache and kernel memory allocated through the buddy allocator over an
uptime, grouped by mobility; and the headline it changes: where a guest's private pages land.

The bounds are derived by hand from mm/page_alloc.c's fallback rule (``__rmqueue_claim``: an unmovable request that
finds no unmovable free page claims "the largest available free page in the other list", a whole order-10 block of
two pageblocks while one exists) and the host's state before the VMs start (read from ``pagetypeinfo``)."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

import snpsim
from snpsim.errors import ConfigError
from snpsim.host import HostKernel, Owner
from snpsim.host.aging import RECLAIMABLE_ORDERS, UNMOVABLE_ORDERS, AgingSpec, age_host, aging_rng
from snpsim.host.buddy import PAGEBLOCK_NR_PAGES, Migratetype
from snpsim.policy import presets
from snpsim.scenario import load

GIB = 1 << 18
U, M, R = Migratetype.UNMOVABLE, Migratetype.MOVABLE, Migratetype.RECLAIMABLE


def aged(gib: int = 1, page_cache: float = 0.2, seed: int = 1, **spec: object) -> HostKernel:
    h = HostKernel(gib * GIB, presets["upstream"])
    age_host(h, page_cache, AgingSpec(**spec), seed)  # type: ignore[arg-type]
    return h


def test_the_stream_is_keyed_by_name() -> None:
    a = aging_rng(7).random(4)
    b = np.random.default_rng([7, zlib.crc32(b"host.aging")]).random(4)
    assert np.array_equal(a, b)


def test_ageing_is_deterministic_and_depends_on_the_seed() -> None:
    one, two, other = aged(seed=3), aged(seed=3), aged(seed=4)
    assert one.buddy.free_blocks_typed() == two.buddy.free_blocks_typed()
    assert np.array_equal(one.buddy.pageblock_types(), two.buddy.pageblock_types())
    assert one.buddy.free_blocks() != other.buddy.free_blocks()


def test_composition_when_the_vms_start() -> None:
    h = aged(page_cache=0.2)
    total = GIB
    # the last epoch's level is page_cache exactly: int(total * 0.2) pages
    assert h.frames.count(Owner.USER) == int(total * 0.2)
    # kernel memory at its steady-state targets: int(total * share * part) >> order blocks of each slab order
    want_u = sum((int(total * 0.01 * part) >> o) << o for o, part in UNMOVABLE_ORDERS.items())
    want_r = sum((int(total * 0.015 * part) >> o) << o for o, part in RECLAIMABLE_ORDERS.items())
    assert h.frames.count(Owner.KERNEL) == want_u
    assert h.frames.count(Owner.KERNEL_RECLAIMABLE) == want_r
    assert h.buddy.used_frames == int(total * 0.2) + want_u + want_r
    assert h.busy_ns == 0 and h.crashes == []  # history, not simulated work: nothing zeroed
    h.buddy.check_invariants()


def test_kernel_memory_sits_in_its_own_pageblocks() -> None:
    h = aged(gib=2, page_cache=0.3)
    pb = h.buddy.pageblock_types()
    tags = h.frames.tags(0, 2 * GIB)
    blk = np.arange(2 * GIB) >> 9
    # __rmqueue_smallest serves each type from its own lists, and a fallback claims a whole block (free order-10
    # movable blocks remain all along: peak + kernel < 1), so no allocation ever stole a page from a foreign block
    assert (pb[blk[tags == Owner.KERNEL]] == U).all()
    assert (pb[blk[tags == Owner.KERNEL_RECLAIMABLE]] == R).all()
    assert (pb[blk[tags == Owner.USER]] == M).all()
    kernel_blocks = int((pb == U).sum() + (pb == R).sum())
    assert kernel_blocks < 0.1 * pb.size  # 2.5 % of memory in a few percent of the pageblocks


def test_uniform_scatter_puts_page_cache_in_every_pageblock() -> None:
    h = HostKernel(GIB, presets["upstream"])
    age_host(h, 0.2, AgingSpec(mode="uniform-scatter"), 1)
    tags = h.frames.tags(0, GIB).reshape(-1, PAGEBLOCK_NR_PAGES)
    # each frame kept with probability 0.2: a pageblock without any has probability 0.8^512 (about 1e-50)
    assert ((tags == Owner.USER).any(axis=1)).all()
    assert abs(h.frames.count(Owner.USER) - 0.2 * GIB) < 5 * math.sqrt(GIB * 0.2 * 0.8)


def test_no_page_cache_means_a_fresh_host() -> None:
    h = aged(page_cache=0.0)
    assert h.buddy.used_frames == 0 and h.frames.count(Owner.KERNEL) == 0


@pytest.mark.parametrize(
    ("aging", "field"),
    [
        ({"mode": "scatter"}, "host.aging.mode"),
        ({"peak": 0.1}, "host.aging.peak"),  # below page_cache
        ({"peak": 0.99}, "host.aging.peak"),  # with the kernel shares, more than all of memory
        ({"uptime": "0s"}, "host.aging.uptime"),
        ({"epoch": "0s"}, "host.aging.epoch"),
        ({"turnover": 1.5}, "host.aging.turnover"),
        ({"unmovable": "lots"}, "host.aging.unmovable"),
        ({"bogus": 1}, "host.aging.bogus"),
        (3, "host.aging"),
    ],
)
def test_bad_aging_fields_name_the_field(aging: object, field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load({"host": {"memory": "1G", "page_cache": 0.2, "aging": aging}, "vms": [{"memory": "64M"}]})
    assert exc.value.field == field


def test_aging_fields_are_read() -> None:
    s = load(
        {"host": {"page_cache": 0.3, "aging": {"uptime": "2d", "epoch": "4h", "peak": 0.5}}, "vms": [{"memory": "64M"}]}
    )
    assert (s.aging.uptime_ns, s.aging.epoch_ns, s.aging.epochs, s.aging.peak) == (
        2 * 86400 * 10**9,
        4 * 3600 * 10**9,
        12,
        0.5,
    )
    assert load({"host": {"aging": "uniform-scatter"}, "vms": [{"memory": "64M"}]}).aging.mode == "uniform-scatter"


def _boot(aging: str) -> tuple[snpsim.Result, HostKernel]:
    """A 1 GiB upstream guest booting on a 4 GiB host, half page cache; and the host as it was before the boot."""
    doc = {
        "seed": 1,
        "duration": "3s",
        "samples": 2,
        "policy": "upstream",
        "host": {"memory": "4G", "page_cache": 0.5, "aging": aging},
        "vms": [{"memory": "1G", "vcpus": 2, "workload": "linux-boot"}],
    }
    before = HostKernel(4 * GIB, presets["upstream"])
    age_host(before, 0.5, load(doc).aging, 1)
    return snpsim.run(doc), before


def test_an_aged_host_confines_a_guest_to_far_fewer_2m_ranges_than_uniform_scatter() -> None:
    M2 = 2 << 20
    aged_run, aged_before = _boot("churn")
    g = aged_run.vms[0].peak_private_bytes >> 12  # guest_memfd pages at the peak
    kernel_u = aged_before.frames.count(Owner.KERNEL)
    n_u = int((aged_before.buddy.pageblock_types() == U).sum())
    free10 = sum(p.free["Movable"][10] for p in aged_before.buddy.pagetypeinfo())
    assert free10 > g / 1024 + 1  # enough free order-10 movable blocks for every claim the guest needs
    # Upstream splits the 2M range of every 4K private page and never merges: 4K-mapped bytes = 2M x the ranges that
    # ever held a private page. guest_memfd asks for unmovable pages; __rmqueue_claim runs only when no unmovable page
    # is free, i.e. when every unmovable pageblock is full (of kernel pages and at most g guest pages), and each claim
    # adds one order-10 block (2 pageblocks). So before the k-th claim 512 (n_u + 2 (k - 1)) <= kernel_u + g, and
    # the unmovable pageblocks, which hold every private page, number at most (kernel_u + g) / 512 + 2.
    bound_aged = ((kernel_u + g) // PAGEBLOCK_NR_PAGES + 2) * M2
    assert n_u <= (kernel_u // PAGEBLOCK_NR_PAGES) + 2
    assert g * 4096 <= aged_run.summary["directmap_4k"] <= bound_aged

    scatter_run, scatter_before = _boot("uniform-scatter")
    g_s = scatter_run.vms[0].peak_private_bytes >> 12
    tags = scatter_before.frames.tags(0, 4 * GIB).reshape(-1, PAGEBLOCK_NR_PAGES)
    max_free = int((tags == Owner.FREE).sum(axis=1).max())  # binomial(512, 0.5) at its largest: about 290
    # a 2M range holds at most max_free guest pages, so the guest's pages span at least g / max_free ranges
    bound_scatter = math.ceil(g_s / max_free) * M2
    assert scatter_run.summary["directmap_4k"] >= bound_scatter
    assert bound_aged < 0.65 * bound_scatter  # far fewer: by the bounds alone
