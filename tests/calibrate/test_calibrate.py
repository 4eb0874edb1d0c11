"""``snpsim.calibrate``: the fit recovers costs from measurements the model made with known costs, reports noisy
ones within their noise, and chooses the costs the measurements can tell apart.

The "measurements" are ``snpsim.run`` boot times of the scenarios a CSV row describes (docs/calibrate.md: a
boot-only guest, ``linux-boot`` without idle touches, on a host of twice its RAM and at least 8G), run with a known
``[costs]`` table; the calibration starts from the defaults and must find that table again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snpsim
from snpsim.calibrate import (
    IDENTIFIABLE,
    SENSITIVITY,
    Measurement,
    _choose,
    calibrate,
    read_measurements,
)
from snpsim.hw.costs import COSTS, CostModel
from snpsim.runner import Simulation
from snpsim.scenario import load

GIB = 1 << 30
#: The costs the measurements were "taken" with: three of the costs a boot pays most, moved away from the
#: defaults (the start of the fit); the others are the defaults.
TRUTH = {"rmpupdate_ns": 2500, "page_clear_ns": 1500, "set_attributes_page_ns": 300}
#: name, guest GiB, preset, lazy acceptance: sizes above 2.75 GiB have RAM above 4 GiB (q35), so lazy and eager
#: acceptance differ; hugetlb (2M folios: 2M RMP entries and PVALIDATEs) and unmap (pre-UPM: no memory attributes)
#: pay the costs in other proportions than upstream, which is what separates them.
ROWS = [
    ("a", 1, "upstream", True),
    ("b", 3, "upstream", False),
    ("c", 3, "upstream", True),
    ("d", 2, "hugetlb", True),
    ("e", 2, "unmap", True),
    ("f", 3, "hugetlb", False),
    ("g", 3, "unmap", False),
]
VCPUS = 2


def scenario(gib: int, preset: str, lazy: bool, costs: dict[str, int] | None = None) -> dict[str, Any]:
    """The scenario a CSV row without a scenario file stands for (docs/calibrate.md, "Columns")."""
    doc: dict[str, Any] = {
        "duration": "1h",
        "samples": 2,
        "policy": preset,
        "host": {"memory": max(8 * GIB, 2 * gib * GIB)},
        "vms": [
            {
                "memory": f"{gib}G",
                "vcpus": VCPUS,
                "workload": "linux-boot",
                "params": {"touch_rate_per_s": 0},
                "guest": {"lazy_accept": lazy},
            }
        ],
    }
    if costs:
        doc["costs"] = costs
    return doc


@pytest.fixture(scope="module")
def measured() -> dict[str, int]:
    """Each row's boot time with the TRUTH costs (ns)."""
    return {name: int(snpsim.run(scenario(g, p, lazy, TRUTH)).summary["boot_time_ns"]) for name, g, p, lazy in ROWS}


def write_csv(path: Path, values: dict[str, float], stddev: float | None = None) -> Path:
    lines = ["name,memory,vcpus,preset,lazy_accept,value" + (",stddev" if stddev else "")]
    for name, gib, preset, lazy in ROWS:
        extra = f",{round(values[name] * stddev)}ns" if stddev else ""
        lines.append(f"{name},{gib}G,{VCPUS},{preset},{str(lazy).lower()},{round(values[name])}ns{extra}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_csv_rows_are_the_scenarios_above(tmp_path: Path, measured: dict[str, int]) -> None:
    rows = read_measurements(write_csv(tmp_path / "m.csv", measured))
    assert [m.name for m in rows] == [r[0] for r in ROWS]
    assert [m.line for m in rows] == list(range(2, 2 + len(ROWS)))  # line 1 is the header
    for m, (_, gib, preset, lazy) in zip(rows, ROWS, strict=True):
        assert m.scenario == load(scenario(gib, preset, lazy))
        assert (m.metric, m.value, m.stddev) == ("boot_time_ns", measured[m.name], None)


def test_recovers_the_costs_the_measurements_were_made_with(tmp_path: Path, measured: dict[str, int]) -> None:
    rows = read_measurements(write_csv(tmp_path / "m.csv", measured))
    cal = calibrate(rows)
    fitted = {f.name: f for f in cal.fitted}
    truth = {**CostModel().as_dict(), **TRUTH}
    assert {n for n, f in fitted.items() if f.status == "fitted"} >= set(TRUTH)
    for name, f in fitted.items():
        if f.status == "fitted":
            # exact data: the linear model is exact, so the fit is truth up to the 1 ns rounding of costs
            assert abs(f.fitted - truth[name]) <= max(1, 0.001 * truth[name]), (name, f)
        else:
            assert f.fitted == f.start == truth[name], f  # not fitted: the start (default) value, which is truth
    assert cal.costs == CostModel(**{n: f.fitted for n, f in fitted.items()})
    # the model's boots are the measurements' own: no time beyond them to explain
    assert cal.boot_offset is not None and cal.boot_offset.status == "fitted" and abs(cal.boot_offset.fitted) <= 1
    assert cal.rms < 1e-6 < cal.start_rms
    # boot time is linear in the costs: the verifying simulations are what the linear model predicted, and one
    # round (linearise at the defaults, fit, simulate) is enough: 2 simulations per measurement
    assert cal.linear_error == 0.0
    assert (cal.iterations, cal.simulations) == (1, 2 * len(ROWS))
    # every accepted 4K page under upstream costs one RMPUPDATE and one 4K PVALIDATE: never told apart
    assert fitted["pvalidate_4k_ns"].status == "moves with rmpupdate_ns"
    assert any("pvalidate_4k_ns moves with rmpupdate_ns" in note for note in cal.notes)


def test_time_the_model_does_not_simulate_is_the_boot_offset(tmp_path: Path, measured: dict[str, int]) -> None:
    """Real boots also run firmware and kernel code the model does not (measurements.md: one SNP boot spent
    3.18 s in SNP_LAUNCH_FINISH alone): 3 s more in every row is found as the offset, and the costs as before;
    without the offset the costs are bent to explain it, and the fit is poor."""
    later = {name: v + 3 * 10**9 for name, v in measured.items()}
    rows = read_measurements(write_csv(tmp_path / "m.csv", later))
    cal = calibrate(rows, costs=list(TRUTH))
    assert cal.boot_offset is not None and abs(cal.boot_offset.fitted - 3 * 10**9) <= 1_000
    assert {f.name: f.fitted for f in cal.fitted if f.name in TRUTH} == TRUTH
    bent = calibrate(rows, costs=list(TRUTH), offset=False)
    assert bent.boot_offset is None and bent.rms > 100 * max(cal.rms, 1e-9)
    assert {f.name: f.fitted for f in bent.fitted if f.name in TRUTH} != TRUTH


def test_noisy_measurements_give_costs_within_their_noise(tmp_path: Path, measured: dict[str, int]) -> None:
    """1 % Gaussian noise on each boot time, said in a stddev column: residuals are in standard deviations and
    each cost's standard error is sqrt(diag((J^T W J)^-1)); the truth lies within 3 of them."""
    rng = np.random.default_rng(7)
    noisy = {name: v * (1 + 0.01 * rng.standard_normal()) for name, v in measured.items()}
    rows = read_measurements(write_csv(tmp_path / "m.csv", noisy, stddev=0.01))
    assert all(m.stddev is not None for m in rows)
    cal = calibrate(rows, costs=list(TRUTH))
    for f in cal.fitted:
        if f.name in TRUTH:
            assert f.status == "fitted" and f.stderr is not None and f.stderr > 0, f
            assert abs(f.fitted - TRUTH[f.name]) <= 3 * f.stderr, f
            assert f.fitted != TRUTH[f.name]  # the noise moved it
        else:
            assert (f.status, f.fitted) == ("not asked", f.start)
    # residuals, in standard deviations of 1 %: neither zero (noise) nor beyond what 1 % noise explains
    assert 0.1 < cal.rms < 3
    for r in cal.rows:
        assert r.residual == pytest.approx((r.fitted - r.measured) / r.stddev)


def test_a_finite_difference_metric_is_fitted_too(tmp_path: Path) -> None:
    """``vms[0].cpu_ns`` (host CPU time of the VM's threads) has no count shortcut: its derivatives come from one
    more simulation per cost, 10 % away. It is linear in the costs too, so the fit is exact."""
    truth = {"page_clear_ns": 1500}
    values = {
        name: int(snpsim.run(scenario(g, p, lazy, truth)).vms[0].cpu_ns) for name, g, p, lazy in ROWS[:1] + ROWS[4:5]
    }
    text = "name,memory,vcpus,preset,lazy_accept,metric,value\n" + "".join(
        f"{name},{g}G,{VCPUS},{p},{str(lazy).lower()},vms[0].cpu_ns,{values[name]}ns\n"
        for name, g, p, lazy in ROWS[:1] + ROWS[4:5]
    )
    (tmp_path / "m.csv").write_text(text)
    cal = calibrate(read_measurements(tmp_path / "m.csv"), costs=["page_clear_ns"])
    (fit,) = [f for f in cal.fitted if f.status == "fitted"]
    assert (fit.name, fit.fitted) == ("page_clear_ns", 1500)
    # a run and a finite-difference run per row at the defaults, the fit, a verifying run per row: the linear
    # model predicted it exactly, so no second round (which would first take the finite differences again)
    assert (cal.iterations, cal.linear_error, cal.simulations) == (1, 0.0, 2 * 2 + 2)


def test_stopping_at_the_boot_changes_nothing_of_the_boot() -> None:
    sc = load(scenario(1, "upstream", True))
    full = Simulation(sc).run().vms[0]
    stopped = Simulation(sc, stop_after_boot=0).run()
    assert stopped.vms[0].boot_ns == full.boot_ns and stopped.vms[0].boot_ops == full.boot_ops
    assert stopped.summary["sim_time_ns"] <= full.boot_ns < sc.duration_ns


# ------------------------------------------------------------------------------------------------ choosing


def _rows(n: int) -> list[Measurement]:
    sc = load(scenario(1, "upstream", True))
    return [Measurement(i + 2, f"r{i}", sc, "boot_time_ns", 1e9) for i in range(n)]


def test_choose_drops_a_cost_paid_only_together_with_another() -> None:
    """Columns of d(boot)/d(cost) = counts. rmpupdate and pvalidate_4k are paid the same number of times in every
    row (parallel columns): only the more sensitive one is fitted; page_clear is paid in another proportion in the
    third row: fitted; psmash moves no row by 1 % across its range: insensitive."""
    names = ["rmpupdate_ns", "pvalidate_4k_ns", "page_clear_ns", "psmash_ns"]
    jac = np.array(
        [
            [1e5, 1e5, 1e5, 0.0],
            [2e5, 2e5, 2e5, 0.0],
            [1e5, 1e5, 5e5, 1.0],
        ]
    )
    scale = np.full(3, 1e9)  # relative residuals of 1 s boots: each row resolves SENSITIVITY (1 %) of it
    # sensitivity = max |J| x range / scale: rmpupdate 2e5 x 9900 / 1e9 = 1.98, pvalidate_4k 2e5 x 4950 / 1e9 = 0.99
    # (so rmpupdate comes first and keeps the shared direction), psmash 1 x 19900 / 1e9 = 2e-5 < SENSITIVITY
    assert 1 * (COSTS["psmash_ns"].hi - COSTS["psmash_ns"].lo) / 1e9 < SENSITIVITY
    chosen, why = _choose(jac, scale, names, explicit=False, resolution=np.full(3, SENSITIVITY))
    assert chosen == ["rmpupdate_ns", "page_clear_ns"]
    assert why == {"pvalidate_4k_ns": "moves with rmpupdate_ns", "psmash_ns": "insensitive"}


def test_choose_needs_a_row_to_resolve_the_cost() -> None:
    """With a stddev a row resolves one standard deviation: a cost whose whole range moves no row by that much is
    insensitive. page_clear moves the first row by 3e5 x 3,750 ns = 1.125 s across its range; rmpupdate moves the
    second by 2e3 x 9,900 ns = 19.8 ms at most: under a 30 ms stddev, but above 1 % of a 0.5 s boot (5 ms)."""
    names = ["page_clear_ns", "rmpupdate_ns"]
    jac = np.array([[3e5, 1e3], [1e5, 2e3]])
    sd = np.full(2, 3e7)
    chosen, why = _choose(jac, sd, names, explicit=False, resolution=np.ones(2))
    assert (chosen, why) == (["page_clear_ns"], {"rmpupdate_ns": "insensitive"})
    boot = np.full(2, 5e8)
    assert _choose(jac, boot, names, explicit=False, resolution=np.full(2, SENSITIVITY)) == (names, {})


def test_choose_keeps_a_cost_just_outside_the_span() -> None:
    """The second column's part outside the first's span, over its length: sin of the angle between them. With
    columns (1, 0) and (1, t), sin = t / sqrt(1 + t^2): kept iff that is at least IDENTIFIABLE. rmpupdate's
    range (9,900 ns) is wider than page_clear's (3,750 ns), so it is the more sensitive and comes first."""
    names = ["page_clear_ns", "rmpupdate_ns"]
    scale = np.ones(2)
    for t, kept in ((0.06, True), (0.04, False)):
        jac = np.array([[1.0, 1.0], [0.0, t]]) * 1e-3
        assert bool(t / np.sqrt(1 + t * t) >= IDENTIFIABLE) is kept
        chosen, why = _choose(jac, scale, names, explicit=False)
        assert chosen == (names if kept else ["rmpupdate_ns"]), t
        assert why == ({} if kept else {"page_clear_ns": "moves with rmpupdate_ns"})


def test_explicit_costs_keep_a_weak_one_but_not_a_useless_one() -> None:
    names = ["page_clear_ns", "psmash_ns", "host_fault_ns"]
    jac = np.array([[1e5, 1.0, 0.0], [3e5, 0.0, 0.0]])
    chosen, why = _choose(jac, np.full(2, 1e9), names, explicit=True)
    assert chosen == ["page_clear_ns", "psmash_ns"]  # asked for: fitted however weak (its stderr will say so)
    assert why == {"host_fault_ns": "insensitive"}  # no row depends on it at all


def test_unknown_or_repeated_costs_are_refused() -> None:
    with pytest.raises(snpsim.ConfigError, match=r"--costs: unknown cost 'page_ns'"):
        calibrate(_rows(1), costs=["page_ns"])
    with pytest.raises(snpsim.ConfigError, match=r"--costs: a cost is listed twice"):
        calibrate(_rows(1), costs=["page_clear_ns", "page_clear_ns"])
