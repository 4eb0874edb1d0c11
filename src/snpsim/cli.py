"""The ``snpsim`` command line: run scenarios under one or more presets and compare the metrics."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

import snpsim
from snpsim.errors import ConfigError
from snpsim.metrics import METRICS
from snpsim.policy import presets
from snpsim.scenario import DEFAULT_SCENARIO
from snpsim.units import format_bytes, format_metric

app = typer.Typer(
    help="snpsim: model how a KVM host manages the memory of confidential VMs (AMD SEV-SNP).",
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=2)


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        console.print(ctx.get_help())
        raise typer.Exit(0)


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Argument(help="Scenario TOML file (default: the built-in comparison scenario).")
    ] = None,
    preset: Annotated[
        list[str] | None,
        typer.Option(
            "--preset",
            "-p",
            help="Run under this preset (repeatable). Default: the scenario's policy, "
            "or every preset for the built-in scenario.",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Override the scenario's seed.")] = None,
    duration: Annotated[str | None, typer.Option(help="Override the simulated time, e.g. 10s.")] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Results folder (Parquet timeline + JSON summary per run, and report.html)."),
    ] = Path("snpsim-out"),
    no_save: Annotated[bool, typer.Option("--no-save", help="Do not write results or the report.")] = False,
    trace_out: Annotated[
        Path | None, typer.Option("--trace-out", help="Write the simulated conversions as a trace (first preset).")
    ] = None,
    trace_format: Annotated[str, typer.Option("--trace-format", help="qemu or ftrace.")] = "qemu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summaries as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Simulate a scenario under one or more presets, save the results and a report, print the metrics."""
    try:
        if config is None:
            base: dict[str, Any] = dict(DEFAULT_SCENARIO)
            names = preset or list(presets)
        else:
            from snpsim.scenario import read_toml

            base = read_toml(config)
            names = preset or [""]
        for name in names:
            if name and name not in presets:
                raise ConfigError("--preset", f"unknown preset {name!r} (presets: {', '.join(presets)})")
        if trace_format not in ("qemu", "ftrace"):
            raise ConfigError("--trace-format", f"expected qemu or ftrace, got {trace_format!r}")
        if seed is not None:
            base["seed"] = seed
        if duration is not None:
            base["duration"] = duration
        scenarios = {
            name or str(base.get("policy", "upstream")): ({**base, "policy": name} if name else base) for name in names
        }
        from snpsim.scenario import load

        loaded = {label: load(sc) for label, sc in scenarios.items()}
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    record = trace_out is not None
    jobs = {
        label: Job(snpsim.run, (sc,), {"record_conversions": record and i == 0})
        for i, (label, sc) in enumerate(loaded.items())
    }
    results = _run_all(jobs, out=None if no_save else out, quiet=quiet or as_json)
    report_path = None if no_save or out is None else out / "report.html"
    if trace_out is not None:
        _write_trace(next(iter(results.values())).conversions or [], trace_out, trace_format)
    _print_summaries(results, next(iter(loaded.values())).name or (str(config) if config else "snpsim"), as_json)
    if report_path is not None and not as_json:
        console.print(f"results in {out}/, report: {report_path}")


@dataclasses.dataclass(frozen=True)
class Job:
    """One simulation the CLI runs: ``fn(*args, progress=..., **kwargs)`` (picklable, for worker processes)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __call__(self, progress: Callable[[float], None]) -> Any:
        return self.fn(*self.args, progress=progress, **self.kwargs)


def _progress(*, quiet: bool) -> Progress:
    """One bar per simulation (on stderr), hidden with ``quiet``."""
    return Progress(
        TextColumn("[bold]{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err_console,
        disable=quiet,
        transient=False,
    )


def _run_job(job: Job, label: str, queue: Any) -> Any:
    """A job in a worker process: progress goes back to the parent through ``queue``."""
    return job(lambda f: queue.put((label, f)))


def _run_all(jobs: dict[str, Job], *, out: Path | None, quiet: bool) -> dict[str, Any]:
    """Run the jobs (several at once in worker processes when there are several cores) with a progress bar
    each; save each result and then the report if ``out`` is set. Results keep the jobs' order."""
    workers = min(len(jobs), os.cpu_count() or 1)

    def finished(label: str, result: Any) -> Any:
        if out is not None:  # saved as soon as it exists: a later failure loses nothing
            from snpsim.results import save

            save(result, out, label)
        return result

    with _progress(quiet=quiet) as progress:
        tasks = {label: progress.add_task(label, total=1.0) for label in jobs}
        if workers <= 1:
            results = {}
            for label, job in jobs.items():

                def update(f: float, t: TaskID = tasks[label]) -> None:
                    progress.update(t, completed=f)

                results[label] = finished(label, job(update))
                progress.update(tasks[label], completed=1.0)
        else:
            results = _run_parallel(
                jobs, workers, lambda label, f: progress.update(tasks[label], completed=f), finished
            )
    if out is not None:
        from snpsim.report import build

        build(out)
    return results


def _run_parallel(
    jobs: dict[str, Job],
    workers: int,
    update: Callable[[str, float], None],
    finished: Callable[[str, Any], Any],
) -> dict[str, Any]:
    """Run the jobs in a process pool, relaying their progress; the first failure is re-raised."""
    import multiprocessing
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding threads (rich's refresh thread)
    with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        q = manager.Queue()
        futures = {pool.submit(_run_job, job, label, q): label for label, job in jobs.items()}
        pending = set(futures)
        done: dict[str, Any] = {}
        while pending:
            ready, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            try:
                while True:
                    update(*q.get_nowait())
            except queue_mod.Empty:
                pass
            for fut in ready:
                done[futures[fut]] = finished(futures[fut], fut.result())  # re-raises a job's error here
                update(futures[fut], 1.0)
    return {label: done[label] for label in jobs}


def _write_trace(conversions: list[tuple[int, int, int, bool]], path: Path, fmt: str) -> None:
    from snpsim.traces import write_ftrace, write_qemu

    try:
        (write_qemu if fmt == "qemu" else write_ftrace)(conversions, path)
    except OSError as exc:
        raise _fail(f"{path}: cannot write trace: {exc.strerror}") from None


def _print_summaries(results: dict[str, Any], title: str, as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps({label: r.summary for label, r in results.items()}))
        return
    table = Table(title=title)
    table.add_column("metric", no_wrap=True)
    for label in results:
        table.add_column(label, justify="right")
    for metric in METRICS:
        table.add_row(metric, *(format_metric(metric, r.summary[metric]) for r in results.values()))
    console.print(table)
    crashed = [label for label, r in results.items() if r.summary["host_crash_count"]]
    if crashed:
        paths = {c["path"] for label in crashed for c in results[label].crashes}
        console.print(f"host crashes under {', '.join(crashed)}; kernel paths: {', '.join(sorted(paths))}")


@app.command()
def replay(
    trace: Annotated[Path, typer.Argument(help="QEMU (-trace kvm_convert_memory ...) or ftrace/trace-cmd text.")],
    fmt: Annotated[str, typer.Option("--format", help="auto, qemu or ftrace.")] = "auto",
    preset: Annotated[list[str] | None, typer.Option("--preset", "-p", help="Preset (repeatable).")] = None,
    vm_memory: Annotated[str | None, typer.Option(help="Guest RAM (default: inferred from the trace).")] = None,
    vcpus: Annotated[int, typer.Option(help="Guest vCPUs.")] = 4,
    lenient: Annotated[bool, typer.Option("--lenient", help="Skip and count bad lines instead of stopping.")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Results folder.")] = Path("snpsim-out"),
    no_save: Annotated[bool, typer.Option("--no-save", help="Do not write results or the report.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summaries as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Replay a real conversion trace under one or more presets: what each policy would have done."""
    from snpsim.traces import Format, TraceError, parse

    names = preset or ["upstream"]
    try:
        for name in names:
            if name not in presets:
                raise ConfigError("--preset", f"unknown preset {name!r} (presets: {', '.join(presets)})")
        if fmt not in ("auto", "qemu", "ftrace"):
            raise ConfigError("--format", f"expected auto, qemu or ftrace, got {fmt!r}")
        if not trace.is_file():
            raise ConfigError(str(trace), "no such trace file")
        reader = parse(trace, cast(Format, fmt), lenient)  # fmt is one of FORMATS (checked above)
        for _ in reader:  # validate the whole trace once before simulating (errors name file:line)
            pass
        jobs = {
            name: Job(
                snpsim.replay,
                (trace, name),
                {"format": fmt, "lenient": lenient, "vm_memory": vm_memory, "vcpus": vcpus},
            )
            for name in names
        }
        results = _run_all(jobs, out=None if no_save else out, quiet=quiet or as_json)
    except (ConfigError, TraceError) as exc:
        raise _fail(str(exc)) from None
    _print_summaries(results, f"replay of {trace.name}", as_json)
    stats = reader.stats
    if not as_json and (stats.bad_lines or sum(stats.skipped_unknown.values())):
        console.print(f"skipped: {stats.bad_lines} bad lines, {sum(stats.skipped_unknown.values())} unknown events")


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="Results folder written by 'snpsim run --out' or by 'snpsim sweep'.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="HTML file (default RESULTS/report.html).")
    ] = None,
) -> None:
    """Build the offline HTML report of a results folder (runs, or a sweep: plots across its axes)."""
    from snpsim.report import build, build_sweep
    from snpsim.sweeps import is_results

    try:
        path = build_sweep(results, output) if is_results(results) else build(results, output)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    console.print(f"report: {path}")


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep TOML: a base scenario and axes (see snpsim.sweeps).")],
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="Address of a running Dask scheduler, e.g. tcp://host:8786."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", help="Worker processes of the local cluster (default: one per CPU)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the sweep stored in --out: skip its committed points.")
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="With --resume: run the failed points again.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Results folder (default: the sweep's out, or sweep-out)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON line per committed point, then a summary line.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run every point of a sweep on Dask into a crash-safe results store, and build its report."""
    from snpsim.report import build_sweep
    from snpsim.sweeps import ProgressBar, run

    listener: Any = _JsonLines() if as_json else ProgressBar(err_console, disable=quiet)
    try:
        with listener:
            done = run(
                sweep_file,
                out=out,
                workers=workers,
                scheduler=scheduler,
                resume=resume,
                retry_failed=retry_failed,
                listener=listener,
            )
        path = build_sweep(done.out)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    stats = {
        "sweep": done.name,
        "out": str(done.out),
        "points": done.total,
        "ran": done.ran,
        "skipped": done.skipped,
        "failed": int((done.frame["status"] != "ok").sum()),
        "run_id": done.run_id,
        "elapsed_s": round(done.elapsed_s, 3),
    }
    if as_json:
        _emit(stats)
        return
    _print_sweep(done.frame, done.name, done.axes)
    console.print(
        f"{done.total} points: {done.ran} run, {done.skipped} already done, {stats['failed']} failed "
        f"({done.elapsed_s:.1f} s); results in {done.out}/, report: {path}",
        highlight=False,
    )


def _emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), flush=True)


class _JsonLines:
    """Sweep progress as JSON lines on stdout: one per committed point."""

    def __enter__(self) -> _JsonLines:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def start(self, total: int, done: int, failed: int) -> None:
        return None

    def point(self, point: Any, status: str, error: str | None) -> None:
        _emit({"hash": point.hash, "status": status, "error": error, "axes": point.axes})


_SWEEP_COLUMNS = ("directmap_4k", "directmap_split_count", "waste_bytes", "host_crash_count", "guest_vc_count")


def _print_sweep(frame: Any, name: str, axes: list[str]) -> None:
    """Mean of the key metrics per value of the sweep's first axis, and the failed points."""
    first = axes[0]
    ok = frame[frame["status"] == "ok"]
    table = Table(title=f"{name}: mean over {', '.join(a for a in axes[1:]) or 'points'}")
    table.add_column(first, no_wrap=True)
    table.add_column("points", justify="right")
    for metric in _SWEEP_COLUMNS:
        table.add_column(metric, justify="right")
    for value, group in frame.groupby(first, sort=False):
        done = ok[ok[first] == value]
        cells = [format_metric(m, float(done[m].mean())) if len(done) else "-" for m in _SWEEP_COLUMNS]
        failed = len(group) - len(done)
        table.add_row(str(value), f"{len(group)}" + (f" ({failed} failed)" if failed else ""), *cells)
    console.print(table)
    for row in frame[frame["status"] != "ok"].head(10).to_dict("records"):
        label = " ".join(f"{a}={row[a]}" for a in axes)
        console.print(f"failed: {label}: {row['error']}", highlight=False)


@app.command()
def limits(
    memory: Annotated[str, typer.Option(help="Guest RAM, e.g. 64G.")] = "4G",
    vcpus: Annotated[int, typer.Option(help="Guest vCPUs.")] = 4,
    preset: Annotated[
        list[str] | None, typer.Option("--preset", "-p", help="Preset (repeatable; default all).")
    ] = None,
    workload: Annotated[str, typer.Option(help="Workload simulated for the observed figure.")] = "random-conversion",
    duration: Annotated[str, typer.Option(help="Simulated time of the observed run.")] = "3s",
    seed: Annotated[int, typer.Option(help="RNG seed.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The memory a VMM's cgroup needs for one guest under each preset: worst case and simulated peak."""
    from snpsim.limits import limits as compute
    from snpsim.units import parse_duration, parse_size

    try:
        size = parse_size(memory, "--memory")
        if size < (64 << 20) or size % (2 << 20):
            raise ConfigError("--memory", "guest memory must be a multiple of 2M and at least 64M")
        if vcpus < 1:
            raise ConfigError("--vcpus", "must be >= 1")
        parse_duration(duration, "--duration")
        names = preset or list(presets)
        for name in names:
            if name not in presets:
                raise ConfigError("--preset", f"unknown preset {name!r} (presets: {', '.join(presets)})")
        with _progress(quiet=as_json) as bars:
            tasks = {name: bars.add_task(name, total=1.0) for name in names}
            rows = compute(
                size,
                vcpus,
                names,
                workload=workload,
                duration=duration,
                seed=seed,
                progress=lambda name, f: bars.update(tasks[name], completed=f),
            )
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        console.print_json(json.dumps([r.as_dict() for r in rows]))
        return
    table = Table(title=f"cgroup memory for a {format_bytes(size)}, {vcpus}-vCPU guest ({workload}, {duration})")
    for col in (
        "preset",
        "worst case",
        "= private",
        "+ shared",
        "observed peak",
        "private",
        "shared",
        "RMP (host)",
        "NPT (host)",
    ):
        table.add_column(col, justify="left" if col == "preset" else "right", no_wrap=True)
    for r in rows:
        table.add_row(
            r.preset,
            *(
                format_bytes(v)
                for v in (
                    r.worst_case_bytes,
                    r.worst_private_bytes,
                    r.worst_shared_bytes,
                    r.observed_peak_bytes,
                    r.observed_private_bytes,
                    r.observed_shared_bytes,
                    r.rmp_overhead_bytes,
                    r.npt_overhead_bytes,
                )
            ),
        )
    console.print(table)


@app.command("presets")
def list_presets() -> None:
    """Show the presets and their knob values."""
    table = Table(title="snpsim presets")
    table.add_column("knob", style="bold")
    for name in presets:
        table.add_column(name)
    for knob in next(iter(presets.values())).as_dict():
        table.add_row(knob, *(str(p.as_dict()[knob]).lower() for p in presets.values()))
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
