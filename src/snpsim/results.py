"""Results on disk: a folder holds one run (one scenario under one or more policies), never a mix.

Layout of a results folder (readable with pandas, pyarrow or DuckDB:
``SELECT preset, time_ns, directmap_4k FROM 'out/*/timeline.parquet'``)::

    OUT/
      manifest.json            {"snpsim": version, "command": [...], "created", "updated", "name",
                                "scenario_hash", "scenario": the resolved scenario without its policy,
                                "source": what else the run read (a replayed trace's name and SHA-256) or null,
                                "presets": {label: {"folder": name, "policy": {knob: value}}}}
      <folder>/summary.json    {"label", "summary": {metric: value}, "policy": {knob: value}, "scenario": {...},
                                "vms": [...], "crashes": [...]}
      <folder>/timeline.parquet preset (the label) + time_ns + every metric, one row per sample
      <folder>/hostmaps.npz     the host memory pictures and the resolved scenario, for the report (snpsim.hostmaps)
      report.html              the report (snpsim.report)

What a folder holds is identified by ``scenario_hash``: the content hash of the resolved scenario (sizes and
durations parsed, defaults filled in; :func:`snpsim.sweeps.resolve`) without its policy, plus its name and
``source``. Writing into a folder (:class:`Claim`, :func:`save`):

- a new or empty folder (dot-files aside) is claimed for the run;
- a folder holding the *same* scenario keeps its other presets: each preset written replaces its own results,
  new presets are added (``snpsim run; snpsim run -p upm`` re-runs upm only, the others stay);
- a folder holding *another* scenario, or results without a manifest (an older snpsim), is refused with one line
  unless ``overwrite`` (``--overwrite``), which removes the old run's files - its preset folders, report and
  manifest, nothing else - when the first new result is written (with ``overwrite`` a folder of the same scenario
  is started afresh too: it ends up holding exactly the presets of this run);
- a sweep folder (``sweep.duckdb``), a file, or a folder holding anything else is refused, overwrite or not.

Locations are checked before anything is simulated (:func:`check_folder`, :func:`check_file`: not a file where a
folder is expected, the nearest existing parent really writable - probed with a temporary file, so read-only
mounts and permissions are both caught). A run's files are written into a temporary ``.<folder>.tmp/`` and
renamed into place only once complete, then the manifest is rewritten (write to a temporary name, rename): a write
that fails (``ENOSPC``) removes what it had written and raises :class:`OutputError`, and the folder holds the
previous state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from snpsim.errors import ConfigError
from snpsim.hostmaps import save_hostmaps
from snpsim.runner import Result
from snpsim.scenario import Scenario

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
TIMELINE = "timeline.parquet"
REPORT = "report.html"
#: The sweep store's file (snpsim.sweeps.STORE): a folder holding it is a sweep folder.
SWEEP_STORE = "sweep.duckdb"


class OutputError(ConfigError):
    """Results could not be written (disk full, permission lost); partial files were removed."""


# -------------------------------------------------------------------------------------------------- locations


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _existing_parent(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(folder: Path, field: str) -> None:
    """Create and remove a temporary file in ``folder``: the only test of writability that sees read-only mounts,
    ACLs and the root user alike."""
    try:
        fd, name = tempfile.mkstemp(prefix=".snpsim-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise ConfigError(field, f"cannot write in {folder}: {_strerror(exc)}") from None


def check_folder(path: str | Path, field: str) -> None:
    """Raise :class:`ConfigError` naming ``field`` unless ``path`` is, or can be created as, a writable folder."""
    path = Path(path)
    parent = _existing_parent(path)
    if not parent.is_dir():
        what = "is" if parent == path.absolute() else f"is inside {parent}, which is"
        raise ConfigError(field, f"{path} {what} a file, not a folder")
    _probe(parent, field)


def check_file(path: str | Path, field: str) -> None:
    """Raise :class:`ConfigError` naming ``field`` unless a file can be written at ``path``."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(field, f"{path} is a folder, not a file")
    check_folder(path.parent, field)


@contextlib.contextmanager
def atomic_file(path: str | Path, field: str) -> Iterator[Path]:
    """A temporary path next to ``path``, renamed to ``path`` when the block ends; if the block fails, the
    temporary file is removed (an existing ``path`` is untouched) and an :class:`OutputError` (for an
    ``OSError``) or the block's error is raised."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(field, f"cannot write {path}: {_strerror(exc)}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -------------------------------------------------------------------------------------------------- identity


def folder_name(label: str) -> str:
    """The folder of a run's label: letters, digits and ``+=._-`` kept (policy labels: ``upm+rmp_fault=fixup``),
    anything else replaced by ``_``; never hidden and never one of the folder's own files."""
    name = re.sub(r"[^A-Za-z0-9_.+=-]+", "_", label).strip("_") or "run"
    return f"run-{name}" if name.startswith(".") or name in (MANIFEST, REPORT, SWEEP_STORE) else name


def identity(
    scenario: Scenario | Mapping[str, Any], source: Mapping[str, Any] | None = None, *, name: str = ""
) -> dict[str, Any]:
    """What a results folder holds one of: the resolved scenario without its policy (or, for a run that is not a
    scenario file, e.g. a replay, a table of what determines it), its name and ``source`` (anything else the run
    read, e.g. ``{"trace": "boot.log", "sha256": ...}``), with their hash ``scenario_hash``."""
    from snpsim.sweeps import canonical_json, resolve

    if isinstance(scenario, Scenario):
        doc = resolve(scenario)
        doc.pop("policy")
        name = scenario.name
    else:
        doc = json.loads(canonical_json(scenario))
    ident = {"name": name, "scenario": doc, "source": dict(source) if source is not None else None}
    ident["scenario_hash"] = hashlib.sha256(canonical_json(ident).encode()).hexdigest()[:16]
    return ident


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(out: str | Path) -> dict[str, Any] | None:
    """The manifest of a results folder, or None if it has none; unreadable ones raise :class:`ConfigError`."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        if not isinstance(doc["presets"], dict) or not isinstance(doc["scenario_hash"], str):
            raise ValueError("no presets or scenario_hash")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(str(path), f"unreadable manifest: {exc}") from None
    return doc


def _legacy_runs(out: Path) -> list[Path]:
    """Run folders of a results folder written before manifests existed."""
    return sorted(p for p in out.iterdir() if p.is_dir() and (p / SUMMARY).is_file()) if out.is_dir() else []


def is_run_folder(out: str | Path) -> bool:
    """Whether ``out`` holds results of ``snpsim run``/``replay`` (a manifest, or older per-run summaries)."""
    out = Path(out)
    return (out / MANIFEST).is_file() or bool(_legacy_runs(out))


def _visible(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if not p.name.startswith(".")] if out.is_dir() else []


# -------------------------------------------------------------------------------------------------- writing


@dataclasses.dataclass
class Claim:
    """A results folder checked for one run (:meth:`open`); :func:`save` writes each result through it."""

    out: Path
    ident: dict[str, Any]
    command: list[str]
    field: str = "out"
    #: the old run's files to remove before the first write (``overwrite`` of another run)
    stale: list[Path] = dataclasses.field(default_factory=list)
    manifest: dict[str, Any] | None = None

    @classmethod
    def open(
        cls,
        out: str | Path,
        ident: dict[str, Any],
        *,
        overwrite: bool = False,
        command: list[str] | None = None,
        field: str = "out",
    ) -> Claim:
        """Check that ``out`` may receive the run ``ident`` (module docstring); nothing is written yet."""
        out = Path(out)
        check_folder(out, field)
        claim = cls(out, ident, command if command is not None else _command(), field)
        if (out / SWEEP_STORE).exists():
            raise ConfigError(field, f"{out} holds a sweep (sweep.duckdb), not runs; choose another folder")
        manifest = read_manifest(out)
        same = manifest is not None and manifest["scenario_hash"] == ident["scenario_hash"]
        if same and not overwrite:
            claim.manifest = manifest
            return claim
        if manifest is not None:
            old = manifest.get("name") or manifest["scenario_hash"]
            stale = [out / MANIFEST, out / REPORT, *(out / p["folder"] for p in manifest["presets"].values())]
            why = f"holds the results of another scenario ({old!r})"
        elif legacy := _legacy_runs(out):
            stale = [out / REPORT, *legacy]
            why = f"holds results without a {MANIFEST} (written by an older snpsim)"
        else:
            if _visible(out):
                raise ConfigError(field, f"{out} is not empty and holds no snpsim results; choose a new folder")
            return claim
        if not overwrite:
            raise ConfigError(field, f"{out} {why}; use --overwrite to replace them, or choose another folder")
        claim.stale = stale
        return claim

    def _folder(self, label: str) -> str:
        name = folder_name(label)
        presets = (self.manifest or {}).get("presets", {})
        for other, entry in presets.items():
            if entry["folder"] == name and other != label:
                raise ConfigError("label", f"{label!r} and {other!r} would share the folder {name!r}")
        return name

    @contextlib.contextmanager
    def writing(self, label: str, policy: dict[str, Any]) -> Iterator[Path]:
        """A temporary folder to write one run's files into; on success it replaces ``out/<folder>`` and the
        manifest lists the label; on failure it is removed and :class:`OutputError` is raised."""
        name = self._folder(label)
        tmp = self.out / f".{name}.tmp"
        old = self.out / f".{name}.old"
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            for path in self.stale:  # the run being overwritten goes only once something replaces it
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            self.stale = []
            for leftover in (tmp, old):
                shutil.rmtree(leftover, ignore_errors=True)
            tmp.mkdir()
            yield tmp
            final = self.out / name
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            self._record(label, name, policy)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputError(self.field, f"cannot write results to {self.out}: {_strerror(exc)}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _record(self, label: str, name: str, policy: dict[str, Any]) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        if self.manifest is None:
            from snpsim import __version__

            self.manifest = {
                "snpsim": __version__,
                "command": self.command,
                "created": now,
                **{k: self.ident[k] for k in ("name", "scenario_hash", "scenario", "source")},
                "presets": {},
            }
        self.manifest["updated"] = now
        self.manifest["command"] = self.command
        self.manifest["presets"][label] = {"folder": name, "policy": policy}
        _atomic_write(self.out / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True).encode())


def _command() -> list[str]:
    return ["python", *sys.argv] if sys.argv and sys.argv[0] else ["python"]


def timeline_frame(result: Result, label: str) -> pd.DataFrame:
    """A run's timeline as stored: a ``preset`` column (the label) before ``time_ns`` and the metrics."""
    frame = result.timeline.copy()
    frame.insert(0, "preset", label)
    return frame


def save(
    result: Result,
    out: str | Path,
    label: str,
    *,
    claim: Claim | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one run under ``out/<folder_name(label)>/``; returns that folder.

    ``claim``: the folder as checked by :meth:`Claim.open` (the CLI checks it once, before simulating); by
    default it is checked here, for the result's own scenario (``overwrite`` as :meth:`Claim.open`). Raises
    :class:`ConfigError` if the folder may not receive this run, :class:`OutputError` if writing fails."""
    claim = claim or Claim.open(out, identity(result.scenario), overwrite=overwrite)
    with claim.writing(label, result.scenario.policy.as_dict()) as folder:
        timeline_frame(result, label).to_parquet(folder / TIMELINE, index=False)
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
        (folder / SUMMARY).write_text(json.dumps(doc, indent=1, sort_keys=True))
    return claim.out / folder_name(label)


# -------------------------------------------------------------------------------------------------- reading


def load(out: str | Path) -> tuple[list[dict[str, Any]], dict[str, pd.DataFrame]]:
    """Read every run of a results folder: (summary documents, timelines by label), in label order. The runs
    are those its manifest lists (or, for a folder without one, every ``<folder>/summary.json``); timelines are
    ``time_ns`` + every metric (the stored ``preset`` column is the dict's key)."""
    out = Path(out)
    if not out.is_dir():
        raise ConfigError(str(out), "no such results folder")
    manifest = read_manifest(out)
    folders = (
        [out / entry["folder"] for entry in manifest["presets"].values()] if manifest is not None else _legacy_runs(out)
    )
    docs: list[dict[str, Any]] = []
    timelines: dict[str, pd.DataFrame] = {}
    for folder in folders:
        summary = folder / SUMMARY
        try:
            doc = json.loads(summary.read_text())
            timeline = pd.read_parquet(folder / TIMELINE)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(str(summary), f"unreadable result: {exc}") from None
        timelines[doc["label"]] = timeline.drop(columns="preset", errors="ignore")
        docs.append(doc)
    if not docs:
        raise ConfigError(str(out), f"no results in this folder (expected {MANIFEST} and <label>/{SUMMARY})")
    docs.sort(key=lambda d: str(d["label"]))
    return docs, {d["label"]: timelines[d["label"]] for d in docs}


def summaries(out: str | Path) -> pd.DataFrame:
    """One row per run: ``label``, the knobs and the final metrics."""
    docs, _ = load(out)
    return pd.DataFrame([{"label": d["label"], **d["policy"], **d["summary"]} for d in docs])
