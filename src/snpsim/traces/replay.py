"""Turn parsed trace conversions into the guest layer's events, so a real trace can drive the simulator.

A replayed trace is what the guest asked for (guest-workloads.md §1): each :class:`TraceConversion` becomes
``Timed(t, Conversion(gfn, npages, to_private, protocol, huge_ok=True, what="trace"))``
(:mod:`snpsim.guest.events`), ``t`` relative to the first conversion. ``protocol`` is ``Protocol.MSR`` for
conversions read from ``kvm_vmgexit_msr_protocol_enter`` (the guest used the GHCB MSR protocol, one page per
request; amd-snp-arch.md §9) and ``Protocol.GHCB`` for everything else. ``huge_ok=True``: the trace does not say
whether the guest addressed the range through its direct map; 2M PSC entries are allowed where aligned.

The trace's launch (:mod:`snpsim.traces.launch`) becomes the ``SnpLaunchUpdate`` list QEMU hands to KVM before the
guest runs (``GuestTrace.launch``; :func:`snpsim.replay` passes it as ``Simulation(vm_launch=...)``; a trace
without launch updates leaves the launch to the guest image's default). Launch times are not replayed: the launch
is part of the VM's set-up, which the simulation performs itself before the first conversion's time.

The guest's RAM size is given, or read from the trace's guest_memfds (the sum of the RAM blocks' sizes; blocks of at
most :data:`FIRMWARE_MAX_BYTES` are firmware), or inferred from the highest converted address, so that
:class:`snpsim.guest.linux.LinuxGuestConfig` accepts it and its RAM map covers every converted range. That map is
QEMU q35's (``pc_q35_init``): all RAM below 4 GiB if the guest has less than 2.75 GiB, else 2 GiB below 4 GiB and
the rest from 4 GiB; ``[lowmem, 4 GiB)`` is the PCI hole, not RAM. A conversion outside RAM (beyond the size, in the
hole, or needing more than the model's 16 TiB) is a :class:`TraceError` naming the trace line; so is a launch
update outside RAM and outside the BIOS window below 4 GiB, or one overlapping another. Independent of the runner.

:func:`plan_replay` reads the trace once (:func:`snpsim.traces.scan`: the conversions spooled as numpy records); the
sizing, the RAM check and the events then work on those records a chunk at a time. Given the
:class:`~snpsim.traces.scan.TraceArrays` of a scan instead of a path, it reads their spool (a view of it, which
never removes it) and not the file: one scan serves every preset's replay of ``snpsim replay``.

Simplifications: a guest_memfd of at most 16 MiB is taken as firmware and one larger as RAM [I] (OVMF images are
1-4 MiB and QEMU's ``pc.rom`` 128 KiB; a NUMA guest with a node of 16 MiB or less would be read 16 MiB small per
such node); the RAM sum is rounded up to 2 MiB and raised to the model's 64 MiB minimum (guest RAM only grows).
"""

from __future__ import annotations

import itertools
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from snpsim.errors import ConfigError
from snpsim.guest.events import Conversion, Protocol, Timed
from snpsim.guest.linux import (
    GIB,
    MAX_MEMORY_BYTES,
    MIB,
    MIN_MEMORY_BYTES,
    Q35_LOWMEM_LARGE,
    Q35_LOWMEM_THRESHOLD,
    LinuxGuestConfig,
)
from snpsim.kvm.uapi import SnpLaunchUpdate
from snpsim.traces.model import (
    PAGE_SHIFT,
    ParseStats,
    TraceConversion,
    TraceError,
    TraceGuestMemfd,
    TraceLaunchUpdate,
)
from snpsim.traces.scan import PROTOCOLS, TraceArrays, protocol_of, scan

if TYPE_CHECKING:
    from snpsim.scenario import Scenario

__all__ = [
    "FIRMWARE_MAX_BYTES",
    "GuestTrace",
    "ReplayPlan",
    "describe_empty",
    "guest_memfd_ram",
    "infer_memory_bytes",
    "launch_updates",
    "plan_replay",
    "ram_ranges",
    "to_guest_events",
]

FOUR_GIB = 4 * GIB
ALIGN = 2 * MIB
#: guest_memfds up to this size are firmware RAM blocks, not guest RAM [I]: QEMU's BIOS block (``pc.bios``, the
#: OVMF image: 1-4 MiB builds) and option-ROM block (``pc.rom``, 128 KiB); the model's guests have at least 64 MiB.
FIRMWARE_MAX_BYTES = 16 * MIB
#: Where launch updates may load firmware outside guest RAM: QEMU maps the BIOS at ``[4 GiB - size, 4 GiB)``
#: (``x86_bios_rom_init()``; ``x86_firmware_configure(gpa, ...)`` -> ``sev_encrypt_flash(gpa, ...)``), here for any
#: BIOS up to :data:`FIRMWARE_MAX_BYTES`.
FIRMWARE_WINDOW = (FOUR_GIB - FIRMWARE_MAX_BYTES, FOUR_GIB)


@dataclass(frozen=True)
class GuestTrace:
    """A trace ready for the guest layer. Unpacks as ``memory_bytes, events = to_guest_events(...)``.

    ``memory_bytes``: the guest RAM for ``LinuxGuestConfig``; ``events``: the replayable events; ``launch``: the
    launch updates for ``Qemu(launch=...)`` (empty: the trace had none); ``memory_from``: where ``memory_bytes``
    came from: ``"given"``, ``"guest_memfd"`` or ``"conversions"``.
    """

    memory_bytes: int
    events: list[Timed] | Iterator[Timed]
    launch: list[SnpLaunchUpdate] = field(default_factory=list)
    memory_from: str = "conversions"

    def __iter__(self) -> Iterator[Any]:
        return iter((self.memory_bytes, self.events))


def describe_empty(stats: ParseStats) -> str:
    """Why a pass found no conversion: ``"no conversion in 12 lines (3 bad lines skipped, 2 unknown events:
    kvm_run_exit 2)"``."""
    unknown = sum(stats.skipped_unknown.values())
    told = [f"{stats.bad_lines} bad lines skipped"] if stats.bad_lines else []
    told += [f"{unknown} unknown events: {stats.unknown_summary()}"] if unknown else []
    told += [f"{sum(stats.informational.values())} events not replayed"] if stats.informational else []
    told += [f"{len(stats.launch)} launch updates"] if stats.launch else []
    return f"no conversion in {stats.lines} lines" + (f" ({', '.join(told)})" if told else "")


def _round_up(n: int, align: int) -> int:
    return -(-n // align) * align


def ram_ranges(memory_bytes: int) -> list[tuple[int, int]]:
    """Guest RAM as ``(gpa, end)`` byte ranges, from ``LinuxGuestConfig.ram_ranges()`` (q35 map)."""
    cfg = LinuxGuestConfig(memory_bytes, 1)
    return [(gfn << PAGE_SHIFT, (gfn + n) << PAGE_SHIFT) for gfn, n in cfg.ram_ranges()]


def _within(gpa: int, size: int, ranges: Iterable[tuple[int, int]]) -> bool:
    end = gpa + size
    return any(lo <= gpa and end <= hi for lo, hi in ranges)


def _in_ram(conv: TraceConversion, ranges: list[tuple[int, int]]) -> bool:
    return _within(conv.gpa, conv.size, ranges)


def _outside(conv: TraceConversion, memory_bytes: int, ranges: list[tuple[int, int]], why: str) -> TraceError:
    ram = ", ".join(f"[{lo:#x}, {hi:#x})" for lo, hi in ranges)
    return TraceError(
        conv.source,
        conv.line,
        f"conversion {conv.gpa:#x}+{conv.size:#x} is not guest RAM of a {memory_bytes} byte q35 guest (RAM {ram}){why}",
    )


def guest_memfd_ram(guest_memfds: Iterable[TraceGuestMemfd]) -> tuple[int, TraceGuestMemfd] | None:
    """Guest RAM from the guest_memfds QEMU created: ``(memory_bytes, the last RAM guest_memfd)``, or None if none is
    RAM.

    RAM blocks are the guest_memfds larger than :data:`FIRMWARE_MAX_BYTES` (the others are the firmware's
    ``pc.bios`` / ``pc.rom``); ``memory_bytes`` is the sum of their sizes rounded up to 2 MiB and at least 64 MiB.
    Raises TraceError (at the last RAM guest_memfd) if the sum exceeds the model's 16 TiB.
    """
    total = 0
    last: TraceGuestMemfd | None = None
    for g in guest_memfds:
        if g.size > FIRMWARE_MAX_BYTES:
            total += g.size
            last = g
    if last is None:
        return None
    mem = max(_round_up(total, ALIGN), MIN_MEMORY_BYTES)
    if mem > MAX_MEMORY_BYTES:
        raise TraceError(
            last.source,
            last.line,
            f"the guest_memfds hold {total} bytes of guest RAM, more than the model's {MAX_MEMORY_BYTES} (16 TiB)",
        )
    return mem, last


def infer_memory_bytes(
    conversions: Iterable[TraceConversion] | TraceArrays, *, guest_memfds: Iterable[TraceGuestMemfd] = ()
) -> int:
    """The guest RAM size of a trace: from its guest_memfds (:func:`guest_memfd_ram`) when it has a RAM one, else
    the smallest valid size (2 MiB multiple, >= 64 MiB) whose q35 RAM map holds every conversion.

    From the conversions: below 4 GiB only, their highest end rounded up to 2 MiB; any at or above 4 GiB, 2 GiB low
    RAM plus their highest end above 4 GiB (rounded up), and at least 2.75 GiB (the smallest q35 guest with RAM above
    4 GiB). Raises TraceError for a conversion no q35 guest has as RAM (in or across the PCI hole, or beyond 16 TiB)
    or, with the size from the guest_memfds, outside that guest's RAM. Streams: one pass finds the size; a second
    pass (when ``conversions`` can be iterated again, e.g. a list or a reader over a file) checks every conversion
    against the RAM map, so memory stays constant. :class:`~snpsim.traces.scan.TraceArrays` are read a chunk at a
    time, vectorised.
    """
    from_gmem = guest_memfd_ram(guest_memfds)
    if from_gmem is not None:
        mem, where = from_gmem
        _check_ram(conversions, mem, f" (its size from the guest_memfd at {where.source}:{where.line})")
        return mem
    if isinstance(conversions, TraceArrays):
        top_low, top_high = _array_tops(conversions)
    else:
        top_low = top_high = None
        for c in conversions:
            end = c.gpa + c.size
            if end > FOUR_GIB:
                if top_high is None or end > top_high.gpa + top_high.size:
                    top_high = c
            elif top_low is None or end > top_low.gpa + top_low.size:
                top_low = c
    if top_high is not None:
        top = top_high
        mem = max(Q35_LOWMEM_LARGE + _round_up(top.gpa + top.size - FOUR_GIB, ALIGN), Q35_LOWMEM_THRESHOLD)
    elif top_low is not None:
        top = top_low
        mem = max(_round_up(top.gpa + top.size, ALIGN), MIN_MEMORY_BYTES)
    else:
        return MIN_MEMORY_BYTES
    if mem > MAX_MEMORY_BYTES:
        raise TraceError(
            top.source,
            top.line,
            f"conversion {top.gpa:#x}+{top.size:#x} needs {mem} bytes of guest RAM, more than the model's "
            f"{MAX_MEMORY_BYTES} (16 TiB)",
        )
    _check_ram(conversions, mem, "; no q35 guest has RAM there (PCI hole below 4 GiB)")
    return mem


def _check_ram(conversions: Iterable[TraceConversion] | TraceArrays, mem: int, why: str) -> None:
    """TraceError at the first conversion outside the RAM of a ``mem`` byte guest (a one-shot iterator is not
    checked: it was consumed sizing the guest)."""
    if isinstance(conversions, Iterator):
        return
    ranges = ram_ranges(mem)
    if isinstance(conversions, TraceArrays):
        bad = _array_first_outside(conversions, ranges)
        if bad is not None:
            raise _outside(bad, mem, ranges, why)
        return
    for c in conversions:
        if not _in_ram(c, ranges):
            raise _outside(c, mem, ranges, why)


def _inside(chunk: npt.NDArray[Any], ranges: list[tuple[int, int]]) -> npt.NDArray[np.bool_]:
    """Which records of a chunk lie in one of ``ranges`` (byte ranges; :func:`_within` for many at once)."""
    gpa = chunk["gfn"] << PAGE_SHIFT
    end = gpa + (chunk["npages"] << PAGE_SHIFT)
    inside = np.zeros(len(chunk), dtype=bool)
    for lo, hi in ranges:
        inside |= (gpa >= lo) & (end <= hi)
    return inside


def _array_first_outside(arrays: TraceArrays, ranges: list[tuple[int, int]]) -> TraceConversion | None:
    for chunk in arrays.chunks():
        inside = _inside(chunk, ranges)
        if not inside.all():
            return arrays.conversion(chunk[int(np.argmin(inside))])
    return None


def _array_tops(arrays: TraceArrays) -> tuple[TraceConversion | None, TraceConversion | None]:
    """The first conversion with the highest end at or below 4 GiB, and the one above (the loop in
    :func:`infer_memory_bytes`, a chunk at a time)."""
    best: list[tuple[int, Any] | None] = [None, None]  # (end, record) below / above 4 GiB
    for chunk in arrays.chunks():
        end = (chunk["gfn"] + chunk["npages"]) << PAGE_SHIFT
        high = end > FOUR_GIB
        for k, mask in enumerate((~high, high)):
            if not mask.any():
                continue
            idx = np.flatnonzero(mask)
            i = int(idx[int(np.argmax(end[idx]))])  # argmax: the first of equal ends
            cur = best[k]
            if cur is None or int(end[i]) > cur[0]:
                best[k] = (int(end[i]), chunk[i].copy())
    low, high_ = best
    return (
        arrays.conversion(low[1]) if low is not None else None,
        arrays.conversion(high_[1]) if high_ is not None else None,
    )


def _timed(t: int, gfn: int, npages: int, to_private: bool, protocol: Protocol) -> Timed:
    return Timed(
        t,
        Conversion(gfn=gfn, npages=npages, to_private=to_private, protocol=protocol, huge_ok=True, what="trace"),
    )


def _events(
    conversions: Iterable[TraceConversion], memory_bytes: int, ranges: list[tuple[int, int]] | None
) -> Iterator[Timed]:
    t0: int | None = None
    last = 0
    for c in conversions:
        if ranges is not None and not _in_ram(c, ranges):
            raise _outside(c, memory_bytes, ranges, "")
        if t0 is None:
            t0 = c.time_ns
        t = c.time_ns - t0
        if t < last:
            raise TraceError(c.source, c.line, f"time {c.time_ns} ns is before the previous conversion's")
        last = t
        yield _timed(t, c.gpa >> PAGE_SHIFT, c.size >> PAGE_SHIFT, c.to_private, protocol_of(c.event))


def _array_events(
    arrays: TraceArrays, memory_bytes: int, ranges: list[tuple[int, int]] | None
) -> Generator[Timed, None, None]:
    """:func:`_events` of spooled conversions, a chunk at a time (the checks vectorised per chunk)."""
    t0: int | None = None
    last = 0
    for chunk in arrays.chunks():
        if ranges is not None:
            inside = _inside(chunk, ranges)
            if not inside.all():
                raise _outside(arrays.conversion(chunk[int(np.argmin(inside))]), memory_bytes, ranges, "")
        times = chunk["time_ns"]
        if t0 is None:
            t0 = int(times[0])
        rel = times - t0
        prev = np.concatenate(([last], rel[:-1]))
        back = rel < prev
        if back.any():
            c = arrays.conversion(chunk[int(np.argmax(back))])
            raise TraceError(c.source, c.line, f"time {c.time_ns} ns is before the previous conversion's")
        last = int(rel[-1])
        protocols = [PROTOCOLS[p] for p in chunk["protocol"].tolist()]
        cols = zip(
            rel.tolist(),
            chunk["gfn"].tolist(),
            chunk["npages"].tolist(),
            chunk["to_private"].tolist(),
            protocols,
            strict=True,
        )
        for t, gfn, npages, priv, protocol in cols:
            yield _timed(t, gfn, npages, priv, protocol)


class SpooledEvents(Iterator[Timed]):
    """The guest events of spooled conversions (:func:`_array_events`), lazily; closes the arrays (which removes
    the spool unless they are a :meth:`~snpsim.traces.scan.TraceArrays.view`) once exhausted, on an error, or at
    :meth:`close` (also when never iterated)."""

    def __init__(self, arrays: TraceArrays, memory_bytes: int, ranges: list[tuple[int, int]] | None) -> None:
        self.arrays = arrays
        self._it = _array_events(arrays, memory_bytes, ranges)

    def __iter__(self) -> SpooledEvents:
        return self

    def __next__(self) -> Timed:
        try:
            return next(self._it)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._it.close()
        self.arrays.close()


def launch_updates(updates: Iterable[TraceLaunchUpdate], memory_bytes: int) -> list[SnpLaunchUpdate]:
    """The trace's launch updates as QEMU hands them to KVM (``struct kvm_sev_snp_launch_update``), in trace order.

    Each must lie in the guest's RAM (a ``memory_bytes`` q35 guest) or in the BIOS window below 4 GiB
    (:data:`FIRMWARE_WINDOW`: the firmware's own guest_memfd, outside guest RAM), and no two may overlap
    (``kvm_gmem_populate()`` refuses a page it has already prepared with -EEXIST, so a real launch never repeats
    one; a partly processed update's continuation lines are already folded by the parser). Raises TraceError naming
    the line otherwise.
    """
    ranges = ram_ranges(memory_bytes)
    out: list[SnpLaunchUpdate] = []
    kept: list[TraceLaunchUpdate] = []
    for u in updates:
        if not (_within(u.gpa, u.size, ranges) or _within(u.gpa, u.size, (FIRMWARE_WINDOW,))):
            ram = ", ".join(f"[{lo:#x}, {hi:#x})" for lo, hi in ranges)
            lo, hi = FIRMWARE_WINDOW
            raise TraceError(
                u.source,
                u.line,
                f"launch update {u.gpa:#x}+{u.size:#x} is neither guest RAM of a {memory_bytes} byte q35 guest "
                f"(RAM {ram}) nor firmware (the BIOS window [{lo:#x}, {hi:#x}))",
            )
        kept.append(u)
        out.append(SnpLaunchUpdate(u.gfn, u.npages, u.page_type))
    by_gpa = sorted(kept, key=lambda u: u.gpa)
    for a, b in itertools.pairwise(by_gpa):
        if b.gpa < a.gpa + a.size:
            later, earlier = (b, a) if b.line > a.line else (a, b)
            raise TraceError(
                later.source,
                later.line,
                f"launch update {later.gpa:#x}+{later.size:#x} overlaps the one at line {earlier.line} "
                f"({earlier.gpa:#x}+{earlier.size:#x}): KVM cannot populate a page twice",
            )
    return out


def to_guest_events(
    conversions: Iterable[TraceConversion] | TraceArrays,
    *,
    vm_memory: int | None = None,
    launch: Iterable[TraceLaunchUpdate] | None = None,
    guest_memfds: Iterable[TraceGuestMemfd] | None = None,
) -> GuestTrace:
    """Replay ``conversions`` as guest events: ``GuestTrace(memory_bytes, events, launch, memory_from)``.

    ``vm_memory=None``: the conversions are read once into memory and ``events`` is a list; the RAM size comes from
    the guest_memfds, else from the conversions (:func:`infer_memory_bytes`). ``vm_memory`` given: it must be a
    valid ``LinuxGuestConfig.memory_bytes`` (ConfigError otherwise); ``events`` is then a lazy iterator (constant
    memory) that raises TraceError when it reaches a conversion outside that guest's RAM. Times are relative to the
    first conversion and must not go backwards (the parsers guarantee this).

    ``launch`` / ``guest_memfds``: the trace's launch records (``reader.stats.launch`` / ``.guest_memfds`` after a
    pass). Left None, they are taken from ``conversions`` when it is a :class:`~snpsim.traces.TraceReader` and
    ``vm_memory`` is None (its pass has then ended); otherwise there are none. ``launch`` is checked against the
    guest's RAM (:func:`launch_updates`).

    :class:`~snpsim.traces.scan.TraceArrays` (:func:`snpsim.traces.scan`) are sized and checked from the spooled
    records a chunk at a time; ``events`` is then always lazy (:class:`SpooledEvents`, which closes the arrays once
    used up or closed: a scan's own result then removes its spool, a view does not), and ``launch`` /
    ``guest_memfds`` default to the scan's.
    """
    if isinstance(conversions, TraceArrays):
        launch = conversions.stats.launch if launch is None else launch
        guest_memfds = conversions.stats.guest_memfds if guest_memfds is None else guest_memfds
        if vm_memory is None:
            gmems = list(guest_memfds or ())
            mem = infer_memory_bytes(conversions, guest_memfds=gmems)
            source = "guest_memfd" if guest_memfd_ram(gmems) is not None else "conversions"
            return GuestTrace(mem, SpooledEvents(conversions, mem, None), launch_updates(launch or (), mem), source)
    elif vm_memory is None:
        convs = list(conversions)
        stats = getattr(conversions, "stats", None)  # a TraceReader's stats describe the pass just made
        if isinstance(stats, ParseStats):
            launch = stats.launch if launch is None else launch
            guest_memfds = stats.guest_memfds if guest_memfds is None else guest_memfds
        gmems = list(guest_memfds or ())
        mem = infer_memory_bytes(convs, guest_memfds=gmems)
        source = "guest_memfd" if guest_memfd_ram(gmems) is not None else "conversions"
        return GuestTrace(mem, list(_events(convs, mem, None)), launch_updates(launch or (), mem), source)
    _check_vm_memory(vm_memory)
    updates = launch_updates(launch or (), vm_memory)
    if isinstance(conversions, TraceArrays):
        return GuestTrace(vm_memory, SpooledEvents(conversions, vm_memory, ram_ranges(vm_memory)), updates, "given")
    return GuestTrace(vm_memory, _events(conversions, vm_memory, ram_ranges(vm_memory)), updates, "given")


def _check_vm_memory(vm_memory: object) -> None:
    """ConfigError (``vm_memory``) unless it is a valid ``LinuxGuestConfig.memory_bytes``."""
    if isinstance(vm_memory, bool) or not isinstance(vm_memory, int):
        raise ConfigError("vm_memory", f"expected a size in bytes, got {vm_memory!r}")
    try:
        LinuxGuestConfig(vm_memory, 1).validate()
    except ConfigError as e:
        raise ConfigError("vm_memory", str(e)) from None


class ReplayPlan(NamedTuple):
    """A trace ready to replay: the scenario (one idle VM the trace drives), its events (lazy), what the first pass
    over the trace read, the trace's format, the VM's launch updates (empty: the trace had none, the guest image's
    default launch applies) and where the guest RAM size came from (``GuestTrace.memory_from``)."""

    scenario: Scenario
    events: list[Timed] | Iterator[Timed]
    stats: ParseStats
    format: str
    launch: list[SnpLaunchUpdate]
    memory_from: str

    def close(self) -> None:
        """Close the events' spooled conversions (:class:`SpooledEvents`) if ``events`` has not used them up: their
        spool is removed then, unless the plan was made from a scan's TraceArrays (their owner removes it)."""
        close = getattr(self.events, "close", None)
        if close is not None:
            close()


def plan_replay(
    trace: str | Path | TraceArrays,
    policy: str | Mapping[str, Any] = "upstream",
    *,
    format: str = "auto",
    lenient: bool = False,
    vm_memory: int | str | None = None,
    vcpus: int = 4,
    host_memory: int | str | None = None,
    seed: int = 1,
    samples: int = 100,
) -> ReplayPlan:
    """Check a trace and build the scenario of its replay (:func:`snpsim.replay`), without simulating.

    One pass over the file (:func:`snpsim.traces.scan`): it counts what the trace holds, keeps its launch records
    and spools the conversions as compact records to a temporary file, so memory stays bounded; the guest is sized
    (from the guest_memfds when the trace has them, else from the conversions) or, with ``vm_memory``, every
    conversion checked against that guest's RAM, from those records, and the events are generated from them lazily
    (``ReplayPlan.events``, which removes the spool once used up; :meth:`ReplayPlan.close` otherwise). Raises
    TraceError for a bad line, a trace without a single conversion or a launch update outside the guest,
    ConfigError (``vm_memory``, ``vms[0].vcpus``, ``host.memory``, ...) for bad options (nothing is left spooled
    then).

    ``trace`` may instead be the :class:`~snpsim.traces.scan.TraceArrays` of a :func:`snpsim.traces.scan` of the
    trace, to plan several replays from one read: the plan reads a :meth:`~snpsim.traces.scan.TraceArrays.view` of
    their spool, so neither it nor its events remove the spool, which stays with the scan's result (close it when
    every replay is done). ``format`` and ``lenient`` were the scan's then: leave them at their defaults or give the
    scan's (ValueError otherwise)."""
    arrays = _view(trace, format, lenient) if isinstance(trace, TraceArrays) else scan(trace, format, lenient)
    try:
        return _plan(arrays, policy, vm_memory, vcpus, host_memory, seed, samples)
    except BaseException:
        arrays.close()
        raise


def _view(arrays: TraceArrays, format: str, lenient: bool) -> TraceArrays:
    """A view of a scan's spool for :func:`plan_replay`; ValueError if the reading options contradict the scan's."""
    if format not in ("auto", arrays.format) or lenient not in (False, arrays.lenient):
        raise ValueError(
            f"{arrays.source} was scanned with format={arrays.format!r}, lenient={arrays.lenient!r}; "
            f"got format={format!r}, lenient={lenient!r}"
        )
    return arrays.view()


def _plan(
    arrays: TraceArrays,
    policy: str | Mapping[str, Any],
    vm_memory: int | str | None,
    vcpus: int,
    host_memory: int | str | None,
    seed: int,
    samples: int,
) -> ReplayPlan:
    from snpsim.scenario import load
    from snpsim.units import parse_size

    stats = arrays.stats
    if len(arrays) == 0:
        raise TraceError(arrays.source, 0, f"nothing to replay: {describe_empty(stats)}")
    first: int | None = None
    end = 0
    for chunk in arrays.chunks():  # the time span, a chunk at a time
        first = int(chunk["time_ns"][0]) if first is None else first
        end = int(chunk["time_ns"][-1])
    last = end - (first or 0)
    if vm_memory is None:
        memory = infer_memory_bytes(arrays, guest_memfds=stats.guest_memfds)
        memory_from = "guest_memfd" if guest_memfd_ram(stats.guest_memfds) is not None else "conversions"
    else:
        memory, memory_from = parse_size(vm_memory, "vm_memory"), "given"
        _check_vm_memory(memory)
        _check_ram(arrays, memory, "")  # a given size is checked lazily, conversion by conversion: check them all now
    guest = to_guest_events(arrays, vm_memory=memory, launch=stats.launch)
    host = parse_size(host_memory, "host_memory") if host_memory is not None else max(4 * guest.memory_bytes, 1 << 30)
    scenario = load(
        {
            "name": f"replay of {Path(arrays.source).name}",
            "seed": seed,
            "policy": policy,
            "duration": f"{last + 1_000_000}ns",
            "samples": samples,
            "host": {"memory": host},
            "vms": [{"memory": guest.memory_bytes, "vcpus": vcpus, "workload": "idle"}],
        }
    )
    return ReplayPlan(scenario, guest.events, stats, arrays.format, guest.launch, memory_from)
