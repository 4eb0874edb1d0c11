"""Shared machinery of the trace parsers: opening a source, printf-style field templates, range checks, clocks.

Internal to :mod:`snpsim.traces`. The field templates mirror the C format strings of the real trace events
(``TP_printk`` in the kernel, the ``trace-events`` format strings in QEMU; guest-workloads.md §4) so that each
parser states the exact format it accepts in one line.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any, Union

from snpsim.traces.model import MAX_GPA, PAGE_SIZE, ParseStats, TraceConversion, TraceError

#: A trace source: a path, or an open text file (seekable or not).
Source = Union[str, "os.PathLike[str]", IO[str]]

U64_MAX = (1 << 64) - 1
#: Spacing of line-number-based times for lines without a timestamp: ``time_ns = line * 1000`` (1 us per line).
DEFAULT_LINE_SPACING_NS = 1_000
#: Longest piece of a bad token quoted in an error message.
_QUOTE_MAX = 40


class BadLine(Exception):
    """Internal: the line being parsed is invalid; the parser adds file and line and raises TraceError."""


def quote(token: str) -> str:
    if len(token) > _QUOTE_MAX:
        token = token[:_QUOTE_MAX] + "..."
    return repr(token)


# ------------------------------------------------------------------------------------------------ sources


def source_name(src: Source) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    name = getattr(src, "name", None)
    return name if isinstance(name, str) else "<stream>"


@contextlib.contextmanager
def open_source(src: Source) -> Iterator[IO[str]]:
    """A seekable text file positioned at the start of ``src``'s remaining text.

    Paths are opened (UTF-8; undecodable bytes become U+FFFD so they fail as bad lines, not as decode errors) and
    closed afterwards; open files are used as they are, except that a non-seekable one (a pipe) is first copied to
    an anonymous temporary file, because the parsers read the text twice (format detection and the duplicate
    policy look ahead). Memory stays constant either way.
    """
    if isinstance(src, (str, os.PathLike)):
        with open(src, encoding="utf-8", errors="replace") as f:
            yield f
        return
    seekable = False
    with contextlib.suppress(AttributeError, OSError, ValueError):
        seekable = src.seekable()
    if seekable:
        yield src
        return
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as tmp:
        for line in src:
            tmp.write(line)
        tmp.seek(0)
        yield tmp


def lines_containing(f: IO[str], *markers: str) -> set[str]:
    """The ``markers`` some non-comment line of ``f`` contains (one pass, stopping once all are found); ``f`` is left
    where it was."""
    pos = f.tell()
    found: set[str] = set()
    try:
        for line in f:
            for marker in markers:
                if marker not in found and marker in line and not line.lstrip().startswith("#"):
                    found.add(marker)
            if len(found) == len(markers):
                break
        return found
    finally:
        f.seek(pos)


def first_lines(f: IO[str], n: int) -> list[str]:
    """Up to ``n`` non-blank lines from the current position; ``f`` is left where it was."""
    pos = f.tell()
    out: list[str] = []
    try:
        for line in f:
            if line.strip():
                out.append(line)
                if len(out) >= n:
                    break
        return out
    finally:
        f.seek(pos)


def ensure_text(src: Source) -> None:
    """Reject binary streams early (a clear TypeError instead of a confusing bad-line error)."""
    if isinstance(src, (io.BufferedIOBase, io.RawIOBase)):
        raise TypeError("trace sources must be paths or text files (open the file in text mode)")


# ------------------------------------------------------------------------------------------------ numbers


def seconds_to_ns(sec: str, frac: str) -> int:
    """``"1234"``, ``"567890"`` -> 1234567890000 ns. Fractions beyond 9 digits are truncated (below 1 ns)."""
    return int(sec) * 1_000_000_000 + (int((frac + "000000000")[:9]) if frac else 0)


def format_seconds(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def check_range(event: str, gpa: int, size: int) -> None:
    """Validate a converted range in bytes; raise BadLine naming ``event`` if it cannot be a conversion."""
    if size == 0:
        raise BadLine(f"zero size in {event}")
    if gpa % PAGE_SIZE:
        raise BadLine(f"gpa {gpa:#x} not 4K-aligned in {event}")
    if size % PAGE_SIZE:
        raise BadLine(f"size {size:#x} not a multiple of 4K in {event}")
    if gpa + size > MAX_GPA:
        raise BadLine(f"range {gpa:#x}+{size:#x} ends beyond 2^52 (the physical address limit) in {event}")


# ------------------------------------------------------------------------------------------------ templates

#: Value kinds of a field template, as the C printf conversions that produce them:
#: Decimal runs are bounded (30 digits) so that no conversion hits Python's int-from-string digit limit.
#: ``0xh`` = ``0x%llx`` / ``0x%" PRIx64``; ``h`` = ``%llx`` (bare hex); ``#h`` = ``%#016llx`` (``0x``-prefixed,
#: but C prints a plain ``0`` run for zero); ``u`` = ``%u``; ``d`` = ``%d``; ``n`` = a number printed either way,
#: ``0x``-prefixed hex or decimal (messages whose format is not known exactly); ``p`` = glibc's ``%p``
#: (``0x``-prefixed hex, ``(nil)`` for NULL; kept as text); ``w`` = ``%s`` without spaces.
_KINDS: dict[str, str] = {
    "0xh": r"0[xX][0-9a-fA-F]+",
    "h": r"[0-9a-fA-F]+",
    "#h": r"0[xX][0-9a-fA-F]+|0+",
    "u": r"[0-9]{1,30}",
    "d": r"-?[0-9]{1,30}",
    "n": r"0[xX][0-9a-fA-F]+|[0-9]{1,30}",
    "p": r"0[xX][0-9a-fA-F]+|\(nil\)",
    "w": r"\S+",
}
_PLACEHOLDER = re.compile(r"\{(\w+):([#\w]+)\}")


def _literal_rx(text: str) -> str:
    # A run of spaces in the format matches any run of blanks (tabs from copy-paste, aligned columns).
    return r"[ \t]+".join(re.escape(part) for part in re.split(r" +", text))


_HEX_KINDS = frozenset({"0xh", "h", "#h"})


def _convert(kind: str, name: str, event: str, token: str) -> int | str:
    if kind in ("w", "p"):
        return token
    if kind in _HEX_KINDS or (kind == "n" and token[1:2] in ("x", "X")):
        v = int(token, 16)  # accepts the 0x prefix
        if v > U64_MAX:
            raise BadLine(f"bad {name} {quote(token)} in {event} (more than 64 bits)")
        return v
    v = int(token)
    if not -(1 << 63) <= v <= U64_MAX:
        raise BadLine(f"bad {name} {quote(token)} in {event} (out of 64-bit range)")
    return v


class Template:
    """The fields of one trace event, written like its C format string with ``{name:kind}`` placeholders.

    ``Template("kvm_convert_memory", "start {start:0xh} size {size:0xh} {msg:w}").parse(text)`` returns
    ``(start, size, msg)`` (int, int, str) or raises BadLine with a message naming the bad field, e.g.
    ``bad size '0xZZ' in kvm_convert_memory``, ``truncated kvm_convert_memory: missing size``.
    """

    def __init__(self, event: str, fmt: str) -> None:
        self.event = event
        self.fmt = fmt
        #: (kind or None for a literal, name or literal text, compiled piece regex)
        self.pieces: list[tuple[str | None, str, re.Pattern[str]]] = []
        rx: list[str] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(fmt):
            lit = fmt[pos : m.start()]
            if lit:
                self._add_literal(lit, rx)
            name, kind = m.group(1), m.group(2)
            pat = _KINDS[kind]
            self.pieces.append((kind, name, re.compile(f"(?:{pat})", re.ASCII)))
            rx.append(f"({pat})")
            pos = m.end()
        if fmt[pos:]:
            self._add_literal(fmt[pos:], rx)
        self._rx = re.compile(r"[ \t]*" + "".join(rx) + r"[ \t]*", re.ASCII)
        self._kinds = [(p[1], p[0]) for p in self.pieces if p[0] is not None]
        self._fns = tuple(self._converter(name, kind) for name, kind in self._kinds)

    def _add_literal(self, lit: str, rx: list[str]) -> None:
        pat = _literal_rx(lit)
        self.pieces.append((None, lit, re.compile(pat, re.ASCII)))
        rx.append(pat)

    def parse(self, text: str) -> tuple[Any, ...]:
        """The field values in placeholder order: ints for numeric kinds, str for ``w`` and ``p``."""
        m = self._rx.fullmatch(text)
        if m is None:
            values = self._diagnose(text.strip())
            return tuple(values[name] for name, _ in self._kinds)
        return self.convert(m.groups())

    @property
    def pattern(self) -> str:
        """The regex of the fields (one capture group per placeholder, blanks around allowed), for parsers that
        match a whole line at once."""
        return self._rx.pattern

    @property
    def pattern_groups(self) -> int:
        """The capture groups of :attr:`pattern` (one per placeholder)."""
        return self._rx.groups

    def convert(self, toks: tuple[str, ...]) -> tuple[Any, ...]:
        """The values of the tokens :attr:`pattern` captured (raises BadLine for a number beyond 64 bits)."""
        return tuple([fn(t) for fn, t in zip(self._fns, toks, strict=True)])

    def _converter(self, name: str, kind: str) -> Callable[[str], int | str]:
        event = self.event
        if kind in _HEX_KINDS:

            def hex_value(t: str) -> int | str:  # 16 characters of hex always fit in 64 bits
                return int(t, 16) if len(t) <= 16 else _convert(kind, name, event, t)

            return hex_value
        if kind == "w":
            return str
        return functools.partial(_convert, kind, name, event)

    def _diagnose(self, text: str) -> dict[str, int | str]:
        """Walk the pieces one by one to say what is wrong; returns the values if the walk succeeds."""
        out: dict[str, int | str] = {}
        pos = 0
        n = len(text)
        for i, (kind, what, rx) in enumerate(self.pieces):
            m = rx.match(text, pos)
            if m is not None and kind is not None and i + 1 < len(self.pieces):
                # A value must end where the next literal starts ("0x12zz size" is a bad value, not a bad literal).
                nxt = self.pieces[i + 1]
                end = m.end()
                if nxt[0] is None and end < n and not text[end].isspace() and nxt[2].match(text, end) is None:
                    m = None
            if m is None:
                rest = text[pos:].strip()
                if not rest or (kind is None and " ".join(what.split()).startswith(" ".join(rest.split()))):
                    raise BadLine(f"truncated {self.event}: missing {self._next_label(i)}")
                token = rest.split(None, 1)[0]
                if kind is None:
                    raise BadLine(f"expected {quote(what.strip())} in {self.event}, got {quote(token)}")
                nxt_lit = self.pieces[i + 1][1].strip() if i + 1 < len(self.pieces) else ""
                if nxt_lit and token.endswith(nxt_lit[:1]) and len(token) > 1:
                    token = token[:-1]
                raise BadLine(f"bad {what} {quote(token)} in {self.event}")
            if kind is not None:
                out[what] = _convert(kind, what, self.event, m.group(0))
            pos = m.end()
        if text[pos:].strip():
            raise BadLine(f"unexpected text {quote(text[pos:].strip())} after {self.event} fields")
        return out

    def _next_label(self, i: int) -> str:
        """The field a truncated line lacks: the first value at or after piece ``i``."""
        for kind, what, _ in self.pieces[i:]:
            if kind is not None:
                return what
        return repr(self.pieces[i][1].strip())


# ------------------------------------------------------------------------------------------------ clocks


class Clock:
    """Assigns each accepted line its time and enforces that time never goes backwards.

    An explicit timestamp older than the previous one is an error (strict) or is clamped to the previous one and
    counted (lenient). A line without a timestamp takes the time of the previous line once the trace has had an
    explicit timestamp, and ``line * spacing`` before that (never less than the previous time). Call :meth:`time`
    only once a line is otherwise known to be good.
    """

    __slots__ = ("explicit", "last", "lenient", "spacing", "stats")

    def __init__(self, stats: ParseStats, lenient: bool, spacing: int = DEFAULT_LINE_SPACING_NS) -> None:
        self.stats = stats
        self.lenient = lenient
        self.spacing = spacing
        self.last: int | None = None
        self.explicit = False

    def time(self, ts: int | None, line: int) -> int:
        last = self.last
        if ts is None:
            ts = last if self.explicit and last is not None else max(line * self.spacing, last or 0)
        else:
            self.explicit = True
            if last is not None and ts < last:
                if not self.lenient:
                    raise BadLine(
                        f"timestamp {format_seconds(ts)} goes backwards (previous line: {format_seconds(last)})"
                    )
                self.stats.clamped_timestamps += 1
                ts = last
        if self.stats.first_time_ns is None:
            self.stats.first_time_ns = ts
        self.stats.last_time_ns = ts
        self.last = ts
        return ts


# ------------------------------------------------------------------------------------------------ driver


def run_lines(
    f: IO[str],
    parse_line: Callable[[str, int], TraceConversion | None],
    source: str,
    lenient: bool,
    stats: ParseStats,
) -> Iterator[TraceConversion]:
    """Feed ``f``'s lines to ``parse_line``; yield its conversions; turn BadLine into TraceError or a count."""
    lineno = 0
    for raw in f:
        lineno += 1
        stats.lines = lineno
        try:
            conv = parse_line(raw, lineno)
        except BadLine as e:
            err = TraceError(source, lineno, str(e))
            if not lenient:
                raise err from None
            stats.bad(err)
            continue
        if conv is not None:
            stats.add(conv)
            yield conv
