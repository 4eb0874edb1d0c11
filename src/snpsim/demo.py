"""Built-in demo of the hw and host layers: one SNP guest's memory on a busy host, under every preset.

The guest side is a stand-in until the kvm/vmm/guest layers exist: guest memory is faulted in over time in
small batches (as a guest touching its memory makes the VMM fault 4K pages in), interleaved with host page-cache
churn, so guest frames and host frames share 2M ranges, as on a real host whose memory is fragmented. A share of
the guest's 4K pages is made private (RMPUPDATE via ``rmp_make_private``) as it is faulted in; then pages flip
between private and shared at random. Kernel writers (page zeroing, compaction, KSM) run throughout. What each
preset does to the direct map and whether a kernel write ever hits a private page is then read off the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simpy

from snpsim.host import HostKernel, Owner, writers
from snpsim.hw.types import PAGE_SHIFT, PageSize
from snpsim.policy import Policy, presets


@dataclass(frozen=True)
class DemoConfig:
    host_bytes: int = 4 << 30
    guest_bytes: int = 512 << 20
    private_fraction: float = 0.75
    conversions: int = 20_000
    duration_ns: int = 2_000_000_000
    seed: int = 1


def run_demo_policy(policy: Policy, cfg: DemoConfig) -> dict[str, int]:
    """Run the demo under one policy; returns the host metrics plus ``fixup_page_count``."""
    env = simpy.Environment()
    host = HostKernel(cfg.host_bytes >> PAGE_SHIFT, policy, clock=lambda: env.now)
    rng = np.random.default_rng(cfg.seed)
    owner = Owner.GMEM if policy.private_backing == "gmem" else Owner.VMM_PRIVATE
    # The unit the guest's private memory is allocated and converted in: a guest_memfd folio (4K, 2M or 1G).
    unit = policy.private_page_bytes >> PAGE_SHIFT
    order = unit.bit_length() - 1
    level = PageSize.SIZE_4K if unit == 1 else PageSize.SIZE_2M
    rmp_pages = level.npages
    nunits = max(1, cfg.guest_bytes // policy.private_page_bytes)
    unit_pfn = np.full(nunits, -1, dtype=np.int64)
    private = np.zeros(nunits, dtype=bool)
    asid = 1

    def flip(u: int) -> None:
        pfn, gpa = int(unit_pfn[u]), u * unit << PAGE_SHIFT
        for off in range(0, unit, rmp_pages):
            if private[u]:
                host.rmp_make_shared(pfn + off, level)
            else:
                host.rmp_make_private(pfn + off, gpa + (off << PAGE_SHIFT), level, asid)
        private[u] = not private[u]

    def guest_fault_in() -> writers.Process:
        batch = max(1, 64 // unit)
        for start in range(0, nunits, batch):
            yield env.timeout(int(rng.integers(10_000, 100_000)))
            n = min(batch, nunits - start)
            pfns = host.alloc_bulk(order, n, owner)
            if pfns is None:
                return
            host.register_frames(pfns)
            unit_pfn[start : start + n] = pfns
            for k in np.flatnonzero(rng.random(n) < cfg.private_fraction):
                flip(start + int(k))

    def guest_conversions() -> writers.Process:
        yield env.timeout(cfg.duration_ns // 2)
        step = max(1, (cfg.duration_ns // 2) // max(cfg.conversions, 1))
        for _ in range(cfg.conversions):
            yield env.timeout(step)
            u = int(rng.integers(nunits))
            if unit_pfn[u] >= 0:
                flip(u)

    env.process(guest_fault_in())
    env.process(guest_conversions())
    env.process(writers.page_zeroing(env, host, rng, interval_ns=200_000, batch=32, resident_pages=16384))
    env.process(writers.compaction(env, host, rng))
    env.process(writers.ksm(env, host, rng))
    env.run(until=cfg.duration_ns)
    out = host.metrics()
    out["fixup_page_count"] = host.fixup_page_count
    out["private_bytes"] = int(private.sum()) * policy.private_page_bytes
    return out


def run_demo(
    cfg: DemoConfig, names: list[str] | None = None, progress: Callable[[str], None] | None = None
) -> dict[str, dict[str, int]]:
    """Run the demo under each named preset (all by default)."""
    results = {}
    for name in names or list(presets):
        if progress:
            progress(name)
        results[name] = run_demo_policy(presets[name], cfg)
    return results
