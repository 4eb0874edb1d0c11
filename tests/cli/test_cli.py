"""The snpsim command line: demo run, presets table, clean errors for bad input."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from snpsim.cli import app

runner = CliRunner()
SMALL = ["--host-memory", "256M", "--guest-memory", "16M", "--conversions", "200", "--duration", "50ms"]


def test_help_and_no_args() -> None:
    assert runner.invoke(app, ["--help"]).exit_code == 0
    result = runner.invoke(app, [])
    assert result.exit_code == 0
    assert "run" in result.output


def test_presets_table_lists_every_preset() -> None:
    result = runner.invoke(app, ["presets"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in ("fixup", "unmap", "bulk", "upm", "upm-nosplit", "hugetlb", "upstream"):
        assert name in result.output


def test_demo_json_is_deterministic_and_shows_the_policies_apart() -> None:
    args = ["run", "--json", "-p", "fixup", "-p", "upstream", "-p", "upm-nosplit", *SMALL]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, args)
    assert first.output == again.output
    data = json.loads(first.output)
    assert set(data) == {"fixup", "upstream", "upm-nosplit"}
    assert data["fixup"]["directmap_4k"] == 0 and data["fixup"]["directmap_split_count"] == 0
    assert data["upstream"]["directmap_4k"] > 0
    assert data["upm-nosplit"]["directmap_4k"] == 0
    assert data["upstream"]["host_crash_count"] == 0


def test_demo_table_output() -> None:
    result = runner.invoke(app, ["run", "-q", "-p", "upstream", *SMALL], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "directmap_4k" in result.output


def test_bad_input_is_one_line_exit_2() -> None:
    for args, field in (
        (["run", "--host-memory", "12Q"], "--host-memory"),
        (["run", "-p", "nope"], "--preset"),
        (["run", "--guest-memory", "8G", "--host-memory", "1G"], "--guest-memory"),
        (["run", "--duration", "soon"], "--duration"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, args
        assert field in result.output
        assert "Traceback" not in result.output
