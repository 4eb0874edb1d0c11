"""A sweep test that stalls (a Dask cluster that never answers) ends the run with every thread's stack instead of
hanging CI until its own timeout: each test, fixtures included, gets ``WATCHDOG_S`` seconds."""

from __future__ import annotations

import faulthandler
import sys
from collections.abc import Generator

import pytest

WATCHDOG_S = 300


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
