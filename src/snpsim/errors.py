"""Errors raised for user mistakes (bad scenario, bad knob values, unusable output folders) and for simulations
stopped by a time limit; a :class:`ConfigError` names the offending field."""

from __future__ import annotations


class ConfigError(ValueError):
    """Invalid user input: a scenario field, a knob value or a file; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        # args are the constructor's arguments, so the error survives SimPy's re-raise and pickling
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"

    def renamed(self, field: str) -> ConfigError:
        """The same message about another field (a CLI flag instead of the scenario field it sets)."""
        return ConfigError(field, self.message)


class TimeLimitExceeded(RuntimeError):
    """A simulation ran longer (wall-clock) than its time limit (``snpsim.run(..., time_limit_s=)``, a sweep's
    ``point_timeout``) and was stopped."""

    def __init__(self, limit_s: float, sim_time_ns: int) -> None:
        super().__init__(limit_s, sim_time_ns)
        self.limit_s = limit_s
        self.sim_time_ns = sim_time_ns

    def __str__(self) -> str:
        return f"stopped after {self.limit_s:g} s of computing, at simulated time {self.sim_time_ns} ns"
