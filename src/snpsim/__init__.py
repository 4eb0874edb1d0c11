"""snpsim: an executable model of how a KVM host manages the memory of confidential VMs (AMD SEV-SNP).

Layers (top calls down): guest -> vmm -> kvm -> host -> hw. See ``shared/DESIGN.md``.

>>> import snpsim
>>> result = snpsim.run({"seed": 1, "policy": "upstream", "host": {"memory": "8G"},
...                      "vms": [{"memory": "1G", "vcpus": 2, "workload": "linux-boot"}], "duration": "1s"})
>>> result.summary["directmap_4k"] > 0
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from snpsim.errors import ConfigError
from snpsim.policy import Policy, presets

if TYPE_CHECKING:
    import pandas as pd

    from snpsim.runner import Result
    from snpsim.scenario import Scenario

__all__ = ["ConfigError", "Policy", "presets", "replay", "run", "sweep"]
__version__ = "0.1.0"


def run(
    scenario: Mapping[str, Any] | str | Path | Scenario,
    *,
    progress: Callable[[float], None] | None = None,
    record_conversions: bool = False,
) -> Result:
    """Simulate a scenario (a dict, a TOML path or a loaded :class:`~snpsim.scenario.Scenario`).

    ``record_conversions``: keep every ``kvm_convert_memory`` in ``Result.conversions`` (for trace export)."""
    from snpsim.runner import Simulation
    from snpsim.scenario import Scenario, load

    loaded = scenario if isinstance(scenario, Scenario) else load(scenario)
    return Simulation(loaded, progress=progress, record_conversions=record_conversions).run()


def replay(
    trace: str | Path,
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
    the first one); the VM's RAM is ``vm_memory`` or inferred from the highest converted address. Bad traces
    raise :class:`snpsim.traces.TraceError` (a ``ValueError``) naming file and line.
    """
    from snpsim.runner import Simulation
    from snpsim.scenario import load
    from snpsim.traces import Format, parse, to_guest_events
    from snpsim.traces.replay import infer_memory_bytes
    from snpsim.units import parse_size

    fmt = cast(Format, format)  # not checked here: parse raises its ValueError for anything but auto/qemu/ftrace
    reader = parse(trace, fmt, lenient)
    # Streaming, constant memory: a pass sizes the guest (unless given) and finds the trace's time span, the
    # replay pass then reads the file again lazily.
    first = last = 0
    for k, conv in enumerate(reader):
        first = conv.time_ns if k == 0 else first
        last = conv.time_ns - first
    memory = infer_memory_bytes(reader) if vm_memory is None else parse_size(vm_memory, "vm_memory")
    guest = to_guest_events(parse(trace, fmt, lenient), vm_memory=memory)
    events = guest.events
    host = parse_size(host_memory, "host_memory") if host_memory is not None else max(4 * guest.memory_bytes, 1 << 30)
    scenario = load(
        {
            "name": f"replay of {Path(trace).name}",
            "seed": seed,
            "policy": policy,
            "duration": last + 1_000_000,
            "samples": samples,
            "host": {"memory": host},
            "vms": [{"memory": guest.memory_bytes, "vcpus": vcpus, "workload": "idle"}],
        }
    )
    sim = Simulation(scenario, progress=progress, vm_events={0: events}, record_conversions=record_conversions)
    return sim.run()


def sweep(
    sweep: Mapping[str, Any] | str | Path,
    *,
    out: str | Path | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    resume: bool = False,
    retry_failed: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Run a sweep (a TOML path or a dict: ``base`` scenario x ``axes``) on Dask; one row per point.

    The points run on a local cluster of ``workers`` processes (default: one per CPU) or on the Dask scheduler at
    ``scheduler`` (``tcp://host:port``). Results go to the store in ``out`` (default: the sweep's ``out`` or
    ``sweep-out``); ``resume`` skips the points already committed there (``retry_failed`` reruns failed ones).
    Columns: ``hash``, ``status`` ("ok" or "failed"), ``error``, one per axis, the metrics, ``elapsed_s``,
    ``run_id``. See :mod:`snpsim.sweeps` for the sweep schema and the store.
    """
    from snpsim.sweeps import ProgressBar, run

    with ProgressBar(disable=not progress) as bar:
        done = run(
            sweep, out=out, workers=workers, scheduler=scheduler, resume=resume, retry_failed=retry_failed, listener=bar
        )
    return done.frame
