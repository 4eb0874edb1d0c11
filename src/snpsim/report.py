"""The report: one self-contained, offline HTML page comparing the runs of a results folder, or a sweep.

Plots are rendered by matplotlib to SVG (lines, bars) or PNG (the memory pictures) and inlined, so the page
fetches nothing and opens anywhere. A run report (:func:`build`) has:

- a header: the scenario (host memory and layout, page cache, kernel writers, guests, VM churn, duration, seed;
  from the resolved scenario :mod:`snpsim.hostmaps` saves, else from ``summary.json``), the VMs that ran, the
  snpsim version and the date the results were written;
- a table of the outcomes that differ most between presets (crashes, #VC, direct map, waste, boot time);
- time series with the time axis in ms, s, min, h or d as the run's span suggests (:func:`time_unit`): the direct
  map (``/proc/meminfo`` DirectMap4k/2M/1G) and the NPT levels as small multiples, one panel per preset, and guest
  memory, RMP/NPT activity and faults as lines with distinct colours, markers and dashes. Presets whose series are
  equal share one panel or one line, labelled ``bulk = upstream``; counts spanning 1.5 decades or more get a
  (symmetric) log axis;
- final counts, one small panel per metric with every value written on its bar (log axis as above); counts equal
  or zero under every preset listed in a line;
- boot time (``boot_time_ns`` and the VMs' own boot times, when the results carry them);
- the host's physical memory, 2M block by 2M block (:mod:`snpsim.host.blockmap`): who holds each block and how the
  direct map maps it, after boot, mid-run and at the end, per preset;
- host crashes grouped by kernel path, kind (and ``context``, when the records carry one) with counts; every
  group is shown;
- every knob and final metric (rows equal across presets greyed).

A sweep's report (:func:`build_sweep`) plots key metrics against each numeric axis (vCPUs, sizes, durations), one
line per value of the categorical axes (presets, workloads), averaged over the other axes (band: min-max; ``seed``
is always averaged; count metrics spanning decades on a log axis; lines that coincide named in the panel), and
tables the failed points with their errors and every point with its metrics, saying how many rows are not shown.
How to read the page: ``docs/report.md``.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import textwrap
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("svg")
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import matplotlib.transforms as mtransforms
import numpy as np
import numpy.typing as npt
import pandas as pd

import snpsim
from snpsim.errors import ConfigError
from snpsim.host import blockmap
from snpsim.hostmaps import SavedHostMaps, load_hostmaps
from snpsim.metrics import METRICS
from snpsim.results import SUMMARY, load
from snpsim.units import format_bytes, format_metric, parse_duration, parse_size

K = TypeVar("K", bound=Hashable)
GIB = float(1 << 30)
MIB = float(1 << 20)
_DM_COLORS = {"4k": "#d62728", "2m": "#ff7f0e", "1g": "#2ca02c"}
_LINE_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
_MARKERS = ("o", "s", "^", "v", "D", "x", "+", "*", "P", "h")
_DASHES = ("-", "--", ":", "-.")

plt.rcParams["svg.hashsalt"] = "snpsim"  # deterministic element ids: same results, same page
plt.rcParams["svg.fonttype"] = "none"  # text stays text: smaller pages, searchable and selectable labels
plt.rcParams["axes.spines.top"] = False
plt.rcParams["axes.spines.right"] = False


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    with warnings.catch_warnings():  # many small panels: the layout engine gives up on some, the figure is fine
        warnings.filterwarnings("ignore", message="constrained_layout not applied")
        fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


# -------------------------------------------------------------------------------------------------- helpers

#: Time units of the axes: the largest unit of which the span holds at least two.
TIME_UNITS: tuple[tuple[str, int], ...] = (
    ("d", 86_400 * 10**9),
    ("h", 3_600 * 10**9),
    ("min", 60 * 10**9),
    ("s", 10**9),
    ("ms", 10**6),
    ("µs", 10**3),
    ("ns", 1),
)


def time_unit(span_ns: float) -> tuple[str, int]:
    """(name, ns per unit) for an axis spanning ``span_ns``: 24 h -> hours, 90 s -> seconds, 1.1 s -> ms."""
    for name, ns in TIME_UNITS:
        if span_ns >= 2 * ns:
            return name, ns
    return TIME_UNITS[-1]


def format_time(ns: float) -> str:
    """A moment as people say it: ``30 min``, ``12 h``, ``1.5 s``, ``250 ms``."""
    for name, mult in TIME_UNITS:
        if abs(ns) >= mult:
            return f"{ns / mult:.3g} {name}"
    return "0 s"


def identical_groups(series: Mapping[K, Any]) -> list[list[K]]:
    """Keys grouped by equal series (arrays, frames or values), in order of first appearance."""
    groups: dict[bytes, list[K]] = {}
    for label, values in series.items():
        arr = np.ascontiguousarray(np.asarray(values, dtype=np.float64))
        groups.setdefault(arr.tobytes() + str(arr.shape).encode(), []).append(label)
    return list(groups.values())


def group_label(labels: Sequence[str]) -> str:
    return " = ".join(labels)


def spans_decades(values: Iterable[float], decades: float = 1.5) -> bool:
    """Whether the positive values span at least ``decades`` powers of ten (then a log axis shows them all)."""
    pos = [float(v) for v in values if v > 0]
    return len(pos) > 0 and max(pos) / min(pos) >= 10**decades


def _byte_unit(peak: float) -> tuple[str, float]:
    for name, mult in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024.0)):
        if peak >= 2 * mult:
            return name, mult
    return "B", 1.0


def _fmt(metric: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return html.escape(str(value))
    if metric.endswith("_ns") and metric != "sim_time_ns":
        return format_time(value)
    return format_metric(metric, value)


def _final_value(doc: dict[str, Any], metric: str) -> float | None:
    value = doc["summary"].get(metric)
    return None if value is None or isinstance(value, bool) else float(value)


def _style(k: int) -> dict[str, Any]:
    """Line style number ``k``: colour, marker and dash all change, so equal-looking lines stay apart."""
    return {
        "color": _LINE_COLORS[k % len(_LINE_COLORS)],
        "marker": _MARKERS[k % len(_MARKERS)],
        "linestyle": _DASHES[k % len(_DASHES)],
    }


def _compact(x: float, _pos: Any = None) -> str:
    """Axis numbers without an offset: 1500000 -> 1.5M, 20000 -> 20k."""
    for suffix, mult in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= mult:
            return f"{x / mult:g}{suffix}"
    return f"{x:g}"


def _formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(_compact)


def _time_axis(ax: Any, unit: str, span: float) -> None:
    """Label the time axis, from 0 to the end of the run; hours and minutes tick at multiples of 3 or 6."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(f"time ({unit})", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_xlim(0, span or 1)
    if unit in ("h", "min"):
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 3, 6, 10]))


def _count_axis(ax: Any, values: Iterable[float]) -> bool:
    """A symmetric log y axis (zero stays drawable) if the counts span decades; returns whether it did."""
    if spans_decades(values):
        ax.set_yscale("symlog", linthresh=1, linscale=0.4)
        return True
    return False


# -------------------------------------------------------------------------------------------------- header


def _size(value: Any) -> str:
    return format_bytes(int(value)) if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


def _param(key: str, value: Any) -> tuple[str, str]:
    """A parameter as people read it: ``interval_ns`` 60e9 -> (``interval``, ``1 min``), 8192 -> ``8,192``."""
    if key.endswith("_ns") and isinstance(value, int | float) and not isinstance(value, bool):
        return key[:-3], format_time(value)
    if key.endswith("_bytes") and isinstance(value, int) and not isinstance(value, bool):
        return key[:-6], format_bytes(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return key, f"{value:,}"
    return key, str(value)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(" ".join(_param(k, v)) for k, v in sorted(params.items()))


def _workload(name: str, params: dict[str, Any]) -> str:
    return f"{name} ({_params(params)})" if params else name


def _choices(values: Sequence[Any], fmt: Any) -> str:
    shown = [fmt(v) for v in values]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + f" or {shown[-1]}"


def _writer(name: str, params: dict[str, Any]) -> str:
    named = dict(_param(k, v) for k, v in params.items())
    every = f" every {named.pop('interval')}" if "interval" in named else ""
    rest = ", ".join(f"{k} {v}" for k, v in sorted(named.items()))
    return f"{name}{every}" + (f" ({rest})" if rest else "")


def _guest(vm: dict[str, Any]) -> str:
    count = int(vm.get("count", 1))
    vcpus = vm.get("vcpus", "?")
    text = f"{count} × {_size(vm['memory'])}, {vcpus} vCPU{'' if vcpus == 1 else 's'}, "
    text += _workload(str(vm.get("workload", "?")), vm.get("params") or {})
    start, life = vm.get("start_ns") or 0, vm.get("lifetime_ns")
    when = f"from {format_time(start)}" if start else "from the start"
    return text + f", {when}, " + (f"living {format_time(life)}" if life else "for the whole run")


_HOST_KEYS = {
    "host_memory",
    "page_cache",
    "directmap_max_level",
    "zero_on_alloc",
    "layout",
    "host_layout",
    "pci_hole",
    "rmp_base",
    "transparent_hugepage",
    "hugepages",
    "aging",
}
_SHOWN_KEYS = _HOST_KEYS | {"name", "writers", "vms", "churn", "duration_ns", "samples", "seed", "policy", "costs"}
_LEVEL_NAMES = {0: "4K", 1: "2M", 2: "1G"}


def scenario_rows(scenario: dict[str, Any], *, default_costs: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(field, text) rows describing a scenario (the resolved form of :func:`snpsim.hostmaps.scenario_doc`, or the
    shorter one of ``summary.json``); fields it does not know are listed as they are."""
    rows: list[tuple[str, str]] = []
    host = [_size(scenario["host_memory"]) + " RAM"] if "host_memory" in scenario else []
    if scenario.get("layout"):
        host.append(f"layout {scenario['layout']}")
    if "page_cache" in scenario:
        host.append(f"{float(scenario['page_cache']):.0%} page cache when the VMs start")
    if "directmap_max_level" in scenario:
        level = scenario["directmap_max_level"]
        host.append(f"direct map up to {_LEVEL_NAMES.get(level, level)}")
    if "zero_on_alloc" in scenario:
        host.append("pages zeroed on allocation" if scenario["zero_on_alloc"] else "pages not zeroed on allocation")
    layout = scenario.get("host_layout")
    if layout:
        hole = scenario.get("pci_hole")
        text = f"{layout} e820 layout"
        if hole and layout != "flat":
            text += f" (PCI hole from {_size(hole)} to 4 GiB)"
        host.append(text + (f", RMP table at {_size(scenario['rmp_base'])}" if scenario.get("rmp_base") else ""))
    if scenario.get("transparent_hugepage"):
        host.append(f"THP {scenario['transparent_hugepage']}")
    if "hugepages" in scenario:
        pools = scenario["hugepages"] or {}
        host.append(
            "hugetlb pool " + ", ".join(f"{n:,} x {_size(4096 << int(order))}" for order, n in sorted(pools.items()))
            if pools
            else "no boot-time hugetlb pool"
        )
    if host:
        rows.append(("host", ", ".join(host)))
    aging = scenario.get("aging")
    if isinstance(aging, dict):
        rows.append(("host aging", _aging(aging)))
    if "writers" in scenario:
        writers = scenario["writers"] or {}
        rows.append(("kernel writers", "; ".join(_writer(n, p) for n, p in sorted(writers.items())) or "none"))
    if scenario.get("vms"):
        rows.append(("guests", "; ".join(_guest(vm) for vm in scenario["vms"])))
    churn = scenario.get("churn")
    if churn:
        rows.append(
            (
                "VM churn",
                f"a VM every {format_time(churn['interval_ns'])} on average (exponential), living "
                f"{format_time(churn['lifetime_ns'])} on average, {_choices(churn['memory'], _size)}, "
                f"{_choices(churn['vcpus'], str)} vCPUs, {_workload(churn['workload'], churn.get('params') or {})}, "
                f"at most {churn['max_vms']} at a time",
            )
        )
    elif "churn" in scenario:
        rows.append(("VM churn", "none"))
    run = []
    if "duration_ns" in scenario:
        run.append(format_time(scenario["duration_ns"]))
    if "samples" in scenario:
        run.append(f"{scenario['samples']} samples")
    if "seed" in scenario:
        run.append(f"seed {scenario['seed']}")
    if run:
        rows.append(("run", ", ".join(run)))
    costs = scenario.get("costs") or {}
    defaults = default_costs or {}
    changed = {k: v for k, v in costs.items() if default_costs is not None and defaults.get(k) != v}
    if changed:
        shown = (f"{k} {v:,} (default {defaults.get(k, 0):,})" for k, v in sorted(changed.items()))
        rows.append(("costs (changed)", ", ".join(shown)))
    rows += [(k, json.dumps(v)) for k, v in sorted(scenario.items()) if k not in _SHOWN_KEYS]
    return rows


def _aging(aging: dict[str, Any]) -> str:
    """``[host.aging]`` (``snpsim.host.aging.AgingSpec``) in words."""
    mode = aging.get("mode", "churn")
    if mode != "churn":
        return str(mode)
    parts = [f"churn for {format_time(aging.get('uptime_ns', 0))} of uptime"]
    if "epoch_ns" in aging:
        parts.append(f"epochs of {format_time(aging['epoch_ns'])}")
    if "peak" in aging:
        parts.append(f"peak use {float(aging['peak']):.0%}")
    rates = [(k, aging[k]) for k in ("turnover", "kernel_turnover") if k in aging]
    parts += [f"{k.replace('_', ' ')} {float(v):.1%}/h" for k, v in rates]
    shares = [(k, aging[k]) for k in ("unmovable", "reclaimable") if k in aging]
    parts += [f"{k} {float(v):.1%} of RAM" for k, v in shares]
    return ", ".join(parts)


def _default_costs() -> dict[str, Any]:
    import dataclasses

    from snpsim.hw.costs import CostModel

    return dataclasses.asdict(CostModel())


def _vms_run(docs: list[dict[str, Any]]) -> str:
    """The VMs each run created, and how many the host could not back (OOM-killed)."""
    texts = {}
    for d in docs:
        vms = d.get("vms", [])
        oom = sum(1 for v in vms if v.get("oom"))
        texts[d["label"]] = f"{len(vms)}" + (f" ({oom} killed: the host could not back them)" if oom else "")
    groups: dict[str, list[str]] = {}
    for label, text in texts.items():
        groups.setdefault(text, []).append(label)
    if len(groups) == 1:
        return f"{next(iter(groups))} under every preset"
    return "; ".join(f"{text} under {', '.join(labels)}" for text, labels in groups.items())


def _results_date(out: Path, pattern: str = f"*/{SUMMARY}") -> str:
    """When the results were written (the newest file matching ``pattern``), in UTC: the same folder gives the
    same page."""
    times = [p.stat().st_mtime for p in Path(out).glob(pattern)] or [Path(out).stat().st_mtime]
    return dt.datetime.fromtimestamp(max(times), tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _header(title: str, rows: list[tuple[str, str]], meta: str) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return (
        f"<header><h1>{html.escape(title)}</h1><p class='meta'>{meta}</p><table id='scenario'>{cells}</table></header>"
    )


# -------------------------------------------------------------------------------------------------- time series


def _span(timelines: dict[str, pd.DataFrame]) -> float:
    return max((float(tl["time_ns"].max()) for tl in timelines.values() if len(tl)), default=0.0)


def _grid(n: int, ncols: int) -> tuple[int, int]:
    cols = max(1, min(ncols, n))
    return -(-n // cols), cols


def stacked_multiples(timelines: dict[str, pd.DataFrame], metrics: dict[str, str], ylabel: str, title: str) -> str:
    """One stacked-area panel per group of presets with equal ``metrics`` series (``metric -> legend name``),
    a shared y axis and one legend."""
    groups = identical_groups({label: tl[list(metrics)] for label, tl in timelines.items()})
    span = _span(timelines)
    unit, ns = time_unit(span)
    peak = max(float(tl[list(metrics)].sum(axis=1).max()) for tl in timelines.values())
    bunit, bmult = _byte_unit(peak)
    nrows, ncols = _grid(len(groups), 4)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.9 * ncols, 2.2 * nrows + 0.5), sharey=True, squeeze=False)
    colors = list(_DM_COLORS.values())
    for ax, members in zip(axes.flat, groups, strict=False):
        tl = timelines[members[0]]
        ax.stackplot(
            tl["time_ns"] / ns, *(tl[m] / bmult for m in metrics), labels=list(metrics.values()), colors=colors
        )
        ax.set_title(group_label(members), fontsize=8, wrap=True)
        _time_axis(ax, unit, span / ns)
    for ax in axes.flat[len(groups) :]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel(f"{ylabel} ({bunit})", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], loc="outside upper right", ncols=3, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    fig.set_layout_engine("constrained")
    return _svg(fig)


#: The legends under the line panels: characters per line, inches per legend line, and the drop from the
#: panel's bottom edge to the legend's top (below the tick labels and the axis label).
_LEGEND_WIDTH = 58
_LEGEND_LINE_IN = 0.13
_LEGEND_DROP_IN = 0.42


def line_panels(
    timelines: dict[str, pd.DataFrame], metrics: Sequence[str], *, ncols: int = 3, counts: bool = False
) -> str:
    """One panel per metric, one line per group of presets with that metric's series equal; byte metrics in a
    common unit, counts on a log axis if they span decades.

    Each panel has its own legend (the grouping differs between metrics), under the panel at a fixed distance
    from it, its labels wrapped to the panel's width: a group of nine presets is a long label, and inside the
    panel it hid the lines and squeezed the panels to slivers."""
    span = _span(timelines)
    unit, ns = time_unit(span)
    nrows, ncols = _grid(len(metrics), ncols)
    grouped = [identical_groups({label: tl[metric] for label, tl in timelines.items()}) for metric in metrics]
    wrapped = [[textwrap.fill(group_label(m), _LEGEND_WIDTH) for m in groups] for groups in grouped]
    lines = [sum(label.count("\n") + 1 for label in labels) for labels in wrapped]
    rows = [max(lines[r * ncols : (r + 1) * ncols]) for r in range(nrows)]
    height = sum(2.6 + _LEGEND_LINE_IN * n for n in rows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.9 * ncols, height), squeeze=False)
    below = mtransforms.ScaledTranslation(0, -_LEGEND_DROP_IN, fig.dpi_scale_trans)
    order = {label: k for k, label in enumerate(timelines)}
    for ax, metric, groups, labels in zip(axes.flat, metrics, grouped, wrapped, strict=False):
        values = [float(v) for tl in timelines.values() for v in tl[metric]]
        bunit, bmult = ("", 1.0) if counts else _byte_unit(max(values, default=0.0))
        for members, label in zip(groups, labels, strict=True):
            tl = timelines[members[0]]
            ax.plot(
                tl["time_ns"] / ns,
                tl[metric] / bmult,
                label=label,
                linewidth=1.2,
                markersize=4,
                fillstyle="none",
                markevery=max(1, len(tl) // 12),
                **_style(order[members[0]]),
            )
        log = counts and _count_axis(ax, values)
        if counts and not log:
            ax.yaxis.set_major_formatter(_formatter())
        ax.set_title(f"{metric}" + (" (log)" if log else "") + (f" ({bunit})" if bunit else ""), fontsize=9)
        _time_axis(ax, unit, span / ns)
        ax.legend(
            fontsize=6.5,
            frameon=False,
            loc="upper left",
            bbox_to_anchor=(0, 0),
            bbox_transform=ax.transAxes + below,
            borderaxespad=0,
        )
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    fig.set_layout_engine("constrained")
    return _svg(fig)


# -------------------------------------------------------------------------------------------------- final counts


def final_counts(docs: list[dict[str, Any]], metrics: Sequence[str], ncols: int = 4) -> str:
    """One small horizontal bar panel per metric, one bar per preset, the value written on each bar; a log x
    axis when the values span decades (zero bars are written "0" at the axis). The panels share the preset
    axis: its labels are written once per row, in the first column."""
    labels = [d["label"] for d in docs]
    nrows, ncols = _grid(len(metrics), ncols)
    height = 0.24 * len(labels) + 0.7
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.9 * ncols, height * nrows), sharey=True, squeeze=False)
    y = np.arange(len(labels))
    axes[0, 0].set_yticks(y, labels)
    axes[0, 0].invert_yaxis()  # once: the panels share this axis
    for ax, metric in zip(axes.flat, metrics, strict=False):
        values = [_final_value(d, metric) or 0.0 for d in docs]
        log = spans_decades(values)
        colors = [_LINE_COLORS[k % len(_LINE_COLORS)] for k in range(len(labels))]
        ax.barh(y, values, color=colors, height=0.7)
        top = max(values, default=0.0)
        if log:
            ax.set_xscale("log")
            ax.set_xlim(0.8, top * 40)
        else:
            ax.set_xlim(0, (top or 1) * 1.45)
            ax.xaxis.set_major_formatter(_formatter())
        for k, v in enumerate(values):
            ax.text(0.85 if log and v <= 0 else v, k, f" {v:,.0f}", va="center", fontsize=6.5)
        ax.set_title(metric + (" (log)" if log else ""), fontsize=8)
        ax.tick_params(axis="x", labelsize=6.5)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    fig.set_layout_engine("constrained")
    return _svg(fig)


# -------------------------------------------------------------------------------------------------- boot time


def _vm_boot_key(vms: list[dict[str, Any]]) -> str | None:
    """The per-VM boot time field (``VmRecord.boot_ns``: None for a VM that had not booted)."""
    for key in ("boot_ns", "boot_time_ns"):
        if any(isinstance(v.get(key), int | float) for v in vms):
            return key
    return None


def boot_section(docs: list[dict[str, Any]]) -> str:
    """Boot time per preset (``boot_time_ns``) and of every VM against its start time, when recorded; a short
    note otherwise."""
    # boot_time_ns is 0 until the first VM has booted
    has_metric = any(isinstance(b := d["summary"].get("boot_time_ns"), int | float) and b > 0 for d in docs)
    per_vm = {d["label"]: d.get("vms", []) for d in docs}
    key = next((k for k in (_vm_boot_key(v) for v in per_vm.values()) if k), None)
    if not has_metric and key is None:
        return "<p class='note' id='boot'>These results carry no boot time (boot_time_ns).</p>"
    panels = int(has_metric) + int(key is not None)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 0.28 * len(docs) + 1.6), squeeze=False)
    ax_iter = iter(axes.flat)
    if has_metric:
        ax = next(ax_iter)
        values = [float(d["summary"].get("boot_time_ns") or 0) for d in docs]
        unit, ns = time_unit(max(values, default=0.0))
        y = np.arange(len(docs))
        ax.barh(y, [v / ns for v in values], color=[_LINE_COLORS[k % 9] for k in range(len(docs))], height=0.7)
        for k, v in enumerate(values):
            ax.text(v / ns, k, f" {format_time(v)}", va="center", fontsize=7)
        ax.set_yticks(y, [d["label"] for d in docs], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, max(values, default=1) / ns * 1.35 or 1)
        ax.set_xlabel(f"first VM's boot ({unit})", fontsize=8)
        ax.set_title("boot_time_ns", fontsize=9)
    if key is not None:
        ax = next(ax_iter)
        allv = [v for vms in per_vm.values() for v in vms if isinstance(v.get(key), int | float)]
        tunit, tns = time_unit(max((float(v.get("start_ns") or 0) for v in allv), default=0.0))
        bunit, bns = time_unit(max((float(v[key]) for v in allv), default=0.0))
        groups = identical_groups(
            {label: [(v.get("start_ns") or 0, v.get(key) or 0) for v in vms] for label, vms in per_vm.items()}
        )
        order = {label: k for k, label in enumerate(per_vm)}
        for members in groups:
            pts = [v for v in per_vm[members[0]] if isinstance(v.get(key), int | float)]
            style = _style(order[members[0]])
            ax.plot(
                [(v.get("start_ns") or 0) / tns for v in pts],
                [v[key] / bns for v in pts],
                linestyle="none",
                marker=style["marker"],
                color=style["color"],
                fillstyle="none",
                label=group_label(members),
            )
        if spans_decades([v[key] for v in allv], 1.5):
            ax.set_yscale("log")
        ax.set_xlabel(f"VM start ({tunit})", fontsize=8)
        ax.set_ylabel(f"boot time ({bunit})", fontsize=8)
        ax.set_title("every VM's boot", fontsize=9)
        ax.legend(fontsize=6.5, frameon=False)
    for ax in axes.flat:
        ax.tick_params(labelsize=7)
    fig.set_layout_engine("constrained")
    return f"<div class='plot' id='boot'>{_svg(fig)}</div>"


# -------------------------------------------------------------------------------------------------- memory picture

#: Colours of the block states (:data:`snpsim.host.blockmap.STATES`) and direct-map levels (``LEVELS``).
STATE_COLORS = ("#3a3a3a", "#f4f4f4", "#8c510a", "#92c5de", "#1b9e77", "#f1a340", "#6a3d9a")
LEVEL_COLORS = ("#1a1a1a", "#d62728", "#f7a6a6", "#ff7f0e", "#2ca02c")
#: Blocks per picture row and pixels per block side (small hosts: a 2M block per cell).
PICTURE_COLUMNS = 64
PICTURE_MAX_ROWS = 64
CELL_PX = 3


def _rgb(colors: Sequence[str]) -> npt.NDArray[np.float64]:
    return np.array([[int(c[i : i + 2], 16) / 255 for i in (1, 3, 5)] for c in colors])


def coarsen(hostmap: blockmap.HostMap, factor: int) -> blockmap.HostMap:
    """Cells of ``factor`` consecutive blocks: the state and level most of them have (ties: the lower code),
    their used, assigned and RAM frames summed (so a cell is mixed if its blocks hold assigned and unassigned
    frames); the identity for factor 1."""
    if factor == 1:
        return hostmap
    n = hostmap.state.size
    pad = -n % factor

    def cells(a: npt.NDArray[Any], fill: int) -> npt.NDArray[Any]:
        return np.concatenate([a, np.full(pad, fill, dtype=a.dtype)]).reshape(-1, factor)

    def mode(a: npt.NDArray[np.uint8], ncodes: int, fill: int) -> npt.NDArray[np.uint8]:
        c = cells(a, fill)
        counts = np.stack([(c == k).sum(axis=1) for k in range(ncodes)], axis=1)
        return np.argmax(counts, axis=1).astype(np.uint8)

    used, assigned, ram = (
        cells(a.astype(np.uint32), 0).sum(axis=1) for a in (hostmap.used, hostmap.assigned, hostmap.ram)
    )
    state = mode(hostmap.state, len(blockmap.STATES), blockmap.NOT_RAM)
    used_state = mode(np.where(hostmap.state > blockmap.FREE, hostmap.state, 255).astype(np.uint8), 256, 255)
    state = np.where((used > 0) & (used_state < 255), used_state, state).astype(np.uint8)
    return blockmap.HostMap(
        hostmap.time_ns,
        state,
        mode(hostmap.level, len(blockmap.LEVELS), 0),
        used,
        assigned,
        ram,  # type: ignore[arg-type]
    )


def picture_geometry(nblocks: int) -> tuple[int, int, int]:
    """(blocks per cell, cells per row, rows): 64 cells a row, at most 64 rows, a power-of-two number of 2M
    blocks per cell (1 up to 8 GiB of host memory)."""
    factor = 1
    while -(-nblocks // (factor * PICTURE_COLUMNS)) > PICTURE_MAX_ROWS:
        factor *= 2
    cols = min(PICTURE_COLUMNS, -(-nblocks // factor))
    return factor, cols, -(-nblocks // (factor * cols))


def state_image(hostmap: blockmap.HostMap, cols: int) -> npt.NDArray[np.float64]:
    """RGB image of the block states: paler for emptier blocks, a dark (or light) centre pixel on mixed
    blocks."""
    rgb = _rgb(STATE_COLORS)[hostmap.state]
    ram = np.maximum(hostmap.ram.astype(np.float64), 1)
    fill = np.clip(hostmap.used / ram, 0, 1)
    alpha = np.where(hostmap.state > blockmap.FREE, 0.3 + 0.7 * fill, 1.0)[:, None]
    rgb = 1 - alpha * (1 - rgb)
    mark = (hostmap.assigned > 0) & (hostmap.assigned < hostmap.ram)
    dark = rgb.mean(axis=1) < 0.45
    dot = np.where(dark[:, None], 1.0, 0.0) * np.ones(3)
    return _cells(rgb, cols, dot, mark)


def level_image(hostmap: blockmap.HostMap, cols: int) -> npt.NDArray[np.float64]:
    rgb = _rgb(LEVEL_COLORS)[hostmap.level]
    return _cells(rgb, cols, None, None)


def _cells(
    rgb: npt.NDArray[np.float64],
    cols: int,
    dot: npt.NDArray[np.float64] | None,
    mark: npt.NDArray[np.bool_] | None,
) -> npt.NDArray[np.float64]:
    n = rgb.shape[0]
    rows = -(-n // cols)
    k = CELL_PX
    grid = np.ones((rows * cols, k, k, 3))
    grid[:n] = rgb[:, None, None, :]
    if mark is not None and dot is not None:
        c = k // 2
        grid[np.flatnonzero(mark), c, c] = dot[mark]
    grid[n:] = 1.0  # past the end of memory
    return grid.reshape(rows, cols, k, k, 3).transpose(0, 2, 1, 3, 4).reshape(rows * k, cols * k, 3)


def _png(image: npt.NDArray[np.float64]) -> str:
    buf = io.BytesIO()
    mpimg.imsave(buf, np.clip(image, 0, 1), format="png")
    return base64.b64encode(buf.getvalue()).decode()


def _legend(names: Sequence[str], colors: Sequence[str], skip: Sequence[int] = ()) -> str:
    items = "".join(
        f"<span><i style='background:{c}'></i>{html.escape(n)}</span>"
        for k, (n, c) in enumerate(zip(names, colors, strict=True))
        if k not in skip
    )
    return f"<div class='legend'>{items}</div>"


def memory_pictures(saved: dict[str, SavedHostMaps], labels: Sequence[str]) -> str:
    """Per preset (presets with equal pictures together), at each saved moment, two images of the host's 2M
    blocks: who holds them and how the direct map maps them."""
    runs = {label: saved[label].maps for label in labels if label in saved and saved[label].maps}
    if not runs:
        return "<p class='note' id='hostmap'>These results carry no memory pictures (hostmaps.npz).</p>"
    groups = identical_groups(
        {label: np.concatenate([np.concatenate(m[1:]).astype(np.int64) for m in maps]) for label, maps in runs.items()}
    )
    first = next(iter(runs.values()))[0]
    nblocks = first.state.size
    factor, cols, _ = picture_geometry(nblocks)
    cell = format_bytes(factor * (2 << 20))
    row_bytes = format_bytes(factor * cols * (2 << 20))
    has_holes = any((m.ram == 0).any() for maps in runs.values() for m in maps)
    out = [
        "<div id='hostmap'>",
        f"<p class='note'>One cell = {cell} of host physical memory ({nblocks:,} blocks of 2 MiB"
        + (f", {factor} per cell: the state and mapping most of them have" if factor > 1 else "")
        + f"); address 0 at the top left, rows of {row_bytes}. Paler cells hold fewer used pages; a centre dot marks a"
        " <b>mixed</b> cell, holding both RMP-assigned (private) and unassigned pages, which the hardware forbids the"
        " host to write through a 2M or 1G mapping.</p>",
        "<div class='legends'><b>memory</b> "
        + _legend(blockmap.STATES, STATE_COLORS, () if has_holes else (blockmap.NOT_RAM,))
        + "<b>direct map</b> "
        + _legend(blockmap.LEVELS, LEVEL_COLORS)
        + "</div>",
    ]
    width = cols * CELL_PX
    for members in groups:
        cells_html = []
        maps = runs[members[0]]
        for k, m in enumerate(maps):
            role = "end" if k == len(maps) - 1 else "after boot" if k == 0 else "mid-run"
            cm = coarsen(m, factor)
            mixed = int(((m.assigned > 0) & (m.assigned < m.ram)).sum())
            cells_html.append(
                "<figure>"
                f"<img width='{width}' alt='memory at {format_time(m.time_ns)}' "
                f"src='data:image/png;base64,{_png(state_image(cm, cols))}'>"
                f"<img width='{width}' alt='direct map at {format_time(m.time_ns)}' "
                f"src='data:image/png;base64,{_png(level_image(cm, cols))}'>"
                f"<figcaption><b>{role}</b> ({format_time(m.time_ns)}): memory | direct map · {mixed:,} mixed"
                "</figcaption></figure>"
            )
        out.append(
            f"<div class='hostmap'><h3>{html.escape(group_label(members))}</h3>"
            f"<div class='moments'>{''.join(cells_html)}</div></div>"
        )
    out.append("</div>")
    return "".join(out)


# -------------------------------------------------------------------------------------------------- tables

#: Crash-group rows shown before "N more" (the records are all in each run's summary.json).
MAX_CRASH_GROUPS = 500


def crash_groups(docs: list[dict[str, Any]]) -> pd.DataFrame:
    """Host crashes grouped per run by kernel path, kind and (if recorded) context: count, first and last time,
    distinct frames, lowest and highest frame; most frequent first within a run."""
    records = [{"run": d["label"], **c} for d in docs for c in d.get("crashes", [])]
    if not records:
        return pd.DataFrame()
    frame = pd.DataFrame(records)
    keys = ["run", "path", "kind"] + (["context"] if "context" in frame else [])
    if "context" in frame:
        frame["context"] = frame["context"].fillna("").astype(str)
    grouped = frame.groupby(keys, sort=False).agg(
        count=("time_ns", "size"),
        first_ns=("time_ns", "min"),
        last_ns=("time_ns", "max"),
        frames=("pfn", "nunique"),
        pfn_lo=("pfn", "min"),
        pfn_hi=("pfn", "max"),
    )
    runs = {d["label"]: k for k, d in enumerate(docs)}
    grouped = grouped.reset_index()
    grouped["_run"] = grouped["run"].map(runs)
    return grouped.sort_values(["_run", "count"], ascending=[True, False], kind="stable").drop(columns="_run")


def _crash_html(docs: list[dict[str, Any]]) -> str:
    groups = crash_groups(docs)
    if groups.empty:
        return "<p id='crashes'>No host crash under any preset.</p>"
    esc = html.escape
    total = {d["label"]: len(d.get("crashes", [])) for d in docs}
    per_run = "; ".join(f"{esc(r)}: {n:,}" for r, n in total.items() if n)
    has_context = "context" in groups
    head = "<th>run</th><th>kernel path</th><th>kind</th>" + ("<th>context</th>" if has_context else "")
    head += "<th>crashes</th><th>first at</th><th>last at</th><th>frames</th><th>pfn range</th>"
    rows = []
    for r in groups.head(MAX_CRASH_GROUPS).to_dict("records"):
        ctx = f"<td>{esc(str(r['context']))}</td>" if has_context else ""
        rows.append(
            f"<tr><td>{esc(r['run'])}</td><td class='path'>{esc(r['path'])}</td><td>{esc(r['kind'])}</td>{ctx}"
            f"<td>{r['count']:,}</td><td>{format_time(r['first_ns'])}</td><td>{format_time(r['last_ns'])}</td>"
            f"<td>{r['frames']:,}</td><td>{r['pfn_lo']:#x}–{r['pfn_hi']:#x}</td></tr>"
        )
    more = len(groups) - MAX_CRASH_GROUPS
    note = f"<p class='note'>{more:,} more groups not shown; every record is in summary.json.</p>" if more > 0 else ""
    return (
        f"<p>{sum(total.values()):,} crash records ({per_run}) in {len(groups):,} "
        f"group{'' if len(groups) == 1 else 's'}.</p>"
        f"<table id='crashes'><tr>{head}</tr>{''.join(rows)}</table>{note}"
    )


def _metrics_table(docs: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(d['label'])}</th>" for d in docs)
    rows = []
    for knob in docs[0]["policy"]:
        values = [str(d["policy"].get(knob, "")).lower() for d in docs]
        same = " same" if len(set(values)) == 1 and len(docs) > 1 else ""
        cells = "".join(f"<td>{html.escape(v)}</td>" for v in values)
        rows.append(f"<tr class='knob{same}'><th>{knob}</th>{cells}</tr>")
    extra = [m for d in docs for m in d["summary"] if m not in METRICS]
    for metric in [*METRICS, *dict.fromkeys(extra)]:
        values = [d["summary"].get(metric, "") for d in docs]
        same = " class='same'" if len({str(v) for v in values}) == 1 and len(docs) > 1 else ""
        cells = "".join(f"<td>{_fmt(metric, v)}</td>" for v in values)
        rows.append(f"<tr{same}><th>{metric}</th>{cells}</tr>")
    return f"<table id='metrics'><tr><th></th>{head}</tr>{''.join(rows)}</table>"


#: The outcomes of the glance table, in order (those a run does not record are left out).
GLANCE = (
    "host_crash_count",
    "guest_vc_count",
    "host_lost_write_count",
    "host_rmp_fault_count",
    "directmap_4k",
    "directmap_split_count",
    "waste_bytes",
    "boot_time_ns",
)


def _glance(docs: list[dict[str, Any]]) -> str:
    metrics = [m for m in GLANCE if any(m in d["summary"] for d in docs)]
    head = "".join(f"<th>{m}</th>" for m in metrics)
    rows = []
    for d in docs:
        cells = []
        for m in metrics:
            v = d["summary"].get(m, "")
            bad = m in ("host_crash_count", "guest_vc_count", "host_lost_write_count") and isinstance(v, int) and v
            cells.append(f"<td{' class=bad' if bad else ''}>{_fmt(m, v)}</td>")
        rows.append(f"<tr><th>{html.escape(d['label'])}</th>{''.join(cells)}</tr>")
    return f"<table id='glance'><tr><th>preset</th>{head}</tr>{''.join(rows)}</table>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; max-width: 1500px; }
h1 { font-size: 1.45em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid
#ddd; padding-bottom: 0.2em; } h3 { font-size: 0.95em; margin: 0.8em 0 0.3em; }
p.meta { color: #666; margin-top: 0; font-size: 0.9em; } p.note { color: #555; font-size: 0.85em; max-width: 75em; }
table { border-collapse: collapse; font-size: 0.82em; margin: 0.4em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child { text-align: left; } tr.knob td { text-align: center; background: #f4f4f8; }
tr.same td, tr.same th { color: #999; } td.bad { color: #b00; font-weight: 600; } td.path { text-align: left; }
#scenario th { background: #f4f4f8; vertical-align: top; } #scenario td { text-align: left; max-width: 70em; }
.plot svg { max-width: 100%; height: auto; }
.legends { font-size: 0.8em; display: flex; flex-wrap: wrap; gap: 0.3em 1em; align-items: center; }
.legend { display: inline-flex; flex-wrap: wrap; gap: 0.2em 0.9em; }
.legend i { display: inline-block; width: 0.9em; height: 0.9em; border: 1px solid #888; margin-right: 0.3em;
vertical-align: -0.1em; }
.moments { display: flex; flex-wrap: wrap; gap: 0.4em 1.4em; } figure { margin: 0; }
figure img { image-rendering: pixelated; border: 1px solid #bbb; margin-right: 3px; }
figcaption { font-size: 0.75em; color: #444; }
nav { font-size: 0.85em; margin: 0.6em 0; } nav a { margin-right: 0.9em; }
"""


def build(out: Path, dest: Path | None = None) -> Path:
    """Write ``report.html`` for the results folder ``out`` (or to ``dest``); returns its path."""
    docs, timelines = load(out)
    saved = load_hostmaps(out)
    labels = [d["label"] for d in docs]
    full = next((saved[lb].scenario for lb in labels if lb in saved and saved[lb].scenario), None)
    scenario = full or docs[0]["scenario"]
    title = scenario.get("name") or "snpsim report"
    rows = scenario_rows(scenario, default_costs=_default_costs())
    rows.append(("presets", ", ".join(labels)))
    rows.append(("VMs created", _vms_run(docs)))
    versions = sorted({s.version for s in saved.values() if s.version})
    made = f" by snpsim {', '.join(versions)}" if versions else ""
    meta = f"results written {_results_date(out)}{made}; report by snpsim {snpsim.__version__}"

    dm_svg = stacked_multiples(
        timelines,
        {"directmap_4k": "4K", "directmap_2m": "2M", "directmap_1g": "1G"},
        "direct map",
        "DirectMap4k / 2M / 1G (/proc/meminfo), stacked",
    )
    npt_svg = stacked_multiples(
        timelines, {"npt_4k": "4K", "npt_2m": "2M", "npt_1g": "1G"}, "NPT", "guest memory mapped in the NPT, by level"
    )
    activity = [m for m in ("rmpupdate_count", "psmash_count", "npf_count") if m in METRICS]
    faults = [
        m
        for m in (
            "directmap_split_count",
            "directmap_merge_count",
            "host_rmp_fault_count",
            "host_notpresent_fault_count",
            "host_crash_count",
            "guest_vc_count",
        )
        if any(tl[m].any() for tl in timelines.values())
    ]
    quiet = [
        m
        for m in ("directmap_merge_count", "host_rmp_fault_count", "host_notpresent_fault_count", "host_crash_count")
        if m not in faults
    ]
    counts = [m for m in [*METRICS, *(k for k in docs[0]["summary"] if k not in METRICS)] if m.endswith("_count")]
    finals = {m: [_final_value(d, m) or 0.0 for d in docs] for m in counts}
    zero_counts = [m for m in counts if not any(finals[m])]
    equal_counts = [m for m in counts if m not in zero_counts and len(docs) > 1 and len(set(finals[m])) == 1]
    count_metrics = [m for m in counts if m not in zero_counts and m not in equal_counts]
    count_notes = "".join(
        f"<p class='note'>{text}: {', '.join(items)}.</p>"
        for text, items in (
            ("Equal under every preset", [f"{m} {finals[m][0]:,.0f}" for m in equal_counts]),
            ("Zero under every preset", zero_counts),
        )
        if items
    )
    sections = [
        ("glance", "At a glance", _glance(docs)),
        ("directmap", "Direct map over time", f"<div class='plot'>{dm_svg}</div>"),
        (
            "hostmap-section",
            "Host physical memory, 2M block by 2M block",
            memory_pictures(saved, labels),
        ),
        (
            "memory",
            "Guest memory: private, shared, waste",
            f"<div class='plot'>{line_panels(timelines, ('private_bytes', 'shared_bytes', 'waste_bytes'))}</div>",
        ),
        (
            "activity",
            "RMPUPDATE, PSMASH and nested page faults (cumulative)",
            f"<div class='plot'>{line_panels(timelines, activity, counts=True)}</div>",
        ),
        ("npt", "NPT mapping levels", f"<div class='plot'>{npt_svg}</div>"),
        (
            "faults",
            "Direct-map splits, host faults and guest #VC (cumulative)",
            (f"<div class='plot'>{line_panels(timelines, faults, counts=True)}</div>" if faults else "")
            + (f"<p class='note'>Zero under every preset: {', '.join(quiet)}.</p>" if quiet else ""),
        ),
        (
            "counts",
            "Final counts",
            (f"<div class='plot'>{final_counts(docs, count_metrics)}</div>" if count_metrics else "") + count_notes,
        ),
        ("boot-section", "Boot time", boot_section(docs)),
        ("crash-section", "Host crashes", _crash_html(docs)),
        ("metrics-section", "Knobs and final metrics", _metrics_table(docs)),
    ]
    nav = "<nav>" + "".join(f"<a href='#{i}-h'>{html.escape(h)}</a>" for i, h, _ in sections) + "</nav>"
    body = "".join(
        f"<h2 id='{i}-h'>{html.escape(h)}</h2><section id='{i}'>{content}</section>" for i, h, content in sections
    )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"{_header(title, rows, meta)}{nav}{body}</body></html>"
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
        stats_of = {}
        for k, (key, group) in enumerate(groups):
            stats = _metric_values(group, metric).groupby(group[x_axis].map(where)).agg(["mean", "min", "max"])
            stats_of[k] = (key, group, stats.sort_index())
        # lines that coincide (presets that agree) are drawn once and named together in the panel
        same = identical_groups({k: st.to_numpy().ravel() for k, (_, _, st) in stats_of.items()})
        for members in same:
            _, group, stats = stats_of[members[0]]
            style = _style(members[0])  # colour, marker and dashes all differ between lines
            ax.plot(stats.index, stats["mean"], markersize=4, linewidth=1.2, fillstyle="none", **style)
            if averaged and len(group) > len(stats):
                ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.15, color=style["color"])
        merged = [" = ".join(_group_label(lines, stats_of[k][0]) for k in m) for m in same if len(m) > 1]
        equal = ("\nequal: " + "; ".join(merged)) if lines and merged else ""
        if metric.endswith("_count") and spans_decades(v for _, _, st in stats_of.values() for v in st["mean"]):
            ax.set_yscale("symlog", linthresh=1, linscale=0.4)
            metric_title = f"{metric} (log)"
        else:
            metric_title = _metric_title(metric)
        if log:
            ax.set_xscale("log", base=2)
        ax.set_xticks(positions, [str(v) for v in axes[x_axis]])
        ax.minorticks_off()
        ax.set_title(metric_title, fontsize=9)
        ax.set_xlabel(xlabel + equal, fontsize=7 if equal else 8)
        ax.tick_params(labelsize=7)
    if lines:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], markersize=4, fillstyle="none", **_style(k)) for k in range(len(groups))]
        labels = [_group_label(lines, key) for key, _ in groups]
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
        log = metric.endswith("_count") and spans_decades(means)
        if log:
            ax.set_yscale("symlog", linthresh=1, linscale=0.4)
        ax.set_title(f"{metric} (log)" if log else _metric_title(metric), fontsize=9)
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


def _base_rows(base: dict[str, Any]) -> list[tuple[str, str]]:
    """The header rows of a sweep's base scenario (resolved as a run's), or none if it is not valid alone (an
    axis supplies what it lacks: the whole base is in the page's last section)."""
    from snpsim.hostmaps import scenario_doc
    from snpsim.scenario import load as load_scenario

    try:
        doc = scenario_doc(load_scenario(base))
    except (ConfigError, TypeError, ValueError):
        return [("base scenario", "valid only with the axes' values (see Base scenario below)")]
    doc.pop("name", None)
    return [(f"base {k}" if k == "run" else k, v) for k, v in scenario_rows(doc, default_costs=_default_costs())]


def _sweep_tables(axes: list[str], frame: pd.DataFrame) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(a)}</th>" for a in axes)
    failed = frame[frame["status"] != "ok"]
    fail_rows = "".join(
        f"<tr><td>{esc(r['hash'])}</td>{''.join(f'<td>{esc(str(r[a]))}</td>' for a in axes)}"
        f"<td class='error'>{esc(str(r['error']))}</td></tr>"
        for r in failed.head(MAX_TABLE_ROWS).to_dict("records")
    )
    fail_more = (
        f"<p class='note'>first {MAX_TABLE_ROWS} of {len(failed)} failed points; all of them are in sweep.duckdb</p>"
        if len(failed) > MAX_TABLE_ROWS
        else ""
    )
    fail_html = (
        f"{fail_more}<table id='failed'><tr><th>hash</th>{head}<th>error</th></tr>{fail_rows}</table>"
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
    from snpsim.sweeps import STORE, read

    definition, frame = read(out)
    axes: dict[str, list[Any]] = dict(definition["axes"])
    title = definition.get("name") or "snpsim sweep"
    ok = int((frame["status"] == "ok").sum())
    rows = _base_rows(definition.get("base", {}))
    rows += [(f"axis {a}", ", ".join(str(v) for v in values)) for a, values in axes.items()]
    meta = f"results written {_results_date(out, STORE)}; report by snpsim {snpsim.__version__}"
    grid = " x ".join(f"{html.escape(a)} ({len(v)})" for a, v in axes.items())
    plots = "".join(
        f"<h2>{html.escape(h)}</h2><div class='plot' id='{i}'>{_svg(fig)}</div>"
        for i, h, fig in sweep_figures(definition, frame)
    )
    base = html.escape(json.dumps(definition.get("base", {}), indent=1, sort_keys=True))
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}{_SWEEP_CSS}</style></head><body>"
        f"{_header(title, rows, meta)}<p id='summary'>{len(frame)} points stored ({ok} ok, {len(frame) - ok} "
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
