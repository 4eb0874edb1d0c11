"""Sweeps on a local Dask cluster: a 200-point grid gives the same results as running its points one by one, a
failing point is recorded with its error and does not stop the sweep, the store refuses to be overwritten, and the
report plots the metrics across the axes."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest
from typer.testing import CliRunner

import snpsim
from snpsim.cli import app
from snpsim.hw.costs import COSTS
from snpsim.metrics import METRICS
from snpsim.report import build_sweep
from snpsim.sweeps import POINTS, STORE, Store, load, read, run, scenario_hash

GIB, MIB = 1 << 30, 1 << 20
BASE: dict[str, Any] = {
    "duration": "100ms",
    "samples": 4,
    # no host costs: each vCPU runs the guest's schedule as written, so 100 ms is exactly its firmware phase
    "costs": dict.fromkeys(COSTS, 0),
    "host": {"memory": "1G", "layout": "flat"},
    "vms": [{"memory": "64M", "vcpus": 1, "workload": "linux-boot"}],
}
PRESETS = ["fixup", "unmap", "upm", "upm-nosplit", "upstream"]
GRID = {"policy": PRESETS, "vms.0.vcpus": [1, 2, 4, 8], "seed": list(range(1, 11))}


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("sweep") / "out"
    frame = snpsim.sweep({"base": BASE, "axes": GRID, "sweep": {"name": "grid"}}, out=out, workers=2)
    return out, frame


def test_200_points_on_a_local_cluster(grid: tuple[Path, pd.DataFrame]) -> None:
    _, frame = grid
    assert len(frame) == 200 and frame["hash"].is_unique
    assert list(frame.columns[:6]) == ["hash", "status", "error", "policy", "vms.0.vcpus", "seed"]
    assert set(frame["status"]) == {"ok"} and frame["error"].isna().all()
    assert list(frame.columns[6:]) == [*METRICS, "elapsed_s", "run_id"]
    # grid order: the last axis varies fastest
    assert list(frame["seed"][:10]) == GRID["seed"] and list(frame["policy"][::40]) == PRESETS
    assert (frame["run_id"] == 1).all()
    # Hand-derivable facts: 100 ms is the firmware phase of the 64 MiB guest's boot (guest/linux.py): OVMF makes
    # all its 16,384 pages private, shares one GHCB page per vCPU (AmdSevEsInitialize) and its IoMmu pool's
    # 4x1 + 8x8 + 2x32 + 256 + 2x512 = 1,412 data pages, and re-encrypts the pool at ExitBootServices. With 4K
    # private memory the GHCB pages' private copies are freed; a 2M folio (upm-nosplit) is never freed in part.
    # The 1 GiB flat host's direct map starts as one 1G mapping. fixup never touches it; upstream splits it to 2M (1)
    # and the 32 2M ranges under the guest to 4K (32); unmap and upm remove each private page with
    # set_direct_map_invalid_noflush(), which splits the same way first: the same DirectMap counters (a
    # not-present PTE stays counted); upm-nosplit removes the 32 2M entries whole: 1 split, all 2M.
    # The launch (docs/launch.md): OVMF skips the 30 metadata pages the launch validated; the host's own SNP pages
    # (512 TMR + context + response page + a VMSA per vCPU) add the TMR's 2M range and the kernel pages' 2M range
    # to every splitting preset, and the 4 MiB flash's two 2M ranges to the 4K ones (upm-nosplit removes the flash's
    # 2M folios whole); fixup's #PF handler splits the kernel pages' range (1G -> 2M -> 4K) when a neighbour is
    # zeroed through the 2M mapping, as it cannot make a firmware page shared.
    vcpus = frame["vms.0.vcpus"]
    assert (frame["snp_host_bytes"] == (512 + 2 + vcpus) * 4096).all()
    assert (frame["to_private_count"] == 64 * MIB // 4096 - 30 + 1412).all()
    assert (frame["to_shared_count"] == 1412 + vcpus).all()
    four_k = frame["policy"] != "upm-nosplit"
    assert (frame["private_bytes"][four_k] == 64 * MIB - 4096 * vcpus[four_k]).all()
    assert (frame["private_bytes"][~four_k] == 64 * MIB).all() and (frame["sim_time_ns"] == 100_000_000).all()
    by = frame.set_index("policy")
    assert (by.loc["fixup", "directmap_4k"] == 2 * MIB).all() and (by.loc["fixup", "directmap_split_count"] == 2).all()
    for name in ("upstream", "unmap", "upm"):
        # 32 + 4 2M ranges, or 37 with a second split of one range: upm's release point merges a 2M range back when
        # a punched folio leaves it without an assigned page, and a later 4K RMPUPDATE there splits it again
        level2 = by.loc[name, "direct_map_level2_splits"]
        assert level2.isin([36, 37]).all() and (by.loc[name, "directmap_split_count"] == 1 + level2).all()
        at_4k = (level2 - by.loc[name, "directmap_merge_count"]) * 2 * MIB
        assert (by.loc[name, "directmap_4k"] == at_4k).all() and (by.loc[name, "directmap_2m"] == GIB - at_4k).all()
    assert (by.loc["upm-nosplit", "directmap_2m"] == GIB - 4 * MIB).all()
    assert (by.loc["upm-nosplit", "directmap_4k"] == 4 * MIB).all()
    assert (by.loc["upm-nosplit", "directmap_split_count"] == 1 + 2).all()


def test_points_match_direct_runs_and_are_stored(grid: tuple[Path, pd.DataFrame]) -> None:
    out, frame = grid
    assert sorted(p.stem for p in (out / POINTS).glob("*.parquet")) == sorted(frame["hash"])
    for i in (0, 77, 199):
        row = frame.iloc[i]
        scenario = {**BASE, "policy": row["policy"], "seed": int(row["seed"])}
        scenario["vms"] = [{**BASE["vms"][0], "vcpus": int(row["vms.0.vcpus"])}]
        assert row["hash"] == scenario_hash(scenario)
        direct = snpsim.run(scenario)
        assert {m: int(row[m]) for m in METRICS} == direct.summary
        pd.testing.assert_frame_equal(pd.read_parquet(out / POINTS / f"{row['hash']}.parquet"), direct.timeline)
    # The store is plain DuckDB: the same rows, readable with SQL.
    con = duckdb.connect(str(out / STORE), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT hash) FROM points").fetchall() == [(200, 200)]
    (defn,) = con.execute("SELECT value FROM meta WHERE key = 'definition'").fetchone() or ("",)
    con.close()
    assert json.loads(defn)["axes"] == GRID
    definition, again = read(out)
    assert definition["name"] == "grid"
    pd.testing.assert_frame_equal(again, frame)


def test_the_store_is_not_overwritten_and_resume_runs_nothing_done(grid: tuple[Path, pd.DataFrame]) -> None:
    out, frame = grid
    doc = {"base": BASE, "axes": GRID}
    with pytest.raises(snpsim.ConfigError, match="--resume"):
        run(doc, out=out)
    other = {"base": BASE, "axes": {"seed": [11]}}
    with pytest.raises(snpsim.ConfigError, match="not in this sweep"):
        run(other, out=out, resume=True)
    again = run(doc, out=out, resume=True)  # every point committed: no cluster is even started
    assert (again.ran, again.skipped, again.total) == (0, 200, 200)
    pd.testing.assert_frame_equal(again.frame.drop(columns="run_id"), frame.drop(columns="run_id"))


def test_sweep_report_plots_each_numeric_axis(grid: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    out, _ = grid
    page = build_sweep(out, tmp_path / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"(src|href)=['\"]https?://", page)
    assert page.count("<svg") == 1 and "id='axis-0'" in page  # vs vCPUs; seed is averaged, policy is a line
    assert "Metrics vs vms.0.vcpus" in page and "mean over seed" in page
    for name in PRESETS:
        assert f"<td>{name}</td>" in page
    assert page.count("<tr class='ok'>") == 200 and "<p id='failed'>none</p>" in page
    assert build_sweep(out, tmp_path / "r2.html").read_text() == page  # deterministic


FAILING = """
[sweep]
name = "with failures"
[base]
duration = "100ms"
samples = 3
host = { memory = "1G" }
vms = [{ memory = "64M", vcpus = 1, workload = "linux-boot" }]
[axes]
policy = ["upm", "upstream"]
"vms.0.memory" = ["64M", "4G"]        # 4G does not fit the host: invalid, never run
"vms.0.params" = [{}, { bogus = 1 }]  # an unknown workload parameter: refused when the point is expanded
"""


def test_cli_sweep_records_failing_points_and_reports_them(tmp_path: Path) -> None:
    path = tmp_path / "failing.toml"
    path.write_text(FAILING)
    out = tmp_path / "out"
    cli = CliRunner()
    result = cli.invoke(app, ["sweep", str(path), "--out", str(out), "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    summary = lines.pop()
    assert summary == {
        "sweep": "with failures",
        "out": str(out),
        "points": 8,
        "ran": 8,
        "skipped": 0,
        "failed": 6,
        "run_id": 1,
        "elapsed_s": summary["elapsed_s"],
    }
    assert len(lines) == 8 and len({p["hash"] for p in lines}) == 8
    ok = [p for p in lines if p["status"] == "ok"]
    assert sorted(p["axes"]["policy"] for p in ok) == ["upm", "upstream"]
    assert all(p["axes"]["vms.0.memory"] == "64M" and p["axes"]["vms.0.params"] == {} for p in ok)
    errors = {json.dumps(p["axes"], sort_keys=True): p["error"] for p in lines if p["status"] == "failed"}
    for key, error in errors.items():
        axes = json.loads(key)
        if axes["vms.0.params"]:  # checked up front (before the sizes), with its full path
            assert error.startswith("vms[0].params.bogus: unknown workload parameter"), error
        else:
            assert error.startswith("vms: ") and "more than host.memory" in error
    _, frame = read(out)
    assert list(frame["status"]) == ["ok", "failed", "failed", "failed"] * 2
    assert frame["directmap_4k"].isna().sum() == 6
    failed_rows = frame[frame["status"] == "failed"]
    assert failed_rows["error"].notna().all()

    again = cli.invoke(app, ["sweep", str(path), "--out", str(out), "-q"], env={"COLUMNS": "200"})
    assert again.exit_code == 2
    assert len(again.output.strip().splitlines()) == 1 and "--resume" in again.output
    assert again.output.startswith("error: --out: ")

    report = cli.invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 1  # vs vms.0.memory (only 64M succeeded), one line per policy x params
    assert "id='failed'" in page and page.count("<td class='error'>") == 6
    assert "more than host.memory" in page

    args = ["sweep", str(path), "--out", str(out), "--workers", "1", "--json", "--resume", "--retry-failed"]
    retry = cli.invoke(app, args)
    assert retry.exit_code == 0, retry.output
    retried = [json.loads(line) for line in retry.output.splitlines()]
    summary = retried.pop()
    assert (summary["ran"], summary["skipped"], summary["failed"], summary["run_id"]) == (6, 2, 6, 2)
    assert {p["hash"] for p in retried} == set(failed_rows["hash"])
    _, after = read(out)
    assert after["hash"].is_unique and len(after) == 8
    assert list(after["run_id"]) == [1 if s == "ok" else 2 for s in after["status"]]


def test_cli_bad_sweep_file_is_one_line_exit_2(tmp_path: Path) -> None:
    cases = {
        "no-axes.toml": ('[base]\nvms = [{ memory = "64M" }]\n', "axes"),
        "bad-path.toml": ('[base]\nvms = [{ memory = "64M" }]\n[axes]\n"vms.2.vcpus" = [1]\n', "vms.2.vcpus"),
        "broken.toml": ("[axes\n", "broken.toml"),
        "empty-axis.toml": ('[base]\nvms = [{ memory = "64M" }]\n[axes]\nseed = []\n', "axes.seed"),
    }
    for name, (text, needle) in cases.items():
        (tmp_path / name).write_text(text)
        result = CliRunner().invoke(
            app, ["sweep", str(tmp_path / name), "-o", str(tmp_path / "o")], env={"COLUMNS": "200"}
        )
        assert result.exit_code == 2, (name, result.output)
        assert needle in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert "Traceback" not in result.output
    missing = CliRunner().invoke(app, ["sweep", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "nope.toml" in missing.output
    workers = CliRunner().invoke(app, ["sweep", str(tmp_path / "no-axes.toml"), "--workers", "0"])
    assert workers.exit_code == 2


def test_an_orphan_timeline_is_rewritten(tmp_path: Path) -> None:
    # The moment between a point's Parquet rename and its row commit: resume must run the point again.
    doc = {"base": BASE, "axes": {"policy": ["upm"], "seed": [1]}}
    (point,) = load(doc).points()
    store = Store(tmp_path)
    store.timeline_path(point.hash).write_bytes(b"half a parquet file")
    (tmp_path / POINTS / ".x.parquet.tmp").write_bytes(b"")
    store.close()
    done = run(doc, out=tmp_path, resume=True, workers=1)
    assert (done.ran, done.skipped) == (1, 0)
    timeline = pd.read_parquet(io.BytesIO(store.timeline_path(point.hash).read_bytes()))
    assert len(timeline) == 5 and not list((tmp_path / POINTS).glob(".*.tmp"))
    # More axis values extend a stored sweep (here an invalid one: recorded without starting a cluster).
    wider = {"base": BASE, "axes": {"policy": ["upm", "no-such-preset"], "seed": [1]}}
    more = run(wider, out=tmp_path, resume=True)
    assert (more.ran, more.skipped, more.failed, more.total) == (1, 1, 1, 2)
    assert list(more.frame["policy"]) == ["upm", "no-such-preset"] and list(more.frame["run_id"]) == [1, 2]
    assert "policy: unknown preset" in more.frame["error"].iloc[1]


def test_an_unreachable_scheduler_leaves_the_store_untouched(tmp_path: Path) -> None:
    doc = {"base": BASE, "axes": {"policy": ["upm", "no-such-preset"]}}
    with pytest.raises(snpsim.ConfigError, match=r"^scheduler: cannot connect to nonsense://x"):
        run(doc, out=tmp_path, scheduler="nonsense://x")
    with pytest.raises(snpsim.ConfigError, match=r"^workers: "):
        run(doc, out=tmp_path, scheduler="tcp://localhost:8786", workers=2)
    store = Store(tmp_path, read_only=True)
    assert store.statuses() == {}  # not even the invalid point: nothing is written before the cluster answers
    store.close()
