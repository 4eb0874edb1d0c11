"""Full-stack throughput: guest conversion events through guest -> kvm -> vmm -> host -> hw, against a naive model.

Run: ``python benchmarks/bench_stack.py [EVENTS] [--engine fast|reference]`` (default 20,000 events, the default
engine). A 1 GiB guest on a 4 GiB host under the
``upstream`` preset (guest_memfd 4K folios, 4K shared pages, discard on conversion, direct map split to 4K around
private pages) executes the ``random-conversion`` workload's event stream (ranges of 1..16 pages converted either
way, each followed by an access in the new state) straight through :class:`snpsim.guest.executor.GuestDriver`, without
the SimPy engine. The same events then run through :class:`NaiveStack`, a dict-per-page reference model of the same
semantics (attributes, NPT, guest_memfd pages, shared pages, RMP entries with Validated, direct-map splits; PSC
requests of at most 64 entries), and both report events/s. The two must agree on every counter they share, which
the script checks before printing. Targets (issue 7): >= 200k events/s, >= 5x the naive model.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from engine_arg import pop_engine

from snpsim.engine import DEFAULT_ENGINE, engine
from snpsim.guest.events import Access, Conversion
from snpsim.guest.linux import LinuxGuestConfig, guest_layout
from snpsim.guest.workloads import random_conversions
from snpsim.metrics import Counters
from snpsim.policy import presets
from snpsim.runner import GuestDriver
from snpsim.vmm.qemu import Qemu

HOST_FRAMES = 1 << 20  # 4 GiB
ENGINE = DEFAULT_ENGINE
PSC_MAX_ENTRIES = 64


@dataclass
class NaiveStack:
    """The upstream preset's conversion path with one Python dict entry per page and no vectorisation."""

    free: list[int] = field(default_factory=lambda: list(range(HOST_FRAMES - 1, -1, -1)))
    private_attr: dict[int, bool] = field(default_factory=dict)  # gfn -> PRIVATE attribute
    gmem: dict[int, int] = field(default_factory=dict)  # gfn -> pfn of its guest_memfd page
    shared: dict[int, int] = field(default_factory=dict)  # gfn -> pfn of the VMM's shared page
    npt: dict[int, tuple[int, bool]] = field(default_factory=dict)  # gfn -> (pfn, private)
    rmp: dict[int, tuple[int, bool]] = field(default_factory=dict)  # assigned pfn -> (gfn, validated)
    split_2m: set[int] = field(default_factory=set)  # direct-map 2M ranges split to 4K
    psc_requests: int = 0
    rmpupdates: int = 0
    to_private: int = 0
    to_shared: int = 0

    def _alloc(self) -> int:
        pfn = self.free.pop()
        if pfn // 512 not in self.split_2m:  # zeroing through a 2M mapping: RMP-checked against the whole 2M
            assert not any(p in self.rmp for p in range(pfn // 512 * 512, pfn // 512 * 512 + 512))
        return pfn

    def execute(self, event: Conversion | Access) -> None:
        gfns = range(event.gfn, event.gfn + event.npages)
        if isinstance(event, Access):
            for g in gfns:
                self._fault_in(g, event.private)
            return
        if not event.to_private:  # rescind validation before the PSC
            for g in gfns:
                pfn = self.gmem.get(g)
                if pfn is not None and pfn in self.rmp:
                    self.rmp[pfn] = (g, False)
        self.psc_requests += -(-event.npages // PSC_MAX_ENTRIES)
        for g in gfns:  # KVM_HC_MAP_GPA_RANGE -> kvm_convert_memory
            if self.private_attr.get(g, False) != event.to_private:
                self.npt.pop(g, None)
            self.private_attr[g] = event.to_private
            if event.to_private:
                self.to_private += 1
                pfn = self.shared.pop(g, None)
                if pfn is not None:
                    self.free.append(pfn)
            else:
                self.to_shared += 1
                pfn = self.gmem.pop(g, None)
                if pfn is not None:  # punch hole: sev_gmem_invalidate, then free
                    if pfn in self.rmp:
                        del self.rmp[pfn]
                        self.rmpupdates += 1
                    self.free.append(pfn)
        if event.to_private:  # validate after the PSC
            for g in gfns:
                pfn = self._fault_in(g, True)
                self.rmp[pfn] = (g, True)

    def _fault_in(self, g: int, private: bool) -> int:
        mapped = self.npt.get(g)
        if mapped is not None and mapped[1] == private:
            return mapped[0]
        if private:
            pfn = self.gmem.get(g)
            if pfn is None:
                pfn = self.gmem[g] = self._alloc()
            if pfn not in self.rmp:  # sev_gmem_prepare: split the direct map, RMPUPDATE to private
                self.split_2m.add(pfn // 512)
                self.rmp[pfn] = (g, False)
                self.rmpupdates += 1
        else:
            pfn = self.shared.get(g)
            if pfn is None:
                pfn = self.shared[g] = self._alloc()
        self.npt[g] = (pfn, private)
        return pfn


def workload(n: int) -> tuple[LinuxGuestConfig, list[Conversion | Access], tuple[int, int]]:
    cfg = LinuxGuestConfig(memory_bytes=1 << 30, vcpus=2)
    region = guest_layout(cfg).runtime_region
    stream = random_conversions(cfg, np.random.default_rng(1), rate_per_s=1e6, max_pages=16, start_ns=0)
    events = [t.event for _, t in zip(range(n), stream, strict=False)]
    return cfg, events, region


def run_snpsim(
    cfg: LinuxGuestConfig, events: list[Conversion | Access], region: tuple[int, int]
) -> tuple[float, Qemu, tuple[int, int, int]]:
    """Time the events through snpsim; returns (seconds, the VMM, (to_private, to_shared, rmpupdates) during them)."""
    policy = presets["upstream"]
    components = engine(ENGINE)
    host = components.host(HOST_FRAMES, policy)
    ram = np.zeros(cfg.end_gfn, dtype=bool)
    for lo, k in cfg.ram_ranges():
        ram[lo : lo + k] = True
    qemu = Qemu(host, policy, ram, asid=1, counters=Counters(), kvm_vm=components.kvm_vm)
    guest = GuestDriver(qemu)
    guest.execute(Conversion(region[0], region[1], True, huge_ok=False))  # the region starts private, validated
    c = qemu.counters
    before = (c.to_private_count, c.to_shared_count, host.rmp.rmpupdate_count)
    t = time.perf_counter()
    for e in events:
        guest.execute(e)
    dt = time.perf_counter() - t
    after = (c.to_private_count, c.to_shared_count, host.rmp.rmpupdate_count)
    return dt, qemu, (after[0] - before[0], after[1] - before[1], after[2] - before[2])


def run_naive(events: list[Conversion | Access], region: tuple[int, int]) -> tuple[float, NaiveStack]:
    naive = NaiveStack()
    naive.execute(Conversion(region[0], region[1], True))
    naive.psc_requests = naive.rmpupdates = naive.to_private = naive.to_shared = 0
    t = time.perf_counter()
    for e in events:
        naive.execute(e)
    return time.perf_counter() - t, naive


def calls_per_event(
    cfg: LinuxGuestConfig, events: list[Conversion | Access], region: tuple[int, int]
) -> tuple[float, float]:
    """Function calls per event through snpsim (cProfile on a fresh stack): all of them, and numpy's alone."""
    sample = events[: min(len(events), 2000)]
    prof = cProfile.Profile()
    prof.enable()
    run_snpsim(cfg, sample, region)
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = numpy = 0
    for (file, _, name), (_, ncalls, *_rest) in stats.items():
        total += ncalls
        if "numpy" in file or "ndarray" in name or "numpy" in name:
            numpy += ncalls
    return total / len(sample), numpy / len(sample)


def main() -> None:
    global ENGINE
    argv = sys.argv[1:]
    ENGINE = pop_engine(argv) or ENGINE
    n = int(argv[0]) if argv else 20_000
    cfg, events, region = workload(n)
    run_snpsim(cfg, events[:200], region)  # warm-up: the fast engine loads (or compiles) its kernels on first use
    dt, qemu, ours = run_snpsim(cfg, events, region)
    ndt, naive = run_naive(events, region)
    theirs = (naive.to_private, naive.to_shared, naive.rmpupdates)
    assert ours == theirs, f"models disagree: snpsim {ours} vs naive {theirs}"
    private_pages = qemu.kvm.gmem.allocated_folios if qemu.kvm.gmem is not None else -1
    assert private_pages == len(naive.gmem), (private_pages, len(naive.gmem))
    rate, nrate = len(events) / dt, len(events) / ndt
    conversions = sum(isinstance(e, Conversion) for e in events)
    print(f"{len(events):,} events ({conversions:,} conversions), upstream preset, {ENGINE} engine")
    print(f"{'model':<28} {'events/s':>10} {'target':>10}")
    print(f"{'snpsim full stack':<28} {rate:>10,.0f} {'200,000':>10}  {'met' if rate >= 200_000 else 'NOT met'}")
    print(f"{'naive dict-per-page model':<28} {nrate:>10,.0f}")
    print(
        f"{'ratio snpsim / naive':<28} {rate / nrate:>10.2f} {'5.00':>10}  {'met' if rate >= 5 * nrate else 'NOT met'}"
    )
    calls, numpy_calls = calls_per_event(cfg, events, region)
    pages = sum(e.npages for e in events) / len(events)
    print(
        f"per event ({pages:.1f} pages on average): {calls:.0f} Python function calls, {numpy_calls:.0f} of them "
        f"numpy; {1e6 / rate / calls:.2f} us per call at the measured rate (the naive model: {1e6 / nrate:.1f} us "
        "per event)"
    )


if __name__ == "__main__":
    main()
