"""Results folders (Parquet + JSON, readable by pandas and DuckDB) and the offline HTML report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import snpsim
from snpsim.cli import app
from snpsim.metrics import METRICS
from snpsim.report import build
from snpsim.results import load, save, summaries

SCENARIO = {
    "seed": 5,
    "duration": "1200ms",
    "samples": 6,
    "host": {"memory": "1G", "page_cache": 0.3},
    "vms": [{"memory": "128M", "vcpus": 2, "workload": "random-conversion"}],
}


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("results")
    for name in ("upstream", "upm-nosplit"):
        save(snpsim.run({**SCENARIO, "policy": name}), folder, name)
    return folder


def test_results_round_trip(out: Path) -> None:
    docs, timelines = load(out)
    assert [d["label"] for d in docs] == ["upm-nosplit", "upstream"]
    assert list(timelines["upstream"].columns) == ["time_ns", *METRICS]
    assert len(timelines["upstream"]) == 7  # t = 0 and 6 samples
    direct = snpsim.run({**SCENARIO, "policy": "upstream"})
    assert docs[1]["summary"] == direct.summary
    assert docs[1]["policy"]["directmap"] == "split"
    frame = summaries(out)
    assert set(frame["label"]) == {"upstream", "upm-nosplit"}
    assert frame.set_index("label").loc["upm-nosplit", "directmap_4k"] == 3 << 20  # the boot-time 4K (test_e2e)


def test_parquet_is_readable_by_duckdb(out: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(f"SELECT count(*) FROM '{out}/*/timeline.parquet'").fetchall()[0]
    assert rows == (14,)
    last = pd.read_parquet(out / "upstream" / "timeline.parquet").iloc[-1]
    assert last["time_ns"] == 1_200_000_000


def test_report_is_self_contained_with_plots_and_tables(out: Path) -> None:
    page = build(out).read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"(src|href)=['\"]https?://", page)  # nothing fetched from the network
    for section in ("directmap", "memory", "faults", "conversions", "metrics", "crashes"):
        assert f"id='{section}'" in page
    assert page.count("<svg") == 4
    for metric in METRICS:
        assert f"<th>{metric}</th>" in page
    assert build(out).read_text() == page  # deterministic


def test_cli_run_writes_results_and_report(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        'seed = 1\nduration = "1100ms"\nsamples = 3\npolicy = "upm"\n[host]\nmemory = "1G"\n'
        '[[vms]]\nmemory = "64M"\nvcpus = 1\nworkload = "linux-boot"\n'
    )
    result = CliRunner().invoke(app, ["run", str(cfg), "-q", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "upm" / "summary.json").read_text())["label"] == "upm"
    assert (tmp_path / "o" / "report.html").exists()
    again = CliRunner().invoke(app, ["report", str(tmp_path / "o"), "--output", str(tmp_path / "r.html")])
    assert again.exit_code == 0
    assert (tmp_path / "r.html").read_text() == (tmp_path / "o" / "report.html").read_text()
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "nothing" in missing.output
