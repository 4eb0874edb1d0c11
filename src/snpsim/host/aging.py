"""The host as a real host reaches the moment its VMs start: memory aged by allocation and free churn.

A host that has been up for a while holds page cache (movable, ``GFP_HIGHUSER_MOVABLE``) and kernel memory (slab
and page tables, unmovable; reclaimable slab), all allocated through the buddy allocator (:mod:`snpsim.host.buddy`)
over its uptime, so the pageblocks they occupy are grouped by mobility as Linux groups them (fallbacks claim whole
pageblocks for unmovable allocations; ``shared/reference/linux-snp-host.md`` §9). :func:`age_host` replays such an
uptime in steps of one ``epoch`` each, vectorised (it is not a SimPy process: the uptime is history, not simulated
time):

* page cache: each epoch every page is deleted with the probability that ``turnover`` per hour gives over the epoch
  (files removed or truncated: lifetimes independent of age, exponential), then the cache is grown to, or reclaimed
  (oldest first, the LRU order) down to, that epoch's level, drawn uniformly between ``page_cache`` and ``peak``
  (bursts of I/O that fill the cache, then pressure that trims it); the last epoch ends at ``page_cache``, the share
  of host memory the scenario asks for when VMs start;
* kernel memory: ``unmovable`` (slab, page tables) and ``reclaimable`` (dentry and inode slab) shares of memory,
  allocated at boot and churned by ``kernel_turnover`` per hour (slab pages freed when their last object goes, and
  allocated again), in the slab orders of :data:`UNMOVABLE_ORDERS` / :data:`RECLAIMABLE_ORDERS`;
* within an epoch the allocations run in :data:`ROUNDS` interleaved rounds (kernel, then page cache), so
  unmovable claims land between page-cache allocations as on a running host.

Assumptions (configurable in ``[host.aging]``; no source gives a typical host's history): the levels and rates
above, order-0 page cache (no large folios: more, smaller holes than a kernel with large page-cache folios), and
the pages allocated without zeroing (a warm host's history, not a simulated event). All randomness is the stream
``np.random.default_rng([seed, crc32(b"host.aging")])``.

``mode = "uniform-scatter"`` is the adversarial option kept from earlier versions: every free frame is allocated
at order 0 and each is kept as page cache with probability ``page_cache``, so page cache lies uniformly in every 2M
range. No host reaches that state through the allocator.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from snpsim.errors import ConfigError
from snpsim.host.frames import Owner
from snpsim.units import parse_duration

if TYPE_CHECKING:
    from snpsim.host.kernel import HostKernel

IntArray = npt.NDArray[np.int64]

MODES = ("churn", "uniform-scatter")
HOUR_NS = 3600 * 10**9
#: allocation rounds per epoch (kernel allocations interleaved with page cache)
ROUNDS = 8
#: share of unmovable kernel pages by allocation order: page tables and small slabs at order 0, SLUB slabs of
#: kmalloc caches at orders 1-3 (``slub_max_order`` = ``PAGE_ALLOC_COSTLY_ORDER`` = 3) [assumption]
UNMOVABLE_ORDERS = {0: 0.4, 1: 0.1, 2: 0.2, 3: 0.3}
#: share of reclaimable slab pages by order (dentry at order 1, inode caches at order 3) [assumption]
RECLAIMABLE_ORDERS = {1: 0.3, 3: 0.7}
STREAM = b"host.aging"


@dataclass(frozen=True)
class AgingSpec:
    """``[host.aging]``: how the host's memory was used before the VMs start (see the module docstring)."""

    mode: str = "churn"
    uptime_ns: int = 24 * HOUR_NS
    epoch_ns: int = 4 * HOUR_NS
    peak: float = 0.6
    turnover: float = 0.05
    unmovable: float = 0.01
    reclaimable: float = 0.015
    kernel_turnover: float = 0.02

    @property
    def epochs(self) -> int:
        return max(1, self.uptime_ns // max(1, self.epoch_ns))

    def per_epoch(self, rate_per_hour: float) -> float:
        """The probability that a page with a ``rate_per_hour`` hazard dies within one epoch."""
        return float(1 - (1 - rate_per_hour) ** (self.epoch_ns / HOUR_NS))

    @classmethod
    def from_dict(cls, value: object, page_cache: float, field: str = "host.aging") -> AgingSpec:
        """Validate a ``[host.aging]`` table (or a mode name); errors name the field."""
        if isinstance(value, str):
            value = {"mode": value}
        if not isinstance(value, dict):
            raise ConfigError(field, f"expected a table or one of {', '.join(MODES)}, got {value!r}")
        known = {"mode", "uptime", "epoch", "peak", "turnover", "unmovable", "reclaimable", "kernel_turnover"}
        for key in value:
            if key not in known:
                raise ConfigError(f"{field}.{key}", f"unknown field (known: {', '.join(sorted(known))})")
        mode = value.get("mode", cls.mode)
        if mode not in MODES:
            raise ConfigError(f"{field}.mode", f"expected one of {', '.join(MODES)}, got {mode!r}")
        uptime = parse_duration(value.get("uptime", "1d"), f"{field}.uptime")
        epoch = parse_duration(value.get("epoch", "4h"), f"{field}.epoch")
        if epoch <= 0:
            raise ConfigError(f"{field}.epoch", "must be longer than 0")
        if not 0 < uptime <= 10_000 * epoch:
            raise ConfigError(f"{field}.uptime", "must be longer than 0 and at most 10000 epochs")
        fractions: dict[str, float] = {}
        defaults = {
            "peak": max(cls.peak, page_cache),
            "turnover": cls.turnover,
            "unmovable": cls.unmovable,
            "reclaimable": cls.reclaimable,
            "kernel_turnover": cls.kernel_turnover,
        }
        for key, default in defaults.items():
            v: Any = value.get(key, default)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
                raise ConfigError(f"{field}.{key}", f"expected a fraction in [0, 1), got {v!r}")
            fractions[key] = float(v)
        if fractions["peak"] < page_cache:
            raise ConfigError(
                f"{field}.peak", f"must be at least host.page_cache ({page_cache}), got {fractions['peak']}"
            )
        if fractions["peak"] + fractions["unmovable"] + fractions["reclaimable"] >= 1:
            raise ConfigError(f"{field}.peak", "peak + unmovable + reclaimable must stay below 1 (all of memory)")
        return cls(mode=mode, uptime_ns=uptime, epoch_ns=epoch, **fractions)


@dataclass
class AgingReport:
    """What :func:`age_host` left: pages per owner and the volume of churn it ran."""

    page_cache_pages: int
    unmovable_pages: int
    reclaimable_pages: int
    allocated_pages: int
    freed_pages: int


def aging_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(STREAM)])


def age_host(host: HostKernel, page_cache: float, spec: AgingSpec, seed: int) -> AgingReport:
    """Age ``host`` (freshly booted, nothing allocated) so that ``page_cache`` of its memory is page cache."""
    rng = aging_rng(seed)
    if page_cache <= 0:
        return AgingReport(0, 0, 0, 0, 0)
    if spec.mode == "uniform-scatter":
        return _uniform_scatter(host, page_cache, rng)
    return _Churn(host, page_cache, spec, rng).run()


def _uniform_scatter(host: HostKernel, page_cache: float, rng: np.random.Generator) -> AgingReport:
    frames = host.alloc_bulk(0, host.buddy.obtainable(0), Owner.USER, zero=False)
    assert frames is not None
    keep = rng.random(frames.size) < page_cache
    host.free_bulk(frames[~keep], 0)
    return AgingReport(int(keep.sum()), 0, 0, int(frames.size), int((~keep).sum()))


class _Churn:
    def __init__(self, host: HostKernel, page_cache: float, spec: AgingSpec, rng: np.random.Generator) -> None:
        self.host = host
        self.spec = spec
        self.rng = rng
        self.page_cache = page_cache
        self.total = host.buddy.managed_frames
        #: live page cache, one array per epoch that allocated it, oldest first (LRU order)
        self.cache: list[IntArray] = []
        #: live kernel allocations: (owner, order) -> head PFNs
        self.kernel: dict[tuple[Owner, int], IntArray] = {}
        self.allocated = 0
        self.freed = 0

    def _targets(self) -> dict[tuple[Owner, int], int]:
        """Blocks of each (owner, order) the kernel holds in steady state."""
        out: dict[tuple[Owner, int], int] = {}
        for owner, share, orders in (
            (Owner.KERNEL, self.spec.unmovable, UNMOVABLE_ORDERS),
            (Owner.KERNEL_RECLAIMABLE, self.spec.reclaimable, RECLAIMABLE_ORDERS),
        ):
            for order, part in orders.items():
                out[(owner, order)] = int(self.total * share * part) >> order
        return out

    def run(self) -> AgingReport:
        spec, rng = self.spec, self.rng
        targets = self._targets()
        p_delete, p_kernel = spec.per_epoch(spec.turnover), spec.per_epoch(spec.kernel_turnover)
        for epoch in range(spec.epochs):
            last = epoch == spec.epochs - 1
            level = self.page_cache if last else rng.uniform(self.page_cache, spec.peak)
            want_cache = int(self.total * level)
            # frees first: deleted files, then kernel objects, then reclaim of the oldest cache down to the level
            if epoch:
                for i, group in enumerate(self.cache):
                    gone = rng.random(group.size) < p_delete
                    self._free(group[gone], 0)
                    self.cache[i] = group[~gone]
                for key, heads in self.kernel.items():
                    dead = rng.random(heads.size) < p_kernel
                    if dead.any():
                        self._free(heads[dead], key[1])
                        self.kernel[key] = heads[~dead]
            self._reclaim(sum(g.size for g in self.cache) - want_cache)
            # allocations, interleaved in rounds
            grow = max(0, want_cache - sum(g.size for g in self.cache))
            fresh: list[IntArray] = []
            for r in range(ROUNDS):
                for (owner, order), target in targets.items():
                    have = self.kernel.get((owner, order), np.zeros(0, dtype=np.int64))
                    n = (target - have.size) // (ROUNDS - r)
                    if n > 0:
                        got = self._alloc(order, n, owner)
                        self.kernel[(owner, order)] = np.concatenate([have, got])
                n = grow // ROUNDS + (grow % ROUNDS if r == ROUNDS - 1 else 0)
                if n > 0:
                    fresh.append(self._alloc(0, n, Owner.USER))
            if fresh:
                self.cache.append(np.concatenate(fresh))
        return AgingReport(
            sum(int(g.size) for g in self.cache),
            sum(h.size << o for (w, o), h in self.kernel.items() if w == Owner.KERNEL),
            sum(h.size << o for (w, o), h in self.kernel.items() if w == Owner.KERNEL_RECLAIMABLE),
            self.allocated,
            self.freed,
        )

    def _reclaim(self, count: int) -> None:
        """Reclaim ``count`` page-cache pages, oldest epoch first (LRU); within an epoch, a random subset (the
        order in which an epoch's pages were last used is not tracked)."""
        while count > 0 and self.cache:
            group = self.cache[0]
            if group.size <= count:
                self._free(group, 0)
                self.cache.pop(0)
                count -= int(group.size)
                continue
            victims = np.zeros(group.size, dtype=bool)
            victims[np.argpartition(self.rng.random(group.size), count)[:count]] = True
            self._free(group[victims], 0)
            self.cache[0] = group[~victims]
            count = 0

    def _alloc(self, order: int, count: int, owner: Owner) -> IntArray:
        got = self.host.alloc_bulk(order, min(count, self.host.buddy.obtainable(order)), owner, zero=False)
        assert got is not None
        self.allocated += int(got.size) << order
        return got

    def _free(self, heads: IntArray, order: int) -> None:
        if heads.size:
            self.host.free_bulk(np.sort(heads), order)
            self.freed += int(heads.size) << order
