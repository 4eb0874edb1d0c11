"""``snpsim presets`` and the CLI help come from the knob declarations (snpsim.policy ``KNOBS``, ``PRESETS``):
every knob, every value with what it does, every preset with its option; nothing written twice (issue 13)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import snpsim
from snpsim.cli import app
from snpsim.policy import KNOBS, PRESETS

runner = CliRunner()
WIDE = {"COLUMNS": "250"}
WIDER = {"COLUMNS": "400"}  # --help panels: wide enough that no preset or knob list wraps at a hyphen


def users(knob: str, value: object) -> list[str]:
    """The presets that set ``knob`` to ``value``, from the policies themselves."""
    return [name for name, p in snpsim.presets.items() if getattr(p, knob) == value]


@pytest.mark.parametrize("knob", list(KNOBS))
def test_presets_knob_explains_every_value(knob: str) -> None:
    result = runner.invoke(app, ["presets", knob], env=WIDE)
    assert result.exit_code == 0, result.output
    k = KNOBS[knob]
    text = " ".join(result.output.split())  # wrapped to the terminal
    assert text.startswith(" ".join(f"{knob}: {k.meaning}".split()))
    for v in k.values:
        who = ", ".join(users(knob, v.value)) or "no preset"
        assert " ".join(f"{str(v.value).lower()} ({who}): {v.does}".split()) in text
    assert max(len(line) for line in result.output.splitlines()) <= 250


def test_presets_knob_json_is_the_declaration() -> None:
    result = runner.invoke(app, ["presets", "directmap", "--json"])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    k = KNOBS["directmap"]
    assert (doc["knob"], doc["meaning"], doc["default"], doc["source"]) == ("directmap", k.meaning, k.default, k.source)
    declared = [(v.value, v.does, v.where) for v in k.values]
    assert [(v["value"], v["does"], v["where"]) for v in doc["values"]] == declared
    assert [v["presets"] for v in doc["values"]] == [users("directmap", v.value) for v in k.values]
    assert sum(len(v["presets"]) for v in doc["values"]) == len(snpsim.presets)  # each preset has one value


def test_presets_knob_csv_has_one_row_per_value() -> None:
    result = runner.invoke(app, ["presets", "shared_backing", "--format", "csv"])
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "value,presets,does,where"
    assert [line.split(",")[0] for line in lines[1:]] == [str(v.value) for v in KNOBS["shared_backing"].values]


def test_presets_table_names_every_presets_option() -> None:
    result = runner.invoke(app, ["presets"], env=WIDE)
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # wrapped to the terminal
    for p in PRESETS:
        assert f"{p.name}: {p.option} ({p.source})" in text
    for knob in KNOBS:
        assert knob in result.output


def test_an_unknown_knob_is_one_line() -> None:
    result = runner.invoke(app, ["presets", "colour"])
    assert result.exit_code == 2
    assert result.output == f"error: colour: unknown knob (knobs: {', '.join(KNOBS)})\n"


@pytest.mark.parametrize("command", ["run", "replay", "limits"])
def test_preset_options_list_the_presets(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], env=WIDER)
    assert result.exit_code == 0
    assert f"Presets: {', '.join(snpsim.presets)}" in " ".join(result.output.split())


def test_presets_help_lists_the_knobs() -> None:
    result = runner.invoke(app, ["presets", "--help"], env=WIDER)
    assert result.exit_code == 0
    assert ", ".join(KNOBS) in " ".join(result.output.split())
