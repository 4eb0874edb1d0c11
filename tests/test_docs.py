"""docs/presets/ and docs/knobs.md agree with the code: one page per preset whose knob table is the preset's
actual knob values, and every knob with every allowed value documented (issue 4)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

import snpsim
from snpsim.metrics import METRICS
from snpsim.policy import KNOB_VALUES, Policy, knobs_markdown

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PRESET_DOCS = DOCS / "presets"
KNOBS = [f.name for f in dataclasses.fields(Policy)]
PAGES = sorted([*PRESET_DOCS.glob("*.md"), DOCS / "knobs.md"])


def shown(value: object) -> str:
    """A knob value as the docs write it: as policy.py's ConfigError lists it (booleans lower-case, as TOML)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section of a Markdown page."""
    m = re.search(rf"^## {re.escape(heading)}[ \t]*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert m, f"no '## {heading}' section"
    return m.group(1)


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of every Markdown table row (separator rows left out), backticks stripped."""
    rows = []
    for line in markdown.splitlines():
        line = line.strip()
        if not (line.startswith("|") and line.endswith("|")):
            continue
        cells = [c.strip() for c in line[1:-1].split("|")]
        if all(c and set(c) <= set("-: ") for c in cells):
            continue
        rows.append([c.strip("`") for c in cells])
    return rows


def knob_table(text: str) -> dict[str, str]:
    """``knob -> value`` from the table of a preset page's ``## Knob values`` section."""
    rows = table_rows(section(text, "Knob values"))
    assert rows and rows[0][:2] == ["knob", "value"], rows[:1]
    table: dict[str, str] = {}
    for row in rows[1:]:
        assert row[0] not in table, f"knob {row[0]} listed twice"
        table[row[0]] = row[1]
    return table


def expected(policy: Policy) -> dict[str, str]:
    return {k: shown(v) for k, v in dataclasses.asdict(policy).items()}


def test_one_page_per_preset() -> None:
    pages = {p.stem for p in PRESET_DOCS.glob("*.md")} - {"README"}
    assert pages == set(snpsim.presets)


@pytest.mark.parametrize("name", sorted(snpsim.presets))
def test_page_knob_table_is_the_preset(name: str) -> None:
    text = (PRESET_DOCS / f"{name}.md").read_text()
    assert text.startswith(f"# `{name}`")
    assert knob_table(text) == expected(snpsim.presets[name])


@pytest.mark.parametrize("name", sorted(snpsim.presets))
def test_knob_table_check_catches_a_changed_preset(name: str) -> None:
    """The comparison above fails as soon as any knob of the preset differs from its page."""
    page = knob_table((PRESET_DOCS / f"{name}.md").read_text())
    policy = snpsim.presets[name]
    for knob in KNOBS:
        for other in KNOB_VALUES[knob]:
            if other != getattr(policy, knob):
                changed = {**expected(policy), knob: shown(other)}
                assert page != changed, (knob, other)


def test_knob_table_parser_reads_the_values() -> None:
    text = (PRESET_DOCS / "upstream.md").read_text()
    edited = text.replace("| `rmp_fault` | `oops` |", "| `rmp_fault` | `fixup` |", 1)
    assert edited != text
    assert knob_table(edited)["rmp_fault"] == "fixup"
    assert knob_table(edited) != expected(snpsim.presets["upstream"])


def test_index_links_every_preset_once() -> None:
    rows = table_rows((PRESET_DOCS / "README.md").read_text())
    linked = [m.group(1) for row in rows for m in re.finditer(r"\]\(([\w-]+)\.md\)", row[0])]
    assert sorted(linked) == sorted(snpsim.presets)


def test_knob_values_come_from_policy() -> None:
    assert list(KNOB_VALUES) == KNOBS


def test_knobs_md_is_generated_from_the_declarations() -> None:
    """docs/knobs.md is `python -m snpsim.policy` output: regenerate it when a knob changes."""
    assert (DOCS / "knobs.md").read_text() == knobs_markdown()


def test_knobs_md_documents_every_knob_and_value() -> None:
    text = (DOCS / "knobs.md").read_text()
    headings = re.findall(r"^## `(\w+)`[ \t]*$", text, re.MULTILINE)
    assert headings == KNOBS
    for knob in KNOBS:
        rows = table_rows(section(text, f"`{knob}`"))
        assert rows[0][0] == "value", (knob, rows[:1])
        assert [row[0] for row in rows[1:]] == [shown(v) for v in KNOB_VALUES[knob]], knob


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_metric_names_are_design_metrics(page: Path) -> None:
    """Every backticked name shaped like a metric (``directmap_*``, ``npt_*``, ``*_count``, ``*_bytes``) that is
    not a knob is a metric of DESIGN.md."""
    names = set(re.findall(r"`((?:directmap|npt)_[a-z0-9]+|[a-z_]+_count|[a-z_]+_bytes)`", page.read_text()))
    names -= set(KNOBS)
    assert names <= set(METRICS), sorted(names - set(METRICS))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_cited_files_exist(page: Path) -> None:
    text = page.read_text()
    paths = set(re.findall(r"\b((?:src/snpsim|examples)/[\w/.-]+\.(?:py|toml))\b", text))
    assert all((ROOT / p).is_file() for p in paths), sorted(p for p in paths if not (ROOT / p).is_file())
    for name in re.findall(r"-p ([\w-]+)", text):
        assert name in snpsim.presets, name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_snippets_compile(page: Path) -> None:
    for block in re.findall(r"^```python\n(.*?)^```", page.read_text(), re.MULTILINE | re.DOTALL):
        compile(block, str(page), "exec")


def _preset_tables() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("preset_tables", ROOT / "benchmarks" / "preset_tables.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preset_tables_rewrites_only_the_value_cells() -> None:
    """benchmarks/preset_tables.py (how the pages' tables are made): the rows the page chose stay, in order, the
    columns are the command's presets, values are formatted as the CLI formats them; prose is left alone."""
    pt: Any = _preset_tables()
    command = "snpsim run examples/x.toml -p upstream -p upm --no-save --json"
    page = (
        "intro\n\n```sh\n" + command + "\n```\n\n| metric | `upstream` | `upm` |\n|---|---:|---:|\n"
        "| `directmap_4k` | 1 | 2 |\n| `directmap_split_count` | 3 | 4 |\n\nreading 1,026 splits\n"
    )
    cache = {
        command: {
            "upstream": {"directmap_4k": 3 << 30, "directmap_split_count": 1031},
            "upm": {"directmap_4k": 1536 << 10, "directmap_split_count": 2},
        }
    }
    out = pt.regenerate(page, cache)
    assert out == (
        "intro\n\n```sh\n" + command + "\n```\n\n| metric | `upstream` | `upm` |\n|---|---:|---:|\n"
        "| `directmap_4k` | 3 GiB | 1.5 MiB |\n| `directmap_split_count` | 1,031 | 2 |\n\nreading 1,026 splits\n"
    )
    assert pt.presets_of(command) == ["upstream", "upm"]


def test_every_preset_page_table_matches_its_command() -> None:
    """Each table after a page's command has the command's presets as columns and known metrics as rows (so the
    generator can rerun it)."""
    pt: Any = _preset_tables()
    for page in sorted(PRESET_DOCS.glob("*.md")):
        text = page.read_text()
        for m in pt.COMMAND.finditer(text):
            rest = text[m.end() :].lstrip("\n")
            header = pt.HEADER.match(rest)
            if header is None:
                continue
            columns = re.findall(r"`([a-z0-9-]+)`", header.group(1))
            assert columns == pt.presets_of(m.group(1)), page.name
            rows = re.findall(r"^\| `([a-z0-9_]+)` \|", rest[header.end() :].split("\n\n")[0], re.M)
            assert rows and set(rows) <= set(METRICS), (page.name, rows)
