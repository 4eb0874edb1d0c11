"""Readable, filesystem-safe labels for custom policies (tables, result folders, reports, sweep axes)."""

from __future__ import annotations

import re

import pytest

import snpsim
from snpsim.policy import policy_label
from snpsim.results import folder_name


@pytest.mark.parametrize(
    ("policy", "label"),
    [
        ("upm", "upm"),
        ({"preset": "upm"}, "upm"),
        # a table equal to a preset is that preset
        (snpsim.presets["hugetlb"].as_dict(), "hugetlb"),
        # the base it names, then the knobs that differ, in knob order
        ({"preset": "upm", "rmp_fault": "fixup"}, "upm+rmp_fault=fixup"),
        ({"preset": "upstream", "discard_on_convert": False}, "upstream+discard_on_convert=false"),
        ({"rmp_fault": "fixup", "preset": "bulk", "shared_backing": "thp"}, "bulk+shared_backing=thp+rmp_fault=fixup"),
        # no base: the preset differing in the fewest knobs (Policy's defaults are upstream's knobs)
        ({"rmp_fault": "fixup"}, "upstream+rmp_fault=fixup"),
        # with Policy's defaults (upstream's: gmem, prefault_on_convert true) this is upstream with directmap
        # unmap: upm differs from it in directmap_restore only, unmap (vmm, no prefault) in two knobs
        ({"directmap": "unmap", "directmap_restore": "never"}, "upm+directmap_restore=never"),
    ],
)
def test_labels(policy: object, label: str) -> None:
    assert policy_label(policy) == label
    assert folder_name(label) == label  # already a safe folder name
    assert re.fullmatch(r"[A-Za-z0-9+=._-]+", label)


def test_folder_names_are_safe_and_never_the_folders_own_files() -> None:
    assert folder_name("a b/c") == "a_b_c"
    assert folder_name("..") == "run-.."
    assert folder_name("manifest.json") == "run-manifest.json"
    assert folder_name("") == "run"


def test_an_invalid_policy_is_a_config_error() -> None:
    with pytest.raises(snpsim.ConfigError, match=r"^policy\.bogus: unknown knob"):
        policy_label({"bogus": 1})
