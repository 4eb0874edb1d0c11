"""Turn parsed trace conversions into the guest layer's events, so a real trace can drive the simulator.

A replayed trace is what the guest asked for (guest-workloads.md §1): each :class:`TraceConversion` becomes
``Timed(t, Conversion(gfn, npages, to_private, protocol, huge_ok=True, what="trace"))``
(:mod:`snpsim.guest.events`), ``t`` relative to the first conversion. ``protocol`` is ``Protocol.MSR`` for
conversions read from ``kvm_vmgexit_msr_protocol_enter`` (the guest used the GHCB MSR protocol, one page per
request; amd-snp-arch.md §9) and ``Protocol.GHCB`` for everything else. ``huge_ok=True``: the trace does not say
whether the guest addressed the range through its direct map; 2M PSC entries are allowed where aligned.

The guest's RAM size is given or inferred so that :class:`snpsim.guest.linux.LinuxGuestConfig` accepts it and
its RAM map covers every converted range. That map is QEMU q35's (``pc_q35_init``): all RAM below 4 GiB if the
guest has less than 2.75 GiB, else 2 GiB below 4 GiB and the rest from 4 GiB; ``[lowmem, 4 GiB)`` is the PCI
hole, not RAM. A conversion outside RAM (beyond the given size, in the hole, or needing more than the model's
16 TiB) is a :class:`TraceError` naming the trace line. Independent of the runner.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

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
from snpsim.traces.ftrace import MSR_PROTOCOL_ENTER
from snpsim.traces.model import PAGE_SHIFT, ParseStats, TraceConversion, TraceError

if TYPE_CHECKING:
    from snpsim.scenario import Scenario

__all__ = [
    "GuestTrace",
    "ReplayPlan",
    "describe_empty",
    "infer_memory_bytes",
    "plan_replay",
    "ram_ranges",
    "to_guest_events",
]

FOUR_GIB = 4 * GIB
ALIGN = 2 * MIB


class GuestTrace(NamedTuple):
    """``memory_bytes`` for ``LinuxGuestConfig`` and the replayable events (``mem, events = to_guest_events(...)``)."""

    memory_bytes: int
    events: list[Timed] | Iterator[Timed]


def describe_empty(stats: ParseStats) -> str:
    """Why a pass found no conversion: ``"no conversion in 12 lines (3 bad lines skipped, 2 unknown events)"``."""
    unknown = sum(stats.skipped_unknown.values())
    told = [f"{stats.bad_lines} bad lines skipped"] if stats.bad_lines else []
    told += [f"{unknown} unknown events"] if unknown else []
    told += [f"{sum(stats.informational.values())} events not replayed"] if stats.informational else []
    return f"no conversion in {stats.lines} lines" + (f" ({', '.join(told)})" if told else "")


def _round_up(n: int, align: int) -> int:
    return -(-n // align) * align


def ram_ranges(memory_bytes: int) -> list[tuple[int, int]]:
    """Guest RAM as ``(gpa, end)`` byte ranges, from ``LinuxGuestConfig.ram_ranges()`` (q35 map)."""
    cfg = LinuxGuestConfig(memory_bytes, 1)
    return [(gfn << PAGE_SHIFT, (gfn + n) << PAGE_SHIFT) for gfn, n in cfg.ram_ranges()]


def _in_ram(conv: TraceConversion, ranges: list[tuple[int, int]]) -> bool:
    end = conv.gpa + conv.size
    return any(lo <= conv.gpa and end <= hi for lo, hi in ranges)


def _outside(conv: TraceConversion, memory_bytes: int, ranges: list[tuple[int, int]], why: str) -> TraceError:
    ram = ", ".join(f"[{lo:#x}, {hi:#x})" for lo, hi in ranges)
    return TraceError(
        conv.source,
        conv.line,
        f"conversion {conv.gpa:#x}+{conv.size:#x} is not guest RAM of a {memory_bytes} byte q35 guest (RAM {ram}){why}",
    )


def infer_memory_bytes(conversions: Iterable[TraceConversion]) -> int:
    """The smallest valid guest RAM size (2 MiB multiple, >= 64 MiB) whose q35 RAM map holds every conversion.

    Conversions below 4 GiB only: their highest end rounded up to 2 MiB. Any at or above 4 GiB: 2 GiB low RAM plus
    their highest end above 4 GiB (rounded up), and at least 2.75 GiB (the smallest q35 guest with RAM above
    4 GiB). Raises TraceError for a conversion no q35 guest has as RAM (in or across the PCI hole, or beyond 16 TiB).
    Streams: one pass finds the size; a second pass (when ``conversions`` can be iterated again, e.g. a list or a
    reader over a file) checks every conversion against the RAM map, so memory stays constant.
    """
    top_low: TraceConversion | None = None
    top_high: TraceConversion | None = None
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
    if not isinstance(conversions, Iterator):
        ranges = ram_ranges(mem)
        for c in conversions:
            if not _in_ram(c, ranges):
                raise _outside(c, mem, ranges, "; no q35 guest has RAM there (PCI hole below 4 GiB)")
    return mem


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
        protocol = Protocol.MSR if c.event == MSR_PROTOCOL_ENTER else Protocol.GHCB
        yield Timed(
            t,
            Conversion(
                gfn=c.gpa >> PAGE_SHIFT,
                npages=c.size >> PAGE_SHIFT,
                to_private=c.to_private,
                protocol=protocol,
                huge_ok=True,
                what="trace",
            ),
        )


def to_guest_events(conversions: Iterable[TraceConversion], *, vm_memory: int | None = None) -> GuestTrace:
    """Replay ``conversions`` as guest events: ``(memory_bytes, events)``.

    ``vm_memory=None``: the RAM size is inferred (:func:`infer_memory_bytes`); the conversions are read once
    into memory and ``events`` is a list. ``vm_memory`` given: it must be a valid ``LinuxGuestConfig.memory_bytes``
    (ConfigError otherwise); ``events`` is then a lazy iterator (constant memory) that raises TraceError when it
    reaches a conversion outside that guest's RAM. Times are relative to the first conversion and must not go
    backwards (the parsers guarantee this).
    """
    if vm_memory is None:
        convs = list(conversions)
        mem = infer_memory_bytes(convs)
        return GuestTrace(mem, list(_events(convs, mem, None)))
    if isinstance(vm_memory, bool) or not isinstance(vm_memory, int):
        raise ConfigError("vm_memory", f"expected a size in bytes, got {vm_memory!r}")
    try:
        LinuxGuestConfig(vm_memory, 1).validate()
    except ConfigError as e:
        raise ConfigError("vm_memory", str(e)) from None
    return GuestTrace(vm_memory, _events(conversions, vm_memory, ram_ranges(vm_memory)))


class ReplayPlan(NamedTuple):
    """A trace ready to replay: the scenario (one idle VM the trace drives), its events (lazy), what the first pass
    over the trace read, and the trace's format."""

    scenario: Scenario
    events: list[Timed] | Iterator[Timed]
    stats: ParseStats
    format: str


def plan_replay(
    trace: str | Path,
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

    Streaming, constant memory: one pass finds the time span (and counts what the trace holds), a pass sizes the
    guest (or, with ``vm_memory``, checks every conversion against that guest's RAM), and the events read the file
    again lazily. Raises TraceError for a bad
    line or a trace without a single conversion, ConfigError (``vm_memory``, ``vms[0].vcpus``, ``host.memory``, ...)
    for bad options."""
    from snpsim.scenario import load
    from snpsim.traces import Format, parse
    from snpsim.units import parse_size

    fmt = cast(Format, format)  # not checked here: parse raises its ValueError for anything but auto/qemu/ftrace
    reader = parse(trace, fmt, lenient)
    first = last = count = 0
    for count, conv in enumerate(reader, 1):
        first = conv.time_ns if count == 1 else first
        last = conv.time_ns - first
    stats = reader.stats
    if count == 0:
        raise TraceError(reader.source, 0, f"nothing to replay: {describe_empty(stats)}")
    memory = infer_memory_bytes(reader) if vm_memory is None else parse_size(vm_memory, "vm_memory")
    if vm_memory is not None:  # a given size is checked lazily, conversion by conversion: check them all now
        for _ in to_guest_events(parse(trace, fmt, lenient), vm_memory=memory).events:
            pass
    guest = to_guest_events(parse(trace, fmt, lenient), vm_memory=memory)
    host = parse_size(host_memory, "host_memory") if host_memory is not None else max(4 * guest.memory_bytes, 1 << 30)
    scenario = load(
        {
            "name": f"replay of {Path(trace).name}",
            "seed": seed,
            "policy": policy,
            "duration": f"{last + 1_000_000}ns",
            "samples": samples,
            "host": {"memory": host},
            "vms": [{"memory": guest.memory_bytes, "vcpus": vcpus, "workload": "idle"}],
        }
    )
    return ReplayPlan(scenario, guest.events, stats, reader.format)
