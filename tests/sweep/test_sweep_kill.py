"""Crash safety: a real ``snpsim sweep`` killed with SIGKILL (driver and Dask workers) in the middle of the grid,
then run again with ``--resume``, ends with every point stored exactly once, the points committed before the kill
unchanged, and only the remaining points run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from snpsim.sweeps import POINTS, STORE

SWEEP = """
[sweep]
name = "killed and resumed"
[base]
duration = "100ms"
samples = 3
host = { memory = "1G" }
vms = [{ memory = "64M", vcpus = 1, workload = "linux-boot" }]
[axes]
policy = ["upm", "upstream", "fixup", "upm-nosplit"]
seed = [1, 2, 3, 4, 5, 6]
"""
TOTAL = 24
KILL_AFTER = 3


def sweep(path: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snpsim.cli", "sweep", str(path), "--out", str(out), "--json", *args]


def rows(out: Path) -> pd.DataFrame:
    con = duckdb.connect(str(out / STORE), read_only=True)
    try:
        frame: pd.DataFrame = con.execute("SELECT * FROM points ORDER BY hash").df()
    finally:
        con.close()
    return frame


def test_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP)
    out = tmp_path / "out"
    # One worker, so that the kill lands while most points are still to run.
    proc = subprocess.Popen(
        sweep(path, out, "--workers", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the driver and the Dask processes it starts
    )
    reported: list[dict[str, Any]] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            reported.append(json.loads(line))
            if len(reported) == KILL_AFTER:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    assert len(reported) == KILL_AFTER, "the sweep ended before it could be killed"

    before = rows(out)
    committed = set(before["hash"])
    assert {p["hash"] for p in reported} <= committed  # reported only once committed
    assert KILL_AFTER <= len(committed) < TOTAL and before["hash"].is_unique
    assert (before["run_id"] == 1).all()

    resumed = subprocess.run(
        sweep(path, out, "--resume", "--workers", "2"), capture_output=True, text=True, check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = [json.loads(line) for line in resumed.stdout.splitlines()]
    summary = lines.pop()
    ran = [p["hash"] for p in lines]
    assert summary["ran"] == len(ran) == TOTAL - len(committed)
    assert summary["skipped"] == len(committed) and summary["points"] == TOTAL and summary["failed"] == 0
    assert not set(ran) & committed and len(set(ran)) == len(ran)

    after = rows(out)
    assert len(after) == TOTAL and after["hash"].is_unique
    assert set(after["hash"]) == committed | set(ran)
    kept = after[after["hash"].isin(committed)].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, before.reset_index(drop=True))  # untouched, finished_at included
    assert (after[after["hash"].isin(set(ran))]["run_id"] == 2).all()
    assert (after["status"] == "ok").all()
    for key in after["hash"]:
        timeline = pd.read_parquet(out / POINTS / f"{key}.parquet")
        assert timeline["time_ns"].iloc[-1] == 100_000_000 and len(timeline) >= 4
    assert sorted(p.stem for p in (out / POINTS).glob("*.parquet")) == sorted(after["hash"])
