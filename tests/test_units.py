"""Human-readable metric formatting shared by the CLI tables and the HTML report."""

from __future__ import annotations

from snpsim.units import format_duration, format_metric


def test_format_duration() -> None:
    assert format_duration(86_400 * 10**9) == "1d"
    assert format_duration(5_400 * 10**9) == "1.5h"
    assert format_duration(1_500_000) == "1.5ms"
    assert format_duration(999) == "999ns"


def test_format_metric_by_kind() -> None:
    assert format_metric("sim_time_ns", 2 * 10**9) == "2s"
    assert format_metric("psmash_count", 1234567) == "1,234,567"
    assert format_metric("waste_bytes", 3 << 29) == "1.5 GiB"
