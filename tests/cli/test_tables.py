"""Output that fits: no table truncates a value at any width (80 columns, piped, narrow), the layout adapts
(compact values, transposed, split into several tables), and --format csv|markdown|json give the same data."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import snpsim
from snpsim.cli import app
from snpsim.metrics import METRICS
from snpsim.tables import Grid, metric_grid, print_grid, to_csv, to_markdown
from snpsim.units import format_compact, format_metric

runner = CliRunner()

#: The default job's final values (README, 7 presets x every metric): the widest cells the CLI prints.
DEFAULT_JOB = {
    "fixup": {"directmap_1g": 4 << 30, "rmpupdate_count": 1_884_599, "npf_count": 993_950, "shared_bytes": 134_951_731},
    "unmap": {"directmap_4k": 3_088_147_906, "host_crash_count": 14_368, "host_notpresent_fault_count": 14_368},
    "bulk": {"directmap_4k": 4 << 30, "rmpupdate_count": 1_680_504},
    "upm": {"directmap_4k": 3_088_147_906, "npt_4k": 1_206_885_990},
    "upm-nosplit": {"directmap_2m": 3_087_007_744, "waste_bytes": 712_704, "npt_2m": 1_195_081_318},
    "hugetlb": {"directmap_2m": 3_087_007_744, "waste_bytes": 8_650_752},
    "upstream": {"directmap_4k": 4 << 30, "rmpupdate_count": 1_680_504},
}


def default_job_grid() -> Grid:
    summaries = {
        p: {m: v.get(m, 987_621 if m.endswith("_count") else 0) for m in METRICS} for p, v in DEFAULT_JOB.items()
    }
    for s in summaries.values():
        s["sim_time_ns"] = 86_400 * 10**9
    cells = [[summaries[p][m] for p in summaries] for m in METRICS]
    return metric_grid("default: Linux guest boot + a day of host VM churn", "metric", METRICS, list(summaries), cells)


def render(grid: Grid, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    print_grid(console, grid)
    return console.file.getvalue()  # type: ignore[attr-defined]


def assert_whole(grid: Grid, text: str, width: int) -> None:
    """Every line within the width, no ellipsis, and every row, column and value present in full or compact
    form (so no cell was cut)."""
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width, text
    for label in [*grid.rows, *grid.columns]:
        assert label in text, label
    full, compact = grid.text(compact=False), grid.text(compact=True)
    for i, row in enumerate(full):
        for j, cell in enumerate(row):
            assert cell in text or compact[i][j] in text, (grid.rows[i], grid.columns[j], cell)


@pytest.mark.parametrize("width", [80, 60, 44, 120, 200])
def test_the_default_job_table_never_truncates(width: int) -> None:
    grid = default_job_grid()
    assert len(grid.columns) >= 7 and len(grid.rows) >= 24
    text = render(grid, width)
    assert_whole(grid, text, width)
    # full values whenever a layout fits with them (here at every width), durations as durations
    assert "1,884,599" in text and "86,400,000,000" not in text and " 1d" in text


def test_at_80_columns_the_presets_are_split_into_tables_that_repeat_the_metrics() -> None:
    text = render(default_job_grid(), 80)
    # A rich table is 1 + (w + 3) per column wide (border, 2 of padding, separator). The metric column is
    # "host_notpresent_fault_count" (27); fixup, unmap, bulk and upm are 9 wide ("1,884,599", "2.876 GiB"):
    # 1 + 30 + 4 x 12 = 79 <= 80, and upm-nosplit (11) would make 93. Then upm-nosplit, hugetlb, upstream:
    # 1 + 30 + 14 + 12 + 12 = 69. Two tables, 4 + 3 (already balanced: ceil(7 / 2) = 4).
    assert text.count("host_notpresent_fault_count") == 2
    assert "(1/2)" in text and "(2/2)" in text
    first, second = text.split("(2/2)")
    assert all(f" {p} " in first for p in ("fixup", "unmap", "bulk", "upm"))
    assert all(f" {p} " in second for p in ("upm-nosplit", "hugetlb", "upstream"))
    assert max(len(line) for line in first.splitlines()) == 79
    wide = render(default_job_grid(), 200)
    assert wide.count("sim_time_ns") == 1  # one table when it fits


def test_a_grid_too_wide_either_way_is_transposed_when_that_fits() -> None:
    cols = [f"column-number-{k}" for k in range(8)]  # 8 x 18 > 80, as 8 rows it fits
    grid = Grid(
        "t", "row", ["a", "b"], cols, [[k for k in range(8)], [k * 2 for k in range(8)]], lambda r, c, v: str(v)
    )
    text = render(grid, 80)
    assert_whole(grid, text, 80)
    lines = [line for line in text.splitlines() if "column-number-" in line]
    assert len(lines) == 8  # one line per former column: transposed, one table


def test_narrower_than_one_column_falls_back_to_one_line_per_value() -> None:
    grid = default_job_grid()
    text = render(grid, 24)
    assert "…" not in text
    fixup = text.split("metric fixup:")[1].split("metric unmap:")[0]
    assert f"  rmpupdate_count  {format_metric('rmpupdate_count', 1_884_599)}\n" in fixup
    # at 44 columns the lists fit: "  host_notpresent_fault_count  987,621" is 38 characters
    assert_whole(grid, render(grid, 44), 44)


def test_compact_units() -> None:
    # three significant digits and a unit letter: 1,884,599 -> 1.88M; 3 << 29 bytes = 1.5 GiB -> 1.5G
    assert format_compact("rmpupdate_count", 1_884_599) == "1.88M"
    assert format_compact("host_crash_count", 3_402) == "3402"
    assert format_compact("waste_bytes", 3 << 29) == "1.5G"
    assert format_compact("waste_bytes", 1023 * 1024 + 1000) == "1024K"  # 1023.98 KiB, not "1e+03K"
    assert format_compact("sim_time_ns", 86_400 * 10**9) == "1d"
    assert format_compact("boot_time_ns", 1_500) == "1.5us"


def test_brackets_are_text_not_markup() -> None:
    grid = Grid("[bold]t[/bold]", "[k]", ["[churn]"], ["[red]x"], [["[v]"]], lambda r, c, v: str(v))
    text = render(grid, 80)
    for s in ("[bold]t[/bold]", "[k]", "[churn]", "[red]x", "[v]"):
        assert s in text


def test_csv_and_markdown_carry_every_value() -> None:
    grid = default_job_grid()
    rows = list(csv.reader(io.StringIO(to_csv(grid))))
    assert rows[0] == ["metric", *DEFAULT_JOB]
    by_metric = {r[0]: r[1:] for r in rows[1:]}
    assert by_metric["rmpupdate_count"][0] == "1884599"  # raw numbers, not formatted
    assert by_metric["sim_time_ns"] == [str(86_400 * 10**9)] * 7
    md = to_markdown(grid).splitlines()
    assert md[2] == "| metric | " + " | ".join(DEFAULT_JOB) + " |"
    assert md[3].startswith("|:---|---:|")
    assert "| rmpupdate_count | 1,884,599 |" in to_markdown(grid)


SMALL = """
seed = 1
duration = "20ms"
samples = 2
[host]
memory = "512M"
[[vms]]
memory = "64M"
vcpus = 1
workload = "linux-boot"
"""


@pytest.fixture(scope="module")
def seven_presets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The real CLI, every preset at 80 columns (piped: CliRunner is not a terminal), in each format."""
    cfg = tmp_path_factory.mktemp("cfg") / "s.toml"
    cfg.write_text(SMALL)
    args = ["run", str(cfg), "--no-save", "-q", *(a for p in snpsim.presets for a in ("-p", p))]
    outputs = {}
    for fmt in ("table", "csv", "markdown", "json"):
        result = runner.invoke(app, [*args, "--format", fmt], env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        outputs[fmt] = result.stdout
    return outputs


def test_the_cli_table_fits_80_columns(seven_presets: dict[str, str]) -> None:
    text = seven_presets["table"]
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for name in snpsim.presets:
        assert f" {name} " in text
    for metric in METRICS:
        assert metric in text


def test_the_cli_formats_agree(seven_presets: dict[str, str], tmp_path: Path) -> None:
    doc = json.loads(seven_presets["json"])
    rows = list(csv.reader(io.StringIO(seven_presets["csv"])))
    assert rows[0] == ["metric", *snpsim.presets]
    for row in rows[1:]:
        assert [int(v) for v in row[1:]] == [doc[p][row[0]] for p in snpsim.presets]
    assert seven_presets["markdown"].count("\n|") == len(METRICS) + 2  # header, separator, one line per metric
    cfg = tmp_path / "s.toml"
    cfg.write_text(SMALL)
    alias = runner.invoke(
        app, ["run", str(cfg), "--no-save", "--json", *(a for p in snpsim.presets for a in ("-p", p))]
    )
    assert json.loads(alias.stdout) == doc


def test_presets_and_limits_fit_too() -> None:
    for args in (["presets"], ["limits", "--memory", "64M", "--duration", "10ms", "-p", "upm", "-p", "upm-nosplit"]):
        result = runner.invoke(app, args, env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        assert "…" not in result.stdout and max(len(line) for line in result.stdout.splitlines()) <= 80
    assert json.loads(runner.invoke(app, ["presets", "--json"]).stdout)["upm"]["directmap"] == "unmap"
