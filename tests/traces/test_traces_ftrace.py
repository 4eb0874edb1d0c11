"""Tests for snpsim.traces.ftrace: /sys/kernel/tracing/trace and trace-cmd report text of the KVM tracepoints.

Expected values are decoded by hand from the TP_printk formats in guest-workloads.md §4 and the GHCB MSR PSC
layout in amd-snp-arch.md §9 (GHCBInfo 0x014 in bits 0-11, GFN in 12-51, operation in 52-55: 1 private, 2 shared).
"""

from __future__ import annotations

import io

import pytest

from snpsim.traces import ParseStats, TraceConversion, TraceError, parse_ftrace

PRE = "       CPU 0/KVM-4330    [003] .....  5123.000100: "


def f(text: str, *, lenient: bool = False, stats: ParseStats | None = None) -> list[TraceConversion]:
    return list(parse_ftrace(io.StringIO(text), lenient=lenient, stats=stats))


def ranges(convs: list[TraceConversion]) -> list[tuple[int, int, bool]]:
    return [(c.gpa, c.size, c.to_private) for c in convs]


# --------------------------------------------------------------------------------------------- line shapes


def test_set_mem_attributes_end_gfn_is_exclusive() -> None:
    # "%#016llx -- %#016llx [0x%lx]": gfns [0x800, 0x801) = one page at GPA 0x800000; attrs 0x8 = private.
    (c,) = f(PRE + "kvm_vm_set_mem_attributes: 0x00000000000800 -- 0x00000000000801 [0x8]\n")
    assert (c.gpa, c.size, c.to_private) == (0x800000, 0x1000, True)
    assert (c.time_ns, c.line, c.event) == (5_123_000_100_000, 1, "kvm_vm_set_mem_attributes")
    # [0x6c000, 0x74000): 0x8000 pages = 128 MiB, attrs 0 = shared
    (c,) = f(PRE + "kvm_vm_set_mem_attributes: 0x0000000006c000 -- 0x00000000074000 [0x0]\n")
    assert (c.gpa, c.size, c.to_private) == (0x6C000000, 0x8000000, False)


def test_set_mem_attributes_zero_start_prints_without_0x() -> None:
    # C's %#016llx prints 0 as sixteen zeros (the # flag adds 0x only to non-zero values).
    (c,) = f(PRE + "kvm_vm_set_mem_attributes: 0000000000000000 -- 0x00000000000010 [0x8]\n")
    assert (c.gpa, c.size) == (0, 0x10000)


def test_set_mem_attributes_with_later_tree_prefix() -> None:
    (c,) = f(PRE + "kvm_vm_set_mem_attributes: . 0x00000000000800 -- 0x00000000000802 [0x0]\n")
    assert (c.gpa, c.size, c.to_private) == (0x800000, 0x2000, False)


def test_other_attribute_bits_do_not_make_private() -> None:
    (c,) = f(PRE + "kvm_vm_set_mem_attributes: 0x00000000000800 -- 0x00000000000801 [0x7]\n")
    assert c.to_private is False


def test_trace_cmd_report_without_flags_and_headers() -> None:
    stats = ParseStats()
    convs = f(
        "version = 6\n"
        "cpus=8\n"
        "CPU 0 is empty\n"
        "CPU 1 is empty\n"
        "   CPU 2/KVM-4332  [006]  5125.502047: kvm_vm_set_mem_attributes: 0x00000000004000 -- 0x00000000004001 "
        "[0x8]\n"
        "qemu-system-x86-4321  [001]  5125.600000123: kvm_vm_set_mem_attributes: 0x00000000104b18 -- "
        "0x00000000104b1a [0x0]\n",
        stats=stats,
    )
    assert ranges(convs) == [(0x4000000, 0x1000, True), (0x104B18000, 0x2000, False)]
    # 6 and 9 fraction digits: 5125.502047 s and 5125.600000123 s
    assert [c.time_ns for c in convs] == [5_125_502_047_000, 5_125_600_000_123]
    assert stats.bad_lines == 0 and stats.lines == 6


def test_tgid_column_latency_flags_and_lost_events() -> None:
    stats = ParseStats()
    convs = f(
        "     kworker/u16:2-123     (    123) [000] d..1.   10.000001: kvm_vm_set_mem_attributes: "
        "0x00000000000001 -- 0x00000000000002 [0x8]\n"
        "CPU:3 [LOST 12 EVENTS]\n"
        "##### CPU 2 buffer started ####\n"
        "          <idle>-0       (-------) [002] ....   10.000002: kvm_exit: vcpu 0 reason npf rip 0x0\n",
        stats=stats,
    )
    assert ranges(convs) == [(0x1000, 0x1000, True)]
    assert stats.informational == {"<lost events>": 1, "kvm_exit": 1}


def test_msr_protocol_psc_decoding() -> None:
    stats = ParseStats()
    convs = f(
        # 0x0020000000809014: info 0x014 (PSC request), GFN 0x809, op 2 -> shared
        PRE
        + "kvm_vmgexit_msr_protocol_enter: vcpu 0, ghcb_gpa 0020000000809014\n"
        # 0x001000fffffff014: GFN 0xfffffff (bits 12-51), op 1 -> private
        + PRE
        + "kvm_vmgexit_msr_protocol_enter: vcpu 3, ghcb_gpa 001000fffffff014\n"
        # 0x000000007fd44012: GHCB GPA registration (0x012): not a PSC
        + PRE
        + "kvm_vmgexit_msr_protocol_enter: vcpu 1, ghcb_gpa 000000007fd44012\n"
        + PRE
        + "kvm_vmgexit_msr_protocol_exit: vcpu 1, ghcb_gpa 000000007fd44012, result 1\n",
        stats=stats,
    )
    assert ranges(convs) == [(0x809000, 0x1000, False), (0xFFFFFFF000, 0x1000, True)]
    assert [c.event for c in convs] == ["kvm_vmgexit_msr_protocol_enter"] * 2
    assert stats.informational == {"kvm_vmgexit_msr_protocol_enter": 1, "kvm_vmgexit_msr_protocol_exit": 1}
    assert stats.secondary_used


def test_hypercall_map_gpa_range() -> None:
    stats = ParseStats()
    convs = f(
        # nr 0xc = KVM_HC_MAP_GPA_RANGE: a0 gpa, a1 4K pages, a2 bit 4 = encrypted; a2 0x11 = private + 2M hint
        PRE
        + "kvm_hypercall: nr 0xc a0 0x10000 a1 0x3 a2 0x11 a3 0x0\n"
        + PRE
        + "kvm_hypercall: nr 0xc a0 0x200000 a1 0x200 a2 0x1 a3 0x0\n"
        + PRE
        + "kvm_hypercall: nr 0xa a0 0x7 a1 0x0 a2 0x0 a3 0xfd\n",  # KVM_HC_SEND_IPI: informational
        stats=stats,
    )
    assert ranges(convs) == [(0x10000, 0x3000, True), (0x200000, 0x200000, False)]
    assert stats.informational == {"kvm_hypercall": 1}


def test_informational_and_unknown_events_counted() -> None:
    stats = ParseStats()
    lines = [
        "kvm_rmp_fault: vcpu 1 gpa 000000006c200000 pfn 0x1a3c200 error_code 0x80000007 rmp_level 1 psmash_ret 0",
        "kvm_page_fault: vcpu 2 rip 0xffffffff8107a2b0 address 0x0000000004000000 error_code 0x100000004",
        "kvm_page_fault: address 4000000 error_code 4",  # older kernels print fewer fields: not checked
        "kvm_mmu_spte_requested: gfn 6c200 pfn 1a3c200 level 1",
        "kvm_vmgexit_enter: vcpu 0, exit_reason 80000010, exit_info1 0, exit_info2 0",
        "kvm_vmgexit_exit: vcpu 0, exit_reason 80000010, exit_info1 0, exit_info2 0",
        "kvm_userspace_exit: reason KVM_EXIT_HYPERCALL (3)",
        "kvm_exit: vcpu 0 reason vmgexit rip 0xffffffff81b2c1a4 info1 0x0000000000000000 info2 0x0000000000000000 "
        "intr_info 0x00000000 error_code 0x00000000",
        "kvm_entry: vcpu 0, rip 0xffffffff81b2c1a7",
        "sched_switch: prev_comm=CPU 0/KVM prev_pid=4330 prev_prio=120 prev_state=S ==> next_comm=swapper/3",
    ]
    assert f("".join(PRE + line + "\n" for line in lines), stats=stats) == []
    assert stats.informational == {
        "kvm_rmp_fault": 1,
        "kvm_page_fault": 2,
        "kvm_mmu_spte_requested": 1,
        "kvm_vmgexit_enter": 1,
        "kvm_vmgexit_exit": 1,
        "kvm_userspace_exit": 1,
        "kvm_exit": 1,
    }
    assert stats.skipped_unknown == {"kvm_entry": 1, "sched_switch": 1}


def test_counter_clock_integer_timestamps_are_ns() -> None:
    (c,) = f("  qemu-1  [000]  123456789: kvm_vm_set_mem_attributes: 0x00000000000001 -- 0x00000000000002 [0x0]\n")
    assert c.time_ns == 123456789


# --------------------------------------------------------------------------------------------- duplicates


def test_set_mem_attributes_is_authoritative() -> None:
    stats = ParseStats()
    convs = f(
        PRE
        + "kvm_vmgexit_msr_protocol_enter: vcpu 0, ghcb_gpa 0020000000809014\n"
        + PRE
        + "kvm_userspace_exit: reason KVM_EXIT_HYPERCALL (3)\n"
        + PRE
        + "kvm_vm_set_mem_attributes: 0x00000000000809 -- 0x0000000000080a [0x0]\n"
        + PRE
        + "kvm_hypercall: nr 0xc a0 0x10000 a1 0x3 a2 0x10 a3 0x0\n",
        stats=stats,
    )
    assert ranges(convs) == [(0x809000, 0x1000, False)]
    assert convs[0].line == 3
    assert stats.informational["kvm_vmgexit_msr_protocol_enter"] == 1
    assert stats.informational["kvm_hypercall"] == 1
    assert not stats.secondary_used


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (
            PRE + "kvm_vm_set_mem_attributes: 0x00000000000020 -- 0x00000000000010 [0x8]",
            "end gfn 0x10 before start gfn 0x20 in kvm_vm_set_mem_attributes",
        ),
        (
            PRE + "kvm_vm_set_mem_attributes: 0x00000000000010 -- 0x00000000000010 [0x8]",
            "zero size in kvm_vm_set_mem_attributes",
        ),
        (
            PRE + "kvm_vm_set_mem_attributes: 0x00000000000010 -- 0x0000000000001g [0x8]",
            "bad end '0x0000000000001g' in kvm_vm_set_mem_attributes",
        ),
        (
            PRE + "kvm_vm_set_mem_attributes: 0x00000000000010 -- 0x00000000000011",
            "truncated kvm_vm_set_mem_attributes: missing attributes",
        ),
        (
            # (0x10000000000001 - 0x10) pages = 0xffffffffffff1 pages = 0xffffffffffff1000 bytes from GPA 0x10000
            PRE + "kvm_vm_set_mem_attributes: 0x00000000000010 -- 0x10000000000001 [0x8]",
            "range 0x10000+0xffffffffffff1000 ends beyond 2^52 (the physical address limit) in "
            "kvm_vm_set_mem_attributes",
        ),
        (
            PRE + "kvm_vmgexit_msr_protocol_enter: vcpu 0, ghcb_gpa 0030000000809014",
            "PSC request with operation 3 (expected 1 private or 2 shared) in kvm_vmgexit_msr_protocol_enter",
        ),
        (
            PRE + "kvm_vmgexit_msr_protocol_enter: vcpu -1, ghcb_gpa 0020000000809014",
            "bad vcpu '-1' in kvm_vmgexit_msr_protocol_enter",
        ),
        (PRE + "kvm_hypercall: nr 0xc a0 0x10000 a1 0x0 a2 0x10 a3 0x0", "zero size (a1 = 0 pages) in kvm_hypercall"),
        (
            PRE + "kvm_hypercall: nr 0xc a0 0x10800 a1 0x1 a2 0x10 a3 0x0",
            "gpa 0x10800 not 4K-aligned in kvm_hypercall",
        ),
        (PRE + "kvm_hypercall: nr 0xc a0 0x10000 a1 0x1", "truncated kvm_hypercall: missing a2"),
        ("this is not an ftrace line", "unrecognised line 'this is not an ftrace line' (not an ftrace event line)"),
        (
            "       CPU 0/KVM-4330    [003] .....  5123.000050: kvm_exit: vcpu 0",
            "timestamp 5123.000050000 goes backwards (previous line: 5123.000100000)",
        ),
    ],
)
def test_strict_errors_name_file_and_line(line: str, reason: str) -> None:
    good = PRE + "kvm_vm_set_mem_attributes: 0x00000000000001 -- 0x00000000000002 [0x8]\n"
    with pytest.raises(TraceError) as exc:
        f("# tracer: nop\n#\n" + good + line + "\n" + good)
    assert (exc.value.line, exc.value.reason) == (4, reason)
    assert str(exc.value) == f"<stream>:4: {reason}"


def test_lenient_counts_bad_lines_and_clamps() -> None:
    stats = ParseStats()
    convs = f(
        PRE + "kvm_vm_set_mem_attributes: 0x00000000000001 -- 0x00000000000002 [0x8]\n"
        "garbage\n"
        + PRE
        + "kvm_vm_set_mem_attributes: 0x00000000000003 -- 0x00000000000002 [0x8]\n"
        + "  q-1  [000]  5000.000000: kvm_vm_set_mem_attributes: 0x00000000000005 -- 0x00000000000006 [0x0]\n",
        lenient=True,
        stats=stats,
    )
    assert ranges(convs) == [(0x1000, 0x1000, True), (0x5000, 0x1000, False)]
    assert [c.time_ns for c in convs] == [5_123_000_100_000, 5_123_000_100_000]  # second one clamped
    assert (stats.bad_lines, stats.clamped_timestamps) == (2, 1)
    assert stats.errors[0].startswith("<stream>:2: unrecognised line 'garbage'")
    assert stats.errors[1].startswith("<stream>:3: end gfn 0x2 before start gfn 0x3")
