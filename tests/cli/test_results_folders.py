"""Results are never lost or mixed: a results folder holds one run (its manifest says which), other scenarios and
sweeps are refused, output locations are checked before simulating, and a write that fails (ENOSPC, simulated by
monkeypatching) prints the results anyway, removes its partial files and exits with one error line."""

from __future__ import annotations

import datetime
import errno
import json
import os
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from typer.testing import CliRunner

import snpsim
from snpsim import results, sweeps
from snpsim.cli import app
from snpsim.metrics import METRICS
from snpsim.results import MANIFEST, SUMMARY, TIMELINE, Claim, OutputError, identity, load, save
from snpsim.scenario import load as load_scenario

runner = CliRunner()

TINY = """
name = "tiny [boot]"
seed = {seed}
duration = "20ms"
samples = 2
[host]
memory = "256M"
[[vms]]
memory = "64M"
vcpus = 1
workload = "linux-boot"
"""


def scenario_file(tmp_path: Path, seed: int = 1) -> Path:
    path = tmp_path / f"s{seed}.toml"
    path.write_text(TINY.format(seed=seed))
    return path


def run(tmp_path: Path, out: Path, *args: str, seed: int = 1) -> Any:
    return runner.invoke(app, ["run", str(scenario_file(tmp_path, seed)), "-q", "--out", str(out), *args])


def no_partials(out: Path) -> None:
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".old"))]
    assert leftovers == [], leftovers


def test_the_manifest_says_what_the_folder_holds(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(tmp_path, out, "-p", "upm", "-p", "upstream")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["snpsim"] == snpsim.__version__
    assert manifest["command"][:2] == ["snpsim", "run"] and "upstream" in manifest["command"]
    assert manifest["name"] == "tiny [boot]"
    expected = identity(load_scenario(scenario_file(tmp_path)))
    assert manifest["scenario_hash"] == expected["scenario_hash"] and manifest["scenario"] == expected["scenario"]
    assert "policy" not in manifest["scenario"]  # the presets are what the folder compares
    assert manifest["presets"]["upm"]["folder"] == "upm"
    assert manifest["presets"]["upstream"]["policy"] == snpsim.presets["upstream"].as_dict()
    datetime.datetime.fromisoformat(manifest["created"])
    # the timelines say which preset each row is (README: SELECT preset, time_ns ... FROM 'out/*/timeline.parquet')
    rows = duckdb.sql(f"SELECT preset, count(*) FROM '{out}/*/{TIMELINE}' GROUP BY preset ORDER BY preset").fetchall()
    assert rows == [("upm", 3), ("upstream", 3)]  # t = 0, then 2 samples
    assert list(pd.read_parquet(out / "upm" / TIMELINE).columns) == ["preset", "time_ns", *METRICS]
    docs, timelines = load(out)
    assert [d["label"] for d in docs] == ["upm", "upstream"]
    assert list(timelines["upm"].columns) == ["time_ns", *METRICS]  # as Result.timeline
    no_partials(out)


def test_the_same_scenario_adds_presets_and_replaces_only_its_own(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(tmp_path, out, "-p", "upm").exit_code == 0
    assert run(tmp_path, out, "-p", "upstream").exit_code == 0
    assert set(json.loads((out / MANIFEST).read_text())["presets"]) == {"upm", "upstream"}
    (out / "upm" / "marker").write_text("old upm")
    (out / "upstream" / "marker").write_text("old upstream")
    assert run(tmp_path, out, "-p", "upm").exit_code == 0
    assert not (out / "upm" / "marker").exists()  # upm's folder was replaced as a whole
    assert (out / "upstream" / "marker").read_text() == "old upstream"  # upstream's was kept
    assert [d["label"] for d in load(out)[0]] == ["upm", "upstream"]
    no_partials(out)


def test_another_scenario_is_refused_in_one_line_then_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(tmp_path, out, "-p", "upm", "-p", "fixup").exit_code == 0
    (out / "notes.txt").write_text("the user's own file")
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    refused = run(tmp_path, out, "-p", "upm", seed=2)
    assert refused.exit_code == 2
    assert refused.output.startswith("error: --out: ") and len(refused.output.splitlines()) == 1
    assert "another scenario ('tiny [boot]')" in refused.output and "--overwrite" in refused.output
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing touched
    replaced = run(tmp_path, out, "-p", "upstream", "--overwrite", seed=2)
    assert replaced.exit_code == 0, replaced.output
    manifest = json.loads((out / MANIFEST).read_text())
    assert list(manifest["presets"]) == ["upstream"]
    assert manifest["scenario_hash"] == identity(load_scenario(scenario_file(tmp_path, 2)))["scenario_hash"]
    assert not (out / "upm").exists() and not (out / "fixup").exists()
    assert (out / "notes.txt").exists()  # only the old run's own files go
    assert json.loads((out / "upstream" / SUMMARY).read_text())["scenario"]["seed"] == 2


def test_folders_that_are_not_this_runs_are_refused(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy"
    (legacy / "upm").mkdir(parents=True)
    (legacy / "upm" / SUMMARY).write_text("{}")
    result = run(tmp_path, legacy, "-p", "upm")
    assert result.exit_code == 2 and "without a manifest.json" in result.output
    assert run(tmp_path, legacy, "-p", "upm", "--overwrite").exit_code == 0
    other = tmp_path / "docs"
    other.mkdir()
    (other / "thesis.tex").write_text("%")
    for extra in ([], ["--overwrite"]):  # never written into, overwrite or not
        result = run(tmp_path, other, "-p", "upm", *extra)
        assert result.exit_code == 2 and "is not empty and holds no snpsim results" in result.output
    assert [p.name for p in other.iterdir()] == ["thesis.tex"]


def test_runs_and_sweeps_never_share_a_folder(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / sweeps.STORE).write_bytes(b"")
    result = run(tmp_path, sweep_dir, "-p", "upm", "--overwrite")
    assert result.exit_code == 2 and "holds a sweep" in result.output
    run_dir = tmp_path / "runs"
    assert run(tmp_path, run_dir, "-p", "upm").exit_code == 0
    doc = {"base": {"vms": [{"memory": "64M"}], "duration": "10ms"}, "axes": {"seed": [1, 2]}}
    with pytest.raises(snpsim.ConfigError, match=r"^out: .* holds runs of 'snpsim run'"):
        sweeps.run(doc, out=run_dir)
    path = tmp_path / "sweep.toml"
    path.write_text('[base]\nduration = "10ms"\nvms = [{ memory = "64M" }]\n[axes]\nseed = [1, 2]\n')
    cli = runner.invoke(app, ["sweep", str(path), "--out", str(run_dir)])
    assert cli.exit_code == 2 and cli.output.startswith("error: --out: ") and len(cli.output.splitlines()) == 1
    assert not (run_dir / sweeps.STORE).exists()


@pytest.fixture
def no_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("simulated although the output location is unusable")

    monkeypatch.setattr("snpsim.cli._run_all", refuse)


def test_output_locations_are_checked_before_simulating(tmp_path: Path, no_simulation: None) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, says in ((a_file, "is a file, not a folder"), (a_file / "sub", "is inside")):
        result = run(tmp_path, out, "-p", "upm")
        assert result.exit_code == 2 and result.output.startswith("error: --out: ") and says in result.output
    result = runner.invoke(app, ["run", str(scenario_file(tmp_path)), "--no-save", "--trace-out", str(tmp_path)])
    assert result.exit_code == 2 and "error: --trace-out: " in result.output and "is a folder" in result.output


def test_no_permission_is_found_before_simulating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_simulation: None
) -> None:
    # As root, chmod does not stop writes: the probe file is what fails on a read-only mount or without permission.
    def denied(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(results.tempfile, "mkstemp", denied)
    result = run(tmp_path, tmp_path / "new" / "out", "-p", "upm")
    assert result.exit_code == 2
    assert result.output == f"error: --out: cannot write in {tmp_path}: Permission denied\n"


def enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_prints_the_results_removes_partial_files_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(pd.DataFrame, "to_parquet", enospc)
    result = run(tmp_path, out, "-p", "upm", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["upm"]["sim_time_ns"] == 20_000_000  # printed anyway
    (error,) = result.stderr.splitlines()
    assert error.startswith("error: --out: cannot write results to ") and "No space left on device" in error
    assert [p.name for p in out.iterdir()] == []  # no half-written run, no manifest


def test_a_full_disk_after_the_first_preset_keeps_what_was_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real = pd.DataFrame.to_parquet
    calls: list[object] = []

    def second_fails(self: pd.DataFrame, *args: Any, **kwargs: Any) -> None:
        calls.append(args)
        if len(calls) == 2:
            enospc()
        real(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", second_fails)
    monkeypatch.setattr("snpsim.cli.os.cpu_count", lambda: 1)  # one after the other, in this process
    result = run(tmp_path, out, "-p", "upm", "-p", "upstream")
    assert result.exit_code == 1
    assert "upstream" in result.stdout and "directmap_4k" in result.stdout  # the table shows both
    assert "No space left on device" in result.stderr
    assert list(json.loads((out / MANIFEST).read_text())["presets"]) == ["upm"]
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "upm"]  # no report: the run is incomplete
    no_partials(out)


def test_a_report_or_trace_that_cannot_be_written_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    assert run(tmp_path, out, "-p", "upm").exit_code == 0
    old_report = (out / results.REPORT).read_text()

    def half_then_full(results_dir: Path, dest: Path) -> Path:
        dest.write_text("<!DOCTYPE html><html>half")
        enospc()
        return dest

    monkeypatch.setattr("snpsim.report.build", half_then_full)
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 1 and result.output.startswith("error: --output: cannot write ")
    assert (out / results.REPORT).read_text() == old_report  # the previous report is intact
    elsewhere = tmp_path / "new" / "r.html"
    result = runner.invoke(app, ["report", str(out), "-o", str(elsewhere)])
    assert result.exit_code == 1 and not elsewhere.exists() and list(elsewhere.parent.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(
        "snpsim.traces.write_qemu", lambda conversions, path, **_: (Path(path).write_text("half"), enospc())
    )
    trace = tmp_path / "t.log"
    result = runner.invoke(app, ["run", str(scenario_file(tmp_path)), "-q", "--no-save", "--trace-out", str(trace)])
    assert result.exit_code == 1 and "error: --trace-out: cannot write" in result.output
    assert "directmap_4k" in result.stdout and not trace.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_python_api_refuses_and_cleans_up_the_same_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = {"seed": 1, "duration": "20ms", "samples": 2, "host": {"memory": "256M"}, "vms": [{"memory": "64M"}]}
    a = snpsim.run({**scenario, "policy": "upm"})
    b = snpsim.run({**scenario, "seed": 2, "policy": "upm"})
    out = tmp_path / "out"
    assert save(a, out, "upm") == out / "upm"
    with pytest.raises(snpsim.ConfigError, match="another scenario"):
        save(b, out, "upm")
    save(b, out, "upm", overwrite=True)
    assert load(out)[0][0]["scenario"]["seed"] == 2
    monkeypatch.setattr(pd.DataFrame, "to_parquet", enospc)
    with pytest.raises(OutputError, match="No space left on device"):
        save(b, out, "upstream")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "upm"]
    with pytest.raises(snpsim.ConfigError, match="is a file"):
        save(a, out / MANIFEST, "x")


def test_custom_policies_get_readable_labels_everywhere(tmp_path: Path) -> None:
    cfg = tmp_path / "custom.toml"
    cfg.write_text(TINY.format(seed=1) + '[policy]\npreset = "upm"\nrmp_fault = "fixup"\n')
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(cfg), "-q", "--out", str(out)], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert "upm+rmp_fault=fixup" in result.stdout  # the table's column
    assert (out / "upm+rmp_fault=fixup" / SUMMARY).is_file()  # the folder
    assert list(json.loads((out / MANIFEST).read_text())["presets"]) == ["upm+rmp_fault=fixup"]
    assert "upm+rmp_fault=fixup" in (out / results.REPORT).read_text()  # the report


# -------------------------------------------------------------------------------------------------- state machine

TINY_DOC: dict[str, Any] = {"duration": "10ms", "samples": 1, "host": {"memory": "256M"}, "vms": [{"memory": "64M"}]}
_RESULTS: dict[tuple[int, str], Any] = {}


def tiny_result(seed: int, preset: str) -> Any:
    key = (seed, preset)
    if key not in _RESULTS:
        _RESULTS[key] = snpsim.run({**TINY_DOC, "seed": seed, "policy": preset})
    return _RESULTS[key]


class ResultsFolder(RuleBasedStateMachine):
    """Saves of two scenarios (seeds) under three presets, with and without overwrite, and failing writes: the
    folder always holds exactly the runs its manifest lists, all of one scenario, and nothing half-written."""

    #: set by the test: every example's folder is made under the test's tmp_path
    root: Path

    @initialize()
    def setup(self) -> None:
        import tempfile

        self.out = Path(tempfile.mkdtemp(prefix="results-", dir=self.root))
        self.seed: int | None = None
        self.labels: set[str] = set()

    def teardown(self) -> None:
        import shutil

        shutil.rmtree(self.out, ignore_errors=True)

    @rule(seed=st.sampled_from([1, 2]), preset=st.sampled_from(["upm", "upstream", "fixup"]), overwrite=st.booleans())
    def save_one(self, seed: int, preset: str, overwrite: bool) -> None:
        result = tiny_result(seed, preset)
        if self.seed is not None and seed != self.seed and not overwrite:
            with pytest.raises(snpsim.ConfigError, match="another scenario"):
                save(result, self.out, preset)
            return
        save(result, self.out, preset, overwrite=overwrite)
        if overwrite or self.seed != seed:
            self.labels = set()
        self.seed = seed
        self.labels.add(preset)

    @rule(preset=st.sampled_from(["upm", "upstream"]))
    def save_fails(self, preset: str) -> None:
        if self.seed is None:
            return
        claim = Claim.open(self.out, identity(tiny_result(self.seed, preset).scenario))
        original = pd.DataFrame.to_parquet
        pd.DataFrame.to_parquet = enospc  # type: ignore[method-assign]
        try:
            with pytest.raises(OutputError):
                save(tiny_result(self.seed, preset), self.out, preset, claim=claim)
        finally:
            pd.DataFrame.to_parquet = original  # type: ignore[method-assign]

    @invariant()
    def one_run_and_only_complete_ones(self) -> None:
        if self.seed is None:
            assert not (self.out / MANIFEST).exists()
            return
        manifest = json.loads((self.out / MANIFEST).read_text())
        assert set(manifest["presets"]) == self.labels
        on_disk = {p.name for p in self.out.iterdir() if p.is_dir() and not p.name.startswith(".")}
        assert on_disk == {e["folder"] for e in manifest["presets"].values()}
        docs, _ = load(self.out)
        assert {d["scenario"]["seed"] for d in docs} == {self.seed}
        assert not [p for p in os.listdir(self.out) if p.endswith((".tmp", ".old"))]


def test_results_folder_state_machine(tmp_path: Path) -> None:
    ResultsFolder.root = tmp_path
    run_state_machine_as_test(ResultsFolder, settings=settings(max_examples=25, stateful_step_count=8, deadline=None))
