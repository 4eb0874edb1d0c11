"""Tests for snpsim.traces.qemu: QEMU log-backend lines of kvm_convert_memory / kvm_memory_fault /
kvm_hc_map_gpa_range (guest-workloads.md §1, §4).

Expected values are worked out by hand from the trace-events format strings quoted in the reference, e.g.
``"start 0x%" PRIx64 " size 0x%" PRIx64 " %s"``; times from the ``PID@SEC.USEC:`` prefix in ns.
"""

from __future__ import annotations

import io

import pytest

from snpsim.traces import DEFAULT_LINE_SPACING_NS, ParseStats, TraceConversion, TraceError, parse_qemu


def q(text: str, *, lenient: bool = False, stats: ParseStats | None = None) -> list[TraceConversion]:
    return list(parse_qemu(io.StringIO(text), lenient=lenient, stats=stats))


def ranges(convs: list[TraceConversion]) -> list[tuple[int, int, bool]]:
    return [(c.gpa, c.size, c.to_private) for c in convs]


# --------------------------------------------------------------------------------------------- each event


def test_convert_memory_both_directions() -> None:
    convs = q(
        "kvm_convert_memory start 0x4000000 size 0x1000 shared_to_private\n"
        "kvm_convert_memory start 0x6c000000 size 0x8000000 private_to_shared\n"
    )
    assert ranges(convs) == [(0x4000000, 0x1000, True), (0x6C000000, 0x8000000, False)]
    assert [c.line for c in convs] == [1, 2]
    assert [c.event for c in convs] == ["kvm_convert_memory"] * 2
    assert convs[0].source == "<stream>"
    assert (convs[1].gfn, convs[1].npages) == (0x6C000, 0x8000)  # 128 MiB = 32768 pages


def test_pid_timestamp_prefix_gives_ns() -> None:
    # "%d@%zu.%06zu:" -> 1718000000 s + 123456 us
    (c,) = q("4330@1718000000.123456:kvm_convert_memory start 0x1000 size 0x2000 private_to_shared\n")
    assert c.time_ns == 1_718_000_000_123_456_000
    assert (c.gpa, c.size, c.to_private) == (0x1000, 0x2000, False)


def test_blank_after_timestamp_colon_and_uppercase_hex_tolerated() -> None:
    (c,) = q("1@2.000001: kvm_convert_memory start 0xABC000 size 0x1000 shared_to_private\n")
    assert (c.time_ns, c.gpa) == (2_000_001_000, 0xABC000)


def test_no_timestamps_use_line_number_spacing() -> None:
    text = "# comment\n\nkvm_convert_memory start 0x1000 size 0x1000 shared_to_private\n" * 2
    convs = q(text)
    # lines 3 and 6, 1 us per line
    assert [c.time_ns for c in convs] == [3 * DEFAULT_LINE_SPACING_NS, 6 * DEFAULT_LINE_SPACING_NS]
    convs = list(parse_qemu(io.StringIO(text), line_spacing_ns=10))
    assert [c.time_ns for c in convs] == [30, 60]


def test_line_without_timestamp_takes_previous_timestamp() -> None:
    convs = q(
        "7@5.000010:kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\n"
        "kvm_convert_memory start 0x2000 size 0x1000 shared_to_private\n"
    )
    assert [c.time_ns for c in convs] == [5_000_010_000, 5_000_010_000]


def test_memory_fault_and_hc_map_gpa_range_used_without_convert_memory() -> None:
    stats = ParseStats()
    convs = q(
        # flags 0x8 = KVM_MEMORY_EXIT_FLAG_PRIVATE -> to private; 0 -> to shared
        "kvm_memory_fault start 0x4000000 size 0x1000 flags 0x8\n"
        "kvm_memory_fault start 0x5000000 size 0x2000 flags 0x0\n"
        # attributes = KVM_HC_MAP_GPA_RANGE args[2]: 0x10 = ENC_STAT(1) private; 0x11 = private + 2M hint
        "kvm_hc_map_gpa_range gpa 0x6c000000 size 0x8000000 attributes 0x1 flags 0x1\n"
        "kvm_hc_map_gpa_range gpa 0x200000 size 0x200000 attributes 0x11 flags 0x1\n"
        "kvm_hc_map_gpa_range gpa 0x809000 size 0x1000 attributes 0x10 flags 0x0\n",
        stats=stats,
    )
    assert ranges(convs) == [
        (0x4000000, 0x1000, True),
        (0x5000000, 0x2000, False),
        (0x6C000000, 0x8000000, False),
        (0x200000, 0x200000, True),
        (0x809000, 0x1000, True),
    ]
    assert [c.event for c in convs] == ["kvm_memory_fault"] * 2 + ["kvm_hc_map_gpa_range"] * 3
    assert stats.secondary_used


def test_hc_map_gpa_range_attribute_bit3_is_not_private() -> None:
    # QEMU passes attributes & KVM_MAP_GPA_RANGE_ENCRYPTED (1 << 4) to kvm_convert_memory: 0x8 means shared.
    (c,) = q("kvm_hc_map_gpa_range gpa 0x1000 size 0x1000 attributes 0x8 flags 0x0\n")
    assert c.to_private is False


def test_real_warning_line_from_reference() -> None:
    # guest-workloads.md §1 (KAL24): a QEMU warning and the trace event on one line.
    stats = ParseStats()
    line = (
        "qemu-system-x86_64: warning: memory fault: GPA 0x4000000 size 0x1000 flags 0x8 kvm_convert_memory "
        "start 0x4000000 size 0x1000 shared_to_private\n"
    )
    convs = q(line, stats=stats)
    assert ranges(convs) == [(0x4000000, 0x1000, True)]
    assert convs[0].event == "kvm_convert_memory"
    assert stats.informational["<memory fault warning>"] == 1
    assert not stats.secondary_used  # the line contains kvm_convert_memory


def test_warning_with_timestamped_embedded_event() -> None:
    (c,) = q(
        "qemu-system-x86_64: warning: memory fault: GPA 0x4000000 size 0x1000 flags 0x8 "
        "4332@9.000002:kvm_convert_memory start 0x4000000 size 0x1000 shared_to_private\n"
    )
    assert c.time_ns == 9_000_002_000


def test_warning_alone_is_an_implicit_conversion_other_messages_informational() -> None:
    # without kvm_convert_memory / kvm_memory_fault in the trace, the memory fault warning is the only record of the
    # KVM_EXIT_MEMORY_FAULT: flags 0x0 = not KVM_MEMORY_EXIT_FLAG_PRIVATE -> to shared
    stats = ParseStats()
    convs = q(
        "qemu-system-x86_64: warning: memory fault: GPA 0xc0000 size 0x1000 flags 0x0\n"
        "qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.80000001H:ECX [bit 23]\n"
        "qemu-system-x86_64: -accel kvm: could not access KVM kernel module\n",
        stats=stats,
    )
    assert ranges(convs) == [(0xC0000, 0x1000, False)]
    assert convs[0].event == "<memory fault warning>" and convs[0].line == 1
    assert stats.informational == {"<qemu message>": 2}
    assert stats.secondary_used and stats.bad_lines == 0


def test_iso_timestamp_and_program_context_prefix() -> None:
    # 2024-06-10T06:13:20Z = 1718000000 s since the epoch (1718000000 = 19883 days * 86400 + 22400 s; 22400 s =
    # 6 h 13 min 20 s; day 19883 after 1970-01-01 is 2024-06-10).
    (c,) = q(
        "2024-06-10T06:13:20.250000Z qemu-system-x86_64(4321:CPU 0/KVM): kvm_convert_memory start 0x1000 "
        "size 0x1000 shared_to_private\n"
    )
    assert c.time_ns == 1_718_000_000_250_000_000
    (c,) = q("2024-06-10T08:13:20+02:00 kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\n")
    assert c.time_ns == 1_718_000_000_000_000_000


def test_unknown_events_skipped_and_counted() -> None:
    stats = ParseStats()
    convs = q(
        "4330@1.000000:kvm_run_exit cpu_index 0, reason 3\n"
        "4330@1.000001:kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\n"
        "memory_region_ops_read cpu 0 mr 0x562fdfbb3820 addr 0x3cc value 0x67 size 1\n"
        "4330@1.000002:kvm_run_exit cpu_index 0, reason 39\n",
        stats=stats,
    )
    assert len(convs) == 1
    assert stats.skipped_unknown == {"kvm_run_exit": 2, "memory_region_ops_read": 1}
    assert stats.lines == 4
    assert (stats.first_time_ns, stats.last_time_ns) == (1_000_000_000, 1_000_002_000)


# --------------------------------------------------------------------------------------------- duplicates


def test_convert_memory_is_authoritative() -> None:
    # QEMU logs the exit (hc_map_gpa_range / memory_fault) and then the conversion it performs: replay once.
    stats = ParseStats()
    convs = q(
        "1@1.000001:kvm_hc_map_gpa_range gpa 0x809000 size 0x1000 attributes 0x0 flags 0x1\n"
        "1@1.000003:kvm_convert_memory start 0x809000 size 0x1000 private_to_shared\n"
        "1@1.000005:kvm_memory_fault start 0x4000000 size 0x1000 flags 0x8\n"
        "1@1.000006:kvm_convert_memory start 0x4000000 size 0x1000 shared_to_private\n"
        # a secondary event with no kvm_convert_memory after it is still not replayed (whole-trace policy)
        "1@1.000007:kvm_hc_map_gpa_range gpa 0x900000 size 0x1000 attributes 0x0 flags 0x1\n",
        stats=stats,
    )
    assert ranges(convs) == [(0x809000, 0x1000, False), (0x4000000, 0x1000, True)]
    assert [c.line for c in convs] == [2, 4]
    assert stats.informational == {"kvm_hc_map_gpa_range": 2, "kvm_memory_fault": 1}
    assert not stats.secondary_used


def test_authoritative_detection_ignores_comments() -> None:
    stats = ParseStats()
    convs = q(
        "# no kvm_convert_memory here, only in this comment\n"
        "kvm_hc_map_gpa_range gpa 0x1000 size 0x1000 attributes 0x0 flags 0x0\n",
        stats=stats,
    )
    assert len(convs) == 1 and stats.secondary_used


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (
            "kvm_convert_memory start 0x1000 size 0xZZ shared_to_private",
            "bad size '0xZZ' in kvm_convert_memory",
        ),
        ("kvm_convert_memory start 0x1000 size", "truncated kvm_convert_memory: missing size"),
        ("kvm_convert_memory start 0x1000 size 0x1000", "truncated kvm_convert_memory: missing msg"),
        ("kvm_convert_memory", "truncated kvm_convert_memory: missing start"),
        (
            "kvm_convert_memory start 0x1000 size 0x1000 sideways",
            "bad direction 'sideways' in kvm_convert_memory (expected shared_to_private or private_to_shared)",
        ),
        (
            "kvm_convert_memory start 0x1000 size 0x1000 shared_to_private trailing",
            "unexpected text 'trailing' after kvm_convert_memory fields",
        ),
        (
            "kvm_convert_memory begin 0x1000 size 0x1000 shared_to_private",
            "expected 'start' in kvm_convert_memory, got 'begin'",
        ),
        ("kvm_convert_memory start 0x1000 size 0x0 shared_to_private", "zero size in kvm_convert_memory"),
        (
            "kvm_convert_memory start 0x1800 size 0x1000 shared_to_private",
            "gpa 0x1800 not 4K-aligned in kvm_convert_memory",
        ),
        (
            "kvm_memory_fault start 0x1000 size 0x800 flags 0x8",
            "size 0x800 not a multiple of 4K in kvm_memory_fault",
        ),
        (
            "kvm_hc_map_gpa_range gpa 0xffffffffffff000 size 0x2000 attributes 0x0 flags 0x0",
            "range 0xffffffffffff000+0x2000 ends beyond 2^52 (the physical address limit) in kvm_hc_map_gpa_range",
        ),
        (
            "kvm_convert_memory start 0x10000000000000000 size 0x1000 shared_to_private",
            "bad start '0x10000000000000000' in kvm_convert_memory (more than 64 bits)",
        ),
        ("kvm_convert_memory start -0x1000 size 0x1000 shared_to_private", "bad start '-0x1000' in kvm_convert_memory"),
        ("kvm_memory_fault start 0x1000 size 0x1000 flags -8", "bad flags '-8' in kvm_memory_fault"),
        ("%%% garbage", "unrecognised line '%%% garbage' (not a QEMU trace event)"),
        (
            "kvm_convert_memory: start 0x1000 size 0x1000 shared_to_private",
            "malformed kvm_convert_memory line: unexpected ':' after the event name",
        ),
        (
            "2024-13-01T00:00:00Z kvm_convert_memory start 0x1000 size 0x1000 shared_to_private",
            "bad timestamp '2024-13-01T00:00:00Z'",
        ),
    ],
)
def test_strict_errors_name_file_and_line(line: str, reason: str) -> None:
    good = "1@1.000000:kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\n"
    with pytest.raises(TraceError) as exc:
        q(good * 2 + line + "\n" + good)
    assert exc.value.line == 3
    assert exc.value.reason == reason
    assert str(exc.value) == f"<stream>:3: {reason}"


def test_error_message_names_the_file(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    lines = ["kvm_convert_memory start 0x1000 size 0x1000 shared_to_private"] * 16
    lines.append("kvm_convert_memory start 0x1000 size 0xZZ shared_to_private")
    (tmp_path / "trace.log").write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceError) as exc:
        list(parse_qemu("trace.log"))
    assert str(exc.value) == "trace.log:17: bad size '0xZZ' in kvm_convert_memory"
    assert (exc.value.file, exc.value.line) == ("trace.log", 17)
    assert isinstance(exc.value, ValueError)


def test_timestamp_going_backwards_strict_and_lenient() -> None:
    text = (
        "1@2.000000:kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\n"
        "1@1.500000:kvm_convert_memory start 0x2000 size 0x1000 shared_to_private\n"
        "1@2.000001:kvm_convert_memory start 0x3000 size 0x1000 shared_to_private\n"
    )
    with pytest.raises(TraceError, match=r"^<stream>:2: timestamp 1\.500000000 goes backwards"):
        q(text)
    stats = ParseStats()
    convs = q(text, lenient=True, stats=stats)
    assert [c.time_ns for c in convs] == [2_000_000_000, 2_000_000_000, 2_000_001_000]  # clamped
    assert stats.clamped_timestamps == 1 and stats.bad_lines == 0


def test_lenient_skips_and_counts_bad_lines() -> None:
    stats = ParseStats()
    convs = q(
        "kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\n"
        "kvm_convert_memory start 0x1000 size 0xZZ shared_to_private\n"  # bad value
        "kvm_convert_memory start 0x1000\n"  # truncated
        "@@@\n"  # garbage
        "kvm_convert_memory start 0x1000 size 0x0 shared_to_private\n"  # zero size
        "kvm_convert_memory start 0x2000 size 0x1000 private_to_shared\n",
        lenient=True,
        stats=stats,
    )
    assert ranges(convs) == [(0x1000, 0x1000, True), (0x2000, 0x1000, False)]
    assert stats.bad_lines == 4
    assert [e.split(":")[1] for e in stats.errors] == ["2", "3", "4", "5"]
    assert (stats.events, stats.pages, stats.to_private, stats.to_shared, stats.lines) == (2, 2, 1, 1, 6)
