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


def test_durations_need_their_unit() -> None:
    import pytest

    from snpsim.errors import ConfigError
    from snpsim.units import parse_duration

    # ns/us/ms/s/m/h/d (powers of ten, then 60, 3600, 86400 s); whole nanoseconds
    assert parse_duration("1.5ms", "d") == 1_500_000
    assert parse_duration("2h", "d") == 7_200 * 10**9
    assert parse_duration("1d", "d") == 86_400 * 10**9
    assert parse_duration("250us", "d") == parse_duration("250µs", "d") == 250_000
    assert parse_duration(0, "d") == parse_duration("0", "d") == 0  # zero needs no unit
    for bad, says in (
        (10, "needs a unit"),
        ("10", "needs a unit"),
        (1.5, "needs a unit"),
        ("1.5ns", "whole number of nanoseconds"),
        ("9" * 20 + "d", "too long"),
        ("soon", "expected a duration"),
        (True, "expected a duration"),
    ):
        with pytest.raises(ConfigError, match=says) as info:
            parse_duration(bad, "duration")
        assert info.value.field == "duration"


def test_sizes_are_exact_and_bounded() -> None:
    import pytest

    from snpsim.errors import ConfigError
    from snpsim.units import parse_size

    assert parse_size("1.5K", "s") == 1536  # exact arithmetic: 1.5 * 1024
    assert parse_size("4G", "s") == 4 << 30 and parse_size(4096, "s") == 4096
    assert parse_size("8388607T", "s") == 8_388_607 << 40  # (2^23 - 1) TiB: just below 2^63
    for bad, says in (("1.1K", "whole number"), ("99999999999999999999G", "too large"), (-1, ">= 0"), ("1Q", "size")):
        with pytest.raises(ConfigError, match=says):
            parse_size(bad, "s")
