"""Tables that fit: every value whole, in any terminal width, and the same grids as CSV, Markdown or JSON.

The CLI's results are grids (metrics x presets, knobs x presets, presets x limits, axis values x metrics). On a
terminal a grid is drawn with rich in the first layout whose measured width fits the console, in this order:

1. as given, full values (``1,884,599``, ``2.876 GiB``);
2. as given, compact values (``1.88M``, ``2.88G``: three significant digits);
3. transposed (rows and columns swapped), full then compact values;
4. split into several tables of as many columns as fit, each repeating the row labels (full values, then
   compact);
5. a list per column, one ``row  value`` line each (a console too narrow for even one column of a table).

No cell is ever truncated or wrapped (columns are ``no_wrap``; a layout is used only if rich measures it within
the width), and every piece of text is a :class:`rich.text.Text`, so brackets in labels and titles are shown, never
parsed as markup. ``--format csv`` writes the raw numbers (bytes, counts, ns), ``markdown`` a pipe table of the full
values, ``json`` is the command's own document; none of those depend on the width.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from rich.console import Console, JustifyMethod
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from snpsim.units import format_compact, format_metric

FORMATS = ("table", "csv", "markdown", "json")


@dataclass(frozen=True)
class Grid:
    """A titled grid: ``cells[i][j]`` is the value of row ``rows[i]`` in column ``columns[j]``.

    ``full``/``compact`` turn ``(row, column, value)`` into text; ``raw`` into the CSV value."""

    title: str
    corner: str
    rows: list[str]
    columns: list[str]
    cells: list[list[Any]]
    full: Callable[[str, str, Any], str]
    compact: Callable[[str, str, Any], str] | None = None
    #: how the value columns are aligned: "right" for numbers, "left" for words
    justify: str = "right"

    def text(self, *, compact: bool) -> list[list[str]]:
        fmt = self.compact if compact and self.compact is not None else self.full
        return [
            [fmt(r, c, v) for c, v in zip(self.columns, row, strict=True)]
            for r, row in zip(self.rows, self.cells, strict=True)
        ]


def metric_grid(title: str, corner: str, rows: Sequence[str], columns: Sequence[str], cells: list[list[Any]]) -> Grid:
    """A grid whose rows are metric names (values formatted by :func:`snpsim.units.format_metric`)."""
    return Grid(
        title,
        corner,
        list(rows),
        list(columns),
        cells,
        lambda r, _c, v: _cell(format_metric, r, v),
        lambda r, _c, v: _cell(format_compact, r, v),
    )


def column_metric_grid(
    title: str, corner: str, rows: Sequence[str], columns: Sequence[str], cells: list[list[Any]]
) -> Grid:
    """A grid whose columns are metric names (rows are presets or axis values)."""
    return Grid(
        title,
        corner,
        list(rows),
        list(columns),
        cells,
        lambda _r, c, v: _cell(format_metric, c, v),
        lambda _r, c, v: _cell(format_compact, c, v),
    )


def _cell(fmt: Callable[[str, float], str], metric: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    return fmt(metric, value)


def _table(
    title: str, corner: str, columns: list[str], rows: list[str], cells: list[list[str]], justify: str = "right"
) -> Table:
    table = Table(title=Text(title) if title else None)
    table.add_column(Text(corner), no_wrap=True)
    for col in columns:
        table.add_column(Text(col), justify=cast(JustifyMethod, justify), no_wrap=True)
    for label, row in zip(rows, cells, strict=True):
        table.add_row(Text(label), *(Text(c) for c in row))
    return table


def _width(console: Console, table: Table) -> int:
    """The table's natural width (rich clamps a measurement to the options' width: measure without a limit)."""
    return Measurement.get(console, console.options.update_width(1 << 20), table).maximum


def _transpose(cells: list[list[str]]) -> list[list[str]]:
    return [list(col) for col in zip(*cells, strict=True)] if cells else []


def layouts(console: Console, grid: Grid) -> list[Table]:
    """The tables of the first layout that fits ``console.width`` (module docstring); [] for the line fallback."""
    width = console.width
    for compact in (False, True):
        cells = grid.text(compact=compact)
        table = _table(grid.title, grid.corner, grid.columns, grid.rows, cells, grid.justify)
        if _width(console, table) <= width:
            return [table]
    for compact in (False, True):
        cells = _transpose(grid.text(compact=compact))
        table = _table(grid.title, "", grid.rows, grid.columns, cells, grid.justify)
        if _width(console, table) <= width:
            return [table]
    for compact in (False, True):
        tables = _split(console, grid, grid.text(compact=compact), width)
        if tables:
            return tables
    return []


def _split(console: Console, grid: Grid, cells: list[list[str]], width: int) -> list[Table]:
    """Greedy chunks of columns, each table as wide as fits; [] if one column alone does not fit."""

    def table(title: str, a: int, b: int) -> Table:
        return _table(title, grid.corner, grid.columns[a:b], grid.rows, [row[a:b] for row in cells], grid.justify)

    chunks: list[tuple[int, int]] = []
    start, n = 0, len(grid.columns)
    while start < n:
        end = start
        while end < n and _width(console, table(grid.title, start, end + 1)) <= width:
            end += 1
        if end == start:
            return []
        chunks.append((start, end))
        start = end
    k = len(chunks)
    return [
        table(f"{grid.title} ({i}/{k})" if grid.title and k > 1 else grid.title, a, b)
        for i, (a, b) in enumerate(chunks, 1)
    ]


def print_grid(console: Console, grid: Grid) -> None:
    """Draw ``grid`` on ``console`` in the first layout that fits (module docstring)."""
    tables = layouts(console, grid)
    if tables:
        for table in tables:
            console.print(table)
        return
    if grid.title:
        console.print(Text(grid.title))  # wrapped at spaces
    for j, col in enumerate(grid.columns):  # too narrow for any table: each column as a list
        console.print(Text(f"{grid.corner} {col}:" if grid.corner else f"{col}:"), soft_wrap=True)
        for label, row in zip(grid.rows, grid.text(compact=False), strict=True):
            console.print(Text(f"  {label}  {row[j]}"), soft_wrap=True)


def to_csv(grid: Grid) -> str:
    """The grid as CSV: a header row (corner, columns), then one row per grid row with the raw values."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([grid.corner, *grid.columns])
    for label, row in zip(grid.rows, grid.cells, strict=True):
        writer.writerow([label, *(_raw(v) for v in row)])
    return buf.getvalue()


def _raw(value: Any) -> Any:
    """A CSV cell: empty for no value, whole floats (means) as integers."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def to_markdown(grid: Grid) -> str:
    """The grid as a Markdown pipe table of the full values, its title as a heading line."""

    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"**{esc(grid.title)}**", ""] if grid.title else []
    lines.append("| " + " | ".join(esc(c) for c in [grid.corner, *grid.columns]) + " |")
    align = "---:" if grid.justify == "right" else ":---"
    lines.append("|" + "|".join([":---", *(align for _ in grid.columns)]) + "|")
    for label, row in zip(grid.rows, grid.text(compact=False), strict=True):
        lines.append("| " + " | ".join(esc(c) for c in [label, *row]) + " |")
    return "\n".join(lines) + "\n"


def emit(console: Console, grid: Grid, fmt: str, write: Callable[[str], None]) -> None:
    """Show ``grid`` in ``fmt`` (``table``: on ``console``; ``csv``/``markdown``: text passed to ``write``)."""
    if fmt == "csv":
        write(to_csv(grid))
    elif fmt == "markdown":
        write(to_markdown(grid))
    else:
        print_grid(console, grid)
