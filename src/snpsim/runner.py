"""The discrete-event engine: a host, its kernel threads and its SNP VMs, simulated under one policy.

SimPy drives time in ns. The host's threads are SimPy processes: each VM's QEMU vCPU threads
(:meth:`snpsim.vmm.qemu.Qemu.kvm_cpu_exec`: ``KVM_RUN``, dispatch the exit, again), the host kernel writers
(:mod:`snpsim.host.writers`), and the VMs' creation and teardown. A thread is a generator that yields the ns it
waits (guest compute, a writer's sleep); every operation it runs charges its cost to the thread's
:class:`~snpsim.host.cpu.CpuAccount`, and :meth:`Simulation._thread` makes that charged time pass before the
thread's next step. So costs move the clock: a guest event completes after the costs of everything it caused, the
events of one vCPU are sequential, and threads overlap. A sampler records the metrics of ``shared/DESIGN.md`` into
the timeline. All randomness comes from one ``numpy`` generator per component, keyed by the component's name and
the scenario seed (:meth:`Simulation.rng`), so a scenario and its seed give identical results and enabling one
component does not change another's stream.

A replayed trace (:func:`snpsim.replay`) gives a VM its events (``Simulation(vm_events={index: events})``, instead of
its workload) and, if the trace has them, its launch updates (``vm_launch={index: updates}``, handed to
``Qemu(launch=...)``; other VMs keep the guest image's default launch). A replay lasts until its VMs have replayed
the whole trace, their creation included.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import zlib
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import simpy

from snpsim.arch import PageSize
from snpsim.engine import engine
from snpsim.errors import TimeLimitExceeded
from snpsim.guest.events import Access, Conversion, Timed, by_vcpu
from snpsim.guest.executor import GuestLog, SnpGuest
from snpsim.guest.linux import LinuxGuestConfig, launch_image
from snpsim.guest.workloads import WORKLOADS, host_used_pages
from snpsim.host import HostKernel, writers
from snpsim.host.aging import age_host
from snpsim.host.blockmap import HostMap, snapshot
from snpsim.host.cpu import CpuAccount
from snpsim.host.uaccess import VmFaultSigbus
from snpsim.kvm.gmem import GupPin, SigBus
from snpsim.kvm.uapi import SnpLaunchUpdate, SnpPageType
from snpsim.metrics import METRICS, Counters
from snpsim.scenario import Scenario, VmSpec
from snpsim.segments import bool_runs
from snpsim.vmm.qemu import Qemu, QemuExit

Process = Generator[simpy.Event, Any, None]


@dataclass
class VmRecord:
    """What happened to one VM. Times are simulated ns; ``boot_ns`` is from the VM's creation until its guest has
    booted (None if it never did), ``conversion_ns_p50`` ... the latency of its guest's conversions (each from
    the guest's request until its last PVALIDATE), ``cpu_ns`` the host CPU time of its threads. ``oom``: the host
    could not back it at a fault and QEMU was killed; ``exit_error``: QEMU could not create it (a hugetlbfs
    reservation that cannot be had) and exited at once, with this message.

    ``boot_ops``: how many times each operation was charged on the boot's critical path - QEMU's main thread
    creating the VM, then vCPU 0 (the boot CPU runs every boot event, :func:`snpsim.guest.events.by_vcpu`) until
    the guest logged its boot. Nothing else delays that path, so ``boot_ns`` is the guest's own compute time (the
    boot schedule's gaps) plus the sum over these operations of count x cost: linear in the costs
    (:func:`snpsim.hw.costs.counts_by_cost`, :mod:`snpsim.calibrate`)."""

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
    boot_ns: int | None = None
    conversions: int = 0
    conversion_ns_p50: float | None = None
    conversion_ns_p90: float | None = None
    conversion_ns_p99: float | None = None
    conversion_ns_max: int | None = None
    cpu_ns: int = 0
    exit_error: str | None = None
    boot_ops: dict[str, int] | None = None
    #: the guest terminated at a #VC 0x404 at this time (``on_vc_404 = "terminate"``), or QEMU died of this signal
    #: (a user-mode RMP #PF: SIGBUS); either ends the VM then (``end_ns``)
    terminated_ns: int | None = None
    signal: str | None = None


@dataclass
class Result:
    """``summary``: final metric values; ``timeline``: one row per sample (``time_ns`` + the metrics);
    ``host_cpu_ns``: host CPU time per operation / kernel path (``rmpupdate``, ``page_clear``, ``npf`` ...);
    ``thread_cpu_ns``: host CPU time per thread."""

    summary: dict[str, int | float]
    timeline: pd.DataFrame
    scenario: Scenario
    vms: list[VmRecord] = field(default_factory=list)
    crashes: list[dict[str, Any]] = field(default_factory=list)
    #: (time_ns, gfn, npages, to_private) of every kvm_convert_memory, if the run recorded them
    conversions: list[tuple[int, int, int, bool]] | None = None
    host_cpu_ns: dict[str, int] = field(default_factory=dict)
    thread_cpu_ns: dict[str, int] = field(default_factory=dict)
    #: the host memory picture (:mod:`snpsim.host.blockmap`) after boot (first sample), mid-run and at the end
    hostmaps: list[HostMap] = field(default_factory=list)
    #: the first VM's launch updates (``Qemu.launch``), if the run recorded conversions and QEMU held an explicit list
    launch: list[SnpLaunchUpdate] | None = None


@dataclass
class _VmState:
    """A live VM as the engine tracks it."""

    record: VmRecord
    qemu: Qemu
    guest: SnpGuest
    accounts: list[CpuAccount]
    stopped: bool = False
    failed: simpy.Event | None = None
    ram: GuestRamView | None = None


class GuestRamView:
    """A VM's RAM as host accessors see it (:class:`snpsim.host.uaccess.GuestRam`): the VMM's mapping and the
    guest pages host code writes; the attribute and private frame of a gfn are observed from KVM, for the
    lost-write count. ``kill`` ends the VM (QEMU died of the signal)."""

    def __init__(
        self,
        name: str,
        qemu: Qemu,
        log: GuestLog,
        targets: dict[str, npt.NDArray[np.int64]],
        on_kill: Callable[[str], None],
    ) -> None:
        self.name = name
        self.qemu = qemu
        self.log = log
        self.memory = qemu.memory
        self.targets = targets
        self._on_kill = on_kill

    def ready(self) -> bool:
        return self.log.booted_ns is not None

    def is_private(self, gfn: int) -> bool:
        return bool(self.qemu.kvm.attrs.private[gfn])

    def user_page(self, gfn: int) -> tuple[int, PageSize]:
        gm = self.qemu.gmem
        if self.qemu.in_place and gm is not None:  # QEMU maps the guest_memfd itself (in-place conversion)
            try:
                return gm.fault_user(gfn), PageSize.SIZE_4K
            except SigBus as e:
                raise VmFaultSigbus(str(e)) from None
            except MemoryError:
                return -1, PageSize.SIZE_4K
        pfns = self.memory.get_pfns(gfn, 1)
        return (-1 if pfns is None else int(pfns[0])), self.memory.host_level(gfn)

    def private_frame(self, gfn: int) -> int | None:
        gm = self.qemu.gmem
        pfn = int(self.memory.pfn[gfn]) if gm is None else int(gm.pfns(gfn, 1)[0])
        return pfn if pfn >= 0 else None

    def kill(self, signal: str) -> None:
        self._on_kill(signal)

    def pin(self, gfn: int, completes_after: int) -> object | None:
        gm = self.qemu.gmem
        if self.qemu.in_place and gm is not None:  # a reference on the file's page blocks its conversion
            try:
                return gm.pin_pages(gfn, 1, completes_after=completes_after)
            except SigBus as e:
                raise VmFaultSigbus(str(e)) from None
        # [I-model] a reference on the VMM's own RAM-block page: a discard after a conversion would keep the page
        # allocated until the I/O completes; not modelled (shared_bytes reads low by at most the pinned pages)
        return None

    def unpin(self, pin: object) -> None:
        gm = self.qemu.gmem
        if gm is not None and isinstance(pin, GupPin) and pin in gm.pins:
            gm.unpin_pages(pin)


class Simulation:
    def __init__(
        self,
        scenario: Scenario,
        progress: Callable[[float], None] | None = None,
        vm_events: dict[int, Iterable[Timed]] | None = None,
        record_conversions: bool = False,
        time_limit_s: float | None = None,
        vm_launch: dict[int, Sequence[SnpLaunchUpdate]] | None = None,
        stop_after_boot: int | None = None,
    ) -> None:
        self.s = scenario
        #: end the run once the guest of this VM (in creation order) has booted (calibration needs no more)
        self.stop_after_boot = stop_after_boot
        #: wall-clock seconds the run may take (None: no limit); see :meth:`_advance`
        self.time_limit_s = time_limit_s
        #: guest events given from outside (a replayed trace) for the VM of that index, instead of its workload
        self.vm_events = vm_events or {}
        #: launch updates given from outside (a replayed trace's) for the VM of that index (None: the image default)
        self.vm_launch = vm_launch or {}
        #: the first VM's launch updates as QEMU held them, when recording (for trace export)
        self.launch: list[SnpLaunchUpdate] | None = None
        #: every conversion a guest asked for (time_ns, gfn, npages, to_private), when recording
        self.conversions: list[tuple[int, int, int, bool]] | None = [] if record_conversions else None
        self.env = simpy.Environment()
        memory_map = scenario.memory_map()
        components = engine(scenario.engine)
        self.host = HostKernel(
            memory_map.max_pfn,
            scenario.policy,
            costs=scenario.costs,
            max_level=scenario.directmap_max_level,
            zero_on_alloc=scenario.zero_on_alloc,
            clock=lambda: self.env.now,
            memory_map=memory_map,
            transparent_hugepage=scenario.transparent_hugepage,
            hugepages=scenario.hugepages,
            allocator=components.allocator,
            directmap=components.directmap,
            rmp=components.rmp,
            compactor=components.compactor,
        )
        self.counters = Counters()
        self.live: dict[int, _VmState] = {}
        self.records: list[VmRecord] = []
        #: each VM's guest log and creation time, in the order of ``records``
        self._logs: list[GuestLog] = []
        self._origins: list[int] = []
        self._ram_masks: dict[tuple[int, tuple[tuple[int, int], ...]], npt.NDArray[np.bool_]] = {}
        self.rows: list[dict[str, int]] = []
        self.hostmaps: list[HostMap] = []
        self._next_asid = 1
        self._progress = progress
        #: the VM processes of the VMs a replayed trace drives (a replay ends when they have)
        self._replayed: list[simpy.Event] = []
        self._booted: simpy.Event = self.env.event()

    def rng(self, name: str) -> np.random.Generator:
        """The random stream of the component ``name`` (e.g. ``"writer/ksm"``), from the scenario seed."""
        return np.random.default_rng([self.s.seed, zlib.crc32(name.encode())])

    # ------------------------------------------------------------------ threads
    def _thread(self, account: CpuAccount, body: Generator[int, None, None], vm: _VmState | None = None) -> Process:
        return host_thread(self.env, self.host, account, body, vm)

    def _run_on(self, account: CpuAccount, work: Callable[[], Any]) -> Any:
        """Run ``work`` synchronously on ``account`` (its time is spent by the caller's next wait)."""
        self.host.cpu = account
        return work()

    # ------------------------------------------------------------------ metrics
    def metrics(self) -> dict[str, int]:
        m: dict[str, int] = dict.fromkeys(METRICS, 0)
        m.update(self.host.metrics())
        m.update(self.counters.as_dict())
        for vm in self.live.values():
            q = vm.qemu
            n4, n2, n1 = q.kvm.npt_bytes()
            m["npt_4k"] += n4
            m["npt_2m"] += n2
            m["npt_1g"] += n1
            m["private_bytes"] += q.private_bytes()
            m["shared_bytes"] += q.shared_bytes()
            m["guest_bytes"] += q.guest_bytes()
        m["waste_bytes"] = m["private_bytes"] + m["shared_bytes"] - m["guest_bytes"]
        m["boot_time_ns"] = int(self._logs[0].booted_ns or 0) if self._logs else 0
        m["sim_time_ns"] = int(self.env.now)
        return m

    def _sampler(self) -> Process:
        step = max(1, self.s.duration_ns // self.s.samples)
        while True:
            self.rows.append({"time_ns": int(self.env.now), **self.metrics()})
            if len(self.rows) - 1 in (1, self.s.samples // 2):
                self.hostmaps.append(snapshot(self.host, self.host.memory_map.ram_ranges))
            if self._progress:
                self._progress(self.env.now / max(self.s.duration_ns, 1))
            yield self.env.timeout(step)

    # ------------------------------------------------------------------ VMs
    def _vm(self, spec: VmSpec, index: int, start_ns: int, lifetime_ns: int | None) -> Process:
        """One VM: QEMU creates it (its main thread), its vCPU threads run the guest, and at the end of its
        lifetime (or when the host cannot back it) QEMU tears it down."""
        env = self.env
        if start_ns:
            yield env.timeout(start_ns)
        asid = self._next_asid
        self._next_asid += 1
        cfg = spec.guest_config()
        ram = self._ram_mask(cfg.end_gfn, tuple(cfg.ram_ranges()))
        given = self.vm_launch.get(index)
        launch = list(given) if given is not None else default_launch(cfg)
        cfg = dataclasses.replace(cfg, launch_validated=launch_ram_ranges(launch, ram))
        t0 = int(env.now)
        record = VmRecord(f"vm{index}", asid, spec.memory, spec.vcpus, spec.workload, t0)
        self.records.append(record)
        main = self.host.account(f"vm{index}/qemu")
        try:
            qemu = self._run_on(
                main, lambda: Qemu(self.host, self.s.policy, ram, asid=asid, counters=self.counters, launch=launch)
            )
            self._run_on(main, lambda: _launch(qemu, spec.vcpus))
        except (QemuExit, MemoryError) as e:  # the RAM block's mmap or the launch failed: QEMU exits
            record.exit_error = str(e) if isinstance(e, QemuExit) else f"qemu-system-x86_64: SNP launch failed: {e}"
            record.end_ns = t0
            record.cpu_ns = main.total_ns
            return
        if self.conversions is not None and index == 0:
            self.launch = None if given is None else list(given)
        guest = SnpGuest(int(ram.size), on_vc_404=cfg.on_vc_404)
        for g, n in cfg.launch_validated:  # the launch validated them (Guest-Valid): the guest knows
            guest.validated[g : g + n] = True
        if self.conversions is not None:
            guest.log.requests = []
        self._logs.append(guest.log)
        self._origins.append(t0)
        origin = len(self._origins) - 1
        vm = _VmState(record, qemu, guest, [main], failed=env.event())
        self.live[asid] = vm
        guest.log.on_terminate = functools.partial(self._on_terminate, vm)
        if any(w in self.s.writers for w in writers.GUEST_WRITERS):
            vm.ram = GuestRamView(
                record.name, qemu, guest.log, host_used_pages(cfg), functools.partial(self._on_signal, vm)
            )
            self.host.guest_rams.append(vm.ram)
        setup = main.take()
        if setup:
            yield env.timeout(setup)  # VM creation: the memslot, guest_memfd, all of RAM set private
        if index in self.vm_events:
            self._origins[origin] = int(env.now)
        end = self.s.duration_ns if lifetime_ns is None else min(self.s.duration_ns, t0 + lifetime_ns)
        events = self.vm_events.get(index)
        if events is None:
            events = WORKLOADS[spec.workload](cfg, self.rng(f"vm/{index}/workload"), end - t0, **spec.params)
        threads = []
        for v, stream in enumerate(by_vcpu(events, spec.vcpus)):
            account = self.host.account(f"vm{index}/vcpu{v}")
            vm.accounts.append(account)
            if v == 0:
                guest.log.on_boot = functools.partial(self._on_boot, len(self.records) - 1, main, account)
            # a replayed trace's times count from when its vCPUs start (the trace begins after QEMU's set-up)
            absolute = index in self.vm_events
            program = guest.program(stream, _clock(env, account, int(env.now) if absolute else t0), absolute=absolute)
            cpu = qemu.create_vcpu(v, program)
            threads.append(env.process(self._thread(account, qemu.kvm_cpu_exec(cpu), vm)))
        done = env.all_of(threads)
        waits: list[simpy.Event] = [done, vm.failed]  # type: ignore[list-item]
        if lifetime_ns is not None:
            waits.append(env.timeout(max(0, end - int(env.now))))
        yield env.any_of(waits)
        self._finish(vm)
        ended = record.oom or record.terminated_ns is not None or record.signal is not None
        if lifetime_ns is None and not ended:
            return
        if ended or end < self.s.duration_ns:
            vm.stopped = True
            self._run_on(main, qemu.destroy)
            del self.live[asid]
            # the log outlives the VM (the results read it): drop its callbacks, which hold the VM's whole state
            guest.log.on_terminate = guest.log.on_boot = None
            teardown = main.take()
            if teardown:
                yield env.timeout(teardown)
            record.end_ns = int(env.now)
            record.cpu_ns = sum(a.total_ns for a in vm.accounts)

    def _on_terminate(self, vm: _VmState) -> None:
        """The guest asked to be terminated (``sev_es_terminate``): QEMU stops the VM now."""
        if vm.record.terminated_ns is None:
            vm.record.terminated_ns = int(self.env.now)
            self.counters.guest_terminated_count += 1
        self._fail(vm)

    def _on_signal(self, vm: _VmState, signal: str) -> None:
        """QEMU died of ``signal`` (a user-mode RMP #PF: SIGBUS): its VM ends now."""
        if vm.record.signal is None:
            vm.record.signal = signal
        self._fail(vm)

    def _fail(self, vm: _VmState) -> None:
        if vm.ram is not None and vm.ram in self.host.guest_rams:
            self.host.guest_rams.remove(vm.ram)
        assert vm.failed is not None
        if not vm.failed.triggered:
            vm.failed.succeed()

    def _on_boot(self, index: int, main: CpuAccount, boot_cpu: CpuAccount) -> None:
        """The guest of VM ``index`` (creation order) logged its boot: ``VmRecord.boot_ops`` are the operations
        QEMU's main thread and the boot vCPU were charged so far."""
        ops = Counter(main.count_by_op)
        ops.update(boot_cpu.count_by_op)
        self.records[index].boot_ops = dict(sorted(ops.items()))
        if index == self.stop_after_boot and not self._booted.triggered:
            self._booted.succeed()

    def _finish(self, vm: _VmState) -> None:
        """Copy what the VM's guest and VMM observed into its record."""
        if vm.ram is not None and vm.ram in self.host.guest_rams:
            self.host.guest_rams.remove(vm.ram)
        rec, q, log = vm.record, vm.qemu, vm.guest.log
        rec.peak_private_bytes = q.peak_private_bytes
        rec.peak_shared_bytes = q.peak_shared_bytes
        rec.peak_total_bytes = q.peak_total_bytes
        rec.boot_ns = log.booted_ns
        lat = np.asarray(log.conversion_ns, dtype=np.int64)
        rec.conversions = int(lat.size)
        if lat.size:
            p50, p90, p99 = np.percentile(lat, [50, 90, 99])
            rec.conversion_ns_p50, rec.conversion_ns_p90, rec.conversion_ns_p99 = float(p50), float(p90), float(p99)
            rec.conversion_ns_max = int(lat.max())
        rec.cpu_ns = sum(a.total_ns for a in vm.accounts)

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
        rng = self.rng("churn")
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

    # ------------------------------------------------------------------ run
    #: SimPy steps between two looks at the clock when a time limit is set
    _STEPS_PER_CHECK = 1024

    def _advance(self, until: int | simpy.Event) -> None:
        """``env.run(until=until)`` (a time or an event); with a time limit, the same events one ``step()`` at a
        time - those before ``until`` (SimPy's ``until`` event is urgent, so events at that time itself never
        run), or until the event is processed - looking at the clock every ``_STEPS_PER_CHECK`` steps, so that
        even a run stuck at one simulated instant is stopped."""
        env = self.env
        if self.time_limit_s is None:
            env.run(until=until)
            return
        deadline = time.monotonic() + self.time_limit_s
        step, peek = env.step, env.peek

        def more() -> bool:
            if isinstance(until, simpy.Event):
                return not until.processed and peek() < float("inf")
            return peek() < until

        while more():
            for _ in range(self._STEPS_PER_CHECK):
                if not more():
                    break
                step()
            if time.monotonic() > deadline:
                raise TimeLimitExceeded(self.time_limit_s, int(env.now))
        env.run(until=until)

    def run(self) -> Result:
        #: what the host's uptime left before the VMs start (page cache, kernel memory)
        self.host.snp_init()  # at boot (the ccp driver's SNP init), before the uptime's page cache
        self.aging = age_host(self.host, self.s.page_cache, self.s.aging, self.s.seed)
        index = 0
        for spec in self.s.vms:
            for _ in range(spec.count):
                proc = self.env.process(self._vm(spec, index, spec.start_ns, spec.lifetime_ns))
                if index in self.vm_events:
                    self._replayed.append(proc)
                index += 1
        if self.s.churn is not None:
            self.env.process(self._churn())
        for name, params in sorted(self.s.writers.items()):
            body = writers.WRITERS[name](self.host, self.rng(f"writer/{name}"), **params)
            self.env.process(self._thread(self.host.account(f"kthread/{name}"), body))
        if self.host.rmpopt is not None:  # the rmpopt_wq delayed work; its first step pays the boot-time scan
            worker = self.host.rmpopt.worker(lambda: int(self.env.now))
            self.env.process(self._thread(self.host.account("kthread/rmpopt"), worker))
        self.env.process(self._sampler())
        if self.stop_after_boot is None:
            self._advance(self.s.duration_ns)
        else:
            self._advance(self.env.any_of([self.env.timeout(self.s.duration_ns), self._booted]))
        if self._replayed:  # a replay ends when the trace has been replayed, however long the host took (the VM's
            # creation included: a trace shorter than QEMU's set-up is still replayed whole)
            self._advance(self.env.all_of(self._replayed))
        for vm in self.live.values():
            self._finish(vm)
        final = self.metrics()
        if not self.rows or self.rows[-1]["time_ns"] != final["sim_time_ns"]:
            self.rows.append({"time_ns": final["sim_time_ns"], **final})
        if not self.hostmaps or self.hostmaps[-1].time_ns != final["sim_time_ns"]:
            self.hostmaps.append(snapshot(self.host, self.host.memory_map.ram_ranges))
        timeline = pd.DataFrame(self.rows, columns=["time_ns", *METRICS])
        crashes = [
            {
                "time_ns": c.time_ns,
                "path": c.path,
                "pfn": c.pfn,
                "kind": c.kind,
                "error_code": c.error_code,
                "context": c.context,
            }
            for c in self.host.crashes
        ]
        if self.conversions is not None:
            self.conversions = sorted(
                (t + t0, gfn, npages, to_private)
                for log, t0 in zip(self._logs, self._origins, strict=True)
                for t, gfn, npages, to_private in log.requests or ()
            )
        by_op: dict[str, int] = {}
        for acct in self.host.accounts.values():
            for op, ns in acct.by_op.items():
                by_op[op] = by_op.get(op, 0) + ns
        threads = {name: a.total_ns for name, a in self.host.accounts.items() if a.total_ns}
        return Result(
            dict(final),
            timeline,
            self.s,
            self.records,
            crashes,
            self.conversions,
            dict(sorted(by_op.items())),
            threads,
            self.hostmaps,
            self.launch,
        )


def host_thread(
    env: simpy.Environment,
    host: HostKernel,
    account: CpuAccount,
    body: Generator[int, None, None],
    vm: _VmState | None = None,
) -> Process:
    """Run a host thread as a SimPy process: each step runs on ``account``, then the thread waits for what it
    yielded plus the CPU time the step charged. A VM's thread stops when the VM is torn down, or fails the VM
    when the host cannot back it (QEMU is killed)."""
    while True:
        host.cpu = account
        try:
            wait = next(body)
        except StopIteration:
            break
        except MemoryError:
            if vm is None:
                raise
            vm.record.oom = True
            assert vm.failed is not None
            if not vm.failed.triggered:
                vm.failed.succeed()
            break
        wait += account.take()
        if wait:
            yield env.timeout(wait)
        if vm is not None and vm.stopped:
            body.close()
            return
    rest = account.take()
    if rest:
        yield env.timeout(rest)


def default_launch(cfg: LinuxGuestConfig) -> list[SnpLaunchUpdate]:
    """The launch updates of the default guest image (:func:`snpsim.guest.linux.launch_image`: the OVMF flash and
    its SEV metadata sections) as QEMU issues them."""
    return [SnpLaunchUpdate(g, n, SnpPageType[kind.upper()]) for g, n, kind in launch_image(cfg)]


def launch_ram_ranges(launch: Iterable[SnpLaunchUpdate], ram: npt.NDArray[np.bool_]) -> tuple[tuple[int, int], ...]:
    """The ``(gfn, npages)`` pieces of the launch updates that are guest RAM (the rest is the firmware's block)."""
    out: list[tuple[int, int]] = []
    for u in launch:
        lo, hi = min(u.gfn, ram.size), min(u.gfn + u.npages, ram.size)
        for start, n, is_ram in bool_runs(ram[lo:hi]):
            if is_ram:
                out.append((lo + start, n))
    return tuple(sorted(out))


def _launch(qemu: Qemu, vcpus: int) -> None:
    """QEMU's machine init and machine-done for SNP: ``KVM_CREATE_VCPU`` of every vCPU (KVM allocates each VMSA),
    then ``sev_snp_launch_finish()`` (the launch updates and ``KVM_SEV_SNP_LAUNCH_FINISH``), before any vCPU
    runs."""
    for v in range(vcpus):
        qemu.kvm.sev_es_vcpu_create(v)
    qemu.sev_snp_launch_finish()


def _clock(env: simpy.Environment, account: CpuAccount, origin: int) -> Callable[[], int]:
    """A thread's own clock from ``origin``: the simulated time plus the CPU time its current step has charged so
    far (the guest's kvmclock, counted from its VM's creation)."""
    return lambda: int(env.now) + account.pending_ns - origin


class GuestDriver:
    """A VM's guest run through its VMM synchronously, outside simulated time (tests and benchmarks): each
    :meth:`execute` runs the guest program for some events on one vCPU through QEMU's exit loop to its end. The
    guest's state (what it validated) persists across calls; costs are still charged to the host's accounts."""

    def __init__(self, qemu: Qemu) -> None:
        self.qemu = qemu
        self.guest = SnpGuest(qemu.kvm.npages)

    @property
    def validated(self) -> npt.NDArray[np.bool_]:
        return self.guest.validated

    def execute(self, *events: Access | Conversion, vcpu: int = 0) -> None:
        cpu = self.qemu.create_vcpu(vcpu, self.guest.program([Timed(0, ev) for ev in events]))
        for _ in self.qemu.kvm_cpu_exec(cpu):
            pass
