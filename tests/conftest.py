"""Suite-wide settings: no test writes outside its tmp_path. Hypothesis keeps no example database and caches its
Unicode tables under pytest's temporary directory, not in ``./.hypothesis`` (failing examples are still printed,
and every test's ``@settings`` still applies); pytest-benchmark is disabled in pyproject.toml (``./.benchmarks``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

settings.register_profile("snpsim", database=None)
settings.load_profile("snpsim")


@pytest.fixture(autouse=True, scope="session")
def _hypothesis_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(None)
