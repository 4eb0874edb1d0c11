"""snpsim: an executable model of how a KVM host manages the memory of confidential VMs (AMD SEV-SNP).

Layers (top calls down): guest -> vmm -> kvm -> host -> hw. See ``shared/DESIGN.md``.

>>> import snpsim
>>> result = snpsim.run({"seed": 1, "policy": "upstream", "host": {"memory": "8G"},
...                      "vms": [{"memory": "1G", "vcpus": 2, "workload": "linux-boot"}], "duration": "1s"})
>>> result.summary["directmap_4k"] > 0
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snpsim.errors import ConfigError
from snpsim.policy import Policy, presets

if TYPE_CHECKING:
    import pandas as pd

    from snpsim.guest.events import Timed
    from snpsim.runner import Result
    from snpsim.scenario import Scenario
    from snpsim.traces import TraceArrays

__all__ = ["ConfigError", "Policy", "presets", "replay", "run", "sweep"]
__version__ = "0.1.0"


def run(
    scenario: Mapping[str, Any] | str | Path | Scenario,
    *,
    progress: Callable[[float], None] | None = None,
    record_conversions: bool = False,
    time_limit_s: float | None = None,
) -> Result:
    """Simulate a scenario (a dict, a TOML path or a loaded :class:`~snpsim.scenario.Scenario`).

    ``record_conversions``: keep every ``kvm_convert_memory`` in ``Result.conversions`` and the first VM's launch
    updates in ``Result.launch`` (for trace export).
    ``time_limit_s``: stop with :class:`snpsim.errors.TimeLimitExceeded` after that many wall-clock seconds.
    Invalid scenarios raise :class:`ConfigError` before anything is simulated."""
    from snpsim.runner import Simulation
    from snpsim.scenario import Scenario, load

    if time_limit_s is not None and (
        isinstance(time_limit_s, bool) or not isinstance(time_limit_s, int | float) or not time_limit_s > 0
    ):
        raise ConfigError("time_limit_s", f"expected a number of seconds > 0, got {time_limit_s!r}")
    loaded = scenario if isinstance(scenario, Scenario) else load(scenario)
    sim = Simulation(loaded, progress=progress, record_conversions=record_conversions, time_limit_s=time_limit_s)
    return sim.run()


def explore(
    scenario: Mapping[str, Any] | str | Path,
    presets: list[str] | None = None,
    max_depth: int = 4,
) -> list[Any]:
    """Search the interleavings of the scenario's host accessors, kernel writers and guest breadth-first to
    ``max_depth`` steps under each preset (default: the scenario's policy): the shortest counterexample found for
    each outcome (:class:`snpsim.explorer.Counterexample`: ``.preset``, ``.outcome``, ``.steps``). Deterministic."""
    from snpsim.explorer import explore_all

    return list(explore_all(scenario, presets, max_depth).counterexamples)


def replay(
    trace: str | Path | TraceArrays,
    policy: str | Mapping[str, Any] = "upstream",
    *,
    format: str = "auto",
    lenient: bool = False,
    vm_memory: int | str | None = None,
    vcpus: int = 4,
    host_memory: int | str | None = None,
    seed: int = 1,
    samples: int = 100,
    progress: Callable[[float], None] | None = None,
    record_conversions: bool = False,
) -> Result:
    """Replay a QEMU or ftrace conversion trace under a policy: what would that policy have done to the host.

    The trace's conversions drive the guest -> vmm -> kvm -> host -> hw layers at their timestamps (relative to
    the first one); its launch updates (QEMU's ``kvm_sev_snp_launch_update``) are the VM's launch (without any, the
    guest image's default launch); the VM's RAM is ``vm_memory``, else the trace's guest_memfd sizes, else inferred
    from the highest converted address. ``record_conversions`` also keeps the launch in ``Result.launch``;
    ``progress`` is called with the share of the trace's conversions handed to the guest so far. Bad traces
    raise :class:`snpsim.traces.TraceError` (a ``ValueError``) naming file and line, and so does a trace without
    a single conversion (empty, or every line skipped with ``lenient``).

    ``trace`` may also be the :class:`~snpsim.traces.TraceArrays` of a :func:`snpsim.traces.scan` of the trace, so
    that several replays read the file once (``snpsim replay`` with several presets; pickled for a worker process,
    they are the spool's path and stats): the replay reads their spool and leaves it to the caller, who closes
    them; ``format`` and ``lenient`` are then the scan's (:func:`snpsim.traces.replay.plan_replay`).
    """
    from snpsim.runner import Simulation
    from snpsim.traces.replay import plan_replay

    plan = plan_replay(
        trace,
        policy,
        format=format,
        lenient=lenient,
        vm_memory=vm_memory,
        vcpus=vcpus,
        host_memory=host_memory,
        seed=seed,
        samples=samples,
    )
    # progress: the share of the trace's conversions handed to the guest (simulated time over the duration would
    # pass 1 during the VM's launch, the duration being the trace's span)
    events = plan.events if progress is None else _counted(plan.events, plan.stats.events, progress)
    try:
        sim = Simulation(
            plan.scenario,
            vm_events={0: events},
            record_conversions=record_conversions,
            vm_launch={0: plan.launch} if plan.launch else None,
        )
        return sim.run()
    finally:
        plan.close()  # the trace's spooled conversions (already removed if the replay used them all up)


def _counted(events: Iterable[Timed], total: int, progress: Callable[[float], None]) -> Iterator[Timed]:
    """A replay's events, reporting the fraction of the trace's ``total`` conversions handed to the guest (every
    1 %, at most 1), and 1 once they are all out. Not the simulation's own progress (simulated time over the
    scenario's duration): a replay's duration is the trace's span, which the VM's creation and launch alone can
    pass, and simulated time stands still while a vCPU that fell behind the trace works through its backlog."""
    step = max(1, total // 100)
    done = 0.0
    for k, timed in enumerate(events, 1):
        if k % step == 0:
            done = min(1.0, k / max(total, 1))
            progress(done)
        yield timed
    if done < 1.0:
        progress(1.0)


def sweep(
    sweep: Mapping[str, Any] | str | Path,
    *,
    out: str | Path | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    resume: bool = False,
    retry_failed: bool = False,
    progress: bool = False,
    point_timeout: float | None = None,
) -> pd.DataFrame:
    """Run a sweep (a TOML path or a dict: ``base`` scenario x ``axes``) on Dask; one row per point.

    The points run on a local cluster of ``workers`` processes (default: one per CPU) or on the Dask scheduler at
    ``scheduler`` (``tcp://host:port``). Results go to the store in ``out`` (default: the sweep's ``out`` or
    ``sweep-out``); ``resume`` skips the points already committed there (``retry_failed`` reruns failed ones).
    ``point_timeout``: seconds a point may compute before it is stopped and recorded as failed.
    Columns: ``hash``, ``status`` ("ok" or "failed"), ``error``, one per axis, the metrics, ``elapsed_s``,
    ``run_id``. See :mod:`snpsim.sweeps` for the sweep schema and the store. A store that cannot be written
    (disk full) raises :class:`snpsim.results.OutputError` once the points committed so far are safe.
    """
    from snpsim.results import OutputError
    from snpsim.sweeps import ProgressBar, run

    with ProgressBar(disable=not progress) as bar:
        done = run(
            sweep,
            out=out,
            workers=workers,
            scheduler=scheduler,
            resume=resume,
            retry_failed=retry_failed,
            listener=bar,
            point_timeout=point_timeout,
        )
    if done.write_error is not None:
        raise OutputError("out", done.write_error)
    return done.frame
