"""Runtime workloads of a Linux SNP guest, as streams of timed conversions and accesses.

Models the guest's run-time conversion sources of ``shared/reference/guest-workloads.md`` §2 (rows cited by number):
lazy acceptance (row #12, ``mm/page_alloc.c`` + ``drivers/firmware/efi/unaccepted_memory.c``), dynamic SWIOTLB
pools (row #6, ``kernel/dma/swiotlb.c``), ``dma_alloc_coherent``/``dma_free_coherent`` churn (row #8,
``kernel/dma/direct.c``), kexec (row #14, :func:`snpsim.guest.linux.kexec_events`), plus two synthetic ones: a
random-conversion stress test and the guest touching its private memory (so that host-side tampering with a
private page is seen by the guest, as a real kernel would on its next access).

Every generator takes a :class:`~snpsim.guest.linux.LinuxGuestConfig` and an ``np.random.Generator``, yields
:class:`~snpsim.guest.events.Timed` events in nondecreasing ``time_ns`` order from ``start_ns`` (default: end of
boot) while ``time_ns < until_ns`` (``None``: unbounded, or until the work runs out), and is deterministic for a
given generator state. Arrivals are Poisson processes (exponential inter-arrival times) [I-model]; each process
draws only from its own generator. They are plain iterators, so a SimPy process can ``for ev in stream: yield
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
``swiotlb-dynamic``  boot, then :func:`swiotlb_dynamic`
``dma-churn``        boot, then :func:`dma_churn`
``random-conversion`` boot, then :func:`random_conversions`
``kexec``            boot, :func:`dma_churn` until ``kexec_at_ns`` (default: half-way through the time after boot),
                     :func:`~snpsim.guest.linux.kexec_events` (``boot_event_gap_ns`` apart), then the kexec'd
                     kernel's boot (``boot_events(firmware=False)``)
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
    FOUR_GIB_GFN,
    PAGE_SIZE,
    GuestMemoryView,
    GuestPhysAllocator,
    IntervalMap,
    LinuxGuestConfig,
    accept_block,
    boot_end_ns,
    boot_events,
    guest_layout,
    kexec_events,
)
from snpsim.units import parse_duration, parse_size

__all__ = [
    "IDLE_TOUCH_RATE_PER_S",
    "LAZY_ACCEPT_RATE",
    "WORKLOADS",
    "WorkloadFn",
    "dma_churn",
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
SWIOTLB_MAX_MAPPING_BYTES = 256 * KIB
IO_TLB_SIZE = 2 * KIB


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
    """Row #12: the page allocator takes unaccepted MAX_ORDER blocks of ZONE_NORMAL in ascending order.

    Each block (``cfg.accept_unit_bytes``, 4 MiB) yields a ``Conversion(to_private, huge_ok=True, what="accept")``
    of its still-unaccepted part - ``accept_memory()`` works in 2 MiB bitmap units plus, with
    ``cfg.accept_guard_unit``, the next unit as a guard, so conversions are the block shifted by 2 MiB - followed at
    the same time by an ``Access(private)`` of the block (the allocation being used). Blocks arrive at
    ``rate_bytes_per_s`` on average (Poisson if ``poisson``, else evenly spaced). Starts after the blocks boot
    accepted (the ZONE_NORMAL atomic pool); yields nothing unless ``cfg.accepts_lazily`` and there is RAM
    above 4 GiB; ends when all of it is accepted.
    """
    _check_rate("rate_bytes_per_s", rate_bytes_per_s)
    lay = guest_layout(cfg)
    high = cfg.high_pages
    if not cfg.accepts_lazily or not high:
        return iter(())
    unit, guard = cfg.accept_unit_pages, cfg.accept_guard_pages
    mean_ns = unit * PAGE_SIZE / rate_bytes_per_s * 1e9

    def gen() -> Iterator[Timed]:
        prefix = lay.boot_accepted_high_pages
        block = prefix // unit
        t = start_ns
        while block * unit < high:
            t += max(1, round(rng.exponential(mean_ns))) if poisson else max(1, round(mean_ns))
            if not _before(t, until_ns):
                return
            start, end = accept_block(high, prefix, block, unit, guard)
            if end > start:
                yield Timed(t, Conversion(FOUR_GIB_GFN + start, end - start, True, Protocol.GHCB, True, "accept"))
                prefix = end
            lo = block * unit
            yield Timed(t, Access(FOUR_GIB_GFN + lo, min(high, lo + unit) - lo, True, True, "accept"))
            block += 1

    return gen()


# ------------------------------------------------------------------------------------- alloc/free processes


def _alloc_free_process(
    rng: np.random.Generator,
    rate_per_s: float,
    until_ns: int | None,
    start_ns: int,
    on_arrival: Callable[[int], list[tuple[Timed, tuple[int, int, int, str] | None]]],
    on_free: Callable[[int, int, int, str], list[Timed]],
) -> Iterator[Timed]:
    """Poisson arrivals; ``on_arrival(t)`` returns events and optional ``(free_time, gfn, npages, what)`` to free."""
    frees: list[tuple[int, int, int, int, str]] = []
    seq = itertools.count()
    t_next = start_ns + _interarrival_ns(rng, rate_per_s)
    while True:
        if frees and frees[0][0] <= t_next:
            t_free, _, gfn, npages, what = heapq.heappop(frees)
            if not _before(t_free, until_ns):
                return
            yield from on_free(t_free, gfn, npages, what)
            continue
        if not _before(t_next, until_ns):
            return
        for ev, pending in on_arrival(t_next):
            if ev is not None:
                yield ev
            if pending is not None:
                heapq.heappush(frees, (pending[0], next(seq), pending[1], pending[2], pending[3]))
        t_next += _interarrival_ns(rng, rate_per_s)


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
    start_ns: int = BOOT_END_NS,
    region: tuple[int, int] | None = None,
) -> Iterator[Timed]:
    """Row #6 (CONFIG_SWIOTLB_DYNAMIC): extra bounce pools made shared when the default pool runs short.

    Shortages arrive at ``shortage_rate_per_s`` [I]. With probability ``transient_fraction`` [I] (or always, once
    ``max_pools`` [I] worker pools exist) a shortage is met by a *transient pool* for one mapping
    (``swiotlb_find_slots()`` fails in atomic context): ``PFN_UP(nr_slots * 2 KiB)`` pages for a mapping size drawn
    log-uniformly in [2 KiB, 256 KiB], shared at once and freed back to private (``swiotlb_del_transient`` ->
    ``set_memory_encrypted``) after an exponential lifetime of mean ``transient_mean_lifetime_ns``. Otherwise the
    ``swiotlb_dyn_alloc`` worker adds a pool of ``pool_bytes`` (<= 4 MiB: ``alloc_dma_pages()`` is limited to
    MAX_PAGE_ORDER; halved on allocation failure down to 1 MiB). Upstream never frees worker pools; set
    ``pool_lifetime_ns`` to free them after a fixed time instead. Every allocation is naturally aligned (buddy
    order) in ``region`` (default ``layout.runtime_region``); conversions are ``huge_ok`` (direct-map addresses).
    """
    _check_rate("shortage_rate_per_s", shortage_rate_per_s)
    if not 0 < pool_bytes <= 4 * MIB:
        raise ValueError(f"pool_bytes must be in (0, 4 MiB], got {pool_bytes}")
    if not 0.0 <= transient_fraction <= 1.0:
        raise ValueError(f"transient_fraction must be in [0, 1], got {transient_fraction}")
    alloc = _region_allocator(cfg, region)
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
            return [(convert(t, gfn, npages, False, "swiotlb-transient"), (t + life, gfn, npages, "swiotlb-transient"))]
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
        pending = None if pool_lifetime_ns is None else (t + pool_lifetime_ns, gfn, npages, "swiotlb-dynamic")
        return [(convert(t, gfn, npages, False, "swiotlb-dynamic"), pending)]

    def on_free(t: int, gfn: int, npages: int, what: str) -> list[Timed]:
        nonlocal persistent
        alloc.free(gfn, _order_pages(npages))
        if what == "swiotlb-dynamic":
            persistent -= 1
        return [convert(t, gfn, npages, True, what)]

    return _alloc_free_process(rng, shortage_rate_per_s, until_ns, start_ns, on_arrival, on_free)


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
    start_ns: int = BOOT_END_NS,
    region: tuple[int, int] | None = None,
) -> Iterator[Timed]:
    """Row #8: blocking ``dma_alloc_coherent()`` / ``dma_free_coherent()`` (device probe/remove, driver buffers).

    Allocations arrive at ``alloc_rate_per_s`` [I]; sizes are drawn log-uniformly in [``min_bytes``,
    ``max_bytes``] [I]; each takes a naturally aligned ``1 << get_order(size)`` block from ``region`` (default
    ``layout.runtime_region``), converts ``PFN_UP(size)`` pages to shared (``dma_set_decrypted``, direct map:
    ``huge_ok``) and writes them (``Access`` shared); it is freed after an exponential lifetime of mean
    ``mean_lifetime_ns`` [I], converting the same pages back to private (``dma_set_encrypted``). At most
    ``max_live`` allocations exist at once (arrivals beyond that, or that do not fit, are dropped).
    """
    _check_rate("alloc_rate_per_s", alloc_rate_per_s)
    if not 0 < min_bytes <= max_bytes:
        raise ValueError(f"need 0 < min_bytes <= max_bytes, got {min_bytes}, {max_bytes}")
    alloc = _region_allocator(cfg, region)
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

    return _alloc_free_process(rng, alloc_rate_per_s, until_ns, start_ns, on_arrival, on_free)


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
}
