"""The single-pass scan (snpsim.traces.scan) against the per-line parsers it replaces in the replay.

Differential: for every example trace, the inline traces below and random mixtures of good, bad, secondary and
authoritative lines of both formats (hypothesis), in strict and lenient mode and under every format option, the
scan gives exactly the conversions (events included), ParseStats (launch records, unknown events by name, skipped
lines, errors) and TraceError (message and line) of one :func:`snpsim.traces.parse` pass. Replay: an example trace
replayed through the scan gives the same Result.summary and timeline as its events from the old parser path, and
replays of one scan's TraceArrays (as the CLI's presets share one) the same as replays of the file. Spool: the
temporary directory is removed after a replay, after an error and on close, never by a view of it (nor a pickled
copy), and is written only under the temp dir given.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snpsim
from snpsim.runner import Simulation
from snpsim.traces import ParseStats, TraceConversion, TraceError, parse, scan, to_guest_events
from snpsim.traces.replay import plan_replay

ROOT = Path(__file__).resolve().parents[2]
TRACE_FILES = sorted(
    p
    for d in (ROOT / "examples" / "traces", ROOT / "tests" / "traces")
    for p in d.rglob("*")
    if p.suffix in (".log", ".txt", ".trace")
)
FORMATS = ("auto", "qemu", "ftrace")

QEMU_LINES = [
    "kvm_convert_memory start 0x4000000 size 0x1000 shared_to_private",
    "kvm_convert_memory start 0x4001000 size 0x2000 private_to_shared",
    "kvm_convert_memory\tstart 0x4002000 size 0x1000 private_to_shared",  # no marker (a tab)
    "1234@1718000000.000100:kvm_convert_memory start 0x5000000 size 0x1000 private_to_shared",
    "1234@1718000000.000050:kvm_hc_map_gpa_range gpa 0x6000000 size 0x1000 attributes 0x10 flags 0x0",
    "kvm_hc_map_gpa_range gpa 0x6001000 size 0x3000 attributes 0x0 flags 0x0",
    "kvm_memory_fault start 0x7000000 size 0x1000 flags 0x8",
    "1234@1718000000.000200:kvm_memory_fault start 0x7001000 size 0x1000 flags 0x0",
    "qemu-system-x86_64: warning: memory fault: GPA 0x8000000 size 0x1000 flags 0x8",
    "memory fault: GPA 0x8001000 size 0x1000 flags 0x0",
    "qemu-system-x86_64: warning: memory fault: GPA 0x8002000 size 0x1000 flags 0x8 "
    "kvm_convert_memory start 0x8002000 size 0x1000 shared_to_private",
    "qemu-system-x86_64: warning: kvm_create_gmemfd: created memfd: 12, size: 0x40000000, flags: 0x0",
    "kvm_sev_snp_launch_start policy 0x30000 gosvw 0",
    "kvm_sev_snp_launch_update src 0x7f0000000000 gpa 0x800000 len 0x1000 (Normal page)",
    "kvm_sev_snp_launch_update src 0x7f0000001000 gpa 0x801000 len 0x1000 (Secrets page)",
    "kvm_sev_snp_launch_finish id_block 0 id_auth 0 host_data 0",
    "2026-06-10T12:00:00.000300Z kvm_convert_memory start 0x9000000 size 0x1000 shared_to_private",
    "kvm_run_exit cpu_index 0 reason 2",
    "kvm_set_user_memory Slot#0 flags 0x4",
    "qemu-system-x86_64: terminating on signal 15",
    "# a comment with kvm_convert_memory in it",
    "",
    # bad lines
    "kvm_convert_memory start 0x4000800 size 0x1000 shared_to_private",
    "kvm_convert_memory start 0x4000000 size 0x0 shared_to_private",
    "kvm_convert_memory start 0x4000000 size 0x1000 sideways",
    "kvm_memory_fault start 0xZZ size 0x1000 flags 0x8",
    "1234@1.000000:kvm_convert_memory start 0x4000000 size 0x1000 shared_to_private",  # goes backwards
    "kvm_convert_memory: start 0x4000000",
    "!!! garbage",
    # what the whole-line fast path must leave to the line parser
    "kvm_convert_memory start 0x4000000 size 0x1000 shared_to_private\x85",  # a blank str.strip() removes
    "kvm_convert_memory start 0x00000000000004000000 size 0x1000 private_to_shared",  # > 16 characters
    "kvm_convert_memory start 0x10000000000000000000 size 0x1000 private_to_shared",  # > 64 bits
    "  1234@1718000000.000300:kvm_memory_fault start 0x7002000 size 0x1000 flags 0x8\r",
]
GARBAGE = "!!! garbage"
FTRACE_LINES = [
    "# tracer: nop",
    "#",
    " qemu-system-x86-1234    [003] .....  1234.567890: kvm_vm_set_mem_attributes: 0x00000000000800 -- "
    "0x00000000000801 [0x8]",
    " qemu-system-x86-1234    [003] .....  1234.567900: kvm_vm_set_mem_attributes: 0x00000000000900 -- "
    "0x00000000000904 [0x0]",
    "    CPU 0/KVM-1240    [001] .....  1234.568000: kvm_vmgexit_msr_protocol_enter: vcpu 0, ghcb_gpa 0010000000801014",
    "    CPU 0/KVM-1240    [001] .....  1234.568100: kvm_vmgexit_msr_protocol_enter: vcpu 0, ghcb_gpa 0020000000802014",
    "    CPU 0/KVM-1240    [001] .....  1234.568200: kvm_hypercall: nr 0xc a0 0x803000 a1 0x2 a2 0x10 a3 0x0",
    "    CPU 0/KVM-1240    [001] .....  1234.568300: kvm_hypercall: nr 0x5 a0 0x0 a1 0x0 a2 0x0 a3 0x0",
    "    CPU 0/KVM-1240    [001] .....  1234.568400: kvm_rmp_fault: vcpu 0 gpa 0x800000 error_code 0x1",
    "    CPU 0/KVM-1240    [001] .....  1234.568500: kvm_exit: reason NPF",
    "    CPU 0/KVM-1240    [001] .....  1234.568600: kvm_fpu: load",
    " qemu-system-x86-1234    [003] .....  1234.568700: tracing_mark_write: kvm_sev_snp_launch_start policy "
    "0x30000 gosvw 0",
    " qemu-system-x86-1234    [003] .....  1234.568800: tracing_mark_write: kvm_sev_snp_launch_update src "
    "0x7f0000000000 gpa 0x800000 len 0x1000 (Normal page)",
    " qemu-system-x86-1234    [003] .....  1234.568900: tracing_mark_write: kvm_sev_snp_launch_finish",
    " qemu-system-x86-1234    [003] .....  1234.569000: tracing_mark_write: hello",
    "CPU:2 [LOST 12 EVENTS]",
    "cpus=4",
    "",
    # bad lines
    " qemu-system-x86-1234    [003] .....  1234.569100: kvm_vm_set_mem_attributes: 0x00000000000801 -- "
    "0x00000000000800 [0x8]",
    "    CPU 0/KVM-1240    [001] .....  1234.569200: kvm_vmgexit_msr_protocol_enter: vcpu 0, ghcb_gpa 0030000000802014",
    "    CPU 0/KVM-1240    [001] .....     1.000000: kvm_exit: reason NPF",  # goes backwards
    "not an ftrace line",
]
FIXTURES = {
    "secondary-before-marker.log": "\n".join([QEMU_LINES[4], QEMU_LINES[6], QEMU_LINES[8], QEMU_LINES[0]]),
    "warning-then-fault.log": "\n".join([QEMU_LINES[9], QEMU_LINES[5], QEMU_LINES[6]]),
    "warning-then-timestamp.log": "\n".join(
        [QEMU_LINES[9], "1234@0.000001:kvm_run_exit x", QEMU_LINES[0], "memory fault: GPA 0x0 size 0x1000 flags 0"]
    ),
    "secondary-only.log": "\n".join(QEMU_LINES[4:10]),
    "msr-before-marker.txt": "\n".join([FTRACE_LINES[0], FTRACE_LINES[4], FTRACE_LINES[6], FTRACE_LINES[2]]),
    "msr-only.txt": "\n".join([FTRACE_LINES[0], *FTRACE_LINES[4:8]]),
    "error-before-marker.log": "\n".join([QEMU_LINES[4], GARBAGE, QEMU_LINES[0]]),
    "empty.log": "",
    "comments.log": "# only\n# comments\n",
}
DIFF = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(src: Any, fmt: str, lenient: bool) -> tuple[list[TraceConversion], list[str], ParseStats, Any]:
    """What one per-line parser pass gives: conversions, their events, stats, and the error (str, line) if any."""
    reader = parse(src, fmt, lenient)  # type: ignore[arg-type]
    out: list[TraceConversion] = []
    error: Any = None
    try:
        out.extend(reader)
    except TraceError as e:
        error = (str(e), e.line)
    return out, [c.event for c in out], reader.stats, error


def scanned(
    src: Any, fmt: str, lenient: bool, spool: Path
) -> tuple[list[TraceConversion], list[str], ParseStats | None, Any]:
    try:
        with scan(src, fmt, lenient, spool_dir=spool) as arrays:
            out = list(arrays.conversions())
            assert len(arrays) == len(out)
            assert arrays.gfn.tolist() == [c.gfn for c in out]
            assert arrays.line.tolist() == [c.line for c in out]
            return out, [c.event for c in out], arrays.stats, None
    except TraceError as e:
        return [], [], getattr(e, "stats", None), (str(e), e.line)
    finally:
        assert not list(spool.iterdir()), "the spool directory is left behind"


def check_same(src_ref: Any, src_scan: Any, fmt: str, lenient: bool, spool: Path) -> None:
    ref = reference(src_ref, fmt, lenient)
    got = scanned(src_scan, fmt, lenient, spool)
    if ref[3] is not None:  # strict error: the same message at the same line
        assert got[3] == ref[3]
        return
    assert got[3] is None
    assert got[0] == ref[0]
    assert got[1] == ref[1]
    assert got[2] == ref[2]


@pytest.fixture()
def spool(tmp_path: Path) -> Path:
    d = tmp_path / "spool"
    d.mkdir()
    return d


@pytest.mark.parametrize("lenient", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("path", TRACE_FILES, ids=lambda p: p.name)
def test_scan_matches_parser_on_trace_files(path: Path, fmt: str, lenient: bool, spool: Path) -> None:
    check_same(path, path, fmt, lenient, spool)


@pytest.mark.parametrize("lenient", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_scan_matches_parser_on_fixtures(name: str, fmt: str, lenient: bool, tmp_path: Path, spool: Path) -> None:
    path = tmp_path / name
    path.write_text(FIXTURES[name])
    check_same(path, path, fmt, lenient, spool)
    # an open (seekable) text file too
    check_same(io.StringIO(FIXTURES[name]), io.StringIO(FIXTURES[name]), fmt, lenient, spool)


def test_scan_strict_error_stats_match(tmp_path: Path, spool: Path) -> None:
    """A strict pass's stats up to the error: the secondary lines before the marker are counted as the reference
    counts them (the marker after the error is found by reading on)."""
    text = "\n".join([QEMU_LINES[4], QEMU_LINES[6], GARBAGE, QEMU_LINES[0]])
    reader = parse(io.StringIO(text))
    with pytest.raises(TraceError) as ref:
        list(reader)
    with pytest.raises(TraceError) as got:
        scan(io.StringIO(text), spool_dir=spool)
    assert (str(got.value), got.value.line) == (str(ref.value), ref.value.line) == (str(ref.value), 3)
    assert not list(spool.iterdir())


def test_scan_rereads_only_when_a_warning_cannot_be_undone(tmp_path: Path, spool: Path) -> None:
    one = tmp_path / "one.log"
    one.write_text(FIXTURES["secondary-before-marker.log"])
    two = tmp_path / "two.log"
    two.write_text(FIXTURES["warning-then-fault.log"])
    with scan(one, spool_dir=spool) as a, scan(two, spool_dir=spool) as b:
        assert (a.passes, b.passes) == (1, 2)


lines = st.one_of(
    st.sampled_from(QEMU_LINES),
    st.sampled_from(FTRACE_LINES),
    st.text(alphabet="kvm_ 0x1@.:#\t-[]", max_size=30),
)


@DIFF
@given(body=st.lists(lines, max_size=30), fmt=st.sampled_from(FORMATS), lenient=st.booleans())
def test_scan_matches_parser_hypothesis(body: list[str], fmt: str, lenient: bool) -> None:
    text = "\n".join(body)
    with tempfile.TemporaryDirectory() as tmp:
        check_same(io.StringIO(text), io.StringIO(text), fmt, lenient, Path(tmp))


# ------------------------------------------------------------------------------------------------ replay


def old_replay(trace: Path, **options: Any) -> Any:
    """The replay as the old code path ran it: the events from the per-line parser (``to_guest_events(parse())``),
    the scenario from the plan (checked against the reference's time span and RAM size)."""
    guest = to_guest_events(parse(trace))
    convs = list(parse(trace))
    plan = plan_replay(trace, "upstream", **options)
    plan.close()
    assert plan.scenario.vms[0].memory == guest.memory_bytes
    assert plan.scenario.duration_ns == convs[-1].time_ns - convs[0].time_ns + 1_000_000
    assert plan.launch == guest.launch
    sim = Simulation(plan.scenario, vm_events={0: guest.events}, vm_launch={0: guest.launch} if guest.launch else None)
    return sim.run()


@pytest.mark.parametrize("name", ["qemu-boot.log", "ftrace-boot.txt"])
def test_replay_same_result_as_old_path(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = ROOT / "examples" / "traces" / name
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    expected = old_replay(trace)
    got = snpsim.replay(trace, "upstream")
    assert got.summary == expected.summary
    pd.testing.assert_frame_equal(got.timeline, expected.timeline)
    assert os.listdir(tmp_path) == []


def test_spool_removed_after_replay_and_on_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    trace = ROOT / "examples" / "traces" / "qemu-boot.log"
    seen: list[list[str]] = []

    def progress(_frac: float) -> None:
        seen.append(os.listdir(spool))

    snpsim.replay(trace, "upstream", progress=progress)
    assert any(seen), "the replay spooled its conversions under the temp dir given"
    assert os.listdir(spool) == []

    def boom(_frac: float) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        snpsim.replay(trace, "upstream", progress=boom)
    assert os.listdir(spool) == []

    with pytest.raises(TraceError):  # a conversion outside the given guest's RAM (the trace reaches 4 GiB)
        snpsim.replay(trace, "upstream", vm_memory="64M")
    assert os.listdir(spool) == []

    bad = tmp_path / "bad.log"
    bad.write_text(QEMU_LINES[0] + "\n" + GARBAGE + "\n")
    with pytest.raises(TraceError, match=r"bad\.log:2: "):
        snpsim.replay(bad, "upstream")
    assert os.listdir(spool) == []

    plan = plan_replay(trace, "upstream")  # planned, never replayed
    assert os.listdir(spool) != []
    plan.close()
    assert os.listdir(spool) == []
    assert os.listdir(tmp_path) == ["tmp", "bad.log"] or sorted(os.listdir(tmp_path)) == ["bad.log", "tmp"]


def test_a_view_shares_the_spool_and_never_removes_it(tmp_path: Path, spool: Path) -> None:
    """A view (and a pickled TraceArrays: a view, a few hundred bytes) reads the same records, the skipped secondary
    ones included; closing it leaves the spool to the scan's result, whose close removes it."""
    path = tmp_path / "t.log"
    path.write_text(FIXTURES["secondary-before-marker.log"])
    arrays = scan(path, spool_dir=spool)
    expected = list(arrays.conversions())
    assert expected and arrays.owner and not arrays.lenient
    data = pickle.dumps(arrays)
    assert len(data) < 2048
    for view in (arrays.view(), pickle.loads(data)):
        assert not view.owner and (view.format, view.stats, view.path) == (arrays.format, arrays.stats, arrays.path)
        assert list(view.conversions()) == expected
        view.close()
        with pytest.raises(ValueError, match="closed"):
            list(view.chunks())
        assert list(arrays.conversions()) == expected and len(os.listdir(spool)) == 1
    arrays.close()
    assert os.listdir(spool) == []
    with pytest.raises(ValueError, match="closed"):
        pickle.dumps(arrays)


def test_replays_of_one_scan_equal_replays_of_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """snpsim.replay / plan_replay of a scan's TraceArrays: the same Result as from the path, any number of times;
    the spool stays until the scan's result is closed. Reading options must be the scan's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    trace = ROOT / "examples" / "traces" / "ftrace-boot.txt"
    with scan(trace) as arrays:
        for preset in ("upstream", "upm"):
            expected = snpsim.replay(trace, preset)
            got = snpsim.replay(arrays, preset, format=arrays.format)
            assert got.summary == expected.summary
            pd.testing.assert_frame_equal(got.timeline, expected.timeline)
        plan, from_path = plan_replay(arrays, "upstream"), plan_replay(trace, "upstream")
        plan.close()
        from_path.close()
        assert (plan.scenario, plan.stats, plan.launch) == (from_path.scenario, from_path.stats, from_path.launch)
        assert len(os.listdir(tmp_path)) == 1
        scanned_with = "was scanned with format='ftrace', lenient=False"
        with pytest.raises(ValueError, match=scanned_with):
            plan_replay(arrays, "upstream", format="qemu")
        with pytest.raises(ValueError, match=scanned_with):
            plan_replay(arrays, "upstream", lenient=True)
    assert os.listdir(tmp_path) == []
