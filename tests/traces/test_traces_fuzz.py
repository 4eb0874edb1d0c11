"""Property tests for snpsim.traces: export -> parse round trips and fuzzing of both parsers.

Round trip: any valid list of ``(time_ns, gfn, npages, to_private)`` written by ``write_qemu`` / ``write_ftrace`` in
every mode, with any launch (disjoint ``SnpLaunchUpdate`` ranges), parses back to itself (times at the format's
resolution). Fuzzing: random text and mutated valid lines (the example traces, with their launch sections, and the
warning and launch line forms) never raise anything but TraceError in strict mode, and nothing at all in lenient
mode; what a lenient pass keeps (conversions, launch updates, guest_memfds) is always well-formed.
"""

from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snpsim.kvm.uapi import SnpLaunchUpdate, SnpPageType
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


@st.composite
def launches(draw: st.DrawFn) -> list[SnpLaunchUpdate]:
    """Disjoint ranges in random order (a real launch never populates a page twice), any page type."""
    n = draw(st.integers(0, 8))
    gfn = 0
    out = []
    for _ in range(n):
        gfn += draw(st.integers(0, 1 << 20))
        npages = draw(st.integers(1, 1 << 12))
        out.append(SnpLaunchUpdate(gfn, npages, draw(st.sampled_from(list(SnpPageType)))))
        gfn += npages
    return draw(st.permutations(out))


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


def _launch_of(reader_or_stats: object) -> list[SnpLaunchUpdate]:
    stats = getattr(reader_or_stats, "stats", reader_or_stats)
    assert isinstance(stats, ParseStats)
    return [SnpLaunchUpdate(u.gfn, u.npages, u.page_type) for u in stats.launch]


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=40, deadline=None)
@given(events=event_lists(1000), launch=launches())
def test_roundtrip_with_launch(
    events: list[tuple[int, int, int, bool]], launch: list[SnpLaunchUpdate], mode: str
) -> None:
    for writer, fmt in ((write_qemu, "qemu"), (write_ftrace, "ftrace")):
        out = io.StringIO()
        writer(events, out, mode=mode, launch=launch)  # type: ignore[operator]
        reader = parse(io.StringIO(out.getvalue()), "auto")
        got = [(c.time_ns, c.gfn, c.npages, c.to_private) for c in reader]
        assert reader.format == fmt and reader.stats.bad_lines == 0
        # (in "full" ftrace the launch's set-up attribute changes are not replayed, and do not hide the secondary
        # events either: the conversions' own kvm_vm_set_mem_attributes are there)
        assert got == events
        assert _launch_of(reader) == launch
        if launch:
            assert reader.stats.informational["kvm_sev_snp_launch_start"] == 1


def test_write_qemu_launch_lines_follow_the_format_strings() -> None:
    # "src 0x%" PRIx64 " gpa 0x%" PRIx64 " len 0x%" PRIx64 " (%s page)"; "policy 0x%" PRIx64 " gosvw %s";
    # "id_block %s id_auth %s host_data %s"; the guest_memfd warning after the launch start
    out = io.StringIO()
    launch = [SnpLaunchUpdate(0xFFC00, 1024), SnpLaunchUpdate(0x811, 1, SnpPageType.SECRETS)]
    n = write_qemu([(2_000_001_000, 0x809, 1, False)], out, mode="authoritative", launch=launch, memory_bytes=1 << 30)
    assert out.getvalue().splitlines() == [
        "4321@2.000001:kvm_sev_snp_launch_start policy 0x30000 gosvw (null)",
        "qemu-system-x86_64: warning: kvm_create_gmemfd: created memfd: 10, size: 0x40000000, flags: 0x0",
        "4321@2.000001:kvm_sev_snp_launch_update src 0x7f00ffc00000 gpa 0xffc00000 len 0x400000 (Normal page)",
        "4321@2.000001:kvm_sev_snp_launch_update src 0x7f0000811000 gpa 0x811000 len 0x1000 (Secrets page)",
        "4321@2.000001:kvm_sev_snp_launch_finish id_block (null) id_auth (null) host_data (null)",
        "4321@2.000001:kvm_convert_memory start 0x809000 size 0x1000 private_to_shared",
    ]
    assert n == 6
    reader = parse(io.StringIO(out.getvalue()))
    assert len(list(reader)) == 1 and _launch_of(reader) == launch
    assert [g.size for g in reader.stats.guest_memfds] == [1 << 30]
    # no launch, but the RAM: the warning alone, first
    out = io.StringIO()
    assert write_qemu([], out, memory_bytes=1 << 30) == 1
    assert out.getvalue().startswith("qemu-system-x86_64: warning: kvm_create_gmemfd: created memfd: 10, size: 0x4000")


def test_write_ftrace_launch_is_trace_marker_text_with_the_set_up_attributes() -> None:
    out = io.StringIO()
    write_ftrace([(5_123_000_001_000, 0x809, 1, False)], out, header=False, launch=[SnpLaunchUpdate(0x800, 17)])
    lines = out.getvalue().splitlines()
    assert lines[:4] == [
        " qemu-system-x86-4321    [000] .....  5123.000001: tracing_mark_write: kvm_sev_snp_launch_start policy "
        "0x30000 gosvw (null)",
        # kvm_set_memory_attributes_private(0x800000, 0x11000): gfns [0x800, 0x811), "%#016llx -- %#016llx [0x%lx]"
        " qemu-system-x86-4321    [000] .....  5123.000001: kvm_vm_set_mem_attributes: 0x00000000000800 -- "
        "0x00000000000811 [0x8]",
        " qemu-system-x86-4321    [000] .....  5123.000001: tracing_mark_write: kvm_sev_snp_launch_update src "
        "0x7f0000800000 gpa 0x800000 len 0x11000 (Normal page)",
        " qemu-system-x86-4321    [000] .....  5123.000001: tracing_mark_write: kvm_sev_snp_launch_finish id_block "
        "(null) id_auth (null) host_data (null)",
    ]
    stats = ParseStats()
    assert [(c.gfn, c.npages) for c in parse_ftrace(io.StringIO(out.getvalue()), stats=stats)] == [(0x809, 1)]
    assert stats.informational["<launch set-up attributes>"] == 1


def test_writers_reject_bad_launch() -> None:
    for bad in ([SnpLaunchUpdate(0, 0)], [SnpLaunchUpdate(-1, 1)], [(0, 1, 1)], [SnpLaunchUpdate(0, 1, 2)]):  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="launch update 0"):
            write_qemu([], io.StringIO(), launch=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="launch update 0"):
            write_ftrace([], io.StringIO(), launch=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="memory_bytes"):
        write_qemu([], io.StringIO(), memory_bytes=4097)


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

_VALID_LINES = (
    (EXAMPLES / "qemu-boot.log").read_text().splitlines()
    + (EXAMPLES / "ftrace-boot.txt").read_text().splitlines()
    + [  # the other accepted forms of the launch and warning lines
        "kvm_create_gmemfd: created memfd: 14, size: 4194304, flags: 0",
        "memory fault: GPA 0xc0000 size 0x1000 flags 0x0",
        "2024-06-10T06:13:20Z qemu-system-x86_64: warning: memory fault: GPA 0x4000000 size 0x1000 flags 0x8",
        "kvm_sev_snp_launch_start policy 0x30000",
        "kvm_sev_snp_launch_update addr (nil) gpa 0x801000 len 0x2000 (Zero page)",
        "kvm_sev_snp_launch_update addr 0x7f5a2c000000 gpa 0x800000 len 0x1000 (Unmeasured page)",
        "kvm_sev_snp_launch_finish",
    ]
)
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
    # launch records: well-formed ranges, in file order, times never going backwards; no record is the continuation
    # (a tail with the same type) of the one before it; guest_memfds of 4K multiples
    ups = stats.launch
    assert all(u.size > 0 and u.gpa % 4096 == 0 and u.size % 4096 == 0 and u.gpa + u.size <= 1 << 52 for u in ups)
    assert [u.line for u in ups] == sorted(u.line for u in ups)
    assert [u.time_ns for u in ups] == sorted(u.time_ns for u in ups)
    assert not any(
        a.page_type == b.page_type and a.gpa < b.gpa and a.gpa + a.size == b.gpa + b.size
        for a, b in itertools.pairwise(ups)
    )
    assert all(g.size > 0 and g.size % 4096 == 0 for g in stats.guest_memfds)


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
