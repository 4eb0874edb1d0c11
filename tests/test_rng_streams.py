"""RNG streams are keyed by component name, not by position (issue 13: "today enabling compaction changes the ksm
and page_zeroing streams"): adding a component leaves every other component's random stream as it was.

The engine hands each writer and each VM's workload its generator (runner.Simulation.rng); the test wraps the
registries to record the first draws of each generator it hands out (drawn from a copy, so the run is not
disturbed), in a scenario without and with ``compaction``.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

import snpsim
from snpsim.guest.workloads import WORKLOADS
from snpsim.host import writers
from snpsim.scenario import load

SCENARIO: dict[str, Any] = {
    "seed": 5,
    "duration": "2s",
    "samples": 2,
    "host": {
        "memory": "1G",
        "writers": {
            "page_zeroing": {"interval": "10ms", "batch": 16, "resident_pages": 256},
            "ksm": {"interval": "100ms"},
        },
    },
    "vms": [{"memory": "128M", "vcpus": 1, "workload": "random-conversion", "count": 2}],
}


def streams(monkeypatch: pytest.MonkeyPatch, doc: dict[str, Any]) -> dict[str, list[float]]:
    """The first draws of the generator each writer and each VM's workload was given, by component."""
    scenario = load(doc)  # validated against the real signatures first
    seen: dict[str, list[float]] = {}
    for name, fn in list(writers.WRITERS.items()):

        def writer(host: Any, rng: np.random.Generator, *args: Any, _n: str = name, _f: Any = fn, **kw: Any) -> Any:
            seen[f"writer/{_n}"] = copy.deepcopy(rng).random(4).tolist()
            return _f(host, rng, *args, **kw)

        monkeypatch.setitem(writers.WRITERS, name, writer)
    fn = WORKLOADS["random-conversion"]
    count = iter(range(100))

    def workload(cfg: Any, rng: np.random.Generator, *args: Any, **kw: Any) -> Any:
        seen[f"vm{next(count)}"] = copy.deepcopy(rng).random(4).tolist()
        return fn(cfg, rng, *args, **kw)

    monkeypatch.setitem(WORKLOADS, "random-conversion", workload)
    snpsim.run(scenario)
    monkeypatch.undo()
    return seen


def test_enabling_compaction_leaves_the_other_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    before = streams(monkeypatch, SCENARIO)
    doc = copy.deepcopy(SCENARIO)
    # "compaction" sorts between ksm and page_zeroing (the engine starts writers in name order): under positional
    # keying page_zeroing's stream would move to the next position
    doc["host"]["writers"]["compaction"] = {"interval": "100ms"}
    after = streams(monkeypatch, doc)
    assert set(before) == {"writer/page_zeroing", "writer/ksm", "vm0", "vm1"}
    assert set(after) == set(before) | {"writer/compaction"}
    for name in before:
        assert after[name] == before[name], name
    # and the streams are distinct: each component has its own
    draws = [tuple(v) for v in after.values()]
    assert len(set(draws)) == len(draws)


def test_the_seed_moves_every_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    one = streams(monkeypatch, SCENARIO)
    other = streams(monkeypatch, {**SCENARIO, "seed": 6})
    assert all(one[k] != other[k] for k in one)
