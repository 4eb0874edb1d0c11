"""The report's extra data on disk: the host memory pictures of a run and its whole scenario.

:func:`snpsim.results.save` calls :func:`save_hostmaps`, which writes ``<label>/hostmaps.npz`` next to the summary
and the timeline: the :class:`~snpsim.host.blockmap.HostMap` snapshots the runner took (one row per moment, one
column per 2M block of host memory; ``np.savez_compressed``: a 4 GiB host's three moments take a few KiB, a 2 TiB
host's a few MiB) and a JSON ``meta`` entry (the run's label, the snpsim version, and the fully resolved scenario
of :func:`snpsim.sweeps.resolve` with its name: what the report's header shows). :func:`load_hostmaps` reads every
such file of a results folder, keyed by label (folders of older versions have none: the report then draws no
picture and takes its header from ``summary.json``).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from snpsim.host.blockmap import HostMap

if TYPE_CHECKING:
    from snpsim.runner import Result
    from snpsim.scenario import Scenario

FILE = "hostmaps.npz"
_ARRAYS = ("state", "level", "used", "assigned", "ram")


@dataclass
class SavedHostMaps:
    """What :func:`save_hostmaps` wrote for one run."""

    label: str
    maps: list[HostMap]
    #: :func:`scenario_doc` of the run's scenario
    scenario: dict[str, Any] = field(default_factory=dict)
    version: str = ""


def scenario_doc(scenario: Scenario) -> dict[str, Any]:
    """The scenario fully resolved (defaults filled, sizes in bytes, durations in ns) as plain JSON data."""
    from snpsim.sweeps import resolve

    return {"name": scenario.name, **resolve(scenario)}


def save_hostmaps(result: Result, folder: Path, label: str) -> Path:
    """Write ``folder/hostmaps.npz`` for ``result`` (atomically: a temporary name renamed into place)."""
    import snpsim

    meta = {"label": label, "version": snpsim.__version__, "scenario": scenario_doc(result.scenario)}
    maps = result.hostmaps
    payload: dict[str, Any] = {"time_ns": np.array([m.time_ns for m in maps], dtype=np.int64)}
    payload["meta"] = np.array(json.dumps(meta))
    if maps:
        payload.update({name: np.stack([getattr(m, name) for m in maps]) for name in _ARRAYS})
    path = Path(folder) / FILE
    tmp = path.with_name(f".{FILE}.tmp")
    with tmp.open("wb") as fh:
        np.savez_compressed(fh, **payload)
    os.replace(tmp, path)
    return path


def load_hostmaps(out: Path) -> dict[str, SavedHostMaps]:
    """Every ``hostmaps.npz`` of the results folder ``out`` by run label; unreadable files are skipped."""
    found: dict[str, SavedHostMaps] = {}
    for path in sorted(Path(out).glob(f"*/{FILE}")):
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                times = npz["time_ns"].tolist()
                arrays = [npz[name] for name in _ARRAYS] if times else []
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            continue
        maps = [HostMap(int(t), *(a[k] for a in arrays)) for k, t in enumerate(times)]
        label = str(meta.get("label", path.parent.name))
        found[label] = SavedHostMaps(label, maps, meta.get("scenario", {}), str(meta.get("version", "")))
    return found
