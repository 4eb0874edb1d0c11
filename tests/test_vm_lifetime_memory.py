"""A destroyed VM's state is freed: the engine keeps only its record and its guest log (the results read them).

Regression test: the guest log's ``on_terminate`` / ``on_boot`` callbacks held the whole VM (QEMU, KVM, guest_memfd
and their per-page arrays) for the rest of the run, 37 MB per churned VM on the 2 TiB month of churn, which then ran
out of memory (benchmarks/bench_scale.py month 30d).
"""

from __future__ import annotations

import gc
import weakref

import pytest

from snpsim.runner import Simulation
from snpsim.scenario import load
from snpsim.vmm.qemu import Qemu


def test_destroyed_vms_are_freed(monkeypatch: pytest.MonkeyPatch) -> None:
    destroyed: list[weakref.ref[Qemu]] = []
    destroy = Qemu.destroy

    def tracked(self: Qemu) -> None:
        destroy(self)
        destroyed.append(weakref.ref(self))

    monkeypatch.setattr(Qemu, "destroy", tracked)
    scenario = load(
        {
            "seed": 1,
            "duration": "4h",
            "samples": 2,
            "host": {"memory": "16G"},
            "churn": {
                "interval": "30m",
                "lifetime": "30m",
                "memory": ["128M"],
                "vcpus": [1],
                "max_vms": 2,
                "workload": "idle",
            },
            "vms": [],
        }
    )
    sim = Simulation(scenario)  # kept alive, as it is during a run: what it holds must not hold dead VMs
    result = sim.run()
    gc.collect()
    assert len(destroyed) >= 3  # VMs created every 30 min on average, living 30 min, over 4 h
    assert all(ref() is None for ref in destroyed), "a destroyed VM's state is still referenced"
    assert len(result.vms) >= len(destroyed)  # their records stay
