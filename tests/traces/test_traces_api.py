"""Tests for snpsim.traces: parse() / TraceReader, format detection, the example traces, and replay to guest events.

The example traces (examples/traces/) describe one small SNP boot (4 GiB, 4 vCPUs; guest-workloads.md §2 rows):
4 OVMF GHCB pages and 4 Linux per-CPU GHCB pages made shared with the MSR protocol (row 1, OVMF notes), the
256 MiB SWIOTLB pool as two 128 MiB exits (row 5: 64 2M entries per VMGEXIT), three 512 KiB DMA atomic pools as
two 64-page exits each (row 7: 4K entries, 64 per VMGEXIT), 7 two-page vrings (rows 8a/8b: 3 net + 4 blk queues),
2 attestation pages (row 10), two vrings freed back to private, and one page flipped to shared and back to private
by implicit conversions (KVM_EXIT_MEMORY_FAULT). Hand count:

    conversions   4 + 4 + 2 + 6 + 7 + 2 + 2 + 2 = 29   (26 to shared, 3 to private)
    shared pages  4 + 4 + 2*32768 + 6*64 + 7*2 + 2 + 1 = 65945
    private pages 2*2 + 1 = 5
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from snpsim import ConfigError
from snpsim.guest.events import Conversion, Protocol, Timed
from snpsim.guest.linux import LinuxGuestConfig
from snpsim.traces import (
    TraceConversion,
    TraceError,
    TraceReader,
    detect_format,
    infer_memory_bytes,
    parse,
    to_guest_events,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "traces"
QEMU_EXAMPLE = EXAMPLES / "qemu-boot.log"
FTRACE_EXAMPLE = EXAMPLES / "ftrace-boot.txt"
GIB = 1 << 30

#: The 29 conversions of the example boot in order: (gpa, size, to_private).
EXPECTED = (
    [(gpa, 0x1000, False) for gpa in (0x809000, 0x80B000, 0x80D000, 0x80F000)]
    + [(gpa, 0x1000, False) for gpa in (0x7FD41000, 0x7FD44000, 0x7FD47000, 0x7FD4A000)]
    + [(0x6C000000, 0x8000000, False), (0x74000000, 0x8000000, False)]
    + [(gpa, 0x40000, False) for gpa in (0xC00000, 0xC40000, 0x7D000000, 0x7D040000, 0x17FE00000, 0x17FE40000)]
    + [(gpa, 0x2000, False) for gpa in (0x104A20000, 0x104A24000, 0x104A28000)]
    + [(gpa, 0x2000, False) for gpa in (0x104B10000, 0x104B14000, 0x104B18000, 0x104B1C000)]
    + [(0x1051F0000, 0x1000, False), (0x1051F4000, 0x1000, False)]
    + [(0x104B18000, 0x2000, True), (0x104B1C000, 0x2000, True)]
    + [(0x4000000, 0x1000, False), (0x4000000, 0x1000, True)]
)


#: The launch of the example boot (examples/traces/README): (gpa, size, page type, line in qemu-boot.log). The OVMF
#: image, 4 MiB at 4 GiB - 4 MiB = 0xffc00000 (its second line, the remaining 2 MiB at 0xffe00000, is a continuation:
#: same end 0x100000000); then OVMF's SEV metadata: 0x11000 bytes of pre-validated SEC memory, the secrets and CPUID
#: pages, 0xd000 more bytes. Pages: 1024 + 17 + 1 + 1 + 13 = 1056.
EXPECTED_LAUNCH = [
    (0xFFC00000, 0x400000, "NORMAL", 12),
    (0x800000, 0x11000, "ZERO", 14),
    (0x811000, 0x1000, "SECRETS", 15),
    (0x812000, 0x1000, "CPUID", 16),
    (0x813000, 0xD000, "ZERO", 17),
]


def ranges(convs: list[TraceConversion]) -> list[tuple[int, int, bool]]:
    return [(c.gpa, c.size, c.to_private) for c in convs]


# --------------------------------------------------------------------------------------------- examples


def test_expected_list_matches_the_hand_count() -> None:
    assert len(EXPECTED) == 29
    assert sum(s >> 12 for _, s, p in EXPECTED if not p) == 65945
    assert sum(s >> 12 for _, s, p in EXPECTED if p) == 5


def test_qemu_example() -> None:
    reader = parse(QEMU_EXAMPLE)
    convs = list(reader)
    assert reader.format == "qemu"
    assert ranges(convs) == EXPECTED
    st = reader.stats
    assert (st.events, st.to_shared, st.to_private, st.pages) == (29, 26, 3, 65950)
    # 2 header comments + the launch section (3 comments, start, 2 guest_memfd warnings, 3 kvm_set_user_memory,
    # 6 launch updates, finish, 1 comment = 17 lines) + the 88 lines of the boot
    assert st.lines == 2 + 17 + 88 and st.bad_lines == 0
    # 27 explicit conversions each logged as kvm_hc_map_gpa_range first; 2 implicit ones as kvm_memory_fault;
    # every exit preceded by kvm_run_exit (not a conversion event: unknown to the parser), and so is QEMU's
    # kvm_set_user_memory of the 3 memslots; the launch start and finish; the second line of the OVMF image's
    # update is its continuation (KVM populated half of it).
    assert st.informational == {
        "kvm_hc_map_gpa_range": 27,
        "kvm_memory_fault": 2,
        "<qemu message>": 1,
        "<memory fault warning>": 1,
        "kvm_sev_snp_launch_start": 1,
        "kvm_sev_snp_launch_finish": 1,
        "<launch update continued>": 1,
    }
    assert st.skipped_unknown == {"kvm_run_exit": 29, "kvm_set_user_memory": 3}
    assert not st.secondary_used
    assert convs[0].time_ns == 1_718_000_000_000_003_000  # 4330@1718000000.000003
    assert convs[-1].time_ns == 1_718_000_002_502_038_000  # the warning line takes the previous timestamp
    assert convs[-1].line == 107
    assert st.first_time_ns == 1_717_999_996_000_000_000  # 4321@1717999996.000000: the launch start
    assert [(u.gpa, u.size, u.page_type.name, u.line) for u in st.launch] == EXPECTED_LAUNCH
    assert [(g.fd, g.size, g.flags, g.line) for g in st.guest_memfds] == [(12, 4 * GIB, 0, 7), (14, 4 << 20, 0, 8)]


def test_ftrace_example() -> None:
    reader = parse(FTRACE_EXAMPLE)
    convs = list(reader)
    assert reader.format == "ftrace"
    assert ranges(convs) == EXPECTED
    st = reader.stats
    # 12 header lines + the launch (start, 3 memslot attributes, 5 update attributes, 6 updates, finish = 16 lines)
    # + the 183 event lines of the boot
    assert (st.events, st.to_shared, st.to_private, st.pages, st.lines) == (29, 26, 3, 65950, 12 + 16 + 183)
    assert st.informational == {
        # QEMU's kvm_set_memory_attributes_private() of the 3 memslots and before each of the 5 launch updates
        "<launch set-up attributes>": 3 + 5,
        "kvm_sev_snp_launch_start": 1,
        "kvm_sev_snp_launch_finish": 1,
        "<launch update continued>": 1,
        "kvm_exit": 30,  # one per conversion + the RMP #NPF
        "kvm_userspace_exit": 29,
        "kvm_vmgexit_enter": 19,  # GHCB PSCs: 2 SWIOTLB + 6 pools + 7 vrings + 2 attestation + 2 frees
        "kvm_vmgexit_exit": 19,
        "kvm_vmgexit_msr_protocol_enter": 11,  # 8 MSR PSCs (superseded) + 3 GHCB GPA registrations
        "kvm_vmgexit_msr_protocol_exit": 11,
        "kvm_page_fault": 2,
        "kvm_mmu_spte_requested": 2,
        "kvm_rmp_fault": 1,
        "kvm_hypercall": 1,
    }
    assert st.skipped_unknown == {"kvm_entry": 29}
    assert (st.first_time_ns, st.last_time_ns) == (5_119_000_000_000, 5_125_502_050_000)
    assert [(u.gpa, u.size, u.page_type.name) for u in st.launch] == [e[:3] for e in EXPECTED_LAUNCH]
    assert st.guest_memfds == []  # QEMU's warnings go to stderr, not to the trace


def test_qemu_example_secondary_events_give_the_same_conversions(tmp_path: Path) -> None:
    # Without kvm_convert_memory (the event not enabled), the exits are replayed: the same 29 conversions.
    text = "".join(line for line in QEMU_EXAMPLE.open() if "kvm_convert_memory" not in line)
    (tmp_path / "q.log").write_text(text)
    reader = parse(tmp_path / "q.log")
    assert ranges(list(reader)) == EXPECTED
    assert reader.stats.secondary_used
    assert reader.stats.informational == {
        "<qemu message>": 1,
        "kvm_sev_snp_launch_start": 1,
        "kvm_sev_snp_launch_finish": 1,
        "<launch update continued>": 1,
    }


def test_ftrace_example_without_set_mem_attributes_sees_only_msr_pscs(tmp_path: Path) -> None:
    # An older kernel: only the 8 MSR-protocol PSCs carry ranges (GHCB PSC ranges live in guest memory).
    text = "".join(line for line in FTRACE_EXAMPLE.open() if "kvm_vm_set_mem_attributes" not in line)
    (tmp_path / "f.txt").write_text(text)
    reader = parse(tmp_path / "f.txt")
    assert ranges(list(reader)) == EXPECTED[:8]
    assert reader.stats.secondary_used
    assert reader.stats.informational["kvm_vmgexit_msr_protocol_enter"] == 3  # the GHCB registrations


def test_examples_replay_as_a_4g_guest() -> None:
    for path in (QEMU_EXAMPLE, FTRACE_EXAMPLE):
        mem, events = to_guest_events(parse(path))
        # highest end 0x17fe80000: 2 GiB low + (0x17fe80000 - 4 GiB) rounded up to 2 MiB = 2 GiB + 2 GiB
        assert mem == 4 * GIB
        assert isinstance(events, list) and len(events) == 29
        assert events[0].time_ns == 0
        convs = [e.event for e in events]
        assert all(isinstance(c, Conversion) and c.what == "trace" for c in convs)
        assert [(c.gfn << 12, c.npages << 12, c.to_private) for c in convs if isinstance(c, Conversion)] == EXPECTED
        LinuxGuestConfig(mem, 4).validate()
    _, events = to_guest_events(parse(QEMU_EXAMPLE))
    assert list(events)[-1].time_ns == 2_502_035_000  # 1718000002.502038 - 1718000000.000003


# --------------------------------------------------------------------------------------------- parse / reader


def test_detect_format() -> None:
    assert detect_format(QEMU_EXAMPLE) == "qemu"
    assert detect_format(FTRACE_EXAMPLE) == "ftrace"
    assert detect_format(io.StringIO("version = 6\ncpus=2\n")) == "ftrace"
    assert detect_format(io.StringIO("\n\n  CPU 0/KVM-1 [000] 1.0: kvm_exit: x\n")) == "ftrace"
    assert detect_format(io.StringIO("1@1.000000:kvm_run_exit cpu_index 0, reason 3\n")) == "qemu"
    assert detect_format(io.StringIO("kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\n")) == "qemu"
    assert detect_format(io.StringIO("qemu-system-x86_64: warning: x\n")) == "qemu"
    assert detect_format(io.StringIO("")) == "qemu"
    assert detect_format(io.StringIO("# only a comment\n")) == "qemu"
    with pytest.raises(TraceError, match=r"^<stream>:0: cannot detect the trace format"):
        detect_format(io.StringIO("%%%\n!!!\n"))


def test_file_object_left_in_place_by_detection() -> None:
    s = io.StringIO("1@1.000000:kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\n")
    assert detect_format(s) == "qemu"
    assert len(list(parse(s))) == 1


def test_explicit_format_overrides_detection() -> None:
    text = "kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\n"
    with pytest.raises(TraceError, match="not an ftrace event line"):
        list(parse(io.StringIO(text), "ftrace"))
    reader = parse(io.StringIO(text), "ftrace", lenient=True)
    assert list(reader) == [] and reader.stats.bad_lines == 1
    with pytest.raises(ValueError, match="format must be one of"):
        parse(io.StringIO(text), "csv")  # type: ignore[arg-type]


def test_lenient_auto_detection_of_garbage_parses_as_qemu() -> None:
    reader = parse(io.StringIO("%%%\n"), lenient=True)
    assert list(reader) == []
    assert (reader.format, reader.stats.bad_lines) == ("qemu", 1)


def test_reader_is_reiterable_for_paths_and_stats_are_per_pass() -> None:
    reader = parse(QEMU_EXAMPLE)
    assert reader.format == "auto"  # resolved by the first pass
    first = list(reader)
    stats1 = reader.stats
    second = list(reader)
    assert first == second and reader.stats is not stats1 and reader.stats.events == 29
    assert isinstance(reader, TraceReader) and "qemu-boot.log" in repr(reader)


def test_reader_is_lazy_and_stats_grow_while_iterating() -> None:
    reader = parse(FTRACE_EXAMPLE)
    it = iter(reader)
    first = next(it)
    # 12 header lines; the 16 launch lines; kvm_exit, MSR PSC enter + exit, kvm_userspace_exit; then
    # kvm_vm_set_mem_attributes
    assert first.line == 12 + 16 + 5 and reader.stats.events == 1
    assert sum(1 for _ in it) == 28 and reader.stats.events == 29


def test_non_seekable_stream_is_spooled() -> None:
    class Pipe(io.StringIO):
        def seekable(self) -> bool:
            return False

        def seek(self, *a: object) -> int:  # type: ignore[override]
            raise io.UnsupportedOperation("pipe")

    text = QEMU_EXAMPLE.read_text()
    assert ranges(list(parse(Pipe(text)))) == EXPECTED


def test_binary_file_rejected() -> None:
    with pytest.raises(TypeError, match="text mode"):
        parse(io.BytesIO(b"kvm_convert_memory"))  # type: ignore[arg-type]


def test_error_from_path_names_the_path(tmp_path: Path) -> None:
    p = tmp_path / "boot.log"
    p.write_text("kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\nkvm_convert_memory start 0x1\n")
    with pytest.raises(TraceError) as exc:
        list(parse(p))
    assert str(exc.value) == f"{p}:2: truncated kvm_convert_memory: missing size"


def test_undecodable_bytes_are_bad_lines_not_crashes(tmp_path: Path) -> None:
    p = tmp_path / "bin.log"
    p.write_bytes(b"kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\n\xff\xfe\x00garbage\n")
    reader = parse(p, lenient=True)
    assert len(list(reader)) == 1 and reader.stats.bad_lines == 1
    with pytest.raises(TraceError, match=r"bin\.log:2: unrecognised line"):
        list(parse(p))


# --------------------------------------------------------------------------------------------- replay


def conv(gpa: int, size: int, to_private: bool = False, t: int = 0, line: int = 1, event: str = "") -> TraceConversion:
    return TraceConversion(t, gpa, size, to_private, "t.log", line, event)


def test_replay_events_relative_times_and_protocol() -> None:
    convs = [
        conv(0x809000, 0x1000, False, t=5_000, event="kvm_vmgexit_msr_protocol_enter"),
        conv(0x6C000000, 0x8000000, False, t=7_500, event="kvm_vm_set_mem_attributes"),
        conv(0x104B18000, 0x2000, True, t=9_000, event="kvm_convert_memory"),
    ]
    mem, events = to_guest_events(convs)
    assert events == [
        Timed(0, Conversion(0x809, 1, False, Protocol.MSR, huge_ok=True, what="trace")),
        Timed(2_500, Conversion(0x6C000, 0x8000, False, Protocol.GHCB, huge_ok=True, what="trace")),
        Timed(4_000, Conversion(0x104B18, 2, True, Protocol.GHCB, huge_ok=True, what="trace")),
    ]
    # highest end 0x104b1a000 above 4 GiB: 2 GiB + roundup(0x4b1a000, 2M) = 2 GiB + 0x4c00000 < 2.75 GiB minimum
    assert mem == 0xB000_0000


@pytest.mark.parametrize(
    ("convs", "mem"),
    [
        ([], 64 << 20),
        ([conv(0x1000, 0x1000)], 64 << 20),  # minimum LinuxGuestConfig size
        ([conv(0x7000000, 0x1000)], 0x7200000),  # end 0x7001000 rounded up to 2 MiB
        ([conv(0x80000000 - 0x1000, 0x1000)], 0x80000000),  # exactly 2 GiB of low RAM
        ([conv(0xAFC00000, 0x1000)], 0xAFE00000),  # largest all-low q35 guest is 2.75 GiB - 2 MiB
        ([conv(0x100000000, 0x1000)], 0xB0000000),  # any RAM above 4 GiB: at least 2.75 GiB
        ([conv(0x1000, 0x1000), conv(0x17FFFF000, 0x1000)], 4 * GIB),
    ],
)
def test_infer_memory(convs: list[TraceConversion], mem: int) -> None:
    assert infer_memory_bytes(convs) == mem
    LinuxGuestConfig(mem, 1).validate()


@pytest.mark.parametrize(
    ("convs", "match"),
    [
        ([conv(0xB0000000, 0x1000, line=7)], r"^t\.log:7: conversion 0xb0000000\+0x1000 is not guest RAM"),
        ([conv(0xFFFFF000, 0x2000, line=3)], r"^t\.log:3: .*PCI hole"),  # crosses 4 GiB
        ([conv(0x90000000, 0x1000, line=2), conv(0x100000000, 0x1000, line=5)], r"^t\.log:2: "),
        ([conv(0x10_0000_0000_000, 0x1000, line=9)], r"^t\.log:9: .*more than the model's"),
    ],
)
def test_infer_memory_rejects_non_ram(convs: list[TraceConversion], match: str) -> None:
    with pytest.raises(TraceError, match=match):
        to_guest_events(convs)


def test_given_memory_is_checked_lazily() -> None:
    convs = [conv(0x1000, 0x1000, line=1), conv(0x17FFFF000, 0x1000, line=2), conv(0x180000000, 0x1000, line=3)]
    mem, events = to_guest_events(iter(convs), vm_memory=4 * GIB)
    assert mem == 4 * GIB
    assert not isinstance(events, list)
    assert next(events).event.gfn == 1
    assert next(events).event.gfn == 0x17FFFF
    with pytest.raises(TraceError, match=r"^t\.log:3: conversion 0x180000000\+0x1000 is not guest RAM of a "):
        next(events)


def test_given_memory_must_be_valid() -> None:
    with pytest.raises(ConfigError, match="vm_memory"):
        to_guest_events([], vm_memory=(4 * GIB) + 4096)
    with pytest.raises(ConfigError, match="vm_memory"):
        to_guest_events([], vm_memory="4G")  # type: ignore[arg-type]


def test_replay_rejects_times_going_backwards() -> None:
    with pytest.raises(TraceError, match=r"^t\.log:4: time 5 ns is before"):
        to_guest_events([conv(0x1000, 0x1000, t=10), conv(0x2000, 0x1000, t=5, line=4)])


def test_pathological_input_stays_bounded() -> None:
    # thousands of distinct unknown event names: the counter keeps 1000 names and lumps the rest
    text = "".join(f"event{i} x\n" for i in range(1500))
    reader = parse(io.StringIO(text), "qemu")
    assert list(reader) == []
    assert len(reader.stats.skipped_unknown) == 1001 and reader.stats.skipped_unknown["<other>"] == 500
    # decimal runs longer than Python's int-from-string limit are bad lines, not ValueErrors
    huge = "9" * 5000
    for text, fmt in (
        (f"1@{huge}.1:kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\n", "qemu"),
        (f" q-1 [000] {huge}.5: kvm_exit: x\n", "ftrace"),
        (f" q-1 [000] 5.5: kvm_vmgexit_msr_protocol_enter: vcpu {huge}, ghcb_gpa 0\n", "ftrace"),
        (f"2024-02-31T00:00:00Z kvm_convert_memory start 0x{huge} size 0x1000 shared_to_private\n", "qemu"),
    ):
        with pytest.raises(TraceError, match=r"^<stream>:1: "):
            list(parse(io.StringIO(text), fmt))  # type: ignore[arg-type]
