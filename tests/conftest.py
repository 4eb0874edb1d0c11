"""Suite-wide settings: no test writes outside a temporary directory. Hypothesis keeps no example database and
caches what it computes (Unicode tables, source constants) in a temporary directory removed at the end, not in
``./.hypothesis`` (failing examples are still printed, and every test's ``@settings`` still applies);
pytest-benchmark, which would create ``./.benchmarks``, is disabled in pyproject.toml. The fast engine's compiled
kernels (numba, ``cache=True``) are cached in a temporary directory too (``NUMBA_CACHE_DIR``, set before numba is
imported and inherited by the xdist workers, so they compile once per session), not next to the sources."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

settings.register_profile("snpsim", database=None)
settings.load_profile("snpsim")

_HOME: list[str] = []
_CACHE: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Before collection (Hypothesis reads test modules' constants while collecting)."""
    _HOME.append(tempfile.mkdtemp(prefix="snpsim-hypothesis-"))
    set_hypothesis_home_dir(_HOME[-1])
    if "SNPSIM_TEST_NUMBA_CACHE" not in os.environ:  # the controller (or a run without xdist): the workers inherit it
        os.environ["NUMBA_CACHE_DIR"] = os.environ["SNPSIM_TEST_NUMBA_CACHE"] = tempfile.mkdtemp(prefix="snpsim-numba-")
        _CACHE.append(os.environ["NUMBA_CACHE_DIR"])


def pytest_unconfigure(config: pytest.Config) -> None:
    set_hypothesis_home_dir(None)
    for home in _HOME + _CACHE:
        shutil.rmtree(home, ignore_errors=True)
