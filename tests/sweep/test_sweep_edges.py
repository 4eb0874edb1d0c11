"""Sweeps at the user's edges: output folders checked first (files, run folders, a second driver), a per-point
time limit, a sweep whose every point failed exits 1, a full disk stops the sweep keeping what was committed,
a running sweep can be read and reported, and policy tables appear under readable labels."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

import snpsim
from snpsim import sweeps
from snpsim.cli import app
from snpsim.results import OutputError
from snpsim.sweeps import POINTS, STORE, axis_value, label, read

runner = CliRunner()

BASE: dict[str, Any] = {
    "duration": "100ms",
    "samples": 3,
    "host": {"memory": "1G"},
    "vms": [{"memory": "64M", "vcpus": 1, "workload": "linux-boot"}],
}


def test_outputs_are_checked_before_anything_runs(tmp_path: Path) -> None:
    doc = {"base": BASE, "axes": {"seed": [1, 2]}}
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(snpsim.ConfigError, match="is a file, not a folder"):
        sweeps.run(doc, out=a_file)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("%")
    with pytest.raises(snpsim.ConfigError, match="is not empty and holds no sweep"):
        sweeps.run(doc, out=busy)
    assert [p.name for p in busy.iterdir()] == ["thesis.tex"]
    # one driver per store: the second is refused at once (the first holds OUT/.sweep.lock)
    shared = tmp_path / "shared"
    with sweeps._writer_lock(shared), pytest.raises(snpsim.ConfigError, match="another sweep is running"):
        sweeps.run(doc, out=shared)
    path = tmp_path / "s.toml"
    path.write_text('[base]\nvms = [{ memory = "64M" }]\n[axes]\nseed = [1]\n')
    result = runner.invoke(app, ["sweep", str(path), "--out", str(a_file)])
    assert result.exit_code == 2 and result.output.startswith("error: --out: ") and len(result.output.splitlines()) == 1


def test_policy_tables_are_labelled() -> None:
    custom = {"preset": "upm", "rmp_fault": "fixup"}
    assert axis_value(custom, "policy") == "upm+rmp_fault=fixup"
    assert axis_value({"preset": "nope"}, "policy") == '{"preset":"nope"}'  # invalid: shown as written
    assert axis_value({"a": 1}, "vms.0.params") == '{"a":1}'
    assert label({"policy": custom, "seed": 1}) == "policy=upm+rmp_fault=fixup seed=1"


TIMEOUT = """
[sweep]
name = "too slow"
point_timeout = "1ms"
[base]
duration = "10s"
samples = 2
host = { memory = "1G", writers = { page_zeroing = { interval = "1us", batch = 1 } } }
vms = [{ memory = "64M", vcpus = 1, workload = "idle" }]
[axes]
policy = ["upm", { preset = "upm", rmp_fault = "fixup" }]
"""


def test_a_point_over_its_time_limit_fails_and_a_sweep_of_failures_exits_1(tmp_path: Path) -> None:
    # 10 s of page zeroing every 1 us is 10^7 wake-ups: far more than 1 ms of computing (checked every 1024 steps)
    path = tmp_path / "slow.toml"
    path.write_text(TIMEOUT)
    out = tmp_path / "out"
    result = runner.invoke(app, ["sweep", str(path), "--out", str(out), "--workers", "1", "-q"], env={"COLUMNS": "80"})
    assert result.exit_code == 1, result.output
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith("error: every point of the sweep failed: TimeLimitExceeded: stopped after 0.001 s")
    assert "upm+rmp_fault=fixup" in result.stdout  # the table's row label, not a dict
    _, frame = read(out)
    assert list(frame["policy"]) == ["upm", "upm+rmp_fault=fixup"]
    assert (frame["status"] == "failed").all() and frame["error"].str.startswith("TimeLimitExceeded: ").all()
    assert not list((out / POINTS).glob("*.parquet"))


def test_a_full_disk_stops_the_sweep_and_resume_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Path.write_bytes

    def full_disk(self: Path, data: bytes) -> int:  # a timeline's temporary file gets 10 bytes, then ENOSPC
        if not self.name.endswith(".parquet.tmp"):
            return real(self, data)
        real(self, data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    doc = {"base": BASE, "axes": {"policy": ["upm", "no-such-preset"]}}
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="No space left on device"):
        snpsim.sweep(doc, out=out, workers=1)
    _, frame = read(out)
    assert list(frame["status"]) == ["failed"]  # the invalid point (no timeline to write) was committed first
    assert list((out / POINTS).iterdir()) == []  # the partial timeline is gone, and no timeline without its row
    monkeypatch.setattr(Path, "write_bytes", real)
    done = sweeps.run(doc, out=out, workers=1, resume=True)
    assert (done.ran, done.skipped, done.write_error) == (1, 1, None)
    assert len(list((out / POINTS).glob("*.parquet"))) == 1


SWEEP = """
[sweep]
name = "read while running"
[base]
duration = "300ms"
samples = 3
host = { memory = "1G" }
vms = [{ memory = "128M", vcpus = 1, workload = "random-conversion" }]
[axes]
seed = [1, 2, 3, 4, 5, 6]
"""


def test_a_running_sweep_can_be_read_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "snpsim.cli", "sweep", str(path), "--out", str(out), "--json", "--workers", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # one point committed; the driver is still running
        definition, frame = read(out)
        assert definition["name"] == "read while running"
        assert first["hash"] in set(frame["hash"]) and 1 <= len(frame) <= 6
        report = runner.invoke(app, ["report", str(out), "-o", str(tmp_path / "r.html")])
        assert report.exit_code == 0, report.output
        assert "points stored" in (tmp_path / "r.html").read_text()
        rest, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert json.loads(rest.splitlines()[-1])["points"] == 6
    _, final = read(out)
    assert len(final) == 6 and (final["status"] == "ok").all()
    assert pd.read_parquet(out / POINTS / f"{first['hash']}.parquet")["time_ns"].iloc[-1] == 300_000_000
    assert (out / STORE).is_file() and (out / "report.html").is_file()
