"""The discrete-event engine: a host, its kernel writers and its SNP VMs, simulated under one policy.

SimPy drives time in ns. Each VM is a process that replays its guest's events (boot, then its workload) at their
times through guest → vmm → kvm → host → hw; host kernel writers (:mod:`snpsim.host.writers`) and host VM churn
are processes too. A sampler records the metrics of ``shared/DESIGN.md`` into the timeline. All randomness comes
from one seeded ``numpy`` generator per component, derived from the scenario seed, so a scenario and its seed
give identical results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import simpy

from snpsim.errors import TimeLimitExceeded
from snpsim.guest.events import Timed
from snpsim.guest.executor import SnpGuest
from snpsim.guest.workloads import WORKLOADS
from snpsim.host import HostKernel, Owner, writers
from snpsim.hw.types import PAGE_SHIFT
from snpsim.metrics import METRICS, Counters
from snpsim.scenario import Scenario, VmSpec
from snpsim.vmm.qemu import Qemu

Process = Generator[simpy.Event, Any, None]


@dataclass
class VmRecord:
    """What happened to one VM."""

    name: str
    asid: int
    memory: int
    vcpus: int
    workload: str
    start_ns: int
    end_ns: int | None = None
    oom: bool = False
    peak_private_bytes: int = 0
    peak_shared_bytes: int = 0
    peak_total_bytes: int = 0


@dataclass
class Result:
    """``summary``: final metric values; ``timeline``: one row per sample (``time_ns`` + the metrics)."""

    summary: dict[str, int | float]
    timeline: pd.DataFrame
    scenario: Scenario
    vms: list[VmRecord] = field(default_factory=list)
    crashes: list[dict[str, Any]] = field(default_factory=list)
    #: (time_ns, gfn, npages, to_private) of every kvm_convert_memory, if the run recorded them
    conversions: list[tuple[int, int, int, bool]] | None = None


class Simulation:
    def __init__(
        self,
        scenario: Scenario,
        progress: Callable[[float], None] | None = None,
        vm_events: dict[int, Iterable[Timed]] | None = None,
        record_conversions: bool = False,
        time_limit_s: float | None = None,
    ) -> None:
        self.s = scenario
        #: wall-clock seconds the run may take (None: no limit); see :meth:`_advance`
        self.time_limit_s = time_limit_s
        #: guest events given from outside (a replayed trace) for the VM of that index, instead of its workload
        self.vm_events = vm_events or {}
        #: every kvm_convert_memory of every VM (time_ns, gfn, npages, to_private), when recording
        self.conversions: list[tuple[int, int, int, bool]] | None = [] if record_conversions else None
        self.env = simpy.Environment()
        self.host = HostKernel(
            scenario.host_memory >> PAGE_SHIFT,
            scenario.policy,
            costs=scenario.costs,
            max_level=scenario.directmap_max_level,
            zero_on_alloc=scenario.zero_on_alloc,
            clock=lambda: self.env.now,
        )
        self.counters = Counters()
        self.live: dict[int, Qemu] = {}
        self.records: list[VmRecord] = []
        self._ram_masks: dict[tuple[int, tuple[tuple[int, int], ...]], npt.NDArray[np.bool_]] = {}
        self.rows: list[dict[str, int]] = []
        self._next_asid = 1
        self._progress = progress

    def rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.s.seed, *key])

    # ------------------------------------------------------------------ metrics
    def metrics(self) -> dict[str, int]:
        m: dict[str, int] = dict.fromkeys(METRICS, 0)
        m.update(self.host.metrics())
        m.update(self.counters.as_dict())
        for q in self.live.values():
            n4, n2, n1 = q.kvm.npt_bytes()
            m["npt_4k"] += n4
            m["npt_2m"] += n2
            m["npt_1g"] += n1
            m["private_bytes"] += q.private_bytes()
            m["shared_bytes"] += q.shared_bytes()
            m["guest_bytes"] += q.guest_bytes()
        m["waste_bytes"] = m["private_bytes"] + m["shared_bytes"] - m["guest_bytes"]
        m["sim_time_ns"] = int(self.env.now)
        return m

    def _sampler(self) -> Process:
        step = max(1, self.s.duration_ns // self.s.samples)
        while True:
            self.rows.append({"time_ns": int(self.env.now), **self.metrics()})
            if self._progress:
                self._progress(self.env.now / max(self.s.duration_ns, 1))
            yield self.env.timeout(step)

    # ------------------------------------------------------------------ VMs
    def _vm(self, spec: VmSpec, index: int, start_ns: int, lifetime_ns: int | None) -> Process:
        if start_ns:
            yield self.env.timeout(start_ns)
        asid = self._next_asid
        self._next_asid += 1
        cfg = spec.guest_config()
        ram = self._ram_mask(cfg.end_gfn, tuple(cfg.ram_ranges()))
        record = VmRecord(f"vm{index}", asid, spec.memory, spec.vcpus, spec.workload, int(self.env.now))
        self.records.append(record)
        trace = None if self.conversions is None else lambda *ev: self.conversions.append(ev)  # type: ignore[union-attr]
        qemu = Qemu(self.host, self.s.policy, ram, asid=asid, counters=self.counters, trace=trace)
        guest = SnpGuest(qemu)
        self.live[asid] = qemu
        t0 = int(self.env.now)
        end = self.s.duration_ns if lifetime_ns is None else min(self.s.duration_ns, t0 + lifetime_ns)
        events = self.vm_events.get(index)
        if events is None:
            events = WORKLOADS[spec.workload](cfg, self.rng(1, index), end - t0, **spec.params)
        try:
            for timed in events:
                t = t0 + timed.time_ns
                if t > end:
                    break
                if t > self.env.now:
                    yield self.env.timeout(t - self.env.now)
                guest.execute(timed.event)
        except MemoryError:
            record.oom = True  # the host could not back the guest: QEMU is killed
        record.peak_private_bytes = qemu.peak_private_bytes
        record.peak_shared_bytes = qemu.peak_shared_bytes
        record.peak_total_bytes = qemu.peak_total_bytes
        if lifetime_ns is None and not record.oom:
            return
        if end > self.env.now:
            yield self.env.timeout(end - self.env.now)
        if end < self.s.duration_ns or record.oom:
            qemu.destroy()
            del self.live[asid]
            record.end_ns = int(self.env.now)

    def _ram_mask(self, end_gfn: int, ranges: tuple[tuple[int, int], ...]) -> npt.NDArray[np.bool_]:
        """The gfns that are RAM, one read-only array per guest layout, shared by every VM with that layout."""
        key = (end_gfn, ranges)
        ram = self._ram_masks.get(key)
        if ram is None:
            ram = np.zeros(end_gfn, dtype=bool)
            for lo, n in ranges:
                ram[lo : lo + n] = True
            ram.flags.writeable = False
            self._ram_masks[key] = ram
        return ram

    def _churn(self) -> Process:
        c = self.s.churn
        assert c is not None
        rng = self.rng(2)
        index = sum(v.count for v in self.s.vms)
        while True:
            yield self.env.timeout(max(1, int(rng.exponential(c.interval_ns))))
            if len(self.live) >= c.max_vms:
                continue
            spec = VmSpec(
                memory=int(rng.choice(c.memory)),
                vcpus=int(rng.choice(c.vcpus)),
                workload=c.workload,
                guest=c.guest,
                params=c.params,
            )
            lifetime = max(1, int(rng.exponential(c.lifetime_ns)))
            self.env.process(self._vm(spec, index, 0, lifetime))
            index += 1

    def _fill_page_cache(self) -> None:
        """Scatter page-cache pages over ``page_cache`` of host memory (seeded), fragmenting the free lists.

        The pages are allocated without zeroing (a warm host's history, not a simulated event) and stay resident
        (tagged USER, so compaction may migrate them)."""
        if self.s.page_cache <= 0:
            return
        frames = self.host.buddy.alloc_bulk(0, self.host.buddy.free_frames)
        assert frames is not None
        keep = self.rng(4).random(frames.size) < self.s.page_cache
        self.host.buddy.free_bulk(frames[~keep], 0)
        self.host.frames.set_many(frames[keep], Owner.USER)

    # ------------------------------------------------------------------ run
    #: SimPy steps between two looks at the clock when a time limit is set
    _STEPS_PER_CHECK = 1024

    def _advance(self, end: int) -> None:
        """``env.run(until=end)``; with a time limit, the same events one ``step()`` at a time (those before
        ``end``: SimPy's ``until`` event is urgent, so events at ``end`` itself never run), looking at the clock
        every ``_STEPS_PER_CHECK`` steps, so that even a run stuck at one simulated instant is stopped."""
        env = self.env
        if self.time_limit_s is None:
            env.run(until=end)
            return
        deadline = time.monotonic() + self.time_limit_s
        step, peek = env.step, env.peek
        while peek() < end:
            for _ in range(self._STEPS_PER_CHECK):
                if peek() >= end:
                    break
                step()
            if time.monotonic() > deadline:
                raise TimeLimitExceeded(self.time_limit_s, int(env.now))
        env.run(until=end)

    def run(self) -> Result:
        self._fill_page_cache()
        index = 0
        for spec in self.s.vms:
            for _ in range(spec.count):
                self.env.process(self._vm(spec, index, spec.start_ns, spec.lifetime_ns))
                index += 1
        if self.s.churn is not None:
            self.env.process(self._churn())
        for k, (name, params) in enumerate(sorted(self.s.writers.items())):
            self.env.process(writers.WRITERS[name](self.env, self.host, self.rng(3, k), **params))
        self.env.process(self._sampler())
        self._advance(self.s.duration_ns)
        final = self.metrics()
        if not self.rows or self.rows[-1]["time_ns"] != final["sim_time_ns"]:
            self.rows.append({"time_ns": final["sim_time_ns"], **final})
        timeline = pd.DataFrame(self.rows, columns=["time_ns", *METRICS])
        crashes = [
            {"time_ns": c.time_ns, "path": c.path, "pfn": c.pfn, "kind": c.kind, "error_code": c.error_code}
            for c in self.host.crashes
        ]
        return Result(dict(final), timeline, self.s, self.records, crashes, self.conversions)
