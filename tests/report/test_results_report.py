"""Results folders (Parquet + JSON + the memory pictures, readable by pandas and DuckDB) and the offline HTML
report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import snpsim
from snpsim import report
from snpsim.cli import app
from snpsim.hostmaps import FILE, load_hostmaps
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


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same scenario and seed saved under two labels (identical results: determinism), and unmap."""
    folder = tmp_path_factory.mktemp("twins")
    upstream = snpsim.run({**SCENARIO, "policy": "upstream"})
    save(upstream, folder, "a")
    save(upstream, folder, "b")
    save(snpsim.run({**SCENARIO, "policy": "unmap"}), folder, "unmap")
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
    nosplit = frame.set_index("label").loc["upm-nosplit"]
    # the boot-time 4K (test_e2e) and the 2M ranges of the host's own SNP pages (the TMR's, and those the aged host's
    # allocator put the VMSAs, context and request pages in; docs/launch.md)
    splits = nosplit["direct_map_level2_splits"]
    assert splits >= 2 and nosplit["directmap_4k"] == (3 << 20) + splits * (2 << 20)
    saved = load_hostmaps(out)["upstream"]
    assert [m.time_ns for m in saved.maps] == [m.time_ns for m in direct.hostmaps]
    for got, want in zip(saved.maps, direct.hostmaps, strict=True):
        for a, b in zip(got[1:], want[1:], strict=True):
            assert np.array_equal(a, b)
    assert saved.scenario["seed"] == 5 and saved.scenario["host_memory"] == 1 << 30
    assert saved.version == snpsim.__version__


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
    for section in ("glance", "directmap", "hostmap", "memory", "activity", "npt", "faults", "counts", "metrics"):
        assert f"id='{section}'" in page, section
    for metric in METRICS:
        assert f"<th>{metric}</th>" in page
    assert build(out).read_text() == page  # deterministic


def test_header_names_the_scenario_version_and_date(out: Path) -> None:
    page = build(out).read_text()
    header = page[page.index("<header>") : page.index("</header>")]
    # SCENARIO: 1G host, page_cache 0.3, one 128M 2-vCPU random-conversion guest, 1200 ms, 6 samples, seed 5
    assert "1 GiB RAM, 30% page cache when the VMs start" in header
    assert "1 × 128 MiB, 2 vCPUs, random-conversion, from the start, for the whole run" in header
    assert "1.2 s, 6 samples, seed 5" in header
    assert "<td>none</td>" in header  # no VM churn, no kernel writers
    assert f"report by snpsim {snpsim.__version__}" in header
    assert re.search(r"results written \d{4}-\d\d-\d\d \d\d:\d\d UTC", header)
    assert "upm-nosplit, upstream" in header and "1 under every preset" in header


def test_time_axes_are_in_units_the_span_suggests(out: Path) -> None:
    page = build(out).read_text()
    assert "time (ms)" in page  # 1.2 s < 2 s
    assert "time (s)" not in page


def test_equal_series_share_a_panel_and_a_label(twins: Path) -> None:
    page = build(twins).read_text()
    # a and b are the same run: every series and picture of theirs is drawn once, labelled "a = b"
    assert "a = b" in page
    assert "<h3>a = b</h3>" in page and "<h3>unmap</h3>" in page
    # two picture groups, three moments each (after boot, mid-run, end), memory and direct map
    assert page.count("<img ") == 2 * 3 * 2
    assert page.count("<b>after boot</b>") == 2 and page.count("<b>end</b>") == 2


def test_memory_picture_counts_mixed_blocks(twins: Path) -> None:
    page = build(twins).read_text()
    saved = load_hostmaps(twins)
    for m in saved["unmap"].maps:  # the caption says how many blocks mix assigned and unassigned frames
        mixed = int(((m.assigned > 0) & (m.assigned < m.ram)).sum())
        assert f"{mixed:,} mixed" in page
    assert "One cell = 2 MiB" in page and "512 blocks of 2 MiB" in page  # 1 GiB host, a block per cell


def test_results_without_pictures_still_report(tmp_path: Path) -> None:
    save(snpsim.run({**SCENARIO, "duration": "300ms", "samples": 2}), tmp_path, "old")
    (tmp_path / "old" / FILE).unlink()  # a folder written before the pictures existed
    page = build(tmp_path).read_text()
    assert "carry no memory pictures" in page
    assert "1 GiB RAM" in page  # the header falls back to summary.json's scenario


def test_crash_groups_are_all_shown_or_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save(snpsim.run({**SCENARIO, "duration": "300ms", "samples": 2}), tmp_path, "run")
    summary = tmp_path / "run" / "summary.json"
    doc = json.loads(summary.read_text())
    base = {"error_code": 0, "kind": "rmp"}
    doc["crashes"] = [{**base, "time_ns": t, "path": f"path{t % 3}", "pfn": t} for t in range(300)]
    summary.write_text(json.dumps(doc))
    page = build(tmp_path).read_text()
    # 300 crashes in three paths (t % 3): three groups of 100, none cut
    assert "300 crash records (run: 300) in 3 groups" in page
    table = page[page.index("<table id='crashes'>") :]
    table = table[: table.index("</table>")]
    assert table.count("<td class='path'>path") == 3
    assert table.count("<td>100</td>") == 6  # per group: 100 crashes, on 100 distinct frames (pfn = t)
    monkeypatch.setattr(report, "MAX_CRASH_GROUPS", 2)
    assert "1 more groups not shown" in build(tmp_path).read_text()


def test_boot_time_is_plotted_when_recorded(tmp_path: Path) -> None:
    save(snpsim.run({**SCENARIO, "duration": "300ms", "samples": 2}), tmp_path, "run")
    assert "carry no boot time" in build(tmp_path).read_text()
    summary = tmp_path / "run" / "summary.json"
    doc = json.loads(summary.read_text())
    doc["summary"]["boot_time_ns"] = 250_000_000
    for k, vm in enumerate(doc["vms"]):
        vm["boot_time_ns"] = 200_000_000 + k
    summary.write_text(json.dumps(doc))
    page = build(tmp_path).read_text()
    boot = page[page.index("id='boot'") : page.index("id='crash-section-h'")]
    assert boot.count("<svg") == 1  # one figure: the first VM's boot per preset, and every VM's
    assert "250 ms" in boot and "every VM" in boot
    assert "<th>boot_time_ns</th>" in page and "<td>250 ms</td>" in page


def test_cli_run_writes_results_and_report(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        'seed = 1\nduration = "1100ms"\nsamples = 3\npolicy = "upm"\n[host]\nmemory = "1G"\n'
        '[[vms]]\nmemory = "64M"\nvcpus = 1\nworkload = "linux-boot"\n'
    )
    result = CliRunner().invoke(app, ["run", str(cfg), "-q", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "upm" / "summary.json").read_text())["label"] == "upm"
    assert (tmp_path / "o" / "upm" / FILE).exists()
    assert (tmp_path / "o" / "report.html").exists()
    again = CliRunner().invoke(app, ["report", str(tmp_path / "o"), "--output", str(tmp_path / "r.html")])
    assert again.exit_code == 0
    assert (tmp_path / "r.html").read_text() == (tmp_path / "o" / "report.html").read_text()
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "nothing" in missing.output


def test_unreadable_picture_files_are_skipped(tmp_path: Path) -> None:
    save(snpsim.run({**SCENARIO, "duration": "300ms", "samples": 2}), tmp_path, "run")
    (tmp_path / "run" / FILE).write_bytes(b"not a zip")
    assert load_hostmaps(tmp_path) == {}
    assert "carry no memory pictures" in build(tmp_path).read_text()
