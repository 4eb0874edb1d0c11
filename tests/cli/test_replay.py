"""snpsim replay and trace export: real trace formats in, ours out, and the round trip; the CLI reads the trace
once for all its presets and removes the spooled conversions however it ends."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

import snpsim
import snpsim.traces
import snpsim.traces.replay
from snpsim import cli
from snpsim.cli import app
from snpsim.kvm.uapi import SnpLaunchUpdate, SnpPageType
from snpsim.traces import write_ftrace, write_qemu

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "traces"
runner = CliRunner()


@pytest.mark.parametrize("trace", ["qemu-boot.log", "ftrace-boot.txt"])
def test_replay_examples_hand_counts(trace: str) -> None:
    # examples/traces/README: 29 conversions, 65,945 pages made shared and 5 made private, a 4 GiB guest; the launch:
    # the 4 MiB OVMF image at 0xffc00000 (1024 pages), 0x11000 bytes of zero pages at 0x800000 (17), the secrets
    # and CPUID pages (1 each) and 0xd000 bytes of zero pages at 0x813000 (13)
    r = snpsim.replay(EXAMPLES / trace, "upstream", record_conversions=True)
    assert r.summary["to_shared_count"] == 65945
    assert r.summary["to_private_count"] == 5
    assert r.vms[0].memory == 4 << 30
    assert r.launch == [
        SnpLaunchUpdate(0xFFC00, 1024, SnpPageType.NORMAL),
        SnpLaunchUpdate(0x800, 17, SnpPageType.ZERO),
        SnpLaunchUpdate(0x811, 1, SnpPageType.SECRETS),
        SnpLaunchUpdate(0x812, 1, SnpPageType.CPUID),
        SnpLaunchUpdate(0x813, 13, SnpPageType.ZERO),
    ]


@pytest.mark.parametrize("writer", [write_qemu, write_ftrace])
@pytest.mark.parametrize("policy", ["upstream", "upm-nosplit", "fixup"])
def test_export_of_a_replay_replays_to_the_same_summary(tmp_path: Path, writer: object, policy: str) -> None:
    first = snpsim.replay(EXAMPLES / "qemu-boot.log", policy, record_conversions=True)
    assert first.conversions is not None and len(first.conversions) == 29
    out = tmp_path / "again.trace"
    writer(first.conversions, out, launch=first.launch)  # type: ignore[operator]
    second = snpsim.replay(out, policy, vm_memory="4G", record_conversions=True)
    assert second.summary == first.summary
    assert second.launch == first.launch and first.launch is not None and len(first.launch) == 5
    # the same requests in the same order; the trace formats keep microseconds (QEMU "%zu.%06zu", ftrace
    # "%5lu.%06lu"), so a request the host delayed by a fraction of a microsecond is read back earlier and the
    # host's backlog behind it shifts by as much: the times agree to within a few microseconds
    assert second.conversions is not None
    assert [c[1:] for c in second.conversions] == [c[1:] for c in first.conversions]
    assert max(abs(a[0] - b[0]) for a, b in zip(first.conversions, second.conversions, strict=True)) < 10_000


def test_run_trace_out_then_replay_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        'seed = 2\nduration = "1200ms"\nsamples = 3\npolicy = "upm"\n[host]\nmemory = "1G"\n'
        '[[vms]]\nmemory = "128M"\nvcpus = 2\nworkload = "dma-churn"\n'
    )
    trace = tmp_path / "out.log"
    result = runner.invoke(app, ["run", str(cfg), "-q", "--no-save", "--trace-out", str(trace)])
    assert result.exit_code == 0, result.output
    lines = trace.read_text().splitlines()
    assert lines and all("kvm_" in line for line in lines)
    replayed = runner.invoke(app, ["replay", str(trace), "--json", "--no-save", "-p", "upm", "--vm-memory", "128M"])
    assert replayed.exit_code == 0, replayed.output
    summary = json.loads(replayed.stdout)["upm"]
    converted = sum(line.count("shared_to_private") + line.count("private_to_shared") for line in lines)
    assert summary["psc_request_count"] >= 1
    assert converted == sum(1 for line in lines if "kvm_convert_memory" in line)


def test_replay_bad_input_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.log"
    bad.write_text("kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\nkvm_convert_memory start 0xZZ\n")
    result = runner.invoke(app, ["replay", str(bad), "--trace-format", "qemu", "--no-save"])
    assert result.exit_code == 2
    assert "bad.log:2" in result.output
    assert "Traceback" not in result.output
    lenient = runner.invoke(app, ["replay", str(bad), "--trace-format", "qemu", "--no-save", "--lenient", "-q"])
    assert lenient.exit_code == 0, lenient.output
    assert "1 bad lines" in lenient.output
    # --lenient --json keeps the count, in the document's "trace" entry (stdout stays one JSON document)
    as_json = runner.invoke(app, ["replay", str(bad), "--trace-format", "qemu", "--no-save", "--lenient", "--json"])
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.stdout)
    assert doc["trace"]["bad_lines"] == 1 and doc["trace"]["conversions"] == 1 and "upstream" in doc
    for args, needle in (
        (["replay", str(tmp_path / "none.log")], "none.log"),
        (["replay", str(bad), "--trace-format", "xml"], "--trace-format"),
        (["replay", str(bad), "--format", "qemu"], "--trace-format"),  # the output format: a hint, one line
        (["run", "--trace-format", "pcap", "--no-save"], "--trace-format"),
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and needle in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1, r.output


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "no conversion in 0 lines"),
        ("# only a comment\n\n", "no conversion in 2 lines"),
        ("kvm_other_event foo\nkvm_run bar\n", "2 unknown events"),
    ],
)
def test_a_trace_without_conversions_is_an_error_not_an_empty_replay(tmp_path: Path, text: str, why: str) -> None:
    trace = tmp_path / "t.log"
    trace.write_text(text)
    for extra in ([], ["--lenient"]):
        r = runner.invoke(app, ["replay", str(trace), "--trace-format", "qemu", "--no-save", *extra])
        assert r.exit_code == 2, r.output
        assert "nothing to replay" in r.output and why in r.output, r.output
    with pytest.raises(ValueError, match="nothing to replay"):
        snpsim.replay(trace, format="qemu")


def test_all_junk_in_lenient_mode_is_an_error_with_the_count(tmp_path: Path) -> None:
    trace = tmp_path / "junk.log"
    trace.write_text("kvm_convert_memory start 0xZZ\nkvm_convert_memory oops\n")
    r = runner.invoke(app, ["replay", str(trace), "--trace-format", "qemu", "--no-save", "--lenient"])
    assert r.exit_code == 2 and "2 bad lines skipped" in r.output, r.output


def test_host_memory_makes_an_export_replay_to_the_same_summary(tmp_path: Path) -> None:
    """A replay on an 8 GiB host (not the default 4 x 4 GiB guest = 16 GiB), exported and replayed on the same
    host, gives the same summary."""
    args = ["replay", str(EXAMPLES / "qemu-boot.log"), "--host-memory", "8G", "--json", "-p", "upm"]
    first = runner.invoke(app, [*args, "--out", str(tmp_path / "o")])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)["upm"]
    assert json.loads((tmp_path / "o" / "upm" / "summary.json").read_text())["scenario"]["host_memory"] == 8 << 30
    exported = snpsim.replay(EXAMPLES / "qemu-boot.log", "upm", host_memory="8G", record_conversions=True)
    out = tmp_path / "again.log"
    # with the guest RAM written as QEMU's guest_memfd warning, the replay of the export needs no --vm-memory
    write_qemu(exported.conversions or [], out, launch=exported.launch or [], memory_bytes=exported.vms[0].memory)
    args = ["replay", str(out), "--host-memory", "8G", "--no-save", "--json", "-p", "upm"]
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["upm"] == summary
    bad = runner.invoke(app, ["replay", str(out), "--host-memory", "1G", "--vm-memory", "4G", "--no-save"])
    assert bad.exit_code == 2 and bad.output.startswith("error: --host-memory: "), bad.output


def test_a_trace_shorter_than_the_vm_set_up_is_replayed_whole(tmp_path: Path) -> None:
    # one conversion: the scenario lasts 1 ms (the trace's span + 1 ms) but QEMU's set-up of a 64 MiB guest takes
    # simulated time too; the replay still waits for the VM, so its single page is converted (and recorded)
    trace = tmp_path / "one.log"
    trace.write_text("kvm_convert_memory start 0x809000 size 0x1000 private_to_shared\n")
    r = snpsim.replay(trace, "upstream", record_conversions=True)
    assert r.summary["to_shared_count"] == 1
    assert r.conversions is not None and [c[1:] for c in r.conversions] == [(0x809, 1, False)]


# ------------------------------------------------------------------------------------------------ one read


def _spools(tmp: Path) -> list[str]:
    """The scan's spool directories under the temp dir (multiprocessing may keep its own ``pymp-*`` there)."""
    return sorted(p.name for p in tmp.glob("snpsim-trace-*"))


@pytest.mark.parametrize("workers", [1, 2])
def test_replay_cli_reads_the_trace_once_for_all_presets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Two presets, their jobs in this process (1 worker) or in worker processes (2): the trace is scanned once, in
    the command's process; each job replays that scan's spool (the trace is moved away right after the scan, so a
    job reading it again would fail), gets what ``snpsim.replay(trace, preset)`` gets, and pickles small (the
    spool's path and the stats, not the records); the spool exists while the jobs run and is gone afterwards."""
    trace = tmp_path / "boot.log"
    shutil.copy(EXAMPLES / "qemu-boot.log", trace)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    presets = ["upstream", "upm"]
    expected = {p: snpsim.replay(trace, p) for p in presets}

    real_scan = snpsim.traces.scan
    scans: list[object] = []

    def scan_once(*args: Any, **kwargs: Any) -> Any:
        scans.append(args[0])
        arrays = real_scan(*args, **kwargs)
        trace.rename(tmp_path / "moved.log")
        return arrays

    monkeypatch.setattr(snpsim.traces, "scan", scan_once)
    monkeypatch.setattr(snpsim.traces.replay, "scan", scan_once)  # plan_replay's, were a job given the path
    monkeypatch.setattr(os, "cpu_count", lambda: workers)
    real_report = cli._simulate_and_report
    seen: dict[str, Any] = {}

    def report(jobs: dict[str, cli.Job], *args: Any, **kwargs: Any) -> cli.Outcome:
        seen["spools"] = _spools(tmp)
        seen["pickled"] = max(len(pickle.dumps(job)) for job in jobs.values())
        outcome = real_report(jobs, *args, **kwargs)
        seen["results"] = outcome.results
        return outcome

    monkeypatch.setattr(cli, "_simulate_and_report", report)
    args = ["replay", str(trace), "-p", presets[0], "-p", presets[1], "--no-save", "--json", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert scans == [trace]
    assert len(seen["spools"]) == 1 and seen["pickled"] < 4096, seen
    doc = json.loads(result.stdout)
    for p in presets:
        got = seen["results"][p]
        assert doc[p] == got.summary == expected[p].summary
        pd.testing.assert_frame_equal(got.timeline, expected[p].timeline)
    assert _spools(tmp) == []


@pytest.mark.parametrize("stop", [RuntimeError("a job failed"), KeyboardInterrupt(), "error"])
def test_replay_cli_removes_the_spool_however_it_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: BaseException | str
) -> None:
    """The second preset's job fails or is interrupted (Ctrl-C) after the first has replayed the spool in full (and
    left it to the second), or the options are refused after the scan: no spool is left behind."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    real_replay = snpsim.replay
    started: list[str] = []

    def replay(arrays: Any, preset: str, **kwargs: Any) -> Any:
        assert isinstance(arrays, snpsim.traces.TraceArrays) and os.path.exists(arrays.path)
        started.append(preset)
        if preset == "upm" and isinstance(stop, BaseException):
            raise stop
        return real_replay(arrays, preset, **kwargs)

    monkeypatch.setattr(snpsim, "replay", replay)
    args = ["replay", str(EXAMPLES / "qemu-boot.log"), "-p", "upstream", "-p", "upm", "--no-save", "-q"]
    if stop == "error":  # a conversion outside the given guest's RAM: found planning, after the scan
        result = runner.invoke(app, [*args, "--vm-memory", "64M"])
        assert result.exit_code == 2 and "qemu-boot.log:" in result.output, result.output
        assert started == []
    else:
        result = runner.invoke(app, args)
        assert result.exit_code != 0 and started == ["upstream", "upm"], result.output
    assert _spools(tmp) == []
