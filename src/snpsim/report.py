"""The report: one self-contained, offline HTML page comparing the runs of a results folder, or a sweep.

Plots are rendered by matplotlib to SVG and inlined, so the page fetches nothing and opens anywhere. Sections:
direct-map composition over time per run (DirectMap4k/2M/1G as ``/proc/meminfo`` reports them), memory (private,
shared, waste) over time, faults and crashes, conversions, and a table of each run's knobs and final metrics.

A sweep's report (:func:`build_sweep`) plots key metrics against each numeric axis (vCPUs, sizes, durations), one
line per value of the categorical axes (presets, workloads), averaged over the other axes (band: min-max; ``seed``
is always averaged), and tables the failed points with their errors and every point with its metrics.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt
import pandas as pd

from snpsim.errors import ConfigError
from snpsim.metrics import METRICS
from snpsim.results import load
from snpsim.units import format_metric, parse_duration, parse_size

GIB = float(1 << 30)
_COLORS = {"directmap_4k": "#d62728", "directmap_2m": "#ff7f0e", "directmap_1g": "#2ca02c"}

plt.rcParams["svg.hashsalt"] = "snpsim"  # deterministic element ids: same results, same page


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _directmap_plot(timelines: dict[str, pd.DataFrame]) -> str:
    n = len(timelines)
    fig, axes = plt.subplots(1, n, figsize=(max(4.0, 3.2 * n), 3.0), sharey=True, squeeze=False)
    for ax, (label, tl) in zip(axes[0], timelines.items(), strict=True):
        t = tl["time_ns"] / 1e9
        ax.stackplot(
            t,
            *(tl[m] / GIB for m in _COLORS),
            labels=["4K", "2M", "1G"],
            colors=list(_COLORS.values()),
        )
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("time (s)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("direct map (GiB)", fontsize=8)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    return _svg(fig)


def _memory_plot(timelines: dict[str, pd.DataFrame]) -> str:
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.0), squeeze=False)
    for ax, metric in zip(axes[0], ("private_bytes", "shared_bytes", "waste_bytes"), strict=True):
        for label, tl in timelines.items():
            ax.plot(tl["time_ns"] / 1e9, tl[metric] / (1 << 20), label=label, linewidth=1.2)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("time (s)", fontsize=8)
        ax.set_ylabel("MiB", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    return _svg(fig)


def _bar_plot(docs: list[dict[str, Any]], metrics: tuple[str, ...], title: str) -> str:
    frame = pd.DataFrame({d["label"]: [d["summary"][m] for m in metrics] for d in docs}, index=list(metrics))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(docs) * len(metrics) / 2), 3.0))
    frame.T.plot.bar(ax=ax, rot=0, fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _svg(fig)


def _fmt(metric: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return html.escape(str(value))
    return format_metric(metric, value)


def _table(docs: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(d['label'])}</th>" for d in docs)
    rows = []
    for knob in docs[0]["policy"]:
        cells = "".join(f"<td>{html.escape(str(d['policy'].get(knob, '')).lower())}</td>" for d in docs)
        rows.append(f"<tr class='knob'><th>{knob}</th>{cells}</tr>")
    for metric in METRICS:
        cells = "".join(f"<td>{_fmt(metric, d['summary'].get(metric, ''))}</td>" for d in docs)
        rows.append(f"<tr><th>{metric}</th>{cells}</tr>")
    return f"<table id='metrics'><tr><th></th>{head}</tr>{''.join(rows)}</table>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child { text-align: left; } tr.knob td { text-align: center; background: #f4f4f8; }
.plot svg { max-width: 100%; height: auto; }
"""


def build(out: Path, dest: Path | None = None) -> Path:
    """Write ``report.html`` for the results folder ``out`` (or to ``dest``); returns its path."""
    docs, timelines = load(out)
    crashes = [(d["label"], c) for d in docs for c in d.get("crashes", [])]
    crash_rows = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{c['time_ns']:,}</td><td>{html.escape(c['path'])}</td>"
        f"<td>{html.escape(c['kind'])}</td><td>{c['pfn']:#x}</td></tr>"
        for label, c in crashes[:200]
    )
    title = next((d["scenario"].get("name") for d in docs if d["scenario"].get("name")), "") or "snpsim report"
    sections = [
        ("directmap", "Direct map over time", _directmap_plot(timelines)),
        ("memory", "Guest memory: private, shared, waste", _memory_plot(timelines)),
        (
            "faults",
            "Faults and crashes",
            _bar_plot(docs, ("host_rmp_fault_count", "host_crash_count", "guest_vc_count"), "faults (count)"),
        ),
        (
            "conversions",
            "Conversions",
            _bar_plot(docs, ("to_private_count", "to_shared_count", "psc_request_count"), "conversions (count)"),
        ),
    ]
    body = "".join(f"<h2>{h}</h2><div class='plot' id='{i}'>{svg}</div>" for i, h, svg in sections)
    crash_html = (
        f"<h2>Host crashes</h2><table id='crashes'><tr><th>run</th><th>time (ns)</th><th>kernel path</th>"
        f"<th>kind</th><th>pfn</th></tr>{crash_rows}</table>"
        if crashes
        else "<h2>Host crashes</h2><p id='crashes'>none</p>"
    )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}<h2>Knobs and final metrics</h2>{_table(docs)}{crash_html}"
        "</body></html>"
    )
    dest = dest or Path(out) / "report.html"
    dest.write_text(page)
    return dest


# -------------------------------------------------------------------------------------------------- sweeps

#: The metrics a sweep report plots against each axis.
SWEEP_METRICS = (
    "directmap_4k",
    "directmap_2m",
    "directmap_split_count",
    "waste_bytes",
    "host_crash_count",
    "guest_vc_count",
)
#: Rows of the sweep report's points table (the store holds them all).
MAX_TABLE_ROWS = 2000
_DURATIONS = ("duration", "start", "lifetime", "interval")
_MARKERS = ("o", "s", "^", "v", "D", "x", "+", "*")
_DASHES = ("-", "--", ":", "-.")
MIB = float(1 << 20)


def axis_scale(path: str, values: list[Any]) -> tuple[list[float], str] | None:
    """Positions of a numeric axis's values and its x label (sizes in MiB, durations in ms); None if
    categorical."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], path
    if not all(isinstance(v, str) for v in values):
        return None
    leaf = path.rsplit(".", 1)[-1]
    try:
        if leaf == "memory" or leaf.endswith("_bytes"):
            return [parse_size(v, path) / MIB for v in values], f"{path} (MiB)"
        if leaf in _DURATIONS or leaf.endswith("_ns"):
            return [parse_duration(v, path) / 1e6 for v in values], f"{path} (ms)"
    except ConfigError:
        return None
    return None


def _sweep_roles(axes: dict[str, list[Any]]) -> tuple[list[str], list[str]]:
    """(x axes: numeric, plotted against; line axes: categorical, one line per combination)."""
    from snpsim.sweeps import REPLICATE_AXIS

    numeric = [a for a, v in axes.items() if axis_scale(a, v) is not None]
    lines = [a for a in axes if a not in numeric]
    x_axes = [a for a in numeric if a != REPLICATE_AXIS] or ([] if lines else numeric)
    return x_axes, lines


def _group_label(lines: list[str], key: Any) -> str:
    values = key if isinstance(key, tuple) else (key,)
    if len(lines) == 1:
        return str(values[0])
    return ", ".join(f"{a}={v}" for a, v in zip(lines, values, strict=True))


def _metric_title(metric: str) -> str:
    return metric if metric.endswith("_count") else f"{metric} (MiB)"


def _metric_values(frame: pd.DataFrame, metric: str) -> pd.Series:
    values = frame[metric].astype(float)
    return values if metric.endswith("_count") else values / MIB


def sweep_axis_figure(axes: dict[str, list[Any]], frame: pd.DataFrame, x_axis: str) -> Any:
    """The key metrics against the numeric axis ``x_axis``: one line per categorical combination, averaged over
    the other axes (band: min-max)."""
    from snpsim.sweeps import axis_value

    scale = axis_scale(x_axis, axes[x_axis])
    assert scale is not None
    positions, xlabel = scale
    where = {axis_value(v): x for v, x in zip(axes[x_axis], positions, strict=True)}
    _, lines = _sweep_roles(axes)
    averaged = [a for a in axes if a != x_axis and a not in lines]
    ok = frame[frame["status"] == "ok"]
    groups = list(ok.groupby(lines, sort=False)) if lines else [((), ok)]
    log = min(positions) > 0 and max(positions) / min(positions) >= 16
    fig, grid = plt.subplots(2, 3, figsize=(11, 5.8), squeeze=False)
    for ax, metric in zip(grid.flat, SWEEP_METRICS, strict=True):
        for k, (key, group) in enumerate(groups):
            stats = _metric_values(group, metric).groupby(group[x_axis].map(where)).agg(["mean", "min", "max"])
            stats = stats.sort_index()
            # equal lines (presets that agree) stay visible: distinct markers and dash patterns
            style = {"marker": _MARKERS[k % len(_MARKERS)], "linestyle": _DASHES[k // 2 % len(_DASHES)]}
            line = ax.plot(stats.index, stats["mean"], markersize=4, linewidth=1.2, fillstyle="none", **style)
            if lines:
                line[0].set_label(_group_label(lines, key))
            if averaged and len(group) > len(stats):
                ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.15, color=line[0].get_color())
        if log:
            ax.set_xscale("log", base=2)
        ax.set_xticks(positions, [str(v) for v in axes[x_axis]])
        ax.minorticks_off()
        ax.set_title(_metric_title(metric), fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
    if lines:
        handles, labels = grid[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="outside right center", title=", ".join(lines), title_fontsize=7)
    note = f"mean over {', '.join(averaged)} (band: min-max)" if averaged else "one point per value"
    fig.suptitle(f"vs {x_axis}: {note}", fontsize=9)
    fig.set_layout_engine("constrained")
    return fig


def sweep_bar_figure(axes: dict[str, list[Any]], frame: pd.DataFrame) -> Any:
    """The key metrics per categorical combination (a sweep without numeric axes), averaged over the others."""
    _, lines = _sweep_roles(axes)
    ok = frame[frame["status"] == "ok"]
    groups = list(ok.groupby(lines, sort=False))
    names = [_group_label(lines, key) for key, _ in groups]
    fig, grid = plt.subplots(2, 3, figsize=(11, 6.0), squeeze=False)
    for ax, metric in zip(grid.flat, SWEEP_METRICS, strict=True):
        stats = [_metric_values(g, metric) for _, g in groups]
        means = [s.mean() for s in stats]
        spans = [
            [m - s.min() for m, s in zip(means, stats, strict=True)],
            [s.max() - m for m, s in zip(means, stats, strict=True)],
        ]
        ax.bar(range(len(names)), means, yerr=spans, capsize=2, color="#1f77b4")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_title(_metric_title(metric), fontsize=9)
        ax.tick_params(labelsize=7)
    fig.set_layout_engine("constrained")
    return fig


def sweep_figures(definition: dict[str, Any], frame: pd.DataFrame) -> list[tuple[str, str, Any]]:
    """(element id, heading, figure) of every plot of a sweep report."""
    axes: dict[str, list[Any]] = dict(definition["axes"])
    if not (frame["status"] == "ok").any():
        return []
    x_axes, _ = _sweep_roles(axes)
    if x_axes:
        return [(f"axis-{i}", f"Metrics vs {x}", sweep_axis_figure(axes, frame, x)) for i, x in enumerate(x_axes)]
    return [("axis-0", "Metrics per point", sweep_bar_figure(axes, frame))]


def _sweep_tables(axes: list[str], frame: pd.DataFrame) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(a)}</th>" for a in axes)
    failed = frame[frame["status"] != "ok"]
    fail_rows = "".join(
        f"<tr><td>{esc(r['hash'])}</td>{''.join(f'<td>{esc(str(r[a]))}</td>' for a in axes)}"
        f"<td class='error'>{esc(str(r['error']))}</td></tr>"
        for r in failed.head(MAX_TABLE_ROWS).to_dict("records")
    )
    fail_html = (
        f"<table id='failed'><tr><th>hash</th>{head}<th>error</th></tr>{fail_rows}</table>"
        if len(failed)
        else "<p id='failed'>none</p>"
    )
    metric_head = "".join(f"<th>{m}</th>" for m in METRICS)
    rows = []
    for r in frame.head(MAX_TABLE_ROWS).to_dict("records"):
        cells = "".join(f"<td>{'' if pd.isna(r[m]) else _fmt(m, int(r[m]))}</td>" for m in METRICS)
        rows.append(
            f"<tr class='{esc(r['status'])}'><td>{esc(r['hash'])}</td><td>{esc(r['status'])}</td>"
            f"{''.join(f'<td>{esc(str(r[a]))}</td>' for a in axes)}{cells}</tr>"
        )
    more = (
        f"<p>first {MAX_TABLE_ROWS} of {len(frame)} points; all of them are in sweep.duckdb</p>"
        if len(frame) > MAX_TABLE_ROWS
        else ""
    )
    return (
        f"<h2>Failed points</h2>{fail_html}<h2>Points</h2>{more}<div class='wide'><table id='points'><tr><th>hash</th>"
        f"<th>status</th>{head}{metric_head}</tr>{''.join(rows)}</table></div>"
    )


def build_sweep(out: Path, dest: Path | None = None) -> Path:
    """Write ``report.html`` for the sweep results folder ``out`` (or to ``dest``); returns its path."""
    from snpsim.sweeps import read

    definition, frame = read(out)
    axes: dict[str, list[Any]] = dict(definition["axes"])
    title = definition.get("name") or "snpsim sweep"
    ok = int((frame["status"] == "ok").sum())
    grid = " x ".join(f"{html.escape(a)} ({len(v)})" for a, v in axes.items())
    plots = "".join(
        f"<h2>{html.escape(h)}</h2><div class='plot' id='{i}'>{_svg(fig)}</div>"
        for i, h, fig in sweep_figures(definition, frame)
    )
    base = html.escape(json.dumps(definition.get("base", {}), indent=1, sort_keys=True))
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}{_SWEEP_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p id='summary'>{len(frame)} points stored ({ok} ok, {len(frame) - ok} "
        f"failed) of the grid {grid}.</p>{plots or '<p>no successful point to plot</p>'}"
        f"{_sweep_tables(list(axes), frame)}"
        f"<details><summary>Base scenario</summary><pre>{base}</pre></details>"
        "</body></html>"
    )
    dest = dest or Path(out) / "report.html"
    dest.write_text(page)
    return dest


_SWEEP_CSS = """
td.error { text-align: left; color: #a00; } tr.failed td { background: #fbeaea; }
pre { font-size: 0.8em; background: #f4f4f8; padding: 0.6em; } .wide { overflow-x: auto; }
"""
