"""User-given keyword parameters checked against the signature and annotations of the function they are for.

A scenario's ``[vms.params]`` are the keyword parameters of a guest workload's run-time function
(:mod:`snpsim.guest.workloads`) and ``[host.writers.NAME]`` those of a kernel writer (:mod:`snpsim.host.writers`).
Rather than keeping a second list of names and types, the scenario reads them from the functions themselves
(``inspect.signature`` and ``typing.get_type_hints``), so a parameter added to a workload is validated the day it
is added. This module checks one value against one annotation, with the scenario's conventions for strings:
``"4M"`` for a ``*_bytes``/``*_bytes_per_s`` parameter, ``"10ms"`` for a ``*_ns`` one (the documented conventions
of :mod:`snpsim.guest.workloads`).
"""

from __future__ import annotations

import collections.abc
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from snpsim.errors import ConfigError
from snpsim.units import parse_duration, parse_size


@dataclass(frozen=True)
class Param:
    """One keyword parameter: its name, resolved annotation (``Any`` if none) and whether it has a default."""

    name: str
    hint: Any
    required: bool


def parameters(fn: Callable[..., object], *, skip: Iterable[str] = ()) -> dict[str, Param]:
    """The parameters of ``fn`` that a user may set, by name (``*args``/``**kwargs`` and ``skip`` left out)."""
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):  # an annotation that does not resolve: check names only
        hints = {}
    skipped = set(skip)
    out = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in skipped:
            continue
        out[p.name] = Param(p.name, hints.get(p.name, Any), p.default is p.empty)
    return out


def coerce(name: str, value: object, where: str) -> object:
    """A scenario string in the unit its parameter's name gives: sizes for ``*_bytes``/``*_bytes_per_s``,
    durations for ``*_ns``; anything else unchanged."""
    if isinstance(value, str) and (name.endswith("_bytes") or name.endswith("_bytes_per_s")):
        return parse_size(value, where)
    if isinstance(value, str) and name.endswith("_ns"):
        return parse_duration(value, where)
    return value


def check(param: Param, value: object, where: str) -> object:
    """``value`` (coerced by :func:`coerce`) if it fits ``param``'s annotation, else :class:`ConfigError` at
    ``where`` saying what was expected."""
    v = coerce(param.name, value, where)
    problem = _mismatch(param.hint, v)
    if problem is not None:
        raise ConfigError(where, f"expected {problem}, got {value!r}")
    return v


def _mismatch(hint: Any, value: object) -> str | None:
    """None if ``value`` fits ``hint``, else a description of what was expected."""
    if hint is Any or hint is object or hint is inspect.Parameter.empty:
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        members = typing.get_args(hint)
        if value is None and type(None) in members:
            return None
        wanted = [m for m in members if m is not type(None)]
        problems = [_mismatch(m, value) for m in wanted]
        return None if any(p is None for p in problems) else " or ".join(p for p in problems if p)
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "a finite number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    if origin is tuple or origin in (list, collections.abc.Sequence):
        return _sequence(hint, origin, value)
    return None  # an annotation this checker does not know: the function checks the value itself


def _sequence(hint: Any, origin: Any, value: object) -> str | None:
    args = typing.get_args(hint)
    if not isinstance(value, list | tuple):
        return "a list"
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            return f"a list of {len(args)} values"
        items = list(zip(value, args, strict=True))
    else:
        items = [(v, args[0] if args else Any) for v in value]
    for v, h in items:
        problem = _mismatch(h, v)
        if problem is not None:
            return f"a list of which each item is {problem}"
    return None
