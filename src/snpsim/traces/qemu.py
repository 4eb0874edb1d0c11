"""Parser for QEMU trace output of guest memory conversions and of the guest's launch (the ``log`` trace backend).

Models the text QEMU writes with ``-trace kvm_convert_memory -trace kvm_memory_fault -trace
kvm_hc_map_gpa_range -trace 'kvm_sev_snp_launch_*'`` (``-D file`` or stderr), from the format strings in QEMU
``accel/kvm/trace-events`` and ``target/i386/kvm/trace-events`` (``shared/reference/guest-workloads.md`` §1, §4)::

    kvm_convert_memory(uint64_t start, uint64_t size, const char *msg)  "start 0x%" PRIx64 " size 0x%" PRIx64 " %s"
    kvm_memory_fault(uint64_t start, uint64_t size, uint64_t flags)     "start 0x%" PRIx64 " size 0x%" PRIx64
                                                                        " flags 0x%" PRIx64
    kvm_hc_map_gpa_range(uint64_t gpa, uint64_t size, uint64_t attributes, uint64_t flags)
                                                "gpa 0x%" PRIx64 " size 0x%" PRIx64 " attributes 0x%" PRIx64
                                                " flags 0x%" PRIx64

and the launch events of ``target/i386/trace-events`` (``kvm_sev_snp_launch_start`` / ``_update`` / ``_finish``;
their formats, and what the launch records mean, are in :mod:`snpsim.traces.launch`).

Line forms accepted:

* ``kvm_convert_memory start 0x4000000 size 0x1000 shared_to_private`` (the log backend; ``msg`` is
  ``shared_to_private`` or ``private_to_shared``);
* ``PID@SEC.USEC:kvm_convert_memory ...``: the log backend with timestamps on (the tracetool log backend prints
  ``"%d@%zu.%06zu:"``, thread id and ``gettimeofday()``; blanks after the colon are tolerated);
* ``YYYY-MM-DDTHH:MM:SS.ffffffZ `` in front of any line: the ISO-8601 context of newer QEMU message output
  (``-msg timestamp=on``) [I: best effort], taken as the line's time;
* two warnings of QEMU development trees (not in upstream QEMU: it traces ``kvm_memory_fault`` instead), with or
  without the ``qemu-system-x86_64: warning: `` prefix: ``memory fault: GPA 0x4000000 size 0x1000 flags 0x8``
  (KVM_EXIT_MEMORY_FAULT; the real log line quoted in the reference, KAL24, has a trace event after it on the
  same line, which is parsed as any other) and ``kvm_create_gmemfd: created memfd: N, size: S, flags: F`` (a
  guest_memfd of ``S`` bytes, kept in ``ParseStats.guest_memfds``). Other ``PROGRAM: ...`` /
  ``PROGRAM(ctx): ...`` lines (QEMU's error_report/warn_report output) are counted as informational messages,
  unless what follows the prefix is one of the known events;
* other ``name args`` lines are trace events this parser does not know (``kvm_run_exit ...``): skipped and
  counted by name; blank lines and ``#`` comment lines (our extension, for annotated example files) are ignored.

Meaning (QEMU ``kvm_convert_memory()``, ``kvm_handle_hc_map_gpa_range()``, ``kvm_cpu_exec()``):

* ``kvm_convert_memory``: the conversion QEMU performs (KVM_SET_MEMORY_ATTRIBUTES + discard/punch-hole);
* ``kvm_memory_fault`` and the memory fault warning: KVM_EXIT_MEMORY_FAULT, an implicit conversion;
  ``flags & 0x8`` (KVM_MEMORY_EXIT_FLAG_PRIVATE) = to private, else to shared;
* ``kvm_hc_map_gpa_range``: KVM_EXIT_HYPERCALL with nr KVM_HC_MAP_GPA_RANGE; ``size`` is already in bytes
  (``args[1] * TARGET_PAGE_SIZE``) and ``attributes`` is the raw ``args[2]``, so to private iff
  ``attributes & 0x10`` (KVM_MAP_GPA_RANGE_ENCRYPTED = ENC_STAT(1) = 1 << 4; QEMU passes exactly
  ``attributes & KVM_MAP_GPA_RANGE_ENCRYPTED`` to kvm_convert_memory). Bits 0-1 are the PAGE_SZ hint and are
  ignored; bit 3 (0x8, the value of KVM_MEMORY_ATTRIBUTE_PRIVATE) does *not* mean private here;
* ``kvm_sev_snp_launch_update``: kept in ``ParseStats.launch`` (a :class:`~snpsim.traces.model.TraceLaunchUpdate`),
  never a conversion; launch start and finish are informational.

**Duplicates.** QEMU reports one conversion up to three times: ``kvm_hc_map_gpa_range`` or ``kvm_memory_fault`` /
the memory fault warning (the exit) and then ``kvm_convert_memory`` (the conversion it causes).
``kvm_convert_memory`` is authoritative: if the trace contains any ``kvm_convert_memory`` line, only those are
replayed and the others are counted in ``ParseStats.informational``. Only a trace without any
``kvm_convert_memory`` line (the event was not enabled) replays ``kvm_hc_map_gpa_range`` and the implicit
conversions instead (``ParseStats.secondary_used``): ``kvm_memory_fault`` if the trace has it, else the memory
fault warnings. The decision is made by a look-ahead over the whole text before parsing (a substring search,
stopping once both events were seen).

**Time.** A line's time is its timestamp (``PID@SEC.USEC:`` or ISO prefix) in ns. A line without one takes the
previous timestamp; before the first timestamp (and in traces without any) it is ``line number *
line_spacing_ns`` (:data:`DEFAULT_LINE_SPACING_NS` = 1 us per line), which keeps order and rough spacing.
Timestamps going backwards are an error (strict) or are clamped (lenient).
"""

from __future__ import annotations

import calendar
import datetime
import re
from collections.abc import Callable, Iterator
from typing import IO, Any

from snpsim.traces._common import (
    DEFAULT_LINE_SPACING_NS,
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
from snpsim.traces.launch import LAUNCH_EVENTS, LaunchState, match_gmemfd
from snpsim.traces.model import ParseStats, TraceConversion

__all__ = [
    "CONVERT",
    "DEFAULT_LINE_SPACING_NS",
    "HC_MAP_GPA_RANGE",
    "KVM_MAP_GPA_RANGE_ENCRYPTED",
    "KVM_MEMORY_EXIT_FLAG_PRIVATE",
    "MEMORY_FAULT",
    "parse_qemu",
]

CONVERT = "kvm_convert_memory"
MEMORY_FAULT = "kvm_memory_fault"
HC_MAP_GPA_RANGE = "kvm_hc_map_gpa_range"
#: ``struct kvm_run.memory_fault.flags`` bit: the faulting access was private (include/uapi/linux/kvm.h).
KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3
#: KVM_HC_MAP_GPA_RANGE ``args[2]``: ENC_STAT(1) = the range becomes encrypted/private (asm/kvm_para.h).
KVM_MAP_GPA_RANGE_ENCRYPTED = 1 << 4
#: ``kvm_convert_memory``'s ``msg`` argument.
SHARED_TO_PRIVATE = "shared_to_private"
PRIVATE_TO_SHARED = "private_to_shared"
#: Informational counter names for non-event lines.
MESSAGE = "<qemu message>"
FAULT_WARNING = "<memory fault warning>"

#: The duplicate policy's look-ahead: a non-comment line containing ``DUPLICATE_MARKERS[0]`` means the trace has
#: ``kvm_convert_memory`` (secondary events are not replayed), ``[1]`` that it has ``kvm_memory_fault`` (memory
#: fault warnings are not replayed).
DUPLICATE_MARKERS = (CONVERT + " ", MEMORY_FAULT + " ")

_T_CONVERT = Template(CONVERT, "start {start:0xh} size {size:0xh} {msg:w}")
_T_FAULT = Template(MEMORY_FAULT, "start {start:0xh} size {size:0xh} flags {flags:0xh}")
_T_HC = Template(HC_MAP_GPA_RANGE, "gpa {gpa:0xh} size {size:0xh} attributes {attributes:0xh} flags {flags:0xh}")
_T_FAULT_WARNING = Template("memory fault warning", "GPA {gpa:0xh} size {size:0xh} flags {flags:0xh}")
_KNOWN = frozenset({CONVERT, MEMORY_FAULT, HC_MAP_GPA_RANGE, *LAUNCH_EVENTS})

_PIDTS = re.compile(r"([0-9]+)@([0-9]{1,30})\.([0-9]{1,30}):[ \t]*", re.ASCII)
_ISO = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,30}))?(Z|[+-][0-9]{2}:?[0-9]{2})?"
    r"[ \t]+",
    re.ASCII,
)
_PROG = re.compile(r"([A-Za-z0-9_.+-]+)(?:\([^)]*\))?:[ \t]+", re.ASCII)
_EVENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:[ \t]+(.*))?", re.ASCII | re.DOTALL)
_FAST = re.compile(
    r"(?:([0-9]+)@([0-9]{1,30})\.([0-9]{1,30}):[ \t]*)?([A-Za-z_][A-Za-z0-9_]*)(?:[ \t]+(.*))?", re.ASCII | re.DOTALL
)
_SEVERITY = re.compile(r"(?:warning|error|info|note):[ \t]+", re.ASCII | re.IGNORECASE)
_FAULT_WARNING = re.compile(r"(?i:memory fault):[ \t]*(.*)", re.ASCII | re.DOTALL)
#: Whitespace-separated tokens of the memory fault warning's fields (``GPA x size y flags z``).
_FAULT_FIELDS = 6


def _iso_ns(m: re.Match[str]) -> int:
    """ns since the epoch of an ISO-8601 prefix (``Z``, ``+HH:MM`` or no zone = UTC); a leap second 60 is 59."""
    y, mo, d, h, mi, s = (int(m.group(i)) for i in range(1, 7))
    try:
        when = datetime.datetime(y, mo, d, h, mi, min(s, 59), tzinfo=datetime.UTC)
    except ValueError:
        raise BadLine(f"bad timestamp {quote(m.group(0).strip())}") from None
    secs = calendar.timegm(when.utctimetuple())
    tz = m.group(8)
    if tz and tz != "Z":
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        secs -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    if secs < 0:
        raise BadLine(f"timestamp {quote(m.group(0).strip())} before 1970")
    return seconds_to_ns(str(secs), m.group(7) or "")


class _QemuParser:
    """State of one pass: the clock, the duplicate policy and the counters."""

    def __init__(
        self, source: str, stats: ParseStats, lenient: bool, use_secondary: bool, use_warnings: bool, spacing: int
    ) -> None:
        self.source = source
        self.stats = stats
        self.use_secondary = use_secondary
        #: replay memory fault warnings (only when neither kvm_convert_memory nor kvm_memory_fault is traced)
        self.use_warnings = use_warnings
        self.clock = Clock(stats, lenient, spacing)
        self.launch = LaunchState(source, stats, self.clock)

    def line(self, raw: str, lineno: int) -> TraceConversion | None:
        line = raw.strip()
        if not line or line[0] == "#":
            return None
        m = _FAST.fullmatch(line)
        if m is not None and m.group(4) != "memory":  # the common case: [PID@SEC.USEC:]name fields
            sec = m.group(2)
            ts = seconds_to_ns(sec, m.group(3)) if sec is not None else None
            return self.event(m.group(4), m.group(5) or "", ts, lineno)
        return self.slow_line(line, lineno)

    def slow_line(self, line: str, lineno: int) -> TraceConversion | None:
        ts: int | None = None
        pos = 0
        if line[0].isdigit():
            m = _ISO.match(line)
            if m is not None:
                ts = _iso_ns(m)
                pos = m.end()
        m = _PIDTS.match(line, pos)
        if m is not None:
            ts = seconds_to_ns(m.group(2), m.group(3))
            pos = m.end()
        handled, conv = self.warning(line[pos:], ts, lineno)  # a warning without the "PROGRAM: warning: " prefix
        if handled:
            return conv
        if m is None:
            m = _PROG.match(line, pos)
            if m is not None:
                if m.group(1) in _KNOWN:
                    raise BadLine(f"malformed {m.group(1)} line: unexpected ':' after the event name")
                return self.message(line[m.end() :], ts, lineno)
        m = _EVENT.fullmatch(line, pos)
        if m is None:
            raise BadLine(f"unrecognised line {quote(line[pos:])} (not a QEMU trace event)")
        return self.event(m.group(1), m.group(2) or "", ts, lineno)

    def message(self, text: str, ts: int | None, lineno: int) -> TraceConversion | None:
        """A ``PROGRAM: ...`` line: a known warning (maybe with an event after it), an event, or a message."""
        m = _SEVERITY.match(text)
        if m is not None:
            text = text[m.end() :]
        handled, conv = self.warning(text, ts, lineno)
        if handled:
            return conv
        e = _EVENT.fullmatch(text)
        if (e is not None and e.group(1) in _KNOWN) or _PIDTS.match(text) is not None:
            return self.embedded(text, ts, lineno)
        if ts is not None:  # a message's own timestamp still has to keep the order; it never gets a made-up one
            self.clock.time(ts, lineno)
        self.stats.informational[MESSAGE] += 1
        return None

    def warning(self, text: str, ts: int | None, lineno: int) -> tuple[bool, TraceConversion | None]:
        """``(True, conversion or None)`` for a memory fault or guest_memfd warning, else ``(False, None)``."""
        w = _FAULT_WARNING.match(text)
        if w is not None:
            return True, self.fault_warning(w.group(1), ts, lineno)
        created = match_gmemfd(text)
        if created is not None:
            self.launch.gmemfd(created, ts, lineno)
            return True, None
        return False, None

    def fault_warning(self, text: str, ts: int | None, lineno: int) -> TraceConversion | None:
        """``GPA x size y flags z [event]``: QEMU's KVM_EXIT_MEMORY_FAULT warning, maybe with an event after it.

        A secondary conversion (``flags & 0x8`` = to private): replayed only when the trace has neither
        ``kvm_convert_memory`` nor ``kvm_memory_fault`` (which would carry the same fault), and never when the event
        after it on the same line is replayed (one conversion per line)."""
        tokens = text.split(None, _FAULT_FIELDS)
        gpa, size, flags = _T_FAULT_WARNING.parse(" ".join(tokens[:_FAULT_FIELDS]))
        check_range("memory fault warning", gpa, size)
        conv = self.embedded(tokens[_FAULT_FIELDS], ts, lineno) if len(tokens) > _FAULT_FIELDS else None
        if conv is not None or not self.use_warnings:
            if conv is None and ts is not None:  # its own timestamp still has to keep the order
                self.clock.time(ts, lineno)
            self.stats.informational[FAULT_WARNING] += 1
            return conv
        t = self.clock.time(ts, lineno)
        return TraceConversion(
            t, gpa, size, bool(flags & KVM_MEMORY_EXIT_FLAG_PRIVATE), self.source, lineno, FAULT_WARNING
        )

    def embedded(self, text: str, ts: int | None, lineno: int) -> TraceConversion | None:
        m = _PIDTS.match(text)
        if m is not None:
            ts = seconds_to_ns(m.group(2), m.group(3))
            text = text[m.end() :]
        e = _EVENT.fullmatch(text)
        if e is None:
            raise BadLine(f"unrecognised text {quote(text)} after a QEMU message prefix")
        return self.event(e.group(1), e.group(2) or "", ts, lineno)

    def event(self, name: str, fields: str, ts: int | None, lineno: int) -> TraceConversion | None:
        decoder = DECODERS.get(name)
        if decoder is not None:
            template, decide = decoder
            gpa, size, to_private, secondary = decide(template.parse(fields))
            return self.accept(name, gpa, size, to_private, secondary, ts, lineno)
        if name in LAUNCH_EVENTS:
            self.launch.event(name, fields, ts, lineno)
            return None
        self.clock.time(ts, lineno)
        self.stats.unknown(name)
        return None

    def accept(
        self, name: str, gpa: int, size: int, to_private: bool, secondary: bool, ts: int | None, lineno: int
    ) -> TraceConversion | None:
        """A conversion event's decoded fields: checked, timed, and replayed or (a secondary event the duplicate
        policy does not replay) counted. Raises BadLine before changing any state."""
        check_range(name, gpa, size)
        t = self.clock.time(ts, lineno)
        if secondary and not self.use_secondary:
            self.stats.informational[name] += 1
            return None
        return TraceConversion(t, gpa, size, to_private, self.source, lineno, name)


def _decide_convert(values: tuple[Any, ...]) -> tuple[int, int, bool, bool]:
    gpa, size, msg = values
    if msg == SHARED_TO_PRIVATE:
        return gpa, size, True, False
    if msg == PRIVATE_TO_SHARED:
        return gpa, size, False, False
    raise BadLine(f"bad direction {quote(str(msg))} in {CONVERT} (expected {SHARED_TO_PRIVATE} or {PRIVATE_TO_SHARED})")


def _decide_fault(values: tuple[Any, ...]) -> tuple[int, int, bool, bool]:
    gpa, size, flags = values
    return gpa, size, bool(flags & KVM_MEMORY_EXIT_FLAG_PRIVATE), True


def _decide_hc(values: tuple[Any, ...]) -> tuple[int, int, bool, bool]:
    gpa, size, attributes, _flags = values
    return gpa, size, bool(attributes & KVM_MAP_GPA_RANGE_ENCRYPTED), True


#: The conversion events: their fields' template and what the values mean, ``(gpa, size, to_private, secondary)``
#: (raises BadLine for a bad direction).
DECODERS: dict[str, tuple[Template, Callable[[tuple[Any, ...]], tuple[int, int, bool, bool]]]] = {
    CONVERT: (_T_CONVERT, _decide_convert),
    MEMORY_FAULT: (_T_FAULT, _decide_fault),
    HC_MAP_GPA_RANGE: (_T_HC, _decide_hc),
}
#: A whole line that is one of the :data:`DECODERS` events with an optional ``PID@SEC.USEC:`` prefix and only blanks
#: around (the common case, matched in one go by :mod:`snpsim.traces.scan`): groups ``pid, sec, usec``, then each
#: event's name and field groups in :data:`DECODERS` order. A line it matches means what :meth:`_QemuParser.line`
#: makes of it, unless decoding raises BadLine (e.g. a Unicode blank ``str.strip()`` would remove): then that
#: method decides.
FAST_LINE = re.compile(
    r"[ \t]*(?:([0-9]+)@([0-9]{1,30})\.([0-9]{1,30}):[ \t]*)?(?:"
    + "|".join(rf"({name})[ \t]+(?:{t.pattern})" for name, (t, _) in DECODERS.items())
    + r")[ \t\r\n]*",
    re.ASCII,
)


def parse_open(
    f: IO[str],
    source: str,
    *,
    lenient: bool = False,
    stats: ParseStats | None = None,
    line_spacing_ns: int = DEFAULT_LINE_SPACING_NS,
) -> Iterator[TraceConversion]:
    """Parse an already-open seekable text file (see :func:`parse_qemu`)."""
    stats = stats if stats is not None else ParseStats()
    stats.source, stats.format = source, "qemu"
    use_secondary = not lines_containing(f, DUPLICATE_MARKERS[0])  # stops at the first hit
    stats.secondary_used = use_secondary
    use_warnings = use_secondary and not lines_containing(f, DUPLICATE_MARKERS[1])
    parser = _QemuParser(source, stats, lenient, use_secondary, use_warnings, line_spacing_ns)
    yield from run_lines(f, parser.line, source, lenient, stats)


def parse_qemu(
    src: Source,
    *,
    lenient: bool = False,
    stats: ParseStats | None = None,
    line_spacing_ns: int = DEFAULT_LINE_SPACING_NS,
) -> Iterator[TraceConversion]:
    """Stream the conversions of a QEMU trace log (a path or a text file), in file order.

    Strict mode (default) raises :class:`~snpsim.traces.model.TraceError` (``file:line: reason``) at the first bad
    line; ``lenient=True`` skips bad lines and counts them in ``stats`` (pass a :class:`ParseStats` to read the
    counts; it is complete when the generator is exhausted).
    """
    ensure_text(src)
    name = source_name(src)
    with open_source(src) as f:
        yield from parse_open(f, name, lenient=lenient, stats=stats, line_spacing_ns=line_spacing_ns)
