"""Results on disk: one folder per run, the timeline as Parquet and the summary as JSON.

Layout of an output folder (readable with pandas, pyarrow or DuckDB: ``SELECT * FROM 'out/*/timeline.parquet'``)::

    OUT/
      <label>/summary.json     {"label", "summary": {metric: value}, "policy": {knob: value}, "scenario": {...},
                                "vms": [...], "crashes": [...]}
      <label>/timeline.parquet time_ns + every metric, one row per sample
      <label>/hostmaps.npz     the host memory pictures and the resolved scenario, for the report (snpsim.hostmaps)

Each file is written to a temporary name and renamed into place, so a run interrupted while saving never leaves a
half-written result behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from snpsim.errors import ConfigError
from snpsim.hostmaps import save_hostmaps
from snpsim.runner import Result

SUMMARY = "summary.json"
TIMELINE = "timeline.parquet"


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label) or "run"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save(result: Result, out: Path, label: str) -> Path:
    """Write one run under ``out/<label>/``; returns that folder."""
    folder = Path(out) / _safe(label)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{TIMELINE}.tmp"
    result.timeline.to_parquet(tmp, index=False)
    os.replace(tmp, folder / TIMELINE)
    doc = {
        "label": label,
        "summary": result.summary,
        "policy": result.scenario.policy.as_dict(),
        "scenario": {
            "name": result.scenario.name,
            "seed": result.scenario.seed,
            "duration_ns": result.scenario.duration_ns,
            "host_memory": result.scenario.host_memory,
            "host_layout": result.scenario.host_layout,
            "vms": [dataclasses.asdict(v) for v in result.scenario.vms],
        },
        "vms": [dataclasses.asdict(v) for v in result.vms],
        "crashes": result.crashes,
    }
    save_hostmaps(result, folder, label)
    _atomic_write(folder / SUMMARY, json.dumps(doc, indent=1, sort_keys=True).encode())
    return folder


def load(out: Path) -> tuple[list[dict[str, Any]], dict[str, pd.DataFrame]]:
    """Read every run of an output folder: (summary documents, timelines by label), in label order."""
    out = Path(out)
    if not out.is_dir():
        raise ConfigError(str(out), "no such results folder")
    docs: list[dict[str, Any]] = []
    timelines: dict[str, pd.DataFrame] = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        summary = folder / SUMMARY
        if not summary.exists():
            continue
        try:
            doc = json.loads(summary.read_text())
            timelines[doc["label"]] = pd.read_parquet(folder / TIMELINE)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(str(summary), f"unreadable result: {exc}") from None
        docs.append(doc)
    if not docs:
        raise ConfigError(str(out), f"no results in this folder (expected <label>/{SUMMARY})")
    return docs, timelines


def summaries(out: Path) -> pd.DataFrame:
    """One row per run: ``label``, the knobs and the final metrics."""
    docs, _ = load(out)
    return pd.DataFrame([{"label": d["label"], **d["policy"], **d["summary"]} for d in docs])
