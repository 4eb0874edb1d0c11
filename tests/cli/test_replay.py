"""snpsim replay and trace export: real trace formats in, ours out, and the round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import snpsim
from snpsim.cli import app
from snpsim.traces import write_ftrace, write_qemu

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "traces"
runner = CliRunner()


@pytest.mark.parametrize("trace", ["qemu-boot.log", "ftrace-boot.txt"])
def test_replay_examples_hand_counts(trace: str) -> None:
    # examples/traces/README: 29 conversions, 65,945 pages made shared and 5 made private, a 4 GiB guest
    r = snpsim.replay(EXAMPLES / trace, "upstream")
    assert r.summary["to_shared_count"] == 65945
    assert r.summary["to_private_count"] == 5
    assert r.vms[0].memory == 4 << 30


@pytest.mark.parametrize("writer", [write_qemu, write_ftrace])
@pytest.mark.parametrize("policy", ["upstream", "upm-nosplit", "fixup"])
def test_export_of_a_replay_replays_to_the_same_summary(tmp_path: Path, writer: object, policy: str) -> None:
    first = snpsim.replay(EXAMPLES / "qemu-boot.log", policy, record_conversions=True)
    assert first.conversions is not None and len(first.conversions) == 29
    out = tmp_path / "again.trace"
    writer(first.conversions, out)  # type: ignore[operator]
    second = snpsim.replay(out, policy, vm_memory="4G", record_conversions=True)
    assert second.summary == first.summary
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
    summary = json.loads(replayed.output)["upm"]
    converted = sum(line.count("shared_to_private") + line.count("private_to_shared") for line in lines)
    assert summary["psc_request_count"] >= 1
    assert converted == sum(1 for line in lines if "kvm_convert_memory" in line)


def test_replay_bad_input_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.log"
    bad.write_text("kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\nkvm_convert_memory start 0xZZ\n")
    result = runner.invoke(app, ["replay", str(bad), "--format", "qemu", "--no-save"])
    assert result.exit_code == 2
    assert "bad.log:2" in result.output
    assert "Traceback" not in result.output
    lenient = runner.invoke(app, ["replay", str(bad), "--format", "qemu", "--no-save", "--lenient", "-q"])
    assert lenient.exit_code == 0, lenient.output
    assert "1 bad lines" in lenient.output
    for args, needle in (
        (["replay", str(tmp_path / "none.log")], "none.log"),
        (["replay", str(bad), "--format", "xml"], "--format"),
        (["run", "--trace-format", "pcap", "--no-save"], "--trace-format"),
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and needle in r.output, (args, r.output)
