"""Sizes and durations as users write them: ``"64G"``, ``"512M"``, ``"4K"``, ``"10s"``, ``"500ms"``."""

from __future__ import annotations

import re

from snpsim.errors import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_TIME_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d)?\s*$", re.IGNORECASE)
_TIME_MULT = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}


def parse_size(value: object, field: str) -> int:
    """Bytes from an int or a string with an optional K/M/G/T suffix (powers of 1024)."""
    if isinstance(value, bool):
        raise ConfigError(field, f"expected a size like '4G', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(field, f"size must be >= 0, got {value}")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            n = float(m.group(1)) * _SIZE_MULT[m.group(2).upper()]
            if n == int(n):
                return int(n)
            raise ConfigError(field, f"{value!r} is not a whole number of bytes")
    raise ConfigError(field, f"expected a size like '4G', '512M' or a number of bytes, got {value!r}")


def parse_duration(value: object, field: str) -> int:
    """Nanoseconds from an int (ns) or a string with a ns/us/ms/s/m/h/d suffix (default seconds)."""
    if isinstance(value, bool):
        raise ConfigError(field, f"expected a duration like '10s', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(field, f"duration must be >= 0, got {value}")
        return value
    if isinstance(value, str):
        m = _TIME_RE.match(value)
        if m:
            return int(float(m.group(1)) * _TIME_MULT[(m.group(2) or "s").lower()])
    raise ConfigError(field, f"expected a duration like '10s', '500ms' or '1d', got {value!r}")


def format_bytes(n: int) -> str:
    """Human-readable binary size: 1536 -> '1.5 KiB'."""
    for unit, mult in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= mult:
            return f"{n / mult:.4g} {unit}"
    return f"{n} B"


def format_duration(ns: int) -> str:
    """Human-readable simulated time: 86_400 * 10**9 -> '1d', 5_400 * 10**9 -> '1.5h', 1_500_000 -> '1.5ms'."""
    for unit, mult in (("d", 86_400 * 10**9), ("h", 3_600 * 10**9), ("m", 60 * 10**9), ("s", 10**9), ("ms", 10**6)):
        if abs(ns) >= mult:
            return f"{ns / mult:.4g}{unit}"
    return f"{ns}ns"


def format_metric(metric: str, value: float) -> str:
    """A metric value as people read it: counts (``*_count`` and the vmstat ``direct_map_level*_splits``) with
    thousands separators, ``sim_time_ns`` as a duration, bytes in binary units (metric names of
    shared/DESIGN.md)."""
    if metric == "sim_time_ns":
        return format_duration(int(value))
    if metric.endswith(("_count", "_splits")):
        return f"{int(value):,}"
    return format_bytes(int(value))
