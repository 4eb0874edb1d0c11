"""Property tests for snpsim.traces: export -> parse round trips and fuzzing of both parsers.

Round trip: any valid list of ``(time_ns, gfn, npages, to_private)`` written by ``write_qemu`` / ``write_ftrace`` in
every mode parses back to itself (times at the format's resolution). Fuzzing: random text and mutated valid lines
never raise anything but TraceError in strict mode, and nothing at all in lenient mode.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snpsim.traces import ParseStats, TraceError, parse, parse_ftrace, parse_qemu, write_ftrace, write_qemu

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "traces"
MAX_GFN = 1 << 40  # 2^52 bytes of guest-physical address space
MODES = ("full", "authoritative", "secondary")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def event_lists(draw: st.DrawFn, time_unit: int) -> list[tuple[int, int, int, bool]]:
    n = draw(st.integers(0, 25))
    t = draw(st.integers(0, 10**12)) * time_unit
    out = []
    for _ in range(n):
        t += draw(st.integers(0, 10**9)) * time_unit
        npages = draw(st.one_of(st.just(1), st.integers(1, 1 << 20), st.integers(1, 1 << 39)))
        gfn = draw(st.integers(0, MAX_GFN - npages))
        out.append((t, gfn, npages, draw(st.booleans())))
    return out


def roundtrip(text: str, fmt: str) -> list[tuple[int, int, int, bool]]:
    reader = parse(io.StringIO(text), "auto")
    got = [(c.time_ns, c.gfn, c.npages, c.to_private) for c in reader]
    assert reader.format == fmt
    assert reader.stats.bad_lines == 0
    return got


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=60, deadline=None)
@given(events=event_lists(1000))
def test_qemu_roundtrip(events: list[tuple[int, int, int, bool]], mode: str) -> None:
    out = io.StringIO()
    write_qemu(events, out, mode=mode)  # type: ignore[arg-type]
    assert roundtrip(out.getvalue(), "qemu") == events


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=60, deadline=None)
@given(events=event_lists(1000))
def test_ftrace_roundtrip(events: list[tuple[int, int, int, bool]], mode: str) -> None:
    out = io.StringIO()
    write_ftrace(events, out, mode=mode)  # type: ignore[arg-type]
    text = out.getvalue()
    if events or mode == "full":
        assert roundtrip(text, "ftrace") == events


@settings(max_examples=60, deadline=None)
@given(events=event_lists(1))
def test_ftrace_roundtrip_ns(events: list[tuple[int, int, int, bool]]) -> None:
    out = io.StringIO()
    write_ftrace(events, out, ns=True, header=False, comm="qemu-system-x86", pid=4321, cpu=17)
    assert [(c.time_ns, c.gfn, c.npages, c.to_private) for c in parse_ftrace(io.StringIO(out.getvalue()))] == events


def test_writers_to_paths_and_line_counts(tmp_path: Path) -> None:
    events = [(1_000_000, 0x800, 1, False), (2_000_000, 0x6C000, 0x8000, False), (3_000_000, 0x800, 1, True)]
    assert write_qemu(events, tmp_path / "q.log") == 6  # hc_map_gpa_range + convert_memory each
    assert write_ftrace(events, tmp_path / "f.txt") == 12  # 4 lines per conversion
    assert write_ftrace(events, tmp_path / "a.txt", mode="authoritative") == 3
    for p in ("q.log", "f.txt", "a.txt"):
        assert [(c.time_ns, c.gfn, c.npages, c.to_private) for c in parse(tmp_path / p)] == events
    assert (tmp_path / "f.txt").read_text().startswith("# tracer: nop\n#\n# entries-in-buffer/entries-written: 3/3")


def test_write_qemu_without_timestamps_gives_line_times() -> None:
    out = io.StringIO()
    write_qemu([(5, 1, 1, True), (9, 2, 1, False)], out, mode="authoritative", timestamps=False)
    assert out.getvalue() == (
        "kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\n"
        "kvm_convert_memory start 0x2000 size 0x1000 private_to_shared\n"
    )
    assert [c.time_ns for c in parse(io.StringIO(out.getvalue()))] == [1000, 2000]


def test_write_ftrace_formats_match_the_tracepoints() -> None:
    out = io.StringIO()
    write_ftrace([(5_123_000_001_000, 0, 16, True), (5_123_000_002_000, 0x809, 1, False)], out, header=False)
    lines = out.getvalue().splitlines()
    assert lines[2] == (
        "       CPU 0/KVM-4330    [000] .....  5123.000001: kvm_vm_set_mem_attributes: 0000000000000000 -- "
        "0x00000000000010 [0x8]"
    )
    assert lines[4].endswith("kvm_vmgexit_msr_protocol_enter: vcpu 0, ghcb_gpa 0020000000809014")


@pytest.mark.parametrize(
    "events",
    [
        [(-1, 0, 1, True)],
        [(5, 0, 1, True), (4, 0, 1, True)],
        [(0, 0, 0, True)],
        [(0, -1, 1, True)],
        [(0, MAX_GFN, 1, True)],
        [(0.5, 0, 1, True)],
    ],
)
def test_writers_reject_invalid_events(events: list[tuple[int, int, int, bool]]) -> None:
    with pytest.raises(ValueError):
        write_qemu(events, io.StringIO())
    with pytest.raises(ValueError):
        write_ftrace(events, io.StringIO())
    with pytest.raises(ValueError, match="mode"):
        write_qemu([], io.StringIO(), mode="both")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- fuzzing

_VALID_LINES = (EXAMPLES / "qemu-boot.log").read_text().splitlines() + (
    EXAMPLES / "ftrace-boot.txt"
).read_text().splitlines()
_PIECES = st.sampled_from([*"0123456789abcdefxX@.:-_ []()#,\t=/", "kvm_", " -- ", "0x", "\u00e9", "\u0663", "\x00"])


def _chunk(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.lists(_PIECES, min_size=min_size, max_size=max_size).map("".join)


@st.composite
def mutated_line(draw: st.DrawFn) -> str:
    line = draw(st.sampled_from(_VALID_LINES))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["delete", "insert", "replace", "truncate", "duplicate"]))
        i = draw(st.integers(0, len(line)))
        if op == "delete":
            line = line[:i] + line[i + draw(st.integers(1, 8)) :]
        elif op == "insert":
            line = line[:i] + draw(_chunk(1, 4)) + line[i:]
        elif op == "replace" and i < len(line):
            line = line[:i] + draw(_PIECES) + line[i + 1 :]
        elif op == "truncate":
            line = line[:i]
        else:
            line = line[:i] + line[i : i + 12] + line[i:]
    return line


_lines = st.lists(
    st.one_of(
        mutated_line(),
        st.sampled_from(_VALID_LINES),
        st.text(max_size=60),
        _chunk(0, 40),
    ),
    max_size=12,
)


def _check(text: str, parser: object) -> None:
    # strict: TraceError only; lenient: no exception and consistent counts
    try:
        list(parser(io.StringIO(text)))  # type: ignore[operator]
    except TraceError as e:
        assert e.line >= 0 and str(e).startswith(f"{e.file}:{e.line}: ")
    stats = ParseStats()
    convs = list(parser(io.StringIO(text), lenient=True, stats=stats))  # type: ignore[operator]
    assert stats.events == len(convs)
    assert all(c.size > 0 and c.gpa % 4096 == 0 and c.size % 4096 == 0 and c.gpa + c.size <= 1 << 52 for c in convs)
    times = [c.time_ns for c in convs]
    assert times == sorted(times)


@FUZZ
@given(lines=_lines)
def test_fuzz_qemu_parser(lines: list[str]) -> None:
    _check("\n".join(lines) + "\n", parse_qemu)


@FUZZ
@given(lines=_lines)
def test_fuzz_ftrace_parser(lines: list[str]) -> None:
    _check("\n".join(lines) + "\n", parse_ftrace)


@FUZZ
@given(lines=_lines)
def test_fuzz_auto_detection(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    with contextlib.suppress(TraceError):
        list(parse(io.StringIO(text)))
    reader = parse(io.StringIO(text), lenient=True)
    list(reader)
    assert reader.format in ("qemu", "ftrace")
