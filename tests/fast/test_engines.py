"""``engine = "fast"`` and ``engine = "reference"`` give identical results (``../shared/DESIGN.md``: the engine
"never changes a result").

Every example scenario, every preset under every workload, a trace replay and the interleaving explorer run under
both engines; everything a run reports must be equal: the summary, the timeline, the VM records, crashes, host CPU
time per operation and thread, and the host memory pictures. (The layer-level comparisons, state after every step,
are tests/fast/test_fast_buddy.py, test_fast_directmap.py, test_fast_rmp.py and the stack state machine's checked
allocator, direct map and RMP, tests/kvm/test_stack_state.py.)
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snpsim
from snpsim.engine import engine
from snpsim.errors import ConfigError
from snpsim.guest.workloads import WORKLOADS
from snpsim.runner import Result
from snpsim.scenario import load

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples"


def on(doc: dict[str, Any], name: str) -> Result:
    return snpsim.run(load({**doc, "engine": name}))


def plain(value: Any) -> Any:
    """A result's parts as comparable data (dataclasses and numpy arrays included)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def assert_same(a: Result, b: Result) -> None:
    assert a.summary == b.summary
    assert a.timeline.equals(b.timeline)
    for part in ("vms", "crashes", "conversions", "host_cpu_ns", "thread_cpu_ns", "hostmaps", "launch"):
        assert plain(getattr(a, part)) == plain(getattr(b, part)), part


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_every_example_gives_the_same_result_on_both_engines(name: str) -> None:
    doc = tomllib.loads((EXAMPLES / name).read_text())
    assert_same(on(doc, "reference"), on(doc, "fast"))


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_every_preset_under_every_workload_gives_the_same_result_on_both_engines(workload: str) -> None:
    for preset in sorted(snpsim.presets):
        doc = {
            "seed": 3,
            "duration": "400ms",
            "samples": 8,
            "policy": preset,
            "host": {"memory": "1G", "page_cache": 0.2},
            "vms": [{"memory": "128M", "vcpus": 2, "workload": workload}],
        }
        assert_same(on(doc, "reference"), on(doc, "fast"))


def test_a_replay_gives_the_same_result_on_both_engines() -> None:
    """A replay's scenario runs on the default engine (fast); the same scenario on the reference agrees."""
    from snpsim.runner import Simulation
    from snpsim.traces.replay import plan_replay

    trace = EXAMPLES / "traces" / "qemu-boot.log"
    results = []
    for name in ("reference", "fast"):
        plan = plan_replay(trace, "upstream")
        scenario = dataclasses.replace(plan.scenario, engine=name)
        try:
            sim = Simulation(scenario, vm_events={0: plan.events}, vm_launch={0: plan.launch} if plan.launch else None)
            results.append(sim.run())
        finally:
            plan.close()
    assert_same(*results)


def test_the_explorer_finds_the_same_counterexamples_on_both_engines() -> None:
    doc = tomllib.loads((EXAMPLES / "hazard" / "explore.toml").read_text())
    found = [
        [(c.preset, c.outcome, c.steps) for c in snpsim.explore({**doc, "engine": name}, ["upstream", "bulk"], 3)]
        for name in ("reference", "fast")
    ]
    assert found[0] == found[1] and found[0]


def test_an_unknown_engine_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"engine.*expected one of fast, reference"):
        load({"engine": "turbo", "vms": [{"memory": "1G"}]})
    with pytest.raises(ConfigError, match="engine"):
        engine("turbo")
    with pytest.raises(ConfigError, match="engine"):
        snpsim.explore({"engine": 3, "vms": [{"memory": "64M"}]}, ["upstream"], 1)


def test_the_engine_is_not_part_of_a_results_identity() -> None:
    """A results folder (and a sweep's resume) holds the same result whichever engine computed it."""
    from snpsim.results import identity
    from snpsim.sweeps import scenario_hash

    doc = {"vms": [{"memory": "1G"}]}
    assert scenario_hash({**doc, "engine": "reference"}) == scenario_hash({**doc, "engine": "fast"})
    assert identity(load({**doc, "engine": "reference"})) == identity(load({**doc, "engine": "fast"}))
