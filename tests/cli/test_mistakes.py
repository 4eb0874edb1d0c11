"""Every class of mistake gets one clear line naming the field (or the CLI flag that set it), before anything is
simulated; silent surprises are said out loud (output and exit status).

Each case quotes the rule it checks; expected fields are the scenario's documented paths (src/snpsim/scenario.py)
and the signatures of the functions the values are for (guest/workloads.py, host/writers.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import snpsim
from snpsim.cli import app
from snpsim.errors import TimeLimitExceeded

runner = CliRunner()

BASE: dict[str, Any] = {
    "seed": 1,
    "duration": "50ms",
    "samples": 2,
    "host": {"memory": "1G"},
    "vms": [{"memory": "128M", "vcpus": 1, "workload": "random-conversion"}],
}


def mutate(path: str, value: Any) -> dict[str, Any]:
    """BASE with ``path`` (dotted; a number indexes a list) set to ``value``."""
    doc = copy.deepcopy(BASE)
    *parents, leaf = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[leaf] = value
    return doc


def config_error(doc: dict[str, Any]) -> snpsim.ConfigError:
    with pytest.raises(snpsim.ConfigError) as info:
        snpsim.run(doc)
    return info.value


@pytest.mark.parametrize(
    ("path", "value", "field", "says"),
    [
        # durations: > 0 (SimPy's until must be greater than now), and a unit is required
        ("duration", "0s", "duration", "longer than 0"),
        ("duration", 0, "duration", "longer than 0"),
        ("duration", 10, "duration", "needs a unit"),  # a bare TOML integer: once 10 ns
        ("duration", "10", "duration", "needs a unit"),  # a bare string: once 10 s
        ("duration", "1.5ns", "duration", "whole number of nanoseconds"),
        ("duration", "99999999999999999999d", "duration", "too long"),
        ("vms.0.start", 5, "vms[0].start", "needs a unit"),
        # sizes too large for the model: no OverflowError from numpy
        ("host.memory", "99999999999999999999G", "host.memory", "too large"),
        ("host.memory", "65T", "host.memory", "at most 64T"),  # the 64 TB direct map of 4-level paging
        ("vms.0.memory", "17T", "vms[0].memory", "at most 16T"),  # not vms[0].guest.memory_bytes
        ("vms.0.memory", "2G", "vms", "more than host.memory"),
        # workload parameters, up front, with their full path (random_conversions' signature)
        ("vms.0.params", {"rate": 5}, "vms[0].params.rate", "unknown workload parameter"),
        ("vms.0.params", {"rate_per_s": -1}, "vms[0].params.rate_per_s", "positive finite rate"),
        ("vms.0.params", {"rate_per_s": "fast"}, "vms[0].params.rate_per_s", "expected a finite number"),
        ("vms.0.params", {"rate_per_s": float("nan")}, "vms[0].params.rate_per_s", "expected a finite number"),
        ("vms.0.params", {"max_pages": 2.5}, "vms[0].params.max_pages", "expected an integer"),  # max_pages: int
        ("vms.0.params", {"huge_ok": 1}, "vms[0].params.huge_ok", "true or false"),  # huge_ok: bool
        ("vms.0.params", {"region": [1, 2, 3]}, "vms[0].params.region", "2 values"),  # tuple[int, int] | None
        ("vms.0.params", {"touch_rate_per_s": "x"}, "vms[0].params.touch_rate_per_s", "expected a number"),
        # 1e308/s x 50 ms = 5e306 events > MAX_EVENTS (1e9)
        ("vms.0.params", {"touch_rate_per_s": 1e308}, "vms[0].params.touch_rate_per_s", "at most 1e+09"),
        ("vms.0.guest", {"memory": "64M"}, "vms[0].guest.memory", "set vms[0].memory instead"),
        ("host.directmap_max_level", [], "host.directmap_max_level", "expected one of"),  # found by the fuzz test
        # zero intervals: the process would never let simulated time advance
        ("host.writers.page_zeroing", {"interval": "0s"}, "host.writers.page_zeroing.interval", "at least 1us"),
        ("host.writers.ksm", {"interval": "999ns"}, "host.writers.ksm.interval", "at least 1us"),
        ("host.writers.compaction", {"batch": -1}, "host.writers.compaction.batch", ">= 1"),
        ("host.writers.ksm", {"pages_to_scan": 0}, "host.writers.ksm.pages_to_scan", ">= 1"),  # found by the fuzz test
        ("host.writers.ksm", {"pages_to_scan": "many"}, "host.writers.ksm.pages_to_scan", "expected an integer"),
        ("host.writers.hibernation", {"restore": 1}, "host.writers.hibernation.restore", "true or false"),
        ("host.writers.hibernation", {}, "host.writers.hibernation.at", "missing"),  # at_ns has no default
        ("host.writers.ksm", {"speed": 1}, "host.writers.ksm.speed", "unknown parameter"),
        ("churn", {"interval": "0s", "memory": ["64M"]}, "churn.interval", "at least 1us"),
        ("churn", {"lifetime": "0s", "memory": ["64M"]}, "churn.lifetime", "longer than 0"),
        ("churn", {"memory": ["2G"]}, "churn.memory[0]", "never fits"),  # a 1G host
        ("churn", {"memory": ["64M"], "params": {"rate": 1}}, "churn.params.rate", "unknown workload parameter"),
        # guest_memfd of HugeTLB pages takes whole pages only (EINVAL); QEMU: memory >= the hugetlb page size
        ("policy", {"preset": "upstream", "private_granularity": "1g"}, "vms[0].memory", "1 GiB private pages"),
        ("policy", {"preset": "upstream", "shared_backing": "hugetlb-1g"}, "vms[0].memory", "smaller than one"),
        # /sys/kernel/mm/transparent_hugepage/enabled takes always, madvise or never
        ("host.transparent_hugepage", "yes", "host.transparent_hugepage", "expected one of always, madvise, never"),
        # hugepages= per size (2m, 1g), at most what the host's RAM holds: 1G of RAM less reservations < 512 x 2M
        ("host.hugepages", {"4m": 1}, "host.hugepages.4m", "unknown field"),
        ("host.hugepages", {"2m": -1}, "host.hugepages.2m", "must be in [0"),
        ("host.hugepages", {"2m": 512}, "host.hugepages.2m", "must be in [0"),
        ("host.hugepages", "many", "host.hugepages", "expected a table"),
    ],
)
def test_scenario_mistakes_name_their_field(path: str, value: Any, field: str, says: str) -> None:
    error = config_error(mutate(path, value))
    assert error.field == field, str(error)
    assert says in error.message, str(error)
    assert "\n" not in str(error)


def test_what_is_accepted_around_the_limits() -> None:
    # 0 needs no unit; 1us is the shortest interval; a 1G guest has a whole number of 1G pages
    ok = mutate("vms.0.start", 0)
    ok["host"]["writers"] = {"page_zeroing": {"interval": "1us", "batch": 1}}
    ok["duration"] = "2ms"
    assert snpsim.run(ok).summary["sim_time_ns"] == 2_000_000
    big = {**BASE, "host": {"memory": "2G"}, "vms": [{"memory": "1G", "workload": "idle"}]}
    assert snpsim.run({**big, "policy": {"preset": "upstream", "private_granularity": "1g"}}).summary["sim_time_ns"]


def cli(tmp_path: Path, doc: dict[str, Any], *args: str) -> Any:
    cfg = tmp_path / "s.toml"
    cfg.write_text(_toml(doc))
    return runner.invoke(app, ["run", str(cfg), "--no-save", "-q", *args])


def _toml(doc: dict[str, Any]) -> str:
    """Just enough TOML for these scenarios (strings, numbers, lists, nested tables, one [[vms]])."""

    def value(v: Any) -> str:
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    lines: list[str] = []

    def table(prefix: str, t: dict[str, Any]) -> None:
        scalars = {k: v for k, v in t.items() if not isinstance(v, dict) and k != "vms"}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in t.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", {k: v for k, v in doc.items() if k != "vms"})
    for vm in doc.get("vms", []):
        lines.append("[[vms]]")
        lines.extend(f"{k} = {value(v)}" for k, v in vm.items() if not isinstance(v, dict))
        for k, v in vm.items():
            if isinstance(v, dict):
                lines.append(f"[vms.{k}]")
                lines.extend(f"{kk} = {value(vv)}" for kk, vv in v.items())
    return "\n".join(lines) + "\n"


def test_cli_errors_are_one_line_with_the_field(tmp_path: Path) -> None:
    result = cli(tmp_path, mutate("vms.0.params", {"rate_per_s": -1}))
    assert result.exit_code == 2
    assert result.output == "error: vms[0].params.rate_per_s: must be a positive finite rate, got -1\n"


def test_brackets_in_messages_are_shown_not_eaten_as_markup(tmp_path: Path) -> None:
    # scenario.py: "a scenario needs at least one VM (or a [churn] section)"
    result = cli(tmp_path, {**BASE, "vms": []})
    assert result.exit_code == 2
    assert "(or a [churn] section)" in result.output
    titled = cli(tmp_path, {**BASE, "name": "[bold]boot[/bold] [churn]"}, "--format", "table")
    assert titled.exit_code == 0, titled.output
    assert "[bold]boot[/bold] [churn]" in titled.stdout


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["limits", "--memory", "17T", "-p", "upm"], "--memory"),  # not vms[0].guest.memory_bytes
        (["limits", "--memory", "65M", "-p", "upm"], "--memory"),  # not a multiple of 2M
        (["limits", "--vcpus", "5000", "-p", "upm"], "--vcpus"),  # vms[0].vcpus is at most 4096
        (["limits", "--workload", "nope", "-p", "upm"], "--workload"),
        (["limits", "--duration", "3", "-p", "upm"], "--duration"),
        (["run", "--seed", "-1", "--no-save"], "--seed"),
        (["run", "--duration", "0s", "--no-save"], "--duration"),
        (["run", "--duration", "10", "--no-save"], "--duration"),
        (["run", "-p", "upm", "-p", "upm", "--no-save"], "--preset"),
        (["run", "--format", "yaml", "--no-save"], "--format"),
        (["run", "--json", "--format", "csv", "--no-save"], "--json"),
        (["sweep", "x.toml", "--point-timeout", "0s"], "--point-timeout"),
    ],
)
def test_cli_errors_name_the_flag(args: list[str], flag: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {flag}: "), result.output
    assert len(result.output.splitlines()) == 1


def test_replay_flags_are_named(tmp_path: Path) -> None:
    trace = Path(__file__).resolve().parents[2] / "examples" / "traces" / "qemu-boot.log"
    for args, flag in (
        (["--vm-memory", "3M"], "--vm-memory"),
        (["--vm-memory", "1G"], "--vm-memory"),  # the trace converts memory above 1 GiB: a TraceError names it
        (["--vcpus", "0"], "--vcpus"),
        (["--host-memory", "12Q"], "--host-memory"),
    ):
        result = runner.invoke(app, ["replay", str(trace), "--no-save", *args])
        assert result.exit_code == 2, result.output
        assert len(result.output.splitlines()) == 1, result.output
        if flag == "--vm-memory" and args[1] == "1G":
            assert "qemu-boot.log:" in result.output
        else:
            assert result.output.startswith(f"error: {flag}: "), result.output


OOM = {
    "seed": 1,
    "duration": "300ms",
    "samples": 3,
    "policy": "upstream",
    "host": {"memory": "512M"},
    "vms": [{"memory": "256M", "vcpus": 1, "workload": "idle"}],
    # 192M guests every 20 ms (mean), living 10 s, on 512M: each pre-validates all its RAM at boot, so the third
    # one cannot be backed (3 x 192M > 512M); vm0 is idle and allocates nothing.
    "churn": {"interval": "20ms", "lifetime": "10s", "memory": ["192M"], "vcpus": [1], "workload": "linux-boot"},
}


def test_vms_the_host_cannot_back_are_reported_with_exit_status_1(tmp_path: Path) -> None:
    result = cli(tmp_path, OOM, "--json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["upstream"]["sim_time_ns"] == 300_000_000  # the results are still printed
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert "upstream: " in warning and "could not be backed by host memory and were killed" in warning
    assert "vm3 (192 MiB at " in warning


def test_a_time_limit_stops_a_run_and_changes_nothing_else() -> None:
    heavy = mutate("host.writers", {"page_zeroing": {"interval": "1us", "batch": 1}})
    heavy["duration"] = "10s"  # 10^7 wake-ups: far more than 0.05 s of computing
    with pytest.raises(TimeLimitExceeded) as info:
        snpsim.run(heavy, time_limit_s=0.05)
    assert 0 < info.value.sim_time_ns < 10 * 10**9
    # stepping SimPy with a clock check runs the same events as env.run(until=...): identical results
    limited = snpsim.run(BASE, time_limit_s=600)
    plain = snpsim.run(BASE)
    assert limited.summary == plain.summary
    assert limited.timeline.equals(plain.timeline)
    with pytest.raises(snpsim.ConfigError, match=r"^time_limit_s: "):
        snpsim.run(BASE, time_limit_s=0)
