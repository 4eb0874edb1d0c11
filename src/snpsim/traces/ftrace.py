"""Parser for Linux ftrace text of the KVM tracepoints that show SEV-SNP memory conversions.

Models two outputs of the kernel's ``kvm`` trace events (``shared/reference/guest-workloads.md`` §4; the
tracepoints are in Linux ``include/trace/events/kvm.h``, ``arch/x86/kvm/trace.h`` and
``arch/x86/kvm/mmu/mmutrace.h``):

* ``/sys/kernel/tracing/trace`` (and ``trace_pipe``): ``#`` header lines, then
  ``TASK-PID [CPU] FLAGS TIMESTAMP: EVENT: FIELDS`` with 4 or 5 latency-flag columns, e.g.
  ``qemu-system-x86-1234    [003] .....  1234.567890: kvm_vm_set_mem_attributes: 0x00000000000800 --
  0x00000000000801 [0x8]``; an optional ``(TGID)`` column (``record-tgid``) and ``CPU:N [LOST N EVENTS]`` lines
  are accepted;
* ``trace-cmd report``: header lines ``version = 6``, ``cpus=N``, ``CPU N is empty``, then the same event lines
  without the flag column (``-l`` adds it back). TASK may contain blanks (QEMU's vCPU threads are ``CPU 0/KVM``).

Timestamps are ``SEC.FRACTION`` (6 digits by default, 9 with ns clocks); a counter clock's bare integer is taken as
ns. Events (format strings from the tracepoints):

* ``kvm_vm_set_mem_attributes`` ``"%#016llx -- %#016llx [0x%lx]"`` (6.17+, L. Merwick): start gfn, end gfn,
  attributes. **The end gfn is exclusive**: ``kvm_vm_ioctl_set_mem_attributes()`` computes ``end = (address +
  size) >> PAGE_SHIFT`` and ``kvm_vm_set_mem_attributes()`` works on ``[start, end)`` ("to help document that end is
  exclusive", S. Christopherson). Private iff ``attributes & 0x8`` (KVM_MEMORY_ATTRIBUTE_PRIVATE), else shared.
  C's ``%#016llx`` prints zero as ``0000000000000000`` (no ``0x``); both forms are accepted. The later in-place
  conversion tree's ``"%s "`` prefix (a word before the start gfn) is accepted and ignored;
* ``kvm_vmgexit_msr_protocol_enter`` ``"vcpu %u, ghcb_gpa %016llx"``: the GHCB MSR value. When its low 12 bits
  are 0x014 (SNP Page State Change request; amd-snp-arch.md §9) it is a conversion of one 4K page: GFN = bits
  12-51, operation = bits 52-55 (1 private, 2 shared; any other operation is a bad line). Other MSR requests
  (CPUID, GHCB GPA registration ...) are informational;
* ``kvm_hypercall`` ``"nr 0x%lx a0 0x%lx a1 0x%lx a2 0x%lx a3 0x%lx"``: with nr 0xc (KVM_HC_MAP_GPA_RANGE) a
  conversion of ``a1`` 4K pages at GPA ``a0``, private iff ``a2 & 0x10`` (KVM_MAP_GPA_RANGE_ENCRYPTED). Only
  emulated VMMCALLs emit it (SEV live-migration notifications); SNP PSCs do not. Other hypercalls are informational;
* informational, counted by name: ``kvm_rmp_fault``, ``kvm_page_fault``, ``kvm_mmu_spte_requested``,
  ``kvm_tdp_mmu_spte_changed``, ``kvm_vmgexit_enter``, ``kvm_vmgexit_exit``, ``kvm_vmgexit_msr_protocol_exit``,
  ``kvm_userspace_exit``, ``kvm_exit`` (their fields vary across kernels and are not checked);
* ``tracing_mark_write`` (text written to ``trace_marker``): QEMU built with the ``ftrace`` trace backend writes each
  of its trace events there as ``"NAME " fmt`` (``scripts/tracetool/backend/ftrace.py``). The SNP launch events
  (``kvm_sev_snp_launch_start`` / ``_update`` / ``_finish``, :mod:`snpsim.traces.launch`) are read as in a QEMU
  trace: this is the only way the launch reaches an ftrace trace, since KVM has no tracepoint for it. QEMU's
  conversion events there are informational (the kernel's tracepoints are authoritative); other marker text is
  counted as an unknown ``tracing_mark_write``;
* any other event: skipped and counted by name in ``ParseStats.skipped_unknown``.

**Duplicates.** One MSR-protocol PSC shows up as ``kvm_vmgexit_msr_protocol_enter`` and, after the exit to QEMU,
as ``kvm_vm_set_mem_attributes``; GHCB-protocol PSCs only as the latter (their ranges are in guest memory, not in
the trace). ``kvm_vm_set_mem_attributes`` is authoritative: if the trace has any such line, only those are
replayed and MSR PSCs / ``kvm_hypercall`` are counted as informational. A trace without it (older kernels)
replays the MSR PSCs and ``kvm_hypercall`` nr 0xc instead (``ParseStats.secondary_used``; GHCB-protocol PSCs are
then invisible). Decided by a look-ahead over the whole text before parsing.

**Launch set-up.** If tracing started before QEMU created the VM's memslots, the trace begins with QEMU's initial
set-everything-private calls (guest-workloads.md §1, QPRIV) and the private marking before each launch update
(``KVM_SEV_SNP_LAUNCH_UPDATE`` requires it). When the trace shows the launch (the markers above),
``kvm_vm_set_mem_attributes`` lines between a launch start or update and the launch finish are the VMM's set-up,
not guest conversions: they are counted as :data:`LAUNCH_SETUP` and not replayed. The window also ends at the first
other kernel event (a vCPU runs only after the launch finish), so a trace cut before the finish loses nothing.
Without launch markers they cannot be told apart and are replayed like any other line (to private: mostly no-ops,
RAM starts private).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO

from snpsim.traces._common import (
    BadLine,
    Clock,
    Source,
    Template,
    check_range,
    ensure_text,
    lines_containing,
    open_source,
    quote,
    run_lines,
    seconds_to_ns,
    source_name,
)
from snpsim.traces.launch import LAUNCH_EVENTS, LaunchState
from snpsim.traces.model import PAGE_SHIFT, ParseStats, TraceConversion

__all__ = [
    "GHCB_MSR_PSC_REQ",
    "INFORMATIONAL",
    "KVM_HC_MAP_GPA_RANGE",
    "KVM_MEMORY_ATTRIBUTE_PRIVATE",
    "SET_MEM_ATTRIBUTES",
    "parse_ftrace",
]

SET_MEM_ATTRIBUTES = "kvm_vm_set_mem_attributes"
MSR_PROTOCOL_ENTER = "kvm_vmgexit_msr_protocol_enter"
HYPERCALL = "kvm_hypercall"
#: KVM_MEMORY_ATTRIBUTE_PRIVATE (include/uapi/linux/kvm.h).
KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3
#: GHCB MSR protocol: Page State Change request (GHCBInfo 0x014) and its fields (amd-snp-arch.md §9).
GHCB_MSR_INFO_MASK = 0xFFF
GHCB_MSR_PSC_REQ = 0x014
GHCB_MSR_PSC_GFN_MASK = (1 << 40) - 1
GHCB_MSR_PSC_OP_SHIFT = 52
SNP_PAGE_STATE_PRIVATE = 1
SNP_PAGE_STATE_SHARED = 2
#: KVM_HC_MAP_GPA_RANGE hypercall number and its ``a2`` private bit (asm/kvm_para.h).
KVM_HC_MAP_GPA_RANGE = 12
KVM_MAP_GPA_RANGE_ENCRYPTED = 1 << 4
#: Recognised events that never carry a conversion.
INFORMATIONAL = frozenset(
    {
        "kvm_rmp_fault",
        "kvm_page_fault",
        "kvm_mmu_spte_requested",
        "kvm_tdp_mmu_spte_changed",
        "kvm_vmgexit_enter",
        "kvm_vmgexit_exit",
        "kvm_vmgexit_msr_protocol_exit",
        "kvm_userspace_exit",
        "kvm_exit",
    }
)
LOST_EVENTS = "<lost events>"
#: The duplicate policy's look-ahead: a non-comment line containing it means the trace has the authoritative event.
DUPLICATE_MARKERS = (f" {SET_MEM_ATTRIBUTES}:",)
#: ``trace_marker`` writes (QEMU's ``ftrace`` trace backend) and the QEMU conversion events they may carry.
MARKER = "tracing_mark_write"
QEMU_CONVERSION_EVENTS = frozenset({"kvm_convert_memory", "kvm_memory_fault", "kvm_hc_map_gpa_range"})
#: Informational counter name of attribute changes made by the VMM while it launches the guest.
LAUNCH_SETUP = "<launch set-up attributes>"

_T_ATTRS = Template(SET_MEM_ATTRIBUTES, "{start:#h} -- {end:#h} [0x{attributes:h}]")
_T_MSR = Template(MSR_PROTOCOL_ENTER, "vcpu {vcpu:u}, ghcb_gpa {ghcb_gpa:h}")
_T_HC = Template(HYPERCALL, "nr {nr:0xh} a0 {a0:0xh} a1 {a1:0xh} a2 {a2:0xh} a3 {a3:0xh}")

_EVENT_LINE = re.compile(
    r"[ \t]*(?P<comm>.+?)-(?P<pid>[0-9]+)[ \t]+(?:\([ \t]*(?:[0-9]+|-+)\)[ \t]+)?\[(?P<cpu>[0-9]+)\][ \t]+"
    r"(?:\S+[ \t]+)?(?P<sec>[0-9]{1,30})(?:\.(?P<frac>[0-9]{1,30}))?:[ \t]+(?P<event>\w+):(?P<fields>.*)",
    re.ASCII | re.DOTALL,
)
_HEADER = re.compile(r"cpus=[0-9]+|version[ \t]*=[ \t]*\S+|CPU[ \t]*[0-9]+ is empty", re.ASCII)
_LOST = re.compile(r"CPU:[0-9]+ \[LOST [0-9]+ EVENTS\]", re.ASCII)
_TAG = re.compile(r"[ \t]*\S+[ \t]+(?=\S+[ \t]+--[ \t])", re.ASCII)
_MARKED_EVENT = re.compile(r"[ \t]*([A-Za-z_][A-Za-z0-9_]*)(?:[ \t]+(.*?))?[ \t]*", re.ASCII | re.DOTALL)


def _ns(sec: str, frac: str | None) -> int:
    return seconds_to_ns(sec, frac) if frac is not None else int(sec)


class _FtraceParser:
    def __init__(self, source: str, stats: ParseStats, lenient: bool, use_secondary: bool) -> None:
        self.source = source
        self.stats = stats
        self.use_secondary = use_secondary
        self.clock = Clock(stats, lenient)
        self.launch = LaunchState(source, stats, self.clock)

    def line(self, raw: str, lineno: int) -> TraceConversion | None:
        m = _EVENT_LINE.fullmatch(raw.rstrip("\r\n"))
        if m is None or raw[:1] == "#":
            line = raw.strip()
            if not line or line[0] == "#" or _HEADER.fullmatch(line):
                return None
            if _LOST.fullmatch(line):
                self.stats.informational[LOST_EVENTS] += 1
                return None
            raise BadLine(f"unrecognised line {quote(line)} (not an ftrace event line)")
        name = m.group("event")
        ts = _ns(m.group("sec"), m.group("frac"))
        fields = m.group("fields")
        secondary = True
        if self.launch.in_launch and name != SET_MEM_ATTRIBUTES and name != MARKER:
            self.launch.in_launch = False  # a vCPU event: the guest runs, so the launch is over
        if name == SET_MEM_ATTRIBUTES:
            tag = _TAG.match(fields)
            start, end, attributes = _T_ATTRS.parse(fields[tag.end() :] if tag is not None else fields)
            if end < start:
                raise BadLine(f"end gfn {end:#x} before start gfn {start:#x} in {name}")
            gpa, size = start << PAGE_SHIFT, (end - start) << PAGE_SHIFT
            to_private = bool(attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE)
            secondary = False
            if self.launch.in_launch:  # QEMU's kvm_set_memory_attributes_private() while it launches the guest
                check_range(name, gpa, size)
                self.info(LAUNCH_SETUP, ts, lineno)
                return None
        elif name == MSR_PROTOCOL_ENTER:
            _vcpu, val = _T_MSR.parse(fields)
            if val & GHCB_MSR_INFO_MASK != GHCB_MSR_PSC_REQ:
                self.info(name, ts, lineno)
                return None
            op = (val >> GHCB_MSR_PSC_OP_SHIFT) & 0xF
            if op == SNP_PAGE_STATE_PRIVATE:
                to_private = True
            elif op == SNP_PAGE_STATE_SHARED:
                to_private = False
            else:
                raise BadLine(f"PSC request with operation {op} (expected 1 private or 2 shared) in {name}")
            gpa, size = ((val >> PAGE_SHIFT) & GHCB_MSR_PSC_GFN_MASK) << PAGE_SHIFT, 1 << PAGE_SHIFT
        elif name == HYPERCALL:
            nr, a0, a1, a2, _a3 = _T_HC.parse(fields)
            if nr != KVM_HC_MAP_GPA_RANGE:
                self.info(name, ts, lineno)
                return None
            if a1 == 0:
                raise BadLine(f"zero size (a1 = 0 pages) in {name}")
            gpa, size = a0, a1 << PAGE_SHIFT
            to_private = bool(a2 & KVM_MAP_GPA_RANGE_ENCRYPTED)
        elif name in INFORMATIONAL:
            self.info(name, ts, lineno)
            return None
        elif name == MARKER:
            self.marker(fields, ts, lineno)
            return None
        else:
            self.clock.time(ts, lineno)
            self.stats.unknown(name)
            return None
        check_range(name, gpa, size)
        t = self.clock.time(ts, lineno)
        if secondary and not self.use_secondary:
            self.stats.informational[name] += 1
            return None
        return TraceConversion(t, gpa, size, to_private, self.source, lineno, name)

    def marker(self, text: str, ts: int, lineno: int) -> None:
        """A ``trace_marker`` write: QEMU's ``ftrace`` trace backend writes ``"NAME " fmt``. The launch events are
        kept as in a QEMU trace; QEMU's conversion events are informational (the kernel's tracepoints in the same
        trace are authoritative); any other text is an unknown ``tracing_mark_write``."""
        m = _MARKED_EVENT.fullmatch(text)
        name = m.group(1) if m is not None else ""
        if name in LAUNCH_EVENTS and m is not None:
            self.launch.event(name, m.group(2) or "", ts, lineno)
        elif name in QEMU_CONVERSION_EVENTS:
            self.info(name, ts, lineno)
        else:
            self.clock.time(ts, lineno)
            self.stats.unknown(MARKER)

    def info(self, name: str, ts: int, lineno: int) -> None:
        self.clock.time(ts, lineno)
        self.stats.informational[name] += 1


def parse_open(
    f: IO[str], source: str, *, lenient: bool = False, stats: ParseStats | None = None
) -> Iterator[TraceConversion]:
    """Parse an already-open seekable text file (see :func:`parse_ftrace`)."""
    stats = stats if stats is not None else ParseStats()
    stats.source, stats.format = source, "ftrace"
    use_secondary = not lines_containing(f, DUPLICATE_MARKERS[0])
    stats.secondary_used = use_secondary
    parser = _FtraceParser(source, stats, lenient, use_secondary)
    yield from run_lines(f, parser.line, source, lenient, stats)


def parse_ftrace(src: Source, *, lenient: bool = False, stats: ParseStats | None = None) -> Iterator[TraceConversion]:
    """Stream the conversions of an ftrace / ``trace-cmd report`` text (a path or a text file), in file order.

    Strict mode (default) raises :class:`~snpsim.traces.model.TraceError` at the first bad line; ``lenient=True``
    skips bad lines and counts them in ``stats``.
    """
    ensure_text(src)
    name = source_name(src)
    with open_source(src) as f:
        yield from parse_open(f, name, lenient=lenient, stats=stats)
