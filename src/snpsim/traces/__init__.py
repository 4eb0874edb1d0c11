"""Trace import/export: replay real host traces of SEV-SNP guest memory conversions in the simulator.

Reads the two text traces a KVM host gives (``shared/reference/guest-workloads.md`` §4): QEMU's ``log`` trace
backend output of ``kvm_convert_memory`` / ``kvm_memory_fault`` / ``kvm_hc_map_gpa_range``
(:mod:`snpsim.traces.qemu`), and the kernel's ftrace / ``trace-cmd report`` text of ``kvm_vm_set_mem_attributes``,
``kvm_vmgexit_msr_protocol_enter``, ``kvm_hypercall`` and related KVM events (:mod:`snpsim.traces.ftrace`). Both
become a stream of :class:`TraceConversion`; the guest's launch (QEMU's ``kvm_sev_snp_launch_*`` events and its
guest_memfd warnings, :mod:`snpsim.traces.launch`) is kept in the pass's :class:`ParseStats` (``launch``,
``guest_memfds``). :func:`to_guest_events` turns both into the guest layer's ``Timed(Conversion)`` events and the
``SnpLaunchUpdate`` list QEMU hands to KVM (:mod:`snpsim.traces.replay`), and :mod:`snpsim.traces.export` writes
conversions and a launch back out in either format.

Usage::

    reader = snpsim.traces.parse("boot.log")          # format="auto" | "qemu" | "ftrace", lenient=False
    conversions = list(reader)                         # or iterate lazily: constant memory
    reader.format, reader.stats.events, reader.stats.skipped_unknown, reader.stats.launch
    memory_bytes, events = snpsim.traces.to_guest_events(conversions)
    guest = snpsim.traces.to_guest_events(reader)      # guest.memory_bytes, .events, .launch, .memory_from
    with snpsim.traces.scan("boot.log") as arrays:     # one pass: conversions spooled as numpy records
        arrays.stats, arrays.gfn, arrays.chunks(), snpsim.traces.to_guest_events(arrays)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO, Literal

from snpsim.traces import ftrace as _ftrace
from snpsim.traces import qemu as _qemu
from snpsim.traces._common import (
    DEFAULT_LINE_SPACING_NS,
    Source,
    ensure_text,
    first_lines,
    open_source,
    source_name,
)
from snpsim.traces.export import write_ftrace, write_qemu
from snpsim.traces.ftrace import parse_ftrace
from snpsim.traces.model import (
    MAX_GPA,
    PAGE_SIZE,
    ParseStats,
    TraceConversion,
    TraceError,
    TraceGuestMemfd,
    TraceLaunchUpdate,
)
from snpsim.traces.qemu import parse_qemu
from snpsim.traces.replay import GuestTrace, infer_memory_bytes, to_guest_events
from snpsim.traces.scan import TraceArrays, scan

__all__ = [
    "DEFAULT_LINE_SPACING_NS",
    "FORMATS",
    "MAX_GPA",
    "PAGE_SIZE",
    "GuestTrace",
    "ParseStats",
    "TraceArrays",
    "TraceConversion",
    "TraceError",
    "TraceGuestMemfd",
    "TraceLaunchUpdate",
    "TraceReader",
    "detect_format",
    "infer_memory_bytes",
    "parse",
    "parse_ftrace",
    "parse_qemu",
    "scan",
    "to_guest_events",
    "write_ftrace",
    "write_qemu",
]

Format = Literal["auto", "qemu", "ftrace"]
FORMATS = ("auto", "qemu", "ftrace")
#: Non-blank lines looked at by the format detection.
DETECT_LINES = 200

_QEMU_START = re.compile(
    r"[0-9]+@[0-9]+\.[0-9]+:|[0-9]{4}-[0-9]{2}-[0-9]{2}T|[A-Za-z0-9_.+-]+(?:\([^)]*\))?:[ \t]|"
    r"[A-Za-z_][A-Za-z0-9_]*(?:[ \t]|$)",
    re.ASCII,
)


def _detect(lines: list[str]) -> str | None:
    """``"ftrace"``, ``"qemu"`` or None (nothing recognisable) from the first non-blank lines."""
    for raw in lines:
        line = raw.strip()
        if line.startswith("# tracer:"):
            return "ftrace"
        if line.startswith("#"):
            continue
        if _ftrace._HEADER.fullmatch(line) or _ftrace._LOST.fullmatch(line):
            return "ftrace"
        if _ftrace._EVENT_LINE.fullmatch(raw.rstrip("\r\n")):
            return "ftrace"
        if _QEMU_START.match(line):
            return "qemu"
    return None


def detect_format(src: Source) -> str:
    """``"qemu"`` or ``"ftrace"``: the format of a trace, from its first non-blank, non-comment lines.

    ftrace is recognised by its ``# tracer:`` header, trace-cmd's ``cpus=`` / ``version =`` header or an event line
    ``TASK-PID [CPU] ... TIMESTAMP: EVENT:``; QEMU by a ``PID@SEC.USEC:`` / ISO timestamp, a ``PROGRAM:`` message or a
    ``name args`` trace event line. A text with only blank and comment lines is ``"qemu"`` (it has no events
    either way). Raises TraceError (line 0) when no line is recognisable. A file object is left where it was.
    """
    ensure_text(src)
    with open_source(src) as f:
        return detect_open(f, source_name(src), lenient=False)


def detect_open(f: IO[str], name: str, lenient: bool) -> str:
    """The format of an open seekable text file (:func:`detect_format`; ``lenient``: ``"qemu"`` when nothing is
    recognisable); ``f`` is left where it was."""
    lines = first_lines(f, DETECT_LINES)
    fmt = _detect(lines)
    if fmt is not None:
        return fmt
    if lenient or all(line.lstrip().startswith("#") for line in lines):
        return "qemu"
    raise TraceError(
        name,
        0,
        f"cannot detect the trace format (none of the first {len(lines)} lines is a QEMU "
        "trace event or an ftrace line); pass format='qemu' or format='ftrace'",
    )


def check_options(format: str, line_spacing_ns: int) -> None:
    """ValueError unless ``format`` is one of :data:`FORMATS` and ``line_spacing_ns`` an int >= 0."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if isinstance(line_spacing_ns, bool) or not isinstance(line_spacing_ns, int) or line_spacing_ns < 0:
        raise ValueError(f"line_spacing_ns must be an int >= 0, got {line_spacing_ns!r}")


class TraceReader:
    """An iterable of the :class:`TraceConversion` in one trace; ``stats`` describes the last pass (its launch
    records included).

    Each iteration is one streaming pass (constant memory) and starts with fresh ``stats``, complete once the pass
    ends (or up to the error that ended it). A path can be iterated again; an open file only once (a second pass
    starts where the first one stopped). ``format`` is the requested format until the first pass resolves
    ``"auto"``.
    """

    def __init__(
        self,
        src: Source,
        format: Format = "auto",
        *,
        lenient: bool = False,
        line_spacing_ns: int = DEFAULT_LINE_SPACING_NS,
    ) -> None:
        check_options(format, line_spacing_ns)
        ensure_text(src)
        self.src = src
        self.source = source_name(src)
        self.format: str = format
        self.lenient = lenient
        self.line_spacing_ns = line_spacing_ns
        self.stats = ParseStats(source=self.source)

    def __iter__(self) -> Iterator[TraceConversion]:
        self.stats = ParseStats(source=self.source)
        return self._run(self.stats)

    def _run(self, stats: ParseStats) -> Iterator[TraceConversion]:
        with open_source(self.src) as f:
            fmt = self.format
            if fmt == "auto":
                fmt = detect_open(f, self.source, self.lenient)
                self.format = fmt
            if fmt == "qemu":
                yield from _qemu.parse_open(
                    f, self.source, lenient=self.lenient, stats=stats, line_spacing_ns=self.line_spacing_ns
                )
            else:
                yield from _ftrace.parse_open(f, self.source, lenient=self.lenient, stats=stats)

    def __repr__(self) -> str:
        return f"TraceReader({self.source!r}, format={self.format!r}, lenient={self.lenient})"


def parse(
    path: Source,
    format: Format = "auto",
    lenient: bool = False,
    *,
    line_spacing_ns: int = DEFAULT_LINE_SPACING_NS,
) -> TraceReader:
    """The conversions in a QEMU or ftrace trace (a path or a text file), as a lazily parsed :class:`TraceReader`.

    ``format="auto"`` detects the format from the first lines (:func:`detect_format`). Strict mode raises
    :class:`TraceError` (``file:line: reason``) at the first bad line during iteration; ``lenient=True`` skips bad
    lines and counts them (``reader.stats.bad_lines``, ``reader.stats.errors``) and clamps timestamps that go
    backwards (``reader.stats.clamped_timestamps``). ``line_spacing_ns``: time per line for QEMU lines without a
    timestamp.
    """
    return TraceReader(path, format, lenient=lenient, line_spacing_ns=line_spacing_ns)
