"""Fit the cost model to metrics measured on real SNP hardware (``snpsim calibrate MEASUREMENTS.csv``).

No published latency exists for most SNP operations (:mod:`snpsim.hw.costs`: the defaults are assumptions with a
plausible range). A user who can boot SNP guests measures a metric - usually the boot time - for a few scenarios
(guest size, vCPUs, preset, lazy or eager acceptance; ``docs/calibrate.md`` has the CSV format and an example),
and this module finds the costs, each inside its declared ``[lo, hi]`` range, whose simulations reproduce the
measurements best (``scipy.optimize.least_squares``).

How, and why it is fast:

1. **Linearise at the start point** (the defaults, or ``start``). Each measurement's scenario is simulated once.
   For a boot time (``boot_time_ns``, ``vms[N].boot_ns``) that one run gives the exact derivative with respect to
   every cost: the boot is one sequential path (QEMU's main thread creating the VM, then the boot vCPU running
   every boot event, :class:`snpsim.runner.VmRecord`), so ``boot = compute + sum(count_c x cost_c)`` and the
   derivative by ``cost_c`` is ``count_c``, the number of times the path paid it (``VmRecord.boot_ops`` through
   :func:`snpsim.hw.costs.counts_by_cost`). A finite-difference pass would find the same numbers with one more run
   per cost. For any other metric the derivatives *are* a finite-difference pass: one more run per cost, each
   cost moved by 10 % (at least 1 ns), inside its range.
2. **Choose the costs** (unless told which): those the measurements are *sensitive* to - moving the cost across
   its range moves some measurement by at least what it resolves: one standard deviation where the row gives one,
   else ``SENSITIVITY`` (1 %) of the measured value - and, of those, the ones the
   measurements can tell apart: greedily in order of sensitivity, a cost is kept when its column of derivatives
   has at least ``IDENTIFIABLE`` (5 %) of its length outside the span of the columns kept before it. A cost that
   every measurement pays together with another (each accepted 4K page costs one RMPUPDATE, one PVALIDATE and one
   page clear under ``upstream``) cannot be fitted apart from it: it is kept at its start value and named, with
   the cost it moves with. Measurements under several presets (hugetlb's 2M RMP entries, pre-UPM's lack of
   guest_memfd attributes) and both acceptance modes separate more costs.
3. **Fit the linear model** with bounded least squares on the residuals ``(model - measured) / scale``, where
   the scale is the row's ``stddev`` if given, else the measured value (relative errors: a 64 GiB boot does not
   outweigh a 1 GiB one). Costs are whole ns: the fit is rounded. With boot times the fit has one more unknown,
   the **boot offset**, a constant added to every simulated boot (in ``OFFSET_RANGE``): the model's guest computes
   for a fixed ~1 s of boot phases (``snpsim.guest.linux.BOOT_PHASES_NS``, an assumption) and does not run the
   firmware's or the kernel's own code, SNP_LAUNCH measurement or device set-up, which a real boot spends time
   on whatever the memory costs; without the offset the costs would be bent to explain that time. It is
   reported (``Calibration.boot_offset``), not written into the ``[costs]`` table (it is no cost of the model),
   and ``offset=False`` (``--no-offset``) fits the costs alone. A cost every measured boot pays about equally
   often (the ~600 VMGEXITs of any boot) moves with the offset and is kept.
4. **Verify by simulation**: every scenario runs again with the fitted costs. If a simulation differs from the
   linear model's prediction (more than one VM on the host, where who pays a shared cost depends on timing; or a
   finite-difference metric), the model is linearised again at the new point and the fit repeated (Gauss-Newton),
   at most ``MAX_ITERATIONS`` times. The residuals reported are the simulations', never the linear model's.

Uncertainty: the standard error of each fitted cost from the Jacobian, ``sqrt(diag((J^T J)^-1))`` in units of
the rows' ``stddev`` when every row gives one, else scaled by the residual variance (needs more measurements
than fitted costs). A cost that ends at a bound of its range has no standard error (the range decided it).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from snpsim.errors import ConfigError
from snpsim.guest.linux import BOOT_END_NS
from snpsim.hw.costs import COSTS, CostModel, counts_by_cost
from snpsim.metrics import METRICS
from snpsim.policy import presets
from snpsim.scenario import Scenario, load, read_toml
from snpsim.units import format_bytes, format_duration, parse_duration, parse_size

#: A cost is a candidate when moving it across its range moves some measurement by this share of its value (or,
#: for a row with a stddev, by one standard deviation).
SENSITIVITY = 0.01
#: A candidate is fitted when this share of its (normalised) derivative column lies outside the span of the
#: columns of the costs fitted before it.
IDENTIFIABLE = 0.05
#: A fitted cost whose standard error exceeds this share of its value is called poorly determined.
POORLY_DETERMINED = 0.5
#: Linearise-fit-simulate rounds at most.
MAX_ITERATIONS = 5
#: Finite-difference step: this share of the cost (at least 1 ns).
FD_STEP = 0.1
#: The boot offset (module docstring): a constant added to every simulated boot time, fitted with the costs.
OFFSET = "boot_offset_ns"
#: Its range: the model's whole guest compute less (a real boot's own work is faster than the model's fixed
#: phases) up to 10 minutes more (firmware, launch measurement, a slow kernel).
OFFSET_RANGE = (-BOOT_END_NS, 600 * 10**9)

#: The columns of a measurements CSV, and what each one is (docs/calibrate.md).
COLUMNS: dict[str, str] = {
    "name": "a label for the row (default: the CSV line)",
    "scenario": "a scenario TOML file (relative to the CSV's folder) the other columns override",
    "preset": "the policy: a preset name (default: the scenario's, or upstream)",
    "memory": "guest RAM (vms[0].memory), e.g. 16G; needed without a scenario file",
    "vcpus": "guest vCPUs (vms[0].vcpus; default 1)",
    "lazy_accept": "true (accept_memory=lazy, the default) or false (eager)",
    "workload": "the guest's workload (default linux-boot, idle after the boot)",
    "host_memory": "host RAM (default: twice the guest's, at least 8G)",
    "duration": "simulated time (default 1h; a boot-time run stops when the guest has booted)",
    "seed": "RNG seed (default 1)",
    "metric": "what was measured (default boot_time_ns): a metric name, or vms[N].FIELD",
    "value": "the measured value: a duration with its unit for *_ns metrics (4.21s), a size for bytes, else a number",
    "stddev": "optional: the measurement's standard deviation, in the value's unit; weights the row",
}
#: Fields of :class:`snpsim.runner.VmRecord` a measurement may name as ``vms[N].FIELD``.
VM_FIELDS = ("boot_ns", "conversion_ns_p50", "conversion_ns_p90", "conversion_ns_p99", "conversion_ns_max", "cpu_ns")
#: The metrics that are boot times, linear in the costs (module docstring, step 1).
_VM_METRIC = re.compile(r"^vms\[(\d+)\]\.(\w+)$")
#: Which column set the scenario field an error names.
_FIELD_COLUMN = {
    "vms[0].memory": "memory",
    "vms[0].vcpus": "vcpus",
    "vms[0].workload": "workload",
    "vms[0].guest.lazy_accept": "lazy_accept",
    "vms[0].guest": "lazy_accept",
    "host.memory": "host_memory",
    "vms": "host_memory",
    "policy": "preset",
    "duration": "duration",
    "seed": "seed",
}
#: Default host RAM: twice the guest's, at least this.
MIN_HOST_BYTES = 8 << 30


# ------------------------------------------------------------------------------------------------ measurements


@dataclass(frozen=True)
class Measurement:
    """One row of a measurements CSV: a scenario, the metric measured and its value (in the metric's unit)."""

    line: int
    name: str
    scenario: Scenario
    metric: str
    value: float
    stddev: float | None = None
    #: the CSV it was read from (for messages)
    source: str = ""

    @property
    def where(self) -> str:
        """The row in messages: ``boot.csv line 3 (big-eager)``."""
        return f"{self.source + ' ' if self.source else ''}line {self.line} ({self.name})"

    @property
    def scale(self) -> float:
        """What one unit of residual is: the standard deviation, or the measured value (a relative error)."""
        return self.stddev if self.stddev is not None else abs(self.value)


def boot_vm(metric: str) -> int | None:
    """The index of the VM whose boot time ``metric`` is (``boot_time_ns`` is the first VM's), or None."""
    if metric == "boot_time_ns":
        return 0
    m = _VM_METRIC.match(metric)
    return int(m.group(1)) if m and m.group(2) == "boot_ns" else None


def _metric(text: str, scenario: Scenario, where: str) -> str:
    metric = text or "boot_time_ns"
    if metric in METRICS:
        return metric
    m = _VM_METRIC.match(metric)
    if m is None or m.group(2) not in VM_FIELDS:
        shown = ", ".join(f"vms[N].{f}" for f in VM_FIELDS)
        raise ConfigError(where, f"unknown metric {metric!r} (a metric of DESIGN.md, or {shown})")
    vms = sum(v.count for v in scenario.vms)
    if int(m.group(1)) >= vms:
        raise ConfigError(where, f"{metric}: the scenario starts {vms} VM{'s' * (vms != 1)} (vms[0] is the first)")
    return metric


def unit_of(metric: str) -> str:
    """``ns``, ``count`` or ``bytes``: the unit of a metric, as :func:`snpsim.units.format_metric` reads names
    (``vms[0].conversion_ns_p50`` is ns)."""
    if re.search(r"_ns(_|$)", metric):
        return "ns"
    return "count" if metric.endswith(("_count", "_splits")) else "bytes"


def _quantity(text: str, metric: str, where: str) -> float:
    """A value in ``metric``'s unit: durations need a unit (as in scenarios), sizes take K/M/G suffixes."""
    unit = unit_of(metric)
    if unit == "ns":
        return float(parse_duration(text, where))
    if unit == "bytes":
        return float(parse_size(text, where))
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(where, f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ConfigError(where, f"expected a finite number, got {text!r}")
    return value


def _bool(text: str, where: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "yes", "1", "lazy"):
        return True
    if low in ("false", "no", "0", "eager"):
        return False
    raise ConfigError(where, f"expected true or false, got {text!r}")


def _int(text: str, where: str, lo: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(where, f"expected an integer, got {text!r}") from None
    if value < lo:
        raise ConfigError(where, f"must be >= {lo}, got {value}")
    return value


def boot_scenario(
    memory: str | int,
    vcpus: int = 1,
    preset: str = "upstream",
    lazy_accept: bool = True,
    host_memory: str | int | None = None,
) -> dict[str, Any]:
    """A boot-only scenario: one Linux guest that boots and then idles (``linux-boot`` without idle touches) on a
    host of ``host_memory`` (default: twice the guest's RAM, at least 8G), for up to an hour of simulated time.
    What a measurements row without a scenario file stands for (docs/calibrate.md), and the runs of the boot-time
    table (benchmarks/boot_time.py, docs/boot-time.md)."""
    guest = parse_size(memory, "memory")
    return {
        "duration": "1h",
        "samples": 2,
        "policy": preset,
        "host": {"memory": host_memory if host_memory is not None else max(MIN_HOST_BYTES, 2 * guest)},
        "vms": [
            {
                "memory": memory,
                "vcpus": vcpus,
                "workload": "linux-boot",
                "params": {"touch_rate_per_s": 0},
                "guest": {"lazy_accept": lazy_accept},
            }
        ],
    }


def _scenario(cells: Mapping[str, str], base_dir: Path, where: Callable[[str], str]) -> dict[str, Any]:
    """The scenario dict of one row: its scenario file (or the boot-only default) with the columns applied."""
    if cells.get("scenario"):
        path = base_dir / cells["scenario"]
        try:
            data = read_toml(path)
        except ConfigError as exc:
            raise ConfigError(where("scenario"), f"{exc.field}: {exc.message}") from None
        if "costs" in data:
            raise ConfigError(
                where("scenario"), f"{path} has a [costs] table: calibration fits the costs (use --start)"
            )
        vms = data.get("vms")
        if not isinstance(vms, list) or not vms or not isinstance(vms[0], Mapping):
            raise ConfigError(where("scenario"), f"{path}: vms: expected a list of VM tables")
        data = {**data, "vms": [dict(vms[0]), *vms[1:]]}
    else:
        if not cells.get("memory"):
            raise ConfigError(where("memory"), "missing: the guest's RAM, e.g. 16G (or a scenario file)")
        try:
            data = boot_scenario(cells["memory"])
        except ConfigError as exc:
            raise ConfigError(where("memory"), exc.message) from None
    vm = data["vms"][0]
    if cells.get("memory"):
        vm["memory"] = cells["memory"]
    if cells.get("vcpus"):
        vm["vcpus"] = _int(cells["vcpus"], where("vcpus"), 1)
    if cells.get("workload"):
        vm["workload"] = cells["workload"]
        if not cells.get("scenario"):
            vm.pop("params", None)  # the default's params are linux-boot's
    if cells.get("lazy_accept"):
        guest = vm.get("guest", {})
        lazy = _bool(cells["lazy_accept"], where("lazy_accept"))
        vm["guest"] = {**(guest if isinstance(guest, Mapping) else {}), "lazy_accept": lazy}
    if cells.get("preset"):
        if cells["preset"] not in presets:
            raise ConfigError(where("preset"), f"unknown preset {cells['preset']!r} (presets: {', '.join(presets)})")
        data["policy"] = cells["preset"]
    host = data.get("host", {})
    if isinstance(host, Mapping):  # anything else: load() names host
        host = dict(host)
        if cells.get("host_memory"):
            host["memory"] = cells["host_memory"]
        elif not cells.get("scenario"):
            host["memory"] = max(MIN_HOST_BYTES, 2 * parse_size(vm["memory"], where("memory")))
        data["host"] = host
    if cells.get("duration"):
        data["duration"] = cells["duration"]
    if cells.get("seed"):
        data["seed"] = _int(cells["seed"], where("seed"), 0)
    data["samples"] = 2  # the fit reads final values only
    return data


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line, cells)`` of every non-blank, non-comment line of the CSV (``#`` in the first cell)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"cannot read: {exc}") from None
    reader = csv.reader(text.splitlines(), strict=True)
    try:
        for cells in reader:
            if not cells or all(not c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
                continue
            yield reader.line_num, [c.strip() for c in cells]
    except csv.Error as exc:
        raise ConfigError(f"{path} line {reader.line_num}", f"not valid CSV: {exc}") from None


def read_measurements(path: str | Path) -> list[Measurement]:
    """The measurements of a CSV file (columns: :data:`COLUMNS`), every row validated and its scenario loaded.

    Errors are :class:`ConfigError` naming the file (as given), the line and the column: ``boot.csv line 3, column
    memory``."""
    path = Path(path)
    rows = _rows(path)
    first = next(rows, None)
    if first is None:
        raise ConfigError(str(path), "empty: expected a header row (e.g. name,memory,vcpus,preset,value)")
    header_line, header = first
    for col in header:
        if col not in COLUMNS:
            raise ConfigError(
                f"{path} line {header_line}, column {col or '(empty)'}",
                f"unknown column (columns: {', '.join(COLUMNS)})",
            )
    if len(set(header)) != len(header):
        dup = next(c for c in header if header.count(c) > 1)
        raise ConfigError(f"{path} line {header_line}, column {dup}", "listed twice")
    if "value" not in header:
        raise ConfigError(f"{path} line {header_line}", "no value column (the measured values)")
    out = []
    for line, cells in rows:
        if len(cells) != len(header):
            raise ConfigError(f"{path} line {line}", f"{len(cells)} fields, the header has {len(header)}")
        row = dict(zip(header, cells, strict=True))

        def where(col: str, line: int = line) -> str:
            return f"{path} line {line}, column {col}"

        data = _scenario(row, path.parent, where)
        try:
            scenario = load(data)
        except ConfigError as exc:
            column = _FIELD_COLUMN.get(exc.field)
            if column is not None and (row.get(column) or not row.get("scenario")):
                raise ConfigError(where(column), exc.message) from None  # a column set it (or its default did)
            if row.get("scenario"):
                raise ConfigError(where("scenario"), f"{row['scenario']}: {exc}") from None
            raise ConfigError(f"{path} line {line}", str(exc)) from None
        metric = _metric(row.get("metric", ""), scenario, where("metric"))
        if not row["value"]:
            raise ConfigError(where("value"), "missing: the measured value")
        value = _quantity(row["value"], metric, where("value"))
        stddev = None
        if row.get("stddev"):
            stddev = _quantity(row["stddev"], metric, where("stddev"))
            if not stddev > 0:
                raise ConfigError(where("stddev"), f"must be > 0, got {row['stddev']!r}")
        elif value == 0:
            raise ConfigError(where("value"), "a measured 0 needs a stddev column (residuals are relative to it)")
        if value < 0:
            raise ConfigError(where("value"), f"must be >= 0, got {row['value']!r}")
        out.append(Measurement(line, row.get("name") or f"line {line}", scenario, metric, value, stddev, str(path)))
    if not out:
        raise ConfigError(str(path), "no measurements (only a header)")
    return out


# ------------------------------------------------------------------------------------------------ simulations


@dataclass(frozen=True)
class Sample:
    """One simulation of a measurement's scenario: the metric's value and, for a boot time, how many times the
    boot paid each cost (the derivative, module docstring). ``problem`` says why there is no value."""

    value: float | None
    counts: dict[str, int] | None = None
    problem: str | None = None


def simulate(scenario: Scenario, metric: str) -> Sample:
    """Run ``scenario`` (until the measured VM has booted, for a boot time) and read ``metric``."""
    from snpsim.runner import Simulation

    booting = boot_vm(metric)
    result = Simulation(scenario, stop_after_boot=booting).run()
    m = _VM_METRIC.match(metric)
    if m is None and booting is None:
        return Sample(float(result.summary[metric]))
    index = int(m.group(1)) if m else 0
    if index >= len(result.vms):
        return Sample(None, problem=f"{metric}: the run created {len(result.vms)} VMs")
    record = result.vms[index]
    if record.oom:
        return Sample(None, problem=f"the host could not back vms[{index}] (give a larger host_memory)")
    if booting is not None:
        if record.boot_ns is None or record.boot_ops is None:
            return Sample(None, problem="the guest did not finish booting within the duration (give a longer one)")
        return Sample(float(record.boot_ns), counts_by_cost(record.boot_ops))
    assert m is not None
    value = getattr(record, m.group(2))
    if value is None:
        return Sample(None, problem=f"{metric} has no value in this scenario (no conversions?)")
    return Sample(float(value))


def _job(args: tuple[Scenario, str]) -> Sample:
    return simulate(*args)


class _Runner:
    """Runs simulations (in worker processes when ``workers`` > 1) and reports progress as (done, total)."""

    def __init__(self, pool: Executor | None, progress: Callable[[int, int], None] | None) -> None:
        self.pool = pool
        self.progress = progress
        self.done = 0
        self.total = 0

    def run(self, jobs: list[tuple[Scenario, str]]) -> list[Sample]:
        self.total += len(jobs)
        self._tell()
        if self.pool is None or len(jobs) < 2:
            out = []
            for job in jobs:
                out.append(_job(job))
                self.done += 1
                self._tell()
            return out
        results: list[Sample] = []
        for sample in self.pool.map(_job, jobs):
            results.append(sample)
            self.done += 1
            self._tell()
        return results

    def _tell(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)


@contextmanager
def _runner(workers: int, progress: Callable[[int, int], None] | None) -> Iterator[_Runner]:
    if workers <= 1:
        yield _Runner(None, progress)
        return
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield _Runner(pool, progress)


# ------------------------------------------------------------------------------------------------ the fit


@dataclass(frozen=True)
class FittedCost:
    """One cost of the calibration: where it started and ended, its range, standard error and what happened to
    it: ``fitted``, ``at bound``, ``insensitive`` or ``moves with <cost>`` (not identifiable, kept)."""

    name: str
    start: int
    fitted: int
    lo: int
    hi: int
    stderr: float | None
    status: str


@dataclass(frozen=True)
class RowFit:
    """One measurement and what the model says: with the start costs and with the fitted ones (simulated)."""

    line: int
    name: str
    metric: str
    measured: float
    stddev: float | None
    start: float
    fitted: float

    @property
    def residual(self) -> float:
        """(fitted - measured) / scale: relative error, or in standard deviations with ``stddev``."""
        return (self.fitted - self.measured) / (self.stddev if self.stddev is not None else abs(self.measured))

    @property
    def start_residual(self) -> float:
        return (self.start - self.measured) / (self.stddev if self.stddev is not None else abs(self.measured))


@dataclass
class Calibration:
    """What :func:`calibrate` found: the fitted cost model, each cost's fate, each row's residuals."""

    costs: CostModel
    fitted: list[FittedCost]
    rows: list[RowFit]
    iterations: int
    simulations: int
    #: the largest difference between a verifying simulation and the linear model's prediction (residual units)
    linear_error: float
    notes: list[str] = field(default_factory=list)
    #: the boot offset (module docstring; None when not fitted): what the measured boots spend beyond the model's
    boot_offset: FittedCost | None = None

    @property
    def rms(self) -> float:
        return float(np.sqrt(np.mean([r.residual**2 for r in self.rows])))

    @property
    def start_rms(self) -> float:
        return float(np.sqrt(np.mean([r.start_residual**2 for r in self.rows])))

    def as_dict(self) -> dict[str, Any]:
        return {
            "costs": self.costs.as_dict(),
            "fit": [dataclasses.asdict(f) for f in self.fitted],
            "measurements": [
                {**dataclasses.asdict(r), "residual": r.residual, "start_residual": r.start_residual} for r in self.rows
            ],
            "rms": self.rms,
            "start_rms": self.start_rms,
            "iterations": self.iterations,
            "simulations": self.simulations,
            "linear_error": self.linear_error,
            "notes": self.notes,
            "boot_offset": None if self.boot_offset is None else dataclasses.asdict(self.boot_offset),
        }


def _with_costs(scenario: Scenario, costs: Mapping[str, int]) -> Scenario:
    return dataclasses.replace(scenario, costs=CostModel(**costs))


def _fd_step(name: str, value: int) -> int:
    """A finite-difference step for ``name`` at ``value``: 10 % (at least 1 ns), backwards at the top of the range."""
    spec = COSTS[name]
    h = max(1, round(FD_STEP * value))
    return h if value + h <= spec.hi else -min(h, value - spec.lo)


def _linearise(
    runner: _Runner,
    rows: Sequence[Measurement],
    costs: Mapping[str, int],
    names: Sequence[str],
    known: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The model's values at ``costs`` and its derivatives by ``names`` (metric units per ns), one row each.

    Boot times come with their derivatives (the counts); other metrics take one more run per cost (finite
    differences). ``known``: the values and count derivatives at ``costs`` already simulated (only the finite
    differences are run)."""
    fd_rows = [i for i, m in enumerate(rows) if boot_vm(m.metric) is None]
    if known is None:
        values, jac = _simulate_rows(runner, rows, costs, names)
    else:
        values, jac = known[0], known[1].copy()
    steps = {name: _fd_step(name, costs[name]) for name in names}
    jobs = [
        (_with_costs(rows[i].scenario, {**costs, n: costs[n] + steps[n]}), rows[i].metric)
        for i in fd_rows
        for n in names
    ]
    samples = iter(runner.run(jobs))
    for i in fd_rows:
        for j, n in enumerate(names):
            s = next(samples)
            if s.value is None:
                raise ConfigError(rows[i].where, s.problem or "no value")
            jac[i, j] = (s.value - values[i]) / steps[n] if steps[n] else 0.0
    return values, jac


def _simulate_rows(
    runner: _Runner, rows: Sequence[Measurement], costs: Mapping[str, int], names: Sequence[str]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Each row's value at ``costs``, and its derivatives by ``names`` where a boot's counts give them (else 0)."""
    samples = runner.run([(_with_costs(m.scenario, costs), m.metric) for m in rows])
    values = np.zeros(len(rows))
    jac = np.zeros((len(rows), len(names)))
    for i, (m, s) in enumerate(zip(rows, samples, strict=True)):
        if s.value is None:
            raise ConfigError(m.where, s.problem or "no value")
        values[i] = s.value
        if s.counts is not None:
            jac[i] = [s.counts[n] for n in names]
    return values, jac


def _choose(
    jac: npt.NDArray[np.float64],
    scale: npt.NDArray[np.float64],
    names: Sequence[str],
    explicit: bool,
    forced: npt.NDArray[np.float64] | None = None,
    resolution: npt.NDArray[np.float64] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The costs to fit (module docstring, step 2) and why each other one is not: ``{name: status}``.
    ``forced``: the derivative column of a parameter fitted in any case (the boot offset), spanned first;
    ``resolution``: the smallest change each row resolves, in residual units (default: 1)."""
    ranges = np.array([COSTS[n].hi - COSTS[n].lo for n in names], dtype=float)
    scaled = jac / scale[:, None]
    # how far each cost moves each row across its range, in units of what the row can resolve: one standard
    # deviation where given, else SENSITIVITY of the measured value
    per_row = np.ones(len(scale)) if resolution is None else resolution
    sensitivity = (np.abs(scaled) / per_row[:, None]).max(axis=0) * ranges if len(scale) else np.zeros(len(names))
    threshold = 0.0 if explicit else 1.0
    why: dict[str, str] = {}
    order = sorted(range(len(names)), key=lambda j: -sensitivity[j])
    columns: list[tuple[str, npt.NDArray[np.float64]]] = []  # (name, unit column) of what is fitted
    basis: list[npt.NDArray[np.float64]] = []
    if forced is not None and np.any(forced):
        col = forced / scale / np.linalg.norm(forced / scale)
        columns.append((OFFSET, col))
        basis.append(col)
    kept: list[int] = []
    for j in order:
        if sensitivity[j] <= threshold:
            why[names[j]] = "insensitive"
            continue
        col = scaled[:, j] / np.linalg.norm(scaled[:, j])
        rest = col - sum((b @ col) * b for b in basis) if basis else col
        if np.linalg.norm(rest) >= IDENTIFIABLE:
            kept.append(j)
            columns.append((names[j], col))
            basis.append(rest / np.linalg.norm(rest))
        else:  # the fitted column that carries most of it
            span = np.column_stack([c[1] for c in columns])
            coef = np.linalg.lstsq(span, col, rcond=None)[0]
            partner = columns[int(np.argmax(np.abs(coef)))][0]
            why[names[j]] = f"moves with {'the boot offset' if partner == OFFSET else partner}"
    return [names[j] for j in sorted(kept)], why


def _solve(
    values: npt.NDArray[np.float64],
    jac: npt.NDArray[np.float64],
    x0: npt.NDArray[np.float64],
    measured: npt.NDArray[np.float64],
    scale: npt.NDArray[np.float64],
    lo: npt.NDArray[np.float64],
    hi: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Bounded least squares on the linear model ``values + jac (x - x0)`` (module docstring, step 3)."""
    from scipy.optimize import least_squares

    a = jac / scale[:, None]

    def residuals(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        out: npt.NDArray[np.float64] = (values + jac @ (x - x0) - measured) / scale
        return out

    start = np.clip(x0, lo, hi)
    fit = least_squares(
        residuals,
        start,
        jac=lambda _x: a,
        bounds=(lo, hi),
        method="trf",
        x_scale="jac",
        ftol=1e-15,
        xtol=1e-15,
        gtol=1e-15,
    )
    return np.asarray(fit.x, dtype=float)


def _stderr(
    jac: npt.NDArray[np.float64], scale: npt.NDArray[np.float64], residuals: npt.NDArray[np.float64], known: bool
) -> npt.NDArray[np.float64] | None:
    """Standard errors of the fitted costs (module docstring), or None when they cannot be estimated."""
    a = jac / scale[:, None]
    m, p = a.shape
    if p == 0:
        return None
    cov = np.linalg.pinv(a.T @ a)
    if not known:
        if m <= p:
            return None
        cov = cov * float(residuals @ residuals) / (m - p)
    return np.asarray(np.sqrt(np.maximum(np.diag(cov), 0.0)), dtype=float)


def calibrate(
    measurements: Sequence[Measurement],
    *,
    costs: Sequence[str] | None = None,
    start: CostModel | None = None,
    offset: bool = True,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Calibration:
    """Fit the costs to ``measurements`` (module docstring). ``costs``: the names to fit (default: chosen),
    ``start``: the cost model to start from (default: the defaults), ``offset``: fit the boot offset too (for
    boot-time rows), ``workers``: simulation processes, ``progress(done, total)``: called as simulations finish."""
    if not measurements:
        raise ConfigError("measurements", "no measurements")
    for name in costs or ():
        if name not in COSTS:
            raise ConfigError("--costs", f"unknown cost {name!r} (costs: {', '.join(COSTS)})")
    if costs is not None and len(set(costs)) != len(costs):
        raise ConfigError("--costs", "a cost is listed twice")
    rows = list(measurements)
    first = (start or CostModel()).as_dict()
    x = dict(first)
    candidates = list(costs) if costs else list(COSTS)
    measured = np.array([m.value for m in rows], dtype=float)
    scale = np.array([m.scale for m in rows], dtype=float)
    boots = np.array([boot_vm(m.metric) is not None for m in rows])
    mask = boots.astype(float) if offset and boots.any() else None
    off = 0
    with _runner(workers, progress) as runner:
        values, jac = _linearise(runner, rows, x, candidates)
        start_values = values.copy()
        resolution = np.array([1.0 if m.stddev is not None else SENSITIVITY for m in rows])
        chosen, why = _choose(jac, scale, candidates, explicit=costs is not None, forced=mask, resolution=resolution)
        if not chosen and mask is None:
            raise ConfigError(
                "measurements",
                "no cost moves these measurements enough to be fitted"
                + (f" (of {', '.join(candidates)})" if costs else " (is the metric a count?)"),
            )
        jac = jac[:, [candidates.index(n) for n in chosen]]
        lo = np.array([COSTS[n].lo for n in chosen] + ([OFFSET_RANGE[0]] if mask is not None else []), dtype=float)
        hi = np.array([COSTS[n].hi for n in chosen] + ([OFFSET_RANGE[1]] if mask is not None else []), dtype=float)

        def full(j: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            return j if mask is None else np.column_stack([j, mask])

        fd = np.array([not b for b in boots])
        iterations, error = 0, math.inf
        for iterations in range(1, MAX_ITERATIONS + 1):  # noqa: B007 - the count is reported
            model = values + (off * mask if mask is not None else 0.0)
            x0 = np.array([x[n] for n in chosen] + ([off] if mask is not None else []), dtype=float)
            fitted = np.clip(np.rint(_solve(model, full(jac), x0, measured, scale, lo, hi)), lo, hi)
            new = {**x, **{n: int(v) for n, v in zip(chosen, fitted, strict=False)}}
            new_off = int(fitted[-1]) if mask is not None else 0
            predicted = model + full(jac) @ (fitted - x0)
            values, counted = _simulate_rows(runner, rows, new, chosen)  # verify
            error = float(np.max(np.abs(values + (new_off * mask if mask is not None else 0.0) - predicted) / scale))
            moved = max([abs(new[n] - x[n]) / max(1, x[n]) for n in chosen] + [abs(new_off - off) / 1e6])
            x, off = new, new_off
            jac = np.where(fd[:, None], jac, counted)  # the finite differences of the last linearisation
            if error <= 1e-9 or moved < 1e-3:
                break
            if fd.any():
                values, jac = _linearise(runner, rows, x, chosen, known=(values, jac))
        simulations = runner.total
    model = values + (off * mask if mask is not None else 0.0)
    res = (model - measured) / scale
    known = all(m.stddev is not None for m in rows)
    errors = _stderr(full(jac), scale, res, known)
    fits = []
    for k, n in enumerate(chosen):
        spec = COSTS[n]
        at_bound = x[n] in (spec.lo, spec.hi)
        stderr = None if errors is None or at_bound else float(errors[k])
        fits.append(FittedCost(n, first[n], x[n], spec.lo, spec.hi, stderr, "at bound" if at_bound else "fitted"))
    for n in COSTS:
        if n not in chosen:
            fits.append(FittedCost(n, first[n], x[n], COSTS[n].lo, COSTS[n].hi, None, why.get(n, "not asked")))
    fits.sort(key=lambda f: list(COSTS).index(f.name))
    boot_offset = None
    if mask is not None:
        at_bound = off in OFFSET_RANGE
        stderr = None if errors is None or at_bound else float(errors[-1])
        boot_offset = FittedCost(OFFSET, 0, off, *OFFSET_RANGE, stderr, "at bound" if at_bound else "fitted")
    notes = []
    if error > 1e-9:
        notes.append(
            f"the last simulations differ from the linear model by up to {error:.3g} (residual units): the metric "
            "is not linear in the costs here (finite differences, or VMs sharing the host)"
        )
    loose = [f.name for f in fits if f.stderr is not None and f.stderr > POORLY_DETERMINED * max(1, f.fitted)]
    if loose:
        notes.append(
            f"poorly determined (standard error above {POORLY_DETERMINED:.0%} of the value): {', '.join(loose)}; "
            "measurements where they matter more would pin them down"
        )
    unfit = [f for f in fits if f.status.startswith("moves with")]
    if unfit:
        notes.append(
            "not identifiable from these measurements (kept at their start values): "
            + "; ".join(f"{f.name} {f.status}" for f in unfit)
            + ". Measurements under other presets or acceptance modes can separate them."
        )
    row_fits = [
        RowFit(m.line, m.name, m.metric, m.value, m.stddev, float(s), float(v))
        for m, s, v in zip(rows, start_values, model, strict=True)
    ]
    return Calibration(CostModel(**x), fits, row_fits, iterations, simulations, error, notes, boot_offset)


# ------------------------------------------------------------------------------------------------ outputs


def read_costs(path: str | Path | None) -> CostModel:
    """The cost model of a TOML file's ``[costs]`` table (an earlier calibration, a scenario), or the defaults."""
    if path is None:
        return CostModel()
    return CostModel.from_mapping(read_toml(path).get("costs", {}), field=f"{path}: costs")


def costs_toml(cal: Calibration, source: str) -> str:
    """The ``[costs]`` table of a scenario: every cost, the fitted ones marked (with standard error and range)."""
    fitted = sum(1 for f in cal.fitted if f.status in ("fitted", "at bound"))
    lines = [
        f"# snpsim calibrate {source}: {len(cal.rows)} measurements, {fitted} costs fitted, "
        f"rms residual {cal.rms:.4g} (was {cal.start_rms:.4g} with the start costs).",
        "# Use it as a scenario's [costs] table (paste it, or start a scenario file with it).",
    ]
    b = cal.boot_offset
    if b is not None:
        err = f" +- {format_duration(round(b.stderr))}" if b.stderr is not None else ""
        lines.append(
            f"# Boot offset {'+' if b.fitted >= 0 else '-'}{format_duration(abs(b.fitted))}{err}: the measured boots "
            "spend that much beyond the simulated ones (guest code the model does not run); not a cost, not set here."
        )
    lines.append("[costs]")
    width = max(len(f.name) for f in cal.fitted) + len(str(max(f.fitted for f in cal.fitted)))
    for f in cal.fitted:
        entry = f"{f.name} = {f.fitted}"
        if f.status == "fitted":
            err = f" +- {f.stderr:.3g}" if f.stderr is not None else ""
            note = f"fitted{err} (range {f.lo}..{f.hi}, start {f.start})"
        elif f.status == "at bound":
            note = f"fitted, at a bound of its range {f.lo}..{f.hi} (start {f.start})"
        else:
            note = f"not fitted: {f.status}"
        lines.append(f"{entry:<{width + 3}}  # {note}")
    return "\n".join(lines) + "\n"


def format_value(metric: str, value: float) -> str:
    """A value of ``metric`` as people read it (:func:`unit_of`)."""
    unit = unit_of(metric)
    if unit == "ns":
        return format_duration(round(value))
    if unit == "bytes":
        return format_bytes(round(value))
    return f"{value:,.6g}"


def plot(cal: Calibration, path: str | Path) -> None:
    """A PNG: measured against simulated (start and fitted costs), and each row's residual."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    measured = np.array([r.measured for r in cal.rows])
    start = np.array([r.start for r in cal.rows])
    fitted = np.array([r.fitted for r in cal.rows])
    seconds = all(r.metric.endswith("_ns") for r in cal.rows)
    k = 1e-9 if seconds else 1.0
    lo = min(measured.min(), start.min(), fitted.min()) * k
    hi = max(measured.max(), start.max(), fitted.max()) * k
    ax.plot([lo, hi], [lo, hi], color="0.7", lw=1, label="model = measured")
    ax.scatter(measured * k, start * k, facecolors="none", edgecolors="tab:gray", label="start costs")
    ax.scatter(measured * k, fitted * k, color="tab:blue", label="fitted costs")
    if lo > 0 and hi / lo > 20:
        ax.set_xscale("log")
        ax.set_yscale("log")
    unit = " (s)" if seconds else ""
    ax.set_xlabel(f"measured{unit}")
    ax.set_ylabel(f"simulated{unit}")
    ax.set_title("measurements and model")
    ax.legend(loc="upper left", fontsize=8)
    pos = np.arange(len(cal.rows))
    relative = all(r.stddev is None for r in cal.rows)
    mult = 100.0 if relative else 1.0
    bx.bar(pos - 0.2, [r.start_residual * mult for r in cal.rows], 0.4, color="0.75", label="start costs")
    bx.bar(pos + 0.2, [r.residual * mult for r in cal.rows], 0.4, color="tab:blue", label="fitted costs")
    bx.axhline(0, color="0.3", lw=0.8)
    bx.set_xticks(pos, [r.name for r in cal.rows], rotation=45, ha="right", fontsize=7)
    bx.set_ylabel("residual (% of measured)" if relative else "residual (standard deviations)")
    bx.set_title(f"residuals: rms {cal.rms * mult:.3g}{'%' if relative else ''}")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
