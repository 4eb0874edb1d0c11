"""Errors keep their location when re-raised the way SimPy (and pickling) rebuild exceptions."""

from __future__ import annotations

import pickle

from snpsim import ConfigError
from snpsim.traces import TraceError


def test_trace_error_survives_simpy_reraise_and_pickle() -> None:
    e = TraceError("t.log", 7, "garbage")
    for again in (type(e)(*e.args), pickle.loads(pickle.dumps(e))):
        assert isinstance(again, TraceError)
        assert (again.file, again.line, again.reason, str(again)) == ("t.log", 7, "garbage", "t.log:7: garbage")


def test_config_error_survives_simpy_reraise_and_pickle() -> None:
    e = ConfigError("vms[0].memory", "bad size")
    for again in (type(e)(*e.args), pickle.loads(pickle.dumps(e))):
        assert (again.field, str(again)) == ("vms[0].memory", "vms[0].memory: bad size")
