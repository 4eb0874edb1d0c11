"""Policy knobs and presets exactly as shared/DESIGN.md lists them; ConfigError names the bad field."""

from __future__ import annotations

import pytest

import snpsim
from snpsim.policy import Policy, presets, resolve_policy
from snpsim.units import parse_duration, parse_size

DESIGN_PRESETS = {
    # preset: private_backing, private_granularity, shared_backing, discard, directmap, restore, rmp_fault
    "fixup": ("vmm", "4k", "4k", True, "keep", "never", "fixup"),
    "unmap": ("vmm", "4k", "4k", True, "unmap", "never", "oops"),
    "bulk": ("vmm", "4k", "4k", True, "bulk", "on-unregister", "oops"),
    "upm": ("gmem", "4k", "4k", True, "unmap", "on-release", "oops"),
    "upm-nosplit": ("gmem", "2m", "4k", True, "unmap-nosplit", "on-release", "oops"),
    "hugetlb": ("gmem", "2m", "hugetlb-2m", True, "unmap-nosplit", "on-release", "oops"),
    "upstream": ("gmem", "4k", "4k", True, "split", "never", "oops"),
    # DESIGN.md: "the developers' knobs" (issue 15; each series' own knobs are checked below)
    "gmem-inplace": ("gmem", "4k", "4k", False, "split", "never", "oops"),
    "gmem-hugetlb": ("gmem", "2m", "4k", False, "split", "never", "oops"),
    "gmem-thp": ("gmem", "2m", "4k", True, "split", "never", "oops"),
}


def test_issue15_presets_use_their_series_knobs() -> None:
    # INPLACE v8: conversion in place; HUGETLB RFC v2: hugetlb pool, in place, split to 4K; THP RFC: THP folios
    assert presets["gmem-inplace"].gmem_conversion == "in-place"
    hg = presets["gmem-hugetlb"]
    assert (hg.gmem_allocator, hg.gmem_conversion, hg.gmem_folio_split) == ("hugetlb", "in-place", "4k")
    assert (presets["gmem-thp"].gmem_allocator, presets["gmem-thp"].gmem_conversion) == ("thp", "attributes")


def test_presets_match_design() -> None:
    assert set(presets) == set(DESIGN_PRESETS)
    for name, knobs in DESIGN_PRESETS.items():
        p = presets[name]
        got = (
            p.private_backing,
            p.private_granularity,
            p.shared_backing,
            p.discard_on_convert,
            p.directmap,
            p.directmap_restore,
            p.rmp_fault,
        )
        assert got == knobs, name


def test_policy_is_frozen() -> None:
    with pytest.raises(AttributeError):
        presets["upm"].directmap = "keep"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("knobs", "field"),
    [
        ({"directmap": "shred"}, "policy.directmap"),
        ({"private_granularity": "3m"}, "policy.private_granularity"),
        ({"discard_on_convert": "yes"}, "policy.discard_on_convert"),
        ({"directmap": "unmap-nosplit", "private_granularity": "4k"}, "policy.directmap"),
        ({"private_backing": "vmm", "private_granularity": "2m"}, "policy.private_granularity"),
        ({"private_backing": "vmm", "directmap_restore": "on-release"}, "policy.directmap_restore"),
        ({"directmap": "keep", "directmap_restore": "on-unregister"}, "policy.directmap_restore"),
        ({"colour": "blue"}, "policy.colour"),
        ({"gmem_conversion": "in-place"}, "policy.gmem_conversion"),  # discard_on_convert defaults to true
        ({"gmem_folio_split": "4k"}, "policy.gmem_folio_split"),
        ({"gmem_allocator": "thp", "private_granularity": "1g"}, "policy.gmem_allocator"),
        ({"preset": "nope"}, "policy.preset"),
    ],
)
def test_impossible_or_unknown_knobs_raise_config_error(knobs: dict[str, object], field: str) -> None:
    with pytest.raises(snpsim.ConfigError) as exc:
        resolve_policy(knobs)
    assert exc.value.field == field
    assert field in str(exc.value)


def test_knob_table_with_a_preset_base() -> None:
    p = resolve_policy({"preset": "upstream", "rmp_fault": "fixup"})
    assert p == Policy(
        private_backing="gmem",
        private_granularity="4k",
        shared_backing="4k",
        discard_on_convert=True,
        directmap="split",
        directmap_restore="never",
        rmp_fault="fixup",
    )
    assert resolve_policy("upm") is presets["upm"]
    with pytest.raises(snpsim.ConfigError):
        resolve_policy(42)


def test_sizes_and_durations() -> None:
    assert parse_size("64G", "f") == 64 << 30
    assert parse_size("4k", "f") == 4096
    assert parse_size("1.5M", "f") == 1536 << 10
    assert parse_size("2TiB", "f") == 2 << 40
    assert parse_size(4096, "f") == 4096
    assert parse_duration("10s", "f") == 10 * 10**9
    assert parse_duration("500ms", "f") == 500 * 10**6
    assert parse_duration("1d", "f") == 86400 * 10**9
    for bad in ("12Q", "-1G", "", True, 1.5):
        with pytest.raises(snpsim.ConfigError) as exc:
            parse_size(bad, "host.memory")
        assert exc.value.field == "host.memory"
