"""Suite-wide settings: no test writes outside a temporary directory. Hypothesis keeps no example database and
caches what it computes (Unicode tables, source constants) in a temporary directory removed at the end, not in
``./.hypothesis`` (failing examples are still printed, and every test's ``@settings`` still applies);
pytest-benchmark, which would create ``./.benchmarks``, is disabled in pyproject.toml."""

from __future__ import annotations

import shutil
import tempfile

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

settings.register_profile("snpsim", database=None)
settings.load_profile("snpsim")

_HOME: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Before collection (Hypothesis reads test modules' constants while collecting)."""
    _HOME.append(tempfile.mkdtemp(prefix="snpsim-hypothesis-"))
    set_hypothesis_home_dir(_HOME[-1])


def pytest_unconfigure(config: pytest.Config) -> None:
    set_hypothesis_home_dir(None)
    for home in _HOME:
        shutil.rmtree(home, ignore_errors=True)
