"""The report's pieces, each against values derived by hand: time units, log-axis choice, grouping of equal
series, the scenario header, crash groups, and the memory picture's geometry and colours."""

from __future__ import annotations

import numpy as np
import pytest

from snpsim.host import blockmap as bm
from snpsim.hostmaps import scenario_doc
from snpsim.report import (
    CELL_PX,
    STATE_COLORS,
    coarsen,
    crash_groups,
    format_time,
    identical_groups,
    picture_geometry,
    scenario_rows,
    spans_decades,
    state_image,
    time_unit,
)
from snpsim.scenario import DEFAULT_SCENARIO, load

H = 3_600 * 10**9


@pytest.mark.parametrize(
    ("span", "unit"),
    [
        (24 * H, "h"),  # a day: 24 h >= 2 h, < 2 d
        (3 * 24 * H, "d"),
        (90 * 10**9, "s"),  # 90 s < 2 min
        (600 * 10**9, "min"),
        (1_100_000_000, "ms"),  # 1.1 s < 2 s
        (500, "ns"),
    ],
)
def test_time_unit_is_the_largest_the_span_holds_twice(span: int, unit: str) -> None:
    assert time_unit(span)[0] == unit


def test_format_time() -> None:
    assert format_time(30 * 60 * 10**9) == "30 min"
    assert format_time(24 * H) == "1 d"
    assert format_time(1_500_000_000) == "1.5 s"
    assert format_time(0) == "0 s"


def test_log_axes_only_when_counts_span_decades() -> None:
    assert spans_decades([0, 4, 2052])  # 2052 / 4 = 513 >= 10**1.5 = 31.6; zeros are left out
    assert spans_decades([16_975, 987_770])  # 58x
    assert not spans_decades([100, 3_000])  # 30x
    assert not spans_decades([0, 14_368])  # one positive value
    assert not spans_decades([0, 0])


def test_identical_series_are_grouped_in_order() -> None:
    groups = identical_groups({"a": [1, 2], "b": [1, 3], "c": [1, 2], "d": [1.0, 3.0]})
    assert groups == [["a", "c"], ["b", "d"]]
    assert identical_groups({"a": [1, 2], "b": [1, 2, 0]}) == [["a"], ["b"]]  # lengths differ


def test_header_rows_of_the_default_scenario() -> None:
    rows = dict(scenario_rows(scenario_doc(load(DEFAULT_SCENARIO)), default_costs=None))
    # DEFAULT_SCENARIO: host memory 8G, page_cache 0.2; directmap_max_level and zero_on_alloc default (1g, true)
    assert (
        rows["host"] == "8 GiB RAM, 20% page cache when the VMs start, direct map up to 1G, pages zeroed on "
        "allocation, server e820 layout (PCI hole from 2 GiB to 4 GiB), THP always, no boot-time hugetlb pool"
    )
    # AgingSpec defaults (src/snpsim/host/aging.py): uptime 24 h, epoch 4 h, peak 0.6, turnover 0.05, unmovable
    # 0.01, reclaimable 0.015, kernel_turnover 0.02
    assert rows["host aging"] == (
        "churn for 1 d of uptime, epochs of 4 h, peak use 60%, turnover 5.0%/h, kernel turnover 2.0%/h, "
        "unmovable 1.0% of RAM, reclaimable 1.5% of RAM"
    )
    # writers: page_zeroing interval 1m batch 256 resident_pages 8192; compaction and ksm every 10m
    assert rows["kernel writers"] == (
        "compaction every 10 min; ksm every 10 min; page_zeroing every 1 min (batch 256, resident_pages 8,192)"
    )
    assert rows["guests"] == (
        "1 × 1 GiB, 4 vCPUs, linux-boot (touch_rate_per_s 0.05), from the start, for the whole run"
    )
    # churn: interval 2h, lifetime 4h, memory 256M/512M, vcpus 1/2, max_vms 4
    assert rows["VM churn"] == (
        "a VM every 2 h on average (exponential), living 4 h on average, 256 MiB or 512 MiB, 1 or 2 vCPUs, "
        "linux-boot (touch_rate_per_s 0.05), at most 4 at a time"
    )
    assert rows["run"] == "1 d, 48 samples, seed 1"


def test_header_lists_changed_costs_and_unknown_fields() -> None:
    rows = dict(
        scenario_rows(
            {"duration_ns": 10**9, "costs": {"rmpupdate_ns": 2000, "psmash_ns": 1000}, "layout": "server"},
            default_costs={"rmpupdate_ns": 1000, "psmash_ns": 1000},
        )
    )
    assert rows["costs (changed)"] == "rmpupdate_ns 2,000 (default 1,000)"
    assert rows["host"] == "layout server"


def test_crashes_are_grouped_by_path_kind_and_context() -> None:
    crash = {"error_code": 0, "pfn": 0}
    docs = [
        {
            "label": "unmap",
            "crashes": [
                {**crash, "time_ns": 5, "path": "mm/ksm.c:calc_checksum", "kind": "not-present", "pfn": 7},
                {**crash, "time_ns": 9, "path": "mm/ksm.c:calc_checksum", "kind": "not-present", "pfn": 3},
                {**crash, "time_ns": 2, "path": "mm/page_alloc.c:clear", "kind": "rmp", "pfn": 3},
                {**crash, "time_ns": 4, "path": "mm/ksm.c:calc_checksum", "kind": "not-present", "pfn": 7},
            ],
        },
        {"label": "fixup", "crashes": []},
        {
            "label": "x",
            "crashes": [{**crash, "time_ns": 1, "path": "p", "kind": "rmp", "context": "vhost"}],
        },
    ]
    g = crash_groups(docs)
    assert list(g["run"]) == ["unmap", "unmap", "x"]
    first = g.iloc[0]
    assert (first["path"], first["count"], first["first_ns"], first["last_ns"], first["frames"]) == (
        "mm/ksm.c:calc_checksum",
        3,
        4,
        9,
        2,  # pfns 7, 3, 7
    )
    assert (first["pfn_lo"], first["pfn_hi"]) == (3, 7)
    assert g.iloc[1]["count"] == 1 and g.iloc[1]["kind"] == "rmp"
    assert list(g["context"]) == ["", "", "vhost"]  # a context column as soon as one record has one


def test_picture_geometry() -> None:
    assert picture_geometry(2048) == (1, 64, 32)  # 4 GiB: 64 blocks (128 MiB) a row, 32 rows
    assert picture_geometry(100) == (1, 64, 2)
    assert picture_geometry(8192) == (2, 64, 64)  # 16 GiB: 8192 / 4096 cells = 2 blocks a cell
    assert picture_geometry(1 << 20) == (256, 64, 64)  # 2 TiB: 2^20 / 2^12


def _map(state: list[int], used: list[int], assigned: list[int]) -> bm.HostMap:
    n = len(state)
    u16 = np.uint16
    return bm.HostMap(
        0,
        np.array(state, np.uint8),
        np.full(n, bm.L_2M, np.uint8),
        np.array(used, u16),
        np.array(assigned, u16),
        np.full(n, 512, u16),
    )


def test_state_image_colours_fill_and_mixed_marks() -> None:
    m = _map([bm.PRIVATE, bm.USER, bm.FREE], [512, 256, 0], [512, 10, 0])
    img = state_image(m, cols=3)
    k = CELL_PX
    assert img.shape == (k, 3 * k, 3)

    def rgb(c: str) -> np.ndarray:
        return np.array([int(c[i : i + 2], 16) / 255 for i in (1, 3, 5)])

    # a full block: its colour; not mixed (512 of 512 assigned): no mark
    assert np.allclose(img[:, :k], rgb(STATE_COLORS[bm.PRIVATE]))
    # half used: alpha 0.3 + 0.7 * 0.5 = 0.65 over white; mixed (10 of 512 assigned): the centre pixel marked
    pale = 1 - 0.65 * (1 - rgb(STATE_COLORS[bm.USER]))
    cell = img[:, k : 2 * k]
    assert np.allclose(cell[0, 0], pale)
    assert np.allclose(cell[k // 2, k // 2], 0.0)  # a light cell gets a black mark
    assert np.allclose(img[:, 2 * k :], rgb(STATE_COLORS[bm.FREE]))


def test_coarse_cells_take_the_majority_and_sum_the_counts() -> None:
    m = _map([bm.FREE, bm.USER, bm.PRIVATE, bm.PRIVATE, bm.KERNEL], [0, 5, 512, 512, 3], [0, 0, 512, 500, 0])
    c = coarsen(m, 2)
    # cells: (FREE, USER) -> the used block's USER; (PRIVATE, PRIVATE); (KERNEL, past the end)
    assert c.state.tolist() == [bm.USER, bm.PRIVATE, bm.KERNEL]
    assert c.used.tolist() == [5, 1024, 3]
    assert c.assigned.tolist() == [0, 1012, 0]
    assert c.ram.tolist() == [1024, 1024, 512]
