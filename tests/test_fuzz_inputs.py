"""Bad inputs, generated: the Python API answers with a ConfigError (or a result, for a value that happens to be
valid) and the CLI with exit status 0, 1 or 2 - never a traceback, never a hang. A run is given a time limit it
must never reach: bad input must be refused up front, not simulated for minutes."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import snpsim
from snpsim.cli import app

BASE: dict[str, Any] = {
    "seed": 1,
    "duration": "20ms",
    "samples": 2,
    "host": {"memory": "512M"},
    "vms": [{"memory": "64M", "vcpus": 1, "workload": "random-conversion"}],
    "churn": {"interval": "10ms", "lifetime": "5ms", "memory": ["64M"], "vcpus": [1], "workload": "idle"},
}

#: Every field a user sets, as a path into BASE (a number indexes a list).
FIELDS = [
    "seed",
    "duration",
    "samples",
    "policy",
    "policy.directmap",
    "policy.private_granularity",
    "policy.prefault_on_convert",
    "name",
    "engine",
    "host",
    "host.memory",
    "host.layout",
    "host.pci_hole",
    "host.rmp_base",
    "host.page_cache",
    "host.zero_on_alloc",
    "host.directmap_max_level",
    "host.writers",
    "host.writers.page_zeroing",
    "host.writers.page_zeroing.interval",
    "host.writers.page_zeroing.batch",
    "host.writers.compaction.max_scan",
    "host.writers.ksm.pages_to_scan",
    "host.writers.hibernation.at",
    "host.writers.hibernation.max_pages",
    "vms",
    "vms.0",
    "vms.0.memory",
    "vms.0.vcpus",
    "vms.0.workload",
    "vms.0.count",
    "vms.0.start",
    "vms.0.lifetime",
    "vms.0.guest",
    "vms.0.guest.lazy_accept",
    "vms.0.guest.net_queues",
    "vms.0.params",
    "vms.0.params.rate_per_s",
    "vms.0.params.max_pages",
    "vms.0.params.private_fraction",
    "vms.0.params.region",
    "vms.0.params.touch_rate_per_s",
    "vms.0.params.huge_ok",
    "churn",
    "churn.interval",
    "churn.lifetime",
    "churn.memory",
    "churn.memory.0",
    "churn.vcpus",
    "churn.max_vms",
    "churn.workload",
    "churn.params",
    "churn.params.alloc_rate_per_s",
    "costs",
    "costs.rmpupdate_ns",
]

JUNK = st.one_of(
    st.sampled_from(
        [
            0,
            -1,
            1,
            2**64,
            -(2**63),
            1e308,
            float("nan"),
            float("inf"),
            -0.5,
            0.5,
            True,
            False,
            "",
            "0s",
            "0",
            "10",
            "1ns",
            "fast",
            "[churn]",
            "[bold]x[/bold]",
            "99999999999999999999G",
            "1Q",
            "-4G",
            "1e9s",
            "4G",
            "1g",
            "upm",
            [],
            [0],
            ["4G", -1],
            {},
            {"x": 1},
            {"preset": "nope"},
        ]
    ),
    st.integers(-(2**70), 2**70),
    st.text(max_size=12),
)


def mutated(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    *parents, leaf = path.split(".")
    node: Any = doc
    for part in parents:
        if isinstance(node, list):
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                return doc
    if isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(FIELDS), value=JUNK, second=st.sampled_from(FIELDS), other=JUNK)
def test_the_api_refuses_bad_input_with_a_config_error(path: str, value: Any, second: str, other: Any) -> None:
    doc = mutated(path, value)
    doc = mutated(second, other) if second != path else doc
    try:
        result = snpsim.run(doc, time_limit_s=60)  # TimeLimitExceeded (a RuntimeError) fails the test
    except snpsim.ConfigError as exc:
        text = str(exc)
        assert exc.field and "\n" not in text and "Traceback" not in text
        return
    assert result.summary["sim_time_ns"] > 0 and not math.isnan(result.summary["waste_bytes"])


TOML_VALUES = st.sampled_from(
    ['"0s"', "0", "10", '"fast"', '"[churn]"', '"99999999999999999999G"', "-1", "1e308", "nan", "[]", "{}", '"1ns"']
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(
        ["duration", "seed", "samples", "policy", "host.memory", "vms.memory", "vms.vcpus", "vms.params.rate_per_s"]
    ),
    value=TOML_VALUES,
    flags=st.lists(
        st.sampled_from(
            [
                ["--seed", "-3"],
                ["--duration", "0s"],
                ["--duration", "5"],
                ["--format", "yaml"],
                ["--json"],
                ["-p", "nope"],
                ["-p", "upm"],
                ["--trace-format", "pcap"],
                ["--out", "/dev/null/x"],
                ["--bogus"],
                ["--seed", "x"],
            ]
        ),
        max_size=3,
    ),
)
def test_the_cli_answers_bad_input_in_one_line(tmp_path: Path, key: str, value: str, flags: list[list[str]]) -> None:
    section, _, field = key.rpartition(".")
    tables = {"": [], "host": [], "vms": [], "vms.params": []}
    defaults = {"duration": '"20ms"', "samples": "2", "host.memory": '"512M"', "vms.memory": '"64M"'}
    defaults["vms.workload"] = '"random-conversion"'
    for k, v in {**defaults, key: value}.items():
        tables[k.rpartition(".")[0]].append(f"{k.rpartition('.')[2]} = {v}")
    text = "\n".join(tables[""]) + "\n[host]\n" + "\n".join(tables["host"])
    text += "\n[[vms]]\n" + "\n".join(tables["vms"]) + "\n[vms.params]\n" + "\n".join(tables["vms.params"]) + "\n"
    cfg = tmp_path / "s.toml"
    cfg.write_text(text)
    assert section in tables and field
    args = ["run", str(cfg), "--no-save", "-q", *(a for flag in flags for a in flag)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code in (0, 1, 2), (args, result.output)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code == 2:
        assert len(result.output.splitlines()) == 1, (text, args, result.output)
        assert result.output.startswith("error: "), result.output


TRACE = Path(__file__).resolve().parents[1] / "examples" / "traces" / "qemu-boot.log"


@settings(max_examples=60, deadline=None)
@given(
    option=st.sampled_from(["vm_memory", "vcpus", "host_memory", "format", "lenient", "seed", "samples", "policy"]),
    value=JUNK,
)
def test_replay_options_are_refused_with_value_errors(option: str, value: Any) -> None:
    # TraceError (file:line) and ConfigError (the option) are both ValueErrors; nothing else may escape
    try:
        from snpsim.traces.replay import plan_replay

        plan_replay(TRACE, **{option: value})
    except ValueError as exc:
        assert "\n" not in str(exc) and str(exc)


@settings(max_examples=80, deadline=None)
@given(path=st.sampled_from(FIELDS), values=st.lists(JUNK, max_size=3), section=st.sampled_from([{}, {"name": 3}]))
def test_sweep_definitions_are_refused_with_config_errors(
    path: str, values: list[Any], section: dict[str, Any]
) -> None:
    from snpsim.sweeps import load

    try:
        points = load({"base": BASE, "axes": {path: values}, "sweep": section}).points()
    except snpsim.ConfigError as exc:
        assert exc.field and "\n" not in str(exc)
        return
    assert all(p.error is None or "\n" not in p.error for p in points)
