"""Runtime workloads of a Linux SNP guest, as streams of timed conversions and accesses.

Models the guest's run-time conversion sources of ``shared/reference/guest-workloads.md`` §2 (rows cited by number):
lazy acceptance (row #12, ``mm/page_alloc.c`` + ``drivers/firmware/efi/unaccepted_memory.c``), dynamic SWIOTLB
pools (row #6, ``kernel/dma/swiotlb.c``), ``dma_alloc_coherent``/``dma_free_coherent`` churn (row #8,
``kernel/dma/direct.c``), streaming DMA bounced through the SWIOTLB pools (row #9, ``swiotlb_tbl_map_single()``,
:mod:`snpsim.guest.swiotlb`: the I/O workloads write the slots they map, so the pools' shared pages get backed),
kexec (row #14, :func:`snpsim.guest.linux.kexec_events`), plus two synthetic ones: a random-conversion stress test
and the guest touching its private memory (so that host-side tampering with a private page is seen by the guest,
as a real kernel would on its next access).

Every generator takes a :class:`~snpsim.guest.linux.LinuxGuestConfig` and an ``np.random.Generator``, yields
:class:`~snpsim.guest.events.Timed` events in nondecreasing ``time_ns`` order from ``start_ns`` (default: end of
boot) while ``time_ns < until_ns`` (``None``: unbounded, or until the work runs out), and is deterministic for a
given generator state. Arrivals are Poisson processes (exponential inter-arrival times) [I-model]; each process
draws only from its own generator (a workload's streaming DMA from ``rng.spawn(1)[0]``). They are plain
iterators, so a SimPy process can ``for ev in stream: yield
env.timeout(ev.time_ns - env.now)``.

Where the memory comes from (all [I-model], see :class:`~snpsim.guest.linux.GuestLayout`): run-time allocations
(SWIOTLB pools, coherent DMA buffers, random conversions) take GFNs from ``layout.runtime_region`` with a buddy-like
naturally aligned allocator, and :func:`private_touch` touches only ``layout.stable_private``, which no workload
ever converts - so merged streams stay consistent without sharing state.

:data:`WORKLOADS` maps the scenario names to ``events(cfg, rng, duration_ns, **params)``; every name except
``"idle"`` yields the boot sequence (:func:`~snpsim.guest.linux.boot_events`) first, then its run-time stream merged
with an idle kernel's private touches (:func:`private_touch` at ``touch_rate_per_s``, default
``IDLE_TOUCH_RATE_PER_S``; 0 disables them), all cut at ``duration_ns``. ``params`` (a scenario's
``[vms.params]``) are the keyword parameters of the run-time function named below (``"4M"``-style strings are
accepted for ``*_bytes``/``*_bytes_per_s``, ``"10ms"`` for ``*_ns``) plus ``touch_rate_per_s`` and, for ``kexec``,
``kexec_at_ns``; an unknown name or a bad value raises :class:`~snpsim.ConfigError` when ``events`` is called.

==================== ==============================================================================================
``idle``             nothing: a VM whose memory is registered but whose guest never runs (host-side baseline)
``linux-boot``       boot, then idle (lazily unaccepted memory stays unaccepted)
``lazy-accept``      boot, then :func:`lazy_accept` at ``LAZY_ACCEPT_RATE`` (nothing to do unless ``accepts_lazily``)
``swiotlb-dynamic``  boot, then :func:`swiotlb_dynamic` (with streaming DMA, ``bounce_*``)
``dma-churn``        boot, then :func:`dma_churn` (with streaming DMA, ``bounce_*``)
``random-conversion`` boot, then :func:`random_conversions`
``kexec``            boot, :func:`dma_churn` until ``kexec_at_ns`` (default: half-way through the time after boot),
                     :func:`~snpsim.guest.linux.kexec_events` (``boot_event_gap_ns`` apart), then the kexec'd
                     kernel's boot (``boot_events(firmware=False)``)
``hostile-convert``  boot, then :func:`hostile_convert` (``rate``, ``target``, ``hold_ns``): a guest converting to
                     private the pages the host is writing
==================== ==============================================================================================
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from snpsim.errors import ConfigError
from snpsim.guest.events import Access, Booted, Conversion, Protocol, Rebooting, Timed
from snpsim.guest.linux import (
    BOOT_END_NS,
    PAGE_SIZE,
    GuestMemoryView,
    GuestPhysAllocator,
    IntervalMap,
    LinuxGuestConfig,
    boot_end_ns,
    boot_events,
    guest_layout,
    kexec_events,
    swiotlb_nareas,
)
from snpsim.guest.swiotlb import IO_TLB_SEGSIZE, IO_TLB_SIZE, SwiotlbPool
from snpsim.units import parse_duration, parse_size

__all__ = [
    "BOUNCE_MAX_BYTES",
    "BOUNCE_MIN_BYTES",
    "BOUNCE_RATE_PER_S",
    "IDLE_TOUCH_RATE_PER_S",
    "LAZY_ACCEPT_RATE",
    "WORKLOADS",
    "WorkloadFn",
    "default_swiotlb_pool",
    "dma_churn",
    "host_used_pages",
    "hostile_convert",
    "lazy_accept",
    "private_touch",
    "random_conversions",
    "swiotlb_dynamic",
]

#: Signature of a registry entry: ``events(cfg, rng, duration_ns, **params)``.
WorkloadFn = Callable[..., Iterator[Timed]]

MIB = 1 << 20
KIB = 1 << 10
#: [I-model] rate at which a busy guest faults its working set into lazily accepted memory (bytes/s).
LAZY_ACCEPT_RATE = 256 * MIB
#: [I-model] private-memory touches per second of an otherwise idle guest kernel (timers, daemons).
IDLE_TOUCH_RATE_PER_S = 100.0
#: Smallest pool ``swiotlb_alloc_pool()`` keeps halving down to for the worker (IO_TLB_MIN_SLABS = 1 MiB).
SWIOTLB_MIN_POOL_BYTES = 1 * MIB
#: Largest single bounce mapping (IO_TLB_SEGSIZE * IO_TLB_SIZE = 128 * 2 KiB).
SWIOTLB_MAX_MAPPING_BYTES = IO_TLB_SEGSIZE * IO_TLB_SIZE
#: [I-model] streaming DMA of the I/O workloads: mappings per second (virtio-blk/net buffers; 0 disables) and
#: the range of their sizes, drawn log-uniformly (a 512 B sector to a 64 KiB request).
BOUNCE_RATE_PER_S = 1000.0
BOUNCE_MIN_BYTES = 512
BOUNCE_MAX_BYTES = 64 * KIB


def _child(rng: np.random.Generator) -> np.random.Generator:
    return np.random.default_rng(int(rng.integers(0, 2**63 - 1)))


def _interarrival_ns(rng: np.random.Generator, rate_per_s: float) -> int:
    return max(1, round(rng.exponential(1e9 / rate_per_s)))


def _check_rate(name: str, rate: float) -> None:
    if not rate > 0 or math.isinf(rate):
        raise ValueError(f"{name} must be a positive finite rate, got {rate}")


def _before(t: int, until_ns: int | None) -> bool:
    return until_ns is None or t < until_ns


def _pages_up(nbytes: int) -> int:
    """PFN_UP(size)."""
    return -(-nbytes // PAGE_SIZE)


def _order_pages(npages: int) -> int:
    """``1 << get_order(size)`` in pages: the buddy block that holds ``npages``."""
    return 1 if npages <= 1 else 1 << (npages - 1).bit_length()


def _region_allocator(cfg: LinuxGuestConfig, region: tuple[int, int] | None) -> GuestPhysAllocator:
    return GuestPhysAllocator([region if region is not None else guest_layout(cfg).runtime_region])


# ------------------------------------------------------------------------------------------- lazy acceptance


def lazy_accept(
    cfg: LinuxGuestConfig,
    rng: np.random.Generator,
    rate_bytes_per_s: float = LAZY_ACCEPT_RATE,
    until_ns: int | None = None,
    *,
    start_ns: int = BOOT_END_NS,
    poisson: bool = True,
) -> Iterator[Timed]:
    """Row #12: the page allocator accepts the blocks of ``zone->unaccepted_pages`` in list order.

    ``try_to_accept_memory_one()`` takes the first MAX_PAGE_ORDER block (``cfg.accept_unit_bytes``, 4 MiB) of the
    list the boot left (``layout.unaccepted_blocks``, ascending) and calls ``accept_memory(block, 4 MiB)`` on the
    bitmap as the boot left it: one ``Conversion(to_private, huge_ok=True, what="accept")`` per still-unaccepted
    run - 2 MiB bitmap units plus, with ``cfg.accept_guard_unit``, the next unit as a guard, so conversions are the
    blocks shifted by 2 MiB, and a block under memory the boot accepted may convert less - followed at the same time
    by an ``Access(private)`` of the block (the allocation being used). Blocks arrive at ``rate_bytes_per_s`` on
    average (Poisson if ``poisson``, else evenly spaced). Yields nothing unless ``cfg.accepts_lazily``; ends when
    the list is empty.

    ``rate_bytes_per_s``: bytes of unaccepted memory the guest's allocations take per second (> 0).
    ``poisson``: exponential inter-arrival times (else fixed).
    """
    _check_rate("rate_bytes_per_s", rate_bytes_per_s)
    lay = guest_layout(cfg)
    if not cfg.accepts_lazily or not lay.unaccepted_blocks:
        return iter(())
    unit = cfg.accept_unit_pages
    mean_ns = unit * PAGE_SIZE / rate_bytes_per_s * 1e9
    bitmap = lay.unaccepted_memory(cfg)

    def gen() -> Iterator[Timed]:
        t = start_ns
        for block in lay.unaccepted_blocks:
            t += max(1, round(rng.exponential(mean_ns))) if poisson else max(1, round(mean_ns))
            if not _before(t, until_ns):
                return
            for gfn, n in bitmap.accept_memory(block, unit):
                yield Timed(t, Conversion(gfn, n, True, Protocol.GHCB, True, "accept"))
            yield Timed(t, Access(block, unit, True, True, "accept"))

    return gen()


# ------------------------------------------------------------------------------------- alloc/free processes


#: A side process of :func:`_alloc_free_process`: its generator, rate, and what it does at an arrival.
Tick = tuple[np.random.Generator, float, Callable[[int], list[Timed]]]


def _alloc_free_process(
    rng: np.random.Generator,
    rate_per_s: float,
    until_ns: int | None,
    start_ns: int,
    on_arrival: Callable[[int], list[tuple[Timed, tuple[int, int, int, str] | None]]],
    on_free: Callable[[int, int, int, str], list[Timed]],
    ticks: Sequence[Tick] = (),
) -> Iterator[Timed]:
    """Poisson arrivals; ``on_arrival(t)`` returns events and optional ``(free_time, gfn, npages, what)`` to free.

    ``ticks`` are further Poisson processes (e.g. streaming DMA) run in the same time order, so each sees the
    state the arrivals and frees before it left; at equal times frees go first, then arrivals, then ticks.
    """
    frees: list[tuple[int, int, int, int, str]] = []
    seq = itertools.count()
    t_next = start_ns + _interarrival_ns(rng, rate_per_s)
    t_ticks = [start_ns + _interarrival_ns(r, rate) for r, rate, _ in ticks]
    while True:
        t_tick = min(t_ticks, default=None)
        if frees and frees[0][0] <= t_next and (t_tick is None or frees[0][0] <= t_tick):
            t_free, _, gfn, npages, what = heapq.heappop(frees)
            if not _before(t_free, until_ns):
                return
            yield from on_free(t_free, gfn, npages, what)
            continue
        if t_tick is not None and t_tick < t_next:
            if not _before(t_tick, until_ns):
                return
            k = t_ticks.index(t_tick)
            r, rate, on_tick = ticks[k]
            yield from on_tick(t_tick)
            t_ticks[k] = t_tick + _interarrival_ns(r, rate)
            continue
        if not _before(t_next, until_ns):
            return
        for ev, pending in on_arrival(t_next):
            if ev is not None:
                yield ev
            if pending is not None:
                heapq.heappush(frees, (pending[0], next(seq), pending[1], pending[2], pending[3]))
        t_next += _interarrival_ns(rng, rate_per_s)


def _check_bounce(rate_per_s: float, min_bytes: int, max_bytes: int) -> None:
    if not rate_per_s >= 0 or math.isinf(rate_per_s):
        raise ValueError(f"bounce_rate_per_s must be a finite rate >= 0, got {rate_per_s}")
    if not 0 < min_bytes <= max_bytes <= SWIOTLB_MAX_MAPPING_BYTES:
        limit = SWIOTLB_MAX_MAPPING_BYTES
        raise ValueError(f"need 0 < bounce_min_bytes <= bounce_max_bytes <= {limit}, got {min_bytes}, {max_bytes}")


def default_swiotlb_pool(cfg: LinuxGuestConfig) -> SwiotlbPool:
    """The boot's default SWIOTLB pool (``layout.swiotlb``) with its areas (:func:`swiotlb_nareas`)."""
    sw = guest_layout(cfg).swiotlb
    nslabs = sw.npages * PAGE_SIZE // IO_TLB_SIZE
    return SwiotlbPool(sw.gfn, nslabs, swiotlb_nareas(cfg.vcpus, nslabs))


def _bounce_tick(
    cfg: LinuxGuestConfig,
    rng: np.random.Generator,
    rate_per_s: float,
    min_bytes: int,
    max_bytes: int,
    pools: list[SwiotlbPool],
) -> list[Tick]:
    """Row #9 as a side process: each arrival is one streaming mapping (``swiotlb_tbl_map_single()``) of a size
    drawn log-uniformly in [``min_bytes``, ``max_bytes``] [I] from a CPU drawn uniformly [I], bounced through the
    newest pool of ``pools`` (``mem->pools`` is searched from its head, where ``add_mem_pool()`` puts new pools),
    written by the guest: ``Access(shared, write, what="swiotlb-bounce")`` of the slots' pages."""
    _check_bounce(rate_per_s, min_bytes, max_bytes)
    if rate_per_s == 0:
        return []
    lo_log, hi_log = math.log(min_bytes), math.log(max_bytes)

    def on_tick(t: int) -> list[Timed]:
        nbytes = round(float(np.exp(rng.uniform(lo_log, hi_log))))
        cpu = int(rng.integers(0, cfg.vcpus))
        gfn, npages = pools[0].map(cpu, nbytes)
        return [Timed(t, Access(gfn, npages, False, True, "swiotlb-bounce", cpu))]

    return [(rng, rate_per_s, on_tick)]


def swiotlb_dynamic(
    cfg: LinuxGuestConfig,
    rng: np.random.Generator,
    shortage_rate_per_s: float = 0.5,
    until_ns: int | None = None,
    *,
    pool_bytes: int = 4 * MIB,
    max_pools: int = 16,
    pool_lifetime_ns: int | None = None,
    transient_fraction: float = 0.75,
    transient_mean_lifetime_ns: float = 1e6,
    bounce_rate_per_s: float = BOUNCE_RATE_PER_S,
    bounce_min_bytes: int = BOUNCE_MIN_BYTES,
    bounce_max_bytes: int = BOUNCE_MAX_BYTES,
    start_ns: int = BOOT_END_NS,
    region: tuple[int, int] | None = None,
) -> Iterator[Timed]:
    """Row #6 (CONFIG_SWIOTLB_DYNAMIC): extra bounce pools made shared when the default pool runs short.

    Shortages arrive at ``shortage_rate_per_s`` [I]. With probability ``transient_fraction`` [I] (or always, once
    ``max_pools`` [I] worker pools exist) a shortage is met by a *transient pool* for one mapping
    (``swiotlb_find_slots()`` fails in atomic context): ``PFN_UP(nr_slots * 2 KiB)`` pages for a mapping size drawn
    log-uniformly in [2 KiB, 256 KiB], shared at once, written by the guest (the mapping's bounce copy) and freed
    back to private (``swiotlb_del_transient`` -> ``set_memory_encrypted``) after an exponential lifetime of mean
    ``transient_mean_lifetime_ns``. Otherwise the ``swiotlb_dyn_alloc`` worker adds a pool of ``pool_bytes``
    (<= 4 MiB: ``alloc_dma_pages()`` is limited to MAX_PAGE_ORDER; halved on allocation failure down to 1 MiB).
    Upstream never frees worker pools; set ``pool_lifetime_ns`` to free them after a fixed time instead. Every
    allocation is naturally aligned (buddy order) in ``region`` (default ``layout.runtime_region``); conversions
    are ``huge_ok`` (direct-map addresses). Streaming DMA (row #9) bounces through the newest worker pool, or the
    default pool while there is none (:func:`_bounce_tick`).

    ``shortage_rate_per_s``: times per second the pools run short (> 0).
    ``pool_bytes``: size of a worker pool, in (0, 4 MiB].
    ``max_pools``: worker pools at most; later shortages get transient pools.
    ``pool_lifetime_ns``: free a worker pool this long after it was added (None: never, as upstream).
    ``transient_fraction``: probability in [0, 1] that a shortage gets a transient pool.
    ``transient_mean_lifetime_ns``: mean lifetime of a transient pool (its one mapping).
    ``bounce_rate_per_s``: streaming DMA mappings per second (>= 0; 0 disables them).
    ``bounce_min_bytes``, ``bounce_max_bytes``: range of their sizes, within (0, 256 KiB].
    """
    _check_rate("shortage_rate_per_s", shortage_rate_per_s)
    if not 0 < pool_bytes <= 4 * MIB:
        raise ValueError(f"pool_bytes must be in (0, 4 MiB], got {pool_bytes}")
    if not 0.0 <= transient_fraction <= 1.0:
        raise ValueError(f"transient_fraction must be in [0, 1], got {transient_fraction}")
    alloc = _region_allocator(cfg, region)
    default = default_swiotlb_pool(cfg)
    pools: list[SwiotlbPool] = [default]  # mem->pools, newest first
    by_gfn: dict[int, SwiotlbPool] = {}
    ticks = _bounce_tick(cfg, rng.spawn(1)[0], bounce_rate_per_s, bounce_min_bytes, bounce_max_bytes, pools)
    persistent = 0

    def convert(t: int, gfn: int, n: int, to_private: bool, what: str) -> Timed:
        return Timed(t, Conversion(gfn, n, to_private, Protocol.GHCB, True, what))

    def take(npages: int) -> int | None:
        size = _order_pages(npages)
        try:
            return alloc.alloc("swiotlb-pool", size, align=size, top_down=False).gfn
        except MemoryError:
            return None

    def on_arrival(t: int) -> list[tuple[Timed, tuple[int, int, int, str] | None]]:
        nonlocal persistent
        transient = persistent >= max_pools or rng.random() < transient_fraction
        if transient:
            mapping = float(np.exp(rng.uniform(math.log(IO_TLB_SIZE), math.log(SWIOTLB_MAX_MAPPING_BYTES))))
            npages = _pages_up(-(-round(mapping) // IO_TLB_SIZE) * IO_TLB_SIZE)
            gfn = take(npages)
            if gfn is None:
                return []
            life = max(1, round(rng.exponential(transient_mean_lifetime_ns)))
            conv = convert(t, gfn, npages, False, "swiotlb-transient")
            copy = Timed(t, Access(gfn, npages, False, True, "swiotlb-transient"))
            return [(conv, (t + life, gfn, npages, "swiotlb-transient")), (copy, None)]
        nbytes = pool_bytes
        while True:
            npages = _pages_up(nbytes)
            gfn = take(npages)
            if gfn is not None:
                break
            if nbytes <= SWIOTLB_MIN_POOL_BYTES:
                return []
            nbytes //= 2
        persistent += 1
        nslabs = npages * PAGE_SIZE // IO_TLB_SIZE
        pool = SwiotlbPool(gfn, nslabs, swiotlb_nareas(cfg.vcpus, nslabs))  # limit_nareas(default_nareas, nslabs)
        pools.insert(0, pool)
        by_gfn[gfn] = pool
        pending = None if pool_lifetime_ns is None else (t + pool_lifetime_ns, gfn, npages, "swiotlb-dynamic")
        return [(convert(t, gfn, npages, False, "swiotlb-dynamic"), pending)]

    def on_free(t: int, gfn: int, npages: int, what: str) -> list[Timed]:
        nonlocal persistent
        alloc.free(gfn, _order_pages(npages))
        if what == "swiotlb-dynamic":
            persistent -= 1
            pools.remove(by_gfn.pop(gfn))
        return [convert(t, gfn, npages, True, what)]

    return _alloc_free_process(rng, shortage_rate_per_s, until_ns, start_ns, on_arrival, on_free, ticks)


def dma_churn(
    cfg: LinuxGuestConfig,
    rng: np.random.Generator,
    alloc_rate_per_s: float = 20.0,
    until_ns: int | None = None,
    *,
    mean_lifetime_ns: float = 2e9,
    min_bytes: int = 256,
    max_bytes: int = 1 * MIB,
    max_live: int = 512,
    bounce_rate_per_s: float = BOUNCE_RATE_PER_S,
    bounce_min_bytes: int = BOUNCE_MIN_BYTES,
    bounce_max_bytes: int = BOUNCE_MAX_BYTES,
    start_ns: int = BOOT_END_NS,
    region: tuple[int, int] | None = None,
) -> Iterator[Timed]:
    """Row #8: blocking ``dma_alloc_coherent()`` / ``dma_free_coherent()`` (device probe/remove, driver buffers),
    and the devices' streaming DMA (row #9) through the default SWIOTLB pool.

    Allocations arrive at ``alloc_rate_per_s`` [I]; sizes are drawn log-uniformly in [``min_bytes``,
    ``max_bytes``] [I]; each takes a naturally aligned ``1 << get_order(size)`` block from ``region`` (default
    ``layout.runtime_region``), converts ``PFN_UP(size)`` pages to shared (``dma_set_decrypted``, direct map:
    ``huge_ok``) and writes them (``Access`` shared); it is freed after an exponential lifetime of mean
    ``mean_lifetime_ns`` [I], converting the same pages back to private (``dma_set_encrypted``). At most
    ``max_live`` allocations exist at once (arrivals beyond that, or that do not fit, are dropped). Streaming
    mappings write the SWIOTLB slots the allocator picks (:func:`_bounce_tick`, :mod:`snpsim.guest.swiotlb`).

    ``alloc_rate_per_s``: coherent allocations per second (> 0).
    ``mean_lifetime_ns``: mean lifetime of an allocation.
    ``min_bytes``, ``max_bytes``: range of allocation sizes.
    ``max_live``: allocations alive at most.
    ``bounce_rate_per_s``: streaming DMA mappings per second (>= 0; 0 disables them).
    ``bounce_min_bytes``, ``bounce_max_bytes``: range of their sizes, within (0, 256 KiB].
    """
    _check_rate("alloc_rate_per_s", alloc_rate_per_s)
    if not 0 < min_bytes <= max_bytes:
        raise ValueError(f"need 0 < min_bytes <= max_bytes, got {min_bytes}, {max_bytes}")
    alloc = _region_allocator(cfg, region)
    pools = [default_swiotlb_pool(cfg)]
    ticks = _bounce_tick(cfg, rng.spawn(1)[0], bounce_rate_per_s, bounce_min_bytes, bounce_max_bytes, pools)
    live = 0
    lo_log, hi_log = math.log(min_bytes), math.log(max_bytes)

    def on_arrival(t: int) -> list[tuple[Timed, tuple[int, int, int, str] | None]]:
        nonlocal live
        nbytes = round(float(np.exp(rng.uniform(lo_log, hi_log))))
        life = max(1, round(rng.exponential(mean_lifetime_ns)))
        if live >= max_live:
            return []
        npages = _pages_up(nbytes)
        block = _order_pages(npages)
        try:
            gfn = alloc.alloc("dma-coherent", block, align=block, top_down=False).gfn
        except MemoryError:
            return []
        live += 1
        conv = Timed(t, Conversion(gfn, npages, False, Protocol.GHCB, True, "dma-coherent"))
        acc = Timed(t, Access(gfn, npages, False, True, "dma-coherent"))
        return [(conv, (t + life, gfn, npages, "dma-coherent")), (acc, None)]

    def on_free(t: int, gfn: int, npages: int, what: str) -> list[Timed]:
        nonlocal live
        live -= 1
        alloc.free(gfn, _order_pages(npages))
        return [Timed(t, Conversion(gfn, npages, True, Protocol.GHCB, True, what))]

    return _alloc_free_process(rng, alloc_rate_per_s, until_ns, start_ns, on_arrival, on_free, ticks)


# ------------------------------------------------------------------------------------------ synthetic streams


_PRIVATE, _SHARED = 1, 2


def random_conversions(
    cfg: LinuxGuestConfig,
    rng: np.random.Generator,
    rate_per_s: float = 100.0,
    max_pages: int = 1024,
    private_fraction: float = 0.5,
    until_ns: int | None = None,
    *,
    huge_ok: bool = True,
    touch: bool = True,
    start_ns: int = BOOT_END_NS,
    region: tuple[int, int] | None = None,
) -> Iterator[Timed]:
    """Stress workload: convert random 4K-granular ranges of ``region`` in either direction.

    At ``rate_per_s`` (Poisson) a range is drawn: start uniform in ``region`` (default ``layout.runtime_region``,
    accepted private memory at the end of boot), length uniform in [1, ``max_pages``], clipped to the region; the
    direction is to-private with probability ``private_fraction``. The workload tracks the guest's view of the
    region and converts only the maximal runs inside the range whose state differs (private -> shared, or
    shared -> private), one ``Conversion`` per run (``huge_ok`` as given), each followed at the same time by an
    ``Access`` in the new state if ``touch``. A draw with nothing to convert yields nothing.
    """
    _check_rate("rate_per_s", rate_per_s)
    if max_pages < 1:
        raise ValueError(f"max_pages must be >= 1, got {max_pages}")
    if not 0.0 <= private_fraction <= 1.0:
        raise ValueError(f"private_fraction must be in [0, 1], got {private_fraction}")
    base, npages = region if region is not None else guest_layout(cfg).runtime_region
    if npages < 1:
        raise ValueError(f"empty region {region}")

    def gen() -> Iterator[Timed]:
        state = IntervalMap(_PRIVATE)
        t = start_ns
        while True:
            t += _interarrival_ns(rng, rate_per_s)
            if not _before(t, until_ns):
                return
            to_private = bool(rng.random() < private_fraction)
            off = int(rng.integers(0, npages))
            length = min(int(rng.integers(1, max_pages + 1)), npages - off)
            src = _SHARED if to_private else _PRIVATE
            for s, e, v in state.runs(off, off + length):
                if v != src:
                    continue
                yield Timed(t, Conversion(base + s, e - s, to_private, Protocol.GHCB, huge_ok, "random"))
                if touch:
                    yield Timed(t, Access(base + s, e - s, to_private, True, "random"))
            state.assign(off, off + length, _PRIVATE if to_private else _SHARED)

    return gen()


def private_touch(
    cfg: LinuxGuestConfig,
    rng: np.random.Generator,
    rate_per_s: float = IDLE_TOUCH_RATE_PER_S,
    until_ns: int | None = None,
    *,
    pages_per_touch: int = 1,
    write_fraction: float = 0.5,
    ranges: Sequence[tuple[int, int]] | None = None,
    start_ns: int = BOOT_END_NS,
    batch: int = 256,
) -> Iterator[Timed]:
    """The guest touching its private memory: ``Access(private)`` at random pages of ``ranges``.

    ``ranges`` (default ``layout.stable_private``: accepted private RAM that no workload converts) are sampled
    uniformly per page; each touch covers ``pages_per_touch`` pages (clipped to the end of its range) and is a
    write with probability ``write_fraction``. Touches arrive at ``rate_per_s`` (Poisson). A host that wrote to,
    moved or shared a private page behind the guest's back makes the next touch fault (#VC 0x404 / integrity).
    """
    _check_rate("rate_per_s", rate_per_s)
    if pages_per_touch < 1:
        raise ValueError(f"pages_per_touch must be >= 1, got {pages_per_touch}")
    rs = [(g, n) for g, n in (ranges if ranges is not None else guest_layout(cfg).stable_private) if n > 0]
    if not rs:
        return iter(())
    starts = np.array([g for g, _ in rs], dtype=np.int64)
    lens = np.array([n for _, n in rs], dtype=np.int64)
    cum = np.cumsum(lens)
    total = int(cum[-1])
    mean_ns = 1e9 / rate_per_s

    def gen() -> Iterator[Timed]:
        t = start_ns
        while True:
            gaps = np.maximum(1, np.rint(rng.exponential(mean_ns, size=batch))).astype(np.int64)
            picks = rng.integers(0, total, size=batch)
            writes = rng.random(batch) < write_fraction
            idx = np.searchsorted(cum, picks, side="right")
            offs = picks - (cum[idx] - lens[idx])
            gfns = starts[idx] + offs
            room = lens[idx] - offs
            for i in range(batch):
                t += int(gaps[i])
                if not _before(t, until_ns):
                    return
                n = min(pages_per_touch, int(room[i]))
                yield Timed(t, Access(int(gfns[i]), n, True, bool(writes[i]), "touch"))

    return gen()


#: [I-model] bounce slots in flight at a time: an I/O-light guest maps its streaming DMA from the low slots of the
#: default pool (``swiotlb_search_pool_area`` starts at the area's index, 0 after boot), so the host's
#: copies and the hostile guest's conversions meet on these pages.
HOST_INFLIGHT_PAGES = 16
#: The kinds of guest pages host code writes (:func:`host_used_pages`); ``hostile-convert`` targets.
HOST_TARGETS = ("virtqueue", "bounce", "steal_time", "kvmclock", "ghcb")
#: target groups of ``hostile-convert``: I/O buffers (vhost/QEMU), paravirt data (KVM), or both
TARGET_GROUPS = {"io": ("virtqueue", "bounce"), "pv": ("steal_time", "kvmclock", "ghcb"), "all": HOST_TARGETS}


def host_used_pages(cfg: LinuxGuestConfig, inflight_pages: int = HOST_INFLIGHT_PAGES) -> dict[str, np.ndarray]:
    """The shared guest pages host code writes, by kind (sorted gfns), from the guest's layout:

    - ``virtqueue``: the vrings (row #8a; vhost/QEMU write the used ring);
    - ``bounce``: the first ``inflight_pages`` pages of the SWIOTLB pool (row #9; vhost/QEMU copy I/O data into them);
    - ``steal_time``: each CPU's ``.data..percpu..decrypted`` page (``steal_time``, ``kvm_apic_eoi`` and
      ``apf_reason`` share it, row #3; KVM's ``record_steal_time`` / ``pv_eoi_put_user``);
    - ``kvmclock``: ``hv_clock_boot`` in ``.bss..decrypted`` (row #2, its second used page [I-model]) or, above 64
      vCPUs, the overflow array (row #4); KVM's gfn-to-pfn cache writes it;
    - ``ghcb``: each CPU's GHCB (row #3; KVM maps it at every VMGEXIT)."""
    lay = guest_layout(cfg)

    def pages(ps: Iterable[tuple[int, int]]) -> np.ndarray:
        out = [np.arange(g, g + n, dtype=np.int64) for g, n in ps]
        return np.unique(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)

    slots = lay.swiotlb  # the bounce buffers (swiotlb_slots is the slot bookkeeping, private)
    clock = [(lay.kvmclock.gfn, lay.kvmclock.npages)] if lay.kvmclock is not None else []
    if not clock and cfg.bss_decrypted_used_pages > 1:
        clock = [(lay.bss_decrypted.gfn + 1, 1)]
    return {
        "virtqueue": pages((p.gfn, p.npages) for p in lay.vrings),
        "bounce": pages([(slots.gfn, min(inflight_pages, slots.npages))]),
        "steal_time": pages((p.gfn, 1) for p in lay.percpu_decrypted if p.npages),
        "kvmclock": pages(clock),
        "ghcb": pages((g, 1) for g in lay.ghcbs),
    }


def hostile_convert(
    cfg: LinuxGuestConfig,
    rng: np.random.Generator,
    rate: float = 100.0,
    until_ns: int | None = None,
    *,
    target: str = "all",
    hold_ns: int = 1_000_000,
    inflight_pages: int = HOST_INFLIGHT_PAGES,
    start_ns: int = BOOT_END_NS,
) -> Iterator[Timed]:
    """A hostile guest: at ``rate`` per second (Poisson) it converts to private one of the pages the host is using
    at that moment (:func:`host_used_pages` of ``target``: a kind, or ``"io"``, ``"pv"``, ``"all"``), and
    touches it as private (validated: its own data now); ``hold_ns`` later it reads the page back and gives it back
    (to shared, the state the host expects). A page already held is not taken again.
    The host's next write to a held page is
    the hazard of the seed thread (``shared/reference/linux-snp-host.md`` §6): an RMP #PF pre-UPM, a lost write with
    guest_memfd."""
    _check_rate("rate", rate)
    groups = TARGET_GROUPS.get(target, (target,) if target in HOST_TARGETS else None)
    if groups is None:
        raise ValueError(f"target must be one of {', '.join((*TARGET_GROUPS, *HOST_TARGETS))}, got {target!r}")
    if hold_ns < 1:
        raise ValueError(f"hold_ns must be >= 1, got {hold_ns}")
    used = host_used_pages(cfg, inflight_pages)
    pool = np.unique(np.concatenate([used[k] for k in groups]))

    def gen() -> Iterator[Timed]:
        if not pool.size:
            return
        held: dict[int, int] = {}  # gfn -> release time
        heap: list[tuple[int, int]] = []
        t = start_ns
        while True:
            t += _interarrival_ns(rng, rate)
            while heap and heap[0][0] <= t:
                release, g = heapq.heappop(heap)
                if not _before(release, until_ns):
                    return
                del held[g]
                yield Timed(release, Access(g, 1, True, False, "hostile-check"))  # reads its data back first
                yield Timed(release, Conversion(g, 1, False, what="hostile-release"))
            if not _before(t, until_ns):
                return
            g = int(pool[int(rng.integers(0, pool.size))])
            if g in held:
                continue
            held[g] = t + hold_ns
            heapq.heappush(heap, (t + hold_ns, g))
            yield Timed(t, Conversion(g, 1, True, what="hostile-convert"))
            yield Timed(t, Access(g, 1, True, True, "hostile-touch"))

    return gen()


# -------------------------------------------------------------------------------------------------- registry


def _merge(streams: Iterable[Iterator[Timed]]) -> Iterator[Timed]:
    return heapq.merge(*streams, key=lambda ev: ev.time_ns)


def _booted(at_ns: int, until_ns: int) -> list[Timed]:
    """The boot milestone (the kernel starts init) at the end of the boot, if the run lasts that long."""
    return [Timed(at_ns, Booted())] if at_ns < until_ns else []


def _cut(events: Iterable[Timed], until_ns: int) -> Iterator[Timed]:
    return itertools.takewhile(lambda ev: ev.time_ns < until_ns, events)


_INTERNAL = {"cfg", "rng", "until_ns", "start_ns"}


def _coerce(name: str, value: object) -> object:
    """Scenario values: ``"4M"`` for ``*_bytes``/``*_bytes_per_s``, ``"10ms"`` for ``*_ns``, lists for tuples."""
    where = f"params.{name}"
    if isinstance(value, str) and (name.endswith("_bytes") or name.endswith("_bytes_per_s")):
        return parse_size(value, where)
    if isinstance(value, str) and name.endswith("_ns"):
        return parse_duration(value, where)
    if isinstance(value, list):
        return tuple(value)
    return value


def _check_params(fns: Sequence[Callable[..., object]], params: dict[str, object], extra: set[str]) -> None:
    known = set(extra)
    for fn in fns:
        known |= set(inspect.signature(fn).parameters) - _INTERNAL
    for key in params:
        if key not in known:
            raise ConfigError(
                f"params.{key}", f"unknown workload parameter (known: {', '.join(sorted(known)) or 'none'})"
            )


def _split(fn: Callable[..., object], params: dict[str, object]) -> dict[str, Any]:
    names = set(inspect.signature(fn).parameters) - _INTERNAL
    return {k: _coerce(k, v) for k, v in params.items() if k in names}


def _number(name: str, value: object) -> float:
    v = _coerce(name, value)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ConfigError(f"params.{name}", f"expected a number, got {value!r}")
    return float(v)


def _touches(
    cfg: LinuxGuestConfig, rng: np.random.Generator, params: dict[str, object], start: int, until: int
) -> Iterator[Timed]:
    rate = _number("touch_rate_per_s", params.get("touch_rate_per_s", IDLE_TOUCH_RATE_PER_S))
    if rate <= 0:
        return iter(())
    return private_touch(cfg, rng, rate, until, start_ns=start)


def _build(make: Callable[[], Iterator[Timed]]) -> Iterator[Timed]:
    """Construct a stream now so that bad parameter values surface as :class:`ConfigError` at the call."""
    try:
        return make()
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError("params", str(e)) from None


def _with_boot(runtime: Callable[..., Iterator[Timed]] | None) -> WorkloadFn:
    """Boot first, then ``runtime(cfg, rng, until_ns=, start_ns=, **params)`` merged with idle private touches."""

    def events(cfg: LinuxGuestConfig, rng: np.random.Generator, duration_ns: int, **params: object) -> Iterator[Timed]:
        _check_params([runtime] if runtime else [], params, {"touch_rate_per_s"})
        boot = boot_events(cfg)
        start = boot_end_ns(boot, cfg)
        rng_touch, rng_work = _child(rng), _child(rng)
        streams = [_build(lambda: _touches(cfg, rng_touch, params, start, duration_ns))]
        if runtime is not None:
            kwargs = _split(runtime, params)
            streams.append(_build(lambda: runtime(cfg, rng_work, until_ns=duration_ns, start_ns=start, **kwargs)))
        return itertools.chain(_cut(boot, duration_ns), _booted(start, duration_ns), _cut(_merge(streams), duration_ns))

    return events


def _idle(cfg: LinuxGuestConfig, rng: np.random.Generator, duration_ns: int, **params: object) -> Iterator[Timed]:
    cfg.validate()
    _check_params([], params, set())
    return iter(())


def _kexec(cfg: LinuxGuestConfig, rng: np.random.Generator, duration_ns: int, **params: object) -> Iterator[Timed]:
    _check_params([dma_churn], params, {"touch_rate_per_s", "kexec_at_ns"})
    boot = boot_events(cfg)
    start = boot_end_ns(boot, cfg)
    rng_touch, rng_work = _child(rng), _child(rng)
    at = params.get("kexec_at_ns")
    default_at = start + max(0, duration_ns - start) // 2
    t_kexec = default_at if at is None else max(start, int(_number("kexec_at_ns", at)))
    kwargs = _split(dma_churn, params)
    churn = _build(lambda: dma_churn(cfg, rng_work, until_ns=t_kexec, start_ns=start, **kwargs))
    touches = _build(lambda: _touches(cfg, rng_touch, params, start, duration_ns))

    def gen() -> Iterator[Timed]:
        runtime = list(churn)
        view = GuestMemoryView(cfg)
        view.replay(boot)
        view.replay(runtime)
        gap = cfg.boot_event_gap_ns
        convs = kexec_events(cfg, view.shared_ranges())
        kexec = [Timed(t_kexec, Rebooting())] + [Timed(t_kexec + i * gap, c) for i, c in enumerate(convs)]
        reboot = boot_events(cfg, start_ns=t_kexec + len(convs) * gap, firmware=False)
        reboot.append(Timed(boot_end_ns(reboot, cfg), Booted()))
        yield from _cut(boot, duration_ns)
        yield from _booted(start, duration_ns)
        yield from _cut(_merge([iter(runtime + kexec + reboot), touches]), duration_ns)

    return gen()


WORKLOADS: dict[str, WorkloadFn] = {
    "idle": _idle,
    "linux-boot": _with_boot(None),
    "lazy-accept": _with_boot(lazy_accept),
    "swiotlb-dynamic": _with_boot(swiotlb_dynamic),
    "dma-churn": _with_boot(dma_churn),
    "random-conversion": _with_boot(random_conversions),
    "kexec": _kexec,
    "hostile-convert": _with_boot(hostile_convert),
}
