"""What a host trace says about guest memory conversions, independent of the trace format it came from.

A :class:`TraceConversion` is one private<->shared conversion of a guest-physical range as the host saw it: a QEMU
``kvm_convert_memory`` trace event (QEMU ``accel/kvm/trace-events``), a kernel ``kvm_vm_set_mem_attributes``
tracepoint (``include/trace/events/kvm.h``), or one of the secondary events the parsers fall back to
(``shared/reference/guest-workloads.md`` §1, §4). A :class:`TraceLaunchUpdate` is one ``KVM_SEV_SNP_LAUNCH_UPDATE``
QEMU issued before the guest ran, and a :class:`TraceGuestMemfd` one guest_memfd QEMU created
(:mod:`snpsim.traces.launch`). :class:`ParseStats` counts what a parser read and keeps the launch records, and
:class:`TraceError` names the file and line of anything it could not accept.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from snpsim.kvm.uapi import SnpPageType

#: Guest pages are 4 KiB (``TARGET_PAGE_SIZE`` on x86; every range in a valid trace is a multiple).
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
#: Largest guest-physical address + 1 accepted from a trace: x86-64 physical addresses have at most 52 bits
#: (the GHCB MSR PSC GFN field, bits 12-51, has the same limit; amd-snp-arch.md §9).
MAX_GPA = 1 << 52
#: Error messages kept in :attr:`ParseStats.errors` in lenient mode (the count in ``bad_lines`` is complete).
MAX_KEPT_ERRORS = 100
#: Distinct unknown event names counted one by one; beyond that they are counted under ``"<other>"`` (so garbage
#: input cannot grow the counter without bound).
MAX_UNKNOWN_NAMES = 1000


@dataclass(frozen=True, slots=True)
class TraceConversion:
    """One conversion found in a trace.

    ``time_ns``: the trace's own clock in ns (QEMU: wall-clock epoch time; ftrace: the trace clock, usually
    seconds since boot), or a line-number-based time when the trace has no timestamps (see the parsers).
    ``gpa``/``size``: the guest-physical range in bytes, 4K-aligned, ``size > 0``, ``gpa + size <= 2**52``.
    ``to_private``: direction. ``source``: the trace file's name (as given; ``"<stream>"`` for unnamed streams);
    ``line``: its 1-based line number there. ``event``: the trace event the conversion came from (not compared:
    two conversions at the same place and time are equal whichever event carried them).
    """

    time_ns: int
    gpa: int
    size: int
    to_private: bool
    source: str
    line: int
    event: str = field(default="", compare=False)

    @property
    def gfn(self) -> int:
        return self.gpa >> PAGE_SHIFT

    @property
    def npages(self) -> int:
        return self.size >> PAGE_SHIFT


@dataclass(frozen=True, slots=True)
class TraceLaunchUpdate:
    """One ``KVM_SEV_SNP_LAUNCH_UPDATE`` as QEMU traced it (``kvm_sev_snp_launch_update``, QEMU
    ``target/i386/sev.c`` ``sev_snp_launch_update()``): ``size`` bytes from ``gpa`` loaded into private guest_memfd
    memory as ``page_type`` before the guest runs. ``time_ns``/``source``/``line`` as for :class:`TraceConversion`.
    ``gpa``/``size`` are 4K-aligned, ``size > 0``, ``gpa + size <= 2**52``."""

    time_ns: int
    gpa: int
    size: int
    page_type: SnpPageType
    source: str
    line: int

    @property
    def gfn(self) -> int:
        return self.gpa >> PAGE_SHIFT

    @property
    def npages(self) -> int:
        return self.size >> PAGE_SHIFT


@dataclass(frozen=True, slots=True)
class TraceGuestMemfd:
    """One guest_memfd QEMU created for a RAM block (``KVM_CREATE_GUEST_MEMFD``, QEMU ``kvm_create_guest_memfd()``):
    file descriptor ``fd``, ``size`` bytes (the RAM block's size), ``flags``; ``source``/``line`` locate it."""

    fd: int
    size: int
    flags: int
    source: str
    line: int


class TraceError(ValueError):
    """A trace line the parser cannot accept; ``str()`` is ``"file:line: reason"``.

    ``file`` and ``line`` locate it (``line`` 0: the problem is not one line, e.g. an undetectable format);
    ``reason`` is the message without the location.
    """

    def __init__(self, file: str, line: int, reason: str) -> None:
        # args are the constructor's arguments, so the error survives SimPy's re-raise and pickling
        super().__init__(file, line, reason)
        self.file = file
        self.line = line
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class ParseStats:
    """What one pass over a trace read (filled in while iterating; complete once iteration ends).

    ``lines``: lines read (all of them: blank, header, comment and event lines). ``events``: conversions
    yielded; ``pages``/``to_private``/``to_shared``: their 4K pages and counts by direction.
    ``informational``: recognised events that were not replayed, by name (informational events such as
    ``kvm_rmp_fault``, and secondary conversion events superseded by the authoritative one; see the format
    modules). ``skipped_unknown``: event lines whose event the parser does not know, by name (at most
    :data:`MAX_UNKNOWN_NAMES` names, the rest under ``"<other>"``).
    ``bad_lines``: lines skipped in lenient mode (``errors`` keeps the first :data:`MAX_KEPT_ERRORS` messages).
    ``clamped_timestamps``: lenient mode only: timestamps that went backwards and were clamped to the previous one.
    ``first_time_ns``/``last_time_ns``: first and last timestamp of the lines accepted (None if there were none).
    ``secondary_used``: whether secondary events were replayed (the trace had no authoritative event).
    ``launch``: the launch updates read, in file order (continuation lines of a partly processed update are not
    repeated here: they are counted in ``informational``); ``guest_memfds``: the guest_memfds QEMU reported creating.
    """

    source: str = ""
    format: str = ""
    lines: int = 0
    events: int = 0
    pages: int = 0
    to_private: int = 0
    to_shared: int = 0
    informational: Counter[str] = field(default_factory=Counter)
    skipped_unknown: Counter[str] = field(default_factory=Counter)
    bad_lines: int = 0
    errors: list[str] = field(default_factory=list)
    clamped_timestamps: int = 0
    first_time_ns: int | None = None
    last_time_ns: int | None = None
    secondary_used: bool = False
    launch: list[TraceLaunchUpdate] = field(default_factory=list)
    guest_memfds: list[TraceGuestMemfd] = field(default_factory=list)

    @property
    def launch_pages(self) -> int:
        """4K pages the launch updates load."""
        return sum(u.npages for u in self.launch)

    def unknown_summary(self) -> str:
        """The unknown events by name, most frequent first: ``"kvm_run_exit 29, kvm_set_user_memory 3"``."""
        return ", ".join(f"{name} {n}" for name, n in self.skipped_unknown.most_common())

    def add(self, conv: TraceConversion) -> None:
        self.events += 1
        self.pages += conv.size >> PAGE_SHIFT
        if conv.to_private:
            self.to_private += 1
        else:
            self.to_shared += 1

    def unknown(self, name: str) -> None:
        counter = self.skipped_unknown
        if name in counter or len(counter) < MAX_UNKNOWN_NAMES:
            counter[name] += 1
        else:
            counter["<other>"] += 1

    def bad(self, err: TraceError) -> None:
        self.bad_lines += 1
        if len(self.errors) < MAX_KEPT_ERRORS:
            self.errors.append(str(err))
