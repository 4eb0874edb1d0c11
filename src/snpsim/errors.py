"""Errors raised for user mistakes (bad scenario, bad knob values); they name the offending field."""

from __future__ import annotations


class ConfigError(ValueError):
    """Invalid user input: a scenario field, a knob value or a file; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")
