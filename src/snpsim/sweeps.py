"""Sweeps: a grid of scenarios run on Dask, with a crash-safe results store.

A design question is answered by a grid (presets x workloads x guest sizes x vCPUs x seeds). A sweep names a base
scenario (the schema of :func:`snpsim.run`) and axes; each point of their Cartesian product is one scenario, run by
:func:`snpsim.run` on a Dask cluster (a local one by default, or any running scheduler). This module models no part
of the host: it expands sweeps, runs their points and stores the results.

Sweep file (TOML; the same keys as a dict for :func:`snpsim.sweep`)::

    base = "../boot-4g.toml"          # the base scenario: a path relative to the sweep file, or a [base] table
    [sweep]                           # optional
    name = "presets x vCPUs"          # title of the report (default: the file's name)
    out = "sweep-out"                 # results folder, relative to the current directory (default sweep-out)
    point_timeout = "30m"             # stop a point after this much computing: it fails (default: no limit)
    [axes]                            # dotted scenario paths -> lists of values; points = their Cartesian product
    policy = ["upm", "upstream"]      # a preset name or a table of knobs per value
    "vms.0.vcpus" = [1, 2, 4]         # a number segment indexes a list ([[vms]]); missing tables are created
    "vms.0.memory" = ["256M", "1G"]
    seed = [1, 2, 3]                  # "seed" is a replicate axis: the report averages over it

A point is keyed by a content hash of its *fully resolved* scenario (:func:`scenario_hash`: sizes and durations
parsed, defaults filled, policy knobs and guest assumptions resolved; the scenario's ``name`` is a label and is not
hashed), so ``"1G"`` and ``"1024M"`` are the same point and a point's result depends only on its key. A point whose
scenario is invalid, whose simulation raises, or that runs longer than ``point_timeout`` (wall-clock, checked by the
simulation itself: :class:`snpsim.errors.TimeLimitExceeded`) is recorded as failed with its error; the sweep goes on.
A policy given as a table of knobs appears in the results under its readable label
(:func:`snpsim.policy.policy_label`: ``upm+rmp_fault=fixup``).

Results store (only the driver process writes it; workers return results)::

    OUT/sweep.duckdb            meta(key, value): the sweep definition (JSON); runs: one row per invocation;
                                points: hash (primary key), status ("ok" | "failed"), error, axes (JSON), scenario
                                (JSON), every metric of shared/DESIGN.md, elapsed_s, run_id, finished_at
    OUT/points/<hash>.parquet   the point's timeline (time_ns + every metric)
    OUT/report.html             the sweep report (:func:`snpsim.report.build_sweep`)

Each point is committed atomically when it finishes: its Parquet file is written to a temporary name, renamed into
place and fsynced, then its row is inserted in a DuckDB transaction. A point is done only once its row is
committed (a Parquet file without a row is rewritten), so a sweep killed at any moment (SIGKILL included) and run
again with ``resume`` skips the committed points and loses or duplicates none. Resuming with a sweep that extends
the stored one (more axis values) runs the new points; a store holding points outside the sweep is refused.
A commit that fails (``ENOSPC``) removes its files, stops the sweep (the points committed so far stay, ``resume``
continues) and is reported as :attr:`SweepRun.write_error` (:func:`snpsim.sweep` raises
:class:`snpsim.results.OutputError`).

One driver at a time writes a store (it holds ``OUT/.sweep.lock``, an exclusive ``flock``); others can read it while
it runs (:func:`read`, ``snpsim report``): DuckDB lets one process open a file for writing *or* several for reading,
so the driver keeps its connection only while points are committed in quick succession (closing it after
``IDLE_CLOSE_S`` without a commit, and after ``MAX_HOLD_S`` in any case), and both sides retry a locked file for a
while. A folder holding runs of
``snpsim run`` (or anything else but a sweep) is refused as a sweep's ``out``.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import fcntl
import hashlib
import io
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import pandas as pd

from snpsim.errors import ConfigError
from snpsim.metrics import METRICS
from snpsim.policy import policy_label
from snpsim.scenario import Scenario, read_toml
from snpsim.scenario import load as load_scenario
from snpsim.units import parse_duration

if TYPE_CHECKING:
    import duckdb

STORE = "sweep.duckdb"
POINTS = "points"
LOCK = ".sweep.lock"
DEFAULT_OUT = Path("sweep-out")
#: Bumped when the hashed document changes shape, so old stores are never mistaken for new points.
HASH_VERSION = 1
#: The axis the report averages over instead of plotting against.
REPLICATE_AXIS = "seed"

_SWEEP_KEYS = {"base", "axes", "sweep"}
_SECTION_KEYS = {"name", "out", "point_timeout"}


# -------------------------------------------------------------------------------------------------- definition


@dataclass(frozen=True)
class Point:
    """One scenario of a sweep: its key, its axis values and its scenario table."""

    index: int
    hash: str
    axes: dict[str, Any]
    scenario: dict[str, Any]
    #: Why the scenario is invalid (the point is recorded as failed without running), or None.
    error: str | None = None


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: the base scenario table and the axes (dotted path -> values), in file order."""

    name: str
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    out: Path | None = None
    #: wall-clock seconds a point may compute before it is stopped and recorded as failed (None: no limit)
    point_timeout_s: float | None = None

    def definition(self) -> dict[str, Any]:
        """What the store keeps (JSON): enough to label, order and plot the points without the sweep file."""
        return {"name": self.name, "base": self.base, "axes": self.axes}

    def points(self) -> list[Point]:
        """Every point of the grid, in product order (the last axis varies fastest)."""
        return expand(self)


def canonical_json(value: Any) -> str:
    """Key-sorted, compact JSON; enums as their values. Equal data gives equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {value!r}")


def resolve(scenario: Scenario) -> dict[str, Any]:
    """The fully resolved scenario as plain data: what determines a point's result (its ``name`` excluded)."""
    doc = dataclasses.asdict(scenario)
    doc.pop("name")
    doc.pop("engine")  # it never changes a result (snpsim.engine)
    doc["vms"] = [{**dataclasses.asdict(vm), "guest": dataclasses.asdict(vm.guest_config())} for vm in scenario.vms]
    data: dict[str, Any] = json.loads(canonical_json(doc))
    return data


def scenario_hash(scenario: Scenario | Mapping[str, Any]) -> str:
    """Content hash (16 hex digits of SHA-256) of the fully resolved scenario; a table is loaded first."""
    loaded = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    return _digest({"v": HASH_VERSION, "scenario": resolve(loaded)})


def _digest(doc: Any) -> str:
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()[:16]


def _table(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(field, f"expected a table, got {type(value).__name__}")
    return dict(value)


def load(source: Mapping[str, Any] | str | Path) -> Sweep:
    """Validate a sweep given as a dict or a TOML path; mistakes raise :class:`ConfigError` naming the field."""
    here = Path.cwd()
    default_name = "sweep"
    if isinstance(source, str | Path):
        data = read_toml(source)
        here = Path(source).resolve().parent
        default_name = Path(source).stem
    else:
        data = _table(source, "sweep")
    for key in data:
        if key not in _SWEEP_KEYS:
            raise ConfigError(str(key), f"unknown field (known: {', '.join(sorted(_SWEEP_KEYS))})")
    section = _table(data.get("sweep", {}), "sweep")
    for key in section:
        if key not in _SECTION_KEYS:
            raise ConfigError(f"sweep.{key}", f"unknown field (known: {', '.join(sorted(_SECTION_KEYS))})")
    name = section.get("name", default_name)
    if not isinstance(name, str):
        raise ConfigError("sweep.name", f"expected a string, got {name!r}")
    out = section.get("out")
    if out is not None and not isinstance(out, str):
        raise ConfigError("sweep.out", f"expected a folder path, got {out!r}")
    timeout = section.get("point_timeout")
    timeout_s = None if timeout is None else parse_duration(timeout, "sweep.point_timeout") / 1e9
    if timeout_s is not None and timeout_s <= 0:
        raise ConfigError("sweep.point_timeout", "must be longer than 0")

    if "base" not in data:
        raise ConfigError("base", "missing: a [base] scenario table or base = 'scenario.toml'")
    raw_base = data["base"]
    base = read_toml(here / raw_base) if isinstance(raw_base, str) else _table(raw_base, "base")

    if "axes" not in data:
        raise ConfigError("axes", "missing: a table of scenario paths to lists of values")
    raw_axes = _table(data["axes"], "axes")
    if not raw_axes:
        raise ConfigError("axes", "a sweep needs at least one axis")
    axes: dict[str, list[Any]] = {}
    for path, values in raw_axes.items():
        where = f"axes.{path}"
        if not isinstance(values, list) or not values:
            raise ConfigError(where, "expected a non-empty list of values")
        seen: set[str] = set()
        for value in values:
            text = canonical_json(value)
            if text in seen:
                raise ConfigError(where, f"value {value!r} is listed twice")
            seen.add(text)
        axes[str(path)] = list(values)
    # Every path must reach into the base: a typo would otherwise make every point fail the same way.
    probe = copy.deepcopy(base)
    for path, values in axes.items():
        set_path(probe, path, values[0], field=f"axes.{path}")
    return Sweep(name=name, base=base, axes=axes, out=None if out is None else Path(out), point_timeout_s=timeout_s)


def set_path(doc: dict[str, Any], path: str, value: Any, *, field: str | None = None) -> None:
    """Set ``doc[a][b]...`` for the dotted ``path`` (a number indexes a list; missing tables are created)."""
    where = field or path
    parts = path.split(".")
    if any(not p for p in parts):
        raise ConfigError(where, "empty segment in the path")
    node: Any = doc
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        prefix = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(where, f"{prefix!r}: the list has {len(node)} entries, no index {part!r}")
            key: Any = int(part)
        elif isinstance(node, dict):
            key = part
            if not last and key not in node:
                node[key] = {}
        else:
            above = ".".join(parts[:depth]) or "the scenario"
            raise ConfigError(where, f"{above!r} is a {type(node).__name__} in the base scenario, not a table")
        if last:
            node[key] = copy.deepcopy(value)
        else:
            node = node[key]


def expand(sweep: Sweep) -> list[Point]:
    """The points of ``sweep``, each validated and hashed. Raises :class:`ConfigError` if two points resolve to
    the same scenario, or if every point is invalid (the sweep file is then wrong, not a point)."""
    points: list[Point] = []
    first_error: ConfigError | None = None
    paths = list(sweep.axes)
    by_hash: dict[str, Point] = {}
    for index, combo in enumerate(itertools.product(*sweep.axes.values())):
        values = dict(zip(paths, combo, strict=True))
        doc = copy.deepcopy(sweep.base)
        try:
            for path, value in values.items():
                set_path(doc, path, value, field=f"axes.{path}")
            point = Point(index, scenario_hash(doc), values, doc)
        except ConfigError as exc:
            first_error = first_error or exc
            point = Point(index, _digest({"v": HASH_VERSION, "invalid": doc}), values, doc, str(exc))
        if point.hash in by_hash:
            other = by_hash[point.hash]
            raise ConfigError(
                "axes", f"points {label(other.axes)} and {label(point.axes)} are the same scenario ({point.hash})"
            )
        by_hash[point.hash] = point
        points.append(point)
    if first_error is not None and all(p.error for p in points):
        raise ConfigError(first_error.field, f"{str(first_error).split(': ', 1)[-1]} (in every point of the sweep)")
    return points


def axis_value(value: Any, path: str = "") -> Any:
    """An axis value as a table cell: scalars as written, a ``policy`` table as its label
    (:func:`~snpsim.policy.policy_label`, if it is a valid policy), other tables and lists as compact JSON."""
    if isinstance(value, str | int | float):
        return value
    if path.rsplit(".", 1)[-1] == "policy" and isinstance(value, Mapping):
        try:
            return policy_label(value)
        except ConfigError:
            pass
    return canonical_json(value)


def label(axes: Mapping[str, Any]) -> str:
    """``policy=upm vms.0.vcpus=2``: a point's axis values in one line."""
    return " ".join(f"{k}={axis_value(v, k)}" for k, v in axes.items())


# -------------------------------------------------------------------------------------------------- worker


def run_point(scenario: dict[str, Any], time_limit_s: float | None = None) -> dict[str, Any]:
    """Run one point (on a Dask worker): ``summary``, ``timeline`` (Parquet bytes), ``error``, ``elapsed_s``.

    Any exception of the simulation is returned as ``error`` ("Type: message"), never raised; so is running
    longer than ``time_limit_s`` (``TimeLimitExceeded: stopped after ...``)."""
    import snpsim

    start = time.perf_counter()
    try:
        result = snpsim.run(scenario, time_limit_s=time_limit_s)
        buf = io.BytesIO()
        result.timeline.to_parquet(buf, index=False)
        out: dict[str, Any] = {"summary": dict(result.summary), "timeline": buf.getvalue(), "error": None}
    except Exception as exc:
        out = {"summary": None, "timeline": None, "error": f"{type(exc).__name__}: {exc}"}
    out["elapsed_s"] = time.perf_counter() - start
    return out


# -------------------------------------------------------------------------------------------------- store

_COLUMNS = ("hash", "status", "error", "axes", "scenario", *METRICS, "elapsed_s", "run_id", "finished_at")


class Store:
    """``OUT/sweep.duckdb`` and ``OUT/points/``: one writer (the driver), per-point atomic commits.

    The DuckDB connection is opened when needed; a writer's is closed ``IDLE_CLOSE_S`` after its last use (so that
    readers can open the file between bursts of commits), a reader's right after each read."""

    #: Seconds a writer keeps its connection without using it, and at most in all (then it closes it after its
    #: next use even if commits keep coming, so that a reader gets its turn).
    IDLE_CLOSE_S = 0.5
    MAX_HOLD_S = 2.0
    #: Seconds a writer / a reader waits for a file another process has open before giving up.
    WAIT_WRITER_S = 120.0
    WAIT_READER_S = 30.0

    def __init__(self, out: Path, *, read_only: bool = False) -> None:
        self.out = Path(out)
        self.path = self.out / STORE
        self.points_dir = self.out / POINTS
        self.read_only = read_only
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._depth = 0
        self._opened = 0.0
        if read_only and not self.path.exists():
            raise ConfigError(str(self.out), f"no sweep results in this folder (expected {STORE})")
        if read_only:
            return
        self.points_dir.mkdir(parents=True, exist_ok=True)
        metrics = ", ".join(f"{m} BIGINT" for m in METRICS)
        with self._connection() as con:
            con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
            con.execute(
                "CREATE TABLE IF NOT EXISTS runs (run_id INTEGER PRIMARY KEY, started_at TIMESTAMP, "
                "resume BOOLEAN, points INTEGER, skipped INTEGER, scheduler VARCHAR)"
            )
            con.execute(
                "CREATE TABLE IF NOT EXISTS points (hash VARCHAR PRIMARY KEY, status VARCHAR NOT NULL, "
                f"error VARCHAR, axes VARCHAR NOT NULL, scenario VARCHAR NOT NULL, {metrics}, elapsed_s DOUBLE, "
                "run_id INTEGER NOT NULL, finished_at TIMESTAMP)"
            )
        for leftover in self.points_dir.glob(".*.tmp"):  # a temporary file of a killed run
            leftover.unlink(missing_ok=True)

    def _open(self) -> duckdb.DuckDBPyConnection:
        import duckdb

        deadline = time.monotonic() + (self.WAIT_READER_S if self.read_only else self.WAIT_WRITER_S)
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=self.read_only)
            except duckdb.Error as exc:
                if "lock" not in str(exc).lower():
                    raise ConfigError(str(self.path), f"not a sweep store: {exc}") from None
                if time.monotonic() > deadline:
                    raise ConfigError(str(self.path), "in use by another process for too long") from None
                time.sleep(0.05)

    @contextmanager
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The open connection (opened if needed); when the outermost use ends, a reader's is closed and a
        writer's is closed after ``IDLE_CLOSE_S`` unless used again."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._con is None:
                self._con = self._open()
                self._opened = time.monotonic()
            self._depth += 1
            try:
                yield self._con
            finally:
                self._depth -= 1
                if self._depth == 0 and (self.read_only or time.monotonic() - self._opened > self.MAX_HOLD_S):
                    self._close()
                elif self._depth == 0:
                    self._timer = threading.Timer(self.IDLE_CLOSE_S, self._close)
                    self._timer.daemon = True
                    self._timer.start()

    def _close(self) -> None:
        with self._lock:
            if self._con is not None and self._depth == 0:
                self._con.close()
                self._con = None

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._close()

    def statuses(self) -> dict[str, str]:
        """Committed points: hash -> status."""
        with self._connection() as con:
            return dict(con.execute("SELECT hash, status FROM points").fetchall())

    def definition(self) -> dict[str, Any]:
        with self._connection() as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'definition'").fetchone()
        if row is None:
            raise ConfigError(str(self.path), "no sweep definition stored (the sweep never started)")
        data: dict[str, Any] = json.loads(row[0])
        return data

    def begin_run(self, sweep: Sweep, *, resume: bool, points: int, skipped: int, scheduler: str) -> int:
        """Record this invocation and the sweep definition; returns the run id."""
        with self._transaction() as con:
            (last,) = con.execute("SELECT coalesce(max(run_id), 0) FROM runs").fetchone() or (0,)
            run_id = int(last) + 1
            con.execute(
                "INSERT INTO runs VALUES (?, current_timestamp, ?, ?, ?, ?)",
                [run_id, resume, points, skipped, scheduler],
            )
            con.execute(
                "INSERT OR REPLACE INTO meta VALUES ('definition', ?)",
                [json.dumps(sweep.definition(), default=_json_default)],  # not key-sorted: axes keep file order
            )
        return run_id

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._connection() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def timeline_path(self, key: str) -> Path:
        return self.points_dir / f"{key}.parquet"

    def commit(self, point: Point, outcome: Mapping[str, Any], run_id: int) -> str:
        """Store one finished point atomically (timeline first, then its row); returns its status."""
        from snpsim.results import _atomic_write

        error = outcome.get("error")
        summary = outcome.get("summary")
        status = "ok" if error is None and summary is not None else "failed"
        path = self.timeline_path(point.hash)
        if status == "ok":
            try:
                _atomic_write(path, outcome["timeline"])
                _fsync(path)
                _fsync(path.parent)
            except OSError:
                path.unlink(missing_ok=True)
                raise
        metrics = [None if summary is None else summary.get(m) for m in METRICS]
        row = [
            point.hash,
            status,
            None if status == "ok" else str(error or "no result"),
            canonical_json(point.axes),
            canonical_json(point.scenario),
            *metrics,
            outcome.get("elapsed_s"),
            run_id,
        ]
        marks = ", ".join("?" * (len(_COLUMNS) - 1))
        import duckdb

        try:
            with self._transaction() as con:
                # INSERT OR REPLACE only ever replaces a failed point being retried: the key is the primary key.
                con.execute(f"INSERT OR REPLACE INTO points VALUES ({marks}, current_timestamp)", row)
        except duckdb.Error as exc:  # the row is not committed: its timeline goes too (resume runs it again)
            if status == "ok":
                path.unlink(missing_ok=True)
            raise OSError(f"cannot commit the point to {self.path}: {exc}") from None
        return status

    def frame(self) -> pd.DataFrame:
        """Every committed point (store order): the stored columns, metrics as nullable integers."""
        with self._connection() as con:
            frame: pd.DataFrame = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM points").df()
        for metric in METRICS:
            frame[metric] = frame[metric].astype("Int64")
        return frame


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def results_frame(definition: Mapping[str, Any], stored: pd.DataFrame) -> pd.DataFrame:
    """One row per stored point in grid order: hash, status, error, one column per axis, metrics, elapsed_s,
    run_id."""
    axes: dict[str, list[Any]] = dict(definition["axes"])
    rank = {path: {canonical_json(v): i for i, v in enumerate(values)} for path, values in axes.items()}
    records = []
    for row in stored.itertuples(index=False):
        point_axes = json.loads(cast(str, row.axes))
        order = tuple(rank[p].get(canonical_json(point_axes.get(p)), len(rank[p])) for p in axes)
        records.append((order, row.hash, {p: axis_value(point_axes.get(p), p) for p in axes}))
    records.sort(key=lambda r: r[0])
    by_hash = stored.set_index("hash")
    hashes = [h for _, h, _ in records]
    rows = by_hash.loc[hashes] if hashes else by_hash.iloc[:0]
    frame = pd.DataFrame({"hash": hashes})
    frame["status"] = rows["status"].to_numpy()
    frame["error"] = rows["error"].to_numpy()
    for path in axes:
        frame[path] = [a[path] for _, _, a in records]
    for metric in METRICS:
        frame[metric] = rows[metric].astype("Int64").to_numpy()
    frame["elapsed_s"] = rows["elapsed_s"].to_numpy()
    frame["run_id"] = rows["run_id"].to_numpy()
    return frame


def read(out: str | Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """A sweep results folder: (the stored definition, :func:`results_frame` of every committed point); works
    while the sweep runs (its committed points so far)."""
    store = Store(Path(out), read_only=True)
    try:
        with store._connection():  # one connection for both reads: a consistent view
            definition = store.definition()
            frame = store.frame()
        return definition, results_frame(definition, frame)
    finally:
        store.close()


def is_results(folder: str | Path) -> bool:
    """Whether ``folder`` holds a sweep results store."""
    return (Path(folder) / STORE).is_file()


# -------------------------------------------------------------------------------------------------- execution


class Listener(Protocol):
    """Progress of a sweep, told by the driver as points are committed."""

    def start(self, total: int, done: int, failed: int) -> None: ...

    def point(self, point: Point, status: str, error: str | None) -> None: ...


@dataclass
class SweepRun:
    """What one invocation did, and the results of the whole sweep."""

    name: str
    out: Path
    axes: list[str]
    total: int
    skipped: int
    ran: int
    failed: int
    run_id: int
    elapsed_s: float
    frame: pd.DataFrame
    #: why the sweep stopped early because the store could not be written (None: it did not)
    write_error: str | None = None


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextmanager
def _client(scheduler: str | None, workers: int) -> Iterator[Any]:
    """A Dask client: on a local cluster of ``workers`` single-threaded processes, or on ``scheduler``."""
    from distributed import Client, LocalCluster

    quiet = logging.ERROR
    loggers = [logging.getLogger(n) for n in ("distributed", "tornado", "bokeh")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(quiet)
    try:
        with ExitStack() as stack:
            if scheduler is None:
                cluster = stack.enter_context(
                    LocalCluster(
                        n_workers=workers,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=None,
                        silence_logs=quiet,
                    )
                )
                client = stack.enter_context(Client(cluster))
            else:
                try:
                    client = stack.enter_context(Client(scheduler, timeout="20s"))
                except (OSError, TimeoutError, ValueError) as exc:
                    raise ConfigError("scheduler", f"cannot connect to {scheduler}: {exc}") from None
            yield client
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _check_out(folder: Path) -> None:
    """Refuse, before anything is written, a sweep ``out`` that cannot hold a sweep store."""
    from snpsim.results import check_folder, is_run_folder

    check_folder(folder, "out")
    if is_run_folder(folder):
        raise ConfigError("out", f"{folder} holds runs of 'snpsim run' or 'replay', not a sweep; choose another folder")
    if folder.is_dir() and not (folder / STORE).exists():
        # a sweep killed before its store existed leaves at most points/ (and the lock file)
        others = [p for p in folder.iterdir() if not p.name.startswith(".") and p.name != POINTS]
        if others:
            raise ConfigError("out", f"{folder} is not empty and holds no sweep; choose a new folder")


@contextmanager
def _writer_lock(folder: Path) -> Iterator[None]:
    """The store's single-writer lock (``OUT/.sweep.lock``, exclusive ``flock``, released when the process ends)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError("out", f"{folder}: another sweep is running into this folder") from None
        yield
    finally:
        os.close(fd)


def run(
    sweep: Sweep | Mapping[str, Any] | str | Path,
    *,
    out: str | Path | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    resume: bool = False,
    retry_failed: bool = False,
    listener: Listener | None = None,
    point_timeout: float | None = None,
) -> SweepRun:
    """Run a sweep into its results store (see the module docstring); returns what this invocation did.

    ``point_timeout``: wall-clock seconds per point (default: the sweep file's ``point_timeout``, else none)."""
    loaded = sweep if isinstance(sweep, Sweep) else load(sweep)
    folder = Path(out) if out is not None else (loaded.out or DEFAULT_OUT)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError("workers", f"expected a number of worker processes >= 1, got {workers!r}")
    if workers is not None and scheduler is not None:
        raise ConfigError("workers", "the workers of a running scheduler are its own; give one or the other")
    if point_timeout is not None and (
        isinstance(point_timeout, bool) or not isinstance(point_timeout, int | float) or not point_timeout > 0
    ):
        raise ConfigError("point_timeout", f"expected a number of seconds > 0, got {point_timeout!r}")
    limit = point_timeout if point_timeout is not None else loaded.point_timeout_s
    points = loaded.points()
    started = time.perf_counter()
    _check_out(folder)
    with _writer_lock(folder):
        store = Store(folder)
        try:
            committed = store.statuses()
            if committed and not resume:
                raise ConfigError(
                    "out",
                    f"{folder} already holds {len(committed)} points of a sweep; continue it with --resume "
                    "(resume=True) or choose another --out",
                )
            foreign = set(committed) - {p.hash for p in points}
            if foreign:
                raise ConfigError(
                    "out", f"{folder} holds {len(foreign)} points that are not in this sweep; choose another --out"
                )
            done = {h for h, s in committed.items() if s == "ok" or not retry_failed}
            todo = [p for p in points if p.hash not in done]
            runnable = [p for p in todo if p.error is None]
            failed = sum(1 for h in done if committed[h] != "ok")
            if listener is not None:
                listener.start(len(points), len(done), failed)
            ran = failed_now = 0
            write_error: str | None = None
            with ExitStack() as stack:
                # Connect first: a scheduler that cannot be reached leaves the store as it was.
                n = min(workers or default_workers(), len(runnable))
                client = stack.enter_context(_client(scheduler, n)) if runnable else None
                where = scheduler or "local"
                run_id = store.begin_run(loaded, resume=resume, points=len(points), skipped=len(done), scheduler=where)

                def record(point: Point, outcome: Mapping[str, Any]) -> bool:
                    """Commit one point; False (stop the sweep) if the store cannot be written."""
                    nonlocal ran, failed_now, write_error
                    try:
                        status = store.commit(point, outcome, run_id)
                    except OSError as exc:
                        write_error = f"cannot write to {folder}: {exc.strerror or exc}"
                        return False
                    ran += 1
                    failed_now += status != "ok"
                    if listener is not None:
                        listener.point(point, status, None if status == "ok" else str(outcome.get("error")))
                    return True

                invalid = (p for p in todo if p.error is not None)
                if all(record(point, {"error": point.error, "elapsed_s": 0.0}) for point in invalid) and client:
                    _execute(client, runnable, record, limit)
            frame = results_frame(loaded.definition(), store.frame())
        finally:
            store.close()
    return SweepRun(
        name=loaded.name,
        out=folder,
        axes=list(loaded.axes),
        total=len(points),
        skipped=len(done),
        ran=ran,
        failed=failed_now,
        run_id=run_id,
        elapsed_s=time.perf_counter() - started,
        frame=frame,
        write_error=write_error,
    )


def _execute(
    client: Any,
    points: list[Point],
    record: Callable[[Point, Mapping[str, Any]], bool],
    time_limit_s: float | None,
) -> None:
    """Submit every point, and record each as it completes (in this process: the only writer of the store);
    when ``record`` says stop, the points still running are cancelled."""
    import uuid

    from distributed import as_completed

    token = uuid.uuid4().hex[:8]
    keys = [f"snpsim-point-{p.hash}-{token}" for p in points]
    by_key = dict(zip(keys, points, strict=True))
    scenarios = [p.scenario for p in points]
    futures = client.map(run_point, scenarios, [time_limit_s] * len(points), key=keys, pure=False)
    for future, outcome in as_completed(futures, with_results=True, raise_errors=False):
        point = by_key.pop(future.key)
        if isinstance(outcome, BaseException):  # the task itself failed (worker lost, unpicklable, ...)
            outcome = {"error": f"{type(outcome).__name__}: {outcome}", "elapsed_s": None}
        future.release()
        if not record(point, outcome):
            client.cancel(futures)
            return


class ProgressBar:
    """A rich progress bar (points done of total, failed, ETA), used as a context manager around :func:`run`."""

    def __init__(self, console: Any = None, *, disable: bool = False) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]points"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("failed {task.fields[failed]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=disable,
        )
        self._task: Any = None
        self._failed = 0

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._progress.__exit__(None, None, None)

    def start(self, total: int, done: int, failed: int) -> None:
        """Show the bar (not before: a sweep refused before it starts prints only its error)."""
        self._progress.__enter__()
        self._failed = failed
        self._task = self._progress.add_task("points", total=total, completed=done, failed=failed)

    def point(self, point: Point, status: str, error: str | None) -> None:
        self._failed += status != "ok"
        self._progress.update(self._task, advance=1, failed=self._failed)
