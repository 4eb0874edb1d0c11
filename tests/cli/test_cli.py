"""The snpsim command line: scenario runs under presets, the presets table, clean errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from snpsim.cli import app
from snpsim.results import SUMMARY

runner = CliRunner()

SMALL = """
seed = 3
duration = "300ms"
samples = 5
policy = "upstream"
[host]
memory = "1G"
page_cache = 0.5
[host.writers.page_zeroing]
interval = "1ms"
[[vms]]
memory = "128M"
vcpus = 2
workload = "random-conversion"
[vms.params]
rate_per_s = 500
touch_rate_per_s = 500
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


def test_help_and_no_args() -> None:
    assert runner.invoke(app, ["--help"]).exit_code == 0
    result = runner.invoke(app, [])
    assert result.exit_code == 0
    assert "run" in result.output


def test_help_shows_bracketed_words() -> None:
    # rich takes "[costs]" in a help text as markup and drops it unless escaped (issue 16: "rich markup eats
    # bracketed words"); every bracketed word of every command's docstring must reach the help output
    import re

    import typer.main

    group = typer.main.get_group(app)
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "400"}).output
    for name, command in group.commands.items():
        words = re.findall(r"\\?\[([a-z_.-]+)\]", command.help or "")
        shown = runner.invoke(app, [name, "--help"], env={"COLUMNS": "400"}).output
        for word in words:
            assert f"[{word}]" in shown, (name, word)
        first = (command.help or "").split(".")[0]
        if any(f"[{w}]" in first for w in words):
            assert all(f"[{w}]" in top for w in words if f"[{w}]" in first), name


def test_presets_table_lists_every_preset() -> None:
    result = runner.invoke(app, ["presets"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in ("fixup", "unmap", "bulk", "upm", "upm-nosplit", "hugetlb", "upstream"):
        assert name in result.output


def test_config_json_is_deterministic_and_shows_the_policies_apart(tmp_path: Path) -> None:
    cfg = write(tmp_path, SMALL)
    args = ["run", str(cfg), "--json", "--no-save", "-p", "fixup", "-p", "upstream", "-p", "upm-nosplit"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, args)
    assert first.stdout == again.stdout
    data = json.loads(first.stdout)
    assert set(data) == {"fixup", "upstream", "upm-nosplit"}
    # fixup never touches the direct map (its #PF handler may split around a host SNP page); upstream splits it;
    # upm-nosplit never splits guest memory to 4K: both keep the boot-time 3 MiB at 4K of a 1 GiB server host
    # (tests/test_e2e.py derives it) plus the 2M ranges split for the host's own SNP pages (docs/launch.md)
    for name in ("fixup", "upm-nosplit"):
        assert data[name]["directmap_4k"] == (3 << 20) + data[name]["direct_map_level2_splits"] * (2 << 20)
    assert data["upm-nosplit"]["direct_map_level2_splits"] >= 2  # the TMR's, and the kernel pages' 2M ranges
    assert data["upstream"]["directmap_4k"] > 3 << 20
    assert data["upstream"]["host_crash_count"] == 0
    # the default policy of the file is used when no preset is given
    single = json.loads(runner.invoke(app, ["run", str(cfg), "--json", "--out", str(tmp_path / "o")]).stdout)
    assert list(single) == ["upstream"]
    assert single["upstream"] == data["upstream"]


def test_table_output(tmp_path: Path) -> None:
    cfg = write(tmp_path, SMALL)
    result = runner.invoke(app, ["run", str(cfg), "-q", "--no-save"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "directmap_4k" in result.output and "upstream" in result.output


def test_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    bad_field = write(tmp_path, SMALL.replace('memory = "1G"', 'memory = "1Q"'))
    (tmp_path / "broken.toml").write_text("seed = [")
    for args, needle in (
        (["run", str(bad_field)], "host.memory"),
        (["run", str(tmp_path / "missing.toml")], "missing.toml"),
        (["run", str(tmp_path / "broken.toml")], "broken.toml"),
        (["run", "-p", "nope"], "--preset"),
        (["run", "--duration", "soon"], "--duration"),
        (["run", "--bogus"], "No such option: --bogus"),
        (["run", "--seed", "x"], "--seed"),
        (["replay"], "Missing argument"),
        (["frobnicate"], "No such command"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_version() -> None:
    import snpsim

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"snpsim {snpsim.__version__}\n"


def test_default_job_compares_every_preset_on_boot_and_churn_and_writes_a_report(tmp_path: Path) -> None:
    """``snpsim run`` alone: the built-in scenario (boot + VM churn) under all presets, results and a report.

    Shortened to 2 simulated hours so the test is quick; the scenario is otherwise the default one."""
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--duration", "2h", "--out", str(out), "-q"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("fixup", "unmap", "bulk", "upm", "upm-nosplit", "hugetlb", "upstream"):
        assert name in result.output
        doc = json.loads((out / name / SUMMARY).read_text())
        assert doc["summary"]["sim_time_ns"] == 2 * 3600 * 10**9
        assert len(doc["vms"]) >= 2  # the booting guest and at least one churned VM
        assert doc["vms"][0]["memory"] == 1 << 30
    html = (out / "report.html").read_text()
    assert "<svg" in html and "upm-nosplit" in html
