"""Keyword parameters checked against a function's signature and annotations (snpsim.params): what the scenario
uses for workload and writer parameters."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from snpsim.errors import ConfigError
from snpsim.params import check, parameters


def example(
    cfg: object,
    rng: object,
    rate_per_s: float = 1.0,
    *,
    count: int = 1,
    flag: bool = False,
    pool_bytes: int = 4096,
    lifetime_ns: int | None = None,
    region: tuple[int, int] | None = None,
    ranges: Sequence[tuple[int, int]] | None = None,
    name: str = "x",
    anything: object = None,
    **extra: object,
) -> None:
    """A function shaped like a workload's run-time function."""


PARAMS = parameters(example, skip=("cfg", "rng"))


def test_parameters_come_from_the_signature() -> None:
    assert list(PARAMS) == [
        "rate_per_s",
        "count",
        "flag",
        "pool_bytes",
        "lifetime_ns",
        "region",
        "ranges",
        "name",
        "anything",
    ]  # **extra and the skipped ones left out
    assert not any(p.required for p in PARAMS.values())
    assert parameters(lambda at_ns: None)["at_ns"].required


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("rate_per_s", 3, 3),  # an int is a float
        ("count", 7, 7),
        ("flag", True, True),
        ("pool_bytes", "4M", 4 << 20),  # *_bytes strings are sizes
        ("lifetime_ns", "10ms", 10_000_000),  # *_ns strings are durations
        ("lifetime_ns", 5, 5),  # an integer *_ns is nanoseconds: the name gives the unit
        ("lifetime_ns", None, None),
        ("region", [0, 16], [0, 16]),
        ("ranges", [[0, 1], [4, 2]], [[0, 1], [4, 2]]),
        ("anything", {"a": 1}, {"a": 1}),
    ],
)
def test_values_that_fit(name: str, value: object, expected: object) -> None:
    assert check(PARAMS[name], value, f"params.{name}") == expected


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("rate_per_s", "fast", "expected a finite number"),
        ("rate_per_s", float("inf"), "expected a finite number"),
        ("rate_per_s", True, "expected a finite number"),  # a bool is not a number here
        ("count", 2.5, "expected an integer"),
        ("count", False, "expected an integer"),
        ("flag", 1, "expected true or false"),
        ("pool_bytes", "4Q", "expected a size"),
        ("lifetime_ns", "10", "needs a unit"),
        ("lifetime_ns", 1.5, "expected an integer"),
        ("region", [1, 2, 3], "expected a list of 2 values"),
        ("region", [1, "a"], "each item is an integer"),
        ("region", 5, "expected a list"),
        ("ranges", [[0, 1], [2]], "each item is a list of 2 values"),
        ("name", 3, "expected a string"),
    ],
)
def test_values_that_do_not_fit_name_the_field(name: str, value: object, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        check(PARAMS[name], value, f"vms[0].params.{name}")
    assert info.value.field == f"vms[0].params.{name}"
