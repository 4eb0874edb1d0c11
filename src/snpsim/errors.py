"""Errors raised for user mistakes (bad scenario, bad knob values); they name the offending field."""

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
