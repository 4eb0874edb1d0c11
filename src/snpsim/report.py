"""The report: one self-contained, offline HTML page comparing the runs of a results folder.

Plots are rendered by matplotlib to SVG and inlined, so the page fetches nothing and opens anywhere. Sections:
direct-map composition over time per run (DirectMap4k/2M/1G as ``/proc/meminfo`` reports them), memory (private,
shared, waste) over time, faults and crashes, conversions, and a table of each run's knobs and final metrics.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt
import pandas as pd

from snpsim.metrics import METRICS
from snpsim.results import load
from snpsim.units import format_bytes

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
    if metric.endswith("_count") or metric == "sim_time_ns":
        return f"{int(value):,}"
    return format_bytes(int(value))


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
