"""One read of a trace file: its conversions as compact numpy arrays spooled to a temporary file, with its stats.

The per-line parsers (:mod:`snpsim.traces.qemu`, :mod:`snpsim.traces.ftrace`) state what a QEMU or ftrace trace
means (``shared/reference/guest-workloads.md`` §1, §4; their docstrings cite the trace events' format strings); a
replay used to run them four times over the file (the first pass, two passes sizing the guest and checking its RAM
map, and the pass that generates the events; plus the duplicate policy's look-ahead before each). :func:`scan` runs
the same line parsers exactly once and writes each conversion as one fixed-size record (:data:`EVENT_DTYPE`:
``time_ns``, ``gfn``, ``npages``, ``line``, ``to_private``, ``protocol``, ``event`` code) into a raw binary file in
a private :mod:`tempfile` directory, in chunks of :data:`CHUNK_ROWS`, so memory stays bounded (a 10M-line trace
holds a few MiB of buffer, the records go to disk at 35 bytes each). The pass's :class:`ParseStats` (counters,
launch records, guest_memfds) is filled in the same pass. :class:`TraceArrays` reads the records back with
:func:`numpy.memmap`, chunk by chunk; :mod:`snpsim.traces.replay` sizes the guest, checks its RAM map and generates
the guest events from them without reading the trace again. Several replays of one trace (``snpsim replay`` under
several presets, in worker processes) share one scan: each reads the spool through a :meth:`TraceArrays.view`,
which pickles as the spool's path and the stats and never removes the spool; its owner, the scan's result, does.

**The duplicate policy without a look-ahead.** The per-line parsers decide before parsing whether the trace has the
authoritative event (a non-comment line containing ``"kvm_convert_memory "``, resp. ``" kvm_vm_set_mem_attributes:"``;
QEMU also ``"kvm_memory_fault "`` for its memory fault warnings). The scan makes the same substring test on each
line as it reads it and, until the marker shows up, parses as if it never will (secondary events replayed). The
secondary conversions read before the marker are then not replayed after all: their records are skipped when read
back and their counts moved from ``events``/``pages`` to ``informational``, which is exactly what the reference
pass counts (the clock and the checks treat a secondary event the same either way). The one case this cannot
undo, a QEMU memory fault warning without a timestamp replayed before any timestamp was seen (its clock reading
can differ), makes the scan read the file a second time with the policy known (``TraceArrays.passes == 2``).
Strict-mode errors read the rest of the file for the markers first, so the stats up to the error are the
reference's too.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from snpsim.guest.events import Protocol
from snpsim.traces import ftrace as _ftrace
from snpsim.traces import qemu as _qemu
from snpsim.traces._common import (
    DEFAULT_LINE_SPACING_NS,
    BadLine,
    Source,
    Template,
    ensure_text,
    open_source,
    seconds_to_ns,
    source_name,
)
from snpsim.traces.model import PAGE_SHIFT, ParseStats, TraceConversion, TraceError

__all__ = ["CHUNK_ROWS", "EVENT_DTYPE", "PROTOCOLS", "TraceArrays", "protocol_of", "scan"]

#: One conversion record: its time (the trace's clock, ns), range in 4K pages, 1-based trace line, direction,
#: GHCB protocol (an index in :data:`PROTOCOLS`) and event (an index in ``TraceArrays.event_names``).
EVENT_DTYPE = np.dtype(
    [
        ("time_ns", "<i8"),
        ("gfn", "<i8"),
        ("npages", "<i8"),
        ("line", "<i8"),
        ("to_private", "?"),
        ("protocol", "u1"),
        ("event", "u1"),
    ]
)
#: Records buffered in memory before they are appended to the spool file, and read back at a time.
CHUNK_ROWS = 1 << 14
SPOOL_FILE = "conversions.bin"

#: Events that can carry a secondary conversion (replayed only when the trace lacks the authoritative event).
_QEMU_SECONDARY = frozenset({_qemu.MEMORY_FAULT, _qemu.HC_MAP_GPA_RANGE, _qemu.FAULT_WARNING})
_FTRACE_SECONDARY = frozenset({_ftrace.MSR_PROTOCOL_ENTER, _ftrace.HYPERCALL})


Decide = Callable[[tuple[Any, ...]], tuple[int, int, bool, bool]]
#: ``protocol`` field values: an index in this tuple.
PROTOCOLS = (Protocol.GHCB, Protocol.MSR)


def protocol_of(event: str) -> Protocol:
    """The GHCB protocol of a conversion read from ``event``: the MSR protocol (one page per request; amd-snp-arch.md
    §9) for ``kvm_vmgexit_msr_protocol_enter``, the GHCB page otherwise."""
    return Protocol.MSR if event == _ftrace.MSR_PROTOCOL_ENTER else Protocol.GHCB


class _Rerun(Exception):
    """Internal: the speculative duplicate policy replayed a line it cannot undo; read again with the policy known."""

    def __init__(self, seen: list[bool]) -> None:
        super().__init__()
        self.seen = seen


class _Spool:
    """The temporary directory and the record file the scan appends to."""

    def __init__(self, spool_dir: str | os.PathLike[str] | None) -> None:
        self.dir = tempfile.mkdtemp(prefix="snpsim-trace-", dir=spool_dir)
        self.path = os.path.join(self.dir, SPOOL_FILE)
        self.file: IO[bytes] | None = open(self.path, "wb")  # noqa: SIM115 - closed in finish()/remove()
        self.rows = 0

    def write(self, rows: list[tuple[int, int, int, int, bool, int, int]]) -> None:
        assert self.file is not None
        np.array(rows, dtype=EVENT_DTYPE).tofile(self.file)
        self.rows += len(rows)

    def reset(self) -> None:
        assert self.file is not None
        self.file.seek(0)
        self.file.truncate()
        self.rows = 0

    def close_file(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def remove(self) -> None:
        self.close_file()
        shutil.rmtree(self.dir, ignore_errors=True)


class TraceArrays:
    """The conversions of one trace as spooled records (:data:`EVENT_DTYPE`), with the pass's ``stats``.

    ``len()`` is the number of conversions; :meth:`chunks` reads them back in bounded chunks, :meth:`conversions`
    as the :class:`TraceConversion` stream the per-line parsers give, and the column properties (``time_ns``,
    ``gfn``, ...) load one whole column (for tests and small traces). ``passes``: how many times the trace file was
    read (1, or 2 in the one case the module docstring describes); ``lenient``: the scan's option. The spool
    directory belongs to the :func:`scan`'s result, which removes it at :meth:`close` (or leaving a ``with`` block,
    or garbage collection); reading after that raises ValueError.

    **Sharing the spool.** :meth:`view` gives another reader of the same records that does not own them: closing a
    view (a replay closes what it reads once it is used up) leaves the spool to its owner. A TraceArrays pickles as
    such a view, a few hundred bytes (the spool's path and the stats, never the records), so jobs in other
    processes read the one spool read-only, by path (:func:`numpy.memmap`), while its owner keeps it.
    """

    def __init__(
        self,
        source: str,
        format: str,
        stats: ParseStats,
        path: str,
        rows: int,
        event_names: list[str],
        skip: frozenset[int],
        passes: int,
        lenient: bool,
        *,
        owner: bool = False,
    ) -> None:
        self.source = source
        self.format = format
        self.stats = stats
        self.event_names = event_names
        self.passes = passes
        self.lenient = lenient
        self.path = path
        self.spool_dir = os.path.dirname(path)
        self.rows = rows
        self._skip_codes = skip
        self._skip = np.array(sorted(skip), dtype=np.uint8)
        self._count = stats.events
        self._closed = False
        #: the owner's: removes the spool directory at close() or when collected; a view has none
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.spool_dir, True) if owner else None

    def _fields(self) -> tuple[str, str, ParseStats, str, int, list[str], frozenset[int], int, bool]:
        return (
            self.source,
            self.format,
            self.stats,
            self.path,
            self.rows,
            self.event_names,
            self._skip_codes,
            self.passes,
            self.lenient,
        )

    def view(self) -> TraceArrays:
        """A reader of the same spool that never removes it (see the class docstring); valid while this one's spool
        exists."""
        self._check_open()
        return TraceArrays(*self._fields())

    def __reduce__(self) -> tuple[type[TraceArrays], tuple[Any, ...]]:
        """Pickled, a TraceArrays is a :meth:`view`: the spool stays with its owner, in its process."""
        self._check_open()
        return TraceArrays, self._fields()

    @property
    def owner(self) -> bool:
        """Whether :meth:`close` removes the spool (the result of :func:`scan`), not a :meth:`view`."""
        return self._finalizer is not None

    def __len__(self) -> int:
        return self._count

    def __enter__(self) -> TraceArrays:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading; the owner also removes the spool directory (idempotent)."""
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"the spooled conversions of {self.source} were closed (TraceArrays.close())")

    @property
    def closed(self) -> bool:
        return self._closed

    def chunks(self, rows: int = CHUNK_ROWS) -> Iterator[npt.NDArray[Any]]:
        """The records in file order, at most ``rows`` read from the spool at a time (each chunk an in-memory copy;
        empty chunks are left out)."""
        self._check_open()
        if self.rows == 0:
            return
        mm = np.memmap(self.path, dtype=EVENT_DTYPE, mode="r", shape=(self.rows,))
        try:
            for i in range(0, self.rows, rows):
                chunk = np.array(mm[i : i + rows])
                if self._skip.size:
                    chunk = chunk[~np.isin(chunk["event"], self._skip)]
                if chunk.size:
                    yield chunk
        finally:
            del mm

    def column(self, name: str) -> npt.NDArray[Any]:
        """One field of every record, in memory."""
        parts = [c[name] for c in self.chunks()]
        return np.concatenate(parts) if parts else np.empty(0, dtype=EVENT_DTYPE[name])

    @property
    def time_ns(self) -> npt.NDArray[np.int64]:
        return self.column("time_ns")

    @property
    def gfn(self) -> npt.NDArray[np.int64]:
        return self.column("gfn")

    @property
    def npages(self) -> npt.NDArray[np.int64]:
        return self.column("npages")

    @property
    def line(self) -> npt.NDArray[np.int64]:
        return self.column("line")

    @property
    def to_private(self) -> npt.NDArray[np.bool_]:
        return self.column("to_private")

    @property
    def protocol(self) -> npt.NDArray[np.uint8]:
        return self.column("protocol")

    def conversion(self, record: Any) -> TraceConversion:
        """The :class:`TraceConversion` of one record."""
        return TraceConversion(
            int(record["time_ns"]),
            int(record["gfn"]) << PAGE_SHIFT,
            int(record["npages"]) << PAGE_SHIFT,
            bool(record["to_private"]),
            self.source,
            int(record["line"]),
            self.event_names[int(record["event"])],
        )

    def conversions(self) -> Iterator[TraceConversion]:
        """The conversions, equal to what :func:`snpsim.traces.parse` yields for the same trace and options."""
        source, names = self.source, self.event_names
        for chunk in self.chunks():
            cols = zip(
                chunk["time_ns"].tolist(),
                chunk["gfn"].tolist(),
                chunk["npages"].tolist(),
                chunk["to_private"].tolist(),
                chunk["line"].tolist(),
                chunk["event"].tolist(),
                strict=True,
            )
            for t, gfn, npages, priv, line, ev in cols:
                yield TraceConversion(t, gfn << PAGE_SHIFT, npages << PAGE_SHIFT, priv, source, line, names[ev])

    def __repr__(self) -> str:
        return f"TraceArrays({self.source!r}, format={self.format!r}, conversions={self._count})"


def scan(
    src: Source,
    format: str = "auto",
    lenient: bool = False,
    *,
    line_spacing_ns: int = DEFAULT_LINE_SPACING_NS,
    spool_dir: str | os.PathLike[str] | None = None,
) -> TraceArrays:
    """Read a trace once (a path or a text file): its conversions spooled as :class:`TraceArrays`, with the pass's
    :class:`ParseStats`, exactly as one :func:`snpsim.traces.parse` pass with the same options gives them.

    Raises what that pass raises, at the same line (strict :class:`TraceError`; ValueError for bad options);
    nothing is left in the spool directory then. ``spool_dir``: where the temporary directory goes (default: the
    system's, :func:`tempfile.gettempdir`). Close the result (or use ``with``) to remove it.
    """
    from snpsim.traces import FORMATS, check_options, detect_open

    check_options(format, line_spacing_ns)
    ensure_text(src)
    source = source_name(src)
    with open_source(src) as f:
        fmt = detect_open(f, source, lenient) if format == "auto" else format
        spool = _Spool(spool_dir)
        try:
            start = f.tell()
            known: list[bool] | None = None
            passes = 0
            while True:
                passes += 1
                stats = ParseStats(source=source)
                try:
                    names, skip = _Pass(f, fmt, source, lenient, line_spacing_ns, stats, spool, known).run()
                    break
                except _Rerun as r:
                    known = r.seen
                    f.seek(start)
                    spool.reset()
            spool.close_file()
        except BaseException:
            spool.remove()
            raise
    assert fmt in FORMATS
    return TraceArrays(source, fmt, stats, spool.path, spool.rows, names, skip, passes, lenient, owner=True)


class _Pass:
    """One read of the file with the line parsers, writing their conversions to the spool."""

    def __init__(
        self,
        f: IO[str],
        fmt: str,
        source: str,
        lenient: bool,
        spacing: int,
        stats: ParseStats,
        spool: _Spool,
        known: list[bool] | None,
    ) -> None:
        self.f = f
        self.fmt = fmt
        self.source = source
        self.lenient = lenient
        self.stats = stats
        self.spool = spool
        self.parser: _qemu._QemuParser | _ftrace._FtraceParser
        #: the whole-line regex of the common lines and, for each event, its name group, field groups and decoder
        self.fast: Callable[[str], re.Match[str] | None] | None = None
        self.layout: list[tuple[int, int, int, str, Template, Decide]] = []
        if fmt == "qemu":
            self.fast = _qemu.FAST_LINE.fullmatch
            i = 3
            for name, (template, decide) in _qemu.DECODERS.items():
                n = template.pattern_groups
                self.layout.append((i, i + 1, i + 1 + n, name, template, decide))
                i += 1 + n
            self.markers: tuple[str, ...] = _qemu.DUPLICATE_MARKERS
            self.secondary = _QEMU_SECONDARY
            self.parser = _qemu._QemuParser(source, stats, lenient, True, True, spacing)
            stats.format = "qemu"
        else:
            self.markers = _ftrace.DUPLICATE_MARKERS
            self.secondary = _FTRACE_SECONDARY
            self.parser = _ftrace._FtraceParser(source, stats, lenient, True)
            stats.format = "ftrace"
        stats.source = source
        self.seen = list(known) if known is not None else [False] * len(self.markers)
        self.speculative = known is None
        self.apply_policy()
        self.codes: dict[str, int] = {}
        #: secondary conversions replayed speculatively, by event code: [count, pages, to private]
        self.tally: dict[int, list[int]] = {}
        self.dirty = False

    def apply_policy(self) -> None:
        """Set the parser's duplicate policy from the markers seen (so far, or in the whole file)."""
        use_secondary = not self.seen[0]
        self.parser.use_secondary = use_secondary
        if isinstance(self.parser, _qemu._QemuParser):
            self.parser.use_warnings = use_secondary and not self.seen[1]
        self.stats.secondary_used = use_secondary

    def run(self) -> tuple[list[str], frozenset[int]]:
        f, stats, parser, markers, seen = self.f, self.stats, self.parser, self.markers, self.seen
        parse_line = parser.line
        fast = self.fast
        pending = self.speculative and not all(seen)
        buf: list[tuple[int, int, int, int, bool, int, int]] = []
        codes = self.codes
        protocols: list[int] = []
        lineno = 0
        for raw in f:
            lineno += 1
            if pending:
                for i, marker in enumerate(markers):
                    if not seen[i] and marker in raw and not raw.lstrip().startswith("#"):
                        seen[i] = True
                        self.apply_policy()
                        pending = not all(seen)
            try:
                m = fast(raw) if fast is not None else None
                conv = None
                if m is not None:
                    try:
                        conv = self.fast_line(m.groups(), lineno)
                    except BadLine:
                        m = None  # the line parser says what is wrong (nothing changed yet)
                if m is None:
                    conv = parse_line(raw, lineno)
            except BadLine as e:
                err = TraceError(self.source, lineno, str(e))
                if not self.lenient:
                    stats.lines = lineno
                    if pending:
                        self.look_ahead()
                    self.resolve()
                    raise err from None
                stats.bad(err)
                continue
            if conv is None:
                continue
            stats.add(conv)
            event = conv.event
            code = codes.get(event)
            if code is None:
                code = codes[event] = len(codes)
                protocols.append(PROTOCOLS.index(protocol_of(event)))
            if pending and event in self.secondary:
                t = self.tally.setdefault(code, [0, 0, 0])
                t[0] += 1
                t[1] += conv.size >> PAGE_SHIFT
                t[2] += conv.to_private
                if event == _qemu.FAULT_WARNING and not parser.clock.explicit:
                    self.dirty = True
            buf.append(
                (
                    conv.time_ns,
                    conv.gpa >> PAGE_SHIFT,
                    conv.size >> PAGE_SHIFT,
                    lineno,
                    conv.to_private,
                    protocols[code],
                    code,
                )
            )
            if len(buf) >= CHUNK_ROWS:
                self.spool.write(buf)
                buf.clear()
        stats.lines = lineno
        if buf:
            self.spool.write(buf)
        skip = self.resolve()
        return sorted(codes, key=codes.__getitem__), skip

    def fast_line(self, g: tuple[str | None, ...], lineno: int) -> TraceConversion | None:
        """A line :data:`snpsim.traces.qemu.FAST_LINE` matched: decoded and accepted as the QEMU parser's
        ``event()`` would; raises BadLine (before changing anything) if it is not valid after all."""
        for entry in self.layout:
            if g[entry[0]] is not None:
                break
        _, lo, hi, name, template, decide = entry
        sec = g[1]
        ts = seconds_to_ns(sec, g[2] or "") if sec is not None else None
        gpa, size, to_private, secondary = decide(template.convert(g[lo:hi]))  # type: ignore[arg-type]
        assert isinstance(self.parser, _qemu._QemuParser)
        return self.parser.accept(name, gpa, size, to_private, secondary, ts, lineno)

    def look_ahead(self) -> None:
        """The markers in the rest of the file (after a strict error: the reference's look-ahead saw them all)."""
        for raw in self.f:
            for i, marker in enumerate(self.markers):
                if not self.seen[i] and marker in raw and not raw.lstrip().startswith("#"):
                    self.seen[i] = True
            if all(self.seen):
                break

    def resolve(self) -> frozenset[int]:
        """Undo the speculative secondary conversions the final policy does not replay: the codes to skip when
        reading back. Raises _Rerun if one cannot be undone."""
        if not self.speculative:
            return frozenset()
        parser = self.parser
        self.apply_policy()
        dropped: set[str] = set()
        if not parser.use_secondary:
            dropped = set(self.secondary)
        elif isinstance(parser, _qemu._QemuParser) and not parser.use_warnings:
            dropped = {_qemu.FAULT_WARNING}
        if _qemu.FAULT_WARNING in dropped and self.dirty and self.fmt == "qemu":
            raise _Rerun(list(self.seen))
        stats = self.stats
        skip: set[int] = set()
        for name in dropped:
            code = self.codes.get(name)
            if code is None or code not in self.tally:
                continue
            n, pages, private = self.tally[code]
            skip.add(code)
            stats.events -= n
            stats.pages -= pages
            stats.to_private -= private
            stats.to_shared -= n - private
            stats.informational[name] += n
        return frozenset(skip)
