"""snpsim explore: numbered schedules, 'none within depth N', replayable scenarios, exit 2 on mistakes."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from snpsim.cli import app

SCENARIO = """
policy = "unmap"
[host.writers.kvm_pv]
[[vms]]
memory = "64M"
vcpus = 1
workload = "hostile-convert"
"""


def test_explore_prints_writes_and_run_replays(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(SCENARIO)
    out = tmp_path / "cx"
    r = CliRunner().invoke(app, ["explore", str(cfg), "--depth", "2", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert "  1. vcpu0: convert gfn 19 to private" in r.output
    assert "  2. kvm_pv: kvmclock writes gfn 19" in r.output
    assert "host-data-loss: none within depth 2" in r.output
    written = out / "unmap-host-crash.toml"
    assert written.exists()
    r2 = CliRunner().invoke(app, ["run", str(written)])
    assert r2.exit_code == 0, r2.output
    assert "outcome: host-crash (expected host-crash)" in r2.output


def test_explore_mistakes_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(SCENARIO.replace("kvm_pv", "bogus"))
    r = CliRunner().invoke(app, ["explore", str(cfg), "--no-save", "-q"])
    assert r.exit_code == 2 and "host.writers.bogus" in r.output
    r = CliRunner().invoke(app, ["explore", str(tmp_path / "s.toml"), "--depth", "0", "-q"])
    assert r.exit_code == 2
