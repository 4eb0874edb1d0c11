"""Tests for the launch records of a trace (snpsim.traces.launch): QEMU's kvm_sev_snp_launch_* events, the guest_memfd
and memory-fault warnings, the guest size from the guest_memfds, and the launch handed to the simulation.

Expected values are worked out by hand from the format strings, quoted where used: QEMU target/i386/trace-events
(merged SNP series, Message-ID 20240530111643.1091816-17-pankaj.gupta@amd.com)::

    kvm_sev_snp_launch_start(uint64_t policy, char *gosvw) "policy 0x%" PRIx64 " gosvw %s"
    kvm_sev_snp_launch_update(uint64_t src, uint64_t gpa, uint64_t len, const char *type)
        "src 0x%" PRIx64 " gpa 0x%" PRIx64 " len 0x%" PRIx64 " (%s page)"
    kvm_sev_snp_launch_finish(char *id_block, char *id_auth, char *host_data) "id_block %s id_auth %s host_data %s"

and the pre-merge series' ``"addr %p gpa 0x%x len 0x%" PRIx64 " (%s page)"``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import snpsim
from snpsim.cli import app
from snpsim.guest.linux import LinuxGuestConfig
from snpsim.kvm.uapi import SnpLaunchUpdate, SnpPageType
from snpsim.runner import Simulation, default_launch
from snpsim.scenario import load
from snpsim.traces import ParseStats, TraceError, parse, parse_ftrace, parse_qemu, to_guest_events
from snpsim.traces.model import TraceGuestMemfd, TraceLaunchUpdate
from snpsim.traces.replay import FIRMWARE_MAX_BYTES, guest_memfd_ram, infer_memory_bytes, launch_updates

GIB = 1 << 30
MIB = 1 << 20
runner = CliRunner()


def qstats(text: str, *, lenient: bool = False) -> tuple[list[tuple[int, int, bool]], ParseStats]:
    stats = ParseStats()
    convs = list(parse_qemu(io.StringIO(text), lenient=lenient, stats=stats))
    return [(c.gpa, c.size, c.to_private) for c in convs], stats


def updates(stats: ParseStats) -> list[tuple[int, int, SnpPageType]]:
    return [(u.gpa, u.size, u.page_type) for u in stats.launch]


FTRACE_LINE = "  qemu-system-x86-4321    [001] .....  {ts}: {event}: {fields}\n"


def fline(ts: str, event: str, fields: str) -> str:
    return FTRACE_LINE.format(ts=ts, event=event, fields=fields)


# --------------------------------------------------------------------------------------------- launch events


def test_launch_update_upstream_format_every_page_type() -> None:
    # snp_page_type_to_str(): Normal/Zero/Unmeasured/Secrets/Cpuid = KVM_SEV_SNP_PAGE_TYPE_* 1/3/4/5/6
    convs, st = qstats(
        "1@10.000000:kvm_sev_snp_launch_start policy 0x30000 gosvw (null)\n"
        "1@10.000001:kvm_sev_snp_launch_update src 0x7f0000000000 gpa 0xffc00000 len 0x400000 (Normal page)\n"
        "1@10.000002:kvm_sev_snp_launch_update src 0x7f0000800000 gpa 0x800000 len 0x9000 (Zero page)\n"
        "1@10.000003:kvm_sev_snp_launch_update src 0x7f0000809000 gpa 0x809000 len 0x1000 (Unmeasured page)\n"
        "1@10.000004:kvm_sev_snp_launch_update src 0x7f000080a000 gpa 0x80a000 len 0x1000 (Secrets page)\n"
        "1@10.000005:kvm_sev_snp_launch_update src 0x7f000080b000 gpa 0x80b000 len 0x1000 (Cpuid page)\n"
        "1@10.000006:kvm_sev_snp_launch_finish id_block (null) id_auth (null) host_data (null)\n"
    )
    assert convs == []
    assert updates(st) == [
        (0xFFC00000, 0x400000, SnpPageType.NORMAL),
        (0x800000, 0x9000, SnpPageType.ZERO),
        (0x809000, 0x1000, SnpPageType.UNMEASURED),
        (0x80A000, 0x1000, SnpPageType.SECRETS),
        (0x80B000, 0x1000, SnpPageType.CPUID),
    ]
    assert [(u.gfn, u.npages, u.line, u.time_ns) for u in st.launch][:2] == [
        (0xFFC00, 1024, 2, 10_000_001_000),  # 0x400000 / 4096 = 1024 pages
        (0x800, 9, 3, 10_000_002_000),
    ]
    assert st.launch_pages == 1024 + 9 + 1 + 1 + 1
    assert st.informational == {"kvm_sev_snp_launch_start": 1, "kvm_sev_snp_launch_finish": 1}
    assert st.skipped_unknown == {} and st.events == 0


def test_launch_pre_merge_formats() -> None:
    # "addr %p gpa 0x%x len 0x%" PRIx64 " (%s page)"; %p of NULL prints "(nil)"; "policy 0x%" PRIx64; finish ""
    _, st = qstats(
        "kvm_sev_snp_launch_start policy 0x30000\n"
        "kvm_sev_snp_launch_update addr 0x7f5a2c000000 gpa 0x800000 len 0x1000 (Normal page)\n"
        "kvm_sev_snp_launch_update addr (nil) gpa 0x801000 len 0x2000 (Zero page)\n"
        "kvm_sev_snp_launch_finish\n"
    )
    assert updates(st) == [(0x800000, 0x1000, SnpPageType.NORMAL), (0x801000, 0x2000, SnpPageType.ZERO)]
    assert st.informational == {"kvm_sev_snp_launch_start": 1, "kvm_sev_snp_launch_finish": 1}


def test_partial_update_continuation_is_folded() -> None:
    # KVM snp_launch_update(): "params.gfn_start += count; params.len -= count * PAGE_SIZE;" and returns 0; QEMU's
    # "while (update.len || ret == -EAGAIN)" traces the rest: 0x400000 at 0xffc00000, 0x100000 pages done, then
    # 0x300000 at 0xffd00000 (same end 0x100000000), then 0x100000 at 0xfff00000: one update of 1024 pages.
    _, st = qstats(
        "kvm_sev_snp_launch_update src 0x1000 gpa 0xffc00000 len 0x400000 (Normal page)\n"
        "kvm_sev_snp_launch_update src 0x101000 gpa 0xffd00000 len 0x300000 (Normal page)\n"
        "kvm_sev_snp_launch_update src 0x301000 gpa 0xfff00000 len 0x100000 (Normal page)\n"
    )
    assert updates(st) == [(0xFFC00000, 0x400000, SnpPageType.NORMAL)]
    assert st.launch[0].line == 1
    assert st.informational == {"<launch update continued>": 2}


def test_adjacent_or_retyped_ranges_are_separate_updates() -> None:
    # a range after the previous one (not its tail), or the same tail with another type, is a new update
    _, st = qstats(
        "kvm_sev_snp_launch_update src 0x1000 gpa 0x800000 len 0x2000 (Zero page)\n"
        "kvm_sev_snp_launch_update src 0x3000 gpa 0x802000 len 0x1000 (Zero page)\n"
        "kvm_sev_snp_launch_update src 0x4000 gpa 0x802000 len 0x1000 (Secrets page)\n"
    )
    assert len(st.launch) == 3 and st.informational == {}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ("src 0x1000 gpa 0x800000 len 0x1000 (unknown page)", "bad page type 'unknown'"),
        ("src 0x1000 gpa 0x800000 len 0x1000 (Vmsa page)", "bad page type 'Vmsa'"),
        ("src 0x1000 gpa 0x800800 len 0x1000 (Normal page)", "gpa 0x800800 not 4K-aligned"),
        ("src 0x1000 gpa 0x800000 len 0x0 (Normal page)", "zero size"),
        ("src 0x1000 gpa 0x800000 len 0x1000", "truncated kvm_sev_snp_launch_update"),
        ("src 0x1000 gpa 0xZZ len 0x1000 (Normal page)", "bad gpa '0xZZ'"),
    ],
)
def test_bad_launch_update_names_file_line_and_field(fields: str, reason: str) -> None:
    text = "# launch\n" + f"kvm_sev_snp_launch_update {fields}\n"
    with pytest.raises(TraceError, match=rf"^<stream>:2: .*{reason}"):
        qstats(text)
    _, st = qstats(text, lenient=True)
    assert st.bad_lines == 1 and st.launch == []


def test_bad_launch_start_and_finish_fields() -> None:
    with pytest.raises(TraceError, match=r"<stream>:1: bad policy"):
        qstats("kvm_sev_snp_launch_start policy 30000 gosvw (null)\n")  # "policy 0x%" PRIx64: 0x required
    with pytest.raises(TraceError, match=r"<stream>:1: truncated kvm_sev_snp_launch_finish"):
        qstats("kvm_sev_snp_launch_finish id_block (null) id_auth (null)\n")


# --------------------------------------------------------------------------------------------- warnings


@pytest.mark.parametrize(
    "prefix", ["", "qemu-system-x86_64: warning: ", "2024-06-10T06:13:20.000000Z qemu-system-x86_64: warning: "]
)
def test_guest_memfd_warning_with_and_without_prefix(prefix: str) -> None:
    # "kvm_create_gmemfd: created memfd: N, size: S, flags: F"; S/F in hex with 0x or in decimal
    _, st = qstats(
        f"{prefix}kvm_create_gmemfd: created memfd: 12, size: 0x100000000, flags: 0x0\n"
        f"{prefix}kvm_create_gmemfd: created memfd: 14, size: 4194304, flags: 0\n"
    )
    assert [(g.fd, g.size, g.flags, g.line) for g in st.guest_memfds] == [(12, 4 * GIB, 0, 1), (14, 4 * MIB, 0, 2)]
    assert st.informational == {} and st.skipped_unknown == {}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("kvm_create_gmemfd: created memfd: 12, size: 0x1800, flags: 0x0", "bad size 0x1800"),
        ("kvm_create_gmemfd: created memfd: 12, size: 0, flags: 0x0", "bad size 0x0"),
        ("qemu-system-x86_64: warning: kvm_create_gmemfd: created memfd: 12, size: 0xZZ", "bad size '0xZZ'"),
        ("kvm_create_gmemfd: created memfd: 12", "truncated kvm_create_gmemfd: missing size"),
    ],
)
def test_bad_guest_memfd_warning(line: str, reason: str) -> None:
    # kvm_gmem_create(): "if (size <= 0 || !PAGE_ALIGNED(size)) return -EINVAL"
    with pytest.raises(TraceError, match=rf"^<stream>:1: {reason}"):
        qstats(line + "\n")


@pytest.mark.parametrize("prefix", ["", "qemu-system-x86_64: warning: "])
def test_memory_fault_warning_is_an_implicit_conversion(prefix: str) -> None:
    # KVM_EXIT_MEMORY_FAULT: flags & KVM_MEMORY_EXIT_FLAG_PRIVATE (0x8) -> to private
    convs, st = qstats(
        f"{prefix}memory fault: GPA 0x4000000 size 0x1000 flags 0x8\n"
        f"{prefix}memory fault: GPA 0x5000000 size 0x1000 flags 0x0\n"
    )
    assert convs == [(0x4000000, 0x1000, True), (0x5000000, 0x1000, False)]
    assert st.secondary_used and st.informational == {}


def test_memory_fault_warning_is_a_duplicate_when_the_trace_has_the_event() -> None:
    # the same exit traced as kvm_memory_fault (upstream QEMU's trace event): the warning is not replayed twice
    text = "kvm_memory_fault start 0x4000000 size 0x1000 flags 0x8\nmemory fault: GPA 0x4000000 size 0x1000 flags 0x8\n"
    convs, st = qstats(text)
    assert convs == [(0x4000000, 0x1000, True)]
    assert st.informational == {"<memory fault warning>": 1}
    # and with kvm_convert_memory (authoritative), neither is
    convs, st = qstats(text + "kvm_convert_memory start 0x4000000 size 0x1000 shared_to_private\n")
    assert convs == [(0x4000000, 0x1000, True)]
    assert st.informational == {"<memory fault warning>": 1, "kvm_memory_fault": 1}


def test_memory_fault_warning_with_an_unknown_event_after_it_is_still_the_conversion() -> None:
    convs, st = qstats(
        "qemu-system-x86_64: warning: memory fault: GPA 0x4000000 size 0x1000 flags 0x8 kvm_run_exit x\n"
    )
    assert convs == [(0x4000000, 0x1000, True)]
    assert st.skipped_unknown == {"kvm_run_exit": 1}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("memory fault: GPA 0x4000000 size 0x1000", "truncated memory fault warning: missing flags"),
        ("memory fault: GPA 0x4000800 size 0x1000 flags 0x8", "not 4K-aligned"),
        ("qemu-system-x86_64: warning: memory fault: GPA zz size 0x1000 flags 0x8", "bad gpa 'zz'"),
    ],
)
def test_bad_memory_fault_warning(line: str, reason: str) -> None:
    with pytest.raises(TraceError, match=rf"^<stream>:1: .*{reason}"):
        qstats(line + "\n")


# --------------------------------------------------------------------------------------------- ftrace


def test_ftrace_launch_through_trace_marker_and_set_up_attributes() -> None:
    # QEMU's ftrace backend: "%(name)s " fmt written to trace_marker -> "tracing_mark_write: NAME fields".
    # Attribute changes between the launch start and finish are QEMU's set-up; the one after is the guest's.
    text = (
        fline("10.000000", "tracing_mark_write", "kvm_sev_snp_launch_start policy 0x30000 gosvw (null)")
        + fline("10.000001", "kvm_vm_set_mem_attributes", "0000000000000000 -- 0x00000000080000 [0x8]")
        + fline("10.000002", "kvm_vm_set_mem_attributes", "0x000000000ffc00 -- 0x00000000100000 [0x8]")
        + fline(
            "10.000003",
            "tracing_mark_write",
            "kvm_sev_snp_launch_update src 0x1 gpa 0xffc00000 len 0x400000 (Normal page)",
        )
        + fline(
            "10.000004",
            "tracing_mark_write",
            "kvm_sev_snp_launch_finish id_block (null) id_auth (null) host_data (null)",
        )
        + fline("10.000005", "tracing_mark_write", "kvm_convert_memory start 0x809000 size 0x1000 private_to_shared")
        + fline("10.000006", "kvm_vm_set_mem_attributes", "0x00000000000809 -- 0x0000000000080a [0x0]")
        + fline("10.000007", "tracing_mark_write", "hello from userspace")
    )
    stats = ParseStats()
    convs = list(parse_ftrace(io.StringIO(text), stats=stats))
    assert [(c.gpa, c.size, c.to_private, c.line) for c in convs] == [(0x809000, 0x1000, False, 7)]
    assert updates(stats) == [(0xFFC00000, 0x400000, SnpPageType.NORMAL)]
    assert stats.informational == {
        "<launch set-up attributes>": 2,
        "kvm_sev_snp_launch_start": 1,
        "kvm_sev_snp_launch_finish": 1,
        "kvm_convert_memory": 1,  # QEMU's event: the kernel's tracepoint is authoritative
    }
    assert stats.skipped_unknown == {"tracing_mark_write": 1}


def test_ftrace_without_launch_markers_replays_every_attribute_change() -> None:
    text = fline("10.000001", "kvm_vm_set_mem_attributes", "0000000000000000 -- 0x00000000080000 [0x8]")
    assert [(c.gpa, c.size, c.to_private) for c in parse_ftrace(io.StringIO(text))] == [(0, 2 * GIB, True)]


def test_bad_launch_marker_is_a_bad_line() -> None:
    text = fline("10.0", "tracing_mark_write", "kvm_sev_snp_launch_update src 0x1 gpa 0x800000 len 0x1000 (Odd page)")
    with pytest.raises(TraceError, match=r"^<stream>:1: bad page type 'Odd'"):
        list(parse_ftrace(io.StringIO(text)))


# --------------------------------------------------------------------------------------------- guest size


def gmem(size: int, line: int = 1) -> TraceGuestMemfd:
    return TraceGuestMemfd(10 + line, size, 0, "t.log", line)


@pytest.mark.parametrize(
    ("sizes", "mem"),
    [
        ([4 * GIB, 4 * MIB], 4 * GIB),  # pc.ram + pc.bios (4 MiB <= 16 MiB: firmware)
        ([4 * MIB, 128 << 10], None),  # only firmware: no RAM size
        ([2 * GIB, 2 * GIB, 2 * MIB], 4 * GIB),  # two NUMA memory backends: their sum
        ([1 * GIB + 4096], 1 * GIB + 2 * MIB),  # rounded up to 2 MiB
        ([32 * MIB], 64 * MIB),  # raised to the model's 64 MiB minimum
        ([FIRMWARE_MAX_BYTES + 2 * MIB], 64 * MIB),  # just above the firmware limit: RAM
    ],
)
def test_guest_memfd_ram(sizes: list[int], mem: int | None) -> None:
    got = guest_memfd_ram([gmem(s, i + 1) for i, s in enumerate(sizes)])
    assert (got[0] if got is not None else None) == mem


def test_guest_memfd_ram_too_large_names_the_line() -> None:
    # 16 TiB (2^44 = 17592186044416) is the model's largest guest; 16 TiB + 32 MiB (33554432) is not
    assert guest_memfd_ram([gmem(16 << 40)]) == (16 << 40, gmem(16 << 40))
    with pytest.raises(TraceError, match=r"^t\.log:2: the guest_memfds hold 17592219598848 bytes of guest RAM"):
        guest_memfd_ram([gmem(16 << 40, 1), gmem(32 * MIB, 2)])


def conv_text(gpa: int, size: int = 0x1000) -> str:
    return f"kvm_convert_memory start {gpa:#x} size {size:#x} private_to_shared\n"


def test_guest_size_from_guest_memfds_wins_over_the_conversions(tmp_path: Path) -> None:
    # the highest conversion ends at 0x7001000 (a 114 MiB guest by the conversions), but pc.ram has 1 GiB
    trace = tmp_path / "t.log"
    trace.write_text(
        "qemu-system-x86_64: warning: kvm_create_gmemfd: created memfd: 12, size: 0x40000000, flags: 0x0\n"
        + conv_text(0x7000000)
    )
    g = to_guest_events(parse(trace))
    assert (g.memory_bytes, g.memory_from) == (GIB, "guest_memfd")
    assert infer_memory_bytes(list(parse(trace))) == 0x7200000  # without them: 0x7001000 rounded up to 2 MiB
    plan_doc = runner.invoke(app, ["replay", str(trace), "--no-save", "--json", "-q"])
    assert plan_doc.exit_code == 0, plan_doc.output
    doc = json.loads(plan_doc.stdout)["trace"]
    assert (doc["vm_memory"], doc["vm_memory_from"], doc["guest_memfd_bytes"]) == (GIB, "guest_memfd", [GIB])


def test_conversion_beyond_the_guest_memfd_ram_names_both_lines(tmp_path: Path) -> None:
    trace = tmp_path / "t.log"
    trace.write_text("kvm_create_gmemfd: created memfd: 12, size: 0x40000000, flags: 0x0\n" + conv_text(0x40000000))
    with pytest.raises(
        TraceError,
        match=r"t\.log:2: conversion 0x40000000\+0x1000 is not guest RAM of a 1073741824 "
        r"byte q35 guest .* \(its size from the guest_memfd at .*t\.log:1\)",
    ):
        snpsim.replay(trace)


# --------------------------------------------------------------------------------------------- launch for QEMU


def upd(gpa: int, size: int, t: SnpPageType = SnpPageType.NORMAL, line: int = 1) -> TraceLaunchUpdate:
    return TraceLaunchUpdate(0, gpa, size, t, "t.log", line)


def test_launch_updates_in_ram_and_in_the_bios_window() -> None:
    # a 4 GiB q35 guest: RAM [0, 2 GiB) and [4 GiB, 6 GiB); the BIOS at [4 GiB - 16 MiB, 4 GiB)
    got = launch_updates([upd(0xFFC00000, 0x400000), upd(0x800000, 0x11000, SnpPageType.ZERO, 2)], 4 * GIB)
    assert got == [SnpLaunchUpdate(0xFFC00, 1024, SnpPageType.NORMAL), SnpLaunchUpdate(0x800, 17, SnpPageType.ZERO)]
    assert launch_updates([upd(0x100000000, 0x1000)], 4 * GIB) == [SnpLaunchUpdate(0x100000, 1)]


@pytest.mark.parametrize(
    ("ups", "match"),
    [
        ([upd(0xB0000000, 0x1000, line=3)], r"^t\.log:3: launch update 0xb0000000\+0x1000 is neither guest RAM"),
        ([upd(0xFEFFF000, 0x2000, line=4)], r"^t\.log:4: .*BIOS window \[0xff000000, 0x100000000\)"),
        ([upd(0x180000000, 0x1000, line=5)], r"^t\.log:5: "),  # beyond the 2 GiB above 4 GiB
        (
            [upd(0x800000, 0x2000, line=2), upd(0x801000, 0x1000, SnpPageType.ZERO, line=6)],
            r"^t\.log:6: launch update 0x801000\+0x1000 overlaps the one at line 2",
        ),
    ],
)
def test_launch_updates_outside_the_guest_or_overlapping(ups: list[TraceLaunchUpdate], match: str) -> None:
    with pytest.raises(TraceError, match=match):
        launch_updates(ups, 4 * GIB)


def test_replay_hands_the_trace_launch_to_qemu(tmp_path: Path) -> None:
    trace = tmp_path / "t.log"
    trace.write_text(
        "kvm_sev_snp_launch_update src 0x1 gpa 0x800000 len 0x3000 (Zero page)\n"
        "kvm_sev_snp_launch_update src 0x4 gpa 0x803000 len 0x1000 (Cpuid page)\n" + conv_text(0x809000)
    )
    r = snpsim.replay(trace, "upstream", record_conversions=True)
    assert r.launch == [SnpLaunchUpdate(0x800, 3, SnpPageType.ZERO), SnpLaunchUpdate(0x803, 1, SnpPageType.CPUID)]
    # a trace without launch updates leaves the launch to the guest image's default (None)
    plain = tmp_path / "p.log"
    plain.write_text(conv_text(0x809000))
    assert snpsim.replay(plain, "upstream", record_conversions=True).launch is None


def test_simulation_passes_vm_launch_to_qemu() -> None:
    scenario = load(
        {
            "seed": 1,
            "duration": "1ms",
            "host": {"memory": "1G"},
            "vms": [
                {"memory": "128M", "vcpus": 1, "workload": "idle"},
                {"memory": "128M", "vcpus": 1, "workload": "idle"},
            ],
        }
    )
    given = [SnpLaunchUpdate(0x800, 2, SnpPageType.SECRETS)]
    sim = Simulation(scenario, vm_launch={1: given}, record_conversions=True)
    sim.run()
    # VM 0 keeps the guest image's default launch; VM 1 got the list (a copy); Result.launch records VM 0's given
    # list (none)
    assert sim.launch is None
    assert [s.qemu.launch for s in sim.live.values()] == [default_launch(LinuxGuestConfig(128 << 20, 1)), given]


def test_replay_json_and_table_count_unknown_events_by_name(tmp_path: Path) -> None:
    trace = tmp_path / "t.log"
    trace.write_text(
        "kvm_run_exit cpu_index 0, reason 3\n"
        * 3
        + "kvm_set_user_memory AddrSpace#0 Slot#0 flags=0x4 gpa=0x0 size=0x8000000 ua=0x1 guest_memfd=12 "
        "guest_memfd_offset=0x0 ret=0\n"
        + "kvm_sev_snp_launch_update src 0x1 gpa 0x800000 len 0x2000 (Zero page)\n"
        + conv_text(0x809000)
    )
    r = runner.invoke(app, ["replay", str(trace), "--no-save", "--json", "-q"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)["trace"]
    assert doc["skipped_unknown"] == {"kvm_run_exit": 3, "kvm_set_user_memory": 1}
    assert (doc["launch_updates"], doc["launch_pages"]) == (1, 2)
    table = runner.invoke(app, ["replay", str(trace), "--no-save", "-q"])
    assert table.exit_code == 0, table.output
    assert "4 unknown events (kvm_run_exit 3, kvm_set_user_memory 1)" in table.output
    assert "launch: 1 updates, 2 pages" in table.output
    empty = tmp_path / "e.log"
    empty.write_text("kvm_run_exit cpu_index 0, reason 3\n" * 2)
    bad = runner.invoke(app, ["replay", str(empty), "--no-save"])
    assert bad.exit_code == 2 and "2 unknown events: kvm_run_exit 2" in bad.output


def test_ftrace_launch_window_ends_at_the_first_vcpu_event() -> None:
    # a trace whose launch finish is missing: once a vCPU runs (kvm_entry), attribute changes are the guest's again
    text = (
        fline(
            "10.000000", "tracing_mark_write", "kvm_sev_snp_launch_update src 0x1 gpa 0x800000 len 0x1000 (Zero page)"
        )
        + fline("10.000001", "kvm_vm_set_mem_attributes", "0x00000000000800 -- 0x00000000000801 [0x8]")
        + fline("10.000002", "kvm_entry", "vcpu 0, rip 0xfffffff0")
        + fline("10.000003", "kvm_vm_set_mem_attributes", "0x00000000000809 -- 0x0000000000080a [0x0]")
    )
    stats = ParseStats()
    assert [(c.gfn, c.npages, c.to_private) for c in parse_ftrace(io.StringIO(text), stats=stats)] == [
        (0x809, 1, False)
    ]
    assert stats.informational == {"<launch set-up attributes>": 1}
