"""``snpsim calibrate``: every bad CSV is one line naming the file, line and column (exit 2, nothing simulated);
a good one prints the fit, writes a [costs] table scenarios accept and a PNG plot next to it."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

import snpsim
from snpsim.calibrate import read_measurements
from snpsim.cli import app
from snpsim.hw.costs import COSTS, CostModel

runner = CliRunner()
HEAD = "name,memory,vcpus,preset,lazy_accept,value\n"
GOOD = "a,1G,1,upstream,true,2.5s\n"


@pytest.mark.parametrize(
    ("text", "field", "says"),
    [
        ("", "m.csv", "empty"),
        ("# only a comment\n\n", "m.csv", "empty"),
        ("name,colour,value\n", "m.csv line 1, column colour", "unknown column"),
        ("name,value,value\n", "m.csv line 1, column value", "listed twice"),
        ("name,memory\nx,1G\n", "m.csv line 1", "no value column"),
        (HEAD, "m.csv", "no measurements"),
        (HEAD + "a,1G,1,upstream\n", "m.csv line 2", "4 fields, the header has 6"),
        (HEAD + GOOD + "b,1G,1,upstream,true,2.5s,9\n", "m.csv line 3", "7 fields"),
        (HEAD + "a,,1,upstream,true,2.5s\n", "m.csv line 2, column memory", "missing"),
        (HEAD + "a,16Q,1,upstream,true,2.5s\n", "m.csv line 2, column memory", "16Q"),
        (HEAD + "a,101M,1,upstream,true,2.5s\n", "m.csv line 2, column memory", "multiple of 2M"),
        (HEAD + "a,1G,0,upstream,true,2.5s\n", "m.csv line 2, column vcpus", "must be >= 1"),
        (HEAD + "a,1G,5000,upstream,true,2.5s\n", "m.csv line 2, column vcpus", "4096"),
        (HEAD + "a,1G,two,upstream,true,2.5s\n", "m.csv line 2, column vcpus", "expected an integer"),
        (HEAD + "a,1G,1,upstrem,true,2.5s\n", "m.csv line 2, column preset", "unknown preset 'upstrem'"),
        (HEAD + "a,1G,1,upstream,maybe,2.5s\n", "m.csv line 2, column lazy_accept", "expected true or false"),
        (HEAD + "a,1G,1,upstream,true,2.5\n", "m.csv line 2, column value", "needs a unit"),
        (HEAD + "a,1G,1,upstream,true,\n", "m.csv line 2, column value", "missing"),
        (HEAD + "a,1G,1,upstream,true,-2s\n", "m.csv line 2, column value", "2s"),
        (HEAD + "a,1G,1,upstream,true,0s\n", "m.csv line 2, column value", "needs a stddev"),
        ("memory,value,stddev\n1G,2.5s,0s\n", "m.csv line 2, column stddev", "must be > 0"),
        ("memory,host_memory,value\n64G,8G,2.5s\n", "m.csv line 2, column host_memory", "more than host.memory"),
        ("memory,host_memory,value\n1G,8Q,2.5s\n", "m.csv line 2, column host_memory", "8Q"),
        ("memory,duration,value\n1G,10,2.5s\n", "m.csv line 2, column duration", "needs a unit"),
        ("memory,seed,value\n1G,-1,2.5s\n", "m.csv line 2, column seed", "must be >= 0"),
        ("memory,workload,value\n1G,bootit,2.5s\n", "m.csv line 2, column workload", "unknown workload"),
        ("memory,metric,value\n1G,boot_time,2.5s\n", "m.csv line 2, column metric", "unknown metric 'boot_time'"),
        ("memory,metric,value\n1G,vms[1].boot_ns,2.5s\n", "m.csv line 2, column metric", "starts 1 VM"),
        ("memory,metric,value\n1G,vms[0].colour,2.5s\n", "m.csv line 2, column metric", "unknown metric"),
        ("memory,metric,value\n1G,npf_count,lots\n", "m.csv line 2, column value", "expected a number"),
        ("scenario,value\nnone.toml,2.5s\n", "m.csv line 2, column scenario", "no such file"),
        ('memory,value\n1G,"2.5s\n', "m.csv line 2", "not valid CSV"),  # an unterminated quote
    ],
)
def test_bad_csv_is_one_error_naming_line_and_column(tmp_path: Path, text: str, field: str, says: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(snpsim.ConfigError) as info:
        read_measurements(path)
    assert info.value.field == str(tmp_path / field) and says in info.value.message, info.value


def test_scenario_file_rows(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text(
        'policy = "hugetlb"\n[host]\nmemory = "16G"\n[[vms]]\nmemory = "2G"\nvcpus = 2\nworkload = "linux-boot"\n'
    )
    (tmp_path / "costly.toml").write_text('[costs]\nrmpupdate_ns = 5\n[[vms]]\nmemory = "2G"\n')
    path = tmp_path / "m.csv"
    path.write_text("scenario,memory,preset,value\nbase.toml,,,3s\nbase.toml,4G,upm,3s\n")
    plain, changed = read_measurements(path)
    assert (plain.scenario.vms[0].memory, plain.scenario.vms[0].vcpus, plain.scenario.host_memory) == (
        2 << 30,
        2,
        16 << 30,
    )
    assert plain.scenario.policy == snpsim.presets["hugetlb"]
    assert (changed.scenario.vms[0].memory, changed.scenario.policy) == (4 << 30, snpsim.presets["upm"])
    path.write_text("scenario,value\ncostly.toml,3s\n")
    with pytest.raises(snpsim.ConfigError, match=r"m.csv line 2, column scenario: .*\[costs\] table"):
        read_measurements(path)
    path.write_text("scenario,memory,value\nbase.toml,20G,3s\n")  # more than the file's 16G host
    with pytest.raises(snpsim.ConfigError, match=r"m.csv line 2, column scenario: base.toml: vms: .*host.memory"):
        read_measurements(path)


def test_the_cli_says_one_line_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(HEAD + GOOD + "b,1G,1,upstream,true,2.5\n")
    result = runner.invoke(app, ["calibrate", str(path), "-o", str(tmp_path / "c.toml")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {path} line 3, column value: a duration needs a unit: write '2.5s' or '2.5ms'"
    ]
    assert not (tmp_path / "c.toml").exists()
    path.write_text(HEAD + GOOD)
    for args, says in [
        (["--costs", "page_ns"], "error: --costs: unknown cost 'page_ns'"),
        (["--costs", ","], "error: --costs: expected cost names"),
        (["--workers", "0"], "error: --workers: must be >= 1"),
        (["--start", str(tmp_path / "none.toml")], f"error: {tmp_path / 'none.toml'}: no such file"),
        (["-o", str(tmp_path)], "error: --out:"),
    ]:
        result = runner.invoke(app, ["calibrate", str(path), "-o", str(tmp_path / "c.toml"), *args])
        assert result.exit_code == 2 and result.output.startswith(says), (args, result.output)
    (tmp_path / "start.toml").write_text("[costs]\nrmpupdate_ns = -1\n")
    result = runner.invoke(app, ["calibrate", str(path), "--start", str(tmp_path / "start.toml")])
    assert result.exit_code == 2 and "costs.rmpupdate_ns: expected a non-negative integer" in result.output


def test_a_guest_that_does_not_boot_in_time_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("name,memory,duration,value\nshort,1G,100ms,2.5s\n")  # a boot takes more than 1 s of phases
    result = runner.invoke(app, ["calibrate", str(path), "-q", "-w", "1", "-o", str(tmp_path / "c.toml")])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {path} line 2 (short): the guest did not finish booting within")


def test_calibrate_writes_costs_and_plot(tmp_path: Path) -> None:
    """Three boots the model made with page_clear_ns = 1500, rmpupdate_ns = 2500, set_attributes_page_ns = 300:
    upstream (one RMPUPDATE, 4K PVALIDATE and page clear per page), hugetlb (2M RMP entries: few RMPUPDATEs) and
    unmap (pre-UPM: no memory attributes) pay them in independent proportions, so three rows fix three costs
    (and no boot offset: --no-offset, a fourth unknown, would need a fourth row)."""
    truth = {"page_clear_ns": 1500, "rmpupdate_ns": 2500, "set_attributes_page_ns": 300}
    lines = ["name,memory,preset,value"]
    for preset in ("upstream", "hugetlb", "unmap"):
        doc = {
            "duration": "1h",
            "policy": preset,
            "host": {"memory": "8G"},
            "vms": [{"memory": "1G", "workload": "linux-boot", "params": {"touch_rate_per_s": 0}}],
            "costs": truth,
        }
        lines.append(f"{preset},1G,{preset},{snpsim.run(doc).summary['boot_time_ns']}ns")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "cal.toml"
    args = ["calibrate", str(tmp_path / "m.csv"), "-o", str(out), "-w", "1", "--no-offset", "-c", ",".join(truth)]
    args.append("--json")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {k: doc["costs"][k] for k in truth} == truth
    assert [m["name"] for m in doc["measurements"]] == ["upstream", "hugetlb", "unmap"]
    assert doc["rms"] < 1e-9 and doc["plot"] == str(out.with_suffix(".png")) and doc["boot_offset"] is None
    table = tomllib.loads(out.read_text())["costs"]
    assert set(table) == set(COSTS) and CostModel.from_mapping(table) == CostModel(**doc["costs"])
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table is a scenario's [costs]: a run with it reproduces the first measurement
    run = snpsim.run({**_one_vm("upstream"), "costs": table})
    assert f"{run.summary['boot_time_ns']}ns" == lines[1].split(",")[-1]
    # the default output: the two tables and where the files went
    result = runner.invoke(app, [*args[:-1], "-q"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "calibrated costs" in result.output and "measurements: rms residual" in result.output
    assert f"costs written to {out}" in result.output


def _one_vm(preset: str) -> dict[str, object]:
    return {
        "duration": "1h",
        "policy": preset,
        "host": {"memory": "8G"},
        "vms": [{"memory": "1G", "workload": "linux-boot", "params": {"touch_rate_per_s": 0}}],
    }


def test_the_documented_example_reads() -> None:
    """docs/calibrate.md's example: nine 4-vCPU boots with a 1 % stddev column."""
    path = Path(__file__).resolve().parents[2] / "examples" / "calibrate" / "boot-times.csv"
    rows = read_measurements(path)
    assert len(rows) == 9 and all(m.metric == "boot_time_ns" and m.stddev is not None for m in rows)
    assert all(m.scenario.vms[0].vcpus == 4 for m in rows)
    assert {m.scenario.policy for m in rows} == {snpsim.presets[p] for p in ("upstream", "hugetlb", "unmap")}
    assert all(m.stddev == pytest.approx(0.01 * m.value, rel=0.01) for m in rows if m.stddev is not None)
