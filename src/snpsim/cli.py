"""The ``snpsim`` command line: run scenarios under one or more presets and compare the metrics.

Every mistake is one line on stderr, ``error: FIELD: what is wrong``, naming the command-line flag when a flag
set the value (``--memory``, not the scenario field it becomes), and exit status 2; usage errors (unknown option,
bad integer) are one line too. Exit status 1: the command ran but something went wrong that a script must not
miss - results could not be written (the results are still printed), a VM could not be backed by the host's
memory and was killed, every point of a sweep failed. Messages are plain text: brackets are shown, never taken
as markup.

Output: ``--format table`` (default: rich tables that always fit the terminal, see :mod:`snpsim.tables`),
``csv``, ``markdown`` or ``json`` (``--json`` is short for ``--format json``); notes go to stderr in the machine
formats, so stdout stays parseable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text
from typer.core import TyperGroup

import snpsim
from snpsim.errors import ConfigError
from snpsim.metrics import METRICS
from snpsim.policy import KNOBS, PRESETS, policy_label, presets
from snpsim.results import OutputError
from snpsim.scenario import DEFAULT_SCENARIO
from snpsim.tables import FORMATS, Grid, column_metric_grid, emit, metric_grid
from snpsim.units import format_bytes, format_compact, format_duration, parse_duration

#: Exit status of a command that ran but whose outcome a script must not miss (module docstring).
EXIT_FAILED = 1
#: Exit status of a user mistake (nothing was simulated).
EXIT_USAGE = 2


#: The arguments of the command being run (for the results' manifest).
_ARGV: list[str] = []


class _OneLineErrors(TyperGroup):
    """Click's usage errors (unknown option, missing argument, bad value) as one ``error:`` line, exit 2."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        _ARGV[:] = list(args) if args is not None else sys.argv[1:]
        try:
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except typer.TyperException as exc:  # click's errors (typer vendors click): usage errors carry a context
            ctx = getattr(exc, "ctx", None)
            where, hint = (f"{ctx.command_path}: ", " (see --help)") if ctx is not None else ("", "")
            _say(f"{where}{exc.format_message()}{hint}", error=True)
            if not standalone_mode:
                raise
            sys.exit(exc.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            sys.exit(EXIT_FAILED)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    help="snpsim: model how a KVM host manages the memory of confidential VMs (AMD SEV-SNP).",
    add_completion=False,
)


def _console(*, stderr: bool = False) -> Console:
    """A console for this command's output (made per call, so the width is the terminal's - or COLUMNS - now)."""
    return Console(stderr=stderr, highlight=False)


def _say(message: str, *, error: bool = False, warning: bool = False, stderr: bool = False) -> None:
    """One plain line (never markup, never wrapped): on stderr for errors, warnings and ``stderr``."""
    prefix = ("error: ", "bold red") if error else ("warning: ", "bold yellow") if warning else ("", "")
    text = Text.assemble(prefix, message) if prefix[0] else Text(message)
    _console(stderr=error or warning or stderr).print(text, soft_wrap=True)


def _fail(message: object, code: int = EXIT_USAGE) -> typer.Exit:
    _say(str(message), error=True)
    return typer.Exit(code=code)


@contextlib.contextmanager
def _flags(names: Mapping[str, str]) -> Iterator[None]:
    """Errors about a field a command-line flag set name the flag: ``{"vms[0].vcpus": "--vcpus"}``."""
    try:
        yield
    except ConfigError as exc:
        if exc.field in names:
            raise exc.renamed(names[exc.field]) from None
        raise


def _version(value: bool) -> None:
    if value:
        _say(f"snpsim {snpsim.__version__}")
        raise typer.Exit(0)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", help="Show the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    if ctx.invoked_subcommand is None:
        _console().print(ctx.get_help())
        raise typer.Exit(0)


#: The presets, for the help of every --preset option (generated from snpsim.policy's declarations).
_PRESET_NAMES = f"Presets: {', '.join(presets)} ('snpsim presets' shows their knobs)."

FormatOption = Annotated[
    str, typer.Option("--format", "-f", help=f"Output: {', '.join(FORMATS)} (table: fits the terminal).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Same as --format json.")]


def _format(fmt: str, as_json: bool) -> str:
    if fmt not in FORMATS:
        hint = " (the trace's format is --trace-format)" if fmt in ("auto", "qemu", "ftrace") else ""
        raise ConfigError("--format", f"expected one of {', '.join(FORMATS)}, got {fmt!r}{hint}")
    if as_json and fmt not in ("table", "json"):
        raise ConfigError("--json", f"contradicts --format {fmt}")
    return "json" if as_json else fmt


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _presets(names: list[str] | None, flag: str = "--preset") -> list[str]:
    chosen = names or []
    for name in chosen:
        if name not in presets:
            raise ConfigError(flag, f"unknown preset {name!r} (presets: {', '.join(presets)})")
    if len(set(chosen)) != len(chosen):
        raise ConfigError(flag, "a preset is listed twice")
    return chosen


def _command() -> list[str]:
    return ["snpsim", *_ARGV]


# -------------------------------------------------------------------------------------------------- run


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
            f"or every preset for the built-in scenario. {_PRESET_NAMES}",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Override the scenario's seed.")] = None,
    duration: Annotated[str | None, typer.Option(help="Override the simulated time, with its unit: 10s, 2h.")] = None,
    engine: Annotated[
        str | None,
        typer.Option(help="Override the scenario's engine: fast or reference (the same results; see snpsim.engine)."),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Results folder (one run: a Parquet timeline + JSON summary per preset, report.html)."
        ),
    ] = Path("snpsim-out"),
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the results of another scenario found in --out.")
    ] = False,
    no_save: Annotated[bool, typer.Option("--no-save", help="Do not write results or the report.")] = False,
    trace_out: Annotated[
        Path | None, typer.Option("--trace-out", help="Write the simulated conversions as a trace (first preset).")
    ] = None,
    trace_format: Annotated[
        str, typer.Option("--trace-format", help="Format of --trace-out: qemu or ftrace.")
    ] = "qemu",
    fmt: FormatOption = "table",
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Simulate a scenario under one or more presets, save the results and a report, print the metrics.

    A results folder holds one scenario: running the same scenario again replaces the presets it runs and keeps
    the others; another scenario is refused unless --overwrite."""
    from snpsim.results import Claim, check_file, identity
    from snpsim.scenario import load, read_toml

    try:
        output = _format(fmt, as_json)
        if config is None:
            base: dict[str, Any] = dict(DEFAULT_SCENARIO)
            names = _presets(preset) or list(presets)
        else:
            base = read_toml(config)
            names = _presets(preset) or [""]
            if "schedule" in base:  # a counterexample written by `snpsim explore`: replay its schedule
                _replay_schedule(base, output)
                return
        if trace_format not in ("qemu", "ftrace"):
            raise ConfigError("--trace-format", f"expected qemu or ftrace, got {trace_format!r}")
        if seed is not None:
            base["seed"] = seed
        if duration is not None:
            if parse_duration(duration, "--duration") <= 0:
                raise ConfigError("--duration", "must be longer than 0 (e.g. '10s')")
            base["duration"] = duration
        if engine is not None:
            base["engine"] = engine
        flags = {"seed": "--seed", "duration": "--duration", **({"engine": "--engine"} if engine is not None else {})}
        with _flags(flags):
            if not names[0]:
                label = policy_label(base.get("policy", "upstream"))
                loaded = {label: load(base)}
            else:
                loaded = {name: load({**base, "policy": name}) for name in names}
        first = next(iter(loaded.values()))
        claim = None
        if not no_save:
            claim = Claim.open(out, identity(first), overwrite=overwrite, command=_command(), field="--out")
        if trace_out is not None:
            check_file(trace_out, "--trace-out")
    except ConfigError as exc:
        raise _fail(exc) from None
    record = trace_out is not None
    jobs = {
        label: Job(snpsim.run, (sc,), {"record_conversions": record and i == 0})
        for i, (label, sc) in enumerate(loaded.items())
    }
    outcome = _simulate_and_report(jobs, claim, output, quiet, first.name or (str(config) if config else "snpsim"))
    if trace_out is not None:
        recorded = next(iter(outcome.results.values()))
        _write_trace(recorded, trace_out, trace_format, outcome)
    raise typer.Exit(outcome.status)


@dataclasses.dataclass
class Outcome:
    """What a run or replay command produced: the results by label and what went wrong after simulating."""

    results: dict[str, Any]
    #: one-line errors of writes that failed
    failures: list[str] = dataclasses.field(default_factory=list)
    #: warnings a script must see (VMs the host could not back)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def status(self) -> int:
        return EXIT_FAILED if self.failures or self.warnings else 0


def _simulate_and_report(
    jobs: dict[str, Job],
    claim: Any,
    output: str,
    quiet: bool,
    title: str,
    extra: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> Outcome:
    """Run the jobs, save each result as it comes (if ``claim``), build the report, print the metrics in
    ``output`` format, the notes and the warnings; a write that fails is reported after the metrics."""
    from snpsim.report import build
    from snpsim.results import REPORT, atomic_file, save

    failures: list[str] = []

    def finished(label: str, result: Any) -> None:
        if claim is None or failures:
            return
        try:
            save(result, claim.out, label, claim=claim)
        except OutputError as exc:  # e.g. the disk is full: keep simulating, print everything, fail at the end
            failures.append(str(exc))

    try:
        results = _run_all(jobs, finished, quiet=quiet or output != "table")
    except ConfigError as exc:  # raised during a simulation (a workload parameter checked lazily)
        raise _fail(exc) from None
    report = None
    if claim is not None and not failures:
        try:
            with atomic_file(claim.out / REPORT, "--out") as tmp:
                build(claim.out, tmp)
            report = claim.out / REPORT
        except OutputError as exc:
            failures.append(str(exc))
    outcome = Outcome(results, failures, _oom_lines(results))
    _print_summaries(results, title, output, extra)
    machine = output != "table"
    for note in notes or []:
        _say(note, stderr=machine)
    if report is not None:
        _say(f"results in {claim.out}/, report: {report}", stderr=machine)
    for line in outcome.warnings:
        _say(line, warning=True)
    for failure in failures:
        _say(f"{failure} (not saved; partial files were removed)", error=True)
    return outcome


def _oom_lines(results: dict[str, Any]) -> list[str]:
    """One warning per preset under which the host could not back a VM (QEMU killed), and one per preset under
    which QEMU could not create a VM (its RAM block's hugetlb pages could not be reserved)."""
    lines = []
    for label, r in results.items():
        refused = [v for v in r.vms if v.exit_error]
        if refused:
            first = refused[0]
            more = f" ({len(refused) - 1} more VMs likewise)" if len(refused) > 1 else ""
            lines.append(
                f"{label}: {first.name} ({format_bytes(first.memory)} at {format_duration(first.start_ns)}) "
                f"never started: {first.exit_error}{more}"
            )
        killed = [v for v in r.vms if v.oom]
        if killed:
            shown = ", ".join(
                f"{v.name} ({format_bytes(v.memory)} at {format_duration(v.start_ns)})" for v in killed[:5]
            )
            more = f" and {len(killed) - 5} more" if len(killed) > 5 else ""
            lines.append(
                f"{label}: {len(killed)} of {len(r.vms)} VMs could not be backed by host memory and were killed: "
                f"{shown}{more}"
            )
    return lines


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
        TextColumn("{task.description:<12}", markup=False),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=_console(stderr=True),
        disable=quiet,
        transient=False,
    )


def _run_job(job: Job, label: str, queue: Any) -> Any:
    """A job in a worker process: progress goes back to the parent through ``queue``."""
    return job(lambda f: queue.put((label, f)))


def _run_all(jobs: dict[str, Job], finished: Callable[[str, Any], None], *, quiet: bool) -> dict[str, Any]:
    """Run the jobs (several at once in worker processes when there are several cores) with a progress bar
    each; ``finished(label, result)`` is called in this process as each result exists (a later failure loses
    nothing already saved). Results keep the jobs' order."""
    workers = min(len(jobs), os.cpu_count() or 1)

    def done(label: str, result: Any) -> Any:
        finished(label, result)
        return result

    with _progress(quiet=quiet) as progress:
        tasks = {label: progress.add_task(label, total=1.0) for label in jobs}
        if workers <= 1:
            results = {}
            for label, job in jobs.items():

                def update(f: float, t: TaskID = tasks[label]) -> None:
                    progress.update(t, completed=f)

                results[label] = done(label, job(update))
                progress.update(tasks[label], completed=1.0)
        else:
            results = _run_parallel(jobs, workers, lambda label, f: progress.update(tasks[label], completed=f), done)
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


def _write_trace(recorded: Any, path: Path, fmt: str, outcome: Outcome) -> None:
    """The first run's conversions and its first VM's launch (and, in QEMU format, its RAM) as a trace."""
    from snpsim.results import atomic_file
    from snpsim.traces import write_ftrace, write_qemu

    conversions = recorded.conversions or []
    launch = recorded.launch or []
    try:
        with atomic_file(path, "--trace-out") as tmp:
            if fmt == "qemu":
                memory = recorded.vms[0].memory if recorded.vms else None
                write_qemu(conversions, tmp, launch=launch, memory_bytes=memory)
            else:
                write_ftrace(conversions, tmp, launch=launch)
    except OutputError as exc:
        _say(f"{exc} (partial files were removed)", error=True)
        outcome.failures.append(str(exc))


def _summary_grid(results: dict[str, Any], title: str) -> Grid:
    labels = list(results)
    cells = [[results[label].summary[m] for label in labels] for m in METRICS]
    return metric_grid(title, "metric", METRICS, labels, cells)


def _print_summaries(results: dict[str, Any], title: str, output: str, extra: dict[str, Any] | None = None) -> None:
    if output == "json":
        _write(json.dumps({**{label: r.summary for label, r in results.items()}, **(extra or {})}, indent=1) + "\n")
        return
    emit(_console(), _summary_grid(results, title), output, _write)
    crashed = [label for label, r in results.items() if r.summary["host_crash_count"]]
    if crashed:
        paths = {c["path"] for label in crashed for c in results[label].crashes}
        _say(
            f"host crashes under {', '.join(crashed)}; kernel paths: {', '.join(sorted(paths))}",
            stderr=output != "table",
        )


# -------------------------------------------------------------------------------------------------- replay


def _print_schedule(steps: list[str]) -> None:
    for i, step in enumerate(steps, 1):
        _say(f"{i:3d}. {step}")


def _replay_schedule(data: dict[str, Any], output: str) -> None:
    """``snpsim run`` on a scenario with a ``schedule``: replay it on the explorer's world, print the outcome."""
    from snpsim.explorer import outcome_of, run_schedule

    summary = run_schedule(data)
    outcome = outcome_of(data) or "none"
    if output == "json":
        _write(json.dumps({"outcome": outcome, "summary": summary}, indent=1) + "\n")
        return
    _say(f"replaying the schedule of {data.get('policy')!r} ({len(data['schedule'])} steps):")
    _print_schedule(list(data["schedule"]))
    _say(f"outcome: {outcome}" + (f" (expected {data['expect']})" if "expect" in data else ""))
    keys = ("host_crash_count", "host_lost_write_count", "host_efault_count", "host_sigbus_count")
    _say("  ".join(f"{k}={summary[k]}" for k in (*keys, "guest_terminated_count")))


@app.command()
def explore(
    config: Annotated[Path, typer.Argument(help="Scenario TOML file: host.writers are the actors, vms[0] the guest.")],
    preset: Annotated[
        list[str] | None,
        typer.Option("--preset", "-p", help=f"Search under this preset (repeatable). {_PRESET_NAMES}"),
    ] = None,
    depth: Annotated[int, typer.Option("--depth", "-d", help="Steps to search (breadth-first).")] = 4,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the counterexamples, one replayable scenario each.")
    ] = Path("snpsim-explore"),
    no_save: Annotated[bool, typer.Option("--no-save", help="Do not write the counterexample scenarios.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Search the interleavings of host accessors, kernel writers and the guest for host crashes, lost writes,
    terminated guests and integrity breaks; print each shortest counterexample as a numbered schedule and write it
    as a scenario that `snpsim run` replays to the same outcome."""
    from snpsim.explorer import OUTCOMES, explore_all, schedule_scenario, to_toml
    from snpsim.scenario import read_toml

    try:
        if depth < 1:
            raise ConfigError("--depth", f"must be >= 1, got {depth}")
        data = read_toml(config)
        names = _presets(preset) or None
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[states]} states"),
            console=_console(stderr=True),
            disable=quiet,
            transient=True,
        ) as bar:
            tasks: dict[str, Any] = {}

            def progress(name: str, d: int, states: int) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(f"{name}", total=depth, states=0)
                bar.update(tasks[name], completed=d, states=states)

            res = explore_all(data, names, depth, progress)
    except ConfigError as e:
        raise _fail(e) from None
    by = {(c.preset, c.outcome): c for c in res.counterexamples}
    for st in res.stats:
        _say(f"{st.preset}: {st.states} states explored to depth {st.depth} in {st.seconds:.1f} s")
        for outcome in OUTCOMES:
            cx = by.get((st.preset, outcome))
            if cx is None:
                _say(f"  {outcome}: none within depth {depth}")
                continue
            _say(f"  {outcome}: {len(cx.steps)} steps")
            _print_schedule(cx.steps)
            if not no_save:
                out.mkdir(parents=True, exist_ok=True)
                path = out / f"{st.preset}-{outcome}.toml"
                path.write_text(to_toml(schedule_scenario(data, cx)))
                _say(f"     written: {path} (snpsim run {path})")


@app.command()
def replay(
    trace: Annotated[Path, typer.Argument(help="QEMU (-trace kvm_convert_memory ...) or ftrace/trace-cmd text.")],
    trace_format: Annotated[
        str, typer.Option("--trace-format", help="Format of the trace: auto, qemu or ftrace.")
    ] = "auto",
    preset: Annotated[
        list[str] | None, typer.Option("--preset", "-p", help=f"Preset (repeatable; default upstream). {_PRESET_NAMES}")
    ] = None,
    vm_memory: Annotated[str | None, typer.Option(help="Guest RAM (default: inferred from the trace).")] = None,
    host_memory: Annotated[
        str | None, typer.Option(help="Host RAM (default: 4 x the guest's, at least 1G; give the run's to compare).")
    ] = None,
    vcpus: Annotated[int, typer.Option(help="Guest vCPUs.")] = 4,
    lenient: Annotated[bool, typer.Option("--lenient", help="Skip and count bad lines instead of stopping.")] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder.")] = Path("snpsim-out"),
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the results of another run found in --out.")
    ] = False,
    no_save: Annotated[bool, typer.Option("--no-save", help="Do not write results or the report.")] = False,
    fmt: FormatOption = "table",
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Replay a real conversion trace under one or more presets: what each policy would have done."""
    from snpsim.results import Claim, file_digest, identity
    from snpsim.traces import TraceError, scan
    from snpsim.traces.replay import plan_replay
    from snpsim.units import parse_size

    flags = {
        "vm_memory": "--vm-memory",
        "vms[0].memory": "--vm-memory",
        "vms[0].vcpus": "--vcpus",
        "host_memory": "--host-memory",
        "host.memory": "--host-memory",
        "vms": "--host-memory",
    }
    # The trace is read once, here; every preset's job replays the spooled conversions of that scan (pickled for a
    # worker process, the TraceArrays are the spool's path and stats; a job reads the spool and never removes it),
    # and the spool is removed when the command ends, however it ends (after the jobs: the pool waits for them).
    with contextlib.ExitStack() as spool:
        try:
            output = _format(fmt, as_json)
            names = _presets(preset) or ["upstream"]
            if trace_format not in ("auto", "qemu", "ftrace"):
                hint = " (the output format is --format)" if trace_format in FORMATS else ""
                raise ConfigError("--trace-format", f"expected auto, qemu or ftrace, got {trace_format!r}{hint}")
            if not trace.is_file():
                raise ConfigError(str(trace), "no such trace file")
            vm_bytes = None if vm_memory is None else parse_size(vm_memory, "--vm-memory")
            host_bytes = None if host_memory is None else parse_size(host_memory, "--host-memory")
            options: dict[str, Any] = {"vm_memory": vm_bytes, "vcpus": vcpus, "host_memory": host_bytes}
            with _flags(flags):  # the whole trace is checked, and the replay's scenario built, before simulating
                arrays = spool.enter_context(scan(trace, trace_format, lenient))
                plan = plan_replay(arrays, names[0], **options)
                plan.close()  # only checked here: each preset's job replays the spool itself
            claim = None
            if not no_save:
                source = {"trace": trace.name, "sha256": file_digest(trace), "format": plan.format, "lenient": lenient}
                ident = identity(plan.scenario, source)
                claim = Claim.open(out, ident, overwrite=overwrite, command=_command(), field="--out")
        except (ConfigError, TraceError) as exc:
            raise _fail(exc) from None
        jobs = {name: Job(snpsim.replay, (arrays, name), options) for name in names}
        stats = plan.stats
        unknown = sum(stats.skipped_unknown.values())
        trace_doc = {
            "source": str(trace),
            "format": plan.format,
            "lines": stats.lines,
            "conversions": stats.events,
            "launch_updates": len(stats.launch),
            "launch_pages": stats.launch_pages,
            "guest_memfd_bytes": [g.size for g in stats.guest_memfds],
            "vm_memory": plan.scenario.vms[0].memory,
            "vm_memory_from": plan.memory_from,
            "bad_lines": stats.bad_lines,
            "skipped_unknown": dict(stats.skipped_unknown.most_common()),
            "clamped_timestamps": stats.clamped_timestamps,
        }
        notes = []
        if stats.launch:
            notes.append(f"launch: {len(stats.launch)} updates, {stats.launch_pages} pages")
        if stats.bad_lines or unknown:
            told = f" ({stats.unknown_summary()})" if unknown else ""
            notes.append(f"skipped: {stats.bad_lines} bad lines, {unknown} unknown events{told}")
        try:
            with _flags(flags):
                title = f"replay of {trace.name}"
                outcome = _simulate_and_report(jobs, claim, output, quiet, title, {"trace": trace_doc}, notes)
        except (ConfigError, TraceError) as exc:
            raise _fail(exc) from None
    raise typer.Exit(outcome.status)


# -------------------------------------------------------------------------------------------------- report


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="Results folder written by 'snpsim run --out' or by 'snpsim sweep'.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="HTML file (default RESULTS/report.html).")
    ] = None,
) -> None:
    """Build the offline HTML report of a results folder (runs, or a sweep - also one still running)."""
    from snpsim.report import build, build_sweep
    from snpsim.results import REPORT, atomic_file, check_file
    from snpsim.sweeps import is_results

    dest = output if output is not None else results / REPORT
    try:
        if not results.is_dir():
            raise ConfigError(str(results), "no such results folder")
        check_file(dest, "--output" if output is not None else str(results))
        with atomic_file(dest, "--output") as tmp:
            (build_sweep if is_results(results) else build)(results, tmp)
    except OutputError as exc:
        raise _fail(exc, EXIT_FAILED) from None
    except ConfigError as exc:
        raise _fail(exc) from None
    _say(f"report: {dest}")


# -------------------------------------------------------------------------------------------------- sweep


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
    point_timeout: Annotated[
        str | None,
        typer.Option("--point-timeout", help="Stop a point after this much computing (e.g. 10m); it fails."),
    ] = None,
    fmt: FormatOption = "table",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON line per committed point, then a summary line.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run every point of a sweep on Dask into a crash-safe results store, and build its report.

    Exit status 1 if every point of the sweep failed."""
    from snpsim.report import build_sweep
    from snpsim.results import REPORT, atomic_file
    from snpsim.sweeps import ProgressBar, run

    try:
        output = _format(fmt, as_json)
        limit = None if point_timeout is None else parse_duration(point_timeout, "--point-timeout") / 1e9
        if limit is not None and limit <= 0:
            raise ConfigError("--point-timeout", "must be longer than 0")
    except ConfigError as exc:
        raise _fail(exc) from None
    listener: Any = _JsonLines() if output == "json" else ProgressBar(_console(stderr=True), disable=quiet)
    flags = {"out": "--out", "workers": "--workers", "scheduler": "--scheduler", "point_timeout": "--point-timeout"}
    try:
        with listener, _flags(flags):
            done = run(
                sweep_file,
                out=out,
                workers=workers,
                scheduler=scheduler,
                resume=resume,
                retry_failed=retry_failed,
                listener=listener,
                point_timeout=limit,
            )
    except OutputError as exc:
        raise _fail(exc, EXIT_FAILED) from None
    except ConfigError as exc:
        raise _fail(exc) from None
    failure = None if done.write_error is None else f"--out: {done.write_error}"
    path = None
    if failure is None:
        try:
            with atomic_file(done.out / REPORT, "--out") as tmp:
                build_sweep(done.out, tmp)
            path = done.out / REPORT
        except OutputError as exc:
            failure = str(exc)
    ok = int((done.frame["status"] == "ok").sum())
    stats = {
        "sweep": done.name,
        "out": str(done.out),
        "points": done.total,
        "ran": done.ran,
        "skipped": done.skipped,
        "failed": len(done.frame) - ok,
        "run_id": done.run_id,
        "elapsed_s": round(done.elapsed_s, 3),
    }
    if output == "json":
        _emit(stats)
    else:
        _print_sweep(done.frame, done.name, done.axes, output)
        where = f"results in {done.out}/" + (f", report: {path}" if path else "")
        _say(
            f"{done.total} points: {done.ran} run, {done.skipped} already done, {stats['failed']} failed "
            f"({done.elapsed_s:.1f} s); {where}",
            stderr=output != "table",
        )
    if failure is not None:
        raise _fail(f"{failure} (the points committed so far are kept: continue with --resume)", EXIT_FAILED)
    if len(done.frame) and not ok:
        first = done.frame["error"].dropna()
        why = f": {first.iloc[0]}" if len(first) else ""
        raise _fail(f"every point of the sweep failed{why}", EXIT_FAILED)


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


def _print_sweep(frame: Any, name: str, axes: list[str], output: str) -> None:
    """Mean of the key metrics per value of the sweep's first axis, and the failed points."""
    first = axes[0]
    ok = frame[frame["status"] == "ok"]
    values, cells = [], []
    for value, group in frame.groupby(first, sort=False):
        done = ok[ok[first] == value]
        failed = len(group) - len(done)
        means = [float(done[m].mean()) if len(done) else None for m in _SWEEP_COLUMNS]
        values.append(str(value))
        cells.append([f"{len(group)}" + (f" ({failed} failed)" if failed else ""), *means])
    title = f"{name}: mean over {', '.join(a for a in axes[1:]) or 'points'}"
    grid = column_metric_grid(title, first, values, ["points", *_SWEEP_COLUMNS], cells)
    emit(_console(), grid, output, _write)
    for row in frame[frame["status"] != "ok"].head(10).to_dict("records"):
        label = " ".join(f"{a}={row[a]}" for a in axes)
        _say(f"failed: {label}: {row['error']}", stderr=output != "table")


# -------------------------------------------------------------------------------------------------- limits


@app.command()
def limits(
    memory: Annotated[str, typer.Option(help="Guest RAM, e.g. 64G.")] = "4G",
    vcpus: Annotated[int, typer.Option(help="Guest vCPUs.")] = 4,
    preset: Annotated[
        list[str] | None, typer.Option("--preset", "-p", help=f"Preset (repeatable; default all). {_PRESET_NAMES}")
    ] = None,
    workload: Annotated[str, typer.Option(help="Workload simulated for the observed figure.")] = "random-conversion",
    duration: Annotated[str, typer.Option(help="Simulated time of the observed run.")] = "3s",
    seed: Annotated[int, typer.Option(help="RNG seed.")] = 1,
    fmt: FormatOption = "table",
    as_json: JsonOption = False,
) -> None:
    """The memory a VMM's cgroup needs for one guest under each preset: worst case and simulated peak."""
    from snpsim.limits import limits as compute
    from snpsim.limits import scenario
    from snpsim.scenario import load, vm_memory

    flags = {
        "vms[0].memory": "--memory",
        "vms[0].vcpus": "--vcpus",
        "vms[0].workload": "--workload",
        "duration": "--duration",
        "seed": "--seed",
    }
    try:
        output = _format(fmt, as_json)
        size = vm_memory(memory, "--memory")
        if vcpus < 1:
            raise ConfigError("--vcpus", "must be >= 1")
        if parse_duration(duration, "--duration") <= 0:
            raise ConfigError("--duration", "must be longer than 0")
        names = _presets(preset) or list(presets)
        with _flags(flags):  # every preset's scenario, before the progress bars and the first simulation
            for name in names:
                load(scenario(size, vcpus, name, workload=workload, duration=duration, seed=seed))
        with _flags(flags), _progress(quiet=output != "table") as bars:
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
        raise _fail(exc) from None
    if output == "json":
        _write(json.dumps([r.as_dict() for r in rows], indent=1) + "\n")
        return
    columns = {
        "worst case": "worst_case_bytes",
        "= private": "worst_private_bytes",
        "+ shared": "worst_shared_bytes",
        "observed peak": "observed_peak_bytes",
        "private": "observed_private_bytes",
        "shared": "observed_shared_bytes",
        "RMP (host)": "rmp_overhead_bytes",
        "NPT (host)": "npt_overhead_bytes",
    }
    title = f"cgroup memory for a {format_bytes(size)}, {vcpus}-vCPU guest ({workload}, {duration})"
    cells = [[getattr(r, f) for f in columns.values()] for r in rows]
    grid = Grid(  # every column is bytes, whatever its header says
        title,
        "preset",
        [r.preset for r in rows],
        list(columns),
        cells,
        lambda _r, _c, v: format_bytes(int(v)),
        lambda _r, _c, v: format_compact("_bytes", v),
    )
    emit(_console(), grid, output, _write)
    if output != "table":
        return
    per_cgroup = {
        "memcg worst": "memcg_worst_bytes",
        "memcg peak": "memcg_peak_bytes",
        "hugetlb worst": "hugetlb_worst_bytes",
        "hugetlb peak": "hugetlb_peak_bytes",
        "kernel worst": "kernel_worst_bytes",
        "kernel peak": "kernel_peak_bytes",
    }
    emit(
        _console(),
        Grid(
            "charged to each cgroup (memcg: QEMU's, with guest_memfd, NPT and SNP pages; hugetlb: the hugetlb "
            "controller; kernel: no cgroup, RMP and direct-map page tables; docs/limits.md)",
            "preset",
            [r.preset for r in rows],
            list(per_cgroup),
            [[getattr(r, f) for f in per_cgroup.values()] for r in rows],
            lambda _r, _c, v: format_bytes(int(v)),
            lambda _r, _c, v: format_compact("_bytes", v),
        ),
        output,
        _write,
    )


# -------------------------------------------------------------------------------------------------- calibrate


@app.command()
def calibrate(
    measurements: Annotated[
        Path, typer.Argument(help="CSV of measured metrics, one scenario per row (see docs/calibrate.md).")
    ],
    costs: Annotated[
        list[str] | None,
        typer.Option(
            "--costs",
            "-c",
            help="Costs to fit, comma-separated or repeated (default: those the measurements are sensitive to "
            "and can tell apart).",
        ),
    ] = None,
    start: Annotated[
        Path | None, typer.Option("--start", help="A TOML file whose [costs] table to start from (default: defaults).")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The [costs] TOML to write; the plot goes next to it, as .png.")
    ] = Path("calibration.toml"),
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", help="Simulation processes (default: one per CPU).")
    ] = None,
    offset: Annotated[
        bool,
        typer.Option(
            "--offset/--no-offset",
            help="Fit a constant boot offset too: the time a real boot spends in code the model does not run.",
        ),
    ] = True,
    fmt: FormatOption = "table",
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Fit the cost model to metrics measured on SNP hardware: fitted costs, residuals, a plot, a \\[costs] table.

    Each row of the CSV is a scenario (guest size, vCPUs, preset, lazy or eager acceptance, or a scenario file)
    and the value measured for a metric (default: boot_time_ns). Every cost stays inside its declared range."""
    from snpsim.calibrate import calibrate as fit
    from snpsim.calibrate import costs_toml, plot, read_costs, read_measurements
    from snpsim.results import atomic_file, check_file

    try:
        output = _format(fmt, as_json)
        names = [n.strip() for item in costs or [] for n in item.split(",") if n.strip()] or None
        if costs is not None and not names:
            raise ConfigError("--costs", "expected cost names, e.g. page_clear_ns,rmpupdate_ns")
        first = read_costs(start)
        if workers is not None and workers < 1:
            raise ConfigError("--workers", "must be >= 1")
        plot_path = out.with_suffix(".png")
        check_file(out, "--out")
        check_file(plot_path, "--out")
        rows = read_measurements(measurements)
    except ConfigError as exc:
        raise _fail(exc) from None
    machine = output != "table"
    with Progress(
        TextColumn("simulations"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
        console=_console(stderr=True),
        disable=quiet or machine,
    ) as bar:
        task = bar.add_task("simulations", total=0)
        try:
            cal = fit(
                rows,
                costs=names,
                start=first,
                offset=offset,
                workers=workers or min(len(rows), os.cpu_count() or 1),
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except ConfigError as exc:
            raise _fail(exc) from None
    failures = []
    try:
        with atomic_file(out, "--out") as tmp:
            tmp.write_text(costs_toml(cal, measurements.name))
        with atomic_file(plot_path, "--out") as tmp:
            plot(cal, tmp)
    except OutputError as exc:
        failures.append(str(exc))
    if output == "json":
        _write(json.dumps({**cal.as_dict(), "out": str(out), "plot": str(plot_path)}, indent=1) + "\n")
    else:
        _print_calibration(cal, output)
    b = cal.boot_offset
    if b is not None and output != "json":
        err = f" +- {format_duration(round(b.stderr))}" if b.stderr is not None else ""
        sign = "+" if b.fitted >= 0 else "-"
        _say(
            f"boot offset: {sign}{format_duration(abs(b.fitted))}{err} (the measured boots spend that much beyond "
            "the simulated ones: guest code the model does not run)",
            stderr=machine,
        )
    for note in cal.notes:
        _say(f"note: {note}", stderr=machine)
    if not failures:
        _say(f"costs written to {out} ([costs] table for scenarios), plot: {plot_path}", stderr=machine)
    for failure in failures:
        _say(f"{failure} (partial files were removed)", error=True)
    raise typer.Exit(EXIT_FAILED if failures else 0)


def _compact_ns(ns: int) -> str:
    """1000 -> '1k', 500000 -> '500k', 250 -> '250' (a cost's range, in ns)."""
    return f"{ns // 1000}k" if ns >= 1000 and ns % 1000 == 0 else f"{ns:,}"


def _print_calibration(cal: Any, output: str) -> None:
    """The costs (start, fitted, standard error, range, what happened) and the measurements' residuals."""
    from snpsim.calibrate import format_value

    def number(_r: str, _c: str, v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:,.3g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)

    fits = cal.fitted
    cells = [[f.start, f.fitted, f.stderr, f"{_compact_ns(f.lo)}..{_compact_ns(f.hi)}", f.status] for f in fits]
    columns = ["start ns", "fitted ns", "+- ns", "range ns", "status"]
    emit(_console(), Grid("calibrated costs", "cost", [f.name for f in fits], columns, cells, number), output, _write)
    relative = all(r.stddev is None for r in cal.rows)
    names = [r.name for r in cal.rows]
    labels = [n if names.count(n) == 1 else f"{n} (line {r.line})" for n, r in zip(names, cal.rows, strict=True)]
    by_label = dict(zip(labels, cal.rows, strict=True))

    def cell(r: str, c: str, v: Any) -> str:
        row = by_label[r]
        if c == "residual":
            return f"{v * 100:+.3g}%" if relative else f"{v:+.3g} sd"
        return str(v) if isinstance(v, str) else format_value(row.metric, v)

    rows = [[r.metric, r.measured, r.start, r.fitted, r.residual] for r in cal.rows]
    title = f"measurements: rms residual {cal.rms * (100 if relative else 1):.3g}{'%' if relative else ' sd'}"
    grid = Grid(
        title,
        "measurement",
        labels,
        ["metric", "measured", "start", "fitted", "residual"],
        rows,
        cell,
    )
    emit(_console(), grid, output, _write)


@app.command("presets")
def list_presets(
    knob: Annotated[
        str | None,
        typer.Argument(help=f"A knob to explain, value by value: {', '.join(KNOBS)}.", show_default=False),
    ] = None,
    fmt: FormatOption = "table",
    as_json: JsonOption = False,
) -> None:
    """Show the presets and their knob values, or what each value of one knob does (from the knob declarations
    in snpsim.policy; docs/knobs.md is generated from the same)."""
    try:
        output = _format(fmt, as_json)
        if knob is not None and knob not in KNOBS:
            raise ConfigError(str(knob), f"unknown knob (knobs: {', '.join(KNOBS)})")
    except ConfigError as exc:
        raise _fail(exc) from None
    if knob is not None:
        _explain_knob(KNOBS[knob], output)
        return
    if output == "json":
        _write(json.dumps({name: p.as_dict() for name, p in presets.items()}, indent=1) + "\n")
        return
    knobs = list(KNOBS)
    cells = [[str(p.as_dict()[k]).lower() for p in presets.values()] for k in knobs]
    grid = Grid("snpsim presets", "knob", knobs, list(presets), cells, lambda _r, _c, v: str(v), justify="left")
    emit(_console(), grid, output, _write)
    if output == "table":
        for p in PRESETS:
            _paragraph(f"{p.name}: {p.option} ({p.source})")
        _paragraph("What each value of a knob does: snpsim presets KNOB.")


def _paragraph(text: str) -> None:
    """Plain text wrapped at spaces to the terminal's width (never markup, never cut)."""
    _console().print(Text(text), overflow="fold")


def _explain_knob(k: Any, output: str) -> None:
    """One knob: its meaning, default and source, then each value: what it does, where, and which presets use it."""
    users = {v.value: [name for name, p in presets.items() if getattr(p, k.name) == v.value] for v in k.values}

    def shown(value: Any) -> str:
        return str(value).lower()

    if output == "json":
        doc = {
            "knob": k.name,
            "meaning": k.meaning,
            "default": k.default,
            "source": k.source,
            "values": [
                {"value": v.value, "does": v.does, "where": v.where, "presets": users[v.value]} for v in k.values
            ],
        }
        _write(json.dumps(doc, indent=1) + "\n")
        return
    if output in ("csv", "markdown"):
        rows = [shown(v.value) for v in k.values]
        cells = [[", ".join(users[v.value]), v.does, v.where] for v in k.values]
        grid = Grid(
            k.name, "value", rows, ["presets", "does", "where"], cells, lambda _r, _c, v: str(v), justify="left"
        )
        emit(_console(), grid, output, _write)
        return
    _paragraph(f"{k.name}: {k.meaning}")
    _paragraph(f"default: {shown(k.default)}; source: {k.source}")
    for v in k.values:
        who = ", ".join(users[v.value]) or "no preset"
        _paragraph("")
        _paragraph(f"{shown(v.value)} ({who}): {v.does}" + (f" [{v.where}]" if v.where else ""))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
