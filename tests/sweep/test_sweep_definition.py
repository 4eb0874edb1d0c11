"""Sweep files: schema errors name the field, axes expand to their Cartesian product, and a point's key is a
content hash of its fully resolved scenario (equal scenarios written differently share it)."""

from __future__ import annotations

import copy
import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import snpsim
from snpsim.sweeps import Sweep, canonical_json, expand, load, scenario_hash, set_path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "sweeps"

BASE: dict[str, Any] = {
    "duration": "100ms",
    "samples": 3,
    "host": {"memory": "1G"},
    "vms": [{"memory": "64M", "vcpus": 1, "workload": "linux-boot"}],
}


def sweep(axes: dict[str, list[Any]], **extra: Any) -> dict[str, Any]:
    return {"base": copy.deepcopy(BASE), "axes": axes, **extra}


SIZES = {"64M": 64 << 20, "1G": 1 << 30}


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    host_gib=st.integers(1, 8),
    vm_units=st.integers(32, 256),  # in 2 MiB units: 64M .. 512M
    unit=st.sampled_from(["K", "M", "bytes"]),
    shuffle=st.randoms(use_true_random=False),
)
def test_hash_is_of_the_resolved_scenario(seed: int, host_gib: int, vm_units: int, unit: str, shuffle: Any) -> None:
    vm_bytes = vm_units * (2 << 20)

    def written(n: int) -> Any:
        return n if unit == "bytes" else f"{n >> (10 if unit == 'K' else 20)}{unit}"

    plain = {
        "seed": seed,
        "policy": "upm",
        "host": {"memory": f"{host_gib}G"},
        "vms": [{"memory": f"{vm_bytes >> 20}M", "vcpus": 2, "workload": "idle"}],
    }
    items = list(plain.items())
    shuffle.shuffle(items)
    other = {
        **dict(items),  # another key order
        "host": {"memory": written(host_gib << 30)},
        "vms": [{"workload": "idle", "memory": written(vm_bytes), "vcpus": 2, "count": 1}],  # an explicit default
        "policy": dict(snpsim.presets["upm"].as_dict()),  # the preset's knobs instead of its name
        "duration": "10s",  # the default, spelled out
        "name": "a label is not part of the scenario",
    }
    key = scenario_hash(plain)
    assert key == scenario_hash(other)
    assert len(key) == 16 and int(key, 16) >= 0
    assert key != scenario_hash({**plain, "seed": seed + 1})
    assert key != scenario_hash({**plain, "policy": "upstream"})
    assert key != scenario_hash({**plain, "vms": [{**plain["vms"][0], "guest": {"lazy_accept": False}}]})


def test_hash_does_not_depend_on_the_process() -> None:
    # A stored sweep is resumed by other processes: the key must not depend on str hashing or set order.
    doc = {**BASE, "seed": 1, "policy": "upstream", "host": {"memory": "1G", "writers": {"ksm": {}, "compaction": {}}}}
    code = f"from snpsim.sweeps import scenario_hash; print(scenario_hash({doc!r}))"
    keys = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": str(n)}, capture_output=True, text=True
        ).stdout.strip()
        for n in (1, 2)
    }
    assert keys == {scenario_hash(doc)}


AXIS_CHOICES: dict[str, list[Any]] = {
    "seed": [1, 2, 3, 4],
    "policy": ["upm", "upstream", "fixup", "hugetlb"],
    "vms.0.vcpus": [1, 2, 4, 8],
    "vms.0.memory": ["64M", "128M", "256M"],
    "vms.0.guest.lazy_accept": [True, False],
    "host.page_cache": [0.0, 0.25],
}


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(st.sampled_from(sorted(AXIS_CHOICES)), st.integers(1, 4), min_size=1, max_size=4).map(
        lambda d: {k: AXIS_CHOICES[k][: max(1, min(n, len(AXIS_CHOICES[k])))] for k, n in d.items()}
    )
)
def test_axes_expand_to_their_cartesian_product(axes: dict[str, list[Any]]) -> None:
    loaded = load(sweep(axes))
    before = copy.deepcopy(loaded.base)
    points = expand(loaded)
    combos = list(itertools.product(*axes.values()))
    assert len(points) == len(combos)
    assert [tuple(p.axes.values()) for p in points] == combos  # product order, last axis fastest
    assert len({p.hash for p in points}) == len(points)
    for point in points:
        assert point.error is None
        for path, value in point.axes.items():
            node: Any = point.scenario
            for part in path.split("."):
                node = node[int(part)] if isinstance(node, list) else node[part]
            assert node == value
        assert point.hash == scenario_hash(point.scenario)
    assert loaded.base == before  # points are copies


def test_set_path_creates_tables_and_indexes_lists() -> None:
    doc: dict[str, Any] = copy.deepcopy(BASE)
    set_path(doc, "vms.0.params.rate_per_s", 10)
    set_path(doc, "host.writers.ksm", {})
    assert doc["vms"][0]["params"] == {"rate_per_s": 10} and doc["host"]["writers"] == {"ksm": {}}


def test_example_sweeps_are_valid() -> None:
    files = sorted(EXAMPLES.glob("*.toml"))
    assert files
    for path in files:
        loaded = load(path)
        points = loaded.points()
        assert points and all(p.error is None for p in points), path
        assert isinstance(loaded, Sweep) and loaded.name


def test_base_file_is_relative_to_the_sweep_file(tmp_path: Path) -> None:
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "s.toml").write_text(
        'duration = "100ms"\n[host]\nmemory = "1G"\n[[vms]]\nmemory = "64M"\n'
    )
    (tmp_path / "s.toml").write_text('base = "scenarios/s.toml"\n[axes]\nseed = [1, 2]\n')
    loaded = load(tmp_path / "s.toml")
    assert loaded.name == "s" and loaded.base["host"] == {"memory": "1G"}
    assert [p.scenario["seed"] for p in loaded.points()] == [1, 2]


def test_invalid_points_are_kept_with_their_error() -> None:
    points = expand(load(sweep({"vms.0.memory": ["64M", "4G"], "policy": ["upm", "upstream"]})))
    bad = [p for p in points if p.error]
    assert [p.axes["vms.0.memory"] for p in bad] == ["4G", "4G"]
    assert all(p.error and p.error.startswith("vms: ") and "host.memory" in p.error for p in bad)
    assert len({p.hash for p in points}) == 4


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"axes": {"seed": [1]}}, "base"),
        ({"base": BASE}, "axes"),
        ({"base": BASE, "axes": {}}, "axes"),
        ({"base": BASE, "axes": {"seed": 3}}, "axes.seed"),
        ({"base": BASE, "axes": {"seed": []}}, "axes.seed"),
        ({"base": BASE, "axes": {"seed": [1, 1]}}, "axes.seed"),
        ({"base": BASE, "axes": {"vms.3.vcpus": [1]}}, "axes.vms.3.vcpus"),
        ({"base": {**BASE, "policy": "upm"}, "axes": {"policy.directmap": ["split"]}}, "axes.policy.directmap"),
        ({"base": BASE, "axes": {"seed": [1]}, "extra": 1}, "extra"),
        ({"base": BASE, "axes": {"seed": [1]}, "sweep": {"name": 3}}, "sweep.name"),
        ({"base": BASE, "axes": {"seed": [1]}, "sweep": {"outdir": "x"}}, "sweep.outdir"),
        ({"base": "missing.toml", "axes": {"seed": [1]}}, "missing.toml"),
        ({"base": BASE, "axes": {"vms.0.memory": ["8G", "16G"]}}, "vms"),  # every point is invalid
        ({"base": BASE, "axes": {"vms.0.vcpus": [0, -1]}}, "vms[0].vcpus"),
        ({"base": BASE, "axes": {"host.memory": ["1G", "1024M"]}}, "axes"),  # the same scenario twice
    ],
)
def test_bad_sweeps_raise_config_error_naming_the_field(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(snpsim.ConfigError) as info:
        load(doc).points()
    assert info.value.field.endswith(field), (info.value.field, str(info.value))
    assert "\n" not in str(info.value)


def test_canonical_json_is_key_order_free() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == '{"a":[1,{"c":3,"d":2}],"b":1}'
