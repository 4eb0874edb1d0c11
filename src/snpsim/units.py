"""Sizes and durations as users write them (``"64G"``, ``"512M"``, ``"4K"``; ``"10s"``, ``"500ms"``), and metric
values as people read them (full: ``"1,884,599"``, ``"2.876 GiB"``; compact, for narrow tables: ``"1.88M"``,
``"2.88G"``).

A duration always carries its unit: ``duration = 10`` (a bare TOML number) and ``"10"`` are refused, because a
bare number has no unit anyone could guess (it meant 10 ns as an integer and 10 s as a string before). The only
bare number accepted is ``0``. Parameters whose *name* carries the unit (``*_ns`` workload parameters) take plain
integers of nanoseconds; that is the caller's business, not this module's. Sizes may be bare integers (bytes).
"""

from __future__ import annotations

import re
from fractions import Fraction

from snpsim.errors import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_TIME_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d)?\s*$", re.IGNORECASE)
_TIME_MULT = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
    "d": 86400 * 10**9,
}
#: Largest size or duration any field takes: the int64 range the model's arrays and clocks use. Fields have their
#: own, smaller bounds (host and guest memory); this one only keeps absurd values from becoming OverflowErrors.
MAX_VALUE = (1 << 63) - 1


def parse_size(value: object, field: str) -> int:
    """Bytes from an int or a string with an optional K/M/G/T suffix (powers of 1024)."""
    if isinstance(value, bool):
        raise ConfigError(field, f"expected a size like '4G', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(field, f"size must be >= 0, got {value}")
        n = Fraction(value)
    elif isinstance(value, str) and (m := _SIZE_RE.match(value)):
        n = Fraction(m.group(1)) * _SIZE_MULT[m.group(2).upper()]
        if n.denominator != 1:
            raise ConfigError(field, f"{value!r} is not a whole number of bytes")
    else:
        raise ConfigError(field, f"expected a size like '4G', '512M' or a number of bytes, got {value!r}")
    if n > MAX_VALUE:
        raise ConfigError(field, f"{value!r} is too large (at most 8 EiB)")
    return int(n)


def parse_duration(value: object, field: str) -> int:
    """Nanoseconds from a string with a ns/us/ms/s/m/h/d unit (``"10s"``, ``"1.5ms"``); a bare ``0`` is zero.

    A bare number (``10``, ``"10"``) is refused: say which unit. The result is a whole number of ns."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(field, f"expected a duration like '10s', '500ms' or '1d', got {value!r}")
    if isinstance(value, int | float):
        if value == 0:
            return 0
        raise ConfigError(field, f"a duration needs a unit: write '{value}s', '{value}ms' or '{value}ns', not {value}")
    m = _TIME_RE.match(value)
    if not m:
        raise ConfigError(field, f"expected a duration like '10s', '500ms' or '1d', got {value!r}")
    if m.group(2) is None:
        if Fraction(m.group(1)) == 0:
            return 0
        raise ConfigError(field, f"a duration needs a unit: write '{value.strip()}s' or '{value.strip()}ms'")
    ns = Fraction(m.group(1)) * _TIME_MULT[m.group(2).lower()]
    if ns.denominator != 1:
        raise ConfigError(field, f"{value!r} is not a whole number of nanoseconds")
    if ns > MAX_VALUE:
        raise ConfigError(field, f"{value!r} is too long (at most 292 years)")
    return int(ns)


def format_bytes(n: int) -> str:
    """Human-readable binary size: 1536 -> '1.5 KiB'."""
    for unit, mult in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= mult:
            return f"{n / mult:.4g} {unit}"
    return f"{n} B"


def format_duration(ns: int) -> str:
    """Human-readable simulated time: 86_400 * 10**9 -> '1d', 5_400 * 10**9 -> '1.5h', 1_500_000 -> '1.5ms'."""
    for unit, mult in (
        ("d", 86_400 * 10**9),
        ("h", 3_600 * 10**9),
        ("m", 60 * 10**9),
        ("s", 10**9),
        ("ms", 10**6),
        ("us", 10**3),
    ):
        if abs(ns) >= mult:
            return f"{ns / mult:.4g}{unit}"
    return f"{ns}ns"


def format_metric(metric: str, value: float) -> str:
    """A metric value as people read it: counts (``*_count`` and the vmstat ``direct_map_level*_splits``) with
    thousands separators, ``*_ns`` as a duration, bytes in binary units (metric names of shared/DESIGN.md)."""
    if metric.endswith("_ns"):
        return format_duration(int(value))
    if metric.endswith(("_count", "_splits")):
        return f"{int(value):,}"
    return format_bytes(int(value))


def _three_digits(x: float) -> str:
    text = f"{x:.3g}"
    return f"{x:.0f}" if "e" in text else text  # 999.7 -> "1000", not "1e+03"


def _compact(value: float, units: tuple[tuple[str, int], ...]) -> str:
    for unit, mult in units:
        if abs(value) >= mult:
            return f"{_three_digits(value / mult)}{unit}"
    return f"{int(value)}"


def format_compact(metric: str, value: float) -> str:
    """A metric value in at most 6 characters for narrow tables: 1,884,599 -> '1.88M', 3 << 29 bytes -> '1.5G',
    3,402 -> '3402'. Three significant digits: use :func:`format_metric` (or ``--format csv``) for the full value."""
    if metric.endswith("_ns"):
        return _short_duration(int(value))
    if metric.endswith(("_count", "_splits")):
        if abs(value) < 10_000:
            return f"{int(value)}"
        return _compact(value, (("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3)))
    return _compact(value, (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)))


def _short_duration(ns: int) -> str:
    units = (("d", 86_400 * 10**9), ("h", 3_600 * 10**9), ("m", 60 * 10**9), ("s", 10**9), ("ms", 10**6), ("us", 1000))
    for unit, mult in units:
        if abs(ns) >= mult:
            return f"{_three_digits(ns / mult)}{unit}"
    return f"{ns}ns"
